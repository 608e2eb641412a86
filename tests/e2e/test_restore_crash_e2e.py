"""A restore cut short around its swap, and the next run that finishes it (issue 17, cases 1-3).

1. kill -9 of the whole run when its safety pg_dump of `DB__pre_restore_*` starts (shared
   server: nothing restarts it);
2. the server stopped just after the rename committed, started again once the run has ended;
3. the server stopped while the rename waits (between closing the live database to connections
   and renaming it), started again once the run has ended; and the rename's session ended while
   the server still answers, which the run settles itself on its way out.
2 and 3 run on a throwaway cluster of their own (initdb on a free port), never the shared
server. Each synchronises on a real event (a fake pg_dump writing to a FIFO or stopping the
server itself, a lock wait seen in pg_locks) and asserts what the server and the store hold
afterwards: which database holds which name and its oid, datallowconn, the audit trail, the
safety backup listed and verified, and nothing left in TMPDIR or the store."""
from __future__ import annotations

import json
import os
import signal
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, pool, text

from conftest import PgDatabase
from fake_tools import ended_afterwards, fake_pg_bin, started_and_parked, unnamed_files
from clusters import PG_BIN, as_owner
from helpers import (HEAD, admin_sql, db_properties, derived_databases, failed,
                     insert_users, migrated_with_backup, ok, pg_env, pg_state, restore_events,
                     shown, wait_until_no_sessions)

pytestmark = pytest.mark.postgres
INTENT_SUFFIX = ".restore-intent.json"


# -- a throwaway cluster, and what the tests read from a server ------------------------------
@pytest.fixture(scope="module")
def cluster(plain_cluster):
    """The module's throwaway cluster (conftest's plain_cluster: initdb on a free port)."""
    return plain_cluster


@pytest.fixture
def cluster_db(cluster):
    """A database of the throwaway cluster owned by a non-superuser role of its own."""
    admin = cluster.admin_engine()
    yield cluster.owned_database(admin)
    admin.dispose()


def allows_connections(admin, name: str) -> bool:
    return admin_sql(admin, "SELECT datallowconn FROM pg_database WHERE datname = :n",
                     n=name)[0][0]


def rows_in(db: PgDatabase, database: str, statement: str):
    engine = create_engine(db.url.set(database=database), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(statement)).fetchall()]
    finally:
        engine.dispose()


def leftovers_in_store(project) -> list[str]:
    """Intent records and half-written files: what a finished restore leaves none of."""
    return sorted(p.name for p in project.store("pgtest").iterdir()
                  if p.name.endswith(INTENT_SUFFIX) or p.name.endswith(".partial"))


def safety_backups(project, env: dict, backup_id: str) -> list[dict]:
    return [b for b in project.backups("pgtest", env=env)
            if b["reason"] == f"before restore of {backup_id}"]


def shows_interrupted(project, env: dict, backup_id: str, kept: str | None) -> dict:
    """`invoke status --json` and `invoke check` both show the unfinished restore."""
    status = ok(project.run("status", "--json", env=env))
    interrupted = json.loads(status.stdout)["interrupted_restores"]
    assert [i["backup_id"] for i in interrupted] == [backup_id], interrupted
    if kept:
        assert interrupted[0]["kept"] == kept
    text_status = ok(project.run("status", env=env))
    assert "interrupted restore" in text_status.stdout, shown(text_status)
    check = project.run("check", env=env)
    assert check.returncode == 1, shown(check)
    assert check.stdout.startswith("WARNING: "), shown(check)
    assert "WARNING interrupted_restore: interrupted restore: the restore of backup " \
        f"{backup_id}" in check.stdout, shown(check)
    return interrupted[0]


