"""Settings that used to lie (issue 18): a PostgreSQL env without a database name, a `.env`
line python-dotenv cannot parse, a password in the URL's query string, and the maintenance
database. Each runs `invoke` as a subprocess and checks which database was touched, what was
printed, and what the store and the audit trail hold afterwards.
"""
from __future__ import annotations

import json
from urllib.parse import quote_plus

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from helpers import (AWKWARD_PASSWORD, HEAD, assert_no_password, audit_events, failed, ok,
                     sql_in)

pytestmark = pytest.mark.postgres


def settings_of(db, **overrides: str | None) -> dict:
    values = {"POSTGRES_SERVER": db.url.host or "127.0.0.1", "POSTGRES_PORT": str(db.url.port or 5432),
              "POSTGRES_USER": db.url.username, "POSTGRES_PASSWORD": db.url.password,
              "POSTGRES_DB": db.name}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


@pytest.fixture
def users_own_database(pgdb):
    """The database libpq picks when none is named: the one named after the role (the issue's
    `mida_prod` user had one). Owned by the role, dropped afterwards."""
    with pgdb.admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{pgdb.role}" OWNER "{pgdb.role}"'))
    yield pgdb.role
    with pgdb.admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{pgdb.role}" WITH (FORCE)'))


def tables_in(database: str) -> set[str]:
    return {r[0] for r in sql_in(database, "SELECT tablename FROM pg_tables "
                                           "WHERE schemaname = 'public'")}


def assert_untouched(project, pgdb, fallback: str) -> None:
    """Neither the meant database nor libpq's fallback changed; no backup, no audit event."""
    assert tables_in(pgdb.name) == set()
    assert tables_in(fallback) == set()
    assert project.backup_files("prod") == set()


# -- case 1: no database name ------------------------------------------------------------------
@pytest.mark.parametrize("task", [["migrate"], ["rollback", "--to=base", "--yes"], ["backup"]])
def test_a_postgres_env_without_postgres_db_is_a_config_error(project, pgdb, users_own_database,
                                                               task):
    project.env_file("prod", MAINTENANCE_WINDOW="Mon-Sun 00:00-23:59",
                     **settings_of(pgdb, POSTGRES_DB=None))
    failed(project.run(*task, "--env=prod"), 2, "POSTGRES_DB is not set for env 'prod'")
    assert_untouched(project, pgdb, users_own_database)


def test_a_database_url_without_a_database_name_is_a_config_error(project, pgdb,
                                                                  users_own_database):
    # The path cut off (the rendered password has its `/` percent-encoded).
    url = pgdb.url.render_as_string(hide_password=False).rsplit("/", 1)[0]
    project.env_file("prod", MAINTENANCE_WINDOW="Mon-Sun 00:00-23:59", DATABASE_URL=url)
    failed(project.run("migrate", "--env=prod"), 2, "DATABASE_URL has no database name")
    assert_untouched(project, pgdb, users_own_database)


def test_a_line_python_dotenv_cannot_parse_is_an_error_naming_file_and_line(
        project, pgdb, users_own_database):
    path = project.env_file("prod", MAINTENANCE_WINDOW="Mon-Sun 00:00-23:59",
                            **settings_of(pgdb, POSTGRES_DB=None))
    lines = path.read_text().splitlines()
    lines.insert(2, f"POSTGRES_DB='{pgdb.name}")  # the quote left open, as in the issue
    path.write_text("\n".join(lines) + "\n")
    for task in (["migrate"], ["status"]):
        result = project.run(*task, "--env=prod")
        failed(result, 2, ".env.prod line 3 cannot be read", str(path))
        assert "could not parse statement" not in result.stderr  # one sentence, not two
    check = project.run("check", "--env=prod")
    assert check.returncode == 3 and check.stdout.startswith("UNKNOWN: .env.prod line 3"), check
    assert_untouched(project, pgdb, users_own_database)


# -- case 2: a password in the query string ----------------------------------------------------
def query_password_url(db, key: str = "password", database: str | None = None) -> str:
    u = db.url  # the same, but with no password in the authority
    plain = URL.create(u.drivername, u.username, None, u.host, u.port, database or db.name)
    return (plain.render_as_string(hide_password=False)
            + f"?sslmode=disable&{key}={quote_plus(AWKWARD_PASSWORD)}")


def test_a_password_in_the_query_string_is_masked_everywhere(project, pgdb):
    env = {"APP_ENV": "pgtest", "DATABASE_URL": query_password_url(pgdb),
           "BACKUP_KEEP_LAST": "5"}
    migrated = ok(project.run("migrate", env=env))
    assert "password=***" in migrated.stderr.splitlines()[0], migrated.stderr
    assert pgdb.revision() == HEAD
    status = ok(project.run("status", env=env))
    info = json.loads(ok(project.run("status", "--json", env=env)).stdout)
    assert "password=***" in status.stdout and "?password=***&" in info["database"]
    check = project.run("check", env=env)
    assert check.returncode in (0, 1) and "password=***" in check.stdout, check
    assert_no_password(check.stdout, check.stderr)
    store = project.store("pgtest")
    written = [p.read_text() for p in store.glob("*.json")]
    assert len(written) >= 2  # the manifest and the audit event
    assert_no_password(*written)
    assert "?password=***&" in audit_events(store)[-1]["database"]
    assert ":***@" not in info["database"]  # the secret was in the query string only


