"""Backups: take one, read it back, describe it in a manifest; list, find and verify them.

Data flows one way: dumper -> zstd -> [age] -> SHA-256 -> store, with the same bytes read back
whole on the way (app/ops/readback.py), then the stored object hashed again, then the manifest.
The manifest is written last, so a backup without one (interrupted, or failed its read-back)
is never listed.
The manifest holds no secret: the database URL in it has its password masked.
A manifest read back is input like any other: its fields are type-checked, and its artifact's
name must be derived from its id inside the env's folder or prefix, so a forged one can make
nothing read or delete a file elsewhere. An invalid manifest is skipped with a warning.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from app.ops.diskspace import (STORE_ADVICE, TEMP_ADVICE, check_room, in_blocks, is_full,
                               no_room, room_for, temp_folder)
from app.ops.dumpers import dumper_for
from app.ops.errors import BackupFailed, ConfigError, NoRoom, TransferFailed
from app.ops.storage import open_storage
from app.ops.encryption import Encryption, encrypting
from app.ops.readback import InlineReadBack, check_read, read_back_stored, stored_sha256
from app.ops.streams import CountingWriter, HashingWriter, TeeWriter, compressor

MANIFEST_SUFFIX = ".manifest.json"
TOOL_NAME = "mida-db-tasks 1.0"
BACKUP_ID_RE = re.compile(r"\d{8}T\d{6}(\.\d{3})?Z-[0-9a-f]{6}")
ARTIFACT_SUFFIXES = (".pgdump.zst", ".sqlite3.zst")
SHA256_RE = re.compile(r"[0-9a-f]{64}")

Progress = Callable[[int], None]


@dataclass
class BackupManifest:
    id: str
    env: str
    engine: str
    database: str
    created_at: str
    revision: str | None
    size: int
    raw_size: int
    sha256: str
    artifact: str
    location: str
    format: str
    reason: str
    label: str | None = None
    duration_seconds: float | None = None
    database_size: int | None = None
    row_counts: dict | None = None
    encryption: str | None = None
    recipients: list | None = None
    tool: str = TOOL_NAME
    versions: dict = field(default_factory=dict)
    verified: bool = True
    verified_at: str | None = None
    verify_error: str | None = None
    # "dump" (an artifact in our store) or "pgbackrest" (a restore point; see app/ops/pgbackrest.py)
    method: str = "dump"
    pgbackrest: dict | None = None
    # Seen in the store by the listing, never written into the manifest: None = no artifact.
    stored_size: int | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> str:
        data = asdict(self)
        del data["stored_size"]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "BackupManifest":
        """Parse and check a manifest; ValueError says what is wrong with it."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a backup manifest")
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        for name, kinds in _FIELD_TYPES.items():
            if name not in data and (name in _OPTIONAL or None in kinds):
                continue
            value = data.get(name)
            if not any(value is None if kind is None else
                       isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
                       for kind in kinds):
                raise ValueError(f"its {name} is {value!r}")
        shown = [data.get(name) for name in ("reason", "label", "revision", "location")]
        if any(isinstance(text, str) and has_control_characters(text) for text in shown):
            raise ValueError("its reason, label, revision or location holds control characters")
        if not BACKUP_ID_RE.fullmatch(data["id"]):
            raise ValueError(f"its id {data['id']!r} is not a backup id")
        if data.get("method", "dump") == "pgbackrest":
            return cls._restore_point(data)
        if data.get("method", "dump") != "dump":
            raise ValueError(f"its method {data['method']!r} is not dump or pgbackrest")
        suffixes = [s + e for s in ARTIFACT_SUFFIXES for e in ("", ".age")]
        if data["artifact"] not in [data["id"] + suffix for suffix in suffixes]:
            raise ValueError(f"its artifact {data['artifact']!r} is not named after its id")
        if not SHA256_RE.fullmatch(data["sha256"]) or data["size"] < 0 or data["raw_size"] < 0:
            raise ValueError("its sha256 or size is not one")
        if datetime.fromisoformat(data["created_at"]).tzinfo is None:  # ValueError: unreadable
            raise ValueError("created_at has no time zone")
        return cls(**data)

    @classmethod
    def _restore_point(cls, data: dict) -> "BackupManifest":
        """A pgBackRest restore point has no artifact of ours: its data is in pgBackRest's
        repository, and what it needs to be found again is checked here."""
        record = data.get("pgbackrest")
        if data["artifact"] != "" or not isinstance(record, dict) or not all(
                isinstance(record.get(k), str) and record.get(k)
                for k in ("restore_point", "lsn", "segment", "backup_label", "stanza")):
            raise ValueError("its pgbackrest restore point record is incomplete")
        if datetime.fromisoformat(data["created_at"]).tzinfo is None:
            raise ValueError("created_at has no time zone")
        return cls(**data)

    @property
    def is_restore_point(self) -> bool:
        return self.method == "pgbackrest"

    @property
    def intact(self) -> bool:
        """The artifact is in the store at the recorded size (as the listing saw it)."""
        if self.is_restore_point:
            return True  # in pgBackRest's repository; verify asks pgBackRest
        return self.stored_size == self.size

    @property
    def artifact_state(self) -> str:
        if self.is_restore_point:
            return "present"
        if self.stored_size is None:
            return "missing"
        return "present" if self.intact else f"wrong size ({self.stored_size} bytes)"

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)


