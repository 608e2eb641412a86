"""Taking a dump: the dump method's pipeline.

Data flows one way: dumper -> zstd -> [age] -> SHA-256 -> store, with the same bytes read back
whole on the way (readback.py), then the stored object hashed again, then the manifest
(app/ops/catalog/manifest.py). The manifest is written last, so a backup without one
(interrupted, or failed its read-back) is never listed.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Callable

from app.ops.catalog.backups import discard
from app.ops.catalog.manifest import MANIFEST_SUFFIX, BackupManifest, iso, new_backup_id
from app.ops.diskspace import STORE_ADVICE, in_blocks, is_full, no_room
from app.ops.encryption import Encryption, encrypting
from app.ops.errors import BackupFailed
from app.ops.methods.dump.readback import InlineReadBack, check_read, stored_sha256
from app.ops.streams import CountingWriter, HashingWriter, TeeWriter, compressor

Progress = Callable[[int], None]


def take_backup(target, *, reason: str, revision: str | None, now: datetime,
                label: str | None = None, database_size: int | None = None,
                expected_size: int | None = None, progress: Progress | None = None,
                readback_progress: Progress | None = None,
                backup_id: str | None = None) -> BackupManifest:
    """Dump, compress, hash and store; read the stored artifact back whole; then write the
    manifest. Any failure removes what this call stored and raises BackupFailed.
    `expected_size`: the stored bytes expected
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
    seal = _Seal(Encryption.from_settings(target.settings), backup_id)
    artifact = backup_id + dumper.suffix + seal.suffix
    started = time.monotonic()
    hashed, counted = _write_and_read_back(storage, dumper, artifact, seal, expected_size,
                                           progress, readback_progress, backup_id)
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
        database_size=database_size, row_counts=dumper.row_counts, owners=dumper.owners,
        encryption="age" if seal.sealed else None,
        recipients=list(seal.encryption.recipients) if seal.sealed else None,
        sse=storage.encryption_applied(artifact),
        verified=True, verified_at=iso(now))
    _store_manifest(storage, manifest, _folder_of(storage, artifact))
    return manifest


class _Seal:
    """Whether a backup is sealed with age, and its keys: both are checked before anything is
    dumped, as the read-back must decrypt."""

    def __init__(self, encryption: Encryption | None, backup_id: str):
        self.encryption = encryption
        self.sealed = encryption is not None and bool(encryption.recipients)
        self.suffix = ".age" if self.sealed else ""
        self.recipients = encryption.parsed_recipients() if self.sealed else None
        self.identities = encryption.identities(backup_id) if self.sealed else None

    def around(self, out):
        return encrypting(out, self.recipients) if self.sealed else nullcontext(out)


def _folder_of(storage, artifact: str) -> Path:
    return Path(storage.location(artifact)).parent  # a full disk can only be a local store


def _write_and_read_back(storage, dumper, artifact: str, seal: _Seal, expected_size,
                         progress, readback_progress, backup_id: str):
    """dumper -> zstd -> [age] -> SHA-256 -> store, the same bytes read back on the way; then
    the stored object hashed again. Any failure removes what was stored."""
    hashed = None
    try:
        with storage.writer(artifact, expected_size=expected_size) as out:
            with InlineReadBack(dumper, seal.identities, artifact) as check:
                hashed = HashingWriter(TeeWriter(out, check))
                with seal.around(hashed) as sealed_out:
                    with compressor(sealed_out) as zstd_stream:
                        counted = CountingWriter(zstd_stream, progress or (lambda n: None))
                        dumper.dump(counted)
                # Inside the writer: a backup that does not read back is never committed.
                checked_size = check.finish()
        check_read(artifact, hashed.sha256.hexdigest(), counted.size,
                   stored_sha256(storage, artifact, readback_progress), checked_size)
        return hashed, counted
    except BaseException as exc:
        discard(storage, artifact)
        folder = _folder_of(storage, artifact)
        if is_full(exc):
            raise no_room(folder, f"store backup {backup_id}", hashed.size if hashed else 0,
                          more_than=True, advice=f"{STORE_ADVICE}; nothing was changed") from None
        if isinstance(exc, OSError):
            raise BackupFailed(f"writing backup {backup_id} to {storage.location(artifact)} "
                               f"failed: {exc.strerror or exc}; nothing was changed") from None
        raise


def _store_manifest(storage, manifest: BackupManifest, folder: Path) -> None:
    """Written last: only now is the backup listed. A manifest that cannot be stored takes its
    artifact with it."""
    data = manifest.to_json().encode()
    name = manifest.id + MANIFEST_SUFFIX
    try:
        storage.put_bytes(name, data)
    except BaseException as exc:
        discard(storage, manifest.artifact)
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


