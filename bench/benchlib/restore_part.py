"""Part 3: `invoke restore --disconnect` of a working copy of the reference database while an
application writes to it, against bare `pg_restore` into an empty database (`pg_restore -j2`
measured beside them for reference only)."""
from __future__ import annotations

import itertools
import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .measure import Run, fail_if, measure
from .postgres import (MIB, checkpoint, databases_named, drop_database, ensure_reference_db,
                       pg_env, psql, warm_cache)
from .project import invoke, invoke_backup, invoke_environment, local_store
from .report import (Check, biggest_kib, med, median_seconds, ratio_check, report_commands,
                     rss_check)
from .rounds import Case, Outcome, run_rounds

SERVICE_RATIO_TARGET = 0.80    # time to service / bare pg_restore (issue 17)
MIN_ROUNDS = 3                 # single rounds ranged from 0.75x to 1.12x: a median of three
RESTORE_RATIO_TARGET = 1.5     # the whole restore command / bare pg_restore
DOWNTIME_TARGET_SECONDS = 2.0
APP_TABLE = "bench_app_writes"
WRITE_NUMBERS = itertools.count(1)
BARE_RESTORE_DATABASE = "bench_bare_restore"   # the bare pg_restore's target, made empty
BARE = "pg_restore (bare)"
INVOKE = "invoke restore"
JOBS2 = "pg_restore -j2 (reference)"


class AppSession(threading.Thread):
    """The application during a restore: one session writing a row every 100 ms, reconnecting
    on failure; every acknowledged write is kept with the oid of the database that served it."""

    def __init__(self, args, database: str, pace: float = 0.1):
        super().__init__(daemon=True)
        self.dsn = dict(host=args.pg_host, port=args.pg_port, user=args.pg_user,
                        dbname=database, application_name="bench-app", connect_timeout=2)
        self.pace = pace
        self.acked: list[tuple[int, int, float]] = []  # (n, database oid, perf_counter)
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg2

        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(**self.dsn)
                    conn.autocommit = True
                n = next(WRITE_NUMBERS)  # unique across rounds: the table outlives a round
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {APP_TABLE} (n) VALUES (%s) RETURNING (SELECT oid "
                                "FROM pg_database WHERE datname = current_database())", (n,))
                    self.acked.append((n, cur.fetchone()[0], time.perf_counter()))
            except psycopg2.Error:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                conn = None
            self.stop.wait(self.pace)
        if conn is not None:
            conn.close()


@dataclass(kw_only=True)
class RestoreOutcome(Outcome):
    """One `invoke restore` as the application saw it, beside what the restore itself said."""
    service: float              # start of the command to the first write on the new database
    downtime: float             # last write on the old database to the first on the new
    reported_service: float
    reported_downtime: float
    lost: float                 # acknowledged writes lost (nan if it could not be told)


def run(args, tmp: Path) -> list[Check]:
    ensure_reference_db(args)
    part = RestorePart(args, tmp / "restore")
    part.drop_databases()
    try:
        part.prepare()
        results = run_rounds(part.cases(), restore_rounds(args), tmp)
    finally:
        part.drop_databases()
    report_commands(results, BARE, args.sample_interval, size_label=None)
    return checks(results)


def restore_rounds(args) -> int:
    """--rounds, but never fewer than MIN_ROUNDS: the figures are medians of alternating rounds."""
    return max(args.rounds, MIN_ROUNDS)