def finished_afterwards(project, db, env: dict, backup: dict, kept: str,
                        interrupted_run: str) -> None:
    """After the next run: the previous database dropped only once its safety backup (with
    the write made before the swap) is listed and verified; the restore audited as completed
    by that run; nothing left; check OK."""
    assert derived_databases(db.admin, db.name) == []
    assert allows_connections(db.admin, db.name)
    safety = safety_backups(project, env, backup["id"])
    assert len(safety) == 1, project.backups("pgtest", env=env)
    assert safety[0]["verified"] is True and safety[0]["revision"] == HEAD
    manifest = json.loads((project.store("pgtest") / f"{safety[0]['id']}.manifest.json")
                          .read_text())
    assert manifest["row_counts"]["public.users"] == 2  # ada, and the write before the swap
    ok(project.run("verify", "--restore-test", f"--backup={safety[0]['id']}", env=env))
    last = restore_events(project)[-1]
    assert last["outcome"] == f"completed by run {last['run']}", last
    assert last["interrupted_run"]["run"] == interrupted_run != last["run"]
    assert (last["backup_id"], last["safety_backup_id"], last["dropped_database"]) == \
        (backup["id"], safety[0]["id"], kept)
    assert leftovers_in_store(project) == []
    ok(project.run("check", env=env))


# == 1. kill -9 when the safety backup starts ===================================================
def test_a_restore_killed_during_its_safety_backup_is_finished_by_the_next_backup(
        project, pgdb, pg_admin, tmp_path):
    db = pgdb
    env = pg_env(db)
    backup = migrated_with_backup(project, db, ("ada@example.org", None))
    at_backup = pg_state(db)
    insert_users(db, ("written-before-the-swap@example.org", None))
    old_oid = db_properties(pg_admin, db.name)["oid"]
    said = tmp_path / "pid.fifo"
    os.mkfifo(said)
    # The safety pg_dump of the previous database says it started, then waits to be killed.
    bin_dir = fake_pg_bin(tmp_path / "bin", pg_dump=f"""case "$1 $PGDATABASE" in
  --version*) ;;
  *__pre_restore_*) echo $$ > '{said}'; exec sleep 600 ;;
esac
exec "$REAL" "$@"
""")
    scratch_tmp = tmp_path / "tmp"
    scratch_tmp.mkdir()
    run, _ = started_and_parked(project, said, "restore", "--yes", f"--backup={backup['id']}",
                                env=pg_env(db, PG_BIN_DIR=str(bin_dir), TMPDIR=str(scratch_tmp)))
    with ended_afterwards(run):
        # While it runs, its record is a restore in progress, not one left unfinished.
        check = project.run("check", "--json", env=env)
        state = {c["name"]: c for c in json.loads(check.stdout)["checks"]}["interrupted_restore"]
        assert state["state"] == "OK" and "in progress" in state["detail"], state
        # The safety backup being written: open in the store's folder, under no name.
        assert len(unnamed_files(run.pid, project.store("pgtest"))) == 1
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    wait_until_no_sessions(pg_admin, db.name)

    # Cut short: the backup in service, the old data kept, no record of the restore but its
    # intent, which status and check show.
    assert pg_state(db) == at_backup
    kept = derived_databases(pg_admin, db.name, "__pre_restore_")
    assert len(kept) == 1 and db_properties(pg_admin, kept[0])["oid"] == old_oid
    assert restore_events(project) == []
    assert safety_backups(project, env, backup["id"]) == []
    intent = shows_interrupted(project, env, backup["id"], kept[0])
    assert intent["phase"] == "swapped" and intent["safety_backup_id"]
    # The killed safety backup was written under no name (O_TMPFILE): nothing half-written is
    # left in the store, only the intent record.
    left = leftovers_in_store(project)
    assert len(left) == 1 and left[0].endswith(INTENT_SUFFIX), left
    assert not [p for p in project.store("pgtest").iterdir()
                if p.name.startswith(f".{intent['safety_backup_id']}.")]

    result = ok(project.run("backup", env=env))
    assert f"finished the restore of backup {backup['id']}" in result.stderr, shown(result)
    assert f"dropping {kept[0]}" in result.stderr, shown(result)
    assert pg_state(db) == at_backup
    assert list(scratch_tmp.iterdir()) == []
    # The kill left no audit event at all: the completion is the restore's one record.
    assert len(restore_events(project)) == 1
    finished_afterwards(project, db, env, backup, kept[0], intent["run"]["run"])


