#!/usr/bin/env python3
"""Benchmark the release-safety tasks against the bare tools they wrap.

Part 1 (PostgreSQL backup), alternating in one process, --rounds N times:
    bare `pg_dump -Fc -f FILE`   |   `invoke backup`   |   `pg_dump -Fc -Z0 | zstd -1` (reference)
  Targets: invoke backup's median time <= 0.5x bare pg_dump -Fc's; its archive no larger than
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
  the restored database) <= 0.95x bare single-job pg_restore; the whole command <= 1.5x; the
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
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE_CANDIDATES = [REPO.parent / "shared" / "bench" / "reference_db.sql",
                        Path("/work/shared/bench/reference_db.sql")]
MIB = 1024 * 1024

BACKUP_RATIO_TARGET = 0.5
RSS_TARGET_MIB = 200
STARTUP_RATIO_TARGET = 1.5
SERVICE_RATIO_TARGET = 0.95    # time to service / bare pg_restore
RESTORE_RATIO_TARGET = 1.5     # the whole restore command / bare pg_restore
DOWNTIME_TARGET_SECONDS = 2.0
APP_TABLE = "bench_app_writes"
WRITE_NUMBERS = itertools.count(1)
S3_RATIO_TARGET = 1.3
ENCRYPTION_RATIO_TARGET = 1.10
ALL_PARTS = (1, 2, 3, 4)
BARE_RESTORE_DATABASE = "bench_bare_restore"   # part 3's bare pg_restore target, made empty

# Settings the project reads from the process environment: the SQLite part must not inherit them.
SETTING_NAMES = {"APP_ENV", "DATABASE_URL", "USE_SQLITE", "SQLITE_PATH", "PRODUCTION",
                 "PG_BIN_DIR", "BACKUP_STORAGE", "BACKUP_DIR", "MAINTENANCE_WINDOW",
                 "MAINTENANCE_TIMEZONE", "REQUIRE_STAGING_FIRST", "BACKUP_S3_BUCKET",
                 "BACKUP_S3_PREFIX", "BACKUP_S3_SSE", "BACKUP_S3_KMS_KEY_ID",
                 "BACKUP_ENCRYPTION_RECIPIENTS", "BACKUP_ENCRYPTION_IDENTITY_FILE",
                 "BACKUP_KEEP_LAST", "BACKUP_KEEP_DAYS"}


# -- measuring one command ----------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    returncode: int
    tree_maxrss_kib: int                 # wait4 ru_maxrss: largest single process of the tree
    cpu_seconds: float = 0.0             # wait4 user + system time of the tree (not the server's)
    machine_cpu_seconds: float = 0.0     # busy CPU time of the whole machine meanwhile (/proc/stat)
    peaks_kib: dict = field(default_factory=dict)   # pid -> (comm, VmHWM KiB)
    concurrent_kib: int = 0              # largest sampled sum of VmRSS over the tree
    stdout: bytes = b""
    stderr: bytes = b""

    def peak_by_name(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for comm, hwm in self.peaks_kib.values():
            out[comm] = max(out.get(comm, 0), hwm)
        return out

    @property
    def biggest_kib(self) -> int:
        # The sampled VmHWM when there is one: wait4's ru_maxrss also counts the image of the
        # forking process before exec (this script's, ~17 MiB), so it can exceed every process.
        sampled = max((hwm for _, hwm in self.peaks_kib.values()), default=0)
        return sampled or self.tree_maxrss_kib

    @property
    def sum_of_peaks_kib(self) -> int:
        return sum(hwm for _, hwm in self.peaks_kib.values())


def _read_status(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) in KiB, or None if the process is gone or a zombie."""
    hwm = rss = None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                    break
    except (OSError, ValueError):
        return None
    return None if hwm is None or rss is None else (hwm, rss)


