"""Talking to the target database directly: does it exist, can we reach it, what server is it.

Every connection error becomes one `DatabaseUnreachable` sentence with the password masked.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from app.ops.errors import ConfigError, DatabaseUnreachable
from app.settings import engine_kind, mask_url


def sqlite_path(url) -> Path | None:
    """The SQLite file behind `url`, or None for an in-memory database."""
    if not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def database_exists(url) -> bool:
    """False only for an SQLite file not created yet: there is nothing to back up."""
    if engine_kind(url) == "sqlite":
        path = sqlite_path(url)
        return path is not None and path.is_file() and path.stat().st_size > 0
    return True


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


@contextlib.contextmanager
def connect(url):
    """A short-lived connection; never creates an SQLite file that is not there."""
    from sqlalchemy import create_engine, pool
    from sqlalchemy.exc import DBAPIError

    kind = engine_kind(url)
    if kind == "sqlite" and not database_exists(url):
        raise DatabaseUnreachable(f"SQLite database {url.database} does not exist yet: run "
                                  "`invoke migrate` to create it")
    connect_args = {"options": maintenance_options(url)} if kind == "postgresql" else {}
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


def stamped_revision(url) -> str | None:
    """The alembic revision the database is stamped with; None when it has none yet (or does
    not exist yet). Plain SQL: backup and restore need the revision but not Alembic's import."""
    if not database_exists(url):
        return None
    with connect(url) as conn:
        return revision_of(conn)


def revision_of(conn) -> str | None:
    from sqlalchemy import text

    if conn.dialect.name == "postgresql":
        present = conn.execute(text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar()
    else:
        present = conn.execute(text("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                    "AND name = 'alembic_version'")).first() is not None
    heads = (conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
             if present else [])
    if len(heads) > 1:
        raise ConfigError(f"the database is stamped with several revisions "
                          f"({', '.join(heads)}): see README, troubleshooting")
    return heads[0] if heads else None


def server_version_num(conn) -> int:
    from sqlalchemy import text
    return int(conn.execute(text("SHOW server_version_num")).scalar())


def database_size(conn) -> int | None:
    from sqlalchemy import text
    if conn.dialect.name == "postgresql":
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar())
    return None


def postgres_row_counts(conn) -> dict[str, int]:
    """Exact row counts of every user table, keyed `schema.table`, in conn's snapshot."""
    from sqlalchemy import text

    tables = conn.execute(text(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg!_%' ESCAPE '!' ORDER BY 1")).scalars().all()
    return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}


def first_line(error) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
