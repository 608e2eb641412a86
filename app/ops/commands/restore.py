"""`invoke restore`: bring a backup back over the environment's database, exactly, or change
nothing at all.

Order: choose the backup (default: the newest verified one whose artifact is present and that
restore did not take itself as a safety backup, so two restores in a row never flip back and
forth; a newer one that is missing, damaged or dated in the future is named and passed over:
app/ops/catalog/dates.py), confirm, lock, verify it,
restore (by the method that made the backup: `restore` of app/ops/methods/), check the revision,
audit. On PostgreSQL the restore builds a new database and swaps names at the end
(app/ops/methods/dump/postgres_swap.py); a restore that fails before the swap drops the copy
and has changed nothing. The safety backup is taken after the swap, of the previous
database under its new name: it holds every write made until the swap, and is off the path to
service. On SQLite it is taken just before the copy, under SQLite's locking.
A PostgreSQL restore cut short at its swap is finished by the next run, from its intent record
(app/ops/catalog/restore_intent.py); a run that fails after writing it reads from the server what
became of the swap on its way out.
Never gated by the maintenance window: it is the incident tool.
"""
from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import Callable

from app.ops.catalog import drill_records
from app.ops.catalog.backups import find_backup, list_backups
from app.ops.catalog.dates import default_restore
from app.ops.errors import BackupFailed, ConfigError, DatabaseUnreachable, LockLost, OpsError
from app.ops.guards.confirmation import typed_confirmation
from app.ops.guards.encryption_policy import safety_backup_refusal
from app.ops.methods.contract import RestorePlan, RestoreResult, is_safety_backup
from app.ops.commands.run_scaffold import FAILED, Run, locked_run
from app.ops.methods.registry import method_of
from app.ops.report import Reporter
from app.ops.catalog.restore_intent import (NOT_SWAPPED, SWAPPED, clear_intent, swap_state,
                                            undo_unswapped)

def plan_restore(target, backup_id: str | None, now: datetime | None = None) -> RestorePlan:
    """`now` dates the default's choice: a backup dated later than it is passed over (without
    it, none is)."""
    database = target.database
    passed_over = []
    if backup_id:
        manifest = find_backup(target, backup_id)
    else:
        candidates = [m for m in list_backups(target)
                      if not is_safety_backup(m) and m.engine == database.kind]
        manifest, passed_over = default_restore(candidates, now)
        if manifest is None:
            raise ConfigError(f"env '{target.env}' has no verified backup whose artifact is "
                              "present to restore" + "".join(f"; {p}" for p in passed_over)
                              + ": `invoke backups` lists them")
    if manifest.engine != database.kind:
        raise ConfigError(f"backup {manifest.id} is a {manifest.engine} backup and cannot be "
                          f"restored over env '{target.env}' ({database.kind})")
    try:
        return RestorePlan(manifest, database.name, database.revision(),
                           passed_over=passed_over)
    except DatabaseUnreachable:
        # A restore killed during its swap leaves the live database closed to connections:
        # its revision cannot be read until run_restore, under the lock, opens it again.
        if not database.is_closed():
            raise
        return RestorePlan(manifest, database.name, None, closed=True, passed_over=passed_over)


def confirm(plan: RestorePlan, *, yes: bool, ask: Callable[[str], str] | None) -> None:
    """--yes, or the database's name typed on a terminal; with neither, refuse."""
    if yes:
        return
    typed_confirmation(
        ask, f"Type the database name ({plan.database_name}) to restore over it: ",
        plan.database_name, action="restore",
        no_terminal="restore needs confirmation: run it on a terminal, or pass --yes")


def run_restore(target, plan: RestorePlan, *, now: datetime,
                reporter: Reporter = Reporter(), disconnect: bool = False,
                whole_cluster: bool = False) -> RestoreResult:
    """`disconnect` (PostgreSQL): the application's sessions may stay connected while the copy
    is built, and are ended at the swap; without it, one connected refuses the restore.
    `whole_cluster` (a pgBackRest restore point): rewind a cluster that holds other databases.
    Locked and audited by app/ops/commands/run_scaffold.py; the hooks below are the restore's."""
    with locked_run(target, "restore", now, reporter, lock_lost=_lock_lost,
                    failed=lambda run, exc: _failed(target, plan, run, reporter, exc),
                    stopped=lambda run: _stopped(target, plan, run, reporter),
                    details=lambda run: _audit_details(plan, run.result, disconnect),
                    afterwards=lambda run: _afterwards(target, plan, now, run, reporter)) as run:
        # A restore an earlier run left unfinished was finished first (its own record).
        if run.finished_earlier:
            with contextlib.suppress(DatabaseUnreachable):  # still closed: reopened below
                plan.current = target.database.revision()
        run.audited = True
        # The method that made the backup restores it (app/ops/methods/registry.py). The lock is
        # asked again right before a swap: one lost meanwhile (its session ended) means
        # another run may be changing the database too.
        plan.safety_refused = safety_backup_refusal(target.settings)
        result = run.result = method_of(plan.backup).restore(
            target, plan, now=now, reporter=reporter, disconnect=disconnect,
            whole_cluster=whole_cluster, started=run.started, check_lock=run.lock.check)
        result.revision = target.database.revision()
        if result.revision != plan.backup.revision:
            raise BackupFailed(f"after the restore the database is at {result.revision}, "
                               f"but backup {plan.backup.id} holds {plan.backup.revision}")
        result.seconds = round(time.monotonic() - run.started, 3)
        run.outcome = ("succeeded" if result.safety_error is None
                       else "restored, safety backup failed")
    return result