def _ppid_and_comm(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces; the fields after the last ')' are fixed.
    left, right = data.find(b"("), data.rfind(b")")
    rest = data[right + 2:].split()
    return int(rest[1]), data[left + 1:right].decode(errors="replace")


class TreeSampler(threading.Thread):
    """Keeps each descendant's VmHWM (and the largest concurrent VmRSS sum) of one process."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self.concurrent = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        parents: dict[int, int] = {}
        names: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                info = _ppid_and_comm(int(entry))
                if info:
                    parents[int(entry)], names[int(entry)] = info
        tree, frontier = {self.root}, [self.root]
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        total = 0
        for pid in tree:
            status = _read_status(pid)
            if status is None:
                continue
            hwm, rss = status
            total += rss
            old = self.peaks.get(pid, ("", 0))[1]
            self.peaks[pid] = (names.get(pid, "?"), max(old, hwm))
        self.concurrent = max(self.concurrent, total)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all but idle and iowait) since boot: the
    PostgreSQL server's backends count here, which wait4 of our own tree never sees."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def measure(argv, *, cwd=None, env=None, sample_interval: float | None = None,
            capture: bool = True) -> Run:
    """Run argv to completion; wall time, wait4's ru_maxrss and (optionally) a /proc sampler."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    busy = machine_busy_seconds()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=out,
                            stdin=subprocess.DEVNULL)
    sampler = None
    if sample_interval:
        sampler = TreeSampler(proc.pid, sample_interval)
        sampler.start()
    stdout = stderr = b""
    if capture:
        # Drain both pipes (as cron would) without letting either fill up.
        chunks = {"out": [], "err": []}
        readers = [threading.Thread(target=lambda s, k: chunks[k].append(s.read()),
                                    args=(s, k), daemon=True)
                   for s, k in ((proc.stdout, "out"), (proc.stderr, "err"))]
        for r in readers:
            r.start()
    # wait4 directly, so the root's rusage (max RSS of it and its reaped descendants) is ours.
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if capture:
        for r in readers:
            r.join()
        stdout, stderr = b"".join(chunks["out"]), b"".join(chunks["err"])
        proc.stdout.close()
        proc.stderr.close()
    run = Run(seconds, proc.returncode, usage.ru_maxrss, usage.ru_utime + usage.ru_stime,
              machine_busy_seconds() - busy, stdout=stdout, stderr=stderr)
    if sampler:
        sampler.stop()
        run.peaks_kib, run.concurrent_kib = sampler.peaks, sampler.concurrent
    return run


def fail_if(run: Run, what: str) -> None:
    if run.returncode != 0:
        sys.stderr.write(run.stderr.decode(errors="replace")[-3000:])
        raise SystemExit(f"{what} failed with exit status {run.returncode}")


def med(values):
    return statistics.median(values) if values else float("nan")


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# -- part 1: backup --------------------------------------------------------------------------

def pg_env(args) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not (k.startswith("PG") and not k.startswith("PG_"))}
    env.update(PGHOST=args.pg_host, PGPORT=str(args.pg_port), PGUSER=args.pg_user)
    return env


def psql(args, db: str, sql: str) -> str:
    return subprocess.run(["psql", "-X", "-At", "-d", db, "-c", sql], env=pg_env(args),
                          check=True, capture_output=True, text=True).stdout.strip()


def ensure_reference_db(args) -> None:
    exists = psql(args, "postgres",
                  f"SELECT 1 FROM pg_database WHERE datname = '{args.database}'") == "1"
    loaded = exists and psql(args, args.database,
                             "SELECT count(*) FROM pg_tables WHERE tablename IN "
                             "('users','studies','images','diagnoses')") == "4"
    if loaded:
        return
    sql_file = args.reference_sql or next((p for p in REFERENCE_CANDIDATES if p.is_file()), None)
    if sql_file is None:
        raise SystemExit("database %s is missing and reference_db.sql was not found "
                         "(give --reference-sql)" % args.database)
    print(f"Loading {sql_file} into {args.database} (about 70 s)...", flush=True)
    if not exists:
        subprocess.run(["createdb", args.database], env=pg_env(args), check=True)
    started = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-v", "scale=1", "-d", args.database, "-f", str(sql_file)],
                   env=pg_env(args), check=True, stdout=subprocess.DEVNULL)
    print(f"  loaded in {time.perf_counter() - started:.0f} s", flush=True)


