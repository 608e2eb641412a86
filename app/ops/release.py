"""migrate and rollback: guards, then a verified backup, then Alembic, then a check of the result.

Nothing changes a schema unless a backup taken in this run was stored and read back whole. A
database with nothing pending is left alone, without a backup.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from app.ops import audit
from app.ops.backups import BackupManifest, check_label, take_backup
from app.ops.database import (connect, database_exists, database_size, server_version_num,
                              stamped_revision)
from app.ops.errors import BackupFailed, ConfigError, LockLost, MigrationFailed
from app.ops.guards import (check_fit, check_free_disk, check_staging_first, check_window,
                            confirm_data_loss, review_pending)
from app.ops.lock import database_lock
from app.ops.migrations import Migrations, Revision
from app.ops.report import Reporter
from app.settings import engine_kind


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


def migrate(settings, *, revision: str = "head", now: datetime,
            reporter: Reporter = Reporter(), break_glass: str | None = None) -> RunResult:
    migrations = Migrations(settings, reporter=reporter)
    target = migrations.resolve(revision)
    return _guarded_run(settings, migrations, "migrate", now, reporter, break_glass,
                        lambda current: (target, migrations.pending(current, target)),
                        migrations.upgrade)


def rollback(settings, *, to: str = "-1", now: datetime,
             reporter: Reporter = Reporter(), break_glass: str | None = None,
             yes: bool = False, ask=None) -> RunResult:
    migrations = Migrations(settings, reporter=reporter)
    return _guarded_run(settings, migrations, "rollback", now, reporter, break_glass,
                        lambda current: migrations.downgrade_target(current, to),
                        migrations.downgrade,
                        confirm=lambda steps: confirm_data_loss(settings, steps, yes=yes,
                                                                ask=ask, reporter=reporter))


def stamp(settings, *, revision: str, now: datetime, reporter: Reporter = Reporter(),
          break_glass: str | None = None) -> tuple[str | None, str | None]:
    """Record a revision without running it: it changes what every later migrate does, so it
    runs under the same window, lock and audit as migrate. Returns (before, after)."""
    migrations = Migrations(settings, reporter=reporter)
    target = migrations.resolve(revision)
    check_window(settings, action="stamp", now=now, break_glass=break_glass, reporter=reporter)
    with database_lock(settings, action="stamp", now=now) as lock:
        migrations.config.attributes["before_commit"] = lock.check
        before, outcome = migrations.current(), "failed"
        try:
            migrations.stamp(revision)
            outcome = "succeeded"
        except KeyboardInterrupt:
            outcome = "stopped"
            raise
        finally:
            audit.record(settings, action="stamp", now=now, outcome=outcome, reporter=reporter,
                         from_revision=before, to_revision=target, backup_id=None,
                         break_glass=break_glass)
    return before, migrations.current()


def _guarded_run(settings, migrations: Migrations, action: str, now: datetime,
                 reporter: Reporter, break_glass: str | None, plan, step,
                 confirm=None) -> RunResult:
    """Window, then lock, then plan (under the lock, so nobody moves the database meanwhile),
    then backup and the Alembic step; every run that changes something is audited."""
    check_window(settings, action=action, now=now, break_glass=break_glass, reporter=reporter)
    started = time.monotonic()
    with database_lock(settings, action=action, now=now) as lock:
        current = migrations.current()
        target, steps = plan(current)
        result = RunResult(action, current, target, steps)
        if result.nothing_to_do:
            if break_glass:
                audit.record(settings, action=action, now=now, outcome="nothing to do",
                             reporter=reporter,
                             from_revision=current, to_revision=target, backup_id=None,
                             duration_seconds=0.0, break_glass=break_glass)
            return result
        verb = "pending" if action == "migrate" else "to undo"
        reporter.info(f"{len(steps)} {verb}: " + ", ".join(map(str, steps)))
        review_pending(settings, steps, action=action, break_glass=break_glass,
                       reporter=reporter)
        if confirm is not None:
            confirm(steps)
        if action == "migrate":
            check_staging_first(settings, target, migrations)
        if settings.production and database_exists(settings.database_url):
            check_fit(settings, steps, now=now, break_glass=break_glass,
                      database_size=database_facts(settings.database_url)[1], reporter=reporter)
        # Asked again just before the change commits (alembic/env.py): a lock lost meanwhile
        # means another run may be changing the database too.
        migrations.config.attributes["before_commit"] = lock.check
        outcome = "failed"
        try:
            result.backup = backup_before_change(
                settings, now=now, revision=current, reporter=reporter,
                reason=f"before {action} {current or 'base'} -> {target or 'base'}")
            lock.check()
            _change(step, target, settings, result)
            _checked(migrations, result)
            outcome = "succeeded"
        except BackupFailed:
            outcome = "backup failed"
            raise
        except KeyboardInterrupt:
            outcome = "stopped"  # Ctrl-C, SIGTERM or SIGHUP (app/ops/signals.py)
            raise
        except LockLost as exc:
            outcome = "lock lost"
            raise LockLost(f"{action} stopped: {exc}; nothing was changed, the database is "
                           f"still at {current or 'base'}; run it again once no other run holds "
                           "the lock") from None
        finally:
            audit.record(settings, action=action, now=now, outcome=outcome, reporter=reporter,
                         from_revision=current, to_revision=target,
                         backup_id=result.backup.id if result.backup else None,
                         duration_seconds=round(time.monotonic() - started, 3),
                         break_glass=break_glass)
    if lock.lost:
        reporter.warn(f"the lock on env '{settings.env}' was lost while the {action} ran (its "
                      "session was ended); the outcome above is the run's own, but check that "
                      "no other run changed the database meanwhile (`invoke audit`)")
    return result


def upgrade_sql(settings, revision: str = "head") -> str:
    """The SQL of exactly the pending range, from the database's current revision."""
    migrations = Migrations(settings)
    target = migrations.resolve(revision)
    current = migrations.current()
    if not migrations.pending(current, target):
        return f"-- Nothing pending: the database is at {current or 'base'}."
    return migrations.upgrade_sql(current, target)


