"""End to end for the catalog of backups (app/ops/catalog/dates.py) on the worst day: a backup dated in
the future, the newest artifact lost, a manifest that lies about its size, an artifact that is
a symbolic link out of the store. `invoke` runs as a subprocess on the embedded SQLite database
(the catalog knows no engine; the PostgreSQL restore of case 9 is at the end); every test
asserts the state afterwards: which backups the store still holds, what the database holds,
the manifests' recorded outcome, the audit trail.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from helpers import (HEAD, audit_events, dev_db, edit_manifest, failed, insert_users, last_audit,
                     manifest_path, ok, pg_env, read_manifest, shown, sqlite_query, take_backup)

pytestmark = pytest.mark.usefixtures("no_ambient_aws")

IN_2099 = "2099-01-01T00:00:00.000Z"


# -- helpers ---------------------------------------------------------------------------------


def add_user(project, email: str) -> None:
    conn = sqlite3.connect(dev_db(project))
    try:
        conn.execute("INSERT INTO users (email, full_name, hashed_password) VALUES (?, ?, 'x')",
                     (email, email.split("@")[0]))
        conn.commit()
    finally:
        conn.close()


def emails(project) -> list[str]:
    return [r[0] for r in sqlite_query(dev_db(project), "SELECT email FROM users ORDER BY id")]


def ago(**delta) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat(timespec="milliseconds")


def stored_ids(project, env_name: str = "dev") -> set[str]:
    """The ids whose manifest and artifact are both in the store."""
    folder = project.store(env_name)
    found = set()
    for path in folder.glob("*.manifest.json"):
        data = json.loads(path.read_text())
        if (folder / data["artifact"]).is_file():
            found.add(data["id"])
    return found


def three_backups(project) -> tuple[dict, dict, dict]:
    """A migrated SQLite database backed up three times, one user more each time: the oldest
    holds a@x, the middle a@x and b@x, the newest all three."""
    ok(project.run("migrate"))
    taken = []
    for email in ("a@x.org", "b@x.org", "c@x.org"):
        add_user(project, email)
        taken.append(take_backup(project, "dev"))
    return tuple(taken)


# -- case 8: a backup dated in the future ---------------------------------------------------------


@pytest.fixture
def one_in_2099(project):
    """Three backups; the newest's manifest says 2099 (its host's clock was wrong); the middle
    one is the newest real one; the database has moved on since (a fourth user)."""
    oldest, real, future = three_backups(project)
    edit_manifest(project, future["id"], created_at=IN_2099)
    add_user(project, "d@x.org")
    return oldest, real, future


def test_a_backup_dated_in_the_future_is_flagged_in_backups_and_status(project, one_in_2099):
    oldest, real, future = one_in_2099
    items = project.backups()
    assert [i["id"] for i in items] == [future["id"], real["id"], oldest["id"]]  # by date
    assert [i["future"] for i in items] == [True, False, False]
    table = ok(project.run("backups")).stdout
    assert f"IN THE FUTURE ({IN_2099})" in table.replace("\n", " ") or "IN THE FUTURE" in table

    status = json.loads(ok(project.run("status", "--json")).stdout)
    assert status["last_backup"]["id"] == real["id"] and status["last_backup"]["future"] is False
    assert [i["id"] for i in status["future_backups"]] == [future["id"]]
    text = ok(project.run("status")).stdout
    assert future["id"] in text and "clock" in text and real["id"] in text


def test_a_backup_dated_in_the_future_is_a_warning_and_not_the_age_check_reads(project,
                                                                                one_in_2099):
    oldest, real, future = one_in_2099
    result = project.run("check")
    assert result.returncode == 1, shown(result)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("WARNING: ") and future["id"] in lines[0]
    [clock] = [line for line in lines if line.startswith("WARNING clock:")]
    assert future["id"] in clock and IN_2099 in clock
    [backup] = [line for line in lines if " backup:" in line]
    assert backup.startswith("OK backup:") and real["id"] in backup
    report = json.loads(project.run("check", "--json").stdout)
    assert report["last_verified_backup"]["id"] == real["id"]
    assert report["last_backup"]["id"] == real["id"]

    # The real backups too old: CRITICAL, however far in the future the other one is.
    edit_manifest(project, oldest["id"], created_at=ago(hours=28))
    edit_manifest(project, real["id"], created_at=ago(hours=27))
    result = project.run("check")
    assert result.returncode == 2, shown(result)
    assert result.stdout.startswith("CRITICAL: ") and real["id"] in result.stdout.splitlines()[0]


def test_prune_never_counts_a_backup_dated_in_the_future(project, one_in_2099):
    oldest, real, future = one_in_2099
    result = ok(project.run("prune", env={"BACKUP_KEEP_LAST": "1"}))
    assert f"backup {future['id']} is dated {IN_2099}" in result.stderr, shown(result)
    # KEEP_LAST=1 keeps the newest real backup; the one from 2099 is kept for a person to
    # look at, not counted; only the oldest goes.
    assert stored_ids(project) == {real["id"], future["id"]}
    assert f"Deleting {oldest['id']}" in result.stdout
    assert read_manifest(project, real["id"])["verified"] is True  # read back before deleting
    # Again: nothing more goes.
    ok(project.run("prune", env={"BACKUP_KEEP_LAST": "1"}))
    assert stored_ids(project) == {real["id"], future["id"]}


def test_restore_passes_over_a_backup_dated_in_the_future(project, one_in_2099):
    _, real, future = one_in_2099
    result = ok(project.run("restore", "--yes"))
    assert f"passed over the newer backup {future['id']}: it is dated {IN_2099}" in result.stderr
    assert f"Restored backup {real['id']}" in result.stdout, shown(result)
    assert emails(project) == ["a@x.org", "b@x.org"]
    event = last_audit(project.store())
    assert event["action"] == "restore" and event["backup_id"] == real["id"]
    assert event["outcome"] == "succeeded"


def test_a_backup_a_few_seconds_ahead_is_not_in_the_future(project):
    """Two hosts' clocks a little apart: within the skew (5 minutes) a backup counts."""
    ok(project.run("migrate"))
    item = take_backup(project, "dev")
    ahead = (datetime.now(UTC) + timedelta(minutes=2)).isoformat(timespec="milliseconds")
    edit_manifest(project, item["id"], created_at=ahead)
    assert project.backups()[0]["future"] is False
    result = project.run("check")
    assert result.returncode == 0, shown(result)


