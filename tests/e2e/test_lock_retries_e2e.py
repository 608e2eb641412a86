"""End to end: a migration that meets live load. Another session holds a row of `users`
FOR UPDATE (an API request in its transaction) while the API keeps writing other rows. The
migration's ALTER TABLE waits at most MIGRATION_LOCK_TIMEOUT, in every env, so the writes queued
behind it never stall longer than that; then it is rolled back and retried after a pause,
MIGRATION_LOCK_RETRIES times.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, pool, text

from helpers import FIRST, HEAD, HeldLock, failed, ok, pg_env, shown

RETRY_LINE = re.compile(r"^WARNING: .*attempt (\d+) of (\d+).*retrying in", re.M)


def row_holder(db) -> HeldLock:
    """An API request inside its transaction, holding Ada's row FOR UPDATE (ROW SHARE on users:
    the migration's ACCESS EXCLUSIVE must wait for it)."""
    return HeldLock(db, "SELECT id FROM users WHERE email = 'ada@example.org' FOR UPDATE")


class Writer(threading.Thread):
    """The API writing Grace's row, over and over; a watcher on the server records whether a
    write was ever queued behind the migration's ALTER TABLE (pg_blocking_pids), which is what
    MIGRATION_LOCK_TIMEOUT bounds. Not timed: a wall-clock bound fails on a busy machine."""

    def __init__(self, db):
        super().__init__(daemon=True)
        self.engine = create_engine(db.url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
        self.admin = db.admin
        self.stop = threading.Event()
        self.writes = 0
        self.queued_behind_alter = False
        self.pid: int | None = None
        self.error: Exception | None = None
        self.watcher = threading.Thread(target=self._watch, daemon=True)

    def run(self) -> None:
        try:
            with self.engine.connect() as conn:
                self.pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
                self.watcher.start()
                while not self.stop.is_set():
                    self.writes += 1
                    conn.execute(text("UPDATE users SET full_name = :n "
                                      "WHERE email = 'grace@example.org'"),
                                 {"n": f"Grace {self.writes}"})
                    self.stop.wait(0.02)  # pacing of the API's writes, not synchronisation
        except Exception as exc:  # reported by finish()
            self.error = exc
        finally:
            self.engine.dispose()

    def _watch(self) -> None:
        with self.admin.connect() as conn:
            while not self.stop.is_set() and not self.queued_behind_alter:
                self.queued_behind_alter = bool(conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY("
                    "pg_blocking_pids(:p)) AND query ILIKE 'ALTER TABLE users%'"),
                    {"p": self.pid}).scalar())
                self.stop.wait(0.005)  # the sampling rate of the watch

    def finish(self) -> "Writer":
        self.stop.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the writer is still blocked"
        assert self.error is None, self.error
        self.watcher.join(timeout=60)
        return self