def warm_cache(args, database: str | None = None) -> None:
    """Read every table once so the first measured run does not pay for a cold page cache (nor,
    on a freshly restored database, for setting every row's hint bits)."""
    database = database or args.database
    tables = psql(args, database,
                  "SELECT string_agg(format('%I.%I', schemaname, tablename), ',') FROM pg_tables "
                  "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
    for table in filter(None, tables.split(",")):
        psql(args, database, f"SELECT count(*) FROM {table}")


def backup_part(args, tmp: Path) -> list[tuple[str, bool]]:
    ensure_reference_db(args)
    db_size = int(psql(args, args.database, "SELECT pg_database_size(current_database())"))
    print(f"\n== Part 1: backup of {args.database} ({db_size / MIB:.0f} MiB on disk), "
          f"{args.rounds} alternating rounds ==", flush=True)
    warm_cache(args)

    env = pg_env(args)
    invoke_env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (3), which requirements.txt does not
    # install: name the driver the project ships (psycopg2) explicitly.
    invoke_env.update(APP_ENV="bench", DATABASE_URL=(
        f"postgresql+psycopg2://{args.pg_user}@{args.pg_host}:{args.pg_port}/{args.database}"))

    def bare(out: Path):
        run = measure(["pg_dump", "-Fc", "-f", str(out), args.database], env=env,
                      sample_interval=args.sample_interval)
        fail_if(run, "pg_dump -Fc")
        return run, out.stat().st_size, None

    def pipeline(out: Path):
        cmd = (f"set -o pipefail; pg_dump -Fc -Z0 {args.database} | zstd -1 -q -o {out}")
        run = measure(["bash", "-c", cmd], env=env, sample_interval=args.sample_interval)
        fail_if(run, "pg_dump -Fc -Z0 | zstd -1")
        return run, out.stat().st_size, None

    def invoke_backup(out: Path):
        out.mkdir()
        run_env = dict(invoke_env, BACKUP_DIR=str(out))
        run = measure([sys.executable, "-m", "invoke", "backup"], cwd=args.repo, env=run_env,
                      sample_interval=args.sample_interval)
        fail_if(run, "invoke backup")
        manifests = list((out / "bench").glob("*.manifest.json"))
        if len(manifests) != 1:
            raise SystemExit(f"invoke backup left {len(manifests)} manifests in {out}/bench")
        manifest = json.loads(manifests[0].read_text())
        artifact = out / "bench" / manifest["artifact"]
        size = artifact.stat().st_size
        if size != manifest["size"]:
            raise SystemExit(f"manifest size {manifest['size']} != file size {size}")
        return run, size, manifest

    commands = [("pg_dump -Fc (bare)", bare),
                ("invoke backup", invoke_backup),
                ("pg_dump -Fc -Z0 | zstd -1", pipeline)]
    results: dict[str, list] = {name: [] for name, _ in commands}
    for rnd in range(1, args.rounds + 1):
        for index, (name, fn) in enumerate(commands):
            out = tmp / (f"round{rnd}-cmd{index}" + ("" if fn is invoke_backup else ".dump"))
            run, size, manifest = fn(out)
            results[name].append((run, {"size": size, "manifest": manifest}))
            extra = ""
            if manifest:
                extra = (f", manifest duration {manifest['duration_seconds']:.1f} s, "
                         f"raw {manifest['raw_size'] / MIB:.0f} MiB")
            print(f"  round {rnd}: {name:<28} {run.seconds:7.1f} s  (CPU {run.cpu_seconds:5.1f} s)  "
                  f"{size / MIB:7.1f} MiB  biggest process {mib(run.biggest_kib)}{extra}  "
                  f"[load {loadavg()}]", flush=True)
            # Delete each run's output so the disk does not fill.
            shutil.rmtree(out) if out.is_dir() else out.unlink()

    base = med([r.seconds for r, _ in results["pg_dump -Fc (bare)"]])
    report_commands([name for name, _ in commands], results, "pg_dump -Fc (bare)", args)

    inv = results["invoke backup"]
    inv_secs = med([r.seconds for r, _ in inv])
    inv_size = max(e["size"] for _, e in inv)
    bare_size = min(e["size"] for _, e in results["pg_dump -Fc (bare)"])
    inv_peak = max(r.biggest_kib for r, _ in inv)
    python_peak = max(kib for r, _ in inv for comm, kib in r.peak_by_name().items()
                      if comm.startswith("python"))
    durations = [e["manifest"]["duration_seconds"] for _, e in inv]
    print(f"\n  invoke backup: median {inv_secs:.1f} s of which take_backup (dump + read-back) "
          f"{med(durations):.1f} s; Python process peak {mib(python_peak)}")
    checks = [
        (f"backup time: invoke {inv_secs:.1f} s / bare pg_dump -Fc {base:.1f} s = "
         f"{inv_secs / base:.3f}x (target <= {BACKUP_RATIO_TARGET}x)", inv_secs <= BACKUP_RATIO_TARGET * base),
        (f"archive size: invoke {inv_size / MIB:.1f} MiB vs bare pg_dump -Fc {bare_size / MIB:.1f} MiB "
         "(target: no larger)", inv_size <= bare_size),
        (f"peak RSS: largest process of invoke's tree {mib(inv_peak)} "
         f"(target < {RSS_TARGET_MIB} MiB)", inv_peak < RSS_TARGET_MIB * 1024),
    ]
    return checks


# -- part 2: start-up ------------------------------------------------------------------------

def copy_project(source: Path, target: Path) -> Path:
    """tasks.py, app/, alembic/ and alembic.ini: what the tasks need, without .env files or data."""
    target.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copy2(source / "tasks.py", target)
    shutil.copy2(source / "alembic.ini", target)
    shutil.copytree(source / "app", target / "app", ignore=ignore)
    shutil.copytree(source / "alembic", target / "alembic", ignore=ignore)
    return target


def startup_part(args, tmp: Path) -> list[tuple[str, bool]]:
    project = copy_project(args.repo, tmp / "project")
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES
           and not k.startswith("POSTGRES_") and not k.startswith("BACKUP_")}
    print(f"\n== Part 2: start-up on the SQLite default ({project}), "
          f"{args.status_runs} alternating runs ==", flush=True)
    run = measure([sys.executable, "-m", "invoke", "migrate"], cwd=project, env=env)
    fail_if(run, "invoke migrate (set-up)")
    if not (project / "dev.db").is_file():
        raise SystemExit("invoke migrate did not create dev.db in the copy")

    py = sys.executable
    pairs = [
        ("invoke status", [py, "-m", "invoke", "status"],
         'python -c "import invoke, sqlalchemy, alembic.command"',
         [py, "-c", "import invoke, sqlalchemy, alembic.command"]),
        ("invoke --list", [py, "-m", "invoke", "--list"],
         'python -c "import invoke"', [py, "-c", "import invoke"]),
    ]
    # Two warm-up runs each: writes the copy's .pyc files and fills the page cache.
    for _, cmd, _, base in pairs:
        for _ in range(2):
            fail_if(measure(cmd, cwd=project, env=env), " ".join(cmd[2:]))
            fail_if(measure(base, cwd=project, env=env), " ".join(base[1:]))
    times = {name: ([], []) for name, *_ in pairs}
    for _ in range(args.status_runs):
        for name, cmd, _, base in pairs:
            r = measure(base, cwd=project, env=env)
            fail_if(r, "baseline")
            times[name][1].append(r.seconds)
            r = measure(cmd, cwd=project, env=env)   # stdout and stderr piped, as cron would
            fail_if(r, name)
            times[name][0].append(r.seconds)
    checks = []
    print(f"\n{'command':<58} {'median ms':>10} {'min ms':>8} {'ratio':>7}")
    for name, cmd, base_name, _ in pairs:
        ours, base = times[name]
        ratio = med(ours) / med(base)
        print(f"{base_name:<58} {med(base) * 1000:10.0f} {min(base) * 1000:8.0f} {'1.00x':>7}")
        print(f"{'python -m ' + name:<58} {med(ours) * 1000:10.0f} {min(ours) * 1000:8.0f} "
              f"{ratio:6.2f}x")
        checks.append((f"{name}: {med(ours) * 1000:.0f} ms / {med(base) * 1000:.0f} ms = "
                       f"{ratio:.3f}x (target <= {STARTUP_RATIO_TARGET}x)",
                       ratio <= STARTUP_RATIO_TARGET))
    return checks


