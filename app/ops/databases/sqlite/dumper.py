"""SQLite dumper: a consistent copy through the online backup API, checked before it counts.

The copy is made in a private (0700) temporary folder, checked with `PRAGMA integrity_check`,
then streamed out. Reading back writes the stream to a private temporary file and checks it again.
"""
from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from app.ops.diskspace import TEMP_ADVICE, check_room, in_blocks, no_room, temp_folder
from app.ops.errors import BackupFailed
from app.ops.streams import CHUNK

SQLITE_HEADER = b"SQLite format 3\x00"


class SqliteDumper:
    engine = "sqlite"
    suffix = ".sqlite3.zst"
    format = "SQLite database file (online backup API), zstd-compressed"
    read_back_copies = 1  # read_back writes the database to a temporary file to check it

    def __init__(self, path: Path):
        self.path = path
        self.versions = {"sqlite": sqlite3.sqlite_version}
        self.row_counts: dict[str, int] | None = None
        self.owners: list[str] | None = None  # SQLite has no roles

    def check_tools(self, server_version_num: int | None = None) -> None:
        pass  # the sqlite3 module is the tool, and it is always there

    def dump(self, sink) -> None:
        # This copy and the read-back's copy of it are in the temporary folder at once.
        size = self.path.stat().st_size if self.path.exists() else 0
        what = f"copy and read back {self.path}"
        check_room(temp_folder(), 2 * size, what, advice=TEMP_ADVICE)
        with _private_file("copy.sqlite3") as copy:
            try:
                source = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                try:
                    target = sqlite3.connect(copy)
                    with target:
                        source.backup(target)
                    target.close()
                finally:
                    source.close()
            except sqlite3.Error as exc:
                if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    raise no_room(temp_folder(), what, in_blocks(temp_folder(), size, size),
                                  advice=TEMP_ADVICE) from None
                raise BackupFailed(f"SQLite backup of {self.path} failed: {exc}") from None
            check_integrity(copy)
            self.row_counts = count_rows(copy)
            with open(copy, "rb") as f:
                shutil.copyfileobj(f, sink, CHUNK)

    def read_back(self, feed: Callable[[object], None]) -> None:
        with _private_file("readback.sqlite3") as copy:
            with open(copy, "wb") as f:
                feed(f)
            check_integrity(copy)


def check_integrity(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise BackupFailed("the SQLite backup is not an SQLite database file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupFailed(f"the SQLite backup does not read back: {exc}") from None
    if result != ["ok"]:
        raise BackupFailed(f"the SQLite backup fails PRAGMA integrity_check: {result[0]}")


def count_rows(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


@contextlib.contextmanager
def _private_file(name: str) -> Iterator[Path]:
    # mkdtemp makes a 0700 folder: the patient data in the copy is never readable by others.
    folder = Path(tempfile.mkdtemp(prefix="sqlite-backup-"))
    try:
        yield folder / name
    finally:
        shutil.rmtree(folder, ignore_errors=True)
