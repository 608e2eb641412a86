"""migrate, rollback and stamp: guards, then a verified backup, then Alembic, then a check of
the result.

Nothing changes a schema unless a backup taken in this run was stored and read back whole. A
database with nothing pending is left alone, without a backup. Every run that changes something
holds the database's lock and is audited, whatever its outcome (`_locked_and_audited`, over
app/ops/commands/run_scaffold.py).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

from app.ops.commands.backup_run import backup_before_change
from app.ops.guards.encryption_policy import check_policy
from app.ops.errors import BackupFailed, MigrationFailed, OpsError
from app.ops.commands.run_facts import RunFacts
from app.ops.commands.run_scaffold import FAILED, Run, locked_run
from app.ops.guards.preflight import (check_fit, check_staging_first, check_window,
                                      confirm_data_loss, review_pending)
from app.ops.catalog.manifest import BackupManifest
from app.ops.schema.migrations import Migrations, Revision
from app.ops.report import Reporter


@dataclass
class RunResult:
    action: str
    before: str | None
    target: str | None
    steps: list[Revision] = field(default_factory=list)
    backup: BackupManifest | None = None
    after: str | None = None

    @property
    def nothing_to_do(self) -> bool:
        return not self.steps


def migrate(target, *, revision: str = "head", now: datetime,
            reporter: Reporter = Reporter(), break_glass: str | None = None,
            before_backup=None) -> RunResult:
    """`before_backup(result)`, when given, runs after the guards and before the backup (the
    watch's baseline); the dict it returns joins the run's audit event."""
    migrations = Migrations(target, reporter=reporter)
    goal = migrations.resolve(revision)
    return _guarded_run(target, migrations, "migrate", now, reporter, break_glass,
                        lambda current: (goal, migrations.pending(current, goal)),
                        migrations.upgrade, before_backup=before_backup)


def rollback(target, *, to: str = "-1", now: datetime,
             reporter: Reporter = Reporter(), break_glass: str | None = None,
             yes: bool = False, ask=None, before_backup=None) -> RunResult:
    migrations = Migrations(target, reporter=reporter)
    return _guarded_run(target, migrations, "rollback", now, reporter, break_glass,
                        lambda current: migrations.downgrade_target(current, to),
                        migrations.downgrade,
                        confirm=lambda steps: confirm_data_loss(target.settings, steps, yes=yes,
                                                                ask=ask, reporter=reporter),
                        before_backup=before_backup)


def stamp(target, *, revision: str, now: datetime, reporter: Reporter = Reporter(),
          break_glass: str | None = None) -> tuple[str | None, str | None]:
    """Record a revision without running it: it changes what every later migrate does, so it
    runs under the same window, lock and audit as migrate. Returns (before, after)."""
    migrations = Migrations(target, reporter=reporter)
    goal = migrations.resolve(revision)
    with _locked_and_audited(target, RunFacts(target), "stamp", now, reporter,
                             break_glass) as run:
        migrations.config.attributes["before_commit"] = run.lock.check
        before = migrations.current()
        run.details.update(from_revision=before, to_revision=goal, backup_id=None)
        run.audited = True
        migrations.stamp(revision)
    return before, migrations.current()


@contextlib.contextmanager
def _locked_and_audited(target, facts: RunFacts, action: str, now: datetime,
                        reporter: Reporter, break_glass: str | None) -> Iterator[Run]:
    """The maintenance window, then the run's lock and audit (app/ops/commands/run_scaffold.py).
    A lock found gone at release is a warning after it."""
    # A bucket that cannot hold what BACKUP_S3_OBJECT_LOCK asks for is refused before anything,
    # even by a run that has nothing to back up and writes only its audit event.
    target.storage.check_object_lock()
    check_window(target.settings, facts, action=action, now=now, break_glass=break_glass,
                 reporter=reporter)
    with locked_run(target, action, now, reporter, break_glass=break_glass,
                    lock_lost=lambda run, exc: (
                        f"{action} stopped: {exc}; nothing was changed, the database is still at "
                        f"{run.details.get('from_revision') or 'base'}; run it again once no "
                        "other run holds the lock"),
                    failed=_with_its_error) as run:
        yield run
    if run.lock.lost:
        reporter.warn(f"the lock on env '{target.env}' was lost while the {action} ran (its "
                      "session was ended); the outcome above is the run's own, but check that "
                      "no other run changed the database meanwhile (`invoke audit`)")


def _with_its_error(run: Run, exc: OpsError) -> tuple[str, None]:
    """The cause goes on record, for whoever reads the trail later."""
    run.details["error"] = str(exc)
    return ("backup failed" if isinstance(exc, BackupFailed) else FAILED), None


def _guarded_run(target, migrations: Migrations, action: str, now: datetime,
                 reporter: Reporter, break_glass: str | None, plan, step,
                 confirm=None, before_backup=None) -> RunResult:
    """Window, then lock, then plan (under the lock, so nobody moves the database meanwhile),
    then the guards, the backup and the Alembic step."""
    facts = RunFacts(target)
    # Before the lock, the backup and any audit: a refused run has done nothing.
    check_policy(target.settings, facts, action=action)
    with _locked_and_audited(target, facts, action, now, reporter, break_glass) as run:
        current = migrations.current()
        goal, steps = plan(current)
        result = RunResult(action, current, goal, steps)
        run.details.update(from_revision=current, to_revision=goal, backup_id=None)
        if result.nothing_to_do:
            # Audited only when break-glass was asked for: that request is what is recorded.
            run.outcome, run.audited = "nothing to do", bool(break_glass)
            run.details["duration_seconds"] = 0.0
            return result
        _check_plan(target, facts, migrations, result, now, reporter, break_glass, confirm)
        # Asked again just before the change commits (alembic/env.py): a lock lost meanwhile
        # means another run may be changing the database too.
        migrations.config.attributes["before_commit"] = run.lock.check
        run.audited = True
        if before_backup is not None:
            run.details.update(before_backup(result) or {})
        result.backup = backup_before_change(
            target, facts, now=now, revision=current, reporter=reporter,
            reason=f"before {action} {current or 'base'} -> {goal or 'base'}")
        run.details["backup_id"] = result.backup.id if result.backup else None
        if result.backup and target.settings.production and facts.at_rest is None:
            run.details.update(encryption="none", encryption_policy="optional")
        run.lock.check()
        _change(step, target, migrations, result)
        _checked(target, migrations, result)
    return result


def _check_plan(target, facts: RunFacts, migrations: Migrations, result: RunResult,
                now: datetime, reporter: Reporter, break_glass: str | None, confirm) -> None:
    """The guards on what the run would do, before its backup."""
    verb = "pending" if result.action == "migrate" else "to undo"
    reporter.info(f"{len(result.steps)} {verb}: " + ", ".join(map(str, result.steps)))
    settings = target.settings
    review_pending(settings, result.steps, action=result.action, break_glass=break_glass,
                   reporter=reporter)
    if confirm is not None:
        confirm(result.steps)
    if result.action == "migrate":
        check_staging_first(settings, result.target, migrations, facts)
    if settings.production and facts.database.exists:
        check_fit(settings, facts, result.steps, now=now, break_glass=break_glass,
                  reporter=reporter)


def upgrade_sql(target, revision: str = "head") -> str:
    """The SQL of exactly the pending range, from the database's current revision."""
    migrations = Migrations(target)
    goal = migrations.resolve(revision)
    current = migrations.current()
    if not migrations.pending(current, goal):
        return f"-- Nothing pending: the database is at {current or 'base'}."
    return migrations.upgrade_sql(current, goal)


def _change(step, target, migrations: Migrations, result: RunResult) -> None:
    try:
        step(result.target)
    except MigrationFailed as exc:
        raise MigrationFailed(f"{exc}. {_after_failure(target, migrations, result)}") from exc


def _after_failure(target, migrations: Migrations, result: RunResult) -> str:
    """What to do after a change that failed. A restore throws away every write made since
    the backup, so it is advised only where the failure may have left something changed."""
    try:
        now = migrations.current()
    except OpsError:  # cannot tell: the backup is what is sure
        return restore_hint(target, result.backup)
    if now != result.before or not rolled_back_whole(target, result.steps):
        return restore_hint(target, result.backup)
    kept = f" (backup {result.backup.id} was taken before it)" if result.backup else ""
    return (f"Its transaction was rolled back, so nothing changed: the database is still at "
            f"{now or 'base'} and needs no restore{kept}")


def rolled_back_whole(target, steps: list[Revision]) -> bool:
    """Whether a failure of `steps` is undone by the rollback of the run's one transaction:
    on PostgreSQL (transactional DDL), unless a revision commits part of itself on its own
    (Alembic's autocommit_block). SQLite commits DDL as it goes."""
    if target.database.kind != "postgresql":
        return False
    return not any("autocommit_block" in Path(step.path).read_text(errors="replace")
                   for step in steps)


def restore_hint(target, backup: BackupManifest | None) -> str:
    if backup is None:
        return "No backup was taken: the database did not exist before this run"
    return (f"Backup {backup.id} was taken before it; restore it with: "
            f"invoke restore --env={target.env} --backup={backup.id}")


def _checked(target, migrations: Migrations, result: RunResult) -> None:
    result.after = migrations.current()
    if result.after != result.target:
        raise MigrationFailed(
            f"after the {result.action} the database is at {result.after or 'base'}, not at "
            f"the target {result.target or 'base'}. {restore_hint(target, result.backup)}")
