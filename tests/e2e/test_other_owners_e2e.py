"""End to end (issue 17, case 5): a database holding a table of another role, as PostgreSQL 15
allows it (`public` owned by pg_database_owner, a second role with CREATE on it, the app role a
member), and grants on pg_catalog functions (what the pgBackRest set-up asks for). The backup
was verified, but every restore and restore-test failed "permission denied for schema public".
"""
from __future__ import annotations

import secrets

import pytest
from sqlalchemy import create_engine, pool, text

from check_output import WARNING, checked, line_of
from helpers import (HEAD, SAFETY_PREFIX, Untouched, admin_url, drop_derived, failed,
                     insert_users, ok, pg_env, read_manifest, shown, take_backup)

CATALOG_GRANT = ("GRANT EXECUTE ON FUNCTION pg_catalog.pg_create_restore_point(text), "
                 "pg_catalog.pg_switch_wal() TO {role}")


def as_admin_in(db, statement: str):
    """Run SQL as the server's admin role inside db (not its maintenance database)."""
    engine = create_engine(admin_url().set(database=db.name), poolclass=pool.NullPool,
                           isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            result = conn.execute(text(statement))
            return result.fetchall() if result.returns_rows else None
    finally:
        engine.dispose()


@pytest.fixture
def reports_role(pgdb):
    """A second role (NOLOGIN) the app role is a member of, with CREATE on `public`."""
    name = f"mida_reports_{secrets.token_hex(3)}"
    as_admin_in(pgdb, f'CREATE ROLE "{name}" NOLOGIN')
    as_admin_in(pgdb, f'GRANT "{name}" TO "{pgdb.role}"')
    pgdb.sql(f'GRANT CREATE ON SCHEMA public TO "{name}"')  # the owner may: pg_database_owner
    yield name
    drop_derived(pgdb.admin, pgdb.name)
    as_admin_in(pgdb, f'DROP OWNED BY "{name}"')
    as_admin_in(pgdb, f'DROP ROLE "{name}"')


def grants_and_owners(db) -> dict:
    return {
        "schema": db.sql("SELECT nspowner::regrole::text, nspacl::text FROM pg_namespace "
                         "WHERE nspname = 'public'"),
        "tables": db.sql("SELECT c.relname, pg_get_userbyid(c.relowner), c.relacl::text "
                         "FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
                         "AND c.relkind IN ('r', 'S') ORDER BY 1"),
    }


@pytest.fixture
def other_owner_db(project, pgdb, reports_role):
    """pgdb migrated, with users and a table `reports` owned by the reports role (granted to
    the app role for reading), the pg_catalog grants; its owners and grants, and its backup."""
    env = pg_env(pgdb)
    ok(project.run("migrate", env=env))
    insert_users(pgdb, ("ada@example.org", None))
    pgdb.sql(f'SET ROLE "{reports_role}"; '
             "CREATE TABLE reports (id serial PRIMARY KEY, body text); "
             "INSERT INTO reports (body) VALUES ('weekly'), ('monthly'); "
             f'GRANT SELECT ON reports TO "{pgdb.role}"; RESET ROLE')
    as_admin_in(pgdb, CATALOG_GRANT.format(role=f'"{pgdb.role}"'))
    before = grants_and_owners(pgdb)
    owners = {name: owner for name, owner, _ in before["tables"]}
    assert owners["reports"] == owners["reports_id_seq"] == reports_role, before
    backup = take_backup(project, "pgtest", env)
    return pgdb, env, backup, before


@pytest.mark.postgres
def test_a_table_of_another_role_is_restored_with_its_owner_and_grants(project, other_owner_db,
                                                                       reports_role):
    db, env, backup, before = other_owner_db
    ok(project.run("verify", "--restore-test", f"--backup={backup['id']}", env=env))
    db.sql("INSERT INTO reports (body) VALUES ('after the backup')")

    result = ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))
    assert grants_and_owners(db) == before
    assert db.sql("SELECT body FROM reports ORDER BY id") == [("weekly",), ("monthly",)]
    assert db.revision() == HEAD
    # The grants on the server's own functions are left out, and the output says how to give
    # them again: only a superuser may.
    assert "pg_catalog.pg_switch_wal()" in result.stdout, shown(result)
    assert "superuser" in result.stdout, shown(result)
    assert db.sql("SELECT has_function_privilege('pg_catalog.pg_switch_wal()', 'EXECUTE')") \
        == [(False,)]
    safety = [b for b in project.backups("pgtest", env=env)
              if b["reason"] == SAFETY_PREFIX + backup["id"]]
    assert len(safety) == 1 and safety[0]["verified"], shown(result)


