"""app.ops.schema.migrations: Alembic through its Python API, on real SQLite files in tmp_path."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.ops.databases.postgres.database import PostgresDatabase
from app.ops.errors import ConfigError
from app.ops.schema.migrations import Migrations, Revision
from app.ops.target import open_target
from app.settings import load_settings
from helpers import FIRST, HEAD


@pytest.fixture
def settings(tmp_path):
    return load_settings("dev", environ={}, root=tmp_path)


@pytest.fixture
def migrations(settings):
    return Migrations(open_target(settings))


def db_path(settings) -> Path:
    return Path(settings.database_url.database)


def columns(path: Path, table: str) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
    finally:
        conn.close()


def ids(revisions: list[Revision]) -> list[str]:
    return [r.id for r in revisions]


# -- reading scripts and state -----------------------------------------------------------------
def test_heads(migrations):
    assert migrations.heads() == [HEAD]
    assert migrations.single_head() == HEAD


def test_current_of_missing_db_is_none_and_creates_nothing(settings, migrations):
    path = db_path(settings)
    assert not path.exists()
    assert migrations.current() is None
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_current_of_empty_file_is_none(settings, migrations):
    path = db_path(settings)
    path.touch()
    assert migrations.current() is None
    assert path.stat().st_size == 0


def test_current_of_db_without_alembic_table_is_none(settings, migrations):
    conn = sqlite3.connect(db_path(settings))
    conn.execute("CREATE TABLE other (id INTEGER)")
    conn.commit()
    conn.close()
    assert migrations.current() is None


def test_current_follows_upgrade_and_downgrade(settings, migrations):
    path = db_path(settings)
    migrations.upgrade(FIRST)
    assert migrations.current() == FIRST
    assert "phone_number" not in columns(path, "users")
    migrations.upgrade(None)  # head
    assert migrations.current() == HEAD
    assert "phone_number" in columns(path, "users")
    migrations.downgrade(FIRST)
    assert migrations.current() == FIRST
    assert "phone_number" not in columns(path, "users")
    migrations.downgrade(None)  # base
    assert migrations.current() is None
    assert columns(path, "users") == []


def test_resolve(migrations):
    assert migrations.resolve(FIRST) == FIRST
    assert migrations.resolve("a9ef") == FIRST
    assert migrations.resolve("f8f") == HEAD
    assert migrations.resolve("head") == HEAD
    assert migrations.resolve("heads") == HEAD
    assert migrations.resolve("base") is None


@pytest.mark.parametrize("revision", ["deadbeef0000", "zzz", "a9ef987fd631x"])
def test_resolve_unknown_is_config_error(migrations, revision):
    with pytest.raises(ConfigError, match=revision):
        migrations.resolve(revision)


def test_revision_str_names_id_and_message(migrations):
    # What `migrate` lists before it runs: each revision's id and the first line of its doc.
    assert str(migrations.pending(None, FIRST)[0]) == f"{FIRST} (Create users table)"
    assert "phone_number" in str(migrations.pending(None, HEAD)[-1])


# -- pending and downgrade plans ---------------------------------------------------------------
def test_pending_in_apply_order(migrations):
    assert ids(migrations.pending(None, HEAD)) == [FIRST, HEAD]
    assert ids(migrations.pending(FIRST, HEAD)) == [HEAD]
    assert ids(migrations.pending(None, FIRST)) == [FIRST]
    assert migrations.pending(HEAD, HEAD) == []
    assert migrations.pending(None, None) == []
    first = migrations.pending(None, HEAD)[0]
    assert first.message == "Create users table"
    assert first.down_revision is None
    assert first.path.endswith("a9ef987fd631_create_users_table.py")


def test_pending_backwards_is_config_error(migrations):
    with pytest.raises(ConfigError):
        migrations.pending(HEAD, FIRST)


def test_downgrade_target_relative(migrations):
    target, undone = migrations.downgrade_target(HEAD, "-1")
    assert (target, ids(undone)) == (FIRST, [HEAD])
    target, undone = migrations.downgrade_target(HEAD, "-2")
    assert (target, ids(undone)) == (None, [HEAD, FIRST])
    target, undone = migrations.downgrade_target(FIRST, "-1")
    assert (target, ids(undone)) == (None, [FIRST])


@pytest.mark.parametrize("current,to", [(HEAD, "-3"), (FIRST, "-2"), (None, "-1")])
def test_downgrade_target_below_base_is_config_error(migrations, current, to):
    with pytest.raises(ConfigError, match="below base"):
        migrations.downgrade_target(current, to)


def test_downgrade_target_zero_steps_is_config_error(migrations):
    with pytest.raises(ConfigError):
        migrations.downgrade_target(HEAD, "-0")


def test_downgrade_target_base(migrations):
    target, undone = migrations.downgrade_target(HEAD, "base")
    assert (target, ids(undone)) == (None, [HEAD, FIRST])
    target, undone = migrations.downgrade_target(FIRST, "base")
    assert (target, ids(undone)) == (None, [FIRST])


def test_downgrade_target_revision_id_and_prefix(migrations):
    target, undone = migrations.downgrade_target(HEAD, FIRST)
    assert (target, ids(undone)) == (FIRST, [HEAD])
    target, undone = migrations.downgrade_target(HEAD, "a9ef")
    assert (target, ids(undone)) == (FIRST, [HEAD])


def test_downgrade_target_current_is_nothing_to_undo(migrations):
    assert migrations.downgrade_target(HEAD, HEAD) == (HEAD, [])
    assert migrations.downgrade_target(None, "base") == (None, [])


def test_downgrade_target_from_base_to_a_revision_is_config_error(migrations):
    with pytest.raises(ConfigError):
        migrations.downgrade_target(None, FIRST)


def test_downgrade_target_ahead_of_current_is_config_error(migrations):
    # "Rolling back" from FIRST to HEAD would be an upgrade.
    with pytest.raises(ConfigError):
        migrations.downgrade_target(FIRST, HEAD)


def test_downgrade_target_unknown_revision_is_config_error(migrations):
    with pytest.raises(ConfigError, match="nosuchrev"):
        migrations.downgrade_target(HEAD, "nosuchrev")


# -- offline SQL -------------------------------------------------------------------------------
def test_upgrade_sql_from_current_only(settings, migrations):
    sql = migrations.upgrade_sql(FIRST, HEAD)
    assert "phone_number" in sql
    assert "CREATE TABLE users" not in sql
    assert f"'{HEAD}'" in sql
    assert not db_path(settings).exists()


def test_upgrade_sql_from_base_has_everything(settings, migrations):
    sql = migrations.upgrade_sql(None, HEAD)
    assert "CREATE TABLE users" in sql
    assert "phone_number" in sql
    assert sql.index("CREATE TABLE users") < sql.index("phone_number")
    assert not db_path(settings).exists()


def test_upgrade_sql_changes_nothing(settings, migrations):
    migrations.upgrade(FIRST)
    before = db_path(settings).read_bytes()
    sql = migrations.upgrade_sql(migrations.current(), HEAD)
    assert "phone_number" in sql
    assert db_path(settings).read_bytes() == before
    assert migrations.current() == FIRST


def test_stamp(settings, migrations):
    migrations.upgrade(FIRST)
    migrations.stamp(HEAD)
    assert migrations.current() == HEAD
    assert "phone_number" not in columns(db_path(settings), "users")  # stamp runs nothing
    migrations.stamp("base")
    assert migrations.current() is None


def test_merge_with_one_head_is_config_error(migrations):
    with pytest.raises(ConfigError, match="nothing to merge"):
        migrations.merge("merge heads")


# -- PostgreSQL, with the fixture's awkward password ----------------------------------------
@pytest.mark.postgres
def test_postgres_upgrade_and_current_with_awkward_password(pg_database, tmp_path):
    url = pg_database.url
    environ = {"APP_ENV": "pgtest", "POSTGRES_SERVER": url.host or "127.0.0.1",
               "POSTGRES_PORT": str(url.port or 5432), "POSTGRES_USER": url.username,
               "POSTGRES_PASSWORD": url.password, "POSTGRES_DB": url.database}
    migrations = Migrations(open_target(load_settings("pgtest", environ=environ, root=tmp_path)))
    assert migrations.current() is None
    migrations.upgrade(FIRST)
    assert migrations.current() == pg_database.revision() == FIRST
    migrations.upgrade(None)
    assert migrations.current() == pg_database.revision() == HEAD
    assert "phone_number" in pg_database.columns("users")
    target, undone = migrations.downgrade_target(migrations.current(), "-1")
    migrations.downgrade(target)
    assert pg_database.revision() == FIRST
    assert "phone_number" not in pg_database.columns("users")


def test_current_of_db_stamped_twice_is_config_error(settings, migrations):
    migrations.upgrade("head")
    conn = sqlite3.connect(db_path(settings))
    with conn:
        conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (FIRST,))
    conn.close()
    with pytest.raises(ConfigError, match="several revisions"):
        migrations.current()


@pytest.mark.postgres
def stamped_revision(url) -> str | None:
    return PostgresDatabase(url, "pgtest").revision()


def test_stamped_revision_on_postgres_reads_the_version_table(pg_database):
    assert stamped_revision(pg_database.url) is None          # no alembic_version table yet
    pg_database.sql("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    assert stamped_revision(pg_database.url) is None          # stamped with nothing yet
    pg_database.sql("INSERT INTO alembic_version VALUES (:r)", r=FIRST)
    assert stamped_revision(pg_database.url) == FIRST
    pg_database.sql("INSERT INTO alembic_version VALUES (:r)", r=HEAD)
    with pytest.raises(ConfigError, match="several revisions"):
        stamped_revision(pg_database.url)


# -- lock timeouts and retries -----------------------------------------------------------------
@pytest.mark.parametrize("production", ["false", "true"])
def test_lock_timeout_applies_in_every_env_and_statement_timeout_only_when_set(tmp_path,
                                                                               production):
    from app.ops.schema.migrations import postgres_timeouts

    settings = load_settings("dev", environ={"PRODUCTION": production}, root=tmp_path)
    assert postgres_timeouts(settings) == {"lock_timeout": "5s"}
    settings = load_settings("dev", environ={"PRODUCTION": production,
                                             "MIGRATION_LOCK_TIMEOUT": "200ms",
                                             "MIGRATION_STATEMENT_TIMEOUT": "2min"}, root=tmp_path)
    assert postgres_timeouts(settings) == {"lock_timeout": "200ms", "statement_timeout": "2min"}


@pytest.mark.parametrize("environ,retries,pauses", [
    ({}, 3, [5.0, 10.0, 20.0]),
    ({"MIGRATION_LOCK_RETRIES": "0"}, 0, []),
    ({"MIGRATION_LOCK_RETRIES": "2", "MIGRATION_LOCK_RETRY_DELAY": "250ms"}, 2, [0.25, 0.5]),
    ({"MIGRATION_LOCK_RETRY_DELAY": "1min"}, 3, [60.0, 120.0, 240.0]),
    ({"MIGRATION_LOCK_RETRY_DELAY": "300"}, 3, [0.3, 0.6, 1.2]),  # bare: ms, as PostgreSQL
])
def test_lock_retries_and_their_doubling_pauses(tmp_path, environ, retries, pauses):
    from app.ops.schema.migrations import LockRetries

    lock_retries = LockRetries.of(load_settings("dev", environ=environ, root=tmp_path))
    assert lock_retries.retries == retries and lock_retries.attempts == retries + 1
    assert [lock_retries.pause(n) for n in range(1, retries + 1)] == pytest.approx(pauses)


@pytest.mark.parametrize("name,value", [("MIGRATION_LOCK_RETRIES", "-1"),
                                        ("MIGRATION_LOCK_RETRIES", "2.5"),
                                        ("MIGRATION_LOCK_RETRIES", "1000"),
                                        ("MIGRATION_LOCK_RETRY_DELAY", "5 minutes")])
def test_a_malformed_retry_setting_is_config_error(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        Migrations(open_target(load_settings("dev", environ={name: value}, root=tmp_path)))
