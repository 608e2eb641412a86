"""`invoke check`: an environment's health in the monitoring-plugins convention, and the metrics
node_exporter's textfile collector reads.

`gather` reads the facts once, from the same sources `invoke status` reads (Alembic's scripts,
one connection to the database, the backup store, the audit trail); `evaluate` turns them into
checks, each OK, WARNING, CRITICAL or UNKNOWN with a short reason. Nothing here writes to the
database or the store: no connection creates an SQLite file, no manifest or audit event is
written. A problem the check finds is a check's state; only the check's own settings (an
unknown env, a malformed CHECK_* duration) raise ConfigError, which the caller reports UNKNOWN.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum

from app.ops.catalog import records
from app.ops.catalog.audit import AUDIT_SUFFIX
from app.ops.catalog.backups import BackupManifest, list_backups
from app.ops.catalog.dates import CLOCK_SKEW, is_future
from app.ops.catalog.drill_records import newest_successful, read_drills
from app.ops.errors import ConfigError, DatabaseUnreachable, OpsError
from app.ops.leftovers import abandoned
from app.ops.catalog.restore_intent import RestoreIntent, read_intents
from app.ops.commands.status import backup_item
from app.ops.methods.registry import method_of
from app.ops.storage import unaborted_uploads
from app.settings import AGE_UNITS
from app.ops.commands.evidence import longest_stretch
from app.ops.commands.key_health import key_findings
from app.ops.databases.connection import first_line, revision_of
from app.ops.databases.lock import advisory_key
from app.ops.schema.migrations import Migrations

UNIT_SECONDS = AGE_UNITS  # what CHECK_BACKUP_MAX_AGE and CHECK_VERIFY_MAX_AGE accept
AUDITED_RUNS = ("migrate", "rollback", "restore")
FINE_OUTCOMES = {"succeeded", "nothing to do", "ok"}   # "ok": a watch's verdict
WATCH_ACTION = "watch"
FINISHED_BY_ANOTHER_RUN = "completed by run "  # a restore finished by the next run
METRIC_PREFIX = "mida_db_"


class State(IntEnum):
    """The plugin states, valued as their exit codes."""
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# Which state wins when checks disagree: a definite problem over "could not tell".
SEVERITY = {State.OK: 0, State.UNKNOWN: 1, State.WARNING: 2, State.CRITICAL: 3}


def worst(states) -> State:
    return max(states, key=SEVERITY.__getitem__, default=State.OK)


@dataclass
class Check:
    name: str
    state: State
    detail: str

    def as_json(self) -> dict:
        return {"name": self.name, "state": self.state.name, "detail": self.detail}


@dataclass
class Limits:
    backup_max_age: timedelta
    backup_max_age_text: str
    verify_max_age: timedelta | None
    verify_max_age_text: str | None
    drill_max_age: timedelta | None = None  # DRILL_MAX_AGE (app/ops/catalog/drill_records.py)

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        # Not a duration, or zero (a limit nothing could meet): ConfigError, the check's UNKNOWN.
        backup, verify = settings.CHECK_BACKUP_MAX_AGE, settings.CHECK_VERIFY_MAX_AGE
        return cls(timedelta(seconds=backup), backup.text.strip(),
                   timedelta(seconds=verify) if verify else None,
                   verify.text.strip() if verify else None,
                   timedelta(seconds=settings.DRILL_MAX_AGE))


@dataclass
class Facts:
    """What one pass over the environment found. `None` means "could not be read", with the
    reason in the matching `*_error`."""
    env: str
    production: bool
    database: str
    engine: str
    heads: list[str]
    reachable: bool = False
    database_error: str | None = None
    current: str | None = None
    pending: list[str] | None = None
    pending_error: str | None = None
    leftover_databases: list[tuple[str, int]] = field(default_factory=list)  # (name, sessions)
    # (name, abandoned): a backup being written holds its `.partial` under an flock
    partial_files: list[tuple[str, bool]] = field(default_factory=list)
    unaborted_uploads: list[dict] = field(default_factory=list)  # S3 parts still billed
    backups: list[BackupManifest] | None = None
    store_error: str | None = None
    newest_verified: BackupManifest | None = None
    lost: list[BackupManifest] = field(default_factory=list)  # verified, artifact gone
    future: list[BackupManifest] = field(default_factory=list)  # dated later than now
    last_runs: dict[str, dict] | None = None  # action -> newest audit event of that action
    newest_run: dict | None = None
    audit_error: str | None = None
    drills: list | None = None  # DrillRecords, newest first
    drill_error: str | None = None
    first_event_at: datetime | None = None  # the oldest audit event's time, from its name
    # PostgreSQL: the maintenance database the lock and restore connect to, or why not
    maintenance: str | None = None
    maintenance_error: str | None = None
    # restores cut short at their swap (app/ops/catalog/restore_intent.py); a name: an unreadable record
    interrupted_restores: list[RestoreIntent | str] = field(default_factory=list)
    lock_held: bool = False  # PostgreSQL: a migrate, rollback or restore holds the env's lock
    key_warnings: list[str] = field(default_factory=list)  # app/ops/commands/key_health.py
    unknown_keys: list[str] = field(default_factory=list)  # .env keys that are no setting
    # Why the env's role could not restore the newest verified backup (other roles' objects)
    owners_refusal: str | None = None


@dataclass
class HealthReport:
    env: str
    state: State
    summary: str
    checks: list[Check]
    perfdata: str = ""
    facts: Facts | None = None
    now: datetime | None = None

    @property
    def first_line(self) -> str:
        line = f"{self.state.name}: {self.summary}"
        return f"{line} | {self.perfdata}" if self.perfdata else line

    def lines(self) -> list[str]:
        """The plugin output: the status line, then one line per check."""
        return [self.first_line] + [f"{c.state.name} {c.name}: {c.detail}" for c in self.checks]

    def as_json(self) -> dict:
        facts = self.facts
        data = {"status": self.state.name, "summary": self.summary, "env": self.env,
                "checks": [c.as_json() for c in self.checks], "perfdata": self.perfdata}
        if facts is not None:
            data.update({
                "database": facts.database, "production": facts.production,
                "current": facts.current, "heads": facts.heads, "pending": facts.pending,
                "last_backup": next((backup_item(m, self.now) for m in facts.backups or ()
                                     if m not in facts.future), None),
                "last_verified_backup":
                    backup_item(facts.newest_verified) if facts.newest_verified else None,
                "last_runs": facts.last_runs})
        return data


def unknown(env: str, reason: str) -> HealthReport:
    """The report when the check could not run: its own settings are wrong, or a bug."""
    return HealthReport(env, State.UNKNOWN, reason, [])


def run_check(target, now: datetime) -> HealthReport:
    limits = Limits.from_settings(target.settings)
    return evaluate(gather(target, now), limits, now)


# -- one pass over the environment ----------------------------------------------------------


def gather(target, now: datetime | None = None) -> Facts:
    """`now`: a backup dated later than it never counts as the newest (app/ops/catalog/dates.py)."""
    # Settings first: a bad one is the check's UNKNOWN, not a finding.
    settings = target.settings
    target.storage  # opened first too: a bad store setting is the check's UNKNOWN
    migrations = Migrations(target)
    facts = Facts(env=settings.env, production=settings.production,
                  database=target.database.masked_url, engine=target.database.kind,
                  heads=migrations.heads(), unknown_keys=settings.unknown_keys)
    _read_database(facts, target.database)
    if not facts.reachable:
        facts.pending_error = "the database cannot be read"
    elif len(facts.heads) > 1:
        facts.pending_error = "several heads"
    else:
        try:
            head = facts.heads[0] if facts.heads else None
            facts.pending = [r.id for r in migrations.pending(facts.current, head)]
        except ConfigError as exc:  # the database is at a revision the scripts do not lead to
            facts.pending_error = str(exc)
    _read_store(facts, target, now)
    _read_keys(facts, target)
    _read_owners(facts, target.database)
    return facts


def _read_owners(facts: Facts, database) -> None:
    """Could this role restore the newest verified backup, owners and all? (A restore of it
    would refuse before any work: app/ops/databases/postgres/owners.py.)"""
    from sqlalchemy.exc import DBAPIError

    newest = facts.newest_verified
    if not facts.reachable or newest is None or not newest.owners:
        return
    try:
        facts.owners_refusal = database.owners_refusal(newest.owners)
    except (OpsError, DBAPIError):
        pass  # the database check reports a server that cannot be read


def _read_keys(facts: Facts, target) -> None:
    newest = facts.backups[0] if facts.backups else None
    try:
        facts.key_warnings = key_findings(target.settings, target.storage, newest)
    except ConfigError:
        raise  # BACKUP_ENCRYPTION itself is wrong: the check's own settings
    except (OpsError, OSError) as exc:
        facts.key_warnings = [f"the newest backup's age header cannot be read: {exc}"]


def _read_database(facts: Facts, database) -> None:
    """The revision and the databases an interrupted run left (PostgreSQL's), over one
    connection. An SQLite file that is not there is not created to find that out."""
    from sqlalchemy.exc import DBAPIError


    if not database.exists():
        facts.database_error = f"SQLite database {database.url.database} does not exist"
        return
    try:
        with database.connect() as conn:
            facts.current = revision_of(conn)
            facts.reachable = True
            facts.leftover_databases = database.leftover_copies(conn)
            facts.lock_held = _lock_held(conn, database)
        _read_maintenance(facts, database)
    except DatabaseUnreachable as exc:
        facts.database_error = str(exc)
    except OpsError as exc:  # several stamped revisions: reachable, but not sound
        facts.reachable, facts.database_error = False, str(exc)
    except DBAPIError as exc:
        facts.reachable, facts.database_error = False, first_line(exc.orig)


def _read_maintenance(facts: Facts, database) -> None:
    maintenance = database.maintenance  # PostgreSQL's; None for SQLite
    if maintenance is not None:
        try:
            facts.maintenance = maintenance.reachable(database.url)
        except DatabaseUnreachable as exc:
            facts.maintenance_error = str(exc)


def _lock_held(conn, database) -> bool:
    """Whether a run holds the env's lock now: a restore's intent record is then that run's,
    in progress, not one left unfinished."""
    from sqlalchemy import text

    if database.kind != "postgresql":
        return False
    return bool(conn.execute(text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND ((classid::bigint << 32) | objid::bigint) = :k"),
        {"k": advisory_key(database.name)}).scalar())


def _read_store(facts: Facts, target, now: datetime | None) -> None:
    settings, storage = target.settings, target.storage
    try:
        facts.partial_files = sorted((p.name, abandoned(p)) for p in storage.leftovers()
                                     if p.is_file())
    except OSError:
        pass  # an unreadable folder is reported once, by the backup check below
    try:
        facts.unaborted_uploads = unaborted_uploads(settings)
    except (OSError, ValueError):
        pass  # a record that cannot be read is the S3 store's to report, not a check failure
    try:
        facts.backups = [m for m in list_backups(target) if m.engine == facts.engine]
        facts.future = [m for m in facts.backups if is_future(m, now)]
        for manifest in facts.backups:
            if not manifest.verified or manifest in facts.future:
                continue
            # The listing saw the artifact (no stat or HEAD per backup); a restore point's data
            # is in pgBackRest's repository.
            if not method_of(manifest).has_artifact or manifest.stored_size is not None:
                facts.newest_verified = manifest
                break
            facts.lost.append(manifest)
    except (OpsError, OSError) as exc:  # OSError: a local folder this user may not read
        facts.backups, facts.store_error = None, str(exc)
    try:
        facts.interrupted_restores = read_intents(target)
    except (OpsError, OSError):
        pass  # the store's own failure is reported by the backup check
    try:
        facts.last_runs, facts.newest_run = _last_runs(storage)
        facts.first_event_at = _first_event_at(storage)
    except (OpsError, OSError) as exc:
        facts.audit_error = str(exc)
    try:
        facts.drills = read_drills(storage)
    except (OpsError, OSError) as exc:
        facts.drill_error = str(exc)


def _first_event_at(storage) -> datetime | None:
    """An audit event is named by its time (app/ops/catalog/audit.py): the oldest name says it."""
    names = records.names(storage, AUDIT_SUFFIX, newest_first=False)
    return records.written_at(names[0]) if names else None


def _last_runs(storage) -> tuple[dict[str, dict], dict | None]:
    """The newest audit event of each audited action, reading newest first and stopping once
    each is found (on S3 every event is a GET)."""
    found: dict[str, dict] = {}
    newest = None
    for _, event in records.each(storage, AUDIT_SUFFIX, invalid=(ValueError, FileNotFoundError)):
        action = event.get("action") if isinstance(event, dict) else None  # None: UNREADABLE
        if action == WATCH_ACTION and newest is None:
            # Only a watch after every migrate, rollback and restore speaks for the database.
            found.setdefault(action, event)
        if action not in AUDITED_RUNS:
            continue
        newest = newest or event
        found.setdefault(action, event)
        if all(a in found for a in AUDITED_RUNS):
            break
    return found, newest


# -- the checks ---------------------------------------------------------------------------------


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


def age_of(then: datetime, now: datetime) -> timedelta:
    return max(timedelta(0), now - then)  # a clock a little ahead is not a negative age


def span(age: timedelta) -> str:
    """A compact duration: 45s, 12m, 3h5m, 1d3h."""
    seconds = int(age.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m" if minutes else f"{seconds}s"


# -- node_exporter's textfile ---------------------------------------------------------------------


def write_textfile(report: HealthReport, path: str) -> None:
    """The metrics a dashboard and an alert need, labelled by env, written to a temporary file
    and renamed into place (prometheus_client's write_to_textfile), so the collector never
    reads half a file. No verified backup is a timestamp of 0, so one alert on the age covers
    "none at all"."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels=("env",)):
        return Gauge(METRIC_PREFIX + name, doc, labels, registry=registry)

    env = report.env
    gauge("check_state", "state of `invoke check`: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"
          ).labels(env).set(int(report.state))
    facts = report.facts
    if facts is not None:
        if report.now is not None:
            gauge("check_timestamp_seconds", "when `invoke check` last ran").labels(env).set(
                report.now.timestamp())
        gauge("up", "1 if the database could be reached and read").labels(env).set(
            int(facts.reachable))
        if facts.backups is not None:
            newest = facts.newest_verified
            gauge("last_verified_backup_timestamp_seconds",
                  "creation time of the newest verified backup whose artifact exists "
                  "(0: none)").labels(env).set(newest.created.timestamp() if newest else 0)
            gauge("last_verified_backup_size_bytes",
                  "stored size of that backup (0: none)").labels(env).set(
                newest.size if newest else 0)
        if facts.pending is not None:
            gauge("pending_migrations", "revisions an upgrade to head would apply").labels(
                env).set(len(facts.pending))
        gauge("heads", "head revisions in alembic/versions").labels(env).set(len(facts.heads))
        _drill_gauges(gauge, env, facts, report.now)
        if facts.last_runs:
            success = gauge("last_run_success", "1 if the newest audited run of this action "
                            "succeeded (or had nothing to do)", ("env", "action"))
            stamp = gauge("last_run_timestamp_seconds", "when the newest audited run of this "
                          "action started", ("env", "action"))
            for action, event in sorted(facts.last_runs.items()):
                success.labels(env, action).set(int(event.get("outcome") in FINE_OUTCOMES))
                at = _event_time(event)
                if at is not None:
                    stamp.labels(env, action).set(at.timestamp())
    write_to_textfile(path, registry)


def _drill_gauges(gauge, env: str, facts: Facts, now: datetime | None) -> None:
    """The newest successful drill (0: none) and the RPO achieved over the report's default
    period (app/ops/commands/evidence.py), so a dashboard shows what `invoke report` judges."""
    if facts.drills is not None:
        newest = newest_successful(facts.drills)
        gauge("last_drill_timestamp_seconds", "when the newest successful restore drill started "
              "(0: none)").labels(env).set(newest.started.timestamp() if newest else 0)
        gauge("last_drill_seconds", "how long it took to bring the data back (0: none)").labels(
            env).set(newest.rto_seconds if newest else 0)
    if facts.backups is not None and now is not None:
        first = min([m.created for m in facts.backups]
                    + ([facts.first_event_at] if facts.first_event_at else []), default=None)
        gauge("rpo_achieved_seconds", "longest stretch of the report period (90 days) without "
              "a verified backup whose artifact is present").labels(env).set(
            longest_stretch(facts.backups, first, now).seconds)


def textfile_failed(report: HealthReport, path: str, exc: Exception) -> HealthReport:
    """The report once the textfile could not be written: the metrics the operator asked for
    are missing, so the check cannot vouch for them (UNKNOWN unless something is worse)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    check = Check("textfile", State.UNKNOWN, f"the metrics could not be written to {path}: "
                  f"{reason}")
    state = worst([report.state, State.UNKNOWN])
    summary = report.summary
    if state == State.UNKNOWN:
        summary = (f"{summary}; {check.detail}" if report.state == State.UNKNOWN
                   else f"env {report.env}: {check.detail}")
    return HealthReport(report.env, state, summary, report.checks + [check], report.perfdata,
                        report.facts, report.now)


def _event_time(event: dict) -> datetime | None:
    try:
        return datetime.fromisoformat(str(event.get("at")).replace("Z", "+00:00"))
    except ValueError:
        return None
