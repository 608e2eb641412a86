"""The env's SQLite database: a file, the embedded default.

It exists once it has been created and holds something; its lock is an flock beside it; its
backups go through SQLite's online backup API (dumper.py); `replace_with` copies another file
over it through the same API, under SQLite's own locking. The restore's sequence is the dump
method's (app/ops/methods/dump/sqlite_copy.py).
"""
from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from pathlib import Path

from app.ops.databases.facts import DatabaseFacts
from app.settings import mask_url
from app.ops.databases.connection import open_session, revision_of
from app.ops.databases.lock import file_lock
from app.ops.databases.sqlite.dumper import count_rows, SqliteDumper
from app.ops.errors import BackupFailed, DatabaseUnreachable


class SqliteDatabase:
    kind = "sqlite"
    maintenance = None  # no maintenance database: a file is its own

    def __init__(self, url, env: str):
        self.url, self.env = url, env
        self.path = Path(url.database or ":memory:")
        self._facts: DatabaseFacts | None = None

    def at(self, path: Path) -> "SqliteDatabase":
        """Another SQLite file: a scratch copy."""
        return SqliteDatabase(self.url.set(database=str(path)), self.env)

    @property
    def name(self) -> str:
        """What an engineer types to confirm a restore over it."""
        return self.path.name

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def exists(self) -> bool:
        """False for a file not created yet (or empty): there is nothing to back up."""
        return self.url.database not in (None, "", ":memory:") and self.path.is_file() and \
            self.path.stat().st_size > 0

    def facts(self) -> DatabaseFacts:
        if self._facts is None:
            exists = self.exists()
            self._facts = DatabaseFacts(exists, None, self.path.stat().st_size if exists else None)
        return self._facts

    def connect(self):
        """A short-lived connection; never creates the file when it is not there (connecting
        would)."""
        if not (self.url.database and self.path.is_file()):
            raise DatabaseUnreachable(f"SQLite database {self.url.database} does not exist yet: "
                                      "run `invoke migrate` to create it")
        return open_session(self.url, {})

    def revision(self) -> str | None:
        if not self.exists():
            return None
        with self.connect() as conn:
            return revision_of(conn)

    def check_tools(self) -> None:
        pass  # the sqlite3 module is the tool, and it is always there

    def owners_refusal(self, owners) -> str | None:
        return None  # SQLite has no roles

    def check_owners(self, owners) -> None:
        pass

    def dumper(self):
        return SqliteDumper(self.path)

    def lock(self, action: str, now: datetime):
        return file_lock(self.path, action, now, self.env)

    def row_counts(self) -> dict[str, int]:
        return count_rows(self.path)

    def leftover_copies(self, conn) -> list[tuple[str, int]]:
        return []  # its copies are files in private folders, swept by the next run

    def is_closed(self) -> bool:
        return False  # only a PostgreSQL swap closes a database to connections

    def replace_with(self, copy: Path) -> None:
        """Copy the SQLite file `copy` over this database with SQLite's backup API, under its
        own locking: readers see the old database or the new one, and WAL and journal files
        stay consistent."""
        source = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        live = sqlite3.connect(self.path, timeout=60)
        try:
            source.backup(live)
        except sqlite3.Error as exc:
            raise BackupFailed(f"restoring over {self.path} failed: {exc}; the database is "
                               "as it was") from None
        finally:
            live.close()
            source.close()

    def keep_copy(self, kept: Path) -> None:
        """A 0600 copy of the database as it is, beside it, through SQLite's backup API."""
        private_file(kept).close()
        live = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        copy = sqlite3.connect(kept)
        try:
            live.backup(copy)
        finally:
            copy.close()
            live.close()


def private_file(path: Path):
    """A new 0600 file, opened for writing."""
    return open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb")
