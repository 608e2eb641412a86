"""`invoke rekey`: re-encrypt the env's backups (or one) to the current age recipients, for a
retired or compromised key.

Per backup, one stream and no copy on disk: the old artifact is read (its SHA-256 checked on the
way), age-decrypted with BACKUP_ENCRYPTION_IDENTITY_FILE (a plaintext one needs no key), and
age-encrypted to BACKUP_ENCRYPTION_RECIPIENTS into a new artifact beside it, under a new name
(`ID.kN...age`, app/ops/catalog/manifest.py). The compressed bytes inside are never decompressed on the
way: only the age layer changes. The new artifact is then read back whole like any new backup
(decrypted with the same identity file, which must hold the new key too, decompressed, its
size and, for PostgreSQL, every block through pg_restore from a pipe), and only then is the
manifest switched to it and the old artifact removed.

A kill at any moment leaves each manifest naming an artifact that is whole and that one of the
keys opens: before the switch the old one (the new one, if any, is an orphan), after it the new
one (the old one is an orphan). The next run removes the orphans of the backups it handles and
re-keys what is still to do; a backup already encrypted to exactly the current recipients is
left alone. Restore points are pgBackRest's: not re-keyed.
"""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from datetime import datetime

from app.ops.catalog import audit
from app.ops.catalog.backups import find_backup, list_backups
from app.ops.encryption import Encryption, decrypting, encrypting
from app.ops.errors import BackupFailed, ConfigError, OpsError
from app.ops.catalog.manifest import MANIFEST_SUFFIX, BackupManifest, artifact_re, iso
from app.ops.methods.dump.readback import read_back_stored
from app.ops.methods.registry import method_of
from app.ops.report import Reporter
from app.ops.storage.object_lock import Retained
from app.ops.streams import HashingReader, HashingWriter

RESTORE_POINT_NOTE = ("a pgBackRest restore point: its data is in pgBackRest's repository, "
                      "whose cipher pgBackRest owns; not re-keyed")


@dataclass
class RekeyPlan:
    recipients: tuple[str, ...]
    todo: list[BackupManifest] = field(default_factory=list)
    current: list[BackupManifest] = field(default_factory=list)   # already to these recipients
    restore_points: list[BackupManifest] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)   # artifacts a killed rekey left


@dataclass
class RekeyResult:
    plan: RekeyPlan
    done: list[BackupManifest] = field(default_factory=list)
    failed: list[tuple[BackupManifest, OpsError]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)   # old artifacts under Object Lock retention


def plan_rekey(target, backup_id: str | None = None, warn=None) -> RekeyPlan:
    encryption = Encryption.from_settings(target.settings)
    if encryption is None or not encryption.recipients:
        raise ConfigError("rekey needs the new key: set BACKUP_ENCRYPTION_RECIPIENTS to its age "
                          "public key (age1...), and keep both private keys in "
                          "BACKUP_ENCRYPTION_IDENTITY_FILE until rekey has finished")
    encryption.parsed_recipients()  # a malformed key is refused before anything
    plan = RekeyPlan(encryption.recipients)
    chosen = [find_backup(target, backup_id)] if backup_id else list_backups(target, warn)
    stored = target.storage.sizes()
    for manifest in chosen:
        if not method_of(manifest).has_artifact:
            plan.restore_points.append(manifest)
            continue
        pattern = artifact_re(manifest.id)
        plan.orphans += sorted(n for n in stored if n != manifest.artifact
                               and pattern.fullmatch(n))
        if manifest.encryption == "age" and set(manifest.recipients or ()) == set(plan.recipients):
            plan.current.append(manifest)
        else:
            plan.todo.append(manifest)
    return plan


def run_rekey(target, plan: RekeyPlan, *, now: datetime,
              reporter: Reporter = Reporter()) -> RekeyResult:
    """Re-key every backup of the plan; one that fails is left as it was, and the others go
    on. Audited (`rekey`) whatever the outcome, once it has started."""
    result = RekeyResult(plan)
    outcome = "failed"
    try:
        target.storage.prepare()  # `.partial` files a killed run left (local store)
        for name in plan.orphans:
            try:
                target.storage.delete(name)
            except Retained as exc:
                reporter.info(f"kept {exc}: a rekey after that date removes it")
                continue
            reporter.info(f"removed {target.storage.location(name)}, left by an interrupted "
                          "rekey")
        encryption = Encryption.from_settings(target.settings)
        recipients = encryption.parsed_recipients()
        for manifest in plan.todo:
            try:
                note = rekey_one(target, manifest, encryption, recipients, now=now)
            except (BackupFailed, ConfigError) as exc:
                result.failed.append((manifest, exc))
                reporter.warn(f"backup {manifest.id} was not re-keyed and is as it was: {exc}")
                continue
            result.done.append(manifest)
            reporter.info(f"backup {manifest.id} re-keyed: {manifest.location}")
            if note:
                result.kept.append(manifest.id)
                reporter.warn(f"backup {manifest.id}: {note}")
        outcome = "succeeded" if not result.failed else "partly failed"
        return result
    except KeyboardInterrupt:
        outcome = "stopped"
        raise
    finally:
        audit.record(target, action="rekey", now=now, outcome=outcome, reporter=reporter,
                     from_revision=None, to_revision=None, backup_id=None,
                     recipients=list(plan.recipients),
                     rekeyed=[m.id for m in result.done],
                     failed=[m.id for m, _ in result.failed],
                     already_current=[m.id for m in plan.current],
                     restore_points=[m.id for m in plan.restore_points],
                     orphans_removed=plan.orphans, old_artifacts_retained=result.kept)


