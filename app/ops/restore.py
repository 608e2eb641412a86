"""`invoke restore`: bring a backup back over the environment's database, exactly, or change
nothing at all.

Order: choose the backup (default: the newest verified one that restore did not take itself as
a safety backup, so two restores in a row never flip back and forth), confirm, lock, verify it,
take a safety backup of the current database, restore, check the alembic revision, audit. On
PostgreSQL the restore builds a new database and swaps names at the end, so the safety backup
runs beside the verify and the restore; a restore that fails before the swap drops both.
Never gated by the maintenance window: it is the incident tool.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from app.ops import audit
from app.ops.backups import (BackupManifest, check_scratch_room, delete_backup, find_backup,
                             list_backups, take_backup, verify_backup)
from app.ops.cancel import Cancellation
from app.ops.database import connect, database_exists, server_version_num, stamped_revision
from app.ops.errors import BackupFailed, ConfigError, GuardRefused
from app.ops.leftovers import private_folder
from app.ops.lock import database_lock
from app.ops.report import Reporter
from app.ops.storage import open_storage
from app.settings import engine_kind

SAFETY_REASON = "before restore of "


@dataclass
class RestorePlan:
    backup: BackupManifest
    database_name: str      # what the engineer types to confirm
    current: str | None     # the live database's revision now


@dataclass
class RestoreResult:
    backup: BackupManifest
    safety: BackupManifest | None
    revision: str | None
    seconds: float
    kept_database: str | None = None
    notes: list = field(default_factory=list)  # what the engineer must know afterwards


def is_safety_backup(manifest: BackupManifest) -> bool:
    return manifest.reason.startswith(SAFETY_REASON)


def plan_restore(settings, backup_id: str | None) -> RestorePlan:
    engine = engine_kind(settings.database_url)
    if backup_id:
        manifest = find_backup(settings, backup_id)
    else:
        candidates = [m for m in list_backups(settings)
                      if m.verified and not is_safety_backup(m) and m.engine == engine]
        if not candidates:
            raise ConfigError(f"env '{settings.env}' has no verified backup to restore: "
                              "`invoke backups` lists them")
        manifest = candidates[0]
    if manifest.engine != engine:
        raise ConfigError(f"backup {manifest.id} is a {manifest.engine} backup and cannot be "
                          f"restored over env '{settings.env}' ({engine})")
    url = settings.database_url
    name = Path(url.database).name if engine == "sqlite" else url.database
    return RestorePlan(manifest, name, stamped_revision(settings.database_url))


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


def run_restore(settings, plan: RestorePlan, *, now: datetime,
                reporter: Reporter = Reporter(), whole_cluster: bool = False) -> RestoreResult:
    started = time.monotonic()
    outcome, result = "failed", None
    with database_lock(settings, action="restore", now=now):
        try:
            if plan.backup.is_restore_point:
                result = _restore_pitr(settings, plan, reporter, whole_cluster)
            else:
                restore_one = (_restore_sqlite if engine_kind(settings.database_url) == "sqlite"
                               else _restore_postgres)
                result = restore_one(settings, plan, now, reporter)
            result.revision = stamped_revision(settings.database_url)
            if result.revision != plan.backup.revision:
                raise BackupFailed(f"after the restore the database is at {result.revision}, "
                                   f"but backup {plan.backup.id} holds {plan.backup.revision}")
            result.seconds = round(time.monotonic() - started, 3)
            outcome = "succeeded"
            return result
        except KeyboardInterrupt:
            outcome = "stopped"  # Ctrl-C, SIGTERM or SIGHUP (app/ops/signals.py)
            raise
        finally:
            audit.record(settings, action="restore", now=now, outcome=outcome, reporter=reporter,
                         from_revision=plan.current, to_revision=plan.backup.revision,
                         backup_id=plan.backup.id,
                         safety_backup_id=result.safety.id if result and result.safety else None,
                         duration_seconds=round(time.monotonic() - started, 3))


def _restore_pitr(settings, plan: RestorePlan, reporter: Reporter,
                  whole_cluster: bool) -> RestoreResult:
    """A pgBackRest restore point: no safety backup, the archived old timeline keeps the writes
    made since (app/ops/restore_pitr.py)."""
    from app.ops.restore_pitr import restore_restore_point
    notes = restore_restore_point(settings, plan.backup, whole_cluster=whole_cluster,
                                  reporter=reporter)
    return RestoreResult(plan.backup, None, None, 0.0, notes=notes)


def _safety_backup(settings, plan: RestorePlan, now: datetime, version: int | None,
                   cancel: Cancellation | None = None) -> BackupManifest:
    return take_backup(settings, reason=f"{SAFETY_REASON}{plan.backup.id}",
                       revision=plan.current, now=now, server_version_num=version, cancel=cancel)


def _restore_sqlite(settings, plan: RestorePlan, now: datetime, reporter: Reporter) -> RestoreResult:
    path = Path(settings.database_url.database)
    with private_folder("sqlite-restore") as folder:
        copy = Path(folder) / "restore.sqlite3"
        with open(os.open(copy, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as extracted:
            verify_backup(settings, plan.backup, now=now, extract_to=extracted)
        reporter.info(f"backup {plan.backup.id} verified")
        safety = None
        if database_exists(settings.database_url):
            safety = _safety_backup(settings, plan, now, None)
            reporter.info(f"safety backup {safety.id} taken")
        # The backup API writes through SQLite's own locking: readers see the old database or
        # the new one, never a mix, and WAL and journal files stay consistent.
        source = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        target = sqlite3.connect(path, timeout=60)
        try:
            source.backup(target)
        except sqlite3.Error as exc:
            raise BackupFailed(f"restoring over {path} failed: {exc}; the database is as it was") from None
        finally:
            target.close()
            source.close()
    return RestoreResult(plan.backup, safety, None, 0.0)


def _restore_postgres(settings, plan: RestorePlan, now: datetime,
                      reporter: Reporter) -> RestoreResult:
    from sqlalchemy import text

    from app.ops.dumpers import dumper_for
    from app.ops.restore_postgres import (KEPT, RESTORING, DatabaseSwap, database_stamp,
                                          derived_name)

    url = settings.database_url
    swap = DatabaseSwap(url)
    with connect(url) as conn:
        version = server_version_num(conn)
        user = conn.execute(text("SELECT current_user")).scalar()
    props = swap.properties()
    swap.check_can_swap(user, props)
    dumper = dumper_for(settings)
    dumper.check_tools(version)
    for stale in swap.drop_stale():
        reporter.info(f"dropped {stale}, left behind by an interrupted restore")
    # Before the safety backup starts beside it: an extract that cannot fit is refused at once.
    check_scratch_room(settings, plan.backup, extract=True, archive_check=False)
    stamp = database_stamp(now)  # to the millisecond: two restores in one second get two names
    new, kept = derived_name(url.database, RESTORING, stamp), derived_name(url.database, KEPT, stamp)
    with private_folder("pg-restore") as folder:
        archive = Path(folder) / "restore.pgdump"
        # The live database is only read until the swap, so its safety backup runs from the
        # start, beside the verify and the restore: on two cores that saves a few seconds.
        cancel = Cancellation()
        with ThreadPoolExecutor(max_workers=1) as pool:
            safety_job = pool.submit(_safety_backup, settings, plan, now, version, cancel)
            try:
                # One pass: checksum and zstd frame while writing the seekable copy that a
                # parallel pg_restore needs. That pg_restore then reads every block into the
                # new database before anything is swapped: a second reader would only add time.
                with open(os.open(archive, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as extracted:
                    verify_backup(settings, plan.backup, now=now, extract_to=extracted,
                                  archive_check=False)
                reporter.info(f"backup {plan.backup.id} verified; restoring into {new} while "
                              "the safety backup runs")
                swap.create_like(new, props)
                dumper.restore(str(archive), new, jobs=restore_jobs())
                _check_copy(url.set(database=new), plan.backup)
                swap.copy_properties(new, props)
                safety = safety_job.result()
                reporter.info(f"safety backup {safety.id} taken")
            except BaseException:
                _undo_before_swap(settings, swap, new, safety_job, cancel)
                raise
    try:
        swap.swap(new, kept)
    except BaseException:
        # The rename may have committed before the failure reached us: the safety backup is
        # kept whatever happened, and the copy is dropped only if it still is one.
        with contextlib.suppress(Exception):
            swap.drop(new)
        raise
    return RestoreResult(plan.backup, safety, None, 0.0, kept_database=kept)


def _undo_before_swap(settings, swap, new: str, safety_job, cancel: Cancellation) -> None:
    """A restore that stops before the swap changes nothing: the copy being built is dropped,
    and so is the safety backup (stopped if still running), since the live database it holds
    is still there, untouched. Best effort: the original failure is the one to report."""
    cancel.cancel()
    try:
        safety = safety_job.result()
    except BaseException:
        safety = None  # stopped, or failed: take_backup removed what it had stored
    if safety is not None:
        with contextlib.suppress(Exception):
            delete_backup(open_storage(settings), safety)
    with contextlib.suppress(Exception):  # else the next restore drops the stale copy
        swap.drop(new)


def restore_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _check_copy(url, backup: BackupManifest) -> None:
    revision = stamped_revision(url)
    if revision != backup.revision:
        raise BackupFailed(f"the restored copy is at revision {revision}, but backup "
                           f"{backup.id} recorded {backup.revision}; nothing was swapped")
