"""What a watch costs and how fast it notices: figures the tests must not time.

    python bench/watch_bench.py [--rounds 3] [--rows 60000]

Builds the watch tests' throwaway cluster (tests/clusters.py: initdb as `postgres`,
pg_stat_statements preloaded, a free port), a `users` table of --rows rows with its email index,
and the tests' steady load (one client looking users up by email as fast as it can). Then:
- the sampler's own queries: how long one sample takes (median, p95, max of 30), i.e. the
  watch's own cost per interval, and the load's throughput with a 1 s watch running against
  without;
- time to notice a dropped index: a baseline (10 s), a watch, the index dropped 3 s into it
  from another session; the seconds from the drop to the verdict, per WATCH_INTERVAL (1 s and
  the default 5 s), median of --rounds.
Prints the figures; the cluster is removed at the end. Needs root (runuser).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from clusters import Load, build_cluster  # noqa: E402

USERS = ("CREATE TABLE users (id serial PRIMARY KEY, email varchar(255) NOT NULL, "
         "full_name varchar(255), hashed_password varchar(255) NOT NULL)")
INDEX = "CREATE UNIQUE INDEX ix_users_email ON users (email)"


def target_for(url, store: Path, interval: str):
    from app.ops.target import open_target
    from app.settings import load_settings
    environ = {"APP_ENV": "bench", "POSTGRES_SERVER": "127.0.0.1",
               "POSTGRES_PORT": str(url.port), "POSTGRES_USER": url.username,
               "POSTGRES_PASSWORD": url.password, "POSTGRES_DB": url.database,
               "BACKUP_DIR": str(store), "WATCH_BASELINE": "10s", "WATCH_INTERVAL": interval}
    return open_target(load_settings("bench", environ=environ, root=ROOT))


def sampler_cost(target, load) -> None:
    from app.ops.commands.watch.sampler import PostgresSampler
    sampler = PostgresSampler(target.database.url, None, time.monotonic, 1.0)
    sampler.open()
    try:
        costs = []
        for _ in range(30):
            costs.append(sampler.sample().own_seconds * 1000)
            time.sleep(0.2)
        floor = []   # the same connection's round trip, for scale on a busy machine
        for _ in range(30):
            started = time.monotonic()
            for _ in range(5):
                sampler.conn.exec_driver_sql("SELECT 1").fetchall()
            floor.append((time.monotonic() - started) * 1000)
            time.sleep(0.2)
    finally:
        sampler.close()
    costs.sort()
    print(f"sampler, one sample (5 queries): median {statistics.median(costs):.2f} ms, "
          f"p95 {costs[int(len(costs) * 0.95) - 1]:.2f} ms, max {costs[-1]:.2f} ms; "
          f"5 x SELECT 1 on the same connection: median {statistics.median(floor):.2f} ms")
    print(f"load average: {open('/proc/loadavg').read().split()[0]} ({os.cpu_count()} cores)")
    without = throughput(load, 10)
    stop = threading.Event()
    thread = threading.Thread(target=watch_every_second, args=(target, stop), daemon=True)
    thread.start()
    with_watch = throughput(load, 10)
    stop.set()
    thread.join()
    print(f"load throughput: {without:.0f} lookups/s without a watch, {with_watch:.0f} with a "
          f"1 s watch ({(with_watch / without - 1) * 100:+.1f}%; noise included)")


def throughput(load, seconds: float) -> float:
    before, started = load.queries, time.monotonic()
    time.sleep(seconds)
    return (load.queries - before) / (time.monotonic() - started)


def watch_every_second(target, stop) -> None:
    from app.ops.commands.watch.sampler import PostgresSampler
    sampler = PostgresSampler(target.database.url, None, time.monotonic, 1.0)
    sampler.open()
    try:
        while not stop.wait(1.0):
            sampler.sample()
    finally:
        sampler.close()


def time_to_notice(target, cluster, database: str) -> float:
    from app.ops.commands.watch.config import WatchConfig
    from app.ops.commands.watch.session import take_baseline, watch

    config = WatchConfig.from_settings(target.settings)
    now = datetime.now(timezone.utc)
    base = take_baseline(target, config, now=now, clock=time.monotonic, sleep=time.sleep)
    dropped = {}

    def drop():
        time.sleep(3)
        cluster.admin_sql("DROP INDEX ix_users_email", database=database)
        dropped["at"] = time.monotonic()

    threading.Thread(target=drop, daemon=True).start()
    outcome = watch(target, config, base, duration=120, now=now, clock=time.monotonic,
                    sleep=time.sleep)
    noticed = time.monotonic() - dropped["at"]
    assert outcome.verdict == "regression", outcome.as_json()
    cluster.admin_sql(INDEX, database=database)
    return noticed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=60_000)
    args = parser.parse_args()
    cluster = build_cluster("watch-cluster-", statements=True)
    try:
        with cluster.database() as url, tempfile.TemporaryDirectory() as store:
            cluster.admin_sql(USERS, database=url.database)
            cluster.admin_sql(INDEX, database=url.database)
            cluster.admin_sql(f"ALTER TABLE users OWNER TO {url.username}",
                              database=url.database)
            cluster.admin_sql("INSERT INTO users (email, full_name, hashed_password) SELECT "
                              "'user' || n || '@example.org', 'User ' || n, 'x' FROM "
                              f"generate_series(1, {args.rows}) n; ANALYZE users",
                              database=url.database)
            with Load(url, args.rows) as load:
                time.sleep(2)
                sampler_cost(target_for(url, Path(store), "1s"), load)
                for interval in ("1s", "5s"):
                    target = target_for(url, Path(store), interval)
                    times = [time_to_notice(target, cluster, url.database)
                             for _ in range(args.rounds)]
                    print(f"dropped index noticed, WATCH_INTERVAL={interval}: median "
                          f"{statistics.median(times):.1f} s after the drop (rounds: "
                          + ", ".join(f"{t:.1f}" for t in times) + ")")
    finally:
        cluster.remove()


if __name__ == "__main__":
    main()
