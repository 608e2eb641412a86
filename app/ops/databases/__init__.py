"""The env's database, one class per kind: `PostgresDatabase` (postgres/database.py) and
`SqliteDatabase` (sqlite/database.py); `connection` (the tool's own sessions) and `lock` (an
advisory lock, an flock) serve both.

`open_database(settings)` decides the kind once, from the settings' URL; everything below asks the
object and never the URL's scheme: whether the database exists, its facts (size, server
version), its tools (checked once), a dumper for it, its one-at-a-time lock, its row counts, and
the steps a restore is made of (the dump method orders them: app/ops/methods/dump/). A restore's
previous database or a scratch copy is another object of the same class (`at`), sharing the
tools' check. Adapters: they never import the catalog, a method or a workflow.
"""
from __future__ import annotations

from app.ops.databases.facts import DatabaseFacts  # noqa: F401  (handed on)
from app.ops.databases.postgres.database import PostgresDatabase
from app.ops.databases.sqlite.database import SqliteDatabase
from app.settings import engine_kind


def open_database(settings):
    if engine_kind(settings.database_url) == "sqlite":
        return SqliteDatabase(settings.database_url, settings.env)
    return PostgresDatabase.from_settings(settings)
