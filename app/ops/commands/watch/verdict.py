"""The comparison: a baseline, the window of samples since a few intervals ago, and the rules
that call a signal a regression. Pure functions on facts (no connection, no clock), so each rule
is tested with figures written by hand.

A rate signal (latency, sequential scans, rollbacks) must regress in two evaluations in a row
before it counts (`Confirmation`): one slow interval, a stats flush that lands late, is not a
verdict. A lock wait and the health URL already carry their own time (WATCH_LOCK_WAIT,
WATCH_HEALTH_FAILURES in a row) and count at once.
"""
from __future__ import annotations

from dataclasses import dataclass

from app.ops.commands.watch.baseline import Baseline
from app.ops.commands.watch.facts import Sample, shorten
from app.ops.commands.watch.sampler import (DEADLOCKS, HEALTH, LOCK_WAITS, REPLICA_LAG, ROLLBACKS,
                                   SEQ_SCANS, STATEMENTS)

SEQ_FACTOR, SEQ_FLOOR = 10.0, 10_000.0        # x baseline, and rows/s more than it
ROLLBACK_FACTOR, ROLLBACK_FLOOR = 10.0, 1.0   # x baseline, and rollbacks/s more than it
MIN_WINDOW_CALLS = 5                          # a statement compared must run this often now
WINDOW_INTERVALS = 3                          # "now" is the rate over the last 3 intervals
CONFIRM = {STATEMENTS: 2, SEQ_SCANS: 2, ROLLBACKS: 2, DEADLOCKS: 1, LOCK_WAITS: 1,
           REPLICA_LAG: 2, HEALTH: 1}
ORDER = (STATEMENTS, SEQ_SCANS, ROLLBACKS, DEADLOCKS, LOCK_WAITS, REPLICA_LAG, HEALTH)


@dataclass(frozen=True)
class Limits:
    latency_factor: float
    latency_min: float     # seconds
    lock_wait: float
    replica_lag: float
    health_failures: int

    @classmethod
    def of(cls, config) -> "Limits":
        return cls(config.latency_factor, config.latency_min, config.lock_wait,
                   config.replica_lag, config.health_failures)


@dataclass
class SignalState:
    name: str
    state: str          # ok | regression | unavailable
    baseline: str
    now: str
    detail: str
    subject: str = ""   # the table or statement, so that confirmation follows the same one

    def as_json(self) -> dict:
        return {"name": self.name, "state": self.state, "baseline": self.baseline,
                "now": self.now, "detail": self.detail}


def compare(baseline: Baseline, first: Sample, last: Sample, health_streak: int,
            limits: Limits) -> list[SignalState]:
    """Every signal's state now: the rates between `first` and `last`, the lock waits and
    replica lag of `last`, and the health URL's failures in a row."""
    span = max(last.at - first.at, 1e-9)
    return [*_latency(baseline, first, last, limits), *_seq_scans(baseline, first, last, span),
            _rollbacks(baseline, first, last, span), _deadlocks(baseline, first, last, span),
            _lock_waits(baseline, last, limits), _replica_lag(baseline, last, limits),
            _health(baseline, last, health_streak, limits)]


def _unavailable(name: str, baseline: Baseline, last: Sample) -> SignalState:
    reason = (last.unreadable.get(name) or baseline.unreadable.get(name)
              or "not read in the baseline")
    return SignalState(name, "unavailable", "-", "-", reason)


def _latency(baseline: Baseline, first: Sample, last: Sample, limits: Limits):
    if baseline.statements is None or first.statements is None or last.statements is None:
        return [_unavailable(STATEMENTS, baseline, last)]
    found, worst = [], None
    for statement in baseline.statements:
        calls1, total1 = last.statements.get(statement["key"], (0, 0.0))
        calls0, total0 = first.statements.get(statement["key"], (calls1, total1))
        calls = calls1 - calls0
        if calls < MIN_WINDOW_CALLS:
            continue
        base, now = statement["mean_ms"], (total1 - total0) / calls
        ratio = now / base if base > 0 else float("inf")
        state = SignalState(STATEMENTS, "ok", f"{base:.2f} ms", f"{now:.2f} ms",
                            f"{shorten(statement['text'], 60)}: {ratio:.1f}x the baseline's "
                            f"mean time per call ({calls} calls)", statement["key"])
        if ratio >= limits.latency_factor and (now - base) / 1000 >= limits.latency_min:
            state.state = "regression"
            state.detail = (f"statement {statement['text']} takes {now:.2f} ms per call, "
                            f"{ratio:.1f}x its baseline {base:.2f} ms")
            found.append(state)
        elif worst is None or ratio > worst[0]:
            worst = (ratio, state)
    if found:
        return found
    if worst is None:
        tracked = len(baseline.statements)
        return [SignalState(STATEMENTS, "ok", f"{tracked} statement(s)", "-",
                            "none of the baseline's main statements ran often enough to compare"
                            if tracked else "no statement ran often enough in the baseline")]
    return [worst[1]]


def _seq_scans(baseline: Baseline, first: Sample, last: Sample, span: float):
    if baseline.seq_rows_per_s is None or first.seq_rows is None or last.seq_rows is None:
        return [_unavailable(SEQ_SCANS, baseline, last)]
    found, worst = [], (0.0, "", 0.0)
    for table, rows in last.seq_rows.items():
        rate = (rows - first.seq_rows.get(table, rows)) / span
        base = baseline.seq_rows_per_s.get(table, 0.0)
        if rate >= SEQ_FACTOR * base and rate - base >= SEQ_FLOOR:
            found.append(SignalState(
                SEQ_SCANS, "regression", f"{base:.0f} rows/s", f"{rate:.0f} rows/s",
                f"table {table} is read by sequential scans at {rate:.0f} rows/s against "
                f"{base:.0f} in the baseline: an index may be missing", table))
        elif rate > worst[0]:
            worst = (rate, table, base)
    if found:
        return found
    rate, table, base = worst
    if not table:
        return [SignalState(SEQ_SCANS, "ok", "-", "0 rows/s", "no table read by sequential "
                            "scans")]
    return [SignalState(SEQ_SCANS, "ok", f"{base:.0f} rows/s", f"{rate:.0f} rows/s",
                        f"most read by sequential scans: {table}", table)]