def backup_on_demand(settings, *, now: datetime, label: str | None,
                     reporter: Reporter = Reporter()) -> BackupManifest:
    check_label(label)
    current = stamped_revision(settings.database_url)
    manifest = backup_before_change(settings, now=now, revision=current, reporter=reporter,
                                    reason="on demand", label=label)
    if manifest is None:
        raise ConfigError(f"database {settings.masked_database_url} does not exist yet: "
                          "there is nothing to back up")
    return manifest


def backup_before_change(settings, *, now: datetime, revision: str | None, reason: str,
                         reporter: Reporter, label: str | None = None) -> BackupManifest | None:
    url = settings.database_url
    if not database_exists(url):
        reporter.info(f"database {settings.masked_database_url} does not exist yet: "
                      "there is nothing to back up")
        return None
    if settings.backup_method == "pgbackrest":
        # A restore point, not a dump: see app/ops/pgbackrest.py.
        from app.ops.pgbackrest import take_restore_point
        return take_restore_point(settings, reason=reason, revision=revision, now=now,
                                  label=label)
    version, size = database_facts(url)
    check_free_disk(settings, size, reporter)
    with reporter.progress("dumping") as dumped:
        with reporter.progress("reading back") as read_back:
            return take_backup(settings, reason=reason, revision=revision, now=now, label=label,
                               server_version_num=version, database_size=size,
                               progress=dumped, readback_progress=read_back)


def database_facts(url) -> tuple[int | None, int | None]:
    """(server_version_num, size in bytes): the server's for PostgreSQL, the file's for SQLite."""
    if engine_kind(url) == "sqlite":
        return None, Path(url.database).stat().st_size
    with connect(url) as conn:
        return server_version_num(conn), database_size(conn)


def _change(step, target, settings, result: RunResult) -> None:
    try:
        step(target)
    except MigrationFailed as exc:
        raise MigrationFailed(f"{exc}. {restore_hint(settings, result.backup)}") from exc


def restore_hint(settings, backup: BackupManifest | None) -> str:
    if backup is None:
        return "No backup was taken: the database did not exist before this run"
    return (f"Backup {backup.id} was taken before it; restore it with: "
            f"invoke restore --env={settings.env} --backup={backup.id}")


def _checked(migrations: Migrations, result: RunResult) -> None:
    result.after = migrations.current()
    if result.after != result.target:
        raise MigrationFailed(
            f"after the {result.action} the database is at {result.after or 'base'}, not at "
            f"the target {result.target or 'base'}. {restore_hint(migrations.settings, result.backup)}")