# -- case 9: the newest artifact lost ---------------------------------------------------------


def test_restore_takes_the_intact_backup_prune_kept_when_the_newest_artifact_is_lost(project):
    oldest, kept, lost = three_backups(project)
    add_user(project, "d@x.org")
    Path(lost["location"]).unlink()  # deleted by hand, or a disk error
    result = ok(project.run("prune", env={"BACKUP_KEEP_LAST": "1"}))
    assert f"backup {lost['id']}'s artifact is missing" in result.stderr
    assert stored_ids(project) == {kept["id"]}
    assert manifest_path(project, lost["id"]).exists()  # listed, for a person to look at

    result = ok(project.run("restore", "--yes"))
    assert (f"passed over the newer backup {lost['id']}: its artifact is missing"
            in result.stderr), shown(result)
    assert f"Restored backup {kept['id']}" in result.stdout
    assert emails(project) == ["a@x.org", "b@x.org", "c@x.org"][:2]
    event = last_audit(project.store())
    assert event["backup_id"] == kept["id"] and event["outcome"] == "succeeded"
    # The safety backup of what was there (four users) is listed and verified.
    [safety] = [i for i in project.backups() if i["reason"] == f"before restore of {kept['id']}"]
    assert safety["verified"] is True and safety["artifact"] == "present"


def test_restore_passes_over_a_newer_backup_that_failed_verification_or_has_the_wrong_size(
        project):
    oldest, damaged, cut = three_backups(project)
    artifact = Path(cut["location"])
    artifact.write_bytes(artifact.read_bytes()[:-10])  # truncated: the listing sees its size
    edit_manifest(project, damaged["id"], verified=False, verify_error="checksum mismatch")
    result = ok(project.run("restore", "--yes"))
    assert f"passed over the newer backup {cut['id']}: its artifact is wrong size" in result.stderr
    assert (f"passed over the newer backup {damaged['id']}: it failed verification "
            "(checksum mismatch)") in result.stderr
    assert f"Restored backup {oldest['id']}" in result.stdout
    assert emails(project) == ["a@x.org"]


