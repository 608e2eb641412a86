"""End to end on a real PostgreSQL server: `invoke` runs as a subprocess against a fresh database
owned by a non-superuser role whose password is full of awkward characters. Every test checks
the state afterwards: the database's revision, tables and columns, the listed backups, and that
the password leaked nowhere.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, pool, text

from fake_tools import ended_afterwards, fake_pg_bin, fifo_pair, started_and_parked
from helpers import (FIRST, HEAD, admin_url, advisory_locks_held, assert_no_password, failed, ok,
                     pg_env)

pytestmark = pytest.mark.postgres


# -- helpers ---------------------------------------------------------------------------------


def assert_no_password_in_store(project) -> None:
    for path in project.store("pgtest").glob("*.json"):
        assert_no_password(path.read_text())


def url_env(db) -> dict:
    return {"APP_ENV": "pgtest", "DATABASE_URL": db.url.render_as_string(hide_password=False)}


def query_url_env(db) -> dict:
    """The password in the URL's query string, which libpq accepts (issue 18)."""
    from urllib.parse import quote_plus

    from sqlalchemy.engine import URL
    u = db.url
    plain = URL.create(u.drivername, u.username, None, u.host, u.port, u.database)
    return {"APP_ENV": "pgtest", "DATABASE_URL": plain.render_as_string(hide_password=False)
            + f"?password={quote_plus(u.password)}"}


def users_columns(db) -> list[str]:
    return db.columns("users")


def parked_pg_dump(tmp_path) -> tuple[Path, Path, Path]:
    """A PG_BIN_DIR whose pg_dump says 'started' on one FIFO, then waits for a line on another
    before running the real pg_dump."""
    started, go = fifo_pair(tmp_path)
    bin_dir = fake_pg_bin(tmp_path / "parked-bin", pg_dump=f"""if [ "$1" != "--version" ]; then
  echo started > '{started}'
  read -r _ < '{go}'
fi
exec "$REAL" "$@"
""")
    return bin_dir, started, go


class ScratchDatabase:
    """An empty database created (and dropped) as the admin, to restore a backup into by hand."""

    def __init__(self, admin):
        self.admin = admin
        self.name = f"mida_scratch_{secrets.token_hex(4)}"

    def __enter__(self):
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        return self

    def __exit__(self, *exc):
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    def sql(self, statement: str):
        engine = create_engine(admin_url().set(database=self.name), poolclass=pool.NullPool)
        try:
            with engine.connect() as conn:
                return conn.execute(text(statement)).fetchall()
        finally:
            engine.dispose()


# -- the release round trip, both ways of naming the database --------------------------------
@pytest.mark.parametrize("settings", ["POSTGRES_settings", "DATABASE_URL",
                                      "DATABASE_URL?password="])
def test_round_trip_with_an_awkward_password(project, pg_database, settings):
    db = pg_database
    env = {"POSTGRES_settings": pg_env, "DATABASE_URL": url_env,
           "DATABASE_URL?password=": query_url_env}[settings](db)

    ok(project.run("migrate", env=env))
    assert db.revision() == HEAD
    assert "phone_number" in users_columns(db)
    assert [i["revision"] for i in project.backups("pgtest", env=env)] == [None]

    info = json.loads(ok(project.run("status", "--json", env=env)).stdout)
    assert info["env"] == "pgtest"
    assert info["current"] == HEAD and info["heads"] == [HEAD] and info["pending"] == []
    assert "***" in info["database"] and db.name in info["database"]
    assert info["production"] is False
    assert info["last_backup"]["revision"] is None
    status_text = ok(project.run("status", env=env)).stdout
    assert HEAD in status_text and "***" in status_text

    ok(project.run("rollback", env=env))
    assert db.revision() == FIRST
    assert "phone_number" not in users_columns(db)
    assert [i["revision"] for i in project.backups("pgtest", env=env)] == [HEAD, None]

    ok(project.run("migrate", env=env))
    assert db.revision() == HEAD
    assert "phone_number" in users_columns(db)
    items = project.backups("pgtest", env=env)
    assert [i["revision"] for i in items] == [FIRST, HEAD, None]
    for item in items:
        assert Path(item["location"]).is_file()
        assert item["env"] == "pgtest"

    assert_no_password_in_store(project)
    assert list(project.store("pgtest").glob("*.audit.json"))


def test_nothing_pending_takes_no_backup(project, pg_database):
    env = pg_env(pg_database)
    ok(project.run("migrate", env=env))
    before = project.backups("pgtest", env=env)
    result = ok(project.run("migrate", env=env))
    assert "Nothing" in result.stdout
    assert project.backups("pgtest", env=env) == before
    assert pg_database.revision() == HEAD


