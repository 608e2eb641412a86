"""One migrate, rollback or restore at a time per database.

PostgreSQL: a session-level advisory lock on a connection of its own, so the migration's
transactions cannot release it, and a crashed run's lock dies with its session. The session
connects to the server's maintenance database (`postgres`), not to the target: restore swaps the
target database by renaming it, which PostgreSQL allows only with nobody connected to it. The
key is derived from the target's name. The holder's identity travels in that session's
application_name, where a refused run can read it.
SQLite: an flock on `<database>.lock`; the kernel drops it when the holder's process ends.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from app.ops.audit import who
from app.ops.errors import GuardRefused
from app.settings import engine_kind

MAINTENANCE_DATABASE = "postgres"


def advisory_key(database_name: str) -> int:
    """A stable 56-bit key per target database (positive, so it reads back from pg_locks)."""
    return int.from_bytes(hashlib.sha256(f"mida-release:{database_name}".encode()).digest()[:7],
                          "big")


def holder_text(now: datetime) -> str:
    me = who()
    return f"{me['user']}@{me['host']} pid {me['pid']} since {now.astimezone(timezone.utc):%Y-%m-%d %H:%M:%SZ}"


@contextlib.contextmanager
def database_lock(settings, *, action: str, now: datetime) -> Iterator[None]:
    url = settings.database_url
    if engine_kind(url) == "sqlite":
        with _sqlite_lock(Path(url.database), action, now):
            yield
    else:
        with _postgres_lock(url, action, now, settings.env):
            yield


@contextlib.contextmanager
def _postgres_lock(url, action: str, now: datetime, env: str) -> Iterator[None]:
    from sqlalchemy import text

    from app.ops.database import connect

    identity = f"mida {action} {holder_text(now)}"[:63]
    key = advisory_key(url.database)
    lock_url = url.set(database=MAINTENANCE_DATABASE).update_query_dict(
        {"application_name": identity})
    with connect(lock_url) as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            holder = conn.execute(text(
                "SELECT a.application_name, a.usename, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                "AND l.granted AND l.database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) "
                "AND ((l.classid::bigint << 32) | l.objid::bigint) = :k"),
                {"k": key}).first()
            who_holds = (f"{holder.application_name} (database role {holder.usename})"
                         if holder else "another session")
            raise GuardRefused(f"{action} refused: another migrate, rollback or restore holds "
                               f"the lock on env '{env}' (database {url.database}): {who_holds}; "
                               "wait for it to finish")
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


@contextlib.contextmanager
def _sqlite_lock(database: Path, action: str, now: datetime) -> Iterator[None]:
    import fcntl

    path = database.with_name(database.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = os.read(fd, 4096).decode("utf-8", "replace").strip()
            try:
                held = json.loads(held)["holder"]
            except (ValueError, KeyError, TypeError):
                held = held or "another process"
            raise GuardRefused(f"{action} refused: another migrate, rollback or restore holds the "
                               f"lock {path}: {held}; wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"action": action, "holder": holder_text(now)}).encode(), 0)
        yield
    finally:
        os.close(fd)
