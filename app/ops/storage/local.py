"""Local-disk store: one folder per environment, files 0600 in folders 0700.

A new object is written to a hidden `.partial` name and renamed into place only when complete
and synced, so a crash mid-write never leaves something that looks like a finished object. The
writer holds the `.partial` under an flock, so the next backup can tell one abandoned by a
killed run from one being written, and removes it (app/ops/leftovers.py).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Iterator

from app.ops.leftovers import hold, remove_abandoned

FILE_MODE = 0o600
DIR_MODE = 0o700


class LocalStorage:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def prepare(self) -> None:
        """Before a backup: remove the `.partial` files that killed runs left behind."""
        if self.folder.is_dir():
            remove_abandoned(self.folder.glob(".*.partial"))

    def location(self, name: str) -> str:
        return str(self.folder / name)

    def _ensure_folder(self) -> None:
        self.folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask and ignored for existing folders.
        os.chmod(self.folder, DIR_MODE)

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[BinaryIO]:
        """Yields a binary file; the object appears under `name` only if the block succeeds."""
        self._ensure_folder()
        final = self.folder / name
        partial = self.folder / f".{name}.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as out:
                hold(out.fileno())
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, final)
            self._sync_folder()
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise

    def put_bytes(self, name: str, data: bytes) -> None:
        with self.writer(name) as out:
            out.write(data)

    def reader(self, name: str) -> BinaryIO:
        return open(self.folder / name, "rb")

    def get_bytes(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def exists(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def size(self, name: str) -> int:
        return (self.folder / name).stat().st_size

    def list(self, suffix: str = "") -> list[str]:
        return sorted(name for name in self.sizes() if name.endswith(suffix))

    def sizes(self) -> dict[str, int]:
        """Every finished object's size, by name (hidden `.partial` files are not objects)."""
        if not self.folder.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in self.folder.iterdir()
                if p.is_file() and not p.name.startswith(".")}

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / name).unlink()

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
