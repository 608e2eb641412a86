"""`invoke report`: the evidence an auditor asks of the backup and recovery plan, over a period.

It reads only: the backup manifests, the drill records (app/ops/catalog/drill_records.py) and the
audit trail with its chain (app/ops/catalog/audit_chain.py); nothing is written to the store or the
database. The period ends now and starts `--since` ago (default 90 days), but never before the
env's first backup or audit event: a history that began last week is judged from last week.

Each target is met or missed with the rows that decide it:
- rpo: the longest stretch of the period without a verified backup whose artifact is present
  (the stretch up to now included), against RPO_TARGET;
- rto: the slowest successful drill of the period (to restored data, for a real restore to
  service), against RTO_TARGET; no successful drill is no evidence, so missed;
- drill_age: the newest successful drill's age, against DRILL_MAX_AGE.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from app.ops.catalog.audit_chain import walk
from app.ops.catalog.backups import BackupManifest, list_backups
from app.ops.catalog.drill_records import DrillRecord, newest_successful, read_drills
from app.ops.errors import ConfigError
from app.ops.catalog.manifest import iso
from app.ops.commands.status import backup_item
from app.ops.methods.registry import method_of
from app.settings import TARGET_UNITS, parse_duration
from app.ops.catalog.audit import read_events

DEFAULT_SINCE = "90d"
CHANGE_ACTIONS = ("migrate", "rollback", "restore", "stamp", "watch", "rekey", "break-glass")


@dataclass
class Stretch:
    """A time without a verified backup: from a backup (or the period's start) to the next
    (or now)."""
    start: datetime
    end: datetime
    after: str | None   # the backup that opens it (None: the period's start)
    before: str | None  # the backup that closes it (None: now)

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def period_start(since: str | None, now: datetime) -> datetime:
    """`--since`: a duration back from now (90d, 12h) or a date (2026-01-31, or ISO 8601)."""
    text = (since or DEFAULT_SINCE).strip()
    seconds = parse_duration(text, TARGET_UNITS)
    if seconds:
        return now - timedelta(seconds=seconds)
    try:
        start = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since '{text}' is neither a duration nor a date: use e.g. 90d, "
                          "12h or 2026-01-31") from None
    start = start if start.tzinfo else start.replace(tzinfo=timezone.utc)
    if start > now:
        raise ConfigError(f"--since '{text}' is in the future: give a date before now")
    return start


def encryption_of(manifest: BackupManifest, settings) -> str:
    """age (client side, recorded in the manifest), pgbackrest (a restore point: the
    repository's own cipher), sse (an S3 object that S3 reported encrypting when it was
    stored, as its manifest records), or none. A manifest from before that record: sse while
    BACKUP_S3_SSE is set now, the only evidence there is (docs/auditor.md says so)."""
    at_rest = method_of(manifest).encryption_of(manifest)
    if at_rest != "none":
        return at_rest
    if manifest.sse is not None:
        return "none" if manifest.sse == "none" else "sse"
    if manifest.location.startswith("s3://") and settings.BACKUP_S3_SSE:
        return "sse"
    return "none"


def rpo_stretches(backups: list[BackupManifest], start: datetime,
                  now: datetime) -> list[Stretch]:
    """The stretches between verified backups whose artifact is present, over the period. The
    first begins at the newest such backup before the period, if any: at the period's start
    the data was already that old."""
    good = sorted((m for m in backups if m.verified and m.intact and m.created <= now),
                  key=lambda m: m.created)
    prior = [m for m in good if m.created <= start]
    at, after = (prior[-1].created, prior[-1].id) if prior else (start, None)
    stretches = []
    for m in good[len(prior):]:
        stretches.append(Stretch(at, m.created, after, m.id))
        at, after = m.created, m.id
    stretches.append(Stretch(at, now, after, None))
    return stretches


def _target(name: str, target: float, achieved: float | None, evidence: str) -> dict:
    return {"name": name, "target_seconds": target, "achieved_seconds": achieved,
            "met": achieved is not None and achieved <= target, "evidence": evidence}


def _rpo(settings, stretches: list[Stretch]) -> dict:
    longest = max(stretches, key=lambda s: s.seconds)
    evidence = (f"longest stretch without a verified backup: {iso(longest.start)} "
                f"({'backup ' + longest.after if longest.after else 'start of the period'}) to "
                f"{iso(longest.end)} "
                f"({'backup ' + longest.before if longest.before else 'now'})")
    return _target("rpo", settings.RPO_TARGET.seconds, round(longest.seconds, 3),
                   evidence)


def _rto(settings, drills: list[DrillRecord]) -> dict:
    done = [d for d in drills if d.succeeded]
    target = settings.RTO_TARGET.seconds
    if not done:
        return _target("rto", target, None, "no successful restore drill in the period: run "
                       "`invoke verify --restore-test`")
    slowest = max(done, key=lambda d: d.rto_seconds)
    return _target("rto", target, round(slowest.rto_seconds, 3),
                   f"slowest of {len(done)} successful drill(s): {slowest.kind} of backup "
                   f"{slowest.backup} at {slowest.at}, {slowest.rto_seconds:.3f} s")


def _drill_age(settings, newest: DrillRecord | None, now: datetime) -> dict:
    target = settings.DRILL_MAX_AGE.seconds
    if newest is None:
        return _target("drill_age", target, None, "no successful restore drill on record")
    age = max(0.0, (now - newest.started).total_seconds())
    return _target("drill_age", target, round(age, 3),
                   f"newest successful drill: {newest.kind} of backup {newest.backup} at "
                   f"{newest.at}")


def _event_time(event: dict) -> datetime | None:
    try:
        return datetime.fromisoformat(str(event.get("at")).replace("Z", "+00:00"))
    except ValueError:
        return None


def _first_event(backups, events) -> datetime | None:
    times = [m.created for m in backups] + [t for t in map(_event_time, events) if t]
    return min(times, default=None)


def clipped_start(start: datetime, first: datetime | None, now: datetime) -> datetime:
    """The period's start, never before the env's first backup or audit event."""
    return min(now, max(start, first)) if first else now


def longest_stretch(backups: list[BackupManifest], first: datetime | None,
                    now: datetime) -> Stretch:
    """The RPO achieved over the default period, as `invoke check` exports it."""
    start = clipped_start(period_start(None, now), first, now)
    return max(rpo_stretches(backups, start, now), key=lambda s: s.seconds)


def is_change(event: dict) -> bool:
    return event.get("action") in CHANGE_ACTIONS or bool(event.get("break_glass"))


def build_report(target, *, now: datetime, since: str | None = None, warn=None) -> dict:
    """The report as `invoke report --json` prints it."""
    settings = target.settings
    start = period_start(since, now)
    backups = list_backups(target, warn)
    events = read_events(target)
    start = clipped_start(start, _first_event(backups, events), now)
    drills = read_drills(target.storage)
    in_period = [d for d in drills if start <= d.started <= now]
    stretches = rpo_stretches(backups, start, now)
    targets = [_rpo(settings, stretches), _rto(settings, in_period),
               _drill_age(settings, newest_successful(drills), now)]
    return {
        "env": target.env, "period": {"from": iso(start), "to": iso(now)},
        "targets": targets,
        "backups": [{**backup_item(m), "encryption": encryption_of(m, settings),
                     "verify_error": m.verify_error}
                    for m in backups if start <= m.created <= now],
        "drills": [{**d.as_json(), "rto_seconds": d.rto_seconds} for d in in_period],
        "changes": [e for e in events if is_change(e)
                    and (t := _event_time(e)) is not None and start <= t <= now],
        "trail": walk(target.storage).as_json(),
        "rpo_stretches": stretch_items(stretches),  # the backup-age chart is drawn from these
    }


def stretch_items(stretches: list[Stretch]) -> list[dict]:
    return [{"from": iso(s.start), "to": iso(s.end), "after": s.after, "before": s.before,
             "seconds": round(s.seconds, 3)} for s in stretches]