def test_with_no_backup_left_to_take_restore_names_each_one_and_changes_nothing(project):
    ok(project.run("migrate"))
    add_user(project, "a@x.org")
    only = take_backup(project, "dev")
    Path(only["location"]).unlink()
    add_user(project, "b@x.org")
    error = failed(project.run("restore", "--yes"), 2, "no verified backup whose artifact is "
                   "present", f"passed over the newer backup {only['id']}: its artifact is "
                   "missing")
    assert "invoke backups" in error
    assert emails(project) == ["a@x.org", "b@x.org"]
    assert [e for e in audit_events(project.store()) if e.get("action") == "restore"] == []


# -- case 11: verify checks the size, and refuses a symbolic link ------------------------------


def test_verify_fails_on_a_manifest_whose_size_is_not_the_artifacts(project):
    ok(project.run("migrate"))
    item = take_backup(project, "dev")
    real_size = Path(item["location"]).stat().st_size
    edit_manifest(project, item["id"], size=10**15)
    failed(project.run("verify", f"--backup={item['id']}"), 4, item["id"],
           f"is {real_size} bytes but its manifest records {10**15}")
    recorded = read_manifest(project, item["id"])
    assert recorded["verified"] is False and str(10**15) in recorded["verify_error"]
    # Restore refuses it too (asked for by id), and the database is left as it was.
    add_user(project, "after@x.org")
    failed(project.run("restore", "--yes", f"--backup={item['id']}"), 4, item["id"])
    assert emails(project) == ["after@x.org"]


def test_an_artifact_that_is_a_symbolic_link_out_of_the_store_is_refused(project, tmp_path):
    ok(project.run("migrate"))
    add_user(project, "a@x.org")
    item = take_backup(project, "dev")
    # The artifact replaced by a link to a file out of the store, with the very same bytes:
    # checksum and size match, and still it is not the store's to read.
    artifact = Path(item["location"])
    outside = tmp_path / "elsewhere.sqlite3.zst"
    outside.write_bytes(artifact.read_bytes())
    artifact.unlink()
    artifact.symlink_to(outside)
    add_user(project, "b@x.org")

    failed(project.run("verify", f"--backup={item['id']}"), 4, item["id"], "symbolic link",
           str(outside))
    assert read_manifest(project, item["id"])["verified"] is False
    failed(project.run("restore", "--yes", f"--backup={item['id']}"), 4, item["id"],
           "symbolic link")
    assert emails(project) == ["a@x.org", "b@x.org"]
    assert outside.read_bytes() and artifact.is_symlink()  # nothing deleted or followed
    assert project.backups()[0]["artifact"] == "missing"  # not listed as the store's file


# -- case 9 on PostgreSQL ------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_restore_takes_the_kept_backup_when_the_newest_artifact_is_lost(project, pgdb):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("first@x.org", None))
    older = take_backup(project, "pgtest", env)
    insert_users(db, ("second@x.org", None))
    kept = take_backup(project, "pgtest", env)
    insert_users(db, ("third@x.org", None))
    lost = take_backup(project, "pgtest", env)
    insert_users(db, ("fourth@x.org", None))
    Path(lost["location"]).unlink()
    ok(project.run("prune", "--env=pgtest", env=dict(env, BACKUP_KEEP_LAST="1")))
    assert stored_ids(project, "pgtest") == {kept["id"]}
    assert older["id"] not in {i["id"] for i in project.backups("pgtest", env=env)}

    result = ok(project.run("restore", "--env=pgtest", "--yes", env=env))
    assert f"passed over the newer backup {lost['id']}: its artifact is missing" in result.stderr
    assert db.sql("SELECT email FROM users ORDER BY id") == [("first@x.org",), ("second@x.org",)]
    assert db.revision() == HEAD
    event = last_audit(project.store("pgtest"))
    assert event["backup_id"] == kept["id"] and event["outcome"] == "succeeded"
    [safety] = [i for i in project.backups("pgtest", env=env)
                if i["reason"] == f"before restore of {kept['id']}"]
    assert safety["verified"] is True and safety["artifact"] == "present"
