"""What the hash chain costs: one audit event written (audit.record reads the newest events to
find the chain's end) and the whole trail walked (what `invoke report` does), on a local store
holding N events. Prints medians in milliseconds and the load average; no target.

    python bench/audit_chain_bench.py --events 100 1000 5000
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.ops.catalog.audit import record  # noqa: E402
from app.ops.catalog.audit_chain import walk  # noqa: E402
from app.ops.target import open_target  # noqa: E402
from app.settings import load_settings  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def median_ms(run, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'events':>8}  {'record ms':>10}  {'walk ms':>10}  load")
    for n in args.events:
        with tempfile.TemporaryDirectory() as root:
            target = open_target(load_settings("dev", environ={}, root=Path(root)))
            for i in range(n):
                record(target, action="migrate", now=T0 + timedelta(seconds=i),
                       outcome="succeeded")
            at = iter(range(n, n + args.rounds))
            one = median_ms(lambda: record(target, action="stamp", now=T0 + timedelta(
                seconds=next(at)), outcome="succeeded"), args.rounds)
            whole = median_ms(lambda: walk(target.storage), args.rounds)
            print(f"{n:>8}  {one:>10.2f}  {whole:>10.1f}  {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
