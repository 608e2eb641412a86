"""Revision folders that used to end in a traceback (issue 18): a pending revision file with a
syntax error, and a database stamped with a revision the code no longer has. Each runs `invoke`
as a subprocess on a real PostgreSQL database and checks what was printed, the database's
revision, the backups and the audit trail afterwards.
"""
from __future__ import annotations

import contextlib
import json

import pytest
from sqlalchemy import create_engine, pool, text

from helpers import (FIRST, HEAD, add_revision, advisory_locks_held, audit_events, failed, ok,
                     pg_env, shown)

pytestmark = pytest.mark.postgres

BROKEN = "0badc0ffee02"
UNKNOWN = "deadbeef0000"


@contextlib.contextmanager
def lock_held_by_someone_else(db):
    """The tool's advisory lock on `db`, held by a session of the test's: a run that reached the
    lock would be refused (exit 3) instead of saying what is wrong with the revisions."""
    from app.ops.databases.lock import MAINTENANCE_DATABASE, advisory_key

    engine = create_engine(db.url.set(database=MAINTENANCE_DATABASE), poolclass=pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                            {"k": advisory_key(db.name)}).scalar()
        yield
    engine.dispose()


def store_state(project) -> tuple[set[str], int]:
    store = project.store("pgtest")
    return project.backup_files("pgtest"), len(audit_events(store)) if store.is_dir() else 0


# -- case 3: a pending revision with a syntax error --------------------------------------------
def test_a_pending_revision_with_a_syntax_error_refuses_before_the_lock_and_the_backup(
        project, pgdb):
    env = pg_env(pgdb)
    ok(project.run("migrate", env=env))
    path = add_revision(project, BROKEN, HEAD,
                        'op.add_column("users", sa.Column("nickname", sa.String(40))',
                        message="Add a nickname", slug="nickname")
    line = next(n for n, l in enumerate(path.read_text().splitlines(), 1) if "nickname" in l
                and "add_column" in l)
    sentence = (f"revision file alembic/versions/{path.name} line {line} cannot be loaded: "
                "'(' was never closed")
    before = store_state(project)

    with lock_held_by_someone_else(pgdb):
        for task in (["migrate"], ["rollback"], ["migrate", "--sql"]):
            failed(project.run(*task, env=env), 2, sentence)

    status = ok(project.run("status", env=env))
    assert [l for l in status.stdout.splitlines() if sentence in l] == [
        f"  pending      unknown: {sentence}" + status.stdout.split(sentence, 1)[1].split("\n")[0]]
    info = json.loads(ok(project.run("status", "--json", env=env)).stdout)
    assert info["current"] == HEAD and info["revision_problem"].startswith(sentence)
    check = project.run("check", env=env)
    assert check.returncode == 3, shown(check)
    assert check.stdout.startswith(f"UNKNOWN: {sentence}"), shown(check)
    assert "Traceback" not in check.stdout + check.stderr

    assert pgdb.revision() == HEAD and "nickname" not in pgdb.columns("users")
    assert store_state(project) == before  # no backup, no audit event
    assert advisory_locks_held(pgdb) == 0


# -- case 4: the database at a revision the code does not have --------------------------------
def at_unknown_revision(project, pgdb) -> dict:
    env = pg_env(pgdb)
    ok(project.run("migrate", env=env))
    pgdb.sql("UPDATE alembic_version SET version_num = :v", v=UNKNOWN)
    return env


def test_a_database_at_an_unknown_revision_is_named_with_what_to_do(project, pgdb):
    env = at_unknown_revision(project, pgdb)
    advice = (f"the database is at revision {UNKNOWN}, which is not in alembic/versions",
              "pull the code that has it", "invoke stamp --env=pgtest REV")
    before = store_state(project)
    for task in (["migrate"], ["rollback"], ["rollback", "--to=base"], ["migrate", "--sql"]):
        failed(project.run(*task, env=env), 2, *advice)
    status = ok(project.run("status", env=env))
    pending = next(l for l in status.stdout.splitlines() if l.lstrip().startswith("pending"))
    assert all(a in pending for a in advice), status.stdout
    assert "rollback" not in status.stdout
    check = project.run("check", env=env)
    assert check.returncode == 1, shown(check)
    assert all(a in check.stdout for a in advice) and "Traceback" not in check.stderr
    history = ok(project.run("history", env=env))
    assert HEAD in history.stdout and FIRST in history.stdout

    assert pgdb.revision() == UNKNOWN and "phone_number" in pgdb.columns("users")
    assert store_state(project) == before
    assert advisory_locks_held(pgdb) == 0


def test_stamp_to_a_known_revision_works_from_an_unknown_one_under_window_lock_and_audit(
        project, pgdb):
    env = at_unknown_revision(project, pgdb)
    prod = dict(env, PRODUCTION="true", MAINTENANCE_WINDOW="2001-01-01 00:00-00:01")
    # The window guards it like a migrate.
    failed(project.run("stamp", HEAD, env=prod), 3, "window")
    assert pgdb.revision() == UNKNOWN
    # And the lock.
    with lock_held_by_someone_else(pgdb):
        failed(project.run("stamp", HEAD, env=env), 3, "holds the lock")
    assert pgdb.revision() == UNKNOWN

    result = ok(project.run("stamp", HEAD, env=env))
    assert f"Stamped: {UNKNOWN} -> {HEAD}" in result.stdout
    assert pgdb.sql("SELECT version_num FROM alembic_version") == [(HEAD,)]
    event = audit_events(project.store("pgtest"))[-1]
    assert (event["action"], event["outcome"]) == ("stamp", "succeeded")
    assert (event["from_revision"], event["to_revision"]) == (UNKNOWN, HEAD)
    assert advisory_locks_held(pgdb) == 0
    # The database is known again: nothing pending, status says so.
    assert json.loads(ok(project.run("status", "--json", env=env)).stdout)["pending"] == []
    assert "Nothing to migrate" in ok(project.run("migrate", env=env)).stdout
