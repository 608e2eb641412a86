"""Verifying a dump: the stored artifact checked against its manifest, then read back whole
(readback.py), in the temporary folder's room. The outcome is recorded in the manifest
(app/ops/catalog/backups.py), so a backup found broken is never chosen as verified.
"""
from __future__ import annotations

from datetime import datetime
from typing import Callable

from app.ops.catalog.backups import record_outcome, record_verification
from app.ops.catalog.manifest import BackupManifest
from app.ops.diskspace import TEMP_ADVICE, check_room, room_for, temp_folder
from app.ops.encryption import Encryption
from app.ops.errors import BackupFailed, ConfigError
from app.ops.methods.dump.readback import read_back_stored

Progress = Callable[[int], None]


def verify_dump(target, manifest: BackupManifest, *, now: datetime,
                progress: Progress | None = None, extract_to=None,
                archive_check: bool = True) -> BackupManifest:
    """Check the stored artifact against its manifest and read it back whole."""
    storage = target.storage
    if manifest.engine != target.database.kind:
        raise ConfigError(f"backup {manifest.id} is a {manifest.engine} backup but env "
                          f"'{target.env}' is configured for {target.database.kind}")
    dumper = target.database.dumper()
    try:
        problem = _artifact_problem(storage, manifest)
    except FileNotFoundError:
        error = f"backup {manifest.id} has lost its artifact {manifest.location}"
        record_verification(storage, manifest, now, error)
        raise BackupFailed(error) from None
    if problem is not None:
        record_verification(storage, manifest, now, problem)
        raise BackupFailed(f"backup {manifest.id} failed verification: {problem}")
    identities = None
    if manifest.encryption:
        identities = (Encryption.from_settings(target.settings) or Encryption((), None)).identities(
            manifest.id)

    def read_back() -> None:
        needed, what = _scratch(manifest, dumper, extract_to is not None, archive_check)
        with room_for(temp_folder(), needed, what, advice=TEMP_ADVICE):
            read_back_stored(storage, dumper, manifest.artifact, manifest.sha256,
                             manifest.raw_size, progress, extract_to, identities, archive_check)

    return record_outcome(storage, manifest, now, read_back)


def _artifact_problem(storage, manifest: BackupManifest) -> str | None:
    """Why the stored artifact cannot be this backup's, before a byte of it is read: not a
    file of the store (a symbolic link, perhaps out of it), or not the size recorded (a
    checksum proves the bytes, not that the manifest describes them). FileNotFoundError: gone."""
    where = storage.location(manifest.artifact)
    try:
        stored = storage.size(manifest.artifact)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a local store refuses what is not a regular file of its own
        return f"its artifact {where} is refused: {exc.strerror or exc}"
    if stored != manifest.size:
        return (f"its artifact {where} is {stored} bytes but its manifest records "
                f"{manifest.size}: it is damaged or not this backup's")
    return None


def _scratch(manifest: BackupManifest, dumper, extract: bool,
             archive_check: bool) -> tuple[int, str]:
    """Bytes a read-back of `manifest` writes to the temporary folder (the extract a restore
    uses, and the copy the dumper's own check reads: SQLite's; pg_restore reads a pipe), and
    what for."""
    copies = int(extract) + (dumper.read_back_copies if archive_check or not extract else 0)
    return (manifest.raw_size * copies,
            f"{'extract and ' if extract else ''}read back backup {manifest.id}")


def check_scratch_room(target, manifest: BackupManifest, *, extract: bool,
                       archive_check: bool = True) -> None:
    """Refuse, before any work, a read-back whose copies cannot fit the temporary folder."""
    needed, what = _scratch(manifest, target.database.dumper(), extract, archive_check)
    check_room(temp_folder(), needed, what, advice=TEMP_ADVICE)


