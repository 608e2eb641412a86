"""The env's SQLite database: a file, the embedded default.

It exists once it has been created and holds something; its lock is an flock beside it; its
backups go through SQLite's online backup API (app/ops/databases/sqlite/dumper.py); a restore copies a
verified copy over it through the same API, under SQLite's own locking. SQLite opens its files
by name (and resolves /proc/self/fd links), so its copies live in the run's held private folder,
which the next run sweeps if this one is killed.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Iterator

from app.ops.databases import DatabaseFacts
from app.settings import mask_url


class SqliteDatabase:
    kind = "sqlite"

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

    def revision(self) -> str | None:
        if not self.exists():
            return None
        from app.ops.databases.connection import connect, revision_of
        with connect(self.url) as conn:
            return revision_of(conn)

    def check_tools(self) -> None:
        pass  # the sqlite3 module is the tool, and it is always there

    def dumper(self):
        from app.ops.databases.sqlite.dumper import SqliteDumper
        return SqliteDumper(self.path)

    def lock(self, action: str, now: datetime):
        from app.ops.databases.lock import file_lock
        return file_lock(self.path, action, now, self.env)

    def row_counts(self) -> dict[str, int]:
        from app.ops.databases.sqlite.dumper import count_rows
        return count_rows(self.path)

    def leftover_copies(self, conn) -> list[tuple[str, int]]:
        return []  # its copies are files in private folders, swept by the next run

    def is_closed(self) -> bool:
        return False  # only a PostgreSQL swap closes a database to connections

    @contextlib.contextmanager
    def scratch_copy(self, target, backup, now: datetime) -> Iterator[object]:
        """The verified backup as a file in the run's held private folder."""
        from app.ops.catalog.backups import verify_backup
        from app.ops.leftovers import private_folder

        with private_folder("scratch") as folder:
            copy = Path(folder) / "archive"
            with _private_file(copy) as extracted:
                verify_backup(target, backup, now=now, extract_to=extracted)
            yield target.at(self.at(copy))

    def finish_interrupted_restore(self, target, *, now: datetime, reporter) -> bool:
        """Nothing to finish: an SQLite restore has no swap that a kill could cut short."""
        return False

    def restore(self, target, plan, *, now: datetime, reporter, disconnect: bool,
                started: float, check_lock):
        """Verify into a private copy, take the safety backup of the database as it is just
        before, then copy over it with SQLite's backup API: readers see the old database or
        the new one, never a mix, and WAL and journal files stay consistent."""
        from app.ops.catalog.backups import verify_backup
        from app.ops.errors import BackupFailed
        from app.ops.leftovers import private_folder
        from app.ops.guards.encryption_policy import safety_backup_refusal
        from app.ops.commands.restore import RestoreResult, safety_backup

        with private_folder("sqlite-restore") as folder:
            copy = Path(folder) / "restore.sqlite3"
            with _private_file(copy) as extracted:
                verify_backup(target, plan.backup, now=now, extract_to=extracted)
            reporter.info(f"backup {plan.backup.id} verified")
            safety, kept, skipped = None, None, None
            if self.exists():
                kept = self.path.with_name(f"{self.path.name}__pre_restore_{now:%Y%m%d%H%M%S}")
                skipped = safety_backup_refusal(target.settings, str(kept))
                if skipped:
                    self._keep_copy(kept)  # the only copy of what is there now
                else:
                    kept = None
                    safety = safety_backup(target, plan, now)
                    reporter.info(f"safety backup {safety.id} taken")
            check_lock()  # a no-op: an flock cannot be taken away from its holder
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
        return RestoreResult(plan.backup, safety, None, 0.0,
                             kept_database=str(kept) if kept else None, safety_skipped=skipped)

    def _keep_copy(self, kept: Path) -> None:
        """A 0600 copy of the database as it is, beside it, through SQLite's backup API."""
        _private_file(kept).close()
        live = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        copy = sqlite3.connect(kept)
        try:
            live.backup(copy)
        finally:
            copy.close()
            live.close()


def _private_file(path: Path):
    return open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb")
