"""The dump method on PostgreSQL: a restore by swap, a scratch copy, and the finishing of a
restore cut short at its swap. The sequence is here; the server's own steps (create a database
like another, load an archive, swap names, drop) are the database adapter's
(app/ops/databases/postgres/).

A restore builds the restored copy beside the live database, then swaps names in one
transaction; the safety backup comes after, off the path to service.

Until the swap the live database is never touched, so a restore that fails or is killed leaves
it exactly as it was (a killed run leaves a `__restoring_` database, which the next restore
drops). The old database stays under a dated name (`DB__pre_restore_STAMP`) until the engineer
drops it: it holds every write made until the swap, and its safety backup is taken from it.

Right before the swap an intent record goes to the backup store (app/ops/catalog/restore_intent.py):
a run cut short from there on (kill -9 during the safety backup, a server restart around the
rename) is finished by the next migrate, rollback, backup or restore (`finish_interrupted`),
from that record and what the server shows: the safety backup taken and verified, audited, and
only then the old database dropped; or, not swapped, the live database reopened and the copy
dropped.

Why not `pg_restore --clean` into the live database: a table added by a later migration survives
it, a foreign key from such a table makes the restore fail halfway, and it cannot run in parallel.
"""
from __future__ import annotations

import contextlib
import time
from datetime import datetime, timedelta
from typing import Iterator

from app.ops.catalog import audit
from app.ops.catalog.backups import list_backups
from app.ops.catalog.manifest import BackupManifest, new_backup_id
from app.ops.catalog.restore_intent import (NOT_SWAPPED, OLD_GONE, UNKNOWN, RestoreIntent,
                                            clear_intent, mark_intent, pending_intents,
                                            swap_state, undo_unswapped, unknown_state_warning,
                                            write_intent)
from app.ops.databases.connection import connect, first_line
from app.ops.databases.postgres.database import SCRATCH, restore_jobs
from app.ops.databases.postgres.server import KEPT, RESTORING, database_stamp, derived_name
from app.ops.errors import BackupFailed, OpsError
from app.ops.leftovers import child_path, private_folder, unnamed_file
from app.ops.methods.contract import (SAFETY_REASON, RestorePlan, RestoreResult,
                                      safety_skipped)
from app.ops.methods.dump.take import take_backup
from app.ops.methods.dump.verify import check_scratch_room, verify_dump

def restore(target, plan: RestorePlan, *, now: datetime, reporter, disconnect: bool,
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
    database.check_owners(plan.backup.owners)
    database.check_lock_room()
    database.check_tools()
    for stale in server.drop_stale():
        reporter.info(f"dropped {stale}, left behind by an interrupted restore")
    # An extract that cannot fit is refused before any work.
    check_scratch_room(target, plan.backup, extract=True, archive_check=False)
    stamp = database_stamp(now)  # to the millisecond: two restores in one second get two names
    new, kept = (derived_name(database.name, RESTORING, stamp),
                 derived_name(database.name, KEPT, stamp))
    notes = _build_copy(target, plan, new, props, now, reporter)
    try:
        check_lock()  # LockLost: nothing swapped, the copy is dropped below
        # Before the live database is touched: a run cut short from here on is finished by
        # the next one, from this record and what the server shows (app/ops/catalog/restore_intent.py).
        plan.intent = _intent_written(target, plan, new, kept, props, now, disconnect)
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
                           time_to_service_seconds=round(in_service, 3), notes=notes)
    result.safety_skipped = safety_skipped(plan, kept)
    if result.safety_skipped:
        return result
    reporter.info(f"backup {plan.backup.id} is in service; the previous database is {kept}: "
                  "taking its safety backup")
    at = now + timedelta(seconds=in_service)
    safety_id = new_backup_id(at)
    # Its id is recorded first: a run killed while taking it leaves a half-written file that
    # the next run knows to be this one's.
    with contextlib.suppress(OpsError, OSError):  # the next run reads the server anyway
        mark_intent(target, plan.intent, phase="swapped", safety_backup_id=safety_id)
    result.safety, result.safety_error = _safety_backup_of(
        target.at(database.at(kept)), plan, at, safety_id)
    return result


