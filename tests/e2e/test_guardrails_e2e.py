"""The release guardrails end to end: `invoke` runs as a subprocess in a copy of the project (SQLite
files for dev/staging/prod, a real PostgreSQL database for lock timeouts and rehearsals). Every
test checks the state left behind: revisions, columns, backups listed, files in the store, the
audit trail, and the scratch databases that must be gone.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from fake_tools import ended_afterwards, fake_pg_bin, fifo_pair, started_and_parked
from helpers import (FIRST, HEAD, HeldLock, add_revision, derived_databases, edit_manifest, failed,
                     ok, open_window, pg_env, prod_at, shown, sqlite_state, store_files, window_covering)


# -- helpers ---------------------------------------------------------------------------------


def warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("WARNING:")]


# -- several heads ---------------------------------------------------------------------------
BRANCH_A, BRANCH_B = "b1a1a1a1a1a1", "b2b2b2b2b2b2"


def test_several_heads_refuse_migrate_until_merged(project):
    ok(project.run("migrate"))
    dev = project.root / "dev.db"
    add_revision(project, BRANCH_A, HEAD,
                 'op.add_column("users", sa.Column("nickname", sa.String(50), nullable=True))',
                 'op.drop_column("users", "nickname")', "Add nickname to users")
    add_revision(project, BRANCH_B, HEAD,
                 'op.create_table("studies", sa.Column("id", sa.Integer(), primary_key=True))',
                 'op.drop_table("studies")', "Create the studies table")
    before, backups_before = sqlite_state(dev), project.backups()

    failed(project.run("migrate"), 2, BRANCH_A, BRANCH_B, "invoke merge")
    assert sqlite_state(dev) == before
    assert project.backups() == backups_before

    result = ok(project.run("merge"))
    [(merge, where)] = re.findall(r"Created merge revision (\w+) at (\S+)", result.stdout)
    merge_file = Path(where)
    assert merge_file.parent == project.root / "alembic" / "versions"
    source = merge_file.read_text()
    assert BRANCH_A in source and BRANCH_B in source
    status = json.loads(ok(project.run("status", "--json")).stdout)
    assert status["heads"] == [merge]
    assert set(status["pending"]) == {BRANCH_A, BRANCH_B, merge}
    assert status["pending"][-1] == merge

    ok(project.run("migrate"))
    after = sqlite_state(dev)
    assert after["revision"] == merge
    assert "nickname" in after["tables"]["users"]
    assert "studies" in after["tables"]
    items = project.backups()
    assert len(items) == len(backups_before) + 1
    assert items[0]["revision"] == HEAD


# -- a downgrade that does nothing -----------------------------------------------------------
EMPTY_DOWN = "e0e0e0e0e0e0"


def add_empty_downgrade_revision(project) -> None:
    add_revision(project, EMPTY_DOWN, HEAD,
                 'op.add_column("users", sa.Column("notes", sa.Text(), nullable=True))',
                 "pass", "Add notes to users")


def test_an_empty_downgrade_is_refused_in_production_unless_break_glass(project):
    prod = prod_at(project, HEAD, MAINTENANCE_WINDOW=open_window())
    add_empty_downgrade_revision(project)
    before = sqlite_state(prod)

    failed(project.run("migrate", "--env=prod"), 3, EMPTY_DOWN, "downgrade")
    assert sqlite_state(prod) == before
    assert project.backups("prod") == []
    assert store_files(project.store("prod")) == {} or not any(
        n.endswith(".zst") for n in store_files(project.store("prod")))

    reason = "CHG-7 notes column, rollback is a restore"
    result = ok(project.run("migrate", "--env=prod", "--break-glass", reason))
    assert any("downgrade" in w and EMPTY_DOWN in w for w in warnings(result)), shown(result)
    assert sqlite_state(prod)["revision"] == EMPTY_DOWN
    assert "notes" in sqlite_state(prod)["tables"]["users"]
    [item] = project.backups("prod")
    assert item["revision"] == HEAD
    events = json.loads(ok(project.run("audit", "--env=prod", "--json")).stdout)
    assert [e.get("break_glass") for e in events if e.get("break_glass")] == [reason]


def test_an_empty_downgrade_in_dev_is_a_warning(project):
    ok(project.run("migrate"))
    add_empty_downgrade_revision(project)
    result = ok(project.run("migrate"))
    assert any("downgrade" in w and EMPTY_DOWN in w for w in warnings(result)), shown(result)
    assert sqlite_state(project.root / "dev.db")["revision"] == EMPTY_DOWN
    assert [i["revision"] for i in project.backups()] == [HEAD]


# -- risky operations ------------------------------------------------------------------------
DROPS = "d0d0d0d0d0d0"


@pytest.mark.parametrize("env_name", ["dev", "prod"])
def test_a_risky_operation_is_a_warning_on_migrate(project, env_name):
    if env_name == "prod":
        db = prod_at(project, HEAD, MAINTENANCE_WINDOW=open_window())
    else:
        ok(project.run("migrate"))
        db = project.root / "dev.db"
    add_revision(project, DROPS, HEAD, 'op.drop_column("users", "full_name")',
                 'op.add_column("users", sa.Column("full_name", sa.String(255), nullable=True))',
                 "Drop full_name from users")
    result = ok(project.run("migrate", f"--env={env_name}"))
    assert any("drops a column" in w and DROPS in w for w in warnings(result)), shown(result)
    state = sqlite_state(db)
    assert state["revision"] == DROPS
    assert "full_name" not in state["tables"]["users"]
    assert [i["revision"] for i in project.backups(env_name)] == [HEAD]


# -- staging first ---------------------------------------------------------------------------
def test_production_waits_for_staging_to_reach_the_target(project):
    project.env_file("staging", USE_SQLITE="True", SQLITE_PATH="staging.db")
    project.env_file("prod", USE_SQLITE="True", REQUIRE_STAGING_FIRST="staging",
                     MAINTENANCE_WINDOW=open_window(), BACKUP_ENCRYPTION="optional")
    staging, prod = project.root / "staging.db", project.root / "prod.db"
    ok(project.run("migrate", "--env=staging", f"--revision={FIRST}"))
    ok(project.run("migrate", "--env=prod", f"--revision={FIRST}"))  # staging is there: allowed
    assert sqlite_state(prod)["revision"] == FIRST
    before, prod_backups = sqlite_state(prod), project.backups("prod")

    failed(project.run("migrate", "--env=prod"), 3, "has not reached", HEAD, "staging")
    assert sqlite_state(prod) == before
    assert project.backups("prod") == prod_backups
    assert sqlite_state(staging)["revision"] == FIRST

    ok(project.run("migrate", "--env=staging"))
    assert sqlite_state(staging)["revision"] == HEAD
    ok(project.run("migrate", "--env=prod"))
    assert sqlite_state(prod)["revision"] == HEAD
    assert [i["revision"] for i in project.backups("prod")] == [FIRST] + \
        [i["revision"] for i in prod_backups]


def test_production_refuses_when_the_staging_env_cannot_be_read(project):
    prod = prod_at(project, FIRST, REQUIRE_STAGING_FIRST="stagign",
                   MAINTENANCE_WINDOW=open_window())
    before = sqlite_state(prod)
    failed(project.run("migrate", "--env=prod"), 3, "stagign")
    assert sqlite_state(prod) == before
    assert project.backups("prod") == []


def test_production_refuses_when_staging_resolves_to_its_own_database(project):
    """A database setting in the process environment outranks every env's files, so staging's
    revision would be read from production's own database: refused, saying why, instead of
    "has not reached staging" about a staging that has."""
    prod = prod_at(project, FIRST, REQUIRE_STAGING_FIRST="staging",
                   MAINTENANCE_WINDOW=open_window())
    project.env_file("staging", USE_SQLITE="True", SQLITE_PATH="staging.db")
    ok(project.run("migrate", "--env=staging"))
    assert sqlite_state(project.root / "staging.db")["revision"] == HEAD
    before = sqlite_state(prod)
    error = failed(project.run("migrate", "--env=prod", env={"SQLITE_PATH": "prod.db"}), 3,
                   "env 'staging' resolves to the same database as env 'prod'", "prod.db",
                   "process environment")
    assert "has not reached" not in error
    assert sqlite_state(prod) == before
    assert project.backups("prod") == []
    ok(project.run("migrate", "--env=prod"))  # each env's own file: staging is there
    assert sqlite_state(prod)["revision"] == HEAD


# -- will it fit in the window? --------------------------------------------------------------
def test_a_run_that_would_not_fit_the_window_is_refused_unless_break_glass(project):
    prod = prod_at(project, FIRST, MAINTENANCE_WINDOW=open_window())
    ok(project.run("backup", "--env=prod"))
    [history] = project.backups("prod")
    edit_manifest(project, history["id"], "prod", database_size=1000,
                  duration_seconds=100000)  # 0.01 bytes per second

    now = datetime.now(UTC)
    project.env_file("prod", USE_SQLITE="True", BACKUP_ENCRYPTION="optional",
                     MAINTENANCE_WINDOW=window_covering(now - timedelta(hours=1),
                                                        now + timedelta(minutes=2)))
    before = sqlite_state(prod)
    expected = f"~{prod.stat().st_size / (1000 / 100000):.0f} s"
    failed(project.run("migrate", "--env=prod"), 3, "would likely not finish", expected)
    assert sqlite_state(prod) == before
    assert [i["id"] for i in project.backups("prod")] == [history["id"]]

    reason = "INC-99 the estimate is from a fake history"
    result = ok(project.run("migrate", "--env=prod", "--break-glass", reason))
    assert "BREAK GLASS" in result.stderr
    assert sqlite_state(prod)["revision"] == HEAD
    items = project.backups("prod")
    assert len(items) == 2 and items[0]["revision"] == FIRST
    events = json.loads(ok(project.run("audit", "--env=prod", "--json")).stdout)
    [event] = [e for e in events if e.get("break_glass")]
    assert event["break_glass"] == reason
    assert event["action"] == "migrate" and event["outcome"] == "succeeded"
    assert event["from_revision"] == FIRST and event["to_revision"] == HEAD
    assert event["backup_id"] == items[0]["id"]


# -- migrate --sql ---------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_migrate_sql_prints_only_the_pending_sql_and_changes_nothing(project, request, engine):
    if engine == "postgresql":
        db = request.getfixturevalue("pgdb")
        env, env_name = pg_env(db), "pgtest"
        ok(project.run("migrate", f"--revision={FIRST}", env=env))
        state = lambda: (db.revision(), db.columns("users"))  # noqa: E731
    else:
        env, env_name = None, "dev"
        ok(project.run("migrate", f"--revision={FIRST}"))
        state = lambda: sqlite_state(project.root / "dev.db")  # noqa: E731
    before, files = state(), store_files(project.store(env_name))

    result = ok(project.run("migrate", "--sql", env=env))
    assert re.search(r"ALTER TABLE users ADD( COLUMN)? phone_number VARCHAR\(20\)",
                     result.stdout), shown(result)
    assert "CREATE TABLE users" not in result.stdout
    assert state() == before
    assert store_files(project.store(env_name)) == files


# == PostgreSQL =================================================================================
def scratch_databases(db) -> list[str]:
    with db.admin.connect() as conn:
        return sorted(r[0] for r in conn.execute(
            text("SELECT datname FROM pg_database WHERE strpos(datname, '__scratch_') > 0 "
                 "AND left(datname, :n) = :p"), {"n": len(db.name), "p": db.name}))


def prod_pg_env(db, **extra: str) -> dict:
    # Lock timeouts are retried (MIGRATION_LOCK_RETRIES, default 3): short pauses here.
    settings = {"PRODUCTION": "true", "BACKUP_ENCRYPTION": "optional",
                "MIGRATION_LOCK_TIMEOUT": "1s",
                "MIGRATION_LOCK_RETRY_DELAY": "100ms", "MAINTENANCE_WINDOW": open_window()}
    settings.update(extra)
    return pg_env(db, **settings)


def at_first_in_production(project, db) -> dict:
    """`db` brought to FIRST as production (prod_pg_env, inside an open window): that env."""
    env = prod_pg_env(db)
    ok(project.run("migrate", f"--revision={FIRST}", env=env))
    return env


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait for `proc`; if it is still running after `timeout` seconds, end its whole session
    and fail the test (a release that hangs is a bug)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"invoke {' '.join(proc.args[3:])} still ran after {timeout:.0f} s and was "
                    f"killed:\n--- stdout\n{out}\n--- stderr\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def parked_read_back(tmp_path) -> tuple[Path, Path, Path]:
    """A PG_BIN_DIR whose pg_restore, when it reads a new backup back (`--file /dev/null`),
    reads it all, then says 'started' on one FIFO and waits for a line on another before
    exiting with the real status: the dump is finished, and its locks released, by then."""
    started, go = fifo_pair(tmp_path)
    bin_dir = fake_pg_bin(tmp_path / "parked-bin", pg_restore=f"""if [ "$1" = "--file" ]; then
  "$REAL" "$@"
  status=$?
  echo started > '{started}'
  read -r _ < '{go}'
  exit $status
