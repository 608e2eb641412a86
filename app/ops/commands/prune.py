"""Retention: BACKUP_KEEP_LAST and BACKUP_KEEP_DAYS, applied by `invoke prune`.

A backup is kept if it is among the newest KEEP_LAST, or younger than KEEP_DAYS (with both set,
either is enough, like restic's --keep-last with --keep-within). The store is input too, so
only backups whose artifact is there at the recorded size count as copies: one whose artifact
is missing or has the wrong size neither fills a KEEP_LAST place nor is deleted by retention
(it stays listed, for a person to look at). Nor does a backup dated in the future (a host whose
clock was wrong: app/ops/catalog/dates.py): it would outrank every real backup for KEEP_LAST, so it is
kept and named, never counted. The newest verified intact backup is never deleted,
and before anything is deleted it is read back whole: if it fails, it is recorded as failed and
the next one takes its place, so a flipped byte cannot make prune delete the good backups.
Deleting removes the manifest first, so a half-deleted backup is never listed as complete.
Prune never runs as a side effect of another task.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.ops.catalog.backups import BackupManifest, delete_backup, list_backups
from app.ops.catalog.dates import dated_in_future, in_the_present
from app.ops.errors import BackupFailed
from app.ops.methods.registry import verify_backup
from app.ops.catalog.manifest import MANIFEST_SUFFIX


@dataclass
class PrunePlan:
    keep: list[BackupManifest]
    delete: list[BackupManifest]
    rules: str
    protected: BackupManifest | None = None
    damaged: list[BackupManifest] | None = None
    future: list[BackupManifest] | None = None  # dated later than now: kept, never counted
    # (backup, until): due for deletion, but under S3 Object Lock retention: kept for now
    retained: list | None = None


def plan_prune(target, now: datetime, warn=None) -> PrunePlan:
    keep_last = target.settings.BACKUP_KEEP_LAST
    keep_days = target.settings.BACKUP_KEEP_DAYS
    listed = list_backups(target, warn)
    future, backups = dated_in_future(listed, now), in_the_present(listed, now)
    intact = [m for m in backups if m.intact]
    damaged = [m for m in backups if not m.intact]
    protected = next((m for m in intact if m.verified), None)
    if keep_last is None and keep_days is None:
        return PrunePlan(listed, [], "no retention configured (BACKUP_KEEP_LAST, BACKUP_KEEP_DAYS)",
                         protected, damaged, future)
    keep, delete = damaged + future, []
    for index, manifest in enumerate(intact):
        recent = keep_days is not None and now - manifest.created <= timedelta(days=keep_days)
        counted = keep_last is not None and index < keep_last
        (keep if recent or counted or manifest is protected else delete).append(manifest)
    rules = ", ".join(part for part in (
        f"keep the last {keep_last}" if keep_last else "",
        f"keep {keep_days:g} days" if keep_days is not None else "",
        "always the newest verified") if part)
    retained = _retained(target.storage, delete, now)
    keep += [m for m, _ in retained]
    delete = [m for m in delete if m not in keep]
    return PrunePlan(keep, delete, rules, protected, damaged, future, retained)



def _retained(storage, due: list[BackupManifest], now: datetime) -> list:
    """The backups due for deletion whose manifest or artifact is under S3 Object Lock
    retention, with the date it ends: never tried (the next prune after it deletes them)."""
    if storage.object_lock is None:
        return []

    found = []
    for manifest in due:
        dates = [storage.retained_until(name) for name in (manifest.id + MANIFEST_SUFFIX,
                                                   manifest.artifact) if name]
        until = max((d for d in dates if d is not None), default=None)
        if until is not None and until > now:
            found.append((manifest, until))
    return found


def confirm_protected(target, now: datetime, warn=None) -> PrunePlan:
    """Plan, then read the backup that must survive back whole before anything is deleted.
    One that fails is recorded as failed by verify_backup, so planning again protects the
    next one; with none left that verifies, nothing is deleted."""
    while True:
        plan = plan_prune(target, now, warn)
        if not plan.delete:
            return plan
        if plan.protected is None:
            raise BackupFailed(f"env '{target.env}' has no backup that verifies: prune deleted "
                               "nothing; take a backup with `invoke backup`")
        try:
            verify_backup(target, plan.protected, now=now)
            return plan
        except BackupFailed as exc:
            if warn is not None:
                warn(f"{exc}; it is no longer counted as the newest verified backup")


def apply_prune(target, plan: PrunePlan) -> None:
    for manifest in plan.delete:
        delete_backup(target.storage, manifest)
