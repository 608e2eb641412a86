#!/usr/bin/env python3
"""Benchmark the release-safety tasks against the bare tools they wrap.

Part 1 (PostgreSQL backup), alternating in one process, --rounds N times:
    bare `pg_dump -Fc -f FILE`   |   `invoke backup`   |   `pg_dump -Fc -Z0 | zstd -1` (reference)
  Targets: invoke backup's median time <= 0.40x bare pg_dump -Fc's; its archive no larger than
  pg_dump -Fc's file; the biggest process of invoke's process tree peaks under 200 MiB RSS.

Part 2 (start-up cost, SQLite default in a fresh copy of the project), --status-runs N times:
    `python -m invoke status` (stdout piped)  vs  `python -c "import invoke, sqlalchemy, alembic.command"`
    `python -m invoke --list`                 vs  `python -c "import invoke"`
  Targets: each at most 1.5x its baseline (medians).

Part 3 (restore), on a working copy `bench_restore` of the reference database (created once from
it as a template), alternating in one process, --rounds N times:
    `createdb` + bare `pg_restore -d DB FILE` of a `pg_dump -Fc` file of it, into an empty database
    `invoke restore --yes --disconnect --backup=ID` of one `invoke backup` of it, while an
      application session (a thread of this process) writes a row every 100 ms to the database,
      reconnecting on failure (verify, swap and the safety backup after it included)
    `createdb` + `pg_restore -j2 -d DB FILE` (reference only)
  Targets: time to service (start of `invoke restore` to the application's first write served by
  the restored database) <= 0.80x bare single-job pg_restore (medians of at least 3 rounds); the whole command <= 1.5x; the
  application's downtime (its last write on the old database to its first on the new) <= 2 s;
  acknowledged writes lost (not in the kept old database, or not counted by the safety backup):
  0; the biggest process of invoke's tree peaks under 200 MiB RSS.

Part 4 (S3 and encryption), on the reference database, alternating, --rounds N times:
    `invoke backup` to local disk | the same to S3 (moto's server, a thread of this process, SSE
    AES256) | the same to local disk, age-encrypted (pyrage x25519 key)
  Targets: S3 median time <= 1.3x local's; S3 biggest process < 200 MiB RSS; encrypted median
  time <= 1.10x local's. Needs moto[server], boto3 and pyrage (the project's dev requirements).

Parts 1 and 2 are stdlib only (part 3's application session imports psycopg2, part 4 moto,
boto3 and pyrage). Peak RSS comes from a sampler that walks /proc every --sample-interval seconds and
keeps each process's VmHWM (its own high-water mark, so a short sampling gap loses nothing but
the last moments of a process), cross-checked with wait4()'s ru_maxrss (the largest single
process of the reaped tree, exact).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import backup_part, restore_part, s3_part, startup_part
from benchlib.project import PROJECT_ROOT, copy_project
from benchlib.report import Check, report_checks

PARTS = {1: backup_part.run, 2: startup_part.run, 3: restore_part.run, 4: s3_part.run}
ALL_PARTS = tuple(PARTS)


def parse_parts(text: str) -> list[int]:
    try:
        parts = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--parts takes numbers like 1,3: not {text!r}")
    if not parts or any(p not in ALL_PARTS for p in parts):
        raise argparse.ArgumentTypeError(f"--parts takes some of {ALL_PARTS}: not {text!r}")
    return parts


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=parse_parts, default=list(ALL_PARTS),
                        help="which parts to run, comma-separated: 1 backup, 2 start-up, "
                             "3 restore, 4 S3 and encryption (default: 1,2,3,4)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of parts 1, 3 and 4 (3)")
    parser.add_argument("--skip-backup", action="store_true",
                        help="only the status/--list start-up part (same as --parts 2)")
    parser.add_argument("--database", default="bench_ref",
                        help="PostgreSQL database to back up (bench_ref); loaded if missing")
    parser.add_argument("--restore-database", default="bench_restore",
                        help="part 3's working copy of --database, created and dropped by the "
                             "benchmark (bench_restore; the bare runs use bench_bare_restore)")
    parser.add_argument("--status-runs", type=int, default=15,
                        help="alternating runs of each start-up pair (15)")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--reference-sql", type=Path, default=None,
                        help="reference_db.sql to load when the database is missing")
    parser.add_argument("--repo", type=Path, default=PROJECT_ROOT,
                        help="project root to benchmark (default: this checkout)")
    parser.add_argument("--snapshot", action="store_true",
                        help="copy the project's files once at the start and benchmark the copy, "
                             "so edits made meanwhile cannot change the code mid-run")
    parser.add_argument("--sample-interval", type=float, default=0.1,
                        help="seconds between /proc RSS samples during backups and "
                             "restores (0.1)")
    args = parser.parse_args()
    if args.skip_backup:
        args.parts = [2]
    args.repo = args.repo.resolve()
    return args


def main() -> int:
    args = parse_arguments()
    head = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "?"
    print(f"Python {sys.version.split()[0]} ({sys.executable}), repo {args.repo} (HEAD {head}"
          f"{', snapshot of the working tree' if args.snapshot else ''}), "
          f"{os.cpu_count()} CPUs, parts {','.join(map(str, args.parts))}, "
          f"{args.rounds} round(s)", flush=True)
    checks: list[Check] = []
    # Not "mida-private-...": the tools sweep unheld ones from TMPDIR (app/ops/leftovers.py).
    with tempfile.TemporaryDirectory(prefix="bench-mida-") as tmpdir:
        tmp = Path(tmpdir)
        if args.snapshot:
            args.repo = copy_project(args.repo, tmp / "snapshot")
        for number in args.parts:
            checks += PARTS[number](args, tmp)
    return report_checks(checks)


if __name__ == "__main__":
    sys.exit(main())
