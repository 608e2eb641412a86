"""Connections of the tool's own: short-lived, with the role's timeouts switched off, and every
connection error one `DatabaseUnreachable` sentence with the password masked.

What a database is and holds (exists, size, revision, row counts) is its class's to answer
(app/ops/databases/); this module only opens sessions and reads the alembic stamp over one.
"""
from __future__ import annotations

import contextlib

from app.ops.errors import ConfigError, DatabaseUnreachable
from app.settings import mask_url


# What the tool's own sessions (snapshot holder, row counts, lock, swap, scratch copies) switch
# off, whatever a DBA set on the role or database for the API: a snapshot's transaction sits idle
# while pg_dump reads it, counting a big table's rows takes seconds. Sent as startup options, so
# not even the first statement runs under the role's values. Migrations keep MIGRATION_*
# timeouts instead (alembic/env.py), and a lock wait stays bounded by lock_timeout.
MAINTENANCE_OPTIONS = "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0"


def maintenance_options(url) -> str:
    """libpq `options` for a maintenance session: the URL's own (if any), then ours."""
    own = url.query.get("options")
    own = own if isinstance(own, str) else ""
    return f"{own} {MAINTENANCE_OPTIONS}".strip()


def connect(url):
    """A short-lived PostgreSQL maintenance session (MAINTENANCE_OPTIONS); an SQLite file is
    opened by its database's `connect` (app/ops/databases/sqlite/database.py)."""
    return open_session(url, {"options": maintenance_options(url)})


@contextlib.contextmanager
def open_session(url, connect_args: dict):
    """A short-lived connection, with the driver's `connect_args`."""
    from sqlalchemy import create_engine, pool
    from sqlalchemy.exc import DBAPIError

    engine = create_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    try:
        try:
            conn = engine.connect()
        except DBAPIError as exc:
            raise DatabaseUnreachable(
                f"cannot connect to {mask_url(url)}: {first_line(exc.orig)}; check the "
                "server is running and the env's database settings") from None
        with conn:
            yield conn
    finally:
        engine.dispose()


def revision_of(conn) -> str | None:
    """The alembic revision the database is stamped with; None when it has none yet. Plain
    SQL: backup and restore need the revision but not Alembic's import."""
    from sqlalchemy import inspect, text

    present = inspect(conn).has_table("alembic_version")
    heads = (conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
             if present else [])
    if len(heads) > 1:
        raise ConfigError(f"the database is stamped with several revisions "
                          f"({', '.join(heads)}): see README, troubleshooting")
    return heads[0] if heads else None


def first_line(error) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
