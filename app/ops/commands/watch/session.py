"""Running a watch: the baseline before a change, the watch after it, and their records.

`take_baseline` samples for WATCH_BASELINE and stores the summary; `watch` samples every
WATCH_INTERVAL for the duration, compares each window with the baseline, stops at the first
confirmed regression (the point is to say at once), and audits the outcome (`watch`, its
verdict and signals) and keeps it as the env's last verdict. Ctrl-C or SIGTERM ends a watch
cleanly: it is audited as stopped, and the interrupt goes on to the caller. The caller passes
the clock (`now`, `clock`) and `sleep`, so that tests control time.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from app.ops.catalog import audit
from app.ops.catalog import records as stored
from app.ops.errors import ConfigError
from app.ops.commands.watch import baseline as baselines
from app.ops.commands.watch import records
from app.ops.commands.watch.sampler import PostgresSampler, SqliteSampler
from app.ops.commands.watch.undo import undo_commands
from app.ops.commands.watch.verdict import (ORDER, WINDOW_INTERVALS, Confirmation, Limits, SignalState,
                                   compare, verdict)

def check_watchable(target, config) -> None:
    """Before a watched change: refuse (exit 2) a watch that would have nothing to read."""
    if target.database.kind == "sqlite" and not config.health_url:
        raise ConfigError("a watch on SQLite reads only the application's health URL, and "
                          "WATCH_HEALTH_URL is not set: set it, or do not ask for a watch")


def open_sampler(target, config, clock):
    if target.database.kind == "sqlite":
        return SqliteSampler(config.health_url, clock)
    return PostgresSampler(target.database.url, config.health_url, clock, config.interval)


def take_baseline(target, config, *, now: datetime, clock, sleep, progress=None,
                  change: dict | None = None) -> baselines.Baseline:
    """Observe normal traffic for WATCH_BASELINE seconds; store and return the summary.
    `progress(seconds_done)` after each sample."""
    check_watchable(target, config)
    sampler = open_sampler(target, config, clock)
    sampler.open()
    try:
        samples = [sampler.sample()]
        end = samples[0].at + config.baseline
        while (remaining := end - clock()) > 0:
            sleep(min(config.interval, remaining))
            samples.append(sampler.sample())
            if progress:
                progress(samples[-1].at - samples[0].at)
        base = baselines.summarise(target.env, target.database.kind, now, samples,
                                   config.lock_wait, texts=sampler.statement_texts,
                                   notes=sampler.notes)
    finally:
        sampler.close()
    base.change = change
    baselines.store(target.storage, base, now)
    return base


@dataclass
class WatchOutcome:
    env: str
    verdict: str                 # ok | regression | stopped
    baseline: baselines.Baseline
    watched_seconds: float = 0.0
    signals: list[SignalState] = field(default_factory=list)
    undo: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    own_seconds: list[float] = field(default_factory=list)   # the sampler's queries, each time

    @property
    def regressions(self) -> list[SignalState]:
        return [s for s in self.signals if s.state == "regression"]

    def as_json(self) -> dict:
        return {"env": self.env, "verdict": self.verdict, "baseline_at": self.baseline.at,
                "watched_seconds": round(self.watched_seconds, 1),
                "signals": [s.as_json() for s in self.signals],
                "undo": [command for command, _ in self.undo]}


def watch(target, config, base: baselines.Baseline, *, duration: float, now: datetime,
          clock, sleep, on_interval=None, change: dict | None = None,
          reporter=None) -> WatchOutcome:
    """Watch for `duration` seconds against `base`. `on_interval(signals, elapsed, left)`
    after each comparison; what cannot be watched is told once, to `reporter.warn`. `change`
    is the migrate or rollback watched (for the undo; default: the one the baseline names)."""
    check_watchable(target, config)
    change = change if change is not None else change_of(target, base)
    outcome = WatchOutcome(target.env, "ok", base, undo=undo_commands(target.env, change))
    sampler = open_sampler(target, config, clock)
    sampler.open()
    try:
        outcome.notes = _notes(base, sampler, config) + _age_note(base, now)
        for note in outcome.notes if reporter is not None else ():
            reporter.warn(note)
        _loop(outcome, sampler, config, base, duration, clock, sleep, on_interval)
    except KeyboardInterrupt:
        outcome.verdict = "stopped"
        raise
    except Exception:
        outcome.verdict = "failed"
        raise
    finally:
        sampler.close()
        _record(target, outcome, now, change)
    return outcome


def _loop(outcome, sampler, config, base, duration, clock, sleep, on_interval) -> None:
    limits, confirm = Limits.of(config), Confirmation()
    window = deque([sampler.sample()], maxlen=WINDOW_INTERVALS + 1)
    start, streak = window[0].at, 0
    outcome.signals = _pending(base)
    while (left := start + duration - clock()) > 0:
        sleep(min(config.interval, left))
        sample = sampler.sample()
        window.append(sample)
        outcome.own_seconds.append(sample.own_seconds)
        streak = streak + 1 if sample.health_ok is False else 0
        outcome.signals = sorted(confirm.update(compare(base, window[0], sample, streak,
                                                        limits)),
                                 key=lambda s: ORDER.index(s.name))
        outcome.watched_seconds = sample.at - start
        outcome.verdict = verdict(outcome.signals)
        if on_interval:
            on_interval(outcome.signals, outcome.watched_seconds,
                        max(0.0, duration - outcome.watched_seconds))
        if outcome.verdict == "regression":
            return


def _pending(base) -> list[SignalState]:
    return [SignalState(name, "ok", "-", "-", "first sample taken") for name in ORDER]


def _notes(base, sampler, config) -> list[str]:
    """What the user is told once: what cannot be read, and why."""
    notes = list(dict.fromkeys([*sampler.notes, *base.notes]))
    notes += [f"{name} is not watched: {why}" for name, why in sorted(base.unreadable.items())
              if why not in notes and not any(why in n for n in notes)]
    if not config.health_url:
        notes.append("health_url is not watched: set WATCH_HEALTH_URL to the application's "
                     "health endpoint")
    return notes


def _age_note(base, now: datetime) -> list[str]:
    """A baseline from another day compares with other traffic: say so (a false alarm)."""
    taken = datetime.fromisoformat(base.at.replace("Z", "+00:00"))
    days = (now - taken).total_seconds() / 86400
    if days < 1:
        return []
    return [f"the baseline is {days:.0f} day(s) old ({base.at}): traffic then may not be "
            "traffic now; record a fresh one with `invoke watch --baseline`"]


def change_of(target, base: baselines.Baseline) -> dict | None:
    """The migrate or rollback this baseline was taken for, from the audit trail (its event
    names the baseline), or None: a baseline on demand, for a deploy with no migrate."""
    if not base.change or not base.name:
        return None
    # Newest first, and only as far as needed (one that cannot be read is no dict: passed over).
    for _, event in stored.each(target.storage, audit.AUDIT_SUFFIX):
        if isinstance(event, dict) and event.get("action") in ("migrate", "rollback"):
            return event if event.get("watch_baseline") == base.name else None
    return None


def _record(target, outcome: WatchOutcome, now: datetime, change: dict | None) -> None:
    change = change or {}
    details = {"verdict": outcome.verdict, "signals": [s.as_json() for s in outcome.signals],
               "baseline": outcome.baseline.name, "baseline_at": outcome.baseline.at,
               "watched_seconds": round(outcome.watched_seconds, 1),
               "from_revision": change.get("from_revision"),
               "to_revision": change.get("to_revision"), "backup_id": change.get("backup_id"),
               "undo": [command for command, _ in outcome.undo]}
    event = audit.record(target, action="watch", now=now, outcome=outcome.verdict, **details)
    records.store_verdict(target.storage, event, now)
