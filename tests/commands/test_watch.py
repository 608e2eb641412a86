"""The watch's pure parts, with facts written by hand: the WATCH_* settings, literal masking,
the baseline's summary, each rule of the verdict, the confirmation of rate signals, the undo
commands, and the loop itself on a clock the test drives (a sampler of the test's own, passed
in: nothing is patched)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from app.ops.errors import ConfigError
from app.ops.commands.watch import baseline as baselines
from app.ops.commands.watch.baseline import Baseline, summarise, top_statements
from app.ops.commands.watch.config import WatchConfig
from app.ops.commands.watch.facts import LockWait, Sample, mask_literals
from app.ops.commands.watch.session import WatchOutcome, _loop
from app.ops.commands.watch.undo import undo_commands
from app.ops.commands.watch.verdict import Confirmation, Limits, compare, verdict
from app.settings import load_settings

NOW = datetime(2026, 12, 2, 4, 0, tzinfo=timezone.utc)
LIMITS = Limits(latency_factor=2.0, latency_min=0.010, lock_wait=5.0, replica_lag=30.0,
                health_failures=3)
KEY = "10:42"


def config(**values) -> WatchConfig:
    return WatchConfig.from_settings(load_settings("dev", environ=values, root=Path("/nonexistent")))


# -- settings ---------------------------------------------------------------------------------
def test_defaults_are_the_contracts():
    c = config()
    assert (c.after_migrate, c.baseline, c.interval, c.health_url) == (None, 60, 5, None)
    assert (c.latency_factor, c.latency_min, c.health_failures) == (2.0, 0.010, 3)
    assert (c.lock_wait, c.replica_lag) == (5, 30)
    assert c.duration(None) == 600 and c.watch_for(None) is None


def test_watch_after_migrate_and_the_options():
    c = config(WATCH_AFTER_MIGRATE="2m")
    assert c.watch_for(None) == 120 and c.duration(None) == 120
    assert c.watch_for("0") is None and c.watch_for("30s") == 30
    assert config(WATCH_AFTER_MIGRATE="0").watch_for(None) is None
    assert c.duration("90s") == 90


@pytest.mark.parametrize("name,value,words", [
    ("WATCH_INTERVAL", "often", "WATCH_INTERVAL 'often' is not a duration"),
    ("WATCH_BASELINE", "0", "WATCH_BASELINE '0' is not a duration"),
    ("WATCH_BASELINE", "5s", "at least two WATCH_INTERVALs"),
    ("WATCH_LATENCY_FACTOR", "0.5", "WATCH_LATENCY_FACTOR '0.5' is not a number of at least 1"),
    ("WATCH_HEALTH_FAILURES", "2.5", "is not a whole number"),
    ("WATCH_HEALTH_URL", "localhost/health", "is not an http:// or https:// URL"),
    ("WATCH_AFTER_MIGRATE", "later", "(0: no watch)"),
])
def test_a_bad_setting_is_one_sentence_naming_it(name, value, words):
    with pytest.raises(ConfigError, match=".*" + words.replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.").replace("/", "/")):
        config(**{name: value})


def test_bad_options():
    with pytest.raises(ConfigError, match="--for '0' is not a duration"):
        config().duration("0")
    with pytest.raises(ConfigError, match="--watch 'soon'"):
        config().watch_for("soon")


# -- literals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sql,shown", [
    ("UPDATE users SET email = 'ann@example.org' WHERE id = 42",
     "UPDATE users SET email = $? WHERE id = $?"),
    ("SELECT * FROM t2 WHERE note = 'it''s' AND x > 3.5", "SELECT * FROM t2 WHERE note = $? AND x > $?"),
    ("SELECT $$secret$$, $tag$also secret$tag$", "SELECT $?, $?"),
    ("SELECT * FROM users WHERE email = $1", "SELECT * FROM users WHERE email = $1"),
    (None, "?"),
])
def test_literals_never_shown(sql, shown):
    assert mask_literals(sql) == shown


def test_long_queries_are_cut_short():
    assert len(mask_literals("SELECT " + ", ".join(f"col{i}" for i in range(100)))) == 80


# -- the baseline -------------------------------------------------------------------------------
def sample(at, *, rollbacks=0, deadlocks=0, seq=None, statements=None, waits=(), lags=None,
           health=None, unreadable=None) -> Sample:
    return Sample(at=at, rollbacks=rollbacks, deadlocks=deadlocks,
                  seq_rows={"public.users": 0, **(seq or {})},
                  statements=statements if statements is not None else {KEY: (0, 0.0)},
                  lock_waits=list(waits), replica_lag=lags if lags is not None else {},
                  health_ok=health, health_detail="HTTP 200" if health else "HTTP 500",
                  unreadable=dict(unreadable or {}))


def normal_baseline() -> Baseline:
    """60 s of 100 lookups/s at 0.05 ms, 1 rollback/s, no sequential scans."""
    samples = [sample(0), sample(30, rollbacks=30, statements={KEY: (3000, 150.0)}),
               sample(60, rollbacks=60, statements={KEY: (6000, 300.0)})]
    return summarise("prod", "postgresql", NOW, samples, 5.0,
                     texts=lambda keys: {KEY: "SELECT id FROM users WHERE email = $1"})


def test_a_baseline_summarises_rates_and_names_its_main_statements():
    base = normal_baseline()
    assert base.seconds == 60 and base.rollbacks_per_s == 1.0 and base.deadlocks_per_s == 0
    assert base.seq_rows_per_s == {"public.users": 0.0}
    assert base.statements == [{"key": KEY, "calls": 6000, "mean_ms": 0.05, "share": 1.0,
                                "text": "SELECT id FROM users WHERE email = $1"}]
    assert base.at == "2026-12-02T04:00:00Z" and base.unreadable == {}
    assert Baseline.from_record(json.loads(json.dumps(base.record()))) == base


def test_main_statements_are_those_that_made_up_most_of_the_time_and_ran_often():
    before = {"a": (0, 0.0), "b": (0, 0.0), "c": (0, 0.0), "rare": (0, 0.0)}
    after = {"a": (100, 800.0), "b": (100, 150.0), "c": (100, 50.0), "rare": (2, 5000.0)}
    assert [s["key"] for s in top_statements(before, after)] == ["a", "b"]


def test_a_baseline_is_stored_and_the_newest_found(tmp_path):
    from app.ops.storage.local import LocalStorage
    storage = LocalStorage(tmp_path / "store")
    assert baselines.latest(storage) is None
    first = normal_baseline()
    baselines.store(storage, first, NOW)
    second = normal_baseline()
    name = baselines.store(storage, second, NOW.replace(minute=5))
    found = baselines.latest(storage)
    assert found.name == name and found.record() == second.record()


# -- the rules ----------------------------------------------------------------------------------
def states(signals) -> dict[str, str]:
    return {s.name: s.state for s in signals}


def test_steady_traffic_is_ok_everywhere():
    signals = compare(normal_baseline(), sample(0, statements={KEY: (0, 0.0)}),
                      sample(3, rollbacks=3, statements={KEY: (300, 16.0)}, health=True),
                      0, LIMITS)
    assert set(states(signals).values()) == {"ok"}
    assert verdict(signals) == "ok"


def test_a_dropped_index_shows_in_seq_scans_and_latency():
    last = sample(3, seq={"public.users": 3 * 500_000}, statements={KEY: (300, 300 * 25.0)})
    signals = compare(normal_baseline(), sample(0), last, 0, LIMITS)
    bad = [s for s in signals if s.state == "regression"]
    assert [s.name for s in bad] == ["statement_latency", "seq_scan_rows"]
    assert "SELECT id FROM users WHERE email = $1" in bad[0].detail
    assert (bad[0].baseline, bad[0].now) == ("0.05 ms", "25.00 ms")
    assert "table public.users" in bad[1].detail and "index may be missing" in bad[1].detail
    assert bad[1].now == "500000 rows/s"


def test_latency_must_grow_by_the_factor_and_by_the_minimum():
    # 10x slower but only 0.45 ms more: under WATCH_LATENCY_MIN (10 ms)
    slower = sample(3, statements={KEY: (300, 300 * 0.5)})
    assert states(compare(normal_baseline(), sample(0), slower, 0, LIMITS))[
        "statement_latency"] == "ok"
    # too few calls now to compare: not a verdict
    rare = sample(3, statements={KEY: (3, 3 * 100.0)})
    assert states(compare(normal_baseline(), sample(0), rare, 0, LIMITS))[
        "statement_latency"] == "ok"


def test_a_small_table_scanned_more_is_under_the_floor():
    last = sample(3, seq={"public.lookup": 3 * 5_000})
    assert states(compare(normal_baseline(), sample(0, seq={"public.lookup": 0}), last, 0,
                          LIMITS))["seq_scan_rows"] == "ok"


def test_rollbacks_and_deadlocks():
    last = sample(3, rollbacks=3 * 20, deadlocks=1)
    s = states(compare(normal_baseline(), sample(0), last, 0, LIMITS))
    assert s["rollbacks"] == "regression" and s["deadlocks"] == "regression"


def test_a_lock_wait_past_the_limit_names_the_blocker():
    wait = LockWait(11, 7.5, "SELECT id FROM users WHERE email = $?", "users", 12,
                    "ALTER TABLE users ADD COLUMN x int")
    short = LockWait(13, 2.0, "SELECT 1", "users", 12, "ALTER TABLE users ADD COLUMN x int")
    signals = compare(normal_baseline(), sample(0), sample(3, waits=[short]), 0, LIMITS)
    assert states(signals)["lock_waits"] == "ok"
    signals = compare(normal_baseline(), sample(0), sample(3, waits=[short, wait]), 0, LIMITS)
    lock = next(s for s in signals if s.name == "lock_waits")
    assert lock.state == "regression"
    assert "on users" in lock.detail and "pid 12 running: ALTER TABLE users" in lock.detail


def test_replica_lag_and_the_health_url():
    signals = compare(normal_baseline(), sample(0), sample(3, lags={"replica1": 45.0},
                                                          health=False), 2, LIMITS)
    s = states(signals)
    assert s["replica_lag"] == "regression" and s["health_url"] == "ok"
    signals = compare(normal_baseline(), sample(0), sample(3, health=False), 3, LIMITS)
    health = next(x for x in signals if x.name == "health_url")
    assert health.state == "regression" and "3 times in a row (HTTP 500)" in health.detail


def test_an_unreadable_signal_is_unavailable_with_its_reason():
    why = "pg_stat_statements is not installed in database api: ..."
    base = normal_baseline()
    base.statements, base.unreadable = None, {"statement_latency": why}
    last = sample(3)
    last.statements, last.unreadable = None, {"statement_latency": why}
    latency = compare(base, sample(0), last, 0, LIMITS)[0]
    assert (latency.name, latency.state, latency.detail) == ("statement_latency",
                                                             "unavailable", why)


def test_a_rate_regression_counts_only_when_seen_twice_in_a_row():
    confirm = Confirmation()
    base = normal_baseline()
    slow = sample(3, seq={"public.users": 3 * 500_000})
    calm = sample(3)
    assert verdict(confirm.update(compare(base, sample(0), slow, 0, LIMITS))) == "ok"
    assert verdict(confirm.update(compare(base, sample(0), calm, 0, LIMITS))) == "ok"
    assert verdict(confirm.update(compare(base, sample(0), slow, 0, LIMITS))) == "ok"
    assert verdict(confirm.update(compare(base, sample(0), slow, 0, LIMITS))) == "regression"


# -- the undo ---------------------------------------------------------------------------------
def test_undo_of_a_migrate_and_of_a_rollback():
    migrate = {"action": "migrate", "from_revision": "a1", "to_revision": "b2",
               "backup_id": "B1"}
    assert [c for c, _ in undo_commands("prod", migrate)] == [
        "invoke rollback --env=prod --to=a1", "invoke restore --env=prod --backup=B1 --yes"]
    back = {"action": "rollback", "from_revision": "b2", "to_revision": None, "backup_id": None}
    assert [c for c, _ in undo_commands("prod", back)] == ["invoke migrate --env=prod --revision=b2"]
    assert undo_commands("prod", {"action": "migrate", "from_revision": None,
                                  "to_revision": "a1", "backup_id": None})[0][0] == \
        "invoke rollback --env=prod --to=base"
    assert undo_commands("prod", None) == []


# -- the loop ---------------------------------------------------------------------------------
class Clock:
    """Time the test drives: sleep moves it on."""

    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Scripted:
    """A sampler whose samples the test writes: the table read by seq scans from `drop_at`."""

    def __init__(self, clock, drop_at=None):
        self.clock, self.drop_at, self.rows, self.calls = clock, drop_at, 0, 0

    def sample(self) -> Sample:
        if self.drop_at is not None and self.clock() > self.drop_at:
            self.rows += 500_000
        self.calls += 100
        return sample(self.clock(), seq={"public.users": self.rows},
                      statements={KEY: (self.calls, self.calls * 0.05)})


def run_loop(drop_at, duration=60.0):
    clock = Clock()
    outcome = WatchOutcome("prod", "ok", normal_baseline())
    seen = []
    _loop(outcome, Scripted(clock, drop_at), config(WATCH_INTERVAL="5s"), normal_baseline(),
          duration, clock, clock.sleep, lambda signals, done, left: seen.append((done, left)))
    return outcome, seen


def test_the_loop_watches_the_whole_duration_when_all_is_well():
    outcome, seen = run_loop(drop_at=None)
    assert outcome.verdict == "ok" and outcome.watched_seconds == 60
    assert seen[-1] == (60, 0) and len(seen) == 12


def test_the_loop_stops_at_the_first_confirmed_regression():
    outcome, seen = run_loop(drop_at=20)
    assert outcome.verdict == "regression"
    assert outcome.watched_seconds == 30   # bad at 25 and at 30: confirmed, and said at once
    assert [s.name for s in outcome.regressions] == ["seq_scan_rows"]


def test_an_old_baseline_is_named():
    from datetime import timedelta

    from app.ops.commands.watch.session import _age_note
    base = normal_baseline()
    assert _age_note(base, NOW + timedelta(hours=3)) == []
    assert "3 day(s) old" in _age_note(base, NOW + timedelta(days=3))[0]