@pytest.mark.parametrize("key", ["password", "sslpassword"])
def test_an_error_message_masks_the_query_string_secrets(project, pgdb, key):
    env = {"APP_ENV": "pgtest",
           "DATABASE_URL": query_password_url(pgdb, key, database=pgdb.name + "_missing")}
    result = project.run("migrate", env=env)
    line = failed(result, 2, "cannot connect to", f"{key}=***")
    assert "does not exist" in line
    assert project.backup_files("pgtest") == set()


# -- case 10: the maintenance database ---------------------------------------------------------
@pytest.fixture
def locked_down_cluster():
    """A throwaway cluster (initdb, trust auth, a free port) whose `postgres` database the
    PUBLIC may not connect to, as some hardened servers are; removed afterwards. Holds a role
    `mida_owner` (LOGIN CREATEDB) owning database `mida`."""
    from clusters import build_cluster

    cluster = build_cluster("maintenance-cluster-")
    try:
        cluster.psql("CREATE ROLE mida_owner LOGIN CREATEDB")
        cluster.psql("CREATE DATABASE mida OWNER mida_owner")
        cluster.psql("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
        yield cluster
    finally:
        cluster.remove()


def cluster_env(cluster, **extra: str) -> dict:
    from clusters import PG_BIN
    return {"APP_ENV": "pgtest", "POSTGRES_SERVER": "127.0.0.1",
            "POSTGRES_PORT": str(cluster.port), "POSTGRES_USER": "mida_owner",
            "POSTGRES_DB": "mida", "PG_BIN_DIR": str(PG_BIN), **extra}


def cluster_revision(cluster) -> str:
    if cluster.psql("SELECT to_regclass('alembic_version') IS NULL", database="mida") == "t":
        return "base"
    return cluster.psql("SELECT version_num FROM alembic_version", database="mida")


def test_the_maintenance_database_is_a_setting_with_libpqs_fallback(project, locked_down_cluster):
    cluster = locked_down_cluster
    # `postgres` is closed to the role: the lock's session falls back to template1, as
    # createdb would, and the release goes through.
    env = cluster_env(cluster)
    ok(project.run("migrate", env=env))
    assert cluster_revision(cluster) == HEAD
    events = audit_events(project.store("pgtest"))
    assert [(e["action"], e["outcome"]) for e in events] == [("migrate", "succeeded")]
    check = project.run("check", env=env)
    assert "OK maintenance_db: maintenance database template1 reachable" in check.stdout, check

    # A maintenance database that cannot be reached: check says so, and a rollback refuses
    # before its backup (the lock is the first thing it connects for), the database as it was.
    nowhere = cluster_env(cluster, POSTGRES_MAINTENANCE_DB="mida_nowhere")
    check = project.run("check", env=nowhere)
    assert check.returncode == 1 and check.stdout.startswith("WARNING: "), check
    line = next(l for l in check.stdout.splitlines() if l.startswith("WARNING maintenance_db:"))
    assert '"mida_nowhere" does not exist' in line and "POSTGRES_MAINTENANCE_DB" in line, line
    backups_before = project.backup_files("pgtest")
    failed(project.run("rollback", env=nowhere), 2, "mida_nowhere", "POSTGRES_MAINTENANCE_DB")
    assert cluster_revision(cluster) == HEAD
    assert project.backup_files("pgtest") == backups_before

    # template1 closed too: only the setting gets a restore through, and the swap happens
    # from the database it names.
    cluster.psql("REVOKE CONNECT ON DATABASE template1 FROM PUBLIC")
    cluster.psql("CREATE DATABASE mida_maintenance")
    failed(project.run("restore", "--yes", env=env), 2, "template1", "POSTGRES_MAINTENANCE_DB")
    assert cluster_revision(cluster) == HEAD
    named = cluster_env(cluster, POSTGRES_MAINTENANCE_DB="mida_maintenance")
    ok(project.run("restore", "--yes", env=named))
    assert cluster_revision(cluster) == "base"  # the backup migrate took, before its change
    assert [e["action"] for e in audit_events(project.store("pgtest"))][-1] == "restore"
    # No half-built copy left: at most the previous database, kept as the restore said.
    assert cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'mida\\_\\_%' "
                        "AND datname NOT LIKE 'mida\\_\\_pre\\_restore\\_%'") == "0"