def _intent_written(target, plan: RestorePlan, new: str, kept: str, props, now: datetime,
                    disconnect: bool) -> RestoreIntent:
    try:
        return write_intent(target, backup_id=plan.backup.id, copy=new, kept=kept,
                            live_oid=props.oid, from_revision=plan.current,
                            to_revision=plan.backup.revision, now=now, disconnect=disconnect)
    except (OpsError, OSError) as exc:
        raise BackupFailed(f"the restore's intent record could not be written to the backup "
                           f"store ({exc}); nothing was swapped, the restored copy is "
                           "dropped") from None


def _current_user(database) -> str:
    from sqlalchemy import text

    with connect(database.url) as conn:
        return conn.execute(text("SELECT current_user")).scalar()


def _build_copy(target, plan: RestorePlan, new: str, props, now: datetime,
                reporter) -> list[str]:
    """Verify and restore the backup into the new database `new`, check it, and give it the
    live database's properties; pg_restore's notes. The seekable copy a parallel pg_restore
    needs has no name: a killed run leaves no decrypted, decompressed data on disk."""
    database = target.database
    server = database.server()
    with private_folder("pg-restore") as folder, unnamed_file(folder) as archive:
        try:
            # One pass: checksum and zstd frame while writing the seekable copy. pg_restore
            # then reads every block into the new database before anything is swapped: a
            # second reader would only add time.
            verify_dump(target, plan.backup, now=now, extract_to=archive, archive_check=False)
            reporter.info(f"backup {plan.backup.id} verified; restoring into {new}")
            server.create_like(new, props)
            notes = database.dumper().restore(child_path(archive), new, jobs=restore_jobs(),
                                              pass_fds=(archive.fileno(),))
            _check_copy(database.at(new), plan.backup)
            server.copy_properties(new, props)
            return notes
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


def _safety_backup_of(kept, plan: RestorePlan, at: datetime,
                      backup_id: str) -> tuple[BackupManifest | None, str | None]:
    """After the swap: the previous database, renamed, holds every write made until the swap,
    and nobody writes to it any more. Its backup is taken, read back and listed like any other;
    a failure here does not undo the restore (which has succeeded): it is reported, and the
    previous database is kept."""
    from sqlalchemy.exc import DBAPIError

    try:
        return take_backup(kept, reason=f"{SAFETY_REASON}{plan.backup.id}",
                           revision=kept.database.revision(), now=at, backup_id=backup_id), None
    except OpsError as exc:
        why = str(exc)
    except DBAPIError as exc:  # the server went away under the dump's snapshot session
        why = first_line(exc.orig)
    except KeyboardInterrupt:
        why = "it was stopped"
    name = kept.database.name
    return None, (f"backup {plan.backup.id} was restored and is in service, but the safety "
                  f"backup of the previous database failed ({why}): that database is kept as "
                  f"{name} and nothing was dropped; the next migrate, rollback, backup or "
                  f"restore of env '{kept.env}' takes that safety backup first (`invoke "
                  f"status` shows the unfinished restore until then)")


# -- a restore cut short at its swap, finished by the next run ---------------------------------


def pending(target) -> list[RestoreIntent]:
    """The intent records of this env's restores that a kill or a restart cut short."""
    return pending_intents(target)


def finish_interrupted(target, *, now: datetime, reporter) -> bool:
    """Under the env's lock, so the run that wrote each record is gone (or has lost the lock):
    finish every restore of this database that a kill or a server restart cut short, as the
    server shows it. True if there was one."""
    intents = pending_intents(target)
    for intent in intents:
        _finish(target, intent, now, reporter)
    return bool(intents)