class Run:
    """`invoke ARGS` started in the background, its stderr read line by line as it comes."""

    def __init__(self, project, *args: str, env: dict):
        self.proc = project.start(*args, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            self.lines.put(line)

    def wait_for_line(self, pattern: re.Pattern, timeout: float) -> str | None:
        """The first stderr line matching `pattern`, or None if the run ends (or `timeout`
        passes) without one."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and not self.reader.is_alive():
                    return None
                continue
            if pattern.search(line):
                return line
        return None

    def finish(self, timeout: float = 90) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.reader.join(timeout=10)
            pytest.fail(f"invoke still ran after {timeout:.0f} s and was killed:\n"
                        + "".join(self.err))
        self.reader.join(timeout=10)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode,
                                           self.proc.stdout.read(), "".join(self.err))


def users_db(project, db, env):
    ok(project.run("migrate", f"--revision={FIRST}", env=env))
    db.sql("INSERT INTO users (email, hashed_password) VALUES ('ada@example.org', 'x'), "
           "('grace@example.org', 'x')")


def live_env(db, **extra) -> dict:
    # Not production: lock_timeout now applies in every env.
    settings = {"MIGRATION_LOCK_TIMEOUT": "200ms", "MIGRATION_LOCK_RETRY_DELAY": "300ms"}
    settings.update(extra)
    return pg_env(db, **settings)


def assert_writes_never_stalled(writer: Writer, result) -> None:
    """The writes did queue behind the migration's ALTER TABLE, and each attempt of it gave up
    on the server's lock_timeout (55P03, MIGRATION_LOCK_TIMEOUT = 200ms, as the warnings say),
    which is how long a write queued behind it can wait; the API kept writing meanwhile."""
    assert writer.queued_behind_alter, "no write ever queued: the holder did not block the ALTER"
    assert writer.writes > 10, f"the writer hardly wrote: {writer.writes}"
    attempts = [m.group(0) for m in RETRY_LINE.finditer(result.stderr)]
    assert attempts and all("MIGRATION_LOCK_TIMEOUT (200ms)" in line for line in attempts), \
        shown(result)


@pytest.mark.postgres
@pytest.mark.parametrize("action", ["migrate", "rollback"])
def test_a_busy_table_is_retried_and_the_release_succeeds_once_the_holder_lets_go(
        project, pg_database, action):
    db = pg_database
    env = live_env(db)
    users_db(project, db, env)
    if action == "rollback":
        ok(project.run("migrate", env=env))
    expected_after = FIRST if action == "rollback" else HEAD

    writer = Writer(db)
    writer.start()
    holder = row_holder(db)
    try:
        run = Run(project, action, env=env)
        retry = run.wait_for_line(RETRY_LINE, timeout=60)
        holder.release()  # the API request ends once the first attempt has given up
        result = run.finish()
    finally:
        holder.release()
        writer.finish()

    assert retry is not None, shown(result)
    assert RETRY_LINE.search(retry).groups() == ("1", "4"), retry
    assert "MIGRATION_LOCK_TIMEOUT (200ms)" in retry and "ALTER TABLE users" in retry, retry
    ok(result)
    assert db.revision() == expected_after
    assert ("phone_number" in db.columns("users")) == (action == "migrate")
    assert sorted(r[0] for r in db.sql("SELECT email FROM users")) == \
        ["ada@example.org", "grace@example.org"]
    assert_writes_never_stalled(writer, result)


@pytest.mark.postgres
def test_a_table_that_stays_busy_fails_after_the_last_retry_with_nothing_changed(
        project, pg_database):
    db = pg_database
    env = live_env(db, MIGRATION_LOCK_RETRIES="2", MIGRATION_LOCK_RETRY_DELAY="100ms")
    users_db(project, db, env)
    before = project.backups("pgtest", env=env)

    writer = Writer(db)
    writer.start()
    holder = row_holder(db)
    try:
        run = Run(project, "migrate", env=env)
        result = run.finish()
    finally:
        holder.release()
        writer.finish()

    message = failed(result, 5, "MIGRATION_LOCK_TIMEOUT (200ms)", "3 attempts",
                     "ALTER TABLE users ADD COLUMN phone_number")
    assert [m.groups() for m in RETRY_LINE.finditer(result.stderr)] == \
        [("1", "3"), ("2", "3")], shown(result)
    # Nothing changed, and the backup taken before the first attempt is there, named.
    assert db.revision() == FIRST
    assert "phone_number" not in db.columns("users")
    items = project.backups("pgtest", env=env)
    assert len(items) == len(before) + 1
    taken = items[0]
    assert taken["revision"] == FIRST and taken["verified"] is True
    assert Path(taken["location"]).is_file()
    assert taken["id"] in message
    events = json.loads(ok(project.run("audit", "--json", env=env)).stdout)
    assert events[0]["action"] == "migrate" and events[0]["outcome"] == "failed"
    assert_writes_never_stalled(writer, result)


@pytest.mark.postgres
@pytest.mark.parametrize("setting,value", [("MIGRATION_LOCK_RETRIES", "-1"),
                                           ("MIGRATION_LOCK_RETRIES", "three"),
                                           ("MIGRATION_LOCK_RETRY_DELAY", "soon")])
def test_a_malformed_retry_setting_is_bad_input_before_any_backup(project, pg_database,
                                                                   setting, value):
    db = pg_database
    env = live_env(db)
    users_db(project, db, env)
    before = project.backups("pgtest", env=env)
    failed(project.run("migrate", env=dict(env, **{setting: value})), 2, setting, value)
    assert db.revision() == FIRST
    assert project.backups("pgtest", env=env) == before