_OPTIONAL = {"stored_size", "tool", "versions", "verified", "verified_at", "verify_error",
             "label", "duration_seconds", "database_size", "row_counts", "encryption",
             "recipients", "method", "pgbackrest"}
_FIELD_TYPES = {
    **{name: (str,) for name in ("id", "env", "engine", "database", "created_at", "sha256",
                                 "artifact", "location", "format", "reason", "tool")},
    **{name: (str, None) for name in ("revision", "label", "verified_at", "verify_error",
                                      "encryption")},
    "size": (int,), "raw_size": (int,), "database_size": (int, None),
    "duration_seconds": (int, float, None), "row_counts": (dict, None),
    "recipients": (list, None), "versions": (dict,), "verified": (bool,),
    "method": (str,), "pgbackrest": (dict, None),
}


def check_label(label: str | None) -> None:
    """A label is shown in tables and terminals: a newline would split the table and an escape
    sequence would reach the terminal raw."""
    if label is not None and has_control_characters(label):
        raise ConfigError("--label may not hold control characters (newlines, tabs, escape "
                          "sequences): give it as one line of plain text")


def has_control_characters(text: str) -> bool:
    import unicodedata
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def new_backup_id(now: datetime) -> str:
    # Sortable by time to the millisecond, so a backup taken right after another (the one
    # migrate takes before a rollback, say) still lists first; the random tail keeps two
    # backups in one millisecond apart.
    utc = now.astimezone(timezone.utc)
    return f"{utc:%Y%m%dT%H%M%S}.{utc.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def iso(now: datetime) -> str:
    return now.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def take_backup(settings, *, reason: str, revision: str | None, now: datetime,
                label: str | None = None, server_version_num: int | None = None,
                database_size: int | None = None,
                progress: Progress | None = None,
                readback_progress: Progress | None = None,
                cancel=None) -> BackupManifest:
    """Dump, compress, hash and store; read the stored artifact back whole; then write the
    manifest. Any failure removes what this call stored and raises BackupFailed; so does
    `cancel` (a Cancellation), from another thread."""
    storage = open_storage(settings)
    storage.prepare()
    dumper = dumper_for(settings)
    if server_version_num is not None:
        dumper.check_tools(server_version_num)
    backup_id = new_backup_id(now)
    encryption = Encryption.from_settings(settings)
    sealed = encryption is not None and bool(encryption.recipients)
    if sealed:
        # Both keys are checked before anything is dumped: the read-back must decrypt.
        recipients, identities = encryption.parsed_recipients(), encryption.identities(backup_id)
    artifact = backup_id + dumper.suffix + (".age" if sealed else "")
    folder = Path(storage.location(artifact)).parent  # a full disk can only be a local store
    started = time.monotonic()
    hashed = None
    try:
        with storage.writer(artifact) as out:
            with InlineReadBack(dumper, identities if sealed else None, artifact) as check:
                hashed = HashingWriter(TeeWriter(out, check))
                with (encrypting(hashed, recipients) if sealed else nullcontext(hashed)) as target:
                    with compressor(target) as zstd_stream:
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
    manifest = BackupManifest(
        id=backup_id, env=settings.env, engine=dumper.engine, database=settings.masked_database_url,
        created_at=iso(now), revision=revision, size=hashed.size, raw_size=counted.size,
        sha256=hashed.sha256.hexdigest(), artifact=artifact, location=storage.location(artifact),
        format=dumper.format, reason=reason, label=label,
        duration_seconds=round(time.monotonic() - started, 3), versions=dict(dumper.versions),
        database_size=database_size, row_counts=dumper.row_counts,
        encryption="age" if sealed else None,
        recipients=list(encryption.recipients) if sealed else None,
        verified=True, verified_at=iso(now))
    data = manifest.to_json().encode()
    try:
        storage.put_bytes(backup_id + MANIFEST_SUFFIX, data)
    except BaseException as exc:
        _discard(storage, artifact)
        if is_full(exc):
            # Room for the whole backup, as the artifact just removed took some of it.
            raise no_room(folder, f"store backup {backup_id} and its manifest",
                          in_blocks(folder, hashed.size, len(data)),
                          advice=f"{STORE_ADVICE}; nothing was changed") from None
        if isinstance(exc, OSError):
            raise BackupFailed(f"writing backup {backup_id}'s manifest to "
                               f"{storage.location(backup_id + MANIFEST_SUFFIX)} failed: "
                               f"{exc.strerror or exc}; nothing was changed") from None
        raise
    return manifest


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