def _finish(target, intent: RestoreIntent, now: datetime, reporter) -> None:
    server = target.database.server()
    state, found = swap_state(server, intent)
    if state == UNKNOWN:
        reporter.warn(unknown_state_warning(intent, found))
        return
    details = {"from_revision": intent.from_revision, "to_revision": intent.to_revision,
               "backup_id": intent.backup_id, "interrupted_run": intent.run,
               "intent": intent.name}
    if state == NOT_SWAPPED:
        for done in undo_unswapped(server, intent, found):
            reporter.warn(done)
        audit.record(target, action="restore", now=now, reporter=reporter,
                     outcome=f"not swapped, cleaned up by run {audit.RUN_ID}", **details)
        clear_intent(target, intent)
        reporter.warn(f"the {intent.describe()}: it did not swap, {intent.database} holds what "
                      "it held before; nothing was restored")
        return
    completed = f"completed by run {audit.RUN_ID}"
    if state == OLD_GONE:
        gone = f"the previous database {intent.kept} no longer exists"
        audit.record(target, action="restore", now=now, reporter=reporter, outcome=completed,
                     safety_backup_id=None, safety_backup_error=gone, **details)
        clear_intent(target, intent)
        reporter.warn(f"the {intent.describe()}: backup {intent.backup_id} is in service, but "
                      f"{gone}, so no safety backup of it could be taken")
        return
    safety = _finish_safety_backup(target, intent, now, reporter)
    if safety is None:
        return
    audit.record(target, action="restore", now=now, reporter=reporter, outcome=completed,
                 safety_backup_id=safety.id, dropped_database=intent.kept, **details)
    clear_intent(target, intent)
    reporter.warn(f"finished the {intent.describe()}: backup {intent.backup_id} is in service; "
                  f"safety backup {safety.id} of the previous database is verified (undo with: "
                  f"invoke restore --env={target.env} --backup={safety.id} --yes); dropping "
                  f"{intent.kept}")
    try:
        server.drop(intent.kept)
    except OpsError as exc:
        reporter.warn(f"{intent.kept} could not be dropped ({exc}): its safety backup is "
                      f"verified, drop it with `dropdb {intent.kept}`")


def _finish_safety_backup(target, intent: RestoreIntent, now: datetime,
                          reporter) -> BackupManifest | None:
    """The verified safety backup of the previous database: the one the cut-short run
    finished, read back again, or a new one. None (and a warning) if it fails: then nothing
    is dropped and the record stays for the next run."""
    from sqlalchemy.exc import DBAPIError

    # The half-written artifact of the cut-short run's safety backup: its writer is gone.
    if intent.safety_backup_id:
        target.storage.remove_unheld_partials(intent.safety_backup_id)
    kept = target.at(target.database.at(intent.kept))
    try:
        done = [m for m in list_backups(target) if m.id == intent.safety_backup_id]
        if done:
            manifest = verify_dump(target, done[0], now=now)
            if manifest.verified:
                return manifest
        return take_backup(kept, reason=f"{SAFETY_REASON}{intent.backup_id}",
                           revision=kept.database.revision(), now=now)
    except (OpsError, DBAPIError) as exc:
        why = first_line(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
        reporter.warn(f"the {intent.describe()} is not finished: the safety backup of "
                      f"{intent.kept} failed ({why}); nothing was dropped, the next run tries "
                      "again")
        return None


# -- a scratch copy: restore-test and rehearsals ---------------------------------------------


@contextlib.contextmanager
def scratch_copy(target, backup: BackupManifest, now: datetime) -> Iterator[object]:
    """A new database `DB__scratch_STAMP` restored in parallel from the verified archive,
    a file without a name (app/ops/leftovers.py); always dropped, and one a killed run
    left is dropped by the next. Yields the target of the copy."""
    database = target.database
    database.check_owners(backup.owners)
    with private_folder("scratch") as folder, unnamed_file(folder) as archive:
        verify_dump(target, backup, now=now, extract_to=archive)
        server = database.server()
        server.drop_stale(SCRATCH)
        props = server.properties()
        name = derived_name(database.name, SCRATCH, database_stamp(now))
        database.check_tools()
        server.create_like(name, props)
        try:
            database.dumper().restore(child_path(archive), name, jobs=restore_jobs(),
                                      pass_fds=(archive.fileno(),))
            yield target.at(database.at(name))
        finally:
            server.drop(name)
