"""`invoke watch` and `--watch` on migrate and rollback, end to end, against a throwaway cluster
with pg_stat_statements preloaded (tests/clusters.py), under a steady load that looks users
up by their indexed email. Short WATCH_BASELINE and WATCH_INTERVAL keep each run to seconds;
the verdicts do not depend on timing: a dropped index multiplies the rows read by sequential
scans by thousands, and a lock is held until the test ends it.
"""
from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from helpers import HEAD, add_revision, audit_events, failed, ok, shown
from clusters import Load, fill_users, throwaway

ROWS = 60_000
BENIGN, DROP_INDEX, HOLD_LOCK = "c0ffee000001", "c0ffee000002", "c0ffee000003"
ENV = "watchtest"
TIMING = {"WATCH_BASELINE": "3s", "WATCH_INTERVAL": "1s", "WATCH_LATENCY_MIN": "1ms",
          "WATCH_LOCK_WAIT": "1s"}
REGRESSION = 6


@pytest.fixture(scope="module")
def cluster():
    yield from throwaway("the watch's throwaway cluster", prefix="watch-cluster-", statements=True)


def env_of(url, **extra) -> dict:
    return {"APP_ENV": ENV, "POSTGRES_SERVER": "127.0.0.1", "POSTGRES_PORT": str(url.port),
            "POSTGRES_USER": url.username, "POSTGRES_PASSWORD": url.password,
            "POSTGRES_DB": url.database, **TIMING, **extra}


def add_test_revisions(project, lock: bool = False) -> None:
    """BENIGN on HEAD, then DROP_INDEX on it, or (`lock`) HOLD_LOCK instead: one head."""
    add_revision(project, BENIGN, HEAD, 'op.add_column("users", sa.Column("note", '
                 'sa.String(40), nullable=True))', 'op.drop_column("users", "note")',
                 slug="benign")
    if not lock:
        add_revision(project, DROP_INDEX, BENIGN, 'op.drop_index("ix_users_email", '
                     'table_name="users")', 'op.create_index("ix_users_email", "users", '
                     '["email"], unique=True)', slug="drop_index")
        return
    # A migration that starts a long job which holds a lock on users after it returns (a
    # backfill, say): the API's reads queue behind it.
    add_revision(project, HOLD_LOCK, BENIGN, f'''
        import os, subprocess, sys, time
        ready = os.environ["WATCH_TEST_READY"]
        subprocess.Popen([sys.executable, "-c", {HOLDER!r}, ready], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            assert time.monotonic() < deadline, "the lock holder never took its lock"
            time.sleep(0.05)
    ''', slug="hold_lock")


HOLDER = """
import os, sys, psycopg2
conn = psycopg2.connect(host="127.0.0.1", port=os.environ["POSTGRES_PORT"],
                        user=os.environ["POSTGRES_USER"], password=os.environ["POSTGRES_PASSWORD"],
                        dbname=os.environ["POSTGRES_DB"], application_name="lock-holder")
cur = conn.cursor()
cur.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
open(sys.argv[1], "w").close()
cur.execute("SELECT pg_sleep(300)")
"""


@pytest.fixture
def loaded(cluster, project, request):
    """A database at BENIGN's parent (HEAD) with ROWS users, the test revisions in the
    project, and the load running; yields (url, env, load)."""
    add_test_revisions(project, lock="lock" in request.node.name)
    with cluster.database() as url:
        env = env_of(url)
        ok(project.run("migrate", f"--revision={HEAD}", env=env))
        fill_users(url, ROWS)
        with Load(url, ROWS) as load:
            yield url, env, load
        cluster.admin_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'lock-holder'")


def signals_of(result) -> list[tuple[str, str]]:
    """(signal, state) rows of the verdict table in the plain output."""
    rows, inside = [], False
    for line in result.stdout.splitlines():
        if line.startswith("Watch of env"):
            inside = True
            continue
        if inside and line.startswith("Verdict:"):
            break
        if inside and line.split()[:1] != ["signal"]:
            parts = line.split()
            rows.append((parts[0], next(p for p in parts if p in
                                        ("ok", "regression", "unavailable"))))
    return rows


def indexes(cluster, url) -> set[str]:
    return {r[0] for r in cluster.admin_sql("SELECT indexname FROM pg_indexes WHERE "
                                            "tablename = 'users'", database=url.database)}


def revision(cluster, url) -> str:
    return cluster.admin_sql("SELECT version_num FROM alembic_version",
                             database=url.database)[0][0]


def watches(project) -> list[dict]:
    return [e for e in audit_events(project.store(ENV)) if e["action"] == "watch"]


