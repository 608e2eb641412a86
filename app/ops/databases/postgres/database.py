"""The env's PostgreSQL database: facts, tools, dumper, lock, row counts, scratch copies and
restore, for a role that owns its database (no superuser).

Server-level work (a database's properties, creating one like it, the swap) is
`PostgresServer`'s (server.py). A restore's sequence, and a scratch copy's, are the dump
method's (app/ops/methods/dump/postgres_swap.py): this class is what it asks.
"""
from __future__ import annotations

import re
from datetime import datetime

from app.ops.databases.connection import connect, revision_of
from app.ops.databases.facts import DatabaseFacts
from app.ops.databases.postgres.row_counts import postgres_row_counts
from app.settings import mask_url
from app.ops.databases.lock import advisory_lock
from app.ops.databases.postgres.dumper import PostgresDumper
from app.ops.databases.postgres.locks import lock_room
from app.ops.databases.postgres.maintenance import MaintenanceDatabase
from app.ops.databases.postgres.owners import owners_refusal
from app.ops.databases.postgres.server import CLIENTS, derived_name, PostgresServer
from app.ops.errors import GuardRefused, OpsError

SCRATCH = "__scratch_"
STAMPED_DATABASE = re.compile(
    r"(__restoring_|__pre_restore_|__scratch_)([0-9]{14}(?:[0-9]{3})?)$")


class PostgresDatabase:
    kind = "postgresql"

    def __init__(self, url, env: str, *, bin_dir: str | None = None,
                 lock_timeout: str | None = None, tools: dict | None = None,
                 maintenance=None):

        self.url, self.env = url, env
        # Shared with `at`'s databases: one run's sessions all meet in the same one.
        self.maintenance = maintenance or MaintenanceDatabase()
        self.bin_dir, self.lock_timeout = bin_dir, lock_timeout
        # pg_dump's and pg_restore's versions once checked; shared with `at`'s databases, so one
        # run asks the tools once.
        self._tools = tools if tools is not None else {}
        self._facts: DatabaseFacts | None = None

    @classmethod
    def from_settings(cls, settings) -> "PostgresDatabase":
        # lock_timeout: a backup must not queue forever behind a session holding an exclusive
        # table lock.
        return cls(settings.database_url, settings.env, bin_dir=settings.pg_bin_dir,
                   lock_timeout=settings.MIGRATION_LOCK_TIMEOUT.text,
                   maintenance=MaintenanceDatabase(settings.maintenance_database))

    def at(self, name: str) -> "PostgresDatabase":
        """Another database of the same server: a restore's previous database, a scratch copy."""
        return PostgresDatabase(self.url.set(database=name), self.env, bin_dir=self.bin_dir,
                                lock_timeout=self.lock_timeout, tools=self._tools,
                                maintenance=self.maintenance)

    @property
    def name(self) -> str:
        """What an engineer types to confirm a restore over it."""
        return self.url.database

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def exists(self) -> bool:
        return True  # a server's database: one that cannot be reached is an error, not absent

    def connect(self):
        """A short-lived maintenance session (app/ops/databases/connection.py)."""
        return connect(self.url)

    def facts(self) -> DatabaseFacts:
        if self._facts is None:
            from sqlalchemy import text
            with connect(self.url) as conn:
                version = int(conn.execute(text("SHOW server_version_num")).scalar())
                size = int(conn.execute(text("SELECT pg_database_size(current_database())"))
                           .scalar())
            self._facts = DatabaseFacts(True, version, size)
        return self._facts

    def revision(self) -> str | None:
        with connect(self.url) as conn:
            return revision_of(conn)

    def check_tools(self) -> None:
        """Refuse, before anything runs, a pg_dump or pg_restore older than the server."""
        if not self._tools:
            dumper = self._new_dumper()
            dumper.check_tools(self.facts().server_version_num)
            self._tools.update(dumper.versions)

    def check_lock_room(self) -> None:
        """Refuse a restore, before any work, whose safety backup (a dump of this database,
        taken after the swap) would run the server's lock table out."""
        with connect(self.url) as conn:
            room = lock_room(conn)
        if not room.enough:
            raise GuardRefused(f"restore refused before any work: its safety backup of the "
                               f"database as it is now could not be taken: "
                               f"{room.advice(self.name)}; nothing was changed")

    def owners_refusal(self, owners) -> str | None:
        """Why this database's role could not restore a backup whose objects belong to
        `owners` (the manifest's), with the grants that would let it; None if it could."""
        if not owners:
            return None
        with connect(self.url) as conn:
            return owners_refusal(conn, owners)

    def check_owners(self, owners) -> None:
        """Refuse, before any work, a backup this role could not bring every owner back from."""
        why = self.owners_refusal(owners)
        if why:
            raise GuardRefused(f"refused before any work: {why}, then run it again; the "
                               "database was not changed")

    def dumper(self):
        """A dumper for one dump or read-back, knowing the tools' versions checked so far."""
        dumper = self._new_dumper()
        dumper.versions.update(self._tools)
        return dumper

    def _new_dumper(self):
        return PostgresDumper(self.url, self.bin_dir, lock_timeout=self.lock_timeout)

    def lock(self, action: str, now: datetime):
        return advisory_lock(self.url, action, now, self.env, maintenance=self.maintenance)

    def row_counts(self) -> dict[str, int]:
        with connect(self.url) as conn:
            return postgres_row_counts(conn)

    def leftover_copies(self, conn) -> list[tuple[str, int]]:
        """`DB__restoring_STAMP`, `DB__pre_restore_STAMP` and `DB__scratch_STAMP`, each with how
        many sessions use it (a copy in use belongs to a run in progress), over `conn`, a
        connection to this database: pg_database is a shared catalog."""
        from sqlalchemy import text


        rows = conn.execute(text(
            "SELECT d.datname, (SELECT count(*) FROM pg_stat_activity a "
            f"WHERE a.datname = d.datname AND {CLIENTS}) FROM pg_database d "
            "WHERE strpos(d.datname, '__') > 0 "
            "ORDER BY 1")).all()
        found = []
        for name, sessions in rows:
            match = STAMPED_DATABASE.search(name)
            # The name restore or a rehearsal would give this database's copy with that stamp
            # (derived_name cuts a long base to fit 63 bytes), so another database's copies
            # and look-alikes are never reported.
            if match and name == derived_name(self.name, match.group(1), match.group(2)):
                found.append((name, int(sessions)))
        return found

    def server(self):
        return PostgresServer(self.url, self.maintenance)

    def is_closed(self) -> bool:
        """Closed to connections, by a restore killed during its swap."""
        try:
            return self.server().is_closed()
        except OpsError:
            return False


def restore_jobs() -> int:
    import os
    return max(1, min(os.cpu_count() or 1, 8))
