"""Files a killed run leaves behind, and how the next run knows they are abandoned.

A kill -9 runs no clean-up: a half-written `.ID….partial` stays in the backup folder, and a
decompressed copy of a backup (patient data) stays in $TMPDIR. Every such file or folder is
held under an flock for as long as its run works on it; the kernel drops the lock when the
process dies, however it dies. The next run removes what nobody holds any more. An age floor
closes the one gap: the instant between creating a file and locking it.

Better still is a file that never has a name: `unnamed_file` (O_TMPFILE), which the kernel frees
when the last process holding it ends, however it ends. Child processes are handed it as
`/proc/self/fd/N`, a path that reopens the same file in the child (and in its forked workers).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator

# Only folders this module made carry this prefix: anything else in $TMPDIR is left alone.
TEMP_PREFIX = "mida-private-"
MIN_AGE_SECONDS = 60


def hold(fd: int) -> None:
    """Mark an open file or folder as in use by this process (until fd is closed)."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def abandoned(path: Path, now: float | None = None) -> bool:
    """True if no process holds `path` and it is old enough not to be one being created."""
    try:
        if (now or time.time()) - path.lstat().st_mtime < MIN_AGE_SECONDS:
            return False
    except OSError:
        return False
    return unheld(path)


def unheld(path: Path) -> bool:
    """True if no process holds `path` (whatever its age: for a file whose writer is known to
    be gone, such as the safety backup of a restore whose lock another run now holds)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def remove_abandoned(paths) -> list[Path]:
    """Remove each abandoned file or folder among `paths`; return what went."""
    removed = []
    for path in paths:
        if not abandoned(path):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def private_folder(purpose: str) -> Iterator[Path]:
    """A 0700 folder in $TMPDIR for decompressed backups, held while in use and removed after;
    abandoned ones of earlier runs are removed first."""
    root = Path(tempfile.gettempdir())
    remove_abandoned(p for p in root.glob(f"{TEMP_PREFIX}*")
                     if p.is_dir() and p.lstat().st_uid == os.getuid())
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{purpose}-"))
    fd = os.open(folder, os.O_RDONLY)
    try:
        hold(fd)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


# What open(2) answers for O_TMPFILE on a file system (or kernel) that does not support it.
NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT)


def open_unnamed(folder: Path, flags: int = os.O_RDWR) -> int | None:
    """A 0600 file in `folder` without a name (O_TMPFILE), or None where the file system cannot
    make one. The kernel frees it when the last descriptor closes, however the run ends, unless
    `link_unnamed` gives it a name first."""
    try:
        return os.open(folder, os.O_TMPFILE | flags, 0o600)
    except OSError as exc:
        if exc.errno not in NO_TMPFILE:
            raise
        return None


def link_unnamed(fd: int, path: Path) -> None:
    """Give the unnamed file `fd` the name `path` (linkat through /proc/self/fd, as open(2)
    documents); FileExistsError if the name is taken."""
    # A directory descriptor makes CPython call linkat(AT_SYMLINK_FOLLOW); without one it calls
    # link(2), which would try to link the /proc entry itself (EXDEV).
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)


@contextlib.contextmanager
def unnamed_file(folder: Path) -> Iterator[BinaryIO]:
    """A read-write 0600 file in `folder` without a name: nothing a run decrypts or decompresses
    into it outlives the run, not even after kill -9. Give a child `child_path(file)` and
    `pass_fds=(file.fileno(),)`."""
    fd = open_unnamed(folder)
    if fd is None:
        # A file system without O_TMPFILE: a name for an instant, in a folder held by this run.
        fd, name = tempfile.mkstemp(dir=folder)
        os.unlink(name)
    with open(fd, "w+b") as file:
        yield file


def child_path(file) -> str:
    """The path by which a child process given `file`'s descriptor (pass_fds) opens it."""
    file.flush()
    return f"/proc/self/fd/{file.fileno()}"
