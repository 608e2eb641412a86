"""`invoke rekey` end to end on PostgreSQL: three backups (one plaintext, two under an old key)
move to a new key, after which the old identity opens none and the new one restores each
exactly; a kill -9 at several moments (parked in the read-back's pg_restore, a real event) leaves
every backup restorable and a second run completes it, with no plaintext left in TMPDIR or the
store."""
from __future__ import annotations

import os

import pytest

from fake_tools import ended_afterwards, fake_pg_bin, fifo_pair, started_and_parked
from helpers import (AGE_MAGIC, audit_events, failed, insert_users, ok, pg_env, pg_state, sealed,
                     shown)

pytestmark = pytest.mark.postgres


def both_identities(tmp_path, *keys) -> str:
    """One identity file holding several private keys, as during a rotation."""
    path = tmp_path / "keys" / "both.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(k.path.read_text() for k in keys))
    return str(path)


def three_backups(project, db, old) -> dict[str, dict]:
    """A plaintext backup, then two under `old`, each of different data: {id: pg_state}."""
    plain_env = pg_env(db)
    ok(project.run("migrate", env=plain_env))
    for path in project.store("pgtest").iterdir():  # the migrate's own backup: not one of the 3
        if not path.name.endswith(".audit.json"):
            path.unlink()
    states = {}
    for n, env in enumerate((plain_env, pg_env(db, **sealed(old, identity=old)),
                             pg_env(db, **sealed(old, identity=old)))):
        insert_users(db, (f"user{n}@example.org", None))
        ok(project.run("backup", env=env))
        newest = project.backups("pgtest", env=env)[0]
        states[newest["id"]] = pg_state(db)
    return states


def artifacts(project) -> dict[str, bytes]:
    folder = project.store("pgtest")
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if p.name.endswith((".zst", ".age"))}


def assert_all_at(project, db, states, key, tmp, stale):
    """Every backup is encrypted to `key` alone, opened by it and by no `stale` key; nothing
    in the store or TMPDIR is plaintext."""
    items = project.backups("pgtest", env=pg_env(db))
    assert sorted(i["id"] for i in items) == sorted(states)
    for item in items:
        assert (item["encryption"], item["recipients"]) == ("age", [key.recipient])
        assert item["rekeyed_at"]
    stored = artifacts(project)
    assert len(stored) == len(states), sorted(stored)   # no orphan left
    assert all(data.startswith(AGE_MAGIC) for data in stored.values())
    assert list(tmp.iterdir()) == []
    for backup_id in states:
        for old in stale:
            failed(project.run("verify", f"--backup={backup_id}",
                               env=pg_env(db, **sealed(key, identity=old))), 2,
                   "cannot be decrypted")
        ok(project.run("verify", f"--backup={backup_id}",
                       env=pg_env(db, **sealed(key, identity=key))))


def test_rekey_moves_plaintext_and_old_key_backups_to_the_new_key(project, pgdb, keys,
                                                                  tmp_path):
    db = pgdb
    old, new = keys("old"), keys("new")
    states = three_backups(project, db, old)
    before = artifacts(project)
    sha_before = {i["id"]: i["sha256"] for i in project.backups("pgtest", env=pg_env(db))}
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = pg_env(db, **sealed(new), BACKUP_ENCRYPTION_IDENTITY_FILE=both_identities(
        tmp_path, old, new), TMPDIR=str(tmp))

    dry = ok(project.run("rekey", "--dry-run", env=env))
    assert dry.stdout.count("Would re-key backup") == 3 and "nothing was changed" in dry.stdout
    assert artifacts(project) == before

    result = ok(project.run("rekey", env=env))
    assert "3 re-keyed, 0 already current" in result.stdout, shown(result)
    items = {i["id"]: i for i in project.backups("pgtest", env=env)}
    assert all(items[i]["sha256"] != sha_before[i] for i in states)
    assert not set(before) & set(artifacts(project))   # every artifact is a new one
    assert_all_at(project, db, states, new, tmp, stale=[old])
    table = ok(project.run("backups", env=env)).stdout
    assert "re-keyed" in table and new.recipient[:12] in table

    [event] = [e for e in audit_events(project.store("pgtest")) if e["action"] == "rekey"]
    assert (event["outcome"], sorted(event["rekeyed"]), event["failed"]) == \
        ("succeeded", sorted(states), [])
    assert event["recipients"] == [new.recipient]

    again = ok(project.run("rekey", env=env))
    assert "0 re-keyed, 3 already current" in again.stdout

    # The new key alone restores each backup exactly.
    restore_env = pg_env(db, **sealed(new, identity=new))
    for backup_id, state in states.items():
        ok(project.run("restore", f"--backup={backup_id}", "--yes", env=restore_env))
        assert pg_state(db) == state