def rekey_one(target, manifest: BackupManifest, encryption: Encryption, recipients, *,
              now: datetime) -> str | None:
    """Write, read back, switch, remove: in this order, so a kill leaves a whole backup.
    Returns a note when the old artifact could not be removed yet (Object Lock)."""
    storage = target.storage
    identities = encryption.identities(manifest.id)  # for the read-back, and the old layer
    new_name = next_artifact(manifest)
    try:
        sha256, size = _rewrite(storage, manifest, new_name,
                                identities if manifest.encryption else None, recipients)
        _read_back(target, manifest, new_name, sha256, identities)
    except BaseException:
        with contextlib.suppress(Exception):
            storage.delete(new_name)
        raise
    old = manifest.artifact
    manifest.artifact, manifest.location = new_name, storage.location(new_name)
    manifest.sha256, manifest.size = sha256, size
    manifest.encryption, manifest.recipients = "age", list(encryption.recipients)
    manifest.sse = storage.encryption_applied(new_name)
    manifest.rekeyed_at = manifest.verified_at = iso(now)
    manifest.verified, manifest.verify_error = True, None
    storage.put_bytes(manifest.id + MANIFEST_SUFFIX, manifest.to_json().encode())
    try:
        storage.delete(old)
    except Retained as exc:
        # Object Lock: the old artifact outlives its manifest until its retention ends; the
        # next rekey after that removes it (an orphan then).
        return f"its old artifact is kept: {exc}; a rekey after that date removes it"
    return None


def next_artifact(manifest: BackupManifest) -> str:
    """A name beside the current artifact's: `ID.SUFFIX.age` for a plaintext one, else the
    next `ID.kN.SUFFIX.age`."""
    match = artifact_re(manifest.id).fullmatch(manifest.artifact)
    if not match["age"]:
        return f"{manifest.id}{match['suffix']}.age"
    return f"{manifest.id}.k{int(match['generation'] or 0) + 1}{match['suffix']}.age"


def _rewrite(storage, manifest: BackupManifest, new_name: str, identities,
             recipients) -> tuple[str, int]:
    """Old artifact -> [age -d] -> age -e -> new artifact; the new one's SHA-256 and size. The
    old one's checksum is checked before the new one is committed."""
    with storage.writer(new_name) as out:
        hashed_out = HashingWriter(out)
        with encrypting(hashed_out, recipients) as sealed_out:
            with storage.reader(manifest.artifact) as source:
                hashed_in = HashingReader(source)
                with (decrypting(hashed_in, identities, manifest.id) if identities
                      else contextlib.nullcontext(hashed_in)) as plain:
                    shutil.copyfileobj(plain, sealed_out, 1 << 20)
                hashed_in.drain()
        if hashed_in.sha256.hexdigest() != manifest.sha256:
            raise BackupFailed(f"backup {manifest.id}'s artifact {manifest.location} does not "
                               "match its SHA-256 checksum: it is damaged; `invoke verify` it")
    return hashed_out.sha256.hexdigest(), hashed_out.size


class _DiscardingCheck:
    """A dumper's read_back that decrypts, decompresses and counts every byte but keeps none:
    SQLite's own check would write a copy of the database to the temporary folder."""

    def read_back(self, feed) -> None:
        feed(_Discard())


class _Discard:
    def write(self, data) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def _read_back(target, manifest: BackupManifest, name: str, sha256: str, identities) -> None:
    database = target.database
    dumper = None
    if manifest.engine == database.kind:
        dumper = database.dumper()
        if dumper.read_back_copies:
            dumper = None
    read_back_stored(target.storage, dumper or _DiscardingCheck(), name, sha256,
                     manifest.raw_size, identities=identities)
