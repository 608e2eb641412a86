"""app.ops.databases.lock: one migrate, rollback or restore at a time per database.

flock locks belong to an open file description, so a second `database_lock` in this same process
opens the lock file again and conflicts exactly as another process would.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path

import pytest

from app.ops.errors import ExitCode, GuardRefused
from app.ops.databases import open_database
from app.ops.databases.lock import advisory_key
from app.settings import load_settings
from helpers import T0, advisory_locks_held, pg_settings



def database_lock(settings, *, action: str, now):
    """The env's database's lock, as a run takes it."""
    return open_database(settings).lock(action, now)


@pytest.fixture
def sqlite_settings(tmp_path):
    return load_settings("dev", environ={}, root=tmp_path)


def lock_path(settings) -> Path:
    db = Path(settings.database_url.database)
    return db.with_name(db.name + ".lock")


# -- SQLite ------------------------------------------------------------------------------------
def test_sqlite_second_lock_is_refused_naming_the_holder(sqlite_settings):
    with database_lock(sqlite_settings, action="migrate", now=T0):
        with pytest.raises(GuardRefused) as caught:
            with database_lock(sqlite_settings, action="restore", now=T0):
                pytest.fail("the second lock must not be granted")
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.REFUSED == 3
    assert message.startswith("restore refused")
    assert f"pid {os.getpid()}" in message
    assert socket.gethostname() in message
    assert "2026-03-02 10:15:30Z" in message
    assert str(lock_path(sqlite_settings)) in message


def test_sqlite_lock_file_records_the_holder(sqlite_settings):
    with database_lock(sqlite_settings, action="rollback", now=T0):
        record = json.loads(lock_path(sqlite_settings).read_text())
        assert record["action"] == "rollback"
        assert f"pid {os.getpid()}" in record["holder"]
        assert os.stat(lock_path(sqlite_settings)).st_mode & 0o077 == 0


def test_sqlite_lock_is_free_again_after_exit(sqlite_settings):
    entered = []
    with database_lock(sqlite_settings, action="migrate", now=T0):
        entered.append(1)
    with database_lock(sqlite_settings, action="migrate", now=T0):
        entered.append(2)
    assert entered == [1, 2]


def test_sqlite_lock_is_released_when_the_block_raises(sqlite_settings):
    with pytest.raises(RuntimeError):
        with database_lock(sqlite_settings, action="migrate", now=T0):
            raise RuntimeError("migration blew up")
    assert granted(sqlite_settings)


@contextlib.contextmanager
def held_by_another_file(path: Path, record: bytes | None = None):
    """The lock file held as another process holds it: its own open file with an exclusive
    flock, and (if given) the record it wrote there."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if record is not None:
            os.write(fd, record)
        yield
    finally:
        os.close(fd)


def granted(settings) -> bool:
    """Whether a migrate gets the lock now (and gives it back)."""
    entered = False
    with database_lock(settings, action="migrate", now=T0):
        entered = True
    return entered


def test_sqlite_lock_held_by_another_open_file(sqlite_settings):
    path = lock_path(sqlite_settings)
    holder = json.dumps({"action": "restore", "holder": "oncall@bastion pid 4242"}).encode()
    with held_by_another_file(path, holder):
        with pytest.raises(GuardRefused, match="oncall@bastion pid 4242"):
            with database_lock(sqlite_settings, action="migrate", now=T0):
                pytest.fail("the lock must not be granted")
        # The refused run did not overwrite the holder's record.
        assert "oncall@bastion pid 4242" in path.read_text()
    assert granted(sqlite_settings)


def test_sqlite_lock_held_with_unreadable_record_still_refuses(sqlite_settings):
    with held_by_another_file(lock_path(sqlite_settings)):
        with pytest.raises(GuardRefused, match="another process"):
            with database_lock(sqlite_settings, action="migrate", now=T0):
                pytest.fail("the lock must not be granted")


def test_sqlite_lock_does_not_create_the_database(sqlite_settings):
    db = Path(sqlite_settings.database_url.database)
    with database_lock(sqlite_settings, action="migrate", now=T0):
        assert not db.exists()
    assert not db.exists()


def test_sqlite_locks_of_different_databases_are_independent(tmp_path):
    (tmp_path / ".env.staging").write_text("USE_SQLITE=True\n")
    dev = load_settings("dev", environ={}, root=tmp_path)
    staging = load_settings("staging", environ={}, root=tmp_path)
    both = False
    with database_lock(dev, action="migrate", now=T0):
        with database_lock(staging, action="migrate", now=T0):
            both = True
    assert both


# -- PostgreSQL --------------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_second_lock_is_refused_naming_the_holder(pg_database, tmp_path):
    settings = pg_settings(pg_database, tmp_path)
    with database_lock(settings, action="migrate", now=T0):
        assert advisory_locks_held(pg_database) == 1
        with pytest.raises(GuardRefused) as caught:
            with database_lock(settings, action="rollback", now=T0):
                pytest.fail("the second lock must not be granted")
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert message.startswith("rollback refused")
    assert "mida migrate" in message
    assert pg_database.name in message
    assert pg_database.role in message
    assert pg_database.url.password not in message
    assert advisory_locks_held(pg_database) == 0


@pytest.mark.postgres
def test_postgres_lock_is_free_again_after_exit(pg_database, tmp_path):
    settings = pg_settings(pg_database, tmp_path)
    entered = []
    with database_lock(settings, action="migrate", now=T0):
        entered.append(1)
    assert advisory_locks_held(pg_database) == 0
    with database_lock(settings, action="restore", now=T0):
        entered.append(2)
        assert advisory_locks_held(pg_database) == 1
    assert entered == [1, 2]
    assert advisory_locks_held(pg_database) == 0


@pytest.mark.postgres
def test_postgres_lock_is_released_when_the_block_raises(pg_database, tmp_path):
    settings = pg_settings(pg_database, tmp_path)
    with pytest.raises(RuntimeError):
        with database_lock(settings, action="migrate", now=T0):
            raise RuntimeError("migration blew up")
    assert advisory_locks_held(pg_database) == 0


@pytest.mark.postgres
def test_postgres_lock_holds_no_session_on_the_target(pg_database, tmp_path):
    """Restore renames the target database, which needs nobody connected to it."""
    from sqlalchemy import text
    settings = pg_settings(pg_database, tmp_path)
    with database_lock(settings, action="restore", now=T0):
        with pg_database.admin.connect() as conn:
            sessions = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :d"),
                {"d": pg_database.name}).scalar()
    assert sessions == 0


def test_advisory_key_is_stable_positive_and_per_database():
    assert advisory_key("mida") == advisory_key("mida")
    assert advisory_key("mida") != advisory_key("mida_staging")
    assert 0 < advisory_key("mida") < 2 ** 56
