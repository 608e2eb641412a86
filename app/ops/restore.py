"""`invoke restore`: bring a backup back over the environment's database, exactly, or change
nothing at all.

Order: choose the backup (default: the newest verified one that restore did not take itself as
a safety backup, so two restores in a row never flip back and forth), confirm, lock, verify it,
restore, check the alembic revision, audit. On PostgreSQL the restore builds a new database and
swaps names at the end (app/ops/restore_postgres.py); a restore that fails before the swap drops
the copy and has changed nothing. The safety backup is taken after the swap, of the previous
database under its new name: it holds every write made until the swap, and is off the path to
service. On SQLite it is taken just before the copy, under SQLite's locking.
Never gated by the maintenance window: it is the incident tool.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from app.ops import audit
from app.ops.backups import (BackupManifest, check_scratch_room, find_backup, list_backups,
                             take_backup, verify_backup)
from app.ops.database import connect, database_exists, server_version_num, stamped_revision
from app.ops.errors import BackupFailed, ConfigError, DatabaseUnreachable, GuardRefused, OpsError
from app.ops.leftovers import child_path, private_folder, unnamed_file
from app.ops.lock import database_lock
from app.ops.report import Reporter
from app.settings import engine_kind

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
    downtime_seconds: float | None = None         # PostgreSQL: the swap, as clients see it
    time_to_service_seconds: float | None = None  # from the start to the restored data served
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
    try:
        return RestorePlan(manifest, name, stamped_revision(url))
    except DatabaseUnreachable:
        # A restore killed during its swap leaves the live database closed to connections:
        # its revision cannot be read until run_restore, under the lock, opens it again.
        if engine == "sqlite" or not _closed(url):
            raise
        return RestorePlan(manifest, name, None, closed=True)


def _closed(url) -> bool:
    from app.ops.restore_postgres import DatabaseSwap
    try:
        return DatabaseSwap(url).is_closed()
    except OpsError:
        return False


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
                reporter: Reporter = Reporter(), disconnect: bool = False,
                whole_cluster: bool = False) -> RestoreResult:
    """`disconnect` (PostgreSQL): the application's sessions may stay connected while the copy
    is built, and are ended at the swap; without it, one connected refuses the restore.
    `whole_cluster` (a pgBackRest restore point): rewind a cluster that holds other databases."""
    started = time.monotonic()
    outcome, result = "failed", None
    with database_lock(settings, action="restore", now=now):
        try:
            if plan.backup.is_restore_point:
                result = _restore_pitr(settings, plan, reporter, whole_cluster)
            elif engine_kind(settings.database_url) == "sqlite":
                result = _restore_sqlite(settings, plan, now, reporter)
            else:
                result = _restore_postgres(settings, plan, now, reporter, disconnect, started)
            result.revision = stamped_revision(settings.database_url)
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
        finally:
            audit.record(settings, action="restore", now=now, outcome=outcome, reporter=reporter,
                         from_revision=plan.current, to_revision=plan.backup.revision,
                         backup_id=plan.backup.id,
                         safety_backup_id=result.safety.id if result and result.safety else None,
                         duration_seconds=round(time.monotonic() - started, 3),
                         disconnect=disconnect,
                         downtime_seconds=result.downtime_seconds if result else None,
                         time_to_service_seconds=(result.time_to_service_seconds if result
                                                  else None),
                         kept_database=result.kept_database if result else None,
                         safety_backup_error=result.safety_error if result else None)


def _restore_pitr(settings, plan: RestorePlan, reporter: Reporter,
                  whole_cluster: bool) -> RestoreResult:
    """A pgBackRest restore point: no safety backup, the archived old timeline keeps the writes
    made since (app/ops/restore_pitr.py)."""
    from app.ops.restore_pitr import restore_restore_point
    notes = restore_restore_point(settings, plan.backup, whole_cluster=whole_cluster,
                                  reporter=reporter)
    return RestoreResult(plan.backup, None, None, 0.0, notes=notes)


def _safety_backup(settings, plan: RestorePlan, now: datetime) -> BackupManifest:
    return take_backup(settings, reason=f"{SAFETY_REASON}{plan.backup.id}",
                       revision=plan.current, now=now)


def _restore_sqlite(settings, plan: RestorePlan, now: datetime, reporter: Reporter) -> RestoreResult:
    path = Path(settings.database_url.database)
    with private_folder("sqlite-restore") as folder:
        copy = Path(folder) / "restore.sqlite3"
        with open(os.open(copy, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as extracted:
            verify_backup(settings, plan.backup, now=now, extract_to=extracted)
        reporter.info(f"backup {plan.backup.id} verified")
        safety = None
        if database_exists(settings.database_url):
            safety = _safety_backup(settings, plan, now)
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


def _restore_postgres(settings, plan: RestorePlan, now: datetime, reporter: Reporter,
                      disconnect: bool, started: float) -> RestoreResult:
    from sqlalchemy import text

    from app.ops.dumpers import dumper_for
    from app.ops.restore_postgres import (KEPT, RESTORING, DatabaseSwap, database_stamp,
                                          derived_name)

    url = settings.database_url
    swap = DatabaseSwap(url)
    if swap.reopen():
        # Under the lock, so no other restore is in its swap: a swap killed halfway closed it.
        reporter.warn(f"{url.database} was closed to new connections (a restore killed during "
                      "its swap); it accepts them again")
        plan.current = stamped_revision(url)
    with connect(url) as conn:
        version = server_version_num(conn)
        user = conn.execute(text("SELECT current_user")).scalar()
    props = swap.properties()
    swap.check_can_swap(user, props, disconnect)
    dumper = dumper_for(settings)
    dumper.check_tools(version)
    for stale in swap.drop_stale():
        reporter.info(f"dropped {stale}, left behind by an interrupted restore")
    # An extract that cannot fit is refused before any work.
    check_scratch_room(settings, plan.backup, extract=True, archive_check=False)
    stamp = database_stamp(now)  # to the millisecond: two restores in one second get two names
    new, kept = derived_name(url.database, RESTORING, stamp), derived_name(url.database, KEPT, stamp)
    # The seekable copy a parallel pg_restore needs has no name: a killed run leaves no
    # decrypted, decompressed data on disk.
    with private_folder("pg-restore") as folder, unnamed_file(folder) as archive:
        try:
            # One pass: checksum and zstd frame while writing the seekable copy that a
            # parallel pg_restore needs. That pg_restore then reads every block into the
            # new database before anything is swapped: a second reader would only add time.
            verify_backup(settings, plan.backup, now=now, extract_to=archive,
                          archive_check=False)
            reporter.info(f"backup {plan.backup.id} verified; restoring into {new}")
            swap.create_like(new, props)
            dumper.restore(child_path(archive), new, jobs=restore_jobs(),
                           pass_fds=(archive.fileno(),))
            _check_copy(url.set(database=new), plan.backup)
            swap.copy_properties(new, props)
        except BaseException:
            # Before the swap nothing has changed: the copy being built is dropped (else the
            # next restore drops it).
            with contextlib.suppress(Exception):
                swap.drop(new)
            raise
    try:
        downtime = swap.swap(new, kept, end_sessions=disconnect)
        in_service = time.monotonic() - started
    except BaseException:
        # The rename may have committed before the failure reached us: the copy is dropped
        # only if it still is one.
        with contextlib.suppress(Exception):
            swap.drop(new)
        raise
    result = RestoreResult(plan.backup, None, None, 0.0, kept_database=kept,
                           downtime_seconds=round(downtime, 3),
                           time_to_service_seconds=round(in_service, 3))
    reporter.info(f"backup {plan.backup.id} is in service; the previous database is {kept}: "
                  "taking its safety backup")
    result.safety, result.safety_error = _safety_backup_of(
        settings, plan, url.set(database=kept), now + timedelta(seconds=in_service), version)
    return result


def _safety_backup_of(settings, plan: RestorePlan, kept_url, at: datetime,
                      version: int) -> tuple[BackupManifest | None, str | None]:
    """After the swap: the previous database, renamed, holds every write made until the swap,
    and nobody writes to it any more. Its backup is taken, read back and listed like any other;
    a failure here does not undo the restore (which has succeeded): it is reported, and the
    previous database is kept."""
    from app.ops.scratch import with_database

    try:
        return take_backup(with_database(settings, kept_url),
                           reason=f"{SAFETY_REASON}{plan.backup.id}",
                           revision=stamped_revision(kept_url), now=at,
                           server_version_num=version), None
    except OpsError as exc:
        why = str(exc)
    except KeyboardInterrupt:
        why = "it was stopped"
    return None, (f"backup {plan.backup.id} was restored and is in service, but the safety "
                  f"backup of the previous database failed ({why}): that database is kept as "
                  f"{kept_url.database} and nothing was dropped; keep it until it is backed up "
                  f"(`invoke backup` cannot reach it: `pg_dump -Fc -d {kept_url.database}`)")


def restore_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _check_copy(url, backup: BackupManifest) -> None:
    revision = stamped_revision(url)
    if revision != backup.revision:
        raise BackupFailed(f"the restored copy is at revision {revision}, but backup "
                           f"{backup.id} recorded {backup.revision}; nothing was swapped")
