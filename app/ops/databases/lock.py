"""One migrate, rollback or restore at a time per database.

PostgreSQL: a session-level advisory lock on a connection of its own, so the migration's
transactions cannot release it, and a crashed run's lock dies with its session. The session
connects to the server's maintenance database (`postgres` or POSTGRES_MAINTENANCE_DB, see
app/ops/databases/postgres/maintenance.py), not to the target: restore swaps the
target database by renaming it, which PostgreSQL allows only with nobody connected to it. The
key is derived from the target's name. The holder's identity travels in that session's
application_name, where a refused run can read it.
The lock's session must not die unnoticed: a DBA's `idle_session_timeout` on the role, or a
server restart, would end it while the migration runs and let a second run in. So the session
turns the idle timeouts off for itself, `HeldLock.check()` asks the server whether the lock is
still held (the release calls it before a change commits), and a lock found gone at release
is reported through `HeldLock.lost`, never raised over the run's own outcome.
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

from app.ops.run_identity import who
# The default; app/ops/databases/postgres/maintenance.py decides which one a run uses.
from app.ops.databases.postgres.maintenance import DEFAULT as MAINTENANCE_DATABASE
from app.ops.errors import GuardRefused, LockLost
from app.ops.databases.postgres.maintenance import MaintenanceDatabase


def advisory_key(database_name: str) -> int:
    """A stable 56-bit key per target database (positive, so it reads back from pg_locks)."""
    return int.from_bytes(hashlib.sha256(f"mida-release:{database_name}".encode()).digest()[:7],
                          "big")


def holder_text(now: datetime) -> str:
    me = who()
    return f"{me['user']}@{me['host']} pid {me['pid']} since {now.astimezone(timezone.utc):%Y-%m-%d %H:%M:%SZ}"


class HeldLock:
    """What `database.lock(action, now)` yields. `check()` raises LockLost when the lock is no longer held;
    after the block, `lost` says whether releasing it found it already gone."""

    def __init__(self, description: str):
        self.description = description
        self.lost = False

    def check(self) -> None:
        """An flock cannot be taken away from its holder: nothing to ask."""

class _AdvisoryLock(HeldLock):
    def __init__(self, description: str, conn, key: int):
        super().__init__(description)
        self._conn, self._key = conn, key

    def held(self) -> bool:
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return bool(self._conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = :k"),
                {"k": self._key}).scalar())
        except SQLAlchemyError:
            return False  # the session is gone, and its lock with it

    def check(self) -> None:
        if not self.held():
            self.lost = True
            raise LockLost(f"the lock on {self.description} was lost: its session was ended "
                           "(a server restart, or an idle timeout on the role?), so another run "
                           "may hold it now")

    def release(self) -> None:
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        try:
            released = self._conn.execute(text("SELECT pg_advisory_unlock(:k)"),
                                          {"k": self._key}).scalar()
        except SQLAlchemyError:
            released = False
        self.lost = self.lost or not released


# The lock's own session may idle for as long as the migration runs; whatever the role's
# settings say, it must neither be timed out nor time out its one short query.
_SESSION_SETTINGS = ("SET idle_session_timeout = 0", "SET idle_in_transaction_session_timeout = 0",
                     "SET statement_timeout = 0")


@contextlib.contextmanager
def advisory_lock(url, action: str, now: datetime, env: str,
                  maintenance=None) -> Iterator[HeldLock]:
    """PostgreSQL's: `database.lock(action, now)` of app/ops/databases/postgres/database.py."""
    from sqlalchemy import text


    identity = f"mida {action} {holder_text(now)}"[:63]
    key = advisory_key(url.database)
    lock_url = url.update_query_dict({"application_name": identity})
    with (maintenance or MaintenanceDatabase()).connect(lock_url) as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for statement in _SESSION_SETTINGS:
            conn.execute(text(statement))
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
        lock = _AdvisoryLock(f"env '{env}' (database {url.database})", conn, key)
        try:
            yield lock
        finally:
            lock.release()


@contextlib.contextmanager
def file_lock(database: Path, action: str, now: datetime, env: str) -> Iterator[HeldLock]:
    """SQLite's: `database.lock(action, now)` of app/ops/databases/sqlite/database.py."""
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
        yield HeldLock(f"env '{env}'")
    finally:
        os.close(fd)
