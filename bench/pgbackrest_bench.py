"""BACKUP_METHOD=pgbackrest against dump, on the reference data set, in one throwaway cluster.

    python bench/pgbackrest_bench.py [--rounds 3] [--scale 1] [--reference-sql FILE]

Builds a throwaway PostgreSQL 15 cluster archiving to a local pgBackRest repository (the test
suite's tests/clusters.py: initdb as `postgres`, fsync=off, a free port), loads
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
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib.measure import fail_if, measure
from benchlib.project import (PROJECT_ROOT, REFERENCE_SQL, copy_project, invoke,
                              project_environment)
from benchlib.report import median_seconds, median_table, ratio_check, report_checks
from benchlib.rounds import Case, Outcome, run_rounds

sys.path.insert(0, str(PROJECT_ROOT / "tests"))

from clusters import PG_BIN, build_cluster  # noqa: E402

BACKUP_RATIO_TARGET = 0.3
RESTORE_RATIO_TARGET = 0.4
SAMPLE_INTERVAL = 0.1
DUMP = "dump backup"
PGBACKREST = "pgbackrest backup"
BARE = "bare pg_restore"
RESTORE = "pgbackrest restore"


@dataclass(kw_only=True)
class RestorePointOutcome(Outcome):
    steps: str    # the restore's own "Steps:" line: where its time went


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--reference-sql", type=Path, default=None)
    args = parser.parse_args()
    sql = args.reference_sql or REFERENCE_SQL
    if not sql.is_file():
        raise SystemExit("reference_db.sql not found: give --reference-sql")
    cluster = build_cluster("pgbackrest-cluster-", archiving=True)
    work = Path(tempfile.mkdtemp(prefix="pgbackrest-bench-"))
    try:
        prepare(args, cluster, sql, work)
        results = run_rounds(cases(cluster, work), args.rounds, work)
    finally:
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)
    return report(results)


def prepare(args, cluster, sql: Path, work: Path) -> None:
    """The reference data in the cluster, stamped at head, a full pgBackRest backup of it, and a
    `pg_dump -Fc` file for the bare restores."""
    started = time.monotonic()
    cluster.psql("CREATE DATABASE bench_ref")
    cluster.run(str(PG_BIN / "psql"), "-X", "-q", "-h", str(cluster.socket_dir), "-p",
                str(cluster.port), "-d", "bench_ref", "-v", f"scale={args.scale}", "-f",
                str(sql), timeout=3600)
    size = cluster.psql("SELECT pg_size_pretty(pg_database_size('bench_ref'))")
    print(f"loaded {sql.name} (scale {args.scale}, {size}) in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    copy_project(PROJECT_ROOT, work / "project")
    run = measure(invoke("stamp", "head"), env=invoke_env(cluster, work, "dump"),
                  cwd=work / "project")
    fail_if(run, "invoke stamp head")
    started = time.monotonic()
    cluster.pgbackrest("--type=full", "backup", timeout=3600)
    print(f"full pgBackRest backup: {time.monotonic() - started:.1f} s", flush=True)
    run = measure(pg_tool(cluster, "pg_dump") + ["-Fc", "-f", str(work / "bench.pgdump"),
                                                  "bench_ref"])
    fail_if(run, "pg_dump -Fc")


def invoke_env(cluster, work: Path, method: str) -> dict[str, str]:
    """`invoke` on the cluster's bench_ref, backing up with `method` (dump or pgbackrest)."""
    env = {k: v for k, v in project_environment().items() if not k.startswith("PG")}
    env.update({"APP_ENV": "bench", "POSTGRES_SERVER": "127.0.0.1",
                "POSTGRES_PORT": str(cluster.port), "POSTGRES_USER": "postgres",
                "POSTGRES_DB": "bench_ref", "BACKUP_DIR": str(work / "backups"),
                "PG_BIN_DIR": str(PG_BIN)})
    return {**env, "BACKUP_METHOD": "dump"} if method == "dump" else {**env, **cluster.settings}


def pg_tool(cluster, name: str) -> list[str]:
    return [str(PG_BIN / name), "-h", str(cluster.socket_dir), "-p", str(cluster.port),
            "-U", "postgres"]


def cases(cluster, work: Path) -> list[Case]:
    project = work / "project"
    dump_env = invoke_env(cluster, work, "dump")
    pgbackrest_env = invoke_env(cluster, work, "pgbackrest")

    def timed(name: str, argv: list[str], env=None, cwd=None) -> Outcome:
        run = measure(argv, env=env, cwd=cwd, sample_interval=SAMPLE_INTERVAL)
        fail_if(run, name)
        return Outcome(run)

    def restore_newest(scratch: Path) -> RestorePointOutcome:
        listed = json.loads(subprocess.run(
            invoke("backups", "--json"), env=pgbackrest_env, cwd=project, capture_output=True,
            text=True, check=True).stdout)
        newest = next(b for b in listed if b.get("method") == "pgbackrest")
        run = timed(RESTORE, invoke("restore", "--yes", f"--backup={newest['id']}"),
                    pgbackrest_env, project).run
        steps = next((line for line in run.stdout.decode(errors="replace").splitlines()
                      if line.startswith("Steps:")), "(no steps line)")
        return RestorePointOutcome(run, steps=steps)

    def checkpoint(scratch: Path) -> None:
        cluster.psql("CHECKPOINT")

    bare_argv = pg_tool(cluster, "pg_restore") + ["-d", "bench_bare", str(work / "bench.pgdump")]
    return [
        Case(DUMP, lambda _: timed(DUMP, invoke("backup"), dump_env, project), setup=checkpoint),
        Case(PGBACKREST, lambda _: timed(PGBACKREST, invoke("backup"), pgbackrest_env, project),
             setup=checkpoint),
        Case(BARE, lambda _: timed(BARE, bare_argv),
             setup=lambda _: cluster.psql("CREATE DATABASE bench_bare"),
             cleanup=lambda _: cluster.psql("DROP DATABASE IF EXISTS bench_bare")),
        Case(RESTORE, restore_newest, note=lambda outcome: f", invoke restore {outcome.steps}"),
    ]


def report(results: dict[str, list[Outcome]]) -> int:
    median_table({name: results[name] for name in (DUMP, PGBACKREST)}, DUMP, size_label=None)
    median_table({name: results[name] for name in (BARE, RESTORE)}, BARE, size_label=None)
    medians = {name: median_seconds(outcomes) for name, outcomes in results.items()}
    return report_checks([
        ratio_check("median invoke backup", medians[PGBACKREST], medians[DUMP],
                    BACKUP_RATIO_TARGET, ours_label="pgbackrest ", base_label="dump ", digits=2),
        ratio_check("median restore", medians[RESTORE], medians[BARE], RESTORE_RATIO_TARGET,
                    ours_label="invoke restore of a restore point ",
                    base_label="bare pg_restore ", digits=2),
    ])


if __name__ == "__main__":
    sys.exit(main())
