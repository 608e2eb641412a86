"""The guards a migrate or rollback passes before anything changes, and the facts they read.

- `check_window`: in production (PRODUCTION=true, or an env named prod/production) only inside
  MAINTENANCE_WINDOW; a missing or malformed window refuses too (fail closed). `--break-glass
  REASON` lifts it (and `check_fit`); the caller records the reason in the audit trail.
- `review_pending`: risky operations are warnings; an empty downgrade() refuses in production.
- `confirm_data_loss`: a production rollback that drops tables or columns needs --yes.
- `check_staging_first`: REQUIRE_STAGING_FIRST, in production.
- `check_free_disk`: room in a store on disk for the method's estimate of the backup.
- `check_fit` (with `estimate_run`): in production, will the run end before the window closes?

They are pure policy: each is handed the run's facts (`RunFacts`, app/ops/commands/run_facts.py,
which reads each once) and fetches nothing itself.
"""
from __future__ import annotations

from datetime import datetime

from app.ops.errors import ConfigError, GuardRefused
from app.ops.guards.confirmation import typed_confirmation
from app.ops.report import Reporter
from app.ops.errors import OpsError
from app.ops.guards.window import describe, MaintenanceWindow, WindowError
from app.ops.schema.review import (data_dropped_by_downgrade, downgrade_does_nothing,
                                   risky_operations)
from app.ops.units import human_size


def load_window(settings):
    try:
        return MaintenanceWindow.parse(settings.MAINTENANCE_WINDOW or "",
                                       settings.MAINTENANCE_TIMEZONE)
    except WindowError as exc:
        raise ConfigError(str(exc)) from None


def check_window(settings, facts, *, action: str, now: datetime,
                 break_glass: str | None, reporter: Reporter) -> None:
    if break_glass is not None and not break_glass.strip():
        raise ConfigError("--break-glass needs a reason, e.g. --break-glass 'INC-1234 hotfix'")
    if not settings.production:
        return
    if break_glass:
        reporter.warn(f"BREAK GLASS: {action} on production env '{settings.env}' without the "
                      f"maintenance window check. Reason: {break_glass}. This is audited.")
        return
    if not settings.MAINTENANCE_WINDOW:
        raise GuardRefused(f"{action} on production env '{settings.env}' is refused: no "
                           "MAINTENANCE_WINDOW is configured; set one, or use "
                           "--break-glass REASON in an emergency")

    window = facts.window
    if window.is_open(now):
        close = window.current_close(now)
        reporter.info(f"maintenance window open until {describe(close)}" if close else
                      "maintenance window open")
        return
    next_open = window.next_open(now)
    when = describe(next_open) if next_open else "never (no future opening is configured)"
    raise GuardRefused(f"{action} on production env '{settings.env}' is refused outside the "
                       f"maintenance window: it next opens {when}; use --break-glass REASON "
                       "in an emergency")


def review_pending(settings, steps, *, action: str, break_glass: str | None,
                   reporter: Reporter) -> None:
    """Warn about risky operations; a pending migration whose downgrade() does nothing is
    refused in production (there would be no rollback plan) unless break-glass."""

    if action != "migrate":
        return
    for step in steps:
        for finding in risky_operations(step.path, step.id):
            reporter.warn(str(finding))
    empty = [step.id for step in steps if downgrade_does_nothing(step.path)]
    if not empty:
        return
    message = (f"revision(s) {', '.join(empty)} have a downgrade() that does nothing, so "
               "`invoke rollback` could not undo them")
    if settings.production and not break_glass:
        raise GuardRefused(f"{message}: write the downgrade, or use --break-glass REASON")
    reporter.warn(message)


def confirm_data_loss(settings, steps, *, yes: bool, ask, reporter: Reporter) -> None:
    """A rollback whose downgrades drop tables or columns deletes data (the backup keeps it).
    In production that needs --yes or the env's name typed on a terminal; elsewhere a warning."""
    findings = [f for step in steps for f in data_dropped_by_downgrade(step.path, step.id)]
    if not findings:
        return
    what = "; ".join(map(str, findings))
    if not settings.production or yes:
        reporter.warn(f"this rollback deletes data: {what}")
        return
    typed_confirmation(
        ask, f"This rollback deletes data ({what}). Type the env name ({settings.env}) to go on: ",
        settings.env, action="rollback",
        no_terminal=f"rollback on production env '{settings.env}' deletes data ({what}): "
                    "confirm it on a terminal, or pass --yes; nothing was changed")


