"""`invoke restore`: bring a backup back over the environment's database, exactly, or change
nothing at all.

Order: choose the backup (default: the newest verified one that restore did not take itself as
a safety backup, so two restores in a row never flip back and forth), confirm, lock, verify it,
restore (the database's own way: `restore` of app/ops/databases/), check the alembic revision,
audit. On PostgreSQL the restore builds a new database and swaps names at the end
(app/ops/databases/postgres_restore.py); a restore that fails before the swap drops the copy
and has changed nothing. The safety backup is taken after the swap, of the previous
database under its new name: it holds every write made until the swap, and is off the path to
service. On SQLite it is taken just before the copy, under SQLite's locking.
Never gated by the maintenance window: it is the incident tool.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from app.ops import audit
from app.ops.backups import BackupManifest, find_backup, list_backups, take_backup
from app.ops.errors import BackupFailed, ConfigError, DatabaseUnreachable, GuardRefused, LockLost
from app.ops.methods import method_of
from app.ops.report import Reporter

SAFETY_REASON = "before restore of "


@dataclass
class RestorePlan:
    backup: BackupManifest
    database_name: str      # what the engineer types to confirm
    current: str | None     # the live database's revision now
    closed: bool = False    # PostgreSQL: closed to connections (a swap killed halfway)


@dataclass
class RestoreResult:
    backup: BackupManifest
    safety: BackupManifest | None
    revision: str | None
    seconds: float
    kept_database: str | None = None
    safety_error: str | None = None  # the restore succeeded, its safety backup did not
    # BACKUP_ENCRYPTION=required and no way to encrypt: no safety backup, the old database kept
    safety_skipped: str | None = None
    downtime_seconds: float | None = None         # PostgreSQL: the swap, as clients see it
    time_to_service_seconds: float | None = None  # from the start to the restored data served
    notes: list = field(default_factory=list)  # what the engineer must know afterwards


def is_safety_backup(manifest: BackupManifest) -> bool:
    return manifest.reason.startswith(SAFETY_REASON)


def plan_restore(target, backup_id: str | None) -> RestorePlan:
    database = target.database
    if backup_id:
        manifest = find_backup(target, backup_id)
    else:
        candidates = [m for m in list_backups(target)
                      if m.verified and not is_safety_backup(m) and m.engine == database.kind]
        if not candidates:
            raise ConfigError(f"env '{target.env}' has no verified backup to restore: "
                              "`invoke backups` lists them")
        manifest = candidates[0]
    if manifest.engine != database.kind:
        raise ConfigError(f"backup {manifest.id} is a {manifest.engine} backup and cannot be "
                          f"restored over env '{target.env}' ({database.kind})")
    try:
        return RestorePlan(manifest, database.name, database.revision())
    except DatabaseUnreachable:
        # A restore killed during its swap leaves the live database closed to connections:
        # its revision cannot be read until run_restore, under the lock, opens it again.
        if not database.is_closed():
            raise
        return RestorePlan(manifest, database.name, None, closed=True)


def confirm(plan: RestorePlan, *, yes: bool, ask: Callable[[str], str] | None) -> None:
    """--yes, or the database's name typed on a terminal; with neither, refuse."""
    if yes:
        return
    if ask is None:
        raise GuardRefused("restore needs confirmation: run it on a terminal, or pass --yes")
    typed = ask(f"Type the database name ({plan.database_name}) to restore over it: ")
    if typed.strip() != plan.database_name:
        raise GuardRefused(f"restore not confirmed: '{typed.strip()}' is not "
                           f"'{plan.database_name}'; nothing was changed")


def run_restore(target, plan: RestorePlan, *, now: datetime,
                reporter: Reporter = Reporter(), disconnect: bool = False,
                whole_cluster: bool = False) -> RestoreResult:
    """`disconnect` (PostgreSQL): the application's sessions may stay connected while the copy
    is built, and are ended at the swap; without it, one connected refuses the restore.
    `whole_cluster` (a pgBackRest restore point): rewind a cluster that holds other databases."""
    started = time.monotonic()
    outcome, result = "failed", None
    with target.database.lock("restore", now) as lock:
        try:
            # The method that made the backup restores it (app/ops/methods.py). The lock is
            # asked again right before a swap: one lost meanwhile (its session ended) means
            # another run may be changing the database too.
            result = method_of(plan.backup).restore(
                target, plan, now=now, reporter=reporter, disconnect=disconnect,
                whole_cluster=whole_cluster, started=started, check_lock=lock.check)
            result.revision = target.database.revision()
            if result.revision != plan.backup.revision:
                raise BackupFailed(f"after the restore the database is at {result.revision}, "
                                   f"but backup {plan.backup.id} holds {plan.backup.revision}")
            result.seconds = round(time.monotonic() - started, 3)
            outcome = ("succeeded" if result.safety_error is None
                       else "restored, safety backup failed")
            return result
        except KeyboardInterrupt:
            outcome = "stopped"  # Ctrl-C, SIGTERM or SIGHUP (app/ops/signals.py)
            raise
        except LockLost as exc:
            outcome = "lock lost"
            raise LockLost(f"restore stopped before the swap: {exc}; nothing was changed, the "
                           "restored copy is dropped; run it again once no other run holds "
                           "the lock") from None
        finally:
            audit.record(target, action="restore", now=now, outcome=outcome, reporter=reporter,
                         from_revision=plan.current, to_revision=plan.backup.revision,
                         backup_id=plan.backup.id,
                         safety_backup_id=result.safety.id if result and result.safety else None,
                         duration_seconds=round(time.monotonic() - started, 3),
                         disconnect=disconnect,
                         downtime_seconds=result.downtime_seconds if result else None,
                         time_to_service_seconds=(result.time_to_service_seconds if result
                                                  else None),
                         kept_database=result.kept_database if result else None,
                         safety_backup_error=result.safety_error if result else None,
                         safety_backup_skipped=result.safety_skipped if result else None)


def safety_backup(target, plan: RestorePlan, now: datetime) -> BackupManifest:
    return take_backup(target, reason=f"{SAFETY_REASON}{plan.backup.id}",
                       revision=plan.current, now=now)