class RestorePart:
    """The working copy, the dump file and the backup the rounds restore from."""

    def __init__(self, args, folder: Path):
        self.args, self.folder = args, folder
        self.working = args.restore_database
        # Beside another checkout's benchmark (--restore-database given), a bare target of its own.
        self.bare_db = (BARE_RESTORE_DATABASE if self.working == "bench_restore"
                        else f"{self.working}_bare")
        self.invoke_env = invoke_environment(args, self.working, folder / "backups")
        self.store = local_store(self.invoke_env)
        self.dump_file = folder / f"{self.working}.dump"
        self.source_id = ""

    def drop_databases(self) -> None:
        """Drop the working copy, the bare runs' target and what restores left beside them."""
        for name in ([self.working, self.bare_db]
                     + databases_named(self.args, self.working + "__pre_restore_")
                     + databases_named(self.args, self.working + "__restoring_")):
            drop_database(self.args, name)

    def prepare(self) -> None:
        args, working = self.args, self.working
        self.folder.mkdir()
        others = psql(args, "postgres", "SELECT count(*) FROM pg_stat_activity "
                      f"WHERE datname = '{args.database}'")
        if others != "0":
            raise SystemExit(f"{others} session(s) are connected to {args.database}: CREATE "
                             "DATABASE ... TEMPLATE needs none; stop them and run again")
        started = time.perf_counter()
        psql(args, "postgres", f'CREATE DATABASE "{working}" TEMPLATE "{args.database}"')
        # The application's table, in the backup too, so the restored database serves it.
        psql(args, working, f"CREATE TABLE {APP_TABLE} (n integer PRIMARY KEY, "
                            "at timestamptz DEFAULT now())")
        print(f"\n== Part 3: restore of {working} (a copy of {args.database}, made in "
              f"{time.perf_counter() - started:.0f} s), {restore_rounds(args)} alternating "
              "rounds ==",
              flush=True)
        warm_cache(args, working)
        run = measure(["pg_dump", "-Fc", "-f", str(self.dump_file), working], env=pg_env(args))
        fail_if(run, "pg_dump -Fc (set-up)")
        print(f"  set-up: pg_dump -Fc {self.dump_file.stat().st_size / MIB:.1f} MiB in "
              f"{run.seconds:.1f} s", flush=True)
        source = invoke_backup(args, self.invoke_env, what="invoke backup (set-up)")
        self.source_id = source.manifest["id"]
        print(f"  set-up: invoke backup {self.source_id} {source.size / MIB:.1f} MiB in "
              f"{source.run.seconds:.1f} s (revision {source.manifest['revision'] or 'base'})",
              flush=True)

    def cases(self) -> list[Case]:
        return [self.bare_case(BARE, jobs=1),
                Case(INVOKE, self.invoke_restore, setup=lambda _: checkpoint(self.args),
                     cleanup=self.remove_restore_leftovers, note=restore_note),
                self.bare_case(JOBS2, jobs=2)]

    def bare_case(self, name: str, jobs: int) -> Case:
        argv = ["pg_restore"] + ([f"-j{jobs}"] if jobs > 1 else []) + ["-d", self.bare_db]

        def create(scratch: Path) -> None:
            subprocess.run(["createdb", self.bare_db], env=pg_env(self.args), check=True)
            checkpoint(self.args)

        def restore(scratch: Path) -> Outcome:
            run = measure(argv + [str(self.dump_file)], env=pg_env(self.args),
                          sample_interval=self.args.sample_interval)
            fail_if(run, " ".join(argv))
            return Outcome(run)

        return Case(name, restore, setup=create,
                    cleanup=lambda _: drop_database(self.args, self.bare_db))

    def invoke_restore(self, scratch: Path) -> RestoreOutcome:
        app = AppSession(self.args, self.working)
        started, run = self.restore_beside(app)
        output = (run.stdout + run.stderr).decode(errors="replace")
        old_oid = app.acked[0][1]
        old = [(n, t) for n, oid, t in app.acked if oid == old_oid]
        new = [(n, t) for n, oid, t in app.acked if oid != old_oid]
        kept = databases_named(self.args, self.working + "__pre_restore_")
        safety = re.findall(r"Safety backup (\S+) holds", output)
        lost = self.lost_writes({n for n, _ in old}, kept, safety)
        fail_if(run, "invoke restore")
        if len(safety) != 1 or len(kept) != 1 or not old or not new:
            raise SystemExit(f"invoke restore reported {len(safety)} safety backup(s) and "
                             f"left {len(kept)} kept database(s), the application wrote "
                             f"{len(old)} rows before and {len(new)} after; expected one "
                             "of each and rows on both sides:\n" + output[-2000:])
        reported = re.search(r"time to service ([0-9.]+) s, downtime ([0-9.]+) s", output)
        # The next round's restore starts from a database as old as the first one was: in
        # the page cache, with its rows' hint bits set (outside the timing).
        warm_cache(self.args, self.working)
        return RestoreOutcome(
            run, service=new[0][1] - started, downtime=new[0][1] - old[-1][1],
            reported_service=float(reported.group(1)) if reported else float("nan"),
            reported_downtime=float(reported.group(2)) if reported else float("nan"),
            lost=lost)

    def restore_beside(self, app: AppSession) -> tuple[float, Run]:
        """Measure `invoke restore` while `app` writes, until the application has been served by
        the restored database (or 30 s); when it started, and the run."""
        app.start()
        while not app.acked and app.is_alive():
            time.sleep(0.05)
        old_oid = app.acked[0][1]
        started = time.perf_counter()
        try:
            run = measure(invoke("restore", "--yes", "--disconnect", f"--backup={self.source_id}"),
                          cwd=self.args.repo, env=self.invoke_env,
                          sample_interval=self.args.sample_interval)
            deadline = time.perf_counter() + 30
            while not any(oid != old_oid for _, oid, _ in app.acked) and \
                    time.perf_counter() < deadline:
                time.sleep(0.05)
        finally:
            app.stop.set()
            app.join(30)
        return started, run

    def lost_writes(self, acked_on_old: set[int], kept: list[str], safety: list[str]) -> float:
        """Writes the old database acknowledged but the kept database lacks, plus any difference
        between the kept database's rows and the safety backup's count of them."""
        if len(kept) != 1 or len(safety) != 1:
            return float("nan")
        in_kept = set(int(v) for v in psql(self.args, kept[0], f"SELECT n FROM {APP_TABLE}")
                      .split())
        manifest = json.loads((self.store / f"{safety[0]}.manifest.json").read_text())
        counted = manifest["row_counts"].get(f"public.{APP_TABLE}")
        return len(acked_on_old - in_kept) + (0 if counted == len(in_kept)
                                              else abs(len(in_kept) - counted))

    def remove_restore_leftovers(self, scratch: Path) -> None:
        """The kept previous database and the safety backup: also after a failure, so that the
        disk does not fill."""
        for name in databases_named(self.args, self.working + "__pre_restore_"):
            drop_database(self.args, name)
        for manifest in self.store.glob("*.manifest.json"):
            backup_id = manifest.name.removesuffix(".manifest.json")
            if backup_id != self.source_id:
                for path in self.store.glob(f"{backup_id}*"):
                    path.unlink()


