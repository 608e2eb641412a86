"""Backups: take one, read it back, list, find and verify them.

Data flows one way: dumper -> zstd -> [age] -> SHA-256 -> store, with the same bytes read back
whole on the way (app/ops/methods/dump/readback.py), then the stored object hashed again, then the manifest
(app/ops/catalog/manifest.py). The manifest is written last, so a backup without one (interrupted, or
failed its read-back) is never listed. An invalid manifest is skipped with a warning.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Callable

from app.ops.diskspace import (STORE_ADVICE, TEMP_ADVICE, check_room, in_blocks, is_full,
                               no_room, room_for, temp_folder)
from app.ops.encryption import Encryption, encrypting
from app.ops.errors import BackupFailed, ConfigError, NoRoom, TransferFailed
from app.ops.catalog.manifest import MANIFEST_SUFFIX, BackupManifest, iso, new_backup_id
from app.ops.methods.dump.readback import InlineReadBack, check_read, read_back_stored, stored_sha256
from app.ops.streams import CountingWriter, HashingWriter, TeeWriter, compressor

Progress = Callable[[int], None]



def take_backup(target, *, reason: str, revision: str | None, now: datetime,
                label: str | None = None, database_size: int | None = None,
                expected_size: int | None = None, progress: Progress | None = None,
                readback_progress: Progress | None = None,
                cancel=None, backup_id: str | None = None) -> BackupManifest:
    """Dump, compress, hash and store; read the stored artifact back whole; then write the
    manifest. Any failure removes what this call stored and raises BackupFailed; so does
    `cancel` (a Cancellation), from another thread. `expected_size`: the stored bytes expected
    (an estimate, for the store: S3 chooses its part size from it). `backup_id`: an id chosen
    beforehand (a restore records its safety backup's id before taking it)."""
    storage = target.storage
    storage.prepare()
    target.database.check_tools()
    if expected_size is None and storage.wants_estimate(None):
        # A backup nobody estimated (a restore's safety backup) into a store whose part size
        # depends on it (S3): the database's own size, as the uncompressed upper bound.
        expected_size = database_size or target.database.facts().size
    dumper = target.database.dumper()
    backup_id = backup_id or new_backup_id(now)
    encryption = Encryption.from_settings(target.settings)
    sealed = encryption is not None and bool(encryption.recipients)
    if sealed:
        # Both keys are checked before anything is dumped: the read-back must decrypt.
        recipients, identities = encryption.parsed_recipients(), encryption.identities(backup_id)
    artifact = backup_id + dumper.suffix + (".age" if sealed else "")
    folder = Path(storage.location(artifact)).parent  # a full disk can only be a local store
    started = time.monotonic()
    hashed = None
    try:
        with storage.writer(artifact, expected_size=expected_size) as out:
            with InlineReadBack(dumper, identities if sealed else None, artifact) as check:
                hashed = HashingWriter(TeeWriter(out, check))
                with (encrypting(hashed, recipients) if sealed else nullcontext(hashed)) as sealed_out:
                    with compressor(sealed_out) as zstd_stream:
                        counted = CountingWriter(zstd_stream, progress or (lambda n: None))
                        dumper.dump(counted, cancel)
                if cancel is not None and cancel.cancelled:
                    # Stopped after pg_dump had finished: the rest of the work is not wanted.
                    raise BackupFailed(f"backup {backup_id} was stopped; nothing was stored")
                # Inside the writer: a backup that does not read back is never committed.
                checked_size = check.finish()
        check_read(artifact, hashed.sha256.hexdigest(), counted.size,
                   stored_sha256(storage, artifact, readback_progress), checked_size)
    except BaseException as exc:
        _discard(storage, artifact)
        if is_full(exc):
            raise no_room(folder, f"store backup {backup_id}", hashed.size if hashed else 0,
                          more_than=True, advice=f"{STORE_ADVICE}; nothing was changed") from None
        if isinstance(exc, OSError):
            raise BackupFailed(f"writing backup {backup_id} to {storage.location(artifact)} "
                               f"failed: {exc.strerror or exc}; nothing was changed") from None
        raise
    if getattr(dumper, "revision_read", False):
        # Read in the dump's own snapshot: a migrate that committed after the caller read
        # the revision, before the dump began, is in the archive, and so in the manifest.
        revision = dumper.revision
    manifest = BackupManifest(
        id=backup_id, env=target.env, engine=target.database.kind,
        database=target.database.masked_url,
        created_at=iso(now), revision=revision, size=hashed.size, raw_size=counted.size,
        sha256=hashed.sha256.hexdigest(), artifact=artifact, location=storage.location(artifact),
        format=dumper.format, reason=reason, label=label,
        duration_seconds=round(time.monotonic() - started, 3), versions=dict(dumper.versions),
        database_size=database_size, row_counts=dumper.row_counts,
        encryption="age" if sealed else None,
        recipients=list(encryption.recipients) if sealed else None,
        verified=True, verified_at=iso(now))
    _store_manifest(storage, manifest, folder)
    return manifest


def _store_manifest(storage, manifest: BackupManifest, folder: Path) -> None:
    """Written last: only now is the backup listed. A manifest that cannot be stored takes its
    artifact with it."""
    data = manifest.to_json().encode()
    name = manifest.id + MANIFEST_SUFFIX
    try:
        storage.put_bytes(name, data)
    except BaseException as exc:
        _discard(storage, manifest.artifact)
        if is_full(exc):
            # Room for the whole backup, as the artifact just removed took some of it.
            raise no_room(folder, f"store backup {manifest.id} and its manifest",
                          in_blocks(folder, manifest.size, len(data)),
                          advice=f"{STORE_ADVICE}; nothing was changed") from None
        if isinstance(exc, OSError):
            raise BackupFailed(f"writing backup {manifest.id}'s manifest to "
                               f"{storage.location(name)} failed: "
                               f"{exc.strerror or exc}; nothing was changed") from None
        raise


def delete_backup(storage, manifest: BackupManifest) -> None:
    """Manifest first: a backup deleted halfway is never listed as complete."""
    storage.delete(manifest.id + MANIFEST_SUFFIX)
    if manifest.artifact:  # a restore point has none: its data is pgBackRest's to expire
        storage.delete(manifest.artifact)


def _discard(storage, name: str) -> None:
    """Best-effort clean-up after a failure: the failure itself is what the user must see."""
    try:
        storage.delete(name)
    except Exception:
        pass


def list_backups(target, warn: Callable[[str], None] | None = None) -> list[BackupManifest]:
    """The environment's backups, newest first, each with the size its artifact has in the
    store (one listing, no extra request). An invalid manifest is skipped, and `warn` is told."""
    storage = target.storage
    stored = storage.sizes()
    manifests = []
    for name in sorted(n for n in stored if n.endswith(MANIFEST_SUFFIX)):
        try:
            manifest = BackupManifest.from_json(storage.get_bytes(name).decode())
            if name != manifest.id + MANIFEST_SUFFIX:
                raise ValueError(f"it is named for another id than its own ({manifest.id})")
        except (ValueError, TypeError, OSError, UnicodeDecodeError) as exc:
            if warn is not None:
                warn(f"skipped the invalid backup manifest {storage.location(name)}: {exc}")
            continue
        if manifest.env == target.env:
            manifest.stored_size = stored.get(manifest.artifact)
            manifests.append(manifest)
    return sorted(manifests, key=lambda m: (m.created, m.id), reverse=True)


def find_backup(target, backup_id: str | None) -> BackupManifest:
    backups = list_backups(target)
    if backup_id is None:
        if not backups:
            raise ConfigError(f"env '{target.env}' has no backups yet: take one with "
                              "`invoke backup`")
        return backups[0]
    matches = [m for m in backups if m.id == backup_id] or \
              [m for m in backups if m.id.startswith(backup_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(f"backup '{backup_id}' is not among env '{target.env}' backups: "
                          "`invoke backups` lists them")
    raise ConfigError(f"backup id '{backup_id}' is ambiguous ({len(matches)} match): "
                      "give more of it")


def verify_backup(target, manifest: BackupManifest, *, now: datetime,
                  progress: Progress | None = None, extract_to=None,
                  archive_check: bool = True) -> BackupManifest:
    """Check a backup with the method that made it (app/ops/methods/registry.py). The manifest records
    the outcome either way, so a backup found broken is never chosen as verified."""
    from app.ops.methods.registry import method_of
    return method_of(manifest).verify(target, manifest, now=now, progress=progress,
                                      extract_to=extract_to, archive_check=archive_check)


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
        _record_verification(storage, manifest, now, error)
        raise BackupFailed(error) from None
    if problem is not None:
        _record_verification(storage, manifest, now, problem)
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


def record_outcome(storage, manifest: BackupManifest, now: datetime,
                   check: Callable[[], None]) -> BackupManifest:
    """Run `check` and write its outcome into the manifest. A full temporary folder, or a store
    that broke off midway, says nothing about the backup itself: nothing is recorded."""
    try:
        check()
    except (NoRoom, TransferFailed):
        raise
    except BackupFailed as exc:
        _record_verification(storage, manifest, now, str(exc))
        raise BackupFailed(f"backup {manifest.id} failed verification: {exc}") from None
    _record_verification(storage, manifest, now, None)
    return manifest


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


def _record_verification(storage, manifest: BackupManifest, now: datetime,
                         error: str | None) -> None:
    """Write the outcome into the manifest. A store that cannot take it keeps the old manifest
    whole (the new one goes to a `.partial` first, removed on failure), so a damaged backup may
    still say verified: the failure says so, and is exit 4 even for an intact backup."""
    said = "verified" if manifest.verified else "not verified"
    manifest.verified = error is None
    manifest.verified_at = iso(now)
    manifest.verify_error = error
    name, data = manifest.id + MANIFEST_SUFFIX, manifest.to_json().encode()
    try:
        storage.put_bytes(name, data)
    except OSError as exc:
        folder = Path(storage.location(name)).parent
        why = (no_room(folder, "write its manifest", in_blocks(folder, len(data)),
                       advice=STORE_ADVICE) if is_full(exc)
               else f"writing {storage.location(name)} failed: {exc.strerror or exc}; fix that")
        outcome = (f"backup {manifest.id} failed verification: {error}" if error
                   else f"backup {manifest.id} is intact")
        raise (NoRoom if is_full(exc) else BackupFailed)(
            f"{outcome}, but this could not be recorded, so its manifest still says {said}: "
            f"{why}, then run `invoke verify --env={manifest.env} --backup={manifest.id}` "
            "again") from None