@pytest.mark.postgres
def test_a_backup_whose_owner_role_the_app_role_cannot_use_is_refused_naming_the_grant(
        project, other_owner_db, reports_role):
    db, env, backup, before = other_owner_db
    # The dump recorded, in its own snapshot, whose objects it holds.
    assert read_manifest(project, backup["id"], "pgtest")["owners"] == sorted([db.role,
                                                                               reports_role])
    as_admin_in(db, f'REVOKE "{reports_role}" FROM "{db.role}"')
    grant = f'GRANT "{reports_role}" TO "{db.role}"'
    # `invoke check` does not call the newest backup restorable any more.
    lines = checked(project.run("check", env=env), WARNING)
    assert grant in line_of(lines, "restorable") and backup["id"] in line_of(lines, "restorable")
    untouched = Untouched(project, db, db.admin, env)
    verified_at = read_manifest(project, backup["id"], "pgtest")["verified_at"]

    failed(project.run("restore", "--yes", f"--backup={backup['id']}", env=env), 3,
           reports_role, grant, "refused before any work", "not changed")
    untouched.check()
    failed(project.run("verify", "--restore-test", f"--backup={backup['id']}", env=env), 3,
           grant, "refused before any work")
    # Before any work: neither run verified (so read or extracted) the backup.
    assert read_manifest(project, backup["id"], "pgtest")["verified_at"] == verified_at

    as_admin_in(db, grant)  # what the message says
    assert "restorable" not in project.run("check", env=env).stdout
    ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))
    assert grants_and_owners(db) == before


@pytest.mark.postgres
def test_grants_on_pg_catalog_functions_are_left_out_and_named(project, pgdb):
    """The grants the pgBackRest set-up asks for, alone: before, the restore failed
    "permission denied for function pg_create_restore_point" (only a superuser may give them
    again); now they are left out, and the output gives the statements to run."""
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    as_admin_in(db, CATALOG_GRANT.format(role=f'"{db.role}"'))
    backup = take_backup(project, "pgtest", env)
    insert_users(db, ("grace@example.org", None))

    result = ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))
    assert db.sql("SELECT email FROM users") == [("ada@example.org",)]
    for statement in (f'GRANT ALL ON FUNCTION pg_catalog.pg_create_restore_point(text) '
                      f'TO "{db.role}"', "pg_catalog.pg_switch_wal()"):
        assert statement in result.stdout or statement.replace('"', '') in result.stdout, \
            shown(result)
    ok(project.run("verify", "--restore-test", f"--backup={backup['id']}", env=env))


@pytest.mark.postgres
def test_an_extensions_objects_are_not_counted_as_another_roles(project, pgdb):
    """hstore (a trusted extension) created by the server's admin: its functions and types
    belong to the admin but are the extension's (pg_dump lists only the extension), so the
    backup records no owner but the app role and the owner role restores it: no false
    refusal."""
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    as_admin_in(db, "CREATE EXTENSION hstore SCHEMA public")
    assert as_admin_in(db, "SELECT count(*) FROM pg_proc WHERE pronamespace = "
                           "'public'::regnamespace AND proowner <> "
                           f"'{db.role}'::regrole")[0][0] > 0  # the admin's, in public
    backup = take_backup(project, "pgtest", env)
    assert read_manifest(project, backup["id"], "pgtest")["owners"] == [db.role]
    ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))
    assert db.sql("SELECT extname FROM pg_extension WHERE extname = 'hstore'") == [("hstore",)]