# -- shared by parts 3 and 4 -----------------------------------------------------------------

def database_url(args, database: str) -> str:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (3): name psycopg2, which we ship.
    return f"postgresql+psycopg2://{args.pg_user}@{args.pg_host}:{args.pg_port}/{database}"


def invoke_environment(args, database: str) -> dict[str, str]:
    """This process's environment without the project's settings, AWS's or the backup store's,
    then APP_ENV=bench and DATABASE_URL naming `database`."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES
           and not k.startswith("AWS_") and not k.startswith("BACKUP_")}
    env.update(APP_ENV="bench", DATABASE_URL=database_url(args, database))
    return env


def drop_database(args, name: str) -> None:
    psql(args, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def databases_named(args, prefix: str) -> list[str]:
    names = psql(args, "postgres", "SELECT datname FROM pg_database").split("\n")
    return [n for n in names if n.startswith(prefix)]


def checkpoint(args) -> None:
    """Write the previous command's dirty buffers out now, so the next measured command does not
    pay for them."""
    psql(args, "postgres", "CHECKPOINT")


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def report_commands(commands: list[str], results: dict[str, list], base_name: str,
                    args, size_label: str | None = "archive") -> None:
    """Median table (ratio against `base_name`) and peak RSS per process, for parts 1, 3, 4. Each
    results[name] is a list of (Run, extra dict); extra may hold "size" and "moto_cpu"."""
    base = med([r.seconds for r, _ in results[base_name]])
    head = f"\n{'command':<34} {'median s':>9} {'ratio':>7} {'CPU s':>7} {'machine':>8}"
    if size_label:
        head += f" {size_label:>12}"
    print(head + f" {'peak RSS (largest process)':>27}")
    for name in commands:
        rows = results[name]
        secs = med([r.seconds for r, _ in rows])
        line = (f"{name:<34} {secs:9.1f} {secs / base:6.2f}x "
                f"{med([r.cpu_seconds for r, _ in rows]):7.1f} "
                f"{med([r.machine_cpu_seconds for r, _ in rows]):8.1f}")
        if size_label:
            line += f" {med([e.get('size', 0) for _, e in rows]) / MIB:8.1f} MiB"
        print(line + f" {mib(max(r.biggest_kib for r, _ in rows)):>27}")
    print("  (ratio: against the median of " + base_name + " in this run; CPU s: user + system "
          "time of the command's process tree, median; the server's backends are not counted; "
          "machine: busy CPU seconds of the whole machine meanwhile, server included)")
    print("\nPeak RSS per process (max over rounds; sampled VmHWM every "
          f"{args.sample_interval} s; wait4 ru_maxrss of the tree as a cross-check):")
    for name in commands:
        rows = results[name]
        by_name: dict[str, int] = {}
        for r, _ in rows:
            for comm, kib in r.peak_by_name().items():
                by_name[comm] = max(by_name.get(comm, 0), kib)
        listed = ", ".join(f"{comm} {mib(kib)}" for comm, kib in
                           sorted(by_name.items(), key=lambda kv: -kv[1]))
        print(f"  {name:<34} {listed}")
        print(f"  {'':<34} sum of per-process peaks {mib(max(r.sum_of_peaks_kib for r, _ in rows))}"
              f", largest concurrent sum {mib(max(r.concurrent_kib for r, _ in rows))}"
              f", wait4 ru_maxrss (incl. pre-exec fork image) "
              f"{mib(max(r.tree_maxrss_kib for r, _ in rows))}")


# -- part 3: restore -------------------------------------------------------------------------

class AppSession(threading.Thread):
    """The application during a restore: one session writing a row every 100 ms, reconnecting
    on failure; every acknowledged write is kept with the oid of the database that served it."""

    def __init__(self, args, database: str, pace: float = 0.1):
        super().__init__(daemon=True)
        self.dsn = dict(host=args.pg_host, port=args.pg_port, user=args.pg_user,
                        dbname=database, application_name="bench-app", connect_timeout=2)
        self.pace = pace
        self.acked: list[tuple[int, int, float]] = []  # (n, database oid, perf_counter)
        self.failures = 0
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
                self.failures += 1
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                conn = None
            self.stop.wait(self.pace)
        if conn is not None:
            conn.close()


def restore_cleanup(args, working: str, bare: str) -> None:
    """Drop the working copy, the bare runs' target and what restores left beside them."""
    for name in [working, bare] + databases_named(args, working + "__pre_restore_") \
            + databases_named(args, working + "__restoring_"):
        drop_database(args, name)