def list_backups(settings, warn: Callable[[str], None] | None = None) -> list[BackupManifest]:
    """The environment's backups, newest first, each with the size its artifact has in the
    store (one listing, no extra request). An invalid manifest is skipped, and `warn` is told."""
    storage = open_storage(settings)
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
        if manifest.env == settings.env:
            manifest.stored_size = stored.get(manifest.artifact)
            manifests.append(manifest)
    return sorted(manifests, key=lambda m: (m.created, m.id), reverse=True)


def find_backup(settings, backup_id: str | None) -> BackupManifest:
    backups = list_backups(settings)
    if backup_id is None:
        if not backups:
            raise ConfigError(f"env '{settings.env}' has no backups yet: take one with "
                              "`invoke backup`")
        return backups[0]
    matches = [m for m in backups if m.id == backup_id] or \
              [m for m in backups if m.id.startswith(backup_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(f"backup '{backup_id}' is not among env '{settings.env}' backups: "
                          "`invoke backups` lists them")
    raise ConfigError(f"backup id '{backup_id}' is ambiguous ({len(matches)} match): "
                      "give more of it")


def verify_backup(settings, manifest: BackupManifest, *, now: datetime,
                  progress: Progress | None = None, extract_to=None,
                  archive_check: bool = True) -> BackupManifest:
    """Check the stored artifact against its manifest and read it back whole. The manifest
    records the outcome either way, so a backup found broken is never chosen as verified."""
    storage = open_storage(settings)
    if manifest.is_restore_point:
        from app.ops.pgbackrest import verify_restore_point
        try:
            verify_restore_point(settings, manifest)
        except BackupFailed as exc:
            _record_verification(storage, manifest, now, str(exc))
            raise BackupFailed(f"backup {manifest.id} failed verification: {exc}") from None
        _record_verification(storage, manifest, now, None)
        return manifest
    dumper = dumper_for(settings) if manifest.engine == _engine_of(settings) else None
    if dumper is None:
        raise ConfigError(f"backup {manifest.id} is a {manifest.engine} backup but env "
                          f"'{settings.env}' is configured for {_engine_of(settings)}")
    if not storage.exists(manifest.artifact):
        error = f"backup {manifest.id} has lost its artifact {manifest.location}"
        _record_verification(storage, manifest, now, error)
        raise BackupFailed(error)
    identities = None
    if manifest.encryption:
        identities = (Encryption.from_settings(settings) or Encryption((), None)).identities(
            manifest.id)
    try:
        needed, what = _scratch(manifest, dumper, extract_to is not None, archive_check)
        with room_for(temp_folder(), needed, what, advice=TEMP_ADVICE):
            read_back_stored(storage, dumper, manifest.artifact, manifest.sha256,
                             manifest.raw_size, progress, extract_to, identities, archive_check)
    except (NoRoom, TransferFailed):
        # A full temporary folder, or a store that broke off midway: neither says anything
        # about the backup itself, so nothing is recorded against it.
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


def check_scratch_room(settings, manifest: BackupManifest, *, extract: bool,
                       archive_check: bool = True) -> None:
    """Refuse, before any work, a read-back whose copies cannot fit the temporary folder."""
    needed, what = _scratch(manifest, dumper_for(settings), extract, archive_check)
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


def _engine_of(settings) -> str:
    from app.settings import engine_kind
    return engine_kind(settings.database_url)
