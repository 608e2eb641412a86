"""Room on disk: a write whose size is known is checked before it starts, and a full disk met
anyway (ENOSPC, or a full quota) becomes one sentence naming the folder and the room needed.

Either way it is `NoRoom`, exit 4 like any failed backup, verify or restore, never a traceback.
Scratch copies (a restore's extract, a read-back's copy of an SQLite backup) go to the temporary
folder, `TMPDIR` as Python's tempfile resolves it; backups and manifests go to the store.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from app.ops.errors import NoRoom
from app.ops.units import human_size

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
TEMP_ADVICE = "free space there or point TMPDIR at a larger folder"
STORE_ADVICE = "free space there or prune old backups"


def temp_folder() -> Path:
    return Path(tempfile.gettempdir())


def is_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def _existing(folder: Path) -> Path:
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(_existing(folder)).free


def in_blocks(folder: Path, *sizes: int) -> int:
    """The room files of these sizes take in `folder`: each a whole number of its blocks (a
    900-byte manifest takes a whole 4 KiB one)."""
    block = os.statvfs(_existing(folder)).f_frsize or 1
    return sum(-(-size // block) * block for size in sizes)


def no_room(folder: Path, what: str, needed: int, *, advice: str,
            more_than: bool = False) -> NoRoom:
    """The one sentence. `what` is an infinitive ("extract backup X"); `needed` in bytes, or
    with `more_than` what had been written when the disk filled."""

    return NoRoom(f"not enough space in {folder} to {what}: {'more than ' if more_than else ''}"
                  f"{human_size(needed)} needed, {human_size(free_bytes(folder))} free; {advice}")


def check_room(folder: Path, needed: int, what: str, *, advice: str) -> None:
    """Refuse before starting when `needed` bytes do not fit in `folder`'s free space."""
    if needed > 0 and free_bytes(folder) < needed:
        raise no_room(folder, what, in_blocks(folder, needed), advice=advice)


@contextlib.contextmanager
def room_for(folder: Path, needed: int, what: str, *, advice: str) -> Iterator[None]:
    """check_room first; then a full disk met inside the block is the same sentence."""
    check_room(folder, needed, what, advice=advice)
    try:
        yield
    except OSError as exc:
        if not is_full(exc):
            raise
        raise no_room(folder, what, in_blocks(folder, needed), advice=advice) from None