# == 2. the server restarts just after the rename commits ======================================
def test_a_server_restart_just_after_the_rename_is_read_from_the_server_and_finished(
        project, cluster, cluster_db, tmp_path):
    db = cluster_db
    env = pg_env(db)
    backup = migrated_with_backup(project, db, ("ada@example.org", None), env=env)
    at_backup = pg_state(db)
    insert_users(db, ("written-before-the-swap@example.org", None))
    old_oid = db_properties(db.admin, db.name)["oid"]
    stop = " ".join(as_owner(str(PG_BIN / "pg_ctl"), "-D", str(cluster.data), "stop",
                             "-m", "fast", "-w"))
    # Right after the swap the safety pg_dump starts: the server goes down at that moment.
    bin_dir = fake_pg_bin(tmp_path / "bin", pg_dump=f"""case "$1 $PGDATABASE" in
  --version*) ;;
  *__pre_restore_*) {stop} >/dev/null 2>&1
    echo "pg_dump: error: connection to server lost" >&2; exit 1 ;;
esac
exec "$REAL" "$@"
""")
    try:
        result = project.run("restore", "--yes", f"--backup={backup['id']}",
                             env=pg_env(db, PG_BIN_DIR=str(bin_dir)))
    finally:
        started_again(cluster)

    failed(result, 4, f"backup {backup['id']} is in service", "nothing was dropped",
           "the next migrate, rollback, backup or restore")
    assert pg_state(db) == at_backup
    kept = derived_databases(db.admin, db.name, "__pre_restore_")
    assert len(kept) == 1 and db_properties(db.admin, kept[0])["oid"] == old_oid
    assert allows_connections(db.admin, db.name) and allows_connections(db.admin, kept[0])
    assert derived_databases(db.admin, db.name, "__restoring_") == []
    first = restore_events(project)
    assert [e["outcome"] for e in first] == ["in service, safety backup pending"]
    shows_interrupted(project, env, backup["id"], kept[0])

    # The next migrate (nothing pending) finishes it first, under its lock.
    result = ok(project.run("migrate", env=env))
    assert f"finished the restore of backup {backup['id']}" in result.stderr, shown(result)
    assert "Nothing to migrate" in result.stdout, shown(result)
    assert pg_state(db) == at_backup
    assert len(restore_events(project)) == 2
    finished_afterwards(project, db, env, backup, kept[0], first[0]["run"])


# == 3. the server restarts between closing the live database and the rename ==================
def wait_for_rename_to_wait(admin, oid: int, run) -> None:
    """Until the restore's rename waits for the lock the test holds on the live database's
    catalog entry: it has closed the database to connections, and not renamed it."""
    while not admin_sql(admin, "SELECT count(*) FROM pg_locks WHERE locktype = 'object' "
                               "AND classid = 'pg_database'::regclass AND objid = :oid "
                               "AND NOT granted", oid=oid)[0][0]:
        assert run.poll() is None, f"restore ended early:\n{run.communicate()}"
        time.sleep(0.05)


def restore_cut_at_the_rename(project, db, backup_id: str, env: dict, cut) -> SimpleNamespace:
    """`invoke restore` whose rename waits for a lock the test holds on the live database's
    catalog entry (as any ALTER or COMMENT ON DATABASE takes: closing the database to
    connections does not need it, the rename does); `cut()` runs once it waits. The run's end."""
    old_oid = db_properties(db.admin, db.name)["oid"]
    holder_engine = create_engine(db.admin.url, poolclass=pool.NullPool)
    holder = holder_engine.connect()
    holder.execute(text(f'COMMENT ON DATABASE "{db.name}" IS NULL'))
    run = project.start("restore", "--yes", f"--backup={backup_id}", env=env)
    try:
        with ended_afterwards(run):
            wait_for_rename_to_wait(db.admin, old_oid, run)
            assert not allows_connections(db.admin, db.name)
            cut()
            out, err = run.communicate(timeout=120)
    finally:
        holder.invalidate()  # closed without a rollback: the server rolls its session back
        holder_engine.dispose()
    return SimpleNamespace(returncode=run.returncode, stdout=out, stderr=err)


def started_again(cluster) -> None:
    if not (cluster.data / "postmaster.pid").exists():
        cluster.start()