def restore_part(args, tmp: Path) -> list[tuple]:
    ensure_reference_db(args)
    working = args.restore_database
    # Beside another checkout's benchmark (--restore-database given), a bare target of its own.
    bare_db = BARE_RESTORE_DATABASE if working == "bench_restore" else f"{working}_bare"
    env = pg_env(args)
    folder = tmp / "restore"
    folder.mkdir()
    backup_dir = folder / "backups"
    store = backup_dir / "bench"
    invoke_env = dict(invoke_environment(args, working), BACKUP_DIR=str(backup_dir))

    restore_cleanup(args, working, bare_db)
    try:
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
              f"{time.perf_counter() - started:.0f} s), {args.rounds} alternating rounds ==",
              flush=True)
        warm_cache(args, working)
        dump_file = folder / f"{working}.dump"
        run = measure(["pg_dump", "-Fc", "-f", str(dump_file), working], env=env)
        fail_if(run, "pg_dump -Fc (set-up)")
        print(f"  set-up: pg_dump -Fc {dump_file.stat().st_size / MIB:.1f} MiB in "
              f"{run.seconds:.1f} s", flush=True)
        run = measure([sys.executable, "-m", "invoke", "backup"], cwd=args.repo, env=invoke_env)
        fail_if(run, "invoke backup (set-up)")
        manifests = list(store.glob("*.manifest.json"))
        if len(manifests) != 1:
            raise SystemExit(f"invoke backup left {len(manifests)} manifests in {store}")
        source = json.loads(manifests[0].read_text())
        print(f"  set-up: invoke backup {source['id']} {source['size'] / MIB:.1f} MiB in "
              f"{run.seconds:.1f} s (revision {source['revision'] or 'base'})", flush=True)

        def bare(jobs: int):
            def run_bare():
                subprocess.run(["createdb", bare_db], env=env, check=True)
                try:
                    checkpoint(args)
                    argv = ["pg_restore"] + ([f"-j{jobs}"] if jobs > 1 else []) + \
                        ["-d", bare_db, str(dump_file)]
                    run = measure(argv, env=env, sample_interval=args.sample_interval)
                    fail_if(run, " ".join(argv[:-1]))
                finally:
                    drop_database(args, bare_db)
                return run, {}
            return run_bare

        def invoke_restore():
            checkpoint(args)
            app = AppSession(args, working)
            app.start()
            while not app.acked and app.is_alive():
                time.sleep(0.05)
            old_oid = app.acked[0][1]
            started = time.perf_counter()
            try:
                run = measure([sys.executable, "-m", "invoke", "restore", "--yes", "--disconnect",
                               f"--backup={source['id']}"], cwd=args.repo, env=invoke_env,
                              sample_interval=args.sample_interval)
                # Until the application has been served by the restored database (or 30 s).
                deadline = time.perf_counter() + 30
                while not any(oid != old_oid for _, oid, _ in app.acked) and \
                        time.perf_counter() < deadline:
                    time.sleep(0.05)
            finally:
                app.stop.set()
                app.join(30)
            output = (run.stdout + run.stderr).decode(errors="replace")
            old = [(n, t) for n, oid, t in app.acked if oid == old_oid]
            new = [(n, t) for n, oid, t in app.acked if oid != old_oid]
            kept = databases_named(args, working + "__pre_restore_")
            safety = re.findall(r"Safety backup (\S+) holds", output)
            lost = float("nan")
            if len(kept) == 1 and len(safety) == 1:
                in_kept = set(int(v) for v in psql(args, kept[0], f"SELECT n FROM {APP_TABLE}")
                              .split())
                manifest = json.loads((store / f"{safety[0]}.manifest.json").read_text())
                counted = manifest["row_counts"].get(f"public.{APP_TABLE}")
                lost = len({n for n, _ in old} - in_kept) + (0 if counted == len(in_kept)
                                                             else abs(len(in_kept) - counted))
            # Clean up first (also after a failure), so that the disk does not fill.
            for name in kept:
                drop_database(args, name)
            for backup_id in safety:
                for path in store.glob(f"{backup_id}*"):
                    path.unlink()
            fail_if(run, "invoke restore")
            if len(safety) != 1 or len(kept) != 1 or not old or not new:
                raise SystemExit(f"invoke restore reported {len(safety)} safety backup(s) and "
                                 f"left {len(kept)} kept database(s), the application wrote "
                                 f"{len(old)} rows before and {len(new)} after; expected one "
                                 "of each and rows on both sides:\n" + output[-2000:])
            took = re.search(r"Restored backup \S+ in ([0-9.]+) s", output)
            reported = re.search(r"time to service ([0-9.]+) s, downtime ([0-9.]+) s", output)
            # The next round's restore starts from a database as old as the first one was: in
            # the page cache, with its rows' hint bits set (outside the timing).
            warm_cache(args, working)
            return run, {"restore_seconds": float(took.group(1)) if took else float("nan"),
                         "service": new[0][1] - started,
                         "downtime": new[0][1] - old[-1][1],
                         "reported_service": float(reported.group(1)) if reported else float("nan"),
                         "reported_downtime": float(reported.group(2)) if reported else float("nan"),
                         "lost": lost, "app_failures": app.failures}

        names = ["pg_restore (bare)", "invoke restore", "pg_restore -j2 (reference)"]
        commands = [(names[0], bare(1)), (names[1], invoke_restore), (names[2], bare(2))]
        results: dict[str, list] = {name: [] for name in names}
        for rnd in range(1, args.rounds + 1):
            for name, fn in commands:
                run, extra = fn()
                results[name].append((run, extra))
                note = (f", service {extra['service']:.1f} s, app downtime "
                        f"{extra['downtime']:.2f} s (restore says {extra['reported_downtime']:.3f}"
                        f" s), lost {extra['lost']}" if "service" in extra else "")
                print(f"  round {rnd}: {name:<28} {run.seconds:7.1f} s  (CPU {run.cpu_seconds:5.1f}"
                      f" s)  biggest process {mib(run.biggest_kib)}{note}  [load {loadavg()}]",
                      flush=True)
    finally:
        restore_cleanup(args, working, bare_db)

    report_commands(names, results, names[0], args, size_label=None)
    base = med([r.seconds for r, _ in results[names[0]]])
    inv = results["invoke restore"]
    secs = med([r.seconds for r, _ in inv])
    peak = max(r.biggest_kib for r, _ in inv)
    jobs2 = med([r.seconds for r, _ in results[names[2]]])
    service = med([e["service"] for _, e in inv])
    downtime = max(e["downtime"] for _, e in inv)
    lost = sum(e["lost"] for _, e in inv)
    print(f"\n  invoke restore --disconnect: median {secs:.1f} s; time to service (start to the "
          f"application's first write on the restored database) median {service:.1f} s "
          f"(restore itself reports {med([e['reported_service'] for _, e in inv]):.1f} s); "
          f"application downtime max {downtime:.2f} s (restore reports the swap as "
          f"{max(e['reported_downtime'] for _, e in inv):.3f} s); acknowledged writes lost "
          f"{lost}; pg_restore -j2 is {jobs2 / base:.2f}x bare")
    return [
        (f"time to service: {service:.1f} s / bare pg_restore {base:.1f} s = "
         f"{service / base:.3f}x (target <= {SERVICE_RATIO_TARGET}x)",
         service <= SERVICE_RATIO_TARGET * base),
        (f"whole restore command: invoke {secs:.1f} s / bare pg_restore {base:.1f} s = "
         f"{secs / base:.3f}x (target <= {RESTORE_RATIO_TARGET}x)",
         secs <= RESTORE_RATIO_TARGET * base),
        (f"application downtime during the restore: {downtime:.2f} s, worst round "
         f"(target <= {DOWNTIME_TARGET_SECONDS} s)", downtime <= DOWNTIME_TARGET_SECONDS),
        (f"acknowledged writes lost: {lost} (target 0)", lost == 0),
        (f"restore peak RSS: largest process of invoke's tree {mib(peak)} "
         f"(target < {RSS_TARGET_MIB} MiB)", peak < RSS_TARGET_MIB * 1024),
    ]


