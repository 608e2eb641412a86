"""`invoke check`'s model: the plugin states, one check's result, the limits it holds the
environment to, the facts one pass found, and the report they make (the plugin's lines and its
JSON), with the small time helpers every check shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum

from app.ops.catalog.backups import BackupManifest
from app.ops.catalog.restore_intent import RestoreIntent
from app.ops.commands.status import backup_item
from app.settings import AGE_UNITS

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



def event_time(event: dict) -> datetime | None:
    try:
        return datetime.fromisoformat(str(event.get("at")).replace("Z", "+00:00"))
    except ValueError:
        return None