class TestWatchedMigrate:
    def test_a_benign_migrate_and_rollback_raise_no_alarm_under_steady_load(self, loaded,
                                                                          cluster, project):
        url, env, load = loaded
        with HealthServer(200) as health:
            env = {**env, "WATCH_HEALTH_URL": health.url}
            for _ in range(3):  # no false alarm, run after run
                result = ok(project.run("migrate", f"--revision={BENIGN}", "--watch=5s",
                                        env=env))
                assert "Verdict: ok" in result.stdout, shown(result)
                assert {state for _, state in signals_of(result)} == {"ok"}, shown(result)
                assert {name for name, _ in signals_of(result)} >= {
                    "statement_latency", "seq_scan_rows", "rollbacks", "deadlocks",
                    "lock_waits", "replica_lag", "health_url"}, shown(result)
                assert revision(cluster, url) == BENIGN
                ok(project.run("rollback", "--watch=5s", env=env))
                assert revision(cluster, url) == HEAD
        assert load.queries > 100
        events = audit_events(project.store(ENV))
        migrates = [e for e in events if e["action"] == "migrate" and e["to_revision"] == BENIGN]
        assert len(migrates) == 3 and all(e.get("watch_baseline") for e in migrates)
        assert [e["outcome"] for e in watches(project)] == ["ok"] * 6
        baselines = sorted(project.store(ENV).glob("*.watch-baseline.json"))
        assert {b.name for b in baselines} == {e["watch_baseline"] for e in events
                                               if e["action"] in ("migrate", "rollback")
                                               and e.get("watch_baseline")}

    def test_a_dropped_index_is_a_regression_with_the_commands_that_undo_it(self, loaded,
                                                                           cluster, project):
        url, env, _ = loaded
        ok(project.run("migrate", f"--revision={BENIGN}", env=env))
        before = project.backups(ENV, env=env)
        result = project.run("migrate", f"--revision={DROP_INDEX}", "--watch=30s", env=env)
        error = failed(result, REGRESSION, "public.users", "index may be missing")
        assert "SELECT id, full_name FROM users WHERE email = $1" in result.stdout, shown(result)
        backup = project.backups(ENV, env=env)[0]
        assert backup["reason"] == f"before migrate {BENIGN} -> {DROP_INDEX}"
        rollback = f"invoke rollback --env={ENV} --to={BENIGN}"
        restore = f"invoke restore --env={ENV} --backup={backup['id']} --yes"
        assert rollback in result.stdout and restore in result.stdout, shown(result)
        assert rollback in error
        # The watch changed nothing: the change stays in, no backup or rollback of its own.
        assert revision(cluster, url) == DROP_INDEX
        assert "ix_users_email" not in indexes(cluster, url)
        assert len(project.backups(ENV, env=env)) == len(before) + 1
        event = watches(project)[-1]
        assert event["outcome"] == "regression" and event["backup_id"] == backup["id"]
        assert any(s["name"] == "seq_scan_rows" and s["state"] == "regression"
                   for s in event["signals"])

        # The same baseline, from a pipeline: the contract's JSON and exit 6.
        again = project.run("watch", "--for=30s", "--json", env=env)
        assert again.returncode == REGRESSION, shown(again)
        report = json.loads(again.stdout)
        assert set(report) == {"env", "verdict", "baseline_at", "watched_seconds", "signals",
                               "undo"}
        assert report["verdict"] == "regression" and report["env"] == ENV
        assert report["undo"] == [rollback, restore]
        assert all(set(s) == {"name", "state", "baseline", "now", "detail"}
                   for s in report["signals"])
        assert {s["state"] for s in report["signals"]} <= {"ok", "regression", "unavailable"}

        check = project.run("check", env=env)
        assert check.returncode == 1, shown(check)
        first, *lines = check.stdout.splitlines()
        assert first.startswith("WARNING: ") and "regression" in first, shown(check)
        assert [line.split(":")[0] for line in lines if line.startswith("WARNING")] == [
            "WARNING last_watch"], shown(check)
        status = ok(project.run("status", "--json", env=env))
        assert json.loads(status.stdout)["last_watch"]["verdict"] == "regression"

        # The rollback that recreates the index, watched: its baseline is the slow state.
        back = ok(project.run("rollback", "--watch=5s", env=env))
        assert "Verdict: ok" in back.stdout, shown(back)
        assert "ix_users_email" in indexes(cluster, url)
        assert watches(project)[-1]["outcome"] == "ok"
        assert ok(project.run("check", env=env)).stdout.startswith("OK: ")

    def test_a_lock_the_load_waits_on_is_a_regression_naming_the_blocker(self, loaded,
                                                                         project, tmp_path):
        url, env, _ = loaded
        env = {**env, "WATCH_TEST_READY": str(tmp_path / "lock-held")}
        ok(project.run("migrate", f"--revision={BENIGN}", env=env))
        result = project.run("migrate", f"--revision={HOLD_LOCK}", "--watch=30s", env=env)
        failed(result, REGRESSION, "waiting on a lock on users", "blocked by pid", "pg_sleep($?)")
        assert watches(project)[-1]["outcome"] == "regression"

    def test_without_a_watch_a_migrate_takes_no_baseline(self, loaded, project):
        _, env, _ = loaded
        result = ok(project.run("migrate", f"--revision={BENIGN}", env=env))
        assert "baseline" not in result.stderr + result.stdout
        assert not list(project.store(ENV).glob("*.watch-*.json"))
        assert not watches(project)