# -- part 4: S3 and encryption ---------------------------------------------------------------

def s3_part(args, tmp: Path) -> list[tuple]:
    try:
        import logging

        import boto3
        from moto.server import ThreadedMotoServer
        from pyrage import x25519
    except ImportError as exc:
        raise SystemExit(f"part 4 needs moto[server], boto3 and pyrage ({exc}): "
                         "pip install -r requirements-dev.txt, or leave it out with --parts")
    ensure_reference_db(args)
    folder = tmp / "s3"
    folder.mkdir()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # no line per request on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket = "mida-bench"
        client = boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        ).client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)

        identity = x25519.Identity.generate()
        key_file = folder / "age-identity.txt"
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(str(identity) + "\n")

        base_env = invoke_environment(args, args.database)
        s3_env = dict(BACKUP_STORAGE="s3", BACKUP_S3_BUCKET=bucket, BACKUP_S3_SSE="AES256",
                      AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test",
                      AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                      AWS_CONFIG_FILE=str(folder / "no-aws-config"),
                      AWS_SHARED_CREDENTIALS_FILE=str(folder / "no-aws-credentials"),
                      AWS_EC2_METADATA_DISABLED="true")
        age_env = dict(BACKUP_ENCRYPTION_RECIPIENTS=str(identity.to_public()),
                       BACKUP_ENCRYPTION_IDENTITY_FILE=str(key_file))

        db_size = int(psql(args, args.database, "SELECT pg_database_size(current_database())"))
        print(f"\n== Part 4: backup of {args.database} ({db_size / MIB:.0f} MiB on disk) to "
              f"local disk, to S3 (moto at {endpoint}, a thread of this process) and encrypted, "
              f"{args.rounds} alternating rounds ==", flush=True)
        warm_cache(args)

        def s3_objects() -> list[str]:
            keys = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys += [o["Key"] for o in page.get("Contents", [])]
            return keys

        def empty_bucket() -> None:
            for key in s3_objects():
                client.delete_object(Bucket=bucket, Key=key)
            for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                              UploadId=upload["UploadId"])

        def backup(out: Path, extra_env: dict, s3: bool):
            out.mkdir()
            cpu_before = self_cpu()
            run = measure([sys.executable, "-m", "invoke", "backup"], cwd=args.repo,
                          env=dict(base_env, BACKUP_DIR=str(out), **extra_env),
                          sample_interval=args.sample_interval)
            moto_cpu = self_cpu() - cpu_before   # moto's share of this process (and the sampler)
            try:
                fail_if(run, "invoke backup" + (" to S3" if s3 else ""))
                if s3:
                    keys = s3_objects()
                    names = [k for k in keys if k.endswith(".manifest.json")]
                    if len(names) != 1:
                        raise SystemExit(f"invoke backup left {len(names)} manifests in "
                                         f"s3://{bucket}: {keys}")
                    manifest = json.loads(client.get_object(Bucket=bucket, Key=names[0])
                                          ["Body"].read())
                    artifact_key = names[0].rsplit("/", 1)[0] + "/" + manifest["artifact"]
                    head = client.head_object(Bucket=bucket, Key=artifact_key)
                    size, sse = head["ContentLength"], head.get("ServerSideEncryption")
                    if sse != "AES256":
                        raise SystemExit(f"{artifact_key} has ServerSideEncryption={sse}, "
                                         "not AES256")
                else:
                    manifests = list((out / "bench").glob("*.manifest.json"))
                    if len(manifests) != 1:
                        raise SystemExit(f"invoke backup left {len(manifests)} manifests in "
                                         f"{out}/bench")
                    manifest = json.loads(manifests[0].read_text())
                    size = (out / "bench" / manifest["artifact"]).stat().st_size
                if size != manifest["size"]:
                    raise SystemExit(f"manifest size {manifest['size']} != stored size {size}")
                wanted = "age" if "BACKUP_ENCRYPTION_RECIPIENTS" in extra_env else None
                if manifest.get("encryption") != wanted:
                    raise SystemExit(f"manifest encryption {manifest.get('encryption')!r}, "
                                     f"expected {wanted!r}")
            finally:
                # Delete each run's outputs so neither the disk nor moto's memory fills up.
                shutil.rmtree(out)
                if s3:
                    empty_bucket()
            return run, {"size": size, "moto_cpu": moto_cpu, "manifest": manifest}

        names = ["invoke backup (local)", "invoke backup (S3, SSE AES256)",
                 "invoke backup (local, age)"]
        commands = [(names[0], {}, False), (names[1], s3_env, True), (names[2], age_env, False)]
        results: dict[str, list] = {name: [] for name in names}
        for rnd in range(1, args.rounds + 1):
            for index, (name, extra_env, s3) in enumerate(commands):
                run, extra = backup(folder / f"round{rnd}-cmd{index}", extra_env, s3)
                results[name].append((run, extra))
                note = (f", this process (moto + sampler) CPU {extra['moto_cpu']:.1f} s"
                        if s3 else "")
                print(f"  round {rnd}: {name:<32} {run.seconds:7.1f} s  (CPU {run.cpu_seconds:5.1f}"
                      f" s)  {extra['size'] / MIB:7.1f} MiB  biggest process "
                      f"{mib(run.biggest_kib)}, manifest duration "
                      f"{extra['manifest']['duration_seconds']:.1f} s{note}  [load {loadavg()}]",
                      flush=True)
    finally:
        server.stop()

    report_commands(names, results, names[0], args)
    local = med([r.seconds for r, _ in results[names[0]]])
    s3 = med([r.seconds for r, _ in results[names[1]]])
    age = med([r.seconds for r, _ in results[names[2]]])
    s3_peak = max(r.biggest_kib for r, _ in results[names[1]])
    print(f"\n  S3: moto serves from this process, which used a median "
          f"{med([e['moto_cpu'] for _, e in results[names[1]]]):.1f} s of CPU per S3 backup "
          "(with the RSS sampler's; not counted in the tree's CPU or RSS above, but on 2 cores "
          "it competes with the backup).\n  moto keeps the objects in this process's memory: "
          "wait4's ru_maxrss counts that image (forked before exec), the sampled VmHWM does not.")
    return [
        (f"S3 backup time: {s3:.1f} s / local {local:.1f} s = {s3 / local:.3f}x "
         f"(target <= {S3_RATIO_TARGET}x)", s3 <= S3_RATIO_TARGET * local),
        (f"S3 backup peak RSS: largest process of invoke's tree {mib(s3_peak)} "
         f"(target < {RSS_TARGET_MIB} MiB)", s3_peak < RSS_TARGET_MIB * 1024),
        (f"encryption: encrypted {age:.1f} s / local {local:.1f} s = {age / local:.3f}x "
         f"(target <= {ENCRYPTION_RATIO_TARGET:.2f}x, i.e. at most 10% more)",
         age <= ENCRYPTION_RATIO_TARGET * local),
    ]


