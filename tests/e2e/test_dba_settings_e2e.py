"""End to end: settings a DBA puts on roles and databases (`ALTER ROLE ... SET`) must not break
the tool's own sessions, and a restore that could not carry a database's settings over must
refuse before doing any work, naming each setting and the SQL a DBA must run.
"""
from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from fake_tools import fake_pg_bin
from helpers import (FIRST, HEAD, Untouched, admin_sql, audit_events, derived_databases,
                     drop_derived, failed, ids, insert_users, ok, pg_env, read_manifest, shown,
                     take_backup)


def set_on_owner(db, setting: str, value: str) -> None:
    """As a DBA would: a default for every session the owner role opens, in any database."""
    admin_sql(db.admin, f'ALTER ROLE "{db.role}" SET {setting} = \'{value}\'')


def row_counts(project, backup: dict) -> dict:
    """What the dump's own snapshot counted, as its manifest records it."""
    return read_manifest(project, backup["id"], "pgtest")["row_counts"]


def slow_pg_dump(tmp_path: Path, seconds: float) -> Path:
    """A PG_BIN_DIR whose pg_dump takes `seconds` longer than the real one, as a dump of a big
    database does: the session holding the exported snapshot stays open that long."""
    return fake_pg_bin(tmp_path / "slow-bin",
                       pg_dump=f'"$REAL" "$@"\nstatus=$?\nsleep {seconds}\nexit $status\n')


# == timeouts on the owner role ================================================================
@pytest.mark.postgres
def test_idle_in_transaction_timeout_on_the_role_does_not_break_a_backup(project, pgdb, tmp_path):
    """The snapshot's session sits idle in its transaction while pg_dump runs: with
    idle_in_transaction_session_timeout=1s on the role and a dump that takes longer, the server
    ended it and the backup was a traceback."""
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None), ("grace@example.org", "+1 555 0100"))
    set_on_owner(db, "idle_in_transaction_session_timeout", "1s")

    slow = dict(env, PG_BIN_DIR=str(slow_pg_dump(tmp_path, 2.5)))
    backup = take_backup(project, "pgtest", slow)
    assert row_counts(project, backup) == {"public.alembic_version": 1, "public.users": 2}
    # The same role setting on a migrate, a restore test and a restore: all go through.
    ok(project.run("verify", "--restore-test", f"--backup={backup['id']}", env=slow))
    ok(project.run("rollback", env=slow))
    assert db.revision() != HEAD
    ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=slow))
    assert db.revision() == HEAD
    assert sorted(r[0] for r in db.sql("SELECT email FROM users")) == \
        ["ada@example.org", "grace@example.org"]


@pytest.mark.postgres
def test_a_small_statement_timeout_on_the_role_does_not_break_backups_or_drills(project, pgdb):
    """statement_timeout=5ms on the role (a DBA protecting the API): counting 300,000 rows for
    the manifest takes longer than that, and the backup failed. The tool's own sessions switch
    it off; pg_dump and pg_restore get it switched off from their first statement on."""
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    db.sql("INSERT INTO users (email, hashed_password) "
           "SELECT 'user' || i || '@example.org', 'x' FROM generate_series(1, 300000) i")
    set_on_owner(db, "statement_timeout", "5ms")

    backup = take_backup(project, "pgtest", env)
    assert row_counts(project, backup)["public.users"] == 300000
    result = ok(project.run("verify", "--restore-test", f"--backup={backup['id']}", env=env))
    assert "300001 rows" in result.stdout, shown(result)
    ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))
    assert admin_sql(db.admin, "SELECT datname FROM pg_database WHERE datname = :n", n=db.name)
    assert derived_databases(db.admin, db.name, "__scratch_") == []


# == settings of other roles inside the database ===============================================
@pytest.fixture
def api_role(pgdb):
    """The API's own role, with a per-database setting a DBA gave it there (the restore must
    give the restored database the same, and only a privileged role may)."""
    name = f"mida api-{secrets.token_hex(3)}"
    admin_sql(pgdb.admin, f'CREATE ROLE "{name}" LOGIN')
    admin_sql(pgdb.admin, f'ALTER ROLE "{name}" IN DATABASE "{pgdb.name}" '
                          "SET statement_timeout = '5s'")
    yield name
    drop_derived(pgdb.admin, pgdb.name)
    admin_sql(pgdb.admin, f'ALTER ROLE "{name}" IN DATABASE "{pgdb.name}" RESET ALL')
    admin_sql(pgdb.admin, f'DROP ROLE IF EXISTS "{name}"')


def role_settings(db, role: str) -> list[str]:
    rows = admin_sql(db.admin, "SELECT s.setconfig FROM pg_db_role_setting s "
                               "JOIN pg_database d ON d.oid = s.setdatabase "
                               "JOIN pg_roles r ON r.oid = s.setrole "
                               "WHERE d.datname = :d AND r.rolname = :r", d=db.name, r=role)
    return sorted(rows[0][0]) if rows else []


