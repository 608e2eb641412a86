"""Drill records: one JSON object in the store per restore-test, rehearsal and real restore,
the evidence `invoke report` and `invoke check` read for the recovery objective (RTO) and for
"when was a restore last tested".

A record holds the kind (`restore-test`, `rehearse`, `restore`), when it started, the backup,
the seconds it took (`seconds`: the whole run; `restore_seconds`: until the data was restored,
for a real restore until it was in service), the outcome and the checks it made. One object per
record, like the audit events, so two runs never overwrite each other's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

from app.ops.catalog import records
from app.ops.catalog.manifest import iso
from app.ops.errors import OpsError

DRILL_SUFFIX = ".drill.json"
KINDS = ("restore-test", "rehearse", "restore")
SUCCEEDED = "succeeded"


@dataclass
class DrillRecord:
    kind: str
    env: str
    at: str
    backup: str | None
    seconds: float
    outcome: str
    checks: list[dict] = field(default_factory=list)  # {"name", "ok", "detail"}
    restore_seconds: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.outcome == SUCCEEDED

    @property
    def rto_seconds(self) -> float:
        """The time it took to bring the data back (a real restore: to service)."""
        return self.restore_seconds if self.restore_seconds is not None else self.seconds

    @property
    def started(self) -> datetime:
        return datetime.fromisoformat(self.at.replace("Z", "+00:00"))

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "DrillRecord":
        if data.get("kind") not in KINDS:
            raise ValueError(f"its kind {data.get('kind')!r} is not a drill")
        record = cls(str(data["kind"]), str(data["env"]), str(data["at"]), data.get("backup"),
                     float(data["seconds"]), str(data["outcome"]), list(data.get("checks") or []),
                     None if data.get("restore_seconds") is None
                     else float(data["restore_seconds"]))
        record.started  # ValueError: not a time
        return record


def check(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


def save(storage, record: DrillRecord, now: datetime) -> None:
    """Store one record. OSError and OpsError reach the caller, who decides whether a record
    that cannot be written fails the run."""
    records.write(storage, now, DRILL_SUFFIX, records.as_bytes(record.as_json(), indent=2),
                  kind=record.kind)


def keep(target, record: DrillRecord, now: datetime, reporter=None) -> None:
    """A drill's record is evidence, but the drill's own outcome is what the user must see: a
    store that cannot take the record (full, say) does not replace it; `reporter` is told."""
    try:
        save(target.storage, record, now)
    except (OpsError, OSError) as exc:
        if reporter is not None:
            reporter.warn(f"the drill record of this {record.kind} ({record.outcome}) could "
                          f"not be written: {exc}")


def new_record(target, kind: str, now: datetime, backup: str | None, seconds: float,
               outcome: str, checks=(), restore_seconds: float | None = None) -> DrillRecord:
    return DrillRecord(kind, target.env, iso(now), backup, round(seconds, 3), outcome,
                       list(checks),
                       None if restore_seconds is None else round(restore_seconds, 3))


def read_drills(storage) -> list[DrillRecord]:
    """Every readable drill record, newest first; one that cannot be read is passed over."""
    out = records.read_all(storage, DRILL_SUFFIX, DrillRecord.from_json, newest_first=False,
                           invalid=(ValueError, OSError, KeyError, TypeError, AttributeError))
    return sorted(out, key=lambda r: r.started, reverse=True)


def newest_successful(drills: list[DrillRecord]) -> DrillRecord | None:
    return next((d for d in drills if d.succeeded), None)
