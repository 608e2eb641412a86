"""Dumpers: one per database engine. Each dumps the database to a byte stream and reads such a
stream back to prove it whole; none knows where the bytes are stored."""
from __future__ import annotations

from app.settings import engine_kind


def dumper_for(settings):
    url = settings.database_url
    if engine_kind(url) == "sqlite":
        from app.ops.dumpers.sqlite import SqliteDumper
        return SqliteDumper(url)
    from app.ops.dumpers.postgres import PostgresDumper
    # The backup must not queue forever behind a session holding an exclusive table lock.
    return PostgresDumper(url, settings.pg_bin_dir,
                          lock_timeout=settings.duration("MIGRATION_LOCK_TIMEOUT", "5s"))
