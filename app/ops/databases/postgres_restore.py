"""Restoring PostgreSQL by swap: build the restored copy beside the live database, then swap
names in one transaction; the safety backup comes after, off the path to service.

Until the swap the live database is never touched, so a restore that fails or is killed leaves
it exactly as it was (a killed run leaves a `__restoring_` database, which the next restore
drops). The old database stays under a dated name (`DB__pre_restore_STAMP`) until the engineer
drops it: it holds every write made until the swap, and its safety backup is taken from it.

Why not `pg_restore --clean` into the live database: a table added by a later migration survives
it, a foreign key from such a table makes the restore fail halfway, and it cannot run in parallel.
"""
from __future__ import annotations

import contextlib
import time
from datetime import datetime, timedelta

from app.ops.backups import BackupManifest, check_scratch_room, take_backup, verify_backup
from app.ops.databases.postgres import restore_jobs
from app.ops.databases.postgres_server import KEPT, RESTORING, database_stamp, derived_name
from app.ops.encryption_policy import safety_backup_refusal
from app.ops.errors import BackupFailed, OpsError
from app.ops.leftovers import child_path, private_folder, unnamed_file
from app.ops.restore import SAFETY_REASON, RestorePlan, RestoreResult


def restore_by_swap(target, plan: RestorePlan, *, now: datetime, reporter, disconnect: bool,
                    started: float, check_lock) -> RestoreResult:
    database = target.database
    server = database.server()
    if server.reopen():
        # Under the lock, so no other restore is in its swap: a swap killed halfway closed it.
        reporter.warn(f"{database.name} was closed to new connections (a restore killed during "
                      "its swap); it accepts them again")
        plan.current = database.revision()
    props = server.properties()
    server.check_can_swap(_current_user(database), props, disconnect)
    database.check_tools()
    for stale in server.drop_stale():
        reporter.info(f"dropped {stale}, left behind by an interrupted restore")
    # An extract that cannot fit is refused before any work.
    check_scratch_room(target, plan.backup, extract=True, archive_check=False)
    stamp = database_stamp(now)  # to the millisecond: two restores in one second get two names
    new, kept = (derived_name(database.name, RESTORING, stamp),
                 derived_name(database.name, KEPT, stamp))
    _build_copy(target, plan, new, props, now, reporter)
    try:
        check_lock()  # LockLost: nothing swapped, the copy is dropped below
        downtime = server.swap(new, kept, end_sessions=disconnect)
        in_service = time.monotonic() - started
    except BaseException:
        # The rename may have committed before the failure reached us: the copy is dropped
        # only if it still is one.
        with contextlib.suppress(Exception):
            server.drop(new)
        raise
    result = RestoreResult(plan.backup, None, None, 0.0, kept_database=kept,
                           downtime_seconds=round(downtime, 3),
                           time_to_service_seconds=round(in_service, 3))
    result.safety_skipped = safety_backup_refusal(target.settings, kept)
    if result.safety_skipped:
        return result
    reporter.info(f"backup {plan.backup.id} is in service; the previous database is {kept}: "
                  "taking its safety backup")
    result.safety, result.safety_error = _safety_backup_of(
        target.at(database.at(kept)), plan, now + timedelta(seconds=in_service))
    return result


def _current_user(database) -> str:
    from sqlalchemy import text

    from app.ops.connection import connect
    with connect(database.url) as conn:
        return conn.execute(text("SELECT current_user")).scalar()


def _build_copy(target, plan: RestorePlan, new: str, props, now: datetime, reporter) -> None:
    """Verify and restore the backup into the new database `new`, check it, and give it the
    live database's properties. The seekable copy a parallel pg_restore needs has no name: a
    killed run leaves no decrypted, decompressed data on disk."""
    database = target.database
    server = database.server()
    with private_folder("pg-restore") as folder, unnamed_file(folder) as archive:
        try:
            # One pass: checksum and zstd frame while writing the seekable copy. pg_restore
            # then reads every block into the new database before anything is swapped: a
            # second reader would only add time.
            verify_backup(target, plan.backup, now=now, extract_to=archive, archive_check=False)
            reporter.info(f"backup {plan.backup.id} verified; restoring into {new}")
            server.create_like(new, props)
            database.dumper().restore(child_path(archive), new, jobs=restore_jobs(),
                                      pass_fds=(archive.fileno(),))
            _check_copy(database.at(new), plan.backup)
            server.copy_properties(new, props)
        except BaseException:
            # Before the swap nothing has changed: the copy being built is dropped (else the
            # next restore drops it).
            with contextlib.suppress(Exception):
                server.drop(new)
            raise


def _check_copy(copy, backup: BackupManifest) -> None:
    revision = copy.revision()
    if revision != backup.revision:
        raise BackupFailed(f"the restored copy is at revision {revision}, but backup "
                           f"{backup.id} recorded {backup.revision}; nothing was swapped")


def _safety_backup_of(kept, plan: RestorePlan,
                      at: datetime) -> tuple[BackupManifest | None, str | None]:
    """After the swap: the previous database, renamed, holds every write made until the swap,
    and nobody writes to it any more. Its backup is taken, read back and listed like any other;
    a failure here does not undo the restore (which has succeeded): it is reported, and the
    previous database is kept."""
    try:
        return take_backup(kept, reason=f"{SAFETY_REASON}{plan.backup.id}",
                           revision=kept.database.revision(), now=at), None
    except OpsError as exc:
        why = str(exc)
    except KeyboardInterrupt:
        why = "it was stopped"
    name = kept.database.name
    return None, (f"backup {plan.backup.id} was restored and is in service, but the safety "
                  f"backup of the previous database failed ({why}): that database is kept as "
                  f"{name} and nothing was dropped; keep it until it is backed up "
                  f"(`invoke backup` cannot reach it: `pg_dump -Fc -d {name}`)")