def _lock_lost(run: Run, exc: LockLost) -> str:
    return (f"restore stopped before the swap: {exc}; nothing was changed, the restored copy is "
            "dropped; run it again once no other run holds the lock")


def _stopped(target, plan: RestorePlan, run: Run, reporter) -> None:
    with contextlib.suppress(Exception):
        _settle_on_the_way_out(target, plan, run.result, reporter)


def _failed(target, plan: RestorePlan, run: Run, reporter,
            exc: OpsError) -> tuple[str, Exception | None]:
    unsettled = _settle_on_the_way_out(target, plan, run.result, reporter, exc)
    if unsettled is None:
        return FAILED, None
    outcome, message = unsettled
    return outcome, BackupFailed(message)


def _audit_details(plan: RestorePlan, result: RestoreResult | None, disconnect: bool) -> dict:
    return dict(from_revision=plan.current, to_revision=plan.backup.revision,
                backup_id=plan.backup.id,
                safety_backup_id=result.safety.id if result and result.safety else None,
                disconnect=disconnect,
                downtime_seconds=result.downtime_seconds if result else None,
                time_to_service_seconds=result.time_to_service_seconds if result else None,
                kept_database=result.kept_database if result else None,
                safety_backup_error=result.safety_error if result else None,
                intent=plan.intent.name if plan.intent else None,
                safety_backup_skipped=result.safety_skipped if result else None)


def _afterwards(target, plan: RestorePlan, now: datetime, run: Run, reporter) -> None:
    """Once audited: the intent record goes if the restore is finished (and settled), and the
    run goes on record as a drill."""
    result = run.result
    if plan.intent is not None and (plan.intent_done or (result and result.safety)):
        _clear(target, plan.intent, reporter)
    drill_records.keep(target, _drill(target, plan, now, run.started, run.outcome, result), now,
                       reporter)


def _drill(target, plan: RestorePlan, now: datetime, started: float, outcome: str,
           result: RestoreResult | None):
    """A real restore is a drill too (the evidence of how long recovery takes): whole, and to
    service where the method measures it."""
    seconds = time.monotonic() - started
    checks = [] if result is None else [drill_records.check(
        "revision", result.revision == plan.backup.revision,
        f"the database is at {result.revision or 'base'}, the backup's revision")]
    to_service = result.time_to_service_seconds if result else None
    return drill_records.new_record(
        target, "restore", now, plan.backup.id, seconds, outcome, checks,
        restore_seconds=to_service if to_service is not None else
        (seconds if result is not None else None))


def _settle_on_the_way_out(target, plan: RestorePlan, result: RestoreResult | None, reporter,
                           exc: Exception | None = None) -> tuple[str, str] | None:
    """A run that wrote its intent record and then failed reads from the server what became of
    the swap. Not swapped: it reopens what it closed and drops its copy (the record can go),
    and its own error stands (None). Otherwise (the server away, or the swap in but its safety
    backup not taken) the record stays for the next run: (outcome, message) to end with."""
    intent = plan.intent
    if intent is None or (result is not None and result.safety is not None):
        return None
    try:
        server = target.database.server()
        state, found = swap_state(server, intent)
        if state == NOT_SWAPPED:
            for done in undo_unswapped(server, intent, found):
                reporter.warn(done)
            plan.intent_done = True
            return None
    except OpsError as unreachable:
        state, exc = None, exc or unreachable
    if exc is None or (state is not None and result is not None):
        return None  # the server answers and the run's own error says what happened
    next_run = (f"the next migrate, rollback, backup or restore of env '{target.env}' finishes "
                "it (`invoke status` shows it until then)")
    if result is not None or state == SWAPPED:
        return ("in service, safety backup pending",
                f"backup {plan.backup.id} is in service (the swap committed), but the run "
                f"could not go on ({exc}): the previous database is kept as {intent.kept}, "
                f"nothing was dropped and its safety backup is not taken yet; {next_run}")
    return ("cut short at the swap",
            f"the restore of backup {plan.backup.id} was cut short at the swap ({exc}): "
            f"whether it went into service is read from the server by the next run; "
            f"{next_run}, reopening {intent.database} to connections if it was left closed; "
            "nothing was dropped")


def _clear(target, intent, reporter) -> None:
    try:
        clear_intent(target, intent)
    except (OpsError, OSError) as exc:
        reporter.warn(f"the restore's intent record {intent.name} could not be removed ({exc}): "
                      "the next run of the env takes it for an unfinished restore: it verifies "
                      f"the safety backup again and drops {intent.kept}")