def parse_parts(text: str) -> list[int]:
    try:
        parts = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--parts takes numbers like 1,3: not {text!r}")
    if not parts or any(p not in ALL_PARTS for p in parts):
        raise argparse.ArgumentTypeError(f"--parts takes some of {ALL_PARTS}: not {text!r}")
    return parts


def main() -> int:
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
    parser.add_argument("--repo", type=Path, default=REPO,
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
    head = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "?"
    print(f"Python {sys.version.split()[0]} ({sys.executable}), repo {args.repo} (HEAD {head}"
          f"{', snapshot of the working tree' if args.snapshot else ''}), "
          f"{os.cpu_count()} CPUs, parts {','.join(map(str, args.parts))}, "
          f"{args.rounds} round(s)", flush=True)
    checks: list[tuple] = []
    # Not "mida-private-...": the tools sweep unheld ones from TMPDIR (app/ops/leftovers.py).
    with tempfile.TemporaryDirectory(prefix="bench-mida-") as tmpdir:
        tmp = Path(tmpdir)
        if args.snapshot:
            args.repo = copy_project(args.repo, tmp / "snapshot")
        parts = {1: backup_part, 2: startup_part, 3: restore_part, 4: s3_part}
        for number in args.parts:
            checks += parts[number](args, tmp)
    print(f"\nLoad average at the end: {loadavg()} (other work on the machine adds noise)")
    print("\n== Targets ==")
    for text, ok, *kind in checks:
        print(f"  {verdict(ok)}  {text}" + ("  [a goal, not a target: does not change the exit "
                                            "status]" if kind else ""))
    return 0 if all(ok for text, ok, *kind in checks if not kind) else 1


if __name__ == "__main__":
    sys.exit(main())
