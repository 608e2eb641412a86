"""Retention: BACKUP_KEEP_LAST and BACKUP_KEEP_DAYS, applied by `invoke prune`.

A backup is kept if it is among the newest KEEP_LAST, or younger than KEEP_DAYS (with both set,
either is enough, like restic's --keep-last with --keep-within). The newest verified backup is
never deleted, whatever the settings say. Deleting removes the manifest first, so a half-deleted
backup is never listed as complete. Prune never runs as a side effect of another task.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.ops.backups import BackupManifest, delete_backup, list_backups
from app.ops.errors import ConfigError
from app.ops.storage import open_storage


@dataclass
class PrunePlan:
    keep: list[BackupManifest]
    delete: list[BackupManifest]
    rules: str


def _number(settings, name: str, kind=int):
    value = settings.get(name)
    if value is None:
        return None
    try:
        number = kind(value)
    except ValueError:
        number = -1
    if number < (1 if kind is int else 0):
        raise ConfigError(f"{name} '{value}' is not a valid count: use a positive number")
    return number


def plan_prune(settings, now: datetime) -> PrunePlan:
    keep_last = _number(settings, "BACKUP_KEEP_LAST")
    keep_days = _number(settings, "BACKUP_KEEP_DAYS", float)
    backups = list_backups(settings)
    if keep_last is None and keep_days is None:
        return PrunePlan(backups, [], "no retention configured (BACKUP_KEEP_LAST, BACKUP_KEEP_DAYS)")
    newest_verified = next((m for m in backups if m.verified), None)
    keep, delete = [], []
    for index, manifest in enumerate(backups):
        recent = keep_days is not None and now - manifest.created <= timedelta(days=keep_days)
        counted = keep_last is not None and index < keep_last
        (keep if recent or counted or manifest is newest_verified else delete).append(manifest)
    rules = ", ".join(part for part in (
        f"keep the last {keep_last}" if keep_last else "",
        f"keep {keep_days:g} days" if keep_days is not None else "",
        "always the newest verified") if part)
    return PrunePlan(keep, delete, rules)


def apply_prune(settings, plan: PrunePlan) -> None:
    storage = open_storage(settings)
    for manifest in plan.delete:
        delete_backup(storage, manifest)