def _rate(value0, value1, span: float) -> float:
    return (value1 - value0) / span


def _rollbacks(baseline: Baseline, first: Sample, last: Sample, span: float) -> SignalState:
    if baseline.rollbacks_per_s is None or first.rollbacks is None or last.rollbacks is None:
        return _unavailable(ROLLBACKS, baseline, last)
    base, now = baseline.rollbacks_per_s, _rate(first.rollbacks, last.rollbacks, span)
    state = SignalState(ROLLBACKS, "ok", f"{base:.2f}/s", f"{now:.2f}/s",
                        "rolled-back transactions in the database")
    if now >= ROLLBACK_FACTOR * base and now - base >= ROLLBACK_FLOOR:
        state.state = "regression"
        state.detail = (f"{now:.2f} transactions/s roll back against {base:.2f}/s in the "
                        "baseline: the application's statements may be failing")
    return state


def _deadlocks(baseline: Baseline, first: Sample, last: Sample, span: float) -> SignalState:
    if baseline.deadlocks_per_s is None or first.deadlocks is None or last.deadlocks is None:
        return _unavailable(DEADLOCKS, baseline, last)
    base, count = baseline.deadlocks_per_s, last.deadlocks - first.deadlocks
    now = count / span
    state = SignalState(DEADLOCKS, "ok", f"{base:.2f}/s", f"{now:.2f}/s", "deadlocks detected")
    if count > 0 and now >= ROLLBACK_FACTOR * base:
        state.state = "regression"
        state.detail = f"{count} deadlock(s) in the last {span:.0f} s (baseline {base:.2f}/s)"
    return state


def _lock_waits(baseline: Baseline, last: Sample, limits: Limits) -> SignalState:
    if last.lock_waits is None:
        return _unavailable(LOCK_WAITS, baseline, last)
    long = sorted((w for w in last.lock_waits if w.seconds > limits.lock_wait),
                  key=lambda w: -w.seconds)
    base = "-" if baseline.lock_waits is None else f"{baseline.lock_waits} waiting"
    if not long:
        return SignalState(LOCK_WAITS, "ok", base, f"{len(last.lock_waits)} waiting",
                           f"no session waits on a lock longer than {limits.lock_wait:g} s")
    top = long[0]
    on = f" on {top.relation}" if top.relation else ""
    blocker = (f"blocked by pid {top.blocker_pid} running: {top.blocker_query}"
               if top.blocker_pid else "the blocking session is not visible")
    return SignalState(LOCK_WAITS, "regression", base, f"{len(long)} waiting",
                       f"{len(long)} session(s) waiting on a lock{on} for more than "
                       f"{limits.lock_wait:g} s (longest {top.seconds:.0f} s, pid {top.pid}: "
                       f"{top.query}), {blocker}", "lock")


def _replica_lag(baseline: Baseline, last: Sample, limits: Limits) -> SignalState:
    if last.replica_lag is None:
        return _unavailable(REPLICA_LAG, baseline, last)
    base = "-" if baseline.replica_lag is None else f"{baseline.replica_lag:.1f} s"
    if not last.replica_lag:
        return SignalState(REPLICA_LAG, "ok", base, "-", "no replica connected")
    name, lag = max(last.replica_lag.items(), key=lambda item: item[1])
    state = SignalState(REPLICA_LAG, "ok", base, f"{lag:.1f} s", f"replica {name}", name)
    if lag > limits.replica_lag:
        state.state = "regression"
        state.detail = (f"replica {name} replays {lag:.1f} s behind (limit "
                        f"{limits.replica_lag:g} s)")
    return state


def _health(baseline: Baseline, last: Sample, streak: int, limits: Limits) -> SignalState:
    if last.health_ok is None:
        return SignalState(HEALTH, "unavailable", "-", "-",
                           "no health URL to probe: set WATCH_HEALTH_URL")
    base = ("-" if baseline.health is None else
            f"{baseline.health['failures']}/{baseline.health['checks']} failed")
    if streak >= limits.health_failures:
        return SignalState(HEALTH, "regression", base, last.health_detail,
                           f"the health URL failed {streak} times in a row "
                           f"({last.health_detail})")
    return SignalState(HEALTH, "ok", base, last.health_detail,
                       f"{streak} failure(s) in a row" if streak else "answering")


class Confirmation:
    """Counts each (signal, subject)'s regressions in a row; one not seen often enough yet is
    shown as ok, with a note that it is being watched."""

    def __init__(self):
        self.streaks: dict[tuple[str, str], int] = {}

    def update(self, signals: list[SignalState]) -> list[SignalState]:
        seen = {(s.name, s.subject) for s in signals if s.state == "regression"}
        self.streaks = {key: self.streaks.get(key, 0) + 1 for key in seen}
        for signal in signals:
            key = (signal.name, signal.subject)
            if signal.state == "regression" and self.streaks[key] < CONFIRM[signal.name]:
                signal.state = "ok"
                signal.detail = f"seen once, watching: {signal.detail}"
        return signals


def verdict(signals: list[SignalState]) -> str:
    return "regression" if any(s.state == "regression" for s in signals) else "ok"