fi
exec "$REAL" "$@"
""")
    return bin_dir, started, go


def assert_lock_timeout_failure(result, db, before_backups, project, env) -> None:
    message = failed(result, 5, "MIGRATION_LOCK_TIMEOUT", "lock")
    assert re.search(r"ALTER TABLE users ADD( COLUMN)? phone_number", message), message
    items = project.backups("pgtest", env=env)
    assert len(items) == len(before_backups) + 1
    taken = items[0]
    assert taken["revision"] == FIRST and taken["verified"] is True
    assert Path(taken["location"]).is_file()
    assert taken["id"] in message  # the restore hint names the backup
    events = json.loads(ok(project.run("audit", "--json", env=env)).stdout)
    assert events[0]["action"] == "migrate" and events[0]["outcome"] == "failed"
    assert events[0]["backup_id"] == taken["id"]


# -- lock_timeout ----------------------------------------------------------------------------
@pytest.mark.postgres
def test_an_exclusive_lock_on_users_makes_the_migration_time_out(project, pgdb, tmp_path):
    """ACCESS EXCLUSIVE on users, taken by another session once the backup is dumped: the
    migration's ALTER gives up after MIGRATION_LOCK_TIMEOUT, exit 5, and nothing changed."""
    db = pgdb
    env = at_first_in_production(project, db)
    db.sql("INSERT INTO users (email, hashed_password) VALUES ('ada@example.org', 'x')")
    before = project.backups("pgtest", env=env)

    bin_dir, started, go = parked_read_back(tmp_path)
    proc, _ = started_and_parked(project, started, "migrate",
                                 env=dict(env, PG_BIN_DIR=str(bin_dir)))
    holder = None
    try:
        with ended_afterwards(proc):
            holder = HeldLock(db, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            with open(go, "w") as release:
                release.write("go\n")
            result = finish(proc, timeout=120)
    finally:
        if holder is not None:
            holder.release()

    assert db.revision() == FIRST
    assert "phone_number" not in db.columns("users")
    assert db.sql("SELECT email FROM users") == [("ada@example.org",)]
    assert_lock_timeout_failure(result, db, before, project, env)


@pytest.mark.postgres
def test_a_reader_holding_users_makes_the_migration_time_out(project, pgdb):
    """A session inside a transaction that read users (ACCESS SHARE, as a slow report does): the
    backup reads alongside it, the ALTER gives up after MIGRATION_LOCK_TIMEOUT, exit 5."""
    db = pgdb
    env = at_first_in_production(project, db)
    before = project.backups("pgtest", env=env)
    holder = HeldLock(db, "SELECT count(*) FROM users")
    try:
        result = project.run("migrate", env=env, timeout=120)
    finally:
        holder.release()
    assert db.revision() == FIRST
    assert "phone_number" not in db.columns("users")
    assert_lock_timeout_failure(result, db, before, project, env)
    # Once the reader is gone the same migration goes through.
    ok(project.run("migrate", env=env))
    assert db.revision() == HEAD


@pytest.mark.postgres
def test_an_exclusive_lock_held_before_the_run_does_not_hang_it(project, pgdb):
    """ACCESS EXCLUSIVE on users held from before the run: no backup can read the table, so
    nothing may be migrated; a careful tool gives up within its lock timeout with one clear
    message instead of waiting forever inside the maintenance window."""
    db = pgdb
    env = at_first_in_production(project, db)
    before = project.backups("pgtest", env=env)
    holder = HeldLock(db, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    try:
        proc = project.start("migrate", env=env)
        result = finish(proc, timeout=60)
    finally:
        holder.release()
    assert result.returncode in (3, 4), shown(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "lock" in errors[0].lower(), shown(result)
    assert db.revision() == FIRST
    assert "phone_number" not in db.columns("users")
    assert project.backups("pgtest", env=env) == before


@pytest.mark.postgres
@pytest.mark.parametrize("setting,value", [("MIGRATION_LOCK_TIMEOUT", "abc"),
                                           ("MIGRATION_STATEMENT_TIMEOUT", "soon")])
def test_a_malformed_timeout_in_production_is_bad_input(project, pgdb, setting, value):
    db = pgdb
    ok(project.run("migrate", f"--revision={FIRST}", env=prod_pg_env(db)))
    before = project.backups("pgtest", env=prod_pg_env(db))
    failed(project.run("migrate", env=prod_pg_env(db, **{setting: value})), 2, setting, value)
    assert db.revision() == FIRST
    assert "phone_number" not in db.columns("users")
    assert project.backups("pgtest", env=prod_pg_env(db)) == before


# -- rehearse --------------------------------------------------------------------------------
def rehearsals(project, env_name: str = "pgtest") -> list[dict]:
    folder = project.root / "backups" / env_name
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.rehearsal.json"))]


@pytest.mark.postgres
def test_rehearse_runs_the_pending_migrations_down_and_up_on_a_scratch_copy(project, pgdb):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", f"--revision={FIRST}", env=env))
    db.sql("INSERT INTO users (email, hashed_password) VALUES ('ada@example.org', 'x')")
    ok(project.run("backup", env=env))
    [backup] = [i for i in project.backups("pgtest", env=env) if i["reason"] == "on demand"]
    backups_before = project.backups("pgtest", env=env)

    result = ok(project.run("rehearse", env=env))
    out = result.stdout
    assert backup["id"] in out
    steps = [m.groups() for m in re.finditer(
        r"^(restore|upgrade again|upgrade|downgrade)\s+(\w+)\s+\d+\.\d+\s*$", out, re.M)]
    assert steps == [("restore", FIRST), ("upgrade", HEAD), ("downgrade", HEAD),
                     ("upgrade again", HEAD)], shown(result)

    assert scratch_databases(db) == []
    assert derived_databases(db.admin, db.name) == []
    assert db.revision() == FIRST
    assert "phone_number" not in db.columns("users")
    assert db.sql("SELECT email FROM users") == [("ada@example.org",)]
    assert [i["id"] for i in project.backups("pgtest", env=env)] == \
        [i["id"] for i in backups_before]

    [saved] = rehearsals(project)
    assert saved["outcome"] == "succeeded"
    assert saved["backup_id"] == backup["id"]
    assert [(s["action"], s["revision"]) for s in saved["steps"]] == \
        [("restore", FIRST), ("upgrade", HEAD), ("downgrade", HEAD), ("upgrade again", HEAD)]
    assert all(s["seconds"] >= 0 for s in saved["steps"])


@pytest.mark.postgres
def test_a_rehearsal_whose_migration_fails_exits_5_and_drops_the_scratch(project, pgdb,
                                                                        tmp_path):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", f"--revision={FIRST}", env=env))
    ok(project.run("backup", env=env))
    add_revision(project, "fa11fa11fa11", HEAD, '''
        op.add_column("users", sa.Column("notes", sa.Text(), nullable=True))
        raise RuntimeError("this migration fails on purpose")
        ''', 'op.drop_column("users", "notes")', "Add notes, then fail")
    log = tmp_path / "pg_restore.log"
    bin_dir = fake_pg_bin(tmp_path / "bin", pg_restore=f"""printf '%s\\n' "$*" >> '{log}'
exec "$REAL" "$@"
""")

    failed(project.run("rehearse", env={**env, "PG_BIN_DIR": str(bin_dir)}), 5, "fa11fa11fa11")
    # The rehearsal did build its scratch copy (pg_restore loaded it), and dropped it.
    loaded = [a for a in log.read_text().split() if a.startswith("--dbname=")]
    assert len(loaded) == 1 and loaded[0].startswith(f"--dbname={db.name}__scratch_"), loaded
    assert scratch_databases(db) == []
    assert derived_databases(db.admin, db.name) == []
    assert db.revision() == FIRST
    assert db.columns("users") == ["id", "email", "full_name", "hashed_password", "is_active"]
    [saved] = rehearsals(project)
    assert saved["outcome"] == "failed"


# -- stamp and data-dropping rollbacks in production -----------------------------------------
def audit_trail(project, env_name: str) -> list[dict]:
    return json.loads(ok(project.run("audit", f"--env={env_name}", "--json")).stdout)


def closed_window() -> str:
    now = datetime.now(UTC)
    return window_covering(now + timedelta(hours=2), now + timedelta(hours=3))


def test_stamp_in_production_is_refused_outside_the_window(project):
    db = prod_at(project, HEAD, MAINTENANCE_WINDOW=closed_window())
    failed(project.run("stamp", "--env=prod", "base"), 3, "maintenance window")
    assert sqlite_state(db)["revision"] == HEAD
    assert audit_trail(project, "prod") == []


def test_stamp_with_break_glass_runs_and_is_audited(project):
    db = prod_at(project, HEAD, MAINTENANCE_WINDOW=closed_window())
    ok(project.run("stamp", "--env=prod", "--break-glass=INC-42 repair", FIRST))
    assert sqlite_state(db)["revision"] == FIRST
    [event] = audit_trail(project, "prod")
    assert (event["action"], event["outcome"], event["from_revision"], event["to_revision"],
            event["break_glass"]) == ("stamp", "succeeded", HEAD, FIRST, "INC-42 repair")


def test_stamp_is_refused_while_another_run_holds_the_lock(project):
    import fcntl
    db = prod_at(project, HEAD, MAINTENANCE_WINDOW=open_window())
    fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        failed(project.run("stamp", "--env=prod", "base"), 3, "lock")
    finally:
        os.close(fd)
    assert sqlite_state(db)["revision"] == HEAD


def test_a_rollback_that_drops_tables_in_production_needs_yes(project):
    db = prod_at(project, HEAD, MAINTENANCE_WINDOW=open_window())
    before = store_files(project.store("prod"))
    failed(project.run("rollback", "--env=prod", "--to=base"), 3, "drops table users", "--yes")
    assert sqlite_state(db)["revision"] == HEAD and "users" in sqlite_state(db)["tables"]
    assert store_files(project.store("prod")) == before  # refused before any backup
    result = ok(project.run("rollback", "--env=prod", "--to=base", "--yes"))
    assert "drops table users" in result.stderr, shown(result)
    assert sqlite_state(db)["revision"] is None and "users" not in sqlite_state(db)["tables"]


def test_a_rollback_that_drops_a_column_outside_production_warns(project):
    ok(project.run("migrate"))
    result = ok(project.run("rollback"))
    assert any("drops column phone_number" in w for w in warnings(result)), shown(result)
    assert sqlite_state(project.root / "dev.db")["revision"] == FIRST
