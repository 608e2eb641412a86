"""The one-at-a-time lock when its session is taken away: a DBA's idle timeout on the role, or a
server restart (here: pg_terminate_backend, which is what both look like to the client).

A lost lock before the change commits stops the run (exit 3, nothing changed); the lock's own
session survives the role's idle timeouts; releasing a lock already gone never turns the run's
outcome into a traceback.
"""
from __future__ import annotations

import time

import pytest

from fake_tools import fake_pg_bin, wrapped_pg_dump
from helpers import (FIRST, HEAD, T0, add_revision, admin_url, advisory_locks_held, at_first_revision,
                     derived_databases, failed, last_audit, ok, pg_env, pg_settings, take_backup)

from app.ops.errors import ExitCode, LockLost
from app.ops.databases import open_database
from app.ops.databases.lock import advisory_key

pytestmark = pytest.mark.postgres

ADMIN_DSN = admin_url().set(drivername="postgresql").render_as_string(hide_password=False)


def end_lock_session_sql(db) -> str:
    """Ends the session holding the lock on `db` alone (found by its advisory key), as a
    restart would: other runs on the same server, other tests', keep theirs."""
    return ("SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' "
            f"AND granted AND ((classid::bigint << 32) | objid::bigint) = {advisory_key(db.name)}")


def end_lock_session(db, log: str) -> str:
    """The shell line a tool wrapper runs to end the lock's session, writing the count to LOG."""
    return f"psql '{ADMIN_DSN}' -Atqc \"{end_lock_session_sql(db)}\" > '{log}'"


def role_setting(db, setting: str) -> None:
    """ALTER ROLE ... SET, as a DBA would on the application's role."""
    from sqlalchemy import text
    with db.admin.connect() as conn:
        conn.execute(text(f'ALTER ROLE "{db.role}" SET {setting}'))


def terminate_lock_sessions(db) -> int:
    return db.admin_sql(end_lock_session_sql(db))[0][0]


# -- the lock object ---------------------------------------------------------------------------
def test_a_lock_whose_session_ended_fails_its_check_and_releases_quietly(pg_database, tmp_path):
    settings = pg_settings(pg_database, tmp_path)
    with open_database(settings).lock("migrate", T0) as lock:
        lock.check()  # held: no error
        assert terminate_lock_sessions(pg_database) == 1
        with pytest.raises(LockLost) as caught:
            lock.check()
    # Leaving the block did not raise though pg_advisory_unlock could not run.
    assert lock.lost
    assert caught.value.exit_code == ExitCode.REFUSED
    assert "was lost" in str(caught.value) and pg_database.name in str(caught.value)
    assert advisory_locks_held(pg_database) == 0


def test_a_held_lock_reports_nothing_lost(pg_database, tmp_path):
    settings = pg_settings(pg_database, tmp_path)
    with open_database(settings).lock("migrate", T0) as lock:
        lock.check()
    assert not lock.lost
    assert advisory_locks_held(pg_database) == 0


def test_the_lock_session_outlives_the_roles_idle_session_timeout(pg_database, tmp_path):
    role_setting(pg_database, "idle_session_timeout = 200")
    settings = pg_settings(pg_database, tmp_path)
    with open_database(settings).lock("migrate", T0) as lock:
        time.sleep(0.8)  # the fault itself: four idle timeouts pass while the lock is held
        lock.check()
        assert advisory_locks_held(pg_database) == 1
    assert not lock.lost


# -- end to end --------------------------------------------------------------------------------
def test_a_slow_backup_under_an_idle_session_timeout_still_migrates(project, pg_database,
                                                                     tmp_path):
    db = pg_database
    at_first_revision(project, db)
    role_setting(db, "idle_session_timeout = 300")
    # pg_dump takes a second: the lock's session idles through three of the role's timeouts.
    bin_dir = wrapped_pg_dump(tmp_path, 'sleep 1\nexec "$REAL" "$@"')
    ok(project.run("migrate", env=pg_env(db, PG_BIN_DIR=str(bin_dir))))
    assert db.revision() == HEAD
    assert last_audit(project.store("pgtest"))["outcome"] == "succeeded"


def test_a_lock_lost_during_the_backup_stops_before_the_change(project, pg_database, tmp_path):
    db = pg_database
    backups_before, _ = at_first_revision(project, db)
    ended = tmp_path / "ended"
    bin_dir = wrapped_pg_dump(tmp_path, f'{end_lock_session(db, ended)}\nexec "$REAL" "$@"')
    result = project.run("migrate", env=pg_env(db, PG_BIN_DIR=str(bin_dir)))
    failed(result, 3, "lock", "was lost", "nothing was changed", FIRST)
    assert ended.read_text().strip() == "1"  # the fault did happen
    assert db.revision() == FIRST
    assert "phone_number" not in db.columns("users")
    # The backup it took is a good one and stays listed; the run is audited as stopped.
    assert len(project.backups("pgtest", env=pg_env(db))) == len(backups_before) + 1
    audit = last_audit(project.store("pgtest"))
    assert audit["action"] == "migrate" and audit["outcome"] == "lock lost"
    assert advisory_locks_held(db) == 0


def test_a_lock_lost_during_the_migration_rolls_the_change_back(project, pg_database):
    db = pg_database
    ok(project.run("migrate", env=pg_env(db)))
    assert db.revision() == HEAD
    add_revision(project, "0badlock0001", HEAD, f"""
        op.execute("CREATE TABLE made_without_the_lock (id integer)")
        op.execute("{end_lock_session_sql(db)}")
        """, 'op.execute("DROP TABLE made_without_the_lock")',
                 message="Ends the lock's session mid-migration, as a server restart would",
                 slug="loses_its_lock")
    result = project.run("migrate", env=pg_env(db))
    failed(result, 3, "lock", "was lost", "nothing was changed")
    assert db.revision() == HEAD
    assert "made_without_the_lock" not in db.tables()
    assert last_audit(project.store("pgtest"))["outcome"] == "lock lost"


def test_a_lock_lost_while_the_restored_copy_is_built_stops_before_the_swap(project, pg_database,
                                                                            tmp_path):
    """Restore asks the server for its lock right before the swap: a lock lost while pg_restore
    built the copy means another run may be changing the database, so nothing is swapped."""
    db = pg_database
    at_first_revision(project, db)
    backup = take_backup(project, "pgtest", env=pg_env(db))
    oid_before = db.sql("SELECT oid FROM pg_database WHERE datname = current_database()")[0][0]
    ended = tmp_path / "ended"
    # The load that builds the copy ends the lock's session (not `--version`, nor the reading
    # of the archive's table of contents with `--list`).
    bin_dir = fake_pg_bin(tmp_path / "pg-bin", pg_restore=f"""
case "$1" in
  --version|--list) ;;
  *) {end_lock_session(db, ended)} ;;
esac
exec "$REAL" "$@"
""")
    result = project.run("restore", f"--backup={backup['id']}", "--yes",
                         env=pg_env(db, PG_BIN_DIR=str(bin_dir)))
    failed(result, 3, "restore stopped before the swap", "was lost", "nothing was changed")
    assert ended.read_text().strip() == "1"  # the fault did happen, while the copy was built
    oid_after = db.sql("SELECT oid FROM pg_database WHERE datname = current_database()")[0][0]
    assert oid_after == oid_before  # the live database was not swapped
    assert derived_databases(db.admin, db.name) == []  # the copy was dropped
    assert last_audit(project.store("pgtest"))["outcome"] == "lock lost"
    assert advisory_locks_held(db) == 0
