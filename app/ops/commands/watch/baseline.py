"""A baseline: what normal traffic looked like right before a change, summarised from the
samples of WATCH_BASELINE seconds, and kept as one JSON record in the env's backup store
(`*.watch-baseline.json`), beside the audit trail, so that `invoke watch` finds the env's newest
one whatever process took it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from app.ops.catalog import records
from app.ops.commands.watch.facts import Sample

BASELINE_SUFFIX = ".watch-baseline.json"
# The statements that made up most of the baseline's time, and ran often enough to compare.
TOP_SHARE, TOP_COUNT, MIN_BASELINE_CALLS = 0.9, 10, 10


@dataclass
class Baseline:
    env: str
    at: str                          # ISO 8601, UTC: when the baseline started
    seconds: float
    engine: str
    rollbacks_per_s: float | None = None
    deadlocks_per_s: float | None = None
    seq_rows_per_s: dict[str, float] | None = None
    statements: list[dict] | None = None   # [{key, text, calls, mean_ms, share}]
    lock_waits: int | None = None          # most sessions seen waiting past WATCH_LOCK_WAIT
    replica_lag: float | None = None       # the largest lag seen, seconds
    health: dict | None = None             # {"checks", "failures"}
    unreadable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    name: str | None = None                # the record's name in the store, once stored
    change: dict | None = None             # {"action"} when taken for a migrate or rollback

    def record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict) -> "Baseline":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def summarise(env: str, engine: str, at: datetime, samples: list[Sample], lock_wait: float,
              texts=None, notes=()) -> Baseline:
    """The baseline of these samples (the first and the last give the rates; every one counts
    for lock waits, replica lag and the health URL). `texts(keys)` names the statements."""
    first, last = samples[0], samples[-1]
    span = max(last.at - first.at, 1e-9)
    base = Baseline(env=env, at=iso(at), seconds=round(span, 3), engine=engine,
                    notes=list(notes))
    for sample in samples:
        base.unreadable.update(sample.unreadable)
    if first.rollbacks is not None and last.rollbacks is not None:
        base.rollbacks_per_s = (last.rollbacks - first.rollbacks) / span
        base.deadlocks_per_s = (last.deadlocks - first.deadlocks) / span
    if first.seq_rows is not None and last.seq_rows is not None:
        base.seq_rows_per_s = {t: (rows - first.seq_rows.get(t, rows)) / span
                               for t, rows in last.seq_rows.items()}
    if first.statements is not None and last.statements is not None:
        base.statements = top_statements(first.statements, last.statements)
        names = texts([s["key"] for s in base.statements]) if texts else {}
        for statement in base.statements:
            statement["text"] = names.get(statement["key"], f"query {statement['key']}")
    waits = [s.lock_waits for s in samples if s.lock_waits is not None]
    if waits:
        base.lock_waits = max(sum(w.seconds > lock_wait for w in ws) for ws in waits)
    lags = [s.replica_lag for s in samples if s.replica_lag is not None]
    if lags:
        base.replica_lag = max((max(lag.values(), default=0.0) for lag in lags), default=0.0)
    probes = [s.health_ok for s in samples if s.health_ok is not None]
    if probes:
        base.health = {"checks": len(probes), "failures": probes.count(False)}
    for name in list(base.unreadable):   # read in the end after all: not missing
        if _read(base, name):
            del base.unreadable[name]
    return base


def _read(base: Baseline, name: str) -> bool:
    value = {"statement_latency": base.statements, "seq_scan_rows": base.seq_rows_per_s,
             "rollbacks": base.rollbacks_per_s, "deadlocks": base.deadlocks_per_s,
             "lock_waits": base.lock_waits, "replica_lag": base.replica_lag}.get(name)
    return value is not None


def top_statements(before: dict, after: dict) -> list[dict]:
    """The statements that made up TOP_SHARE of the time between two samples (at most
    TOP_COUNT), among those called MIN_BASELINE_CALLS times or more."""
    deltas = []
    for key, (calls, total) in after.items():
        calls0, total0 = before.get(key, (0, 0.0))
        if calls - calls0 >= MIN_BASELINE_CALLS:
            deltas.append((total - total0, calls - calls0, key))
    whole = sum(d[0] for d in deltas) or 1.0
    chosen, covered = [], 0.0
    for total, calls, key in sorted(deltas, reverse=True):
        if len(chosen) == TOP_COUNT or covered >= TOP_SHARE:
            break
        chosen.append({"key": key, "calls": calls, "mean_ms": total / calls,
                       "share": round(total / whole, 3)})
        covered += total / whole
    return chosen


def iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def store(storage, baseline: Baseline, now: datetime) -> str:
    name = records.new_name(now, BASELINE_SUFFIX)
    baseline.name = name
    storage.put_bytes(name, records.as_bytes(baseline.record()))
    return name


def latest(storage) -> Baseline | None:
    """The env's newest readable baseline, or None when none was ever recorded."""
    for name, baseline in records.each(storage, BASELINE_SUFFIX, Baseline.from_record,
                                       invalid=(ValueError, TypeError, OSError)):
        if baseline is not records.UNREADABLE:
            baseline.name = name
            return baseline
    return None