def test_a_backup_restores_by_hand_with_standard_tools(project, pg_database):
    db = pg_database
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    db.sql("INSERT INTO users (email, hashed_password, phone_number) "
           "VALUES ('ada@example.org', 'x', '+44 20 7946 0000')")
    ok(project.run("rollback", env=env))
    item = project.backups("pgtest", env=env)[0]
    assert item["revision"] == HEAD

    admin = admin_url()
    pg_restore = shutil.which("pg_restore")
    with ScratchDatabase(db.admin) as scratch:
        restored = subprocess.run(
            ["bash", "-o", "pipefail", "-c",
             f'zstd -dc "$1" | {pg_restore} --no-owner -h "$2" -p "$3" -U "$4" -d "$5"', "_",
             item["location"], admin.host or "127.0.0.1", str(admin.port or 5432),
             admin.username, scratch.name],
            capture_output=True, text=True, timeout=120)
        assert restored.returncode == 0, restored.stderr
        tables = {r[0] for r in scratch.sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert tables == {"users", "alembic_version"}
        assert scratch.sql("SELECT version_num FROM alembic_version") == [(HEAD,)]
        assert scratch.sql("SELECT email, phone_number FROM users") == \
            [("ada@example.org", "+44 20 7946 0000")]
    # The live database was rolled back meanwhile; the backup did not follow it.
    assert db.revision() == FIRST


# -- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize("where", [{"POSTGRES_PORT": "1"},
                                   {"POSTGRES_SERVER": "no-such-host.invalid"}])
def test_an_unreachable_server_is_one_line_and_no_backup(project, pg_database, where):
    env = pg_env(pg_database, **where)
    failed(project.run("migrate", env=env), 2)
    assert not any(n.endswith((".zst", ".manifest.json")) for n in project.backup_files("pgtest"))
    failed(project.run("status", env=env), 2)
    assert pg_database.revision() is None


def test_status_json_of_an_unreachable_server_is_one_line(project, pg_database):
    failed(project.run("status", "--json", env=pg_env(pg_database, POSTGRES_PORT="1")), 2)
    assert pg_database.tables() == set()


def test_a_second_migrate_is_refused_while_the_first_holds_the_lock(project, pg_database,
                                                                   tmp_path):
    """Two real invoke runs: the first is parked inside its pg_dump (a wrapper that waits on a
    FIFO), so it holds the lock; the second must be refused, told who holds it, and change
    nothing. Then the first is let go and finishes normally."""
    db = pg_database
    ok(project.run("migrate", f"--revision={FIRST}", env=pg_env(db)))
    before = project.backups("pgtest", env=pg_env(db))

    bin_dir, started, go = parked_pg_dump(tmp_path)
    env = pg_env(db, PG_BIN_DIR=str(bin_dir))
    first, _ = started_and_parked(project, started, "migrate", env=env)
    with ended_afterwards(first):
        failed(project.run("migrate", env=env), 3, f"pid {first.pid}", db.role)
        assert db.revision() == FIRST
        assert "phone_number" not in users_columns(db)
        with open(go, "w") as release:
            release.write("go\n")
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    assert db.revision() == HEAD
    items = project.backups("pgtest", env=pg_env(db))
    assert len(items) == len(before) + 1 and items[0]["revision"] == FIRST


def test_a_killed_migrate_leaves_no_lock_behind(project, pg_database, tmp_path):
    """SIGKILL a migrate while it holds the lock (parked in its pg_dump): its lock session dies
    with it, so the next migrate runs, with nothing changed by the killed one."""
    db = pg_database
    ok(project.run("migrate", f"--revision={FIRST}", env=pg_env(db)))
    bin_dir, started, _go = parked_pg_dump(tmp_path)
    first, _ = started_and_parked(project, started, "migrate",
                                  env=pg_env(db, PG_BIN_DIR=str(bin_dir)))
    # The lock is held, by a session that names the run: the one the kill must end.
    assert advisory_locks_held(db) == 1
    assert db.admin_sql("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                        f"LIKE '%pid {first.pid} %'")[0][0] >= 1
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # The server notices the closed connection on its own; wait for that condition, bounded.
    deadline = time.monotonic() + 30
    while db.admin_sql("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                       f"LIKE '%pid {first.pid} %'")[0][0]:
        assert time.monotonic() < deadline, "the killed run's lock session never went away"
    assert db.revision() == FIRST
    ok(project.run("migrate", env=pg_env(db)))
    assert db.revision() == HEAD


def test_a_pg_dump_failure_shows_the_servers_reason_and_its_detail(project, pg_database):
    """PostgreSQL 15's pg_dump ends with a `detail:` line (the query it ran): the `error:` line
    before it holds the reason, and the message must show both."""
    db = pg_database
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    listed = project.backups("pgtest", env=env)
    # A table the backup's role cannot read, made by the admin inside its database.
    engine = create_engine(admin_url().set(database=db.name), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE scanner_secrets (id int)"))
            conn.execute(text("REVOKE ALL ON scanner_secrets FROM PUBLIC"))
    finally:
        engine.dispose()

    line = failed(project.run("backup", env=env), 4, "pg_dump failed",
                  "permission denied for table scanner_secrets", "LOCK TABLE")
    assert line.index("permission denied") < line.index("LOCK TABLE"), line
    assert project.backups("pgtest", env=env) == listed
