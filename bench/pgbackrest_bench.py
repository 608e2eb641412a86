"""BACKUP_METHOD=pgbackrest against dump, on the reference data set, in one throwaway cluster.

    python bench/pgbackrest_bench.py [--rounds 3] [--scale 1] [--reference-sql FILE]

Builds a throwaway PostgreSQL 15 cluster archiving to a local pgBackRest repository (the test
suite's tests/pgbackrest_cluster.py: initdb as `postgres`, fsync=off, a free port), loads
reference_db.sql into `bench_ref` there, stamps it at head and takes a full pgBackRest backup.
Then, alternating, each round timed:
- `invoke backup` with BACKUP_METHOD=dump (pg_dump, zstd, read-back) and with pgbackrest
  (restore point, WAL switch, wait until archived);
- bare `pg_restore` of a `pg_dump -Fc` file into a fresh database, and `invoke restore --yes`
  of the newest restore point (the whole cluster's PITR, including the incremental backup on the
  new timeline).
Targets (issue 11): pgbackrest backup <= 0.3x dump backup; restore of a restore point <= 0.4x bare
pg_restore. Prints medians, ratios and PASS/FAIL; exit 1 if a target fails. The cluster and
everything in it are removed at the end. Needs root (runuser) and Debian's pgbackrest.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE_CANDIDATES = (REPO.parent / "shared" / "bench" / "reference_db.sql",
                        Path("/work/shared/bench/reference_db.sql"))
sys.path.insert(0, str(REPO / "tests"))

from pgbackrest_cluster import PG_BIN, build_cluster, remove_cluster  # noqa: E402


LAST_OUTPUT = {"stdout": ""}


def timed(argv, env=None, cwd=None) -> float:
    started = time.monotonic()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.monotonic() - started
    LAST_OUTPUT["stdout"] = result.stdout
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed ({result.returncode}):\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--reference-sql", type=Path, default=None)
    args = parser.parse_args()
    sql = args.reference_sql or next((p for p in REFERENCE_CANDIDATES if p.is_file()), None)
    if sql is None:
        raise SystemExit("reference_db.sql not found: give --reference-sql")
    cluster = build_cluster()
    work = Path(tempfile.mkdtemp(prefix="pgbackrest-bench-"))
    try:
        return run(args, cluster, sql, work)
    finally:
        remove_cluster(cluster)
        shutil.rmtree(work, ignore_errors=True)


def run(args, cluster, sql: Path, work: Path) -> int:
    started = time.monotonic()
    cluster.psql("CREATE DATABASE bench_ref")
    cluster.run(str(PG_BIN / "psql"), "-X", "-q", "-h", str(cluster.socket_dir), "-p",
                str(cluster.port), "-d", "bench_ref", "-v", f"scale={args.scale}", "-f",
                str(sql), timeout=3600)
    size = cluster.psql("SELECT pg_size_pretty(pg_database_size('bench_ref'))")
    print(f"loaded {sql.name} (scale {args.scale}, {size}) in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    project = work / "project"
    project.mkdir()
    for name in ("app", "alembic"):
        shutil.copytree(REPO / name, project / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("tasks.py", "alembic.ini"):
        shutil.copy2(REPO / name, project / name)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PG", "POSTGRES_", "BACKUP_", "DATABASE_URL", "APP_ENV"))}
    base.update({"APP_ENV": "bench", "POSTGRES_SERVER": "127.0.0.1",
                 "POSTGRES_PORT": str(cluster.port), "POSTGRES_USER": "postgres",
                 "POSTGRES_DB": "bench_ref", "BACKUP_DIR": str(work / "backups"),
                 "PG_BIN_DIR": str(PG_BIN)})
    dump_env = {**base, "BACKUP_METHOD": "dump"}
    pgbr_env = {**base, **cluster.settings}
    invoke = [sys.executable, "-m", "invoke"]
    timed([*invoke, "stamp", "head"], env=dump_env, cwd=project)
    started = time.monotonic()
    cluster.pgbackrest("--type=full", "backup", timeout=3600)
    print(f"full pgBackRest backup: {time.monotonic() - started:.1f} s", flush=True)
    dump_file = work / "bench.pgdump"
    timed([str(PG_BIN / "pg_dump"), "-Fc", "-h", str(cluster.socket_dir), "-p",
           str(cluster.port), "-U", "postgres", "-f", str(dump_file), "bench_ref"])
    results: dict[str, list[float]] = {k: [] for k in ("dump backup", "pgbackrest backup",
                                                        "bare pg_restore", "pgbackrest restore")}
    for round_ in range(args.rounds):
        cluster.psql("CHECKPOINT")
        results["dump backup"].append(timed([*invoke, "backup"], env=dump_env, cwd=project))
        cluster.psql("CHECKPOINT")
        results["pgbackrest backup"].append(timed([*invoke, "backup"], env=pgbr_env,
                                                  cwd=project))
        cluster.psql("CREATE DATABASE bench_bare")
        results["bare pg_restore"].append(timed(
            [str(PG_BIN / "pg_restore"), "-h", str(cluster.socket_dir), "-p",
             str(cluster.port), "-U", "postgres", "-d", "bench_bare", str(dump_file)]))
        cluster.psql("DROP DATABASE bench_bare")
        restore_point = json.loads(subprocess.run(
            [*invoke, "backups", "--json"], env=pgbr_env, cwd=project, capture_output=True,
            text=True, check=True).stdout)
        newest = next(b for b in restore_point if b.get("method") == "pgbackrest")
        results["pgbackrest restore"].append(timed(
            [*invoke, "restore", "--yes", f"--backup={newest['id']}"], env=pgbr_env,
            cwd=project))
        print("  invoke restore " + next((line for line in LAST_OUTPUT["stdout"].splitlines()
                                          if line.startswith("Steps:")), "(no steps line)"))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s"
                                                 for k, v in results.items()), flush=True)
    medians = {k: statistics.median(v) for k, v in results.items()}
    backup_ratio = medians["pgbackrest backup"] / medians["dump backup"]
    restore_ratio = medians["pgbackrest restore"] / medians["bare pg_restore"]
    print(f"median invoke backup: dump {medians['dump backup']:.2f} s, pgbackrest "
          f"{medians['pgbackrest backup']:.2f} s = {backup_ratio:.3f}x (target <= 0.3x): "
          f"{'PASS' if backup_ratio <= 0.3 else 'FAIL'}")
    print(f"median restore: bare pg_restore {medians['bare pg_restore']:.2f} s, invoke restore "
          f"of a restore point {medians['pgbackrest restore']:.2f} s = {restore_ratio:.3f}x "
          f"(target <= 0.4x): {'PASS' if restore_ratio <= 0.4 else 'FAIL'}")
    return 0 if backup_ratio <= 0.3 and restore_ratio <= 0.4 else 1


if __name__ == "__main__":
    sys.exit(main())
