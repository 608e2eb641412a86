"""`invoke check`'s checks: each turns the facts into OK, WARNING, CRITICAL or UNKNOWN with a
short reason; `evaluate` makes the report of them all, with its perfdata."""
from __future__ import annotations

from datetime import datetime

from app.ops.catalog.dates import CLOCK_SKEW
from app.ops.catalog.drill_records import newest_successful
from app.ops.catalog.restore_intent import RestoreIntent
from app.ops.commands.health.report import (FINE_OUTCOMES, FINISHED_BY_ANOTHER_RUN, WATCH_ACTION,
                                            Check, Facts, HealthReport, Limits, State, age_of, span,
                                            worst)


def evaluate(facts: Facts, limits: Limits, now: datetime) -> HealthReport:
    checks = [_database(facts), _backup(facts, limits, now), _verification(facts, limits, now),
              _pending(facts), _heads(facts), _leftovers(facts, now), _last_run(facts),
              _clock(facts), _drill(facts, limits, now), _last_watch(facts),
              _interrupted_restore(facts), _keys(facts)]
    if facts.maintenance or facts.maintenance_error:
        checks.insert(1, _maintenance(facts))
    if facts.owners_refusal:  # only then, as for the settings below
        checks.append(Check("restorable", State.WARNING,
                            f"backup {facts.newest_verified.id} could not be restored by this "
                            f"env's role, so a restore of it is refused: {facts.owners_refusal}"))
    if facts.unknown_keys:  # only then: the checks of a sound env are as they always were
        checks.append(Check("settings", State.WARNING, "; ".join(facts.unknown_keys)))
    state = worst(c.state for c in checks)
    if state == State.OK:
        newest = facts.newest_verified
        summary = (f"env {facts.env}: database at {facts.current or 'base'}, newest verified "
                   f"backup {span(age_of(newest.created, now))} old")
    else:
        summary = f"env {facts.env}: " + "; ".join(
            c.detail for c in checks if c.state == state)
    return HealthReport(facts.env, state, summary, checks, _perfdata(facts, limits, now),
                        facts, now)


def _database(facts: Facts) -> Check:
    if facts.reachable:
        return Check("database", State.OK, f"{facts.database} reachable, at "
                     f"{facts.current or 'base (no revision yet)'}")
    return Check("database", State.CRITICAL, f"database unreachable: {facts.database_error}")


def _maintenance(facts: Facts) -> Check:
    if facts.maintenance_error:
        return Check("maintenance_db", State.WARNING, "migrate, rollback and restore cannot "
                     f"run: {facts.maintenance_error}")
    return Check("maintenance_db", State.OK, f"maintenance database {facts.maintenance} "
                 "reachable")


def _backup(facts: Facts, limits: Limits, now: datetime) -> Check:
    if facts.backups is None:
        return Check("backup", State.CRITICAL, f"the backup store cannot be read: "
                     f"{facts.store_error}")
    lost = ""
    if facts.lost:
        lost = (f"; {len(facts.lost)} newer verified backup(s) lost their artifact: "
                + ", ".join(m.id for m in facts.lost))
    newest = facts.newest_verified
    if newest is None:
        return Check("backup", State.CRITICAL, "no verified backup whose artifact exists "
                     f"({len(facts.backups)} backup(s) listed){lost}: take one with "
                     "`invoke backup`")
    age = age_of(newest.created, now)
    detail = f"newest verified backup {newest.id} is {span(age)} old (limit " \
             f"{limits.backup_max_age_text})"
    if age > limits.backup_max_age:
        return Check("backup", State.CRITICAL, detail + lost)
    return Check("backup", State.WARNING if facts.lost else State.OK, detail + lost)