def test_without_pg_stat_statements_the_watch_says_so_once_and_still_sees_seq_scans(
        cluster, project):
    add_test_revisions(project)
    with cluster.database(statements=False) as url:
        env = env_of(url)
        ok(project.run("migrate", f"--revision={BENIGN}", env=env))
        fill_users(url, ROWS)
        with Load(url, ROWS):
            result = project.run("migrate", f"--revision={DROP_INDEX}", "--watch=30s", env=env)
    failed(result, REGRESSION, "public.users", "index may be missing")
    assert result.stderr.count("pg_stat_statements is not installed") == 1, shown(result)
    assert "CREATE EXTENSION pg_stat_statements" in result.stderr
    assert ("statement_latency", "unavailable") in signals_of(result), shown(result)


def test_the_watch_reads_on_a_read_only_connection(cluster):
    """The sampler's session cannot write, whatever a bug in the watch would ask."""
    from sqlalchemy.exc import DBAPIError

    from app.ops.commands.watch.sampler import APPLICATION_NAME, PostgresSampler
    with cluster.database() as url:
        sampler = PostgresSampler(url, None, time.monotonic, 1.0)
        sampler.open()
        try:
            assert sampler.sample().unreadable == {}
            with pytest.raises(DBAPIError, match="read-only"):
                sampler.conn.exec_driver_sql("CREATE TABLE written (id int)")
            names = cluster.admin_sql("SELECT application_name FROM pg_stat_activity "
                                      "WHERE datname = :d", d=url.database)
            assert (APPLICATION_NAME,) in names
        finally:
            sampler.close()


class HealthServer:
    """The application's health endpoint: answers `status` (changeable) to every GET."""

    def __init__(self, status: int):
        self.status = status
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(owner.status)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/health"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_watch_for_with_a_health_url_on_sqlite(project):
    """SQLite: the health URL only, said plainly; 500 in a row is exit 6, 200 is 0."""
    with HealthServer(200) as health:
        env = {**TIMING, "WATCH_HEALTH_URL": health.url, "WATCH_HEALTH_FAILURES": "2"}
        recorded = ok(project.run("watch", "--baseline", env=env))
        assert "Baseline " in recorded.stdout and "SQLite" in recorded.stderr
        assert ok(project.run("watch", "--for=3s", env=env)).stdout.count("Verdict: ok") == 1
        health.status = 500
        result = project.run("watch", "--for=20s", env=env)
        failed(result, REGRESSION, "health URL failed 2 times in a row", "HTTP 500")
        assert "only the application's health URL" in result.stderr
        assert "undo the deploy" in result.stdout
    events = [e for e in audit_events(project.store("dev")) if e["action"] == "watch"]
    assert [e["outcome"] for e in events] == ["ok", "regression"]
    status = ok(project.run("status", env=env)).stdout
    assert [line.split()[:4] for line in status.splitlines() if "last watch" in line] == [
        ["last", "watch", "regression", "at"]], status


def test_a_watch_with_nothing_to_read_or_bad_settings_is_refused(project):
    """Exit 2 before anything runs: no migrate, no baseline, no database file."""
    failed(project.run("watch", "--for=3s"), 2, "WATCH_HEALTH_URL is not set")
    failed(project.run("migrate", "--watch=1m"), 2, "WATCH_HEALTH_URL is not set")
    failed(project.run("migrate", "--watch=soon", env={"WATCH_HEALTH_URL": "http://x/"}), 2,
           "--watch 'soon' is not a duration")
    failed(project.run("watch", "--for=3s", env={"WATCH_HEALTH_URL": "http://127.0.0.1:1/",
                                                "WATCH_LATENCY_FACTOR": "fast"}),
           2, "WATCH_LATENCY_FACTOR 'fast'")
    failed(project.run("watch", "--for=3s", env={"WATCH_HEALTH_URL": "http://127.0.0.1:1/"}),
           2, "no baseline is recorded for env 'dev'")
    assert not (project.root / "dev.db").exists()
    assert project.backup_files("dev") == set()


def test_sigterm_ends_a_watch_cleanly_and_it_is_audited_as_stopped(project):
    import signal

    with HealthServer(200) as health:
        env = {**TIMING, "WATCH_HEALTH_URL": health.url}
        ok(project.run("watch", "--baseline", env=env))
        proc = project.start("watch", "--for=5m", env=env)
        try:
            # The first interval's line says the watch is sampling: then stop it.
            for line in proc.stderr:
                if "s watched," in line:
                    break
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in out + err
    assert [l for l in err.splitlines() if l.startswith("ERROR:")] == [
        "ERROR: stopped by SIGTERM; nothing further was done"], err
    events = [e for e in audit_events(project.store("dev")) if e["action"] == "watch"]
    assert [e["outcome"] for e in events] == ["stopped"]