def restore_note(outcome: RestoreOutcome) -> str:
    return (f", service {outcome.service:.1f} s, app downtime {outcome.downtime:.2f} s (restore "
            f"says {outcome.reported_downtime:.3f} s), lost {outcome.lost}")


def checks(results: dict[str, list[Outcome]]) -> list[Check]:
    bare_seconds = median_seconds(results[BARE])
    restores: list[RestoreOutcome] = results[INVOKE]
    seconds, service = median_seconds(restores), med([o.service for o in restores])
    downtime = max(o.downtime for o in restores)
    lost = sum(o.lost for o in restores)
    rounds = ", ".join(f"{o.service / b.run.seconds:.2f}x"
                       for o, b in zip(restores, results[BARE]))
    print(f"\n  invoke restore --disconnect: median {seconds:.1f} s; time to service (start to the "
          f"application's first write on the restored database) median {service:.1f} s "
          f"(restore itself reports {med([o.reported_service for o in restores]):.1f} s); "
          f"application downtime max {downtime:.2f} s (restore reports the swap as "
          f"{max(o.reported_downtime for o in restores):.3f} s); acknowledged writes lost "
          f"{lost}; pg_restore -j2 is {median_seconds(results[JOBS2]) / bare_seconds:.2f}x bare"
          f"\n  time to service / bare pg_restore of the same round: {rounds} (the target is on "
          f"the medians of {len(restores)} rounds)")
    return [
        ratio_check("time to service", service, bare_seconds, SERVICE_RATIO_TARGET,
                    base_label="bare pg_restore "),
        ratio_check("whole restore command", seconds, bare_seconds, RESTORE_RATIO_TARGET,
                    ours_label="invoke ", base_label="bare pg_restore "),
        Check("application downtime during the restore", f"{downtime:.2f} s, worst round",
              f"<= {DOWNTIME_TARGET_SECONDS} s", downtime <= DOWNTIME_TARGET_SECONDS),
        Check("acknowledged writes lost", f"{lost}", "0", lost == 0),
        rss_check("restore peak RSS", biggest_kib(restores)),
    ]
