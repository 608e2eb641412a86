"""The maintenance database: where the tool's server-level sessions connect (the one-at-a-time
lock, a database's properties, creating a copy, the swap), never the target itself, which a
restore renames and PostgreSQL renames only with nobody connected to it.

`POSTGRES_MAINTENANCE_DB` names it. Unset, it is `postgres`, and, as createdb and pg_dumpall
do, `template1` when `postgres` cannot be connected to (CONNECT revoked, or dropped): the choice
is made on the first connection of a run and kept for the rest of it, so the lock and the swap
meet in one database.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from app.ops.errors import DatabaseUnreachable
from app.ops.databases.connection import connect

DEFAULT = "postgres"
FALLBACK = "template1"


class MaintenanceDatabase:
    def __init__(self, configured: str | None = None):
        self.configured = configured
        self._chosen: str | None = configured

    @property
    def candidates(self) -> list[str]:
        return [self._chosen] if self._chosen else [DEFAULT, FALLBACK]

    @contextlib.contextmanager
    def connect(self, url) -> Iterator[object]:
        """A connection (app/ops/databases/connection.py's) to the maintenance database of `url`'s server,
        with `url`'s role, password and query (application_name and all)."""
        with contextlib.ExitStack() as stack:
            conn = self._open(stack, url, connect)
            yield conn

    def _open(self, stack, url, connect):
        candidates, first = self.candidates, None
        for name in candidates:
            try:
                conn = stack.enter_context(connect(url.set(database=name)))
            except DatabaseUnreachable as exc:
                first = first or exc
                continue
            self._chosen = name
            return conn
        tried = " nor ".join(candidates)
        raise DatabaseUnreachable(
            f"{first}; that is the maintenance database ({tried}), which the lock and restore "
            "connect to: set POSTGRES_MAINTENANCE_DB to a database this role may connect to")

    def reachable(self, url) -> str:
        """The name of the maintenance database `url`'s role reaches; DatabaseUnreachable
        otherwise (for `invoke check`)."""
        with self.connect(url):
            return self._chosen