def check_staging_first(settings, goal: str | None, migrations, facts) -> None:
    """REQUIRE_STAGING_FIRST=ENV, in production: the goal must be where ENV already is (or
    below it). Fails closed: if ENV cannot be read, production does not go first."""
    staging_env = settings.REQUIRE_STAGING_FIRST
    if not (settings.production and staging_env) or goal is None:
        return

    try:
        reached = facts.revision_of_env(staging_env)
    except OpsError as exc:
        raise GuardRefused(f"REQUIRE_STAGING_FIRST={staging_env}: cannot read {staging_env}'s "
                           f"revision ({exc}); refusing to go first") from None
    behind = reached is None or goal not in {
        s.revision for s in migrations.script.iterate_revisions(reached, "base")}
    if behind:
        raise GuardRefused(f"revision {goal} has not reached env '{staging_env}' yet (it is at "
                           f"{reached or 'base'}): migrate {staging_env} first, test, then "
                           "production")


def check_free_disk(facts, reporter: Reporter) -> None:
    """A backup into a store on disk needs room: the method's estimate (`facts.room_needed`,
    from the database's size and earlier backups) against the store's free bytes."""
    needed, room = facts.room_needed, facts.store_room
    if not needed or room is None:
        return
    folder, free = room
    if free < needed:
        raise GuardRefused(f"not enough free disk for the backup: about {human_size(needed)} "
                           f"needed, {human_size(free)} free at {folder}; free some space or "
                           "prune old backups")


def estimate_run(facts, steps) -> tuple[float | None, str]:
    """Seconds a run will likely take, and how that was worked out: the backup from this env's
    earlier backups' throughput (bytes of database per second), the migrations from the newest
    rehearsal's timings where it has them."""
    from statistics import median

    database_size = facts.database.size
    rates = [m.database_size / m.duration_seconds for m in facts.backups[:10]
             if m.database_size and m.duration_seconds]
    parts, total = [], 0.0
    if database_size and rates:
        backup_seconds = database_size / median(rates)
        total += backup_seconds
        parts.append(f"backup ~{backup_seconds:.0f} s ({database_size / 1e6:.0f} MB at the "
                     f"median {median(rates) / 1e6:.0f} MB/s of {len(rates)} earlier backups)")
    known = {}
    for rehearsal in reversed(facts.rehearsals):  # newest wins
        known.update(rehearsal.upgrade_seconds())
    timed = [s.id for s in steps if s.id in known]
    if timed:
        total += sum(known[r] for r in timed)
        parts.append(f"migrations ~{sum(known[r] for r in timed):.0f} s from rehearsals of "
                     f"{len(timed)} of {len(steps)} revision(s)")
    if not parts:
        return None, "no earlier backups or rehearsals to estimate from"
    return total, "; ".join(parts)


def check_fit(settings, facts, steps, *, now: datetime, break_glass: str | None,
              reporter: Reporter) -> None:
    """In production, refuse a run that would likely not finish before the window closes."""
    if not settings.production or break_glass or not settings.MAINTENANCE_WINDOW:
        return
    from datetime import timedelta


    close = facts.window.current_close(now)
    seconds, how = estimate_run(facts, steps)
    if seconds is None or close is None:
        reporter.info(f"run time estimate: unknown ({how})")
        return
    reporter.info(f"run time estimate: ~{seconds:.0f} s: {how}")
    # A margin: estimates from history are medians, and an overrun is worse than waiting a week.
    if now + timedelta(seconds=seconds * 1.25) > close:
        raise GuardRefused(f"the run would likely not finish before the window closes at "
                           f"{describe(close)}: estimated ~{seconds:.0f} s ({how}); wait for a "
                           "longer window, or use --break-glass REASON")