def _verification(facts: Facts, limits: Limits, now: datetime) -> Check:
    newest = next((m for m in facts.backups or () if m not in facts.future), None)
    if newest is None:
        return Check("verification", State.OK, "no backup to verify")
    if not newest.verified:
        return Check("verification", State.WARNING, f"newest backup {newest.id} failed "
                     f"verification: {newest.verify_error or 'no reason recorded'}")
    verified_at = datetime.fromisoformat(newest.verified_at) if newest.verified_at \
        else newest.created
    detail = f"newest backup {newest.id} verified {span(age_of(verified_at, now))} ago"
    if limits.verify_max_age is None:
        return Check("verification", State.OK, detail)
    detail += f" (limit {limits.verify_max_age_text})"
    if age_of(verified_at, now) > limits.verify_max_age:
        return Check("verification", State.WARNING,
                     f"{detail}: run `invoke verify --env={facts.env}`")
    return Check("verification", State.OK, detail)


def _clock(facts: Facts) -> Check:
    """A backup dated later than now: the clock of the host that took it was wrong. It counts
    for nothing here, and a person must look (the clock, and whether it is a real backup)."""
    if not facts.future:
        return Check("clock", State.OK, "no backup dated in the future")
    return Check("clock", State.WARNING, f"{len(facts.future)} backup(s) dated more than "
                 f"{span(CLOCK_SKEW)} in the future, not counted as the newest: "
                 + ", ".join(f"{m.id} ({m.created_at})" for m in facts.future)
                 + "; fix the clock of the host that took them, then verify or delete them")


def _pending(facts: Facts) -> Check:
    if facts.pending is None:
        if facts.reachable and len(facts.heads) == 1:  # at a revision the scripts do not reach
            return Check("pending", State.WARNING, facts.pending_error)
        return Check("pending", State.UNKNOWN, f"pending migrations unknown: "
                     f"{facts.pending_error}")
    if not facts.pending:
        return Check("pending", State.OK, "no pending migrations")
    detail = f"{len(facts.pending)} pending: {', '.join(facts.pending)}"
    if facts.production:
        return Check("pending", State.WARNING, f"{detail} in production: run `invoke migrate "
                     f"--env={facts.env}` in the next window")
    return Check("pending", State.OK, detail + " (not production)")


def _heads(facts: Facts) -> Check:
    if len(facts.heads) > 1:
        return Check("heads", State.WARNING, f"{len(facts.heads)} heads "
                     f"({', '.join(facts.heads)}): join them with `invoke merge`")
    return Check("heads", State.OK, f"one head ({facts.heads[0] if facts.heads else 'none'})")


def _leftovers(facts: Facts, now: datetime) -> Check:
    problems, in_progress = [], []
    for upload in facts.unaborted_uploads:
        problems.append(f"multipart upload {upload['upload_id']} of {upload['location']} could "
                        "not be aborted (its parts are still stored and billed): the next run "
                        "that reaches the endpoint aborts it")
    unfinished = {n for i in facts.interrupted_restores if isinstance(i, RestoreIntent)
                  for n in (i.kept, i.copy)}
    for name, sessions in facts.leftover_databases:
        if name in unfinished:
            continue  # the interrupted_restore check names it: not to be dropped by hand
        if "__pre_restore_" in name:
            problems.append(f"database {name} kept by a restore: drop it with `dropdb {name}` "
                            "once satisfied")
        elif sessions:
            in_progress.append(f"database {name} (in use: a run in progress)")
        else:
            problems.append(f"database {name} left by an interrupted run: the next restore or "
                            f"rehearsal drops it, or `dropdb {name}`")
    for name, left in facts.partial_files:
        if left:
            problems.append(f"file {name} left by an interrupted backup: the next backup "
                            "removes it")
        else:
            in_progress.append(f"file {name} (being written: a backup in progress)")
    if problems:
        return Check("leftovers", State.WARNING, "leftovers of an interrupted run: "
                     + "; ".join(problems + in_progress))
    if in_progress:
        return Check("leftovers", State.OK, "; ".join(in_progress))
    return Check("leftovers", State.OK, "no leftovers of an interrupted run")


