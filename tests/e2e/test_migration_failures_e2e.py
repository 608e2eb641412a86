"""What a failed migration says afterwards: whether anything changed (a restore is advised only
when something may have), and which setting ended it (a role's statement_timeout is named as
such, not blamed on MIGRATION_STATEMENT_TIMEOUT)."""
from __future__ import annotations

import pytest

from helpers import HEAD, add_revision, admin_sql, failed, last_audit, ok, pg_env

pytestmark = pytest.mark.postgres


def migrated_then_pending(project, db, upgrade: str) -> dict:
    """`db` at HEAD, and one pending revision whose upgrade is `upgrade`."""
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    add_revision(project, "0badc0ffee01", HEAD, upgrade, message="Add notes, then fail",
                 slug="fails")
    return env


def assert_nothing_changed(project, db, env, error: str) -> None:
    [taken] = [b for b in project.backups("pgtest", env=env) if b["revision"] == HEAD]
    assert "nothing changed" in error and "needs no restore" in error, error
    assert "invoke restore" not in error, error
    assert taken["id"] in error  # named, as the backup that was taken; not as advice
    assert db.revision() == HEAD
    assert "notes" not in db.columns("users")
    event = last_audit(project.store("pgtest"))
    assert event["action"] == "migrate" and event["outcome"] == "failed"
    assert event["backup_id"] == taken["id"] and event["error"] == error.removeprefix("ERROR: ")


def test_a_failure_rolled_back_says_nothing_changed_and_advises_no_restore(project, pgdb):
    db = pgdb
    env = migrated_then_pending(project, db, """
        op.add_column("users", sa.Column("notes", sa.Text(), nullable=True))
        op.execute("SELECT 1 / 0")
        """)
    error = failed(project.run("migrate", env=env), 5, "division by zero")
    assert_nothing_changed(project, db, env, error)


def test_a_failure_after_an_autocommit_block_advises_the_restore(project, pgdb):
    """A revision that commits part of itself (autocommit_block) leaves that part in when it
    fails later: the backup is what undoes it."""
    db = pgdb
    env = migrated_then_pending(project, db, """
        with op.get_context().autocommit_block():
            op.execute("CREATE TABLE notes_staging (id int)")
        op.execute("SELECT 1 / 0")
        """)
    error = failed(project.run("migrate", env=env), 5, "division by zero")
    [taken] = [b for b in project.backups("pgtest", env=env) if b["revision"] == HEAD]
    assert f"invoke restore --env=pgtest --backup={taken['id']}" in error, error
    assert "nothing changed" not in error
    assert "notes_staging" in db.tables()  # what the advice is for


def test_a_statement_timeout_of_the_role_is_named_as_such(project, pgdb):
    """statement_timeout = 1s on the owner role (a DBA protecting the API), no
    MIGRATION_STATEMENT_TIMEOUT: the message names the role's setting, and nothing changed."""
    db = pgdb
    env = migrated_then_pending(project, db, """
        op.add_column("users", sa.Column("notes", sa.Text(), nullable=True))
        op.execute("SELECT pg_sleep(600)")
        """)
    admin_sql(db.admin, f'ALTER ROLE "{db.role}" SET statement_timeout = \'1s\'')
    error = failed(project.run("migrate", env=env, timeout=120), 5, "pg_sleep(600)",
                   f"statement_timeout = 1s set for role {db.role}")
    assert "longer than MIGRATION_STATEMENT_TIMEOUT" not in error, error
    assert "MIGRATION_STATEMENT_TIMEOUT (not set)" in error
    assert_nothing_changed(project, db, env, error)


def test_our_own_statement_timeout_is_named_with_its_value(project, pgdb):
    db = pgdb
    env = migrated_then_pending(project, db, 'op.execute("SELECT pg_sleep(600)")')
    env["MIGRATION_STATEMENT_TIMEOUT"] = "1s"
    failed(project.run("migrate", env=env, timeout=120), 5,
           "ran longer than MIGRATION_STATEMENT_TIMEOUT (1s)", "pg_sleep(600)")
    assert db.revision() == HEAD