def test_a_server_restart_before_the_rename_reopens_the_database_on_the_next_run(
        project, cluster, cluster_db):
    db = cluster_db
    env = pg_env(db)
    backup = migrated_with_backup(project, db, ("ada@example.org", None), env=env)
    at_backup = pg_state(db)
    insert_users(db, ("written-before-the-swap@example.org", None))
    before = pg_state(db)
    old_oid = db_properties(db.admin, db.name)["oid"]
    try:
        result = restore_cut_at_the_rename(
            project, db, backup["id"], env,
            cut=lambda: cluster.pg_ctl("stop", "-m", "fast", "-w"))
    finally:
        started_again(cluster)

    failed(result, 4, "cut short at the swap", f"reopening {db.name}", "nothing was dropped")
    # Not swapped, and left closed: the server was away when the run tried to reopen it.
    assert db_properties(db.admin, db.name)["oid"] == old_oid
    assert not allows_connections(db.admin, db.name)
    assert derived_databases(db.admin, db.name, "__pre_restore_") == []
    first = restore_events(project)
    assert [e["outcome"] for e in first] == ["cut short at the swap"]
    # The database cannot be read, and both say why.
    status = project.run("status", env=env)
    failed(status, 2, "cut short at the swap", "finishes it")
    check = project.run("check", env=env)
    assert check.returncode == 2, shown(check)
    assert f"WARNING interrupted_restore: interrupted restore: the restore of backup " \
        f"{backup['id']}" in check.stdout, shown(check)

    # The next restore reopens it first, says so, drops the copy, then restores.
    result = ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))
    assert f"{db.name} was left closed to new connections" in result.stderr, shown(result)
    assert "it did not swap" in result.stderr, shown(result)
    assert pg_state(db) == at_backup
    assert allows_connections(db.admin, db.name)
    kept = derived_databases(db.admin, db.name, "__pre_restore_")
    assert len(kept) == 1 and db_properties(db.admin, kept[0])["oid"] == old_oid
    assert rows_in(db, kept[0], "SELECT email FROM users ORDER BY id") == \
        [(u[1],) for u in before["users"]]
    assert derived_databases(db.admin, db.name, "__restoring_") == []
    events = restore_events(project)
    # The second run's two events carry its one start time: in either order.
    assert events[0]["outcome"] == "cut short at the swap"
    again = events[0]["run"] != events[1]["run"] == events[2]["run"]
    assert again and sorted(e["outcome"] for e in events[1:]) == [
        f"not swapped, cleaned up by run {events[1]['run']}", "succeeded"], events
    assert len(safety_backups(project, env, backup["id"])) == 1
    assert leftovers_in_store(project) == []


def test_a_rename_cut_short_while_the_server_answers_is_settled_on_the_way_out(
        project, pgdb, pg_admin):
    """The rename's session ended mid-wait (as a restart ends it) while the server still
    answers: the run reopens what it closed and drops its copy itself, reads from the server
    that nothing was swapped, and leaves no record for the next run."""
    db = pgdb
    env = pg_env(db)
    migrated_with_backup(project, db, ("ada@example.org", None))
    backup = project.backups("pgtest", env=env)[0]
    insert_users(db, ("written-before-the-swap@example.org", None))
    before = pg_state(db)
    old_oid = db_properties(pg_admin, db.name)["oid"]
    result = restore_cut_at_the_rename(project, db, backup["id"], env, cut=lambda: admin_sql(
        pg_admin, "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'object' "
                  "AND classid = 'pg_database'::regclass AND objid = :oid AND NOT granted",
        oid=old_oid))

    failed(result, 4, "the server refused a step of the restore")
    assert pg_state(db) == before
    assert db_properties(pg_admin, db.name)["oid"] == old_oid
    assert allows_connections(pg_admin, db.name)
    assert derived_databases(pg_admin, db.name) == []
    assert [e["outcome"] for e in restore_events(project)] == ["failed"]
    assert leftovers_in_store(project) == []
    status = json.loads(ok(project.run("status", "--json", env=env)).stdout)
    assert status["interrupted_restores"] == []
