"""Room in the server's lock table for a dump of a database with many tables.

pg_dump takes an ACCESS SHARE lock on every table it dumps and holds them all until it ends.
The server's shared lock table holds max_locks_per_transaction locks per server process
(max_connections, plus autovacuum workers, background workers, WAL senders, the launcher) and
per prepared transaction; a dump that needs more ends in "out of shared memory" halfway. A
backup (and a restore, whose safety backup dumps the old database after the swap) checks the
room first and names the setting and the value a DBA must give, before any work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Locks beyond one per table: pg_dump's own catalog reads, the row counts' batch (a table and
# its indexes, COUNT_BATCH at a time) and the locks other sessions hold meanwhile.
HEADROOM = 256

# The settings whose sum is the number of lock-table slots' owners (PostgreSQL's MaxBackends
# plus max_prepared_transactions; +1 below for the autovacuum launcher).
PROCESS_SETTINGS = ("max_connections", "autovacuum_max_workers", "max_worker_processes",
                    "max_wal_senders", "max_prepared_transactions")


@dataclass(frozen=True)
class LockRoom:
    tables: int         # the tables pg_dump would lock
    per_process: int    # max_locks_per_transaction
    processes: int      # server processes and prepared transactions the table is sized for

    @property
    def capacity(self) -> int:
        return self.per_process * self.processes

    @property
    def needed(self) -> int:
        return self.tables + HEADROOM

    @property
    def enough(self) -> bool:
        return self.needed <= self.capacity

    def advice(self, database: str) -> str:
        """What a DBA must set, as one sentence's middle: the value rounded up to 64s."""
        value = 64 * math.ceil(math.ceil(self.needed / self.processes) / 64)
        return (f"database {database} has {self.tables} tables and pg_dump locks each of them "
                f"at once, but the server's lock table holds about {self.capacity} locks "
                f"(max_locks_per_transaction {self.per_process} x {self.processes} server "
                f"processes): set max_locks_per_transaction = {value} on the server "
                f"(ALTER SYSTEM SET max_locks_per_transaction = {value}, then restart it)")


def lock_room(conn) -> LockRoom:
    """The room for a dump of conn's database, read over `conn` (any user may read these)."""
    from sqlalchemy import text

    tables = conn.execute(text(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' "
        "AND n.nspname NOT LIKE 'pg!_%' ESCAPE '!'")).scalar()
    values = conn.execute(text(
        "SELECT name, setting::int FROM pg_settings WHERE name = ANY(:names)"),
        {"names": ["max_locks_per_transaction", *PROCESS_SETTINGS]}).all()
    settings = dict(values)
    processes = sum(settings.get(name, 0) for name in PROCESS_SETTINGS) + 1
    return LockRoom(int(tables), settings.get("max_locks_per_transaction", 64), processes)


def out_of_locks(message: str) -> bool:
    """A server error that says the lock table ran out (pg_dump's or a session's)."""
    return "out of shared memory" in message or "max_locks_per_transaction" in message
