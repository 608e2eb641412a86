"""The backup catalog: list, find and delete an env's backups, and record a verification's
outcome in its manifest.

A backup is listed once its manifest is stored (written last, by the method that took it:
app/ops/methods/). An invalid manifest is skipped with a warning.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Callable

from app.ops.catalog.manifest import MANIFEST_SUFFIX, BackupManifest, iso
from app.ops.diskspace import STORE_ADVICE, in_blocks, is_full, no_room
from app.ops.errors import BackupFailed, ConfigError, NoRoom, TransferFailed


def delete_backup(storage, manifest: BackupManifest) -> None:
    """Manifest first: a backup deleted halfway is never listed as complete."""
    storage.delete(manifest.id + MANIFEST_SUFFIX)
    if manifest.artifact:  # a restore point has none: its data is pgBackRest's to expire
        storage.delete(manifest.artifact)


def discard(storage, name: str) -> None:
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


def record_outcome(storage, manifest: BackupManifest, now: datetime,
                   check: Callable[[], None]) -> BackupManifest:
    """Run `check` and write its outcome into the manifest. A full temporary folder, or a store
    that broke off midway, says nothing about the backup itself: nothing is recorded."""
    try:
        check()
    except (NoRoom, TransferFailed):
        raise
    except BackupFailed as exc:
        record_verification(storage, manifest, now, str(exc))
        raise BackupFailed(f"backup {manifest.id} failed verification: {exc}") from None
    record_verification(storage, manifest, now, None)
    return manifest


def record_verification(storage, manifest: BackupManifest, now: datetime,
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