def test_rekey_of_one_backup_leaves_the_others_alone(project, pgdb, keys, tmp_path):
    db = pgdb
    old, new = keys("old"), keys("new")
    states = three_backups(project, db, old)
    first, *others = sorted(states)
    before = artifacts(project)
    env = pg_env(db, **sealed(new), BACKUP_ENCRYPTION_IDENTITY_FILE=both_identities(
        tmp_path, old, new))
    ok(project.run("rekey", f"--backup={first}", env=env))
    after = artifacts(project)
    assert {n: d for n, d in after.items() if not n.startswith(first)} == \
        {n: d for n, d in before.items() if not n.startswith(first)}
    items = {i["id"]: i for i in project.backups("pgtest", env=env)}
    assert items[first]["recipients"] == [new.recipient]
    assert all(items[i]["rekeyed_at"] is None for i in others)


def test_rekey_without_the_old_key_leaves_each_backup_as_it_was(project, pgdb, keys):
    db = pgdb
    old, new = keys("old"), keys("new")
    states = three_backups(project, db, old)
    before = artifacts(project)
    result = project.run("rekey", env=pg_env(db, **sealed(new, identity=new)))
    failed(result, 2, "2 backup(s) not re-keyed", "cannot be decrypted")
    after = artifacts(project)
    # The plaintext one is re-keyed; the two under the old key are untouched.
    assert {n: d for n, d in after.items() if n in before and d.startswith(AGE_MAGIC)} == \
        {n: d for n, d in before.items() if d.startswith(AGE_MAGIC)}
    assert len(after) == 3
    assert len(states) == 3


def test_rekey_without_recipients_is_bad_input(project, pgdb, keys):
    db = pgdb
    old = keys("old")
    three_backups(project, db, old)
    before = artifacts(project)
    failed(project.run("rekey", env=pg_env(db, BACKUP_ENCRYPTION_IDENTITY_FILE=str(old.path))),
           2, "BACKUP_ENCRYPTION_RECIPIENTS")
    assert artifacts(project) == before


@pytest.mark.parametrize("park_at", [1, 2, 3])
def test_rekey_killed_midway_leaves_every_backup_restorable_and_a_second_run_finishes(
        project, pgdb, keys, tmp_path, park_at):
    """Killed (SIGKILL, the whole process group) while the read-back of the park_at-th new
    artifact is in pg_restore: that artifact is written, its manifest not switched yet."""
    db = pgdb
    old, new = keys("old"), keys("new")
    states = three_backups(project, db, old)
    started, go = fifo_pair(tmp_path)
    count = tmp_path / "pg_restore.count"
    pg_bin = fake_pg_bin(tmp_path / "pg-bin", pg_restore=f"""
if [ "$1" = "--version" ]; then exec "$REAL" "$@"; fi
n=$(( $(cat '{count}' 2>/dev/null || echo 0) + 1 )); echo "$n" > '{count}'
if [ "$n" = "{park_at}" ]; then echo parked > '{started}'; read line < '{go}'; fi
exec "$REAL" "$@"
""")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    both = both_identities(tmp_path, old, new)
    env = pg_env(db, **sealed(new), BACKUP_ENCRYPTION_IDENTITY_FILE=both, TMPDIR=str(tmp))
    run, _ = started_and_parked(project, started, "rekey", env={**env, "PG_BIN_DIR": str(pg_bin)})
    with ended_afterwards(run):
        pass  # killed here, parked
    assert run.returncode == -9

    items = project.backups("pgtest", env=env)
    rekeyed = [i for i in items if i["rekeyed_at"]]
    assert len(rekeyed) == park_at - 1
    assert len(artifacts(project)) == 3 + 1        # the parked one's new artifact, an orphan
    assert list(tmp.iterdir()) == []
    for item in items:   # each still restorable, by one key or the other
        ok(project.run("verify", f"--backup={item['id']}", env=env))

    again = ok(project.run("rekey", env=env))
    assert f"{4 - park_at} re-keyed, {park_at - 1} already current" in again.stdout, shown(again)
    assert "left by an interrupted rekey" in again.stdout + again.stderr
    assert_all_at(project, db, states, new, tmp, stale=[old])