@pytest.mark.postgres
def test_a_setting_the_owner_may_not_carry_over_refuses_the_restore_at_once(project, pgdb,
                                                                             api_role):
    """Before: the whole pg_restore ran, then 'permission denied' without naming the statement.
    Now: refused before any work (no safety backup, no copy), exit 3, naming each setting and the
    SQL a DBA runs."""
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    backup = take_backup(project, "pgtest", env)
    # A superuser-only parameter set on the whole database: its owner may not set it either.
    admin_sql(db.admin, f'ALTER DATABASE "{db.name}" SET log_min_duration_statement = \'250ms\'')
    untouched = Untouched(project, db, db.admin, env)
    events_before = len(audit_events(project.store("pgtest")))

    message = failed(project.run("restore", "--yes", f"--backup={backup['id']}", env=env), 3,
                     f'ALTER ROLE "{api_role}" IN DATABASE "{db.name}" SET statement_timeout',
                     f'ALTER DATABASE "{db.name}" SET log_min_duration_statement',
                     "RESET", "superuser")
    untouched.check()
    assert role_settings(db, api_role) == ["statement_timeout=5s"]
    events = audit_events(project.store("pgtest"))
    assert len(events) == events_before + 1 and events[-1]["outcome"] == "failed"

    # The SQL the message gives, run by a DBA, lets the restore through.
    for statement in (f'ALTER ROLE "{api_role}" IN DATABASE "{db.name}" RESET statement_timeout',
                      f'ALTER DATABASE "{db.name}" RESET log_min_duration_statement'):
        assert statement in message, message
        admin_sql(db.admin, statement)
    ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))


@pytest.mark.postgres
def test_a_setting_the_owner_may_set_is_carried_over_by_the_restore(project, pgdb, api_role):
    """With CREATEROLE (and admin option on the API role), the owner may set the API role's
    settings: the restored database gets them, exactly."""
    db = pgdb
    env = pg_env(db)
    admin_sql(db.admin, f'ALTER ROLE "{db.role}" CREATEROLE')
    admin_sql(db.admin, f'GRANT "{api_role}" TO "{db.role}" WITH ADMIN OPTION')
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    backup = take_backup(project, "pgtest", env)
    oid_before = admin_sql(db.admin, "SELECT oid FROM pg_database WHERE datname = :n", n=db.name)

    ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))
    assert admin_sql(db.admin, "SELECT oid FROM pg_database WHERE datname = :n",
                     n=db.name) != oid_before
    assert role_settings(db, api_role) == ["statement_timeout=5s"]


@pytest.mark.postgres
def test_drills_on_scratch_copies_do_not_copy_other_roles_settings(project, pgdb, api_role):
    """A scratch copy is the owner's alone: restore tests and rehearsals give it no settings,
    so another role's per-database setting neither blocks them nor needs a DBA."""
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", f"--revision={FIRST}", env=env))
    insert_users_first = "INSERT INTO users (email, hashed_password) VALUES ('ada@example.org', 'x')"
    db.sql(insert_users_first)
    backup = take_backup(project, "pgtest", env)
    listed = ids(project.backups("pgtest", env=env))

    ok(project.run("verify", "--restore-test", f"--backup={backup['id']}", env=env))
    ok(project.run("rehearse", env=env))
    assert derived_databases(db.admin, db.name) == []
    assert ids(project.backups("pgtest", env=env)) == listed
    assert role_settings(db, api_role) == ["statement_timeout=5s"]


# == what pg_dump and pg_restore are given =====================================================
def recording_pg_bin(tmp_path: Path) -> tuple[Path, Path]:
    """A PG_BIN_DIR whose pg_dump and pg_restore log their PGOPTIONS and arguments, then run
    the real tool."""
    log = tmp_path / "children.log"
    body = (f'[ "$1" = "--version" ] || printf "%s|%s|%s\\n" "$(basename "$0")" "$PGOPTIONS" '
            f'"$*" >> \'{log}\'\nexec "$REAL" "$@"\n')
    return fake_pg_bin(tmp_path / "recording-bin", pg_dump=body, pg_restore=body), log


@pytest.mark.postgres
def test_pg_dump_and_pg_restore_get_the_maintenance_options_after_the_urls_own(project, pgdb,
                                                                               tmp_path):
    """The role's statement_timeout must be off from the tools' first statement (they switch it
    off themselves only later), and `options` given in the URL must still reach them first."""
    db = pgdb
    bin_dir, log = recording_pg_bin(tmp_path)
    url = db.url.update_query_dict({"options": "-c work_mem=7MB"})
    env = {"APP_ENV": "pgtest", "DATABASE_URL": url.render_as_string(hide_password=False),
           "PG_BIN_DIR": str(bin_dir)}
    ok(project.run("migrate", env=env))
    backup = take_backup(project, "pgtest", env)
    ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))

    calls = [line.split("|", 2) for line in log.read_text().splitlines()]
    maintenance = "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0"
    assert {tool for tool, _, _ in calls} == {"pg_dump", "pg_restore"}
    for tool, options, args in calls:
        assert options.startswith(f"-c work_mem=7MB {maintenance}"), (tool, options, args)
    loads = [options for tool, options, args in calls if "--dbname=" in args]
    tuned = "-c maintenance_work_mem=256MB -c synchronous_commit=off"
    assert loads and all(options.endswith(tuned) for options in loads), calls