def _last_run(facts: Facts) -> Check:
    if facts.last_runs is None:
        return Check("last_run", State.UNKNOWN, f"the audit trail cannot be read: "
                     f"{facts.audit_error}")
    event = facts.newest_run
    if event is None:
        return Check("last_run", State.OK, "no migrate, rollback or restore audited yet")
    detail = f"last {event.get('action')} at {event.get('at', '?')}: {event.get('outcome', '?')}"
    outcome = str(event.get("outcome", ""))
    if outcome not in FINE_OUTCOMES and not outcome.startswith(FINISHED_BY_ANOTHER_RUN):
        return Check("last_run", State.WARNING, detail + " (`invoke audit` has the details)")
    return Check("last_run", State.OK, detail)


def _drill(facts: Facts, limits: Limits, now: datetime) -> Check:
    """In production, a restore drill that did not run is a warning, not only one that failed."""
    if facts.drills is None:
        return Check("drill", State.UNKNOWN, f"the drill records cannot be read: "
                     f"{facts.drill_error}")
    newest = newest_successful(facts.drills)
    state = State.WARNING if facts.production else State.OK
    advice = f": run `invoke verify --restore-test --env={facts.env}`"
    if newest is None:
        return Check("drill", state, "no successful restore drill on record"
                     + (advice if facts.production else " (not production)"))
    age = age_of(newest.started, now)
    detail = (f"newest successful drill ({newest.kind} of backup {newest.backup}) is "
              f"{span(age)} old (limit {span(limits.drill_max_age)})")
    if age > limits.drill_max_age:
        return Check("drill", state, detail + (advice if facts.production
                                               else " (not production)"))
    return Check("drill", State.OK, detail)


def _last_watch(facts: Facts) -> Check:
    event = (facts.last_runs or {}).get(WATCH_ACTION)
    if event is None:
        return Check("last_watch", State.OK, "no watch since the last migrate, rollback or "
                     "restore")
    detail = f"last watch at {event.get('at', '?')}: {event.get('outcome', '?')}"
    if event.get("outcome") == "regression":
        regressed = [s.get("detail", "?") for s in event.get("signals") or ()
                     if s.get("state") == "regression"]
        undo = " or ".join(f"`{u}`" for u in event.get("undo") or ())
        return Check("last_watch", State.WARNING, f"{detail} ({'; '.join(regressed)})"
                     + (f": undo with {undo}" if undo else ""))
    return Check("last_watch", State.OK, detail)


def _interrupted_restore(facts: Facts) -> Check:
    if not facts.interrupted_restores:
        return Check("interrupted_restore", State.OK, "no restore left unfinished")
    if facts.lock_held:
        return Check("interrupted_restore", State.OK, "a restore is in progress (the env's lock "
                     "is held): " + "; ".join(i.describe(cut_short=False) if isinstance(i, RestoreIntent)
                                               else i for i in facts.interrupted_restores))
    found = [(f"the {i.describe()}; the next migrate, rollback, backup or restore of env "
              f"{facts.env} finishes it (do not drop {i.kept})") if isinstance(i, RestoreIntent)
             else f"restore intent record {i} cannot be read" for i in facts.interrupted_restores]
    return Check("interrupted_restore", State.WARNING, "interrupted restore: " + "; ".join(found))


def _keys(facts: Facts) -> Check:
    if facts.key_warnings:
        return Check("encryption", State.WARNING, "; ".join(facts.key_warnings))
    return Check("encryption", State.OK, "keys and encryption policy in order" if facts.production
                 else "not production: keys not checked")


def _perfdata(facts: Facts, limits: Limits, now: datetime) -> str:
    """Performance data as plugins print it: label=value[unit];warn;crit[;min;max]."""
    data = []
    newest = facts.newest_verified
    if newest is not None:
        age = int(age_of(newest.created, now).total_seconds())
        data += [f"backup_age={age}s;;{int(limits.backup_max_age.total_seconds())}",
                 f"backup_size={newest.size}B"]
    if facts.pending is not None:
        data.append(f"pending={len(facts.pending)}")
    data.append(f"heads={len(facts.heads)}")
    return " ".join(data)
