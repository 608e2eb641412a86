"""Local-disk store: one folder per environment, files 0600 in folders 0700.

A new object is written into a file without a name (O_TMPFILE in the env's folder) and linked
to its name only when complete and synced: a run killed mid-write, even by kill -9, leaves
nothing in the store, not even something to sweep (the kernel frees the unnamed file). Where
the file system cannot make unnamed files, the object goes to a hidden `.partial` name and is
renamed into place when complete; the writer holds it under an flock, so the next backup can
tell one abandoned by a killed run from one being written, and removes it
(app/ops/leftovers.py).

Only regular files are objects: a symbolic link in the folder (to a file out of the store,
say) is not listed, and reading it or asking its size is refused, so a planted link can never
make verify or restore read another file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from app.ops.leftovers import hold, link_unnamed, open_unnamed, remove_abandoned
from app.ops.leftovers import unheld

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

    def free_room(self) -> tuple[Path, int]:
        """The store's folder (or its nearest existing parent) and the bytes free there."""
        import shutil

        folder = self.folder
        while not folder.exists():
            folder = folder.parent
        return folder, shutil.disk_usage(folder).free

    def leftovers(self) -> list[Path]:
        """Hidden `.partial` files in the store: a writer killed mid-write left them (or one
        is writing now)."""
        return sorted(self.folder.glob(".*.partial")) if self.folder.is_dir() else []

    def remove_unheld_partials(self, stem: str) -> None:
        """The half-written objects named for `stem` whose writer is gone, whatever their
        age (a restore cut short knows its safety backup's id)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.glob(f".{stem}*.partial"):
            if unheld(path):
                path.unlink(missing_ok=True)

    def _ensure_folder(self) -> None:
        self.folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask and ignored for existing folders.
        os.chmod(self.folder, DIR_MODE)

    # BACKUP_S3_OBJECT_LOCK is S3's (see s3.py): a folder keeps nothing under retention.
    object_lock = None

    def check_object_lock(self) -> None:
        pass  # a folder has no Object Lock to check

    def retained_until(self, name: str):
        return None

    def wants_estimate(self, upper_bound: int | None) -> bool:
        """A file's size needs no planning (S3's parts do: see s3.py)."""
        return False

    def encryption_applied(self, name: str) -> str | None:
        """A folder applies no encryption of its own (a file system's, if any, is not the
        store's to report): None, as for an object this store did not write."""
        return None

    @contextlib.contextmanager
    def writer(self, name: str, expected_size: int | None = None) -> Iterator[BinaryIO]:
        """Yields a binary file; the object appears under `name` only if the block succeeds.
        `expected_size` is S3's concern, not a file's."""
        self._ensure_folder()
        final = self.folder / name
        # Linking needs /proc/self/fd (open(2)'s way to name an O_TMPFILE file).
        fd = open_unnamed(self.folder, os.O_WRONLY) if os.path.isdir("/proc/self/fd") else None
        if fd is None:
            with self._named_writer(final) as out:
                yield out
            return
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
            self._link(out.fileno(), final)
        self._sync_folder()

    def _link(self, fd: int, final: Path) -> None:
        """Name the finished unnamed file. A name already taken (a manifest rewritten by verify)
        is replaced atomically: linked to a hidden name first, then renamed over it, the
        file held under an flock meanwhile, as a `.partial` is."""
        try:
            link_unnamed(fd, final)
            return
        except FileExistsError:
            pass
        hold(fd)
        hidden = self.folder / f".{final.name}.{secrets.token_hex(4)}.partial"
        link_unnamed(fd, hidden)
        try:
            os.replace(hidden, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                hidden.unlink()
            raise

    @contextlib.contextmanager
    def _named_writer(self, final: Path) -> Iterator[BinaryIO]:
        """Without O_TMPFILE: a hidden `.partial` name, held under an flock, renamed when done."""
        partial = self.folder / f".{final.name}.partial"
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
        path = self.folder / name
        try:
            # O_NOFOLLOW: a link put there after size() looked is refused all the same.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._stat(path)  # raises, saying where the link points
            raise
        return os.fdopen(fd, "rb")

    def get_bytes(self, name: str) -> bytes:
        with self.reader(name) as source:
            return source.read()

    def exists(self, name: str) -> bool:
        with contextlib.suppress(OSError):
            self._stat(self.folder / name)
            return True
        return False

    def size(self, name: str) -> int:
        return self._stat(self.folder / name).st_size

    @staticmethod
    def _stat(path: Path) -> os.stat_result:
        """The object's stat; OSError for a name that is not a regular file of the store."""
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, f"it is a symbolic link (to {os.readlink(path)}), not a "
                          "file of the store", str(path))
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file", str(path))
        return st

    def list(self, suffix: str = "") -> list[str]:
        return sorted(name for name in self.sizes() if name.endswith(suffix))

    def sizes(self) -> dict[str, int]:
        """Every finished object's size, by name (hidden `.partial` files are not objects)."""
        if not self.folder.is_dir():
            return {}
        with os.scandir(self.folder) as entries:
            return {e.name: e.stat(follow_symlinks=False).st_size for e in entries
                    if e.is_file(follow_symlinks=False) and not e.name.startswith(".")}

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / name).unlink()

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
