"""End to end: `invoke restore` and `invoke verify --restore-test`, run as a user runs them (a
subprocess in a fresh copy of the project), against a real PostgreSQL server and the embedded
SQLite default. Every test checks the DATABASE afterwards -- tables, rows, revision, sequence,
indexes, constraints, the database's own properties, the databases left on the server -- not
only the exit code.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import select
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, pool, text

from conftest import admin_url, pg_env
from helpers import assert_no_password, failed, ok, shown

FIRST, HEAD = "a9ef987fd631", "f8ff2ab1fdfa"
REPORTS_REV = "5e1ea5e0c0de"
SAFETY_PREFIX = "before restore of "

REPORTS_REVISION = f'''"""Add reports table

Revision ID: {REPORTS_REV}
Revises: {HEAD}
Create Date: 2024-02-01 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa

revision = "{REPORTS_REV}"
down_revision = "{HEAD}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("finding", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reports"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_reports_user_id_users"),
    )
    op.create_index("ix_reports_user_id", "reports", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_reports_user_id", table_name="reports")
    op.drop_table("reports")
'''


# -- helpers: results ------------------------------------------------------------------------


def safety_id_from(result) -> str:
    match = re.search(r"Safety backup (\S+) holds", result.stdout)
    assert match, shown(result)
    return match.group(1)


def ids(items: list[dict]) -> list[str]:
    return [i["id"] for i in items]


def take_backup(project, env_name: str, env: dict | None = None) -> dict:
    before = set(ids(project.backups(env_name, env=env)))
    ok(project.run("backup", f"--env={env_name}", env=env))
    items = project.backups(env_name, env=env)
    new = [i for i in items if i["id"] not in before]
    assert len(new) == 1, items
    assert items[0]["id"] == new[0]["id"], "a backup just taken is not listed first"
    assert new[0]["reason"] == "on demand" and new[0]["verified"] is True
    return new[0]


def audit_events(project, env_name: str) -> list[dict]:
    folder = project.root / "backups" / env_name
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.audit.json"))]


# -- helpers: PostgreSQL ---------------------------------------------------------------------
def admin_sql(admin, statement: str, **params):
    with admin.connect() as conn:
        result = conn.execute(text(statement), params)
        return [tuple(r) for r in result.fetchall()] if result.returns_rows else None


def sql_in(database: str, statement: str, **params):
    """Run one statement as the admin in another database (e.g. the kept one)."""
    engine = create_engine(admin_url().set(database=database), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(statement), params).fetchall()]
    finally:
        engine.dispose()


class Untouched:
    """What a refused or failed restore must leave exactly as it was: the live database's
    state and identity (its oid: it was not swapped), the listed backups, and no copies."""

    def __init__(self, project, db, admin, env: dict):
        self.project, self.db, self.admin, self.env = project, db, admin, env
        self.state, self.oid, self.listed = self._read()

    def _read(self):
        return (pg_state(self.db), db_properties(self.admin, self.db.name)["oid"],
                ids(self.project.backups("pgtest", env=self.env)))

    def check(self) -> None:
        state, oid, listed = self._read()
        assert state == self.state
        assert oid == self.oid
        assert listed == self.listed
        assert derived_databases(self.admin, self.db.name) == []


def derived_databases(admin, name: str, marker: str = "__") -> list[str]:
    prefix = name + marker
    return sorted(r[0] for r in admin_sql(
        admin, "SELECT datname FROM pg_database WHERE left(datname, :n) = :p",
        n=len(prefix), p=prefix))


def drop_derived(admin, name: str) -> None:
    for other in derived_databases(admin, name):
        admin_sql(admin, f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')


def pg_state(db) -> dict:
    """Everything a restore must bring back exactly."""
    tables = db.tables()
    state = {
        "tables": tables,
        "revision": db.revision(),
        "users": [tuple(r) for r in db.sql("SELECT * FROM users ORDER BY id")]
        if "users" in tables else None,
        "sequence": [tuple(r) for r in db.sql("SELECT last_value, is_called FROM users_id_seq")]
        if "users" in tables else None,
        "indexes": sorted(tuple(r) for r in db.sql(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")),
        "constraints": sorted(tuple(r) for r in db.sql(
            "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = 'public'::regnamespace")),
    }
    return state


def db_properties(admin, name: str) -> dict:
    rows = admin_sql(admin, (
        "SELECT d.oid, pg_get_userbyid(d.datdba), d.datacl::text[], d.datconnlimit, "
        "shobj_description(d.oid, 'pg_database'), "
        "(SELECT s.setconfig FROM pg_db_role_setting s "
        " WHERE s.setdatabase = d.oid AND s.setrole = 0), "
        "pg_encoding_to_char(d.encoding), d.datcollate, d.datctype "
        "FROM pg_database d WHERE d.datname = :n"), n=name)
    assert rows, f"database {name} does not exist"
    oid, owner, acl, limit, comment, settings, encoding, collate, ctype = rows[0]
    return {"oid": oid, "owner": owner, "acl": sorted(acl) if acl is not None else None,
            "conn_limit": limit, "comment": comment, "settings": sorted(settings or []),
            "encoding": encoding, "collate": collate, "ctype": ctype}


def insert_users(db, *rows: tuple[str, str | None]) -> None:
    for email, phone in rows:
        db.sql("INSERT INTO users (email, full_name, hashed_password, phone_number) "
               "VALUES (:e, :n, 'x', :p)", e=email, n=email.split("@")[0].title(), p=phone)


def wait_until_no_sessions(admin, *databases: str, timeout: float = 30) -> None:
    """Poll the server until the backends of a killed client have gone (the server notices a
    dead client asynchronously); a condition, not a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        rows = admin_sql(admin, "SELECT datname, application_name FROM pg_stat_activity "
                                "WHERE (datname = ANY(:d) OR application_name LIKE 'mida %') "
                                "AND pid <> pg_backend_pid()", d=list(databases))
        if not rows:
            return
        assert time.monotonic() < deadline, f"sessions of the killed run linger: {rows}"
        time.sleep(0.05)


@pytest.fixture
def pgdb(pg_database, pg_admin):
    """pg_database, plus clean-up of every `<name>__...` database a restore (or a drill) leaves
    or keeps: they belong to the test's role, which pg_database drops afterwards."""
    yield pg_database
    drop_derived(pg_admin, pg_database.name)


@pytest.fixture
def reader_role(pgdb, pg_admin):
    """A second role whose name needs quoting, to grant database privileges to."""
    name = f"mida reader-{secrets.token_hex(3)}"
    admin_sql(pg_admin, f'CREATE ROLE "{name}"')
    yield name
    drop_derived(pg_admin, pgdb.name)
    admin_sql(pg_admin, f'REVOKE ALL ON DATABASE "{pgdb.name}" FROM "{name}"')
    admin_sql(pg_admin, f'DROP ROLE IF EXISTS "{name}"')


def pg_bin_dir(tmp_path: Path, pg_restore_body: str, name: str = "bin") -> Path:
    """A PG_BIN_DIR: a pg_dump that just execs the real one, and a pg_restore wrapper."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "pg_dump").write_text(f"#!/bin/bash\nexec '{shutil.which('pg_dump')}' \"$@\"\n")
    (folder / "pg_restore").write_text("#!/bin/bash\n" + pg_restore_body)
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder


# == 1. the release undone by restore ==========================================================
@pytest.mark.postgres
def test_restore_undoes_a_release_exactly_and_keeps_the_databases_properties(
        project, pgdb, pg_admin, reader_role):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", "+44 20 7946 0000"), ("grace@example.org", None),
                 ("alan@example.org", "+44 161 496 0000"))
    db.sql("DELETE FROM users WHERE email = 'grace@example.org'")  # a gap in the ids
    insert_users(db, ("edsger@example.org", "+31 20 555 0000"))

    # The database's own properties, set by its owner before anything is restored.
    quoted = f'"{db.name}"'
    db.sql(f"ALTER DATABASE {quoted} SET work_mem = '8MB'")
    db.sql(f"ALTER DATABASE {quoted} SET statement_timeout = '90s'")
    db.sql(f"REVOKE ALL ON DATABASE {quoted} FROM PUBLIC")
    db.sql(f"GRANT CONNECT ON DATABASE {quoted} TO PUBLIC")
    db.sql(f'GRANT CONNECT, TEMPORARY ON DATABASE {quoted} TO "{reader_role}" WITH GRANT OPTION')
    db.sql(f"COMMENT ON DATABASE {quoted} IS 'Patient''s images -- do not drop'")
    db.sql(f"ALTER DATABASE {quoted} CONNECTION LIMIT 40")
    props = db_properties(pg_admin, db.name)
    assert props["acl"] is not None and len(props["acl"]) == 3, props
    assert props["owner"] == db.role

    backup = take_backup(project, "pgtest", env)
    assert backup["revision"] == HEAD
    at_backup = pg_state(db)
    assert at_backup["tables"] == {"alembic_version", "users"}
    assert len(at_backup["users"]) == 3

    # The release: users change, a new revision adds `reports` (FOREIGN KEY to users.id).
    db.sql("UPDATE users SET full_name = 'Changed', phone_number = NULL "
           "WHERE email = 'ada@example.org'")
    db.sql("DELETE FROM users WHERE email = 'alan@example.org'")
    insert_users(db, ("barbara@example.org", "+1 555 0100"), ("donald@example.org", None))
    (project.root / "alembic" / "versions" / f"{REPORTS_REV}_add_reports_table.py").write_text(
        REPORTS_REVISION)
    ok(project.run("migrate", env=env))
    assert db.revision() == REPORTS_REV
    db.sql("INSERT INTO reports (user_id, finding) SELECT id, 'nodule ' || email FROM users")
    assert "reports" in db.tables()
    backups_before = ids(project.backups("pgtest", env=env))

    result = ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))
    assert backup["id"] in result.stdout, shown(result)

    # The database holds exactly what the backup held.
    after = pg_state(db)
    assert after["tables"] == {"alembic_version", "users"}
    assert after["revision"] == HEAD
    assert after["users"] == at_backup["users"]
    assert after["sequence"] == at_backup["sequence"]
    assert after["indexes"] == at_backup["indexes"]
    assert after["constraints"] == at_backup["constraints"]
    assert after == at_backup
    # New rows get ids after the backup's, as they would have then.
    insert_users(db, ("new@example.org", None))
    assert db.sql("SELECT id FROM users WHERE email = 'new@example.org'")[0][0] == \
        at_backup["sequence"][0][0] + 1

    # Its properties survived the swap; its owner too.
    props_after = db_properties(pg_admin, db.name)
    assert props_after["oid"] != props["oid"]  # a new database under the old name
    for key in ("owner", "acl", "settings", "comment", "conn_limit", "encoding", "collate",
                "ctype"):
        assert props_after[key] == props[key], (key, props_after[key], props[key])
    assert props_after["owner"] == db.role
    assert "work_mem=8MB" in props_after["settings"]

    # The old database is kept, with the release in it; nothing half-built is left.
    kept = derived_databases(pg_admin, db.name, "__pre_restore_")
    assert len(kept) == 1, kept
    assert kept[0] in result.stdout, shown(result)
    assert {r[0] for r in sql_in(kept[0], "SELECT tablename FROM pg_tables "
                                          "WHERE schemaname = 'public'")} == \
        {"alembic_version", "users", "reports"}
    assert sql_in(kept[0], "SELECT version_num FROM alembic_version") == [(REPORTS_REV,)]
    assert derived_databases(pg_admin, db.name, "__restoring_") == []

    # The safety backup: named in the output, listed, and it holds the release.
    safety = safety_id_from(result)
    items = project.backups("pgtest", env=env)
    assert set(ids(items)) == set(backups_before) | {safety}
    item = next(i for i in items if i["id"] == safety)
    assert item["reason"].startswith(SAFETY_PREFIX) and backup["id"] in item["reason"]
    assert item["revision"] == REPORTS_REV and item["verified"] is True
    assert f"--backup={safety}" in result.stdout

    events = [e for e in audit_events(project, "pgtest") if e["action"] == "restore"]
    assert len(events) == 1 and events[0]["outcome"] == "succeeded"
    assert events[0]["backup_id"] == backup["id"]
    assert events[0]["from_revision"] == REPORTS_REV and events[0]["to_revision"] == HEAD


# == 2. no confirmation ========================================================================
@pytest.mark.postgres
def test_restore_without_yes_and_without_a_terminal_is_refused(project, pgdb, pg_admin):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    backup = take_backup(project, "pgtest", env)
    insert_users(db, ("marker@example.org", "+1 555 0199"))
    listed = project.backups("pgtest", env=env)
    untouched = Untouched(project, db, pg_admin, env)

    result = project.run("restore", f"--backup={backup['id']}", env=env, input="")
    failed(result, 3, "--yes")
    assert backup["id"] in result.stdout, "restore must show what it would restore"

    untouched.check()
    assert db.sql("SELECT count(*) FROM users WHERE email = 'marker@example.org'")[0][0] == 1
    assert project.backups("pgtest", env=env) == listed


# == 3. a corrupt backup is refused before anything is touched =================================
@pytest.mark.postgres
@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_damaged_backup_is_refused_and_nothing_is_touched(project, pgdb, pg_admin, damage):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None), ("grace@example.org", "+1 555 0101"))
    backup = take_backup(project, "pgtest", env)
    artifact = Path(backup["location"])
    data = artifact.read_bytes()
    if damage == "truncated":
        artifact.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        artifact.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:])
    insert_users(db, ("marker@example.org", None))
    ok(project.run("stamp", FIRST, env=env))  # the live database moves on, too
    untouched = Untouched(project, db, pg_admin, env)
    files = {p.name for p in artifact.parent.iterdir() if not p.name.endswith(".audit.json")}

    failed(project.run("restore", "--yes", f"--backup={backup['id']}", env=env), 4,
           backup["id"])

    untouched.check()
    assert db.revision() == FIRST
    assert db.sql("SELECT count(*) FROM users WHERE email = 'marker@example.org'")[0][0] == 1
    assert {p.name for p in artifact.parent.iterdir()
            if not p.name.endswith(".audit.json")} == files
    # The broken backup is now marked as such, and the default choice passes over it.
    item = next(i for i in project.backups("pgtest", env=env) if i["id"] == backup["id"])
    assert item["verified"] is False


@pytest.mark.postgres
def test_a_damaged_backup_is_refused_before_anything_is_dumped(project, pgdb, pg_admin,
                                                              tmp_path):
    """The safety backup comes after the swap: a backup that fails its verify never gets as
    far as dumping anything (pg_dump is only asked its version)."""
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    backup = take_backup(project, "pgtest", env)
    artifact = Path(backup["location"])
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    untouched = Untouched(project, db, pg_admin, env)
    files = {p.name for p in artifact.parent.iterdir() if not p.name.endswith(".audit.json")}

    calls = tmp_path / "pg_dump-calls"
    bin_dir = pg_bin_dir(tmp_path, f"exec '{shutil.which('pg_restore')}' \"$@\"\n")
    (bin_dir / "pg_dump").write_text(f"""#!/bin/bash
echo "$1" >> '{calls}'
exec '{shutil.which("pg_dump")}' "$@"
""")
    result = project.run("restore", "--yes", f"--backup={backup['id']}",
                         env=pg_env(db, PG_BIN_DIR=str(bin_dir)), timeout=120)
    failed(result, 4, backup["id"], "checksum")
    assert set(calls.read_text().splitlines()) == {"--version"}, calls.read_text()

    untouched.check()
    assert {p.name for p in artifact.parent.iterdir()
            if not p.name.endswith(".audit.json")} == files


# == 4. killed halfway =========================================================================
@pytest.mark.postgres
def test_a_restore_killed_halfway_leaves_the_live_database_as_it_was(project, pgdb, pg_admin,
                                                                   tmp_path):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None), ("grace@example.org", None))
    backup = take_backup(project, "pgtest", env)
    at_backup = pg_state(db)
    insert_users(db, ("marker-1@example.org", None), ("marker-2@example.org", None))
    db.sql("DELETE FROM users WHERE email = 'ada@example.org'")
    db.sql("CREATE TABLE audit_notes (id serial PRIMARY KEY, note text)")
    db.sql("INSERT INTO audit_notes (note) VALUES ('live only')")
    before = pg_state(db)
    oid = db_properties(pg_admin, db.name)["oid"]

    # pg_restore into the new database: build its schema, tell the test, then wait (forever:
    # the test kills the run here, halfway through the restore).
    started, go = tmp_path / "started.fifo", tmp_path / "go.fifo"
    os.mkfifo(started)
    os.mkfifo(go)
    real = shutil.which("pg_restore")
    bin_dir = pg_bin_dir(tmp_path, f"""
for arg in "$@"; do
  case "$arg" in
    --dbname=*)
      '{real}' --section=pre-data "$@" || exit $?
      echo started > '{started}'
      read -r _ < '{go}'
      exec '{real}' --section=data --section=post-data "$@" ;;
  esac
done
exec '{real}' "$@"
""")
    started_fd = os.open(started, os.O_RDWR)  # Linux: never blocks, and never reads EOF
    run = project.start("restore", "--yes", f"--backup={backup['id']}",
                       env=pg_env(db, PG_BIN_DIR=str(bin_dir)))
    try:
        while not select.select([started_fd], [], [], 1)[0]:
            assert run.poll() is None, f"restore ended early:\n{run.communicate()}"
        restoring = derived_databases(pg_admin, db.name, "__restoring_")
        assert len(restoring) == 1, restoring
        # Halfway: the copy has its schema, not its rows; the live database is untouched.
        assert sql_in(restoring[0], "SELECT count(*) FROM users") == [(0,)]
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        os.close(started_fd)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        run.stdout.close()
        run.stderr.close()
    wait_until_no_sessions(pg_admin, db.name, *restoring)

    assert pg_state(db) == before
    assert db_properties(pg_admin, db.name)["oid"] == oid
    assert db.sql("SELECT note FROM audit_notes") == [("live only",)]
    assert derived_databases(pg_admin, db.name, "__pre_restore_") == []
    assert derived_databases(pg_admin, db.name, "__restoring_") == restoring  # left behind

    # The next restore drops the stale copy and succeeds.
    result = ok(project.run("restore", "--yes", env=env))
    assert restoring[0] in result.stdout + result.stderr, shown(result)
    assert derived_databases(pg_admin, db.name, "__restoring_") == []
    assert pg_state(db) == at_backup
    assert len(derived_databases(pg_admin, db.name, "__pre_restore_")) == 1


# == 5. the default choice skips safety backups ================================================
@pytest.mark.postgres
def test_two_restores_in_a_row_choose_the_same_backup_not_the_safety_backup(project, pgdb,
                                                                           pg_admin):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    backup_a = take_backup(project, "pgtest", env)
    state_a = pg_state(db)
    insert_users(db, ("grace@example.org", None), ("alan@example.org", None))
    db.sql("UPDATE users SET full_name = 'Countess' WHERE email = 'ada@example.org'")
    backup_b = take_backup(project, "pgtest", env)
    state_b = pg_state(db)
    assert state_a != state_b
    assert ids(project.backups("pgtest", env=env))[:2] == [backup_b["id"], backup_a["id"]]
    insert_users(db, ("later@example.org", None))

    first = ok(project.run("restore", "--yes", env=env))
    assert f"Restored backup {backup_b['id']}" in first.stdout, shown(first)
    assert pg_state(db) == state_b
    safety = safety_id_from(first)
    newest = project.backups("pgtest", env=env)[0]
    assert newest["id"] == safety and newest["reason"] == SAFETY_PREFIX + backup_b["id"]

    db.sql("DELETE FROM users WHERE email = 'grace@example.org'")
    second = ok(project.run("restore", "--yes", env=env))
    assert f"Restored backup {backup_b['id']}" in second.stdout, shown(second)
    assert safety not in re.sub(r"Safety backup \S+ holds.*", "", second.stdout)
    assert pg_state(db) == state_b
    items = project.backups("pgtest", env=env)
    safeties = [i for i in items if i["reason"].startswith(SAFETY_PREFIX)]
    assert len(safeties) == 2
    assert all(i["reason"] == SAFETY_PREFIX + backup_b["id"] for i in safeties)
    assert len(derived_databases(pg_admin, db.name, "__pre_restore_")) == 2


# == 6. SQLite, with a reader at work ==========================================================
def sqlite_rows(path: Path) -> dict:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = sorted(r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}
    finally:
        conn.close()


class Reader(threading.Thread):
    """Reads the users count and the revision in one read transaction, over and over, on a
    connection opened before the restore, until told to stop; records every answer and error."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.seen: list[tuple] = []
        self.errors: list[BaseException] = []
        self.first = threading.Event()
        self.stop = threading.Event()

    def read(self, conn) -> tuple:
        conn.execute("BEGIN")
        try:
            count = conn.execute("SELECT count(*) FROM users").fetchone()[0]
            revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
            extra = conn.execute("SELECT count(*) FROM sqlite_master "
                                 "WHERE name = 'extra'").fetchone()[0]
        finally:
            conn.execute("COMMIT")
        return count, revision, extra

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        except BaseException as exc:
            self.errors.append(exc)
            self.first.set()
            return
        try:
            while True:
                stopping = self.stop.is_set()
                try:
                    self.seen.append(self.read(conn))
                except BaseException as exc:
                    self.errors.append(exc)
                self.first.set()
                if stopping:
                    return
        finally:
            conn.close()


def test_sqlite_restore_round_trip_with_a_concurrent_reader(project):
    path = project.root / "dev.db"
    ok(project.run("migrate"))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    with conn:
        conn.executemany("INSERT INTO users (email, full_name, hashed_password, phone_number) "
                         "VALUES (?, ?, 'x', ?)",
                         [("ada@example.org", "Ada", "+44 20 7946 0000"),
                          ("grace@example.org", "Grace", None),
                          ("alan@example.org", "Alan", "+44 161 496 0000")])
    conn.close()
    backup = take_backup(project, "dev")
    assert backup["revision"] == HEAD
    at_backup = sqlite_rows(path)
    assert set(at_backup) == {"alembic_version", "users"} and len(at_backup["users"]) == 3

    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE users SET full_name = 'Changed' WHERE email = 'ada@example.org'")
        conn.execute("DELETE FROM users WHERE email = 'alan@example.org'")
        conn.executemany("INSERT INTO users (email, full_name, hashed_password) VALUES (?, ?, 'x')",
                         [("b@example.org", "B"), ("c@example.org", "C"), ("d@example.org", "D")])
        conn.execute("CREATE TABLE extra (id INTEGER PRIMARY KEY, note TEXT)")
        conn.execute("INSERT INTO extra (note) VALUES ('from a later release')")
    conn.close()
    ok(project.run("rollback"))  # the schema moves, too
    changed = sqlite_rows(path)
    assert changed["alembic_version"] == [(FIRST,)] and "extra" in changed
    old, new = (len(changed["users"]), FIRST, 1), (3, HEAD, 0)
    listed = ids(project.backups("dev"))

    reader = Reader(path)
    reader.start()
    try:
        assert reader.first.wait(30)
        result = ok(project.run("restore", "--yes", f"--backup={backup['id']}"))
    finally:
        reader.stop.set()
        reader.join(60)
    assert not reader.is_alive()
    assert reader.errors == [], reader.errors
    assert reader.seen[0] == old
    assert reader.seen[-1] == new
    assert set(reader.seen) <= {old, new}, set(reader.seen)

    assert sqlite_rows(path) == at_backup
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        check.close()

    safety = safety_id_from(result)
    items = project.backups("dev")
    assert set(ids(items)) == set(listed) | {safety}
    item = next(i for i in items if i["id"] == safety)
    assert item["reason"] == SAFETY_PREFIX + backup["id"] and item["revision"] == FIRST
    events = [e for e in audit_events(project, "dev") if e["action"] == "restore"]
    assert len(events) == 1 and events[0]["outcome"] == "succeeded"


# == 7. verify --restore-test ==================================================================
@pytest.mark.postgres
def test_verify_restore_test_compares_row_counts_and_drops_the_scratch(project, pgdb, pg_admin,
                                                                      tmp_path):
    db = pgdb
    ok(project.run("migrate", env=pg_env(db)))
    insert_users(db, ("ada@example.org", None), ("grace@example.org", None),
                 ("alan@example.org", None))
    log = tmp_path / "pg_restore.log"
    bin_dir = pg_bin_dir(tmp_path, f"""
printf '%s\\n' "$*" >> '{log}'
exec '{shutil.which("pg_restore")}' "$@"
""")
    env = pg_env(db, PG_BIN_DIR=str(bin_dir))
    backup = take_backup(project, "pgtest", env)
    assert backup["id"] == project.backups("pgtest", env=env)[0]["id"]
    before = pg_state(db)
    log.write_text("")

    result = ok(project.run("verify", "--restore-test", f"--backup={backup['id']}", env=env))
    assert "2 tables" in result.stdout and "4 rows" in result.stdout, shown(result)
    scratch = [line for line in log.read_text().splitlines() if "--dbname=" in line]
    assert len(scratch) == 1 and f"--dbname={db.name}__scratch_" in scratch[0], scratch
    assert derived_databases(pg_admin, db.name) == []
    assert pg_state(db) == before

    manifest_path = project.root / "backups" / "pgtest" / f"{backup['id']}.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["row_counts"] == {"public.alembic_version": 1, "public.users": 3}
    manifest["row_counts"]["public.users"] = 4
    manifest_path.write_text(json.dumps(manifest, indent=2))
    log.write_text("")

    failed(project.run("verify", "--restore-test", f"--backup={backup['id']}", env=env), 4,
           "public.users")
    assert any(f"--dbname={db.name}__scratch_" in line for line in log.read_text().splitlines())
    assert derived_databases(pg_admin, db.name) == []
    assert pg_state(db) == before


# == 8. production, outside any window =========================================================
@pytest.mark.postgres
def test_restore_in_production_is_not_gated_by_the_window_and_is_audited(project, pgdb,
                                                                        pg_admin):
    db = pgdb
    ok(project.run("migrate", env=pg_env(db)))
    insert_users(db, ("ada@example.org", None))
    prod = pg_env(db, APP_ENV="prod")
    assert "MAINTENANCE_WINDOW" not in prod
    info = json.loads(ok(project.run("status", "--json", env=prod)).stdout)
    assert info["production"] is True and info["window"] is None
    # rollback is refused here (no window configured): restore must not be.
    failed(project.run("rollback", env=prod), 3)
    assert db.revision() == HEAD
    backup = take_backup(project, "prod", prod)
    at_backup = pg_state(db)
    insert_users(db, ("incident@example.org", None))

    result = ok(project.run("restore", "--yes", env=prod))
    assert f"Restored backup {backup['id']}" in result.stdout, shown(result)
    assert pg_state(db) == at_backup

    events = [e for e in audit_events(project, "prod") if e["action"] == "restore"]
    assert len(events) == 1, events
    event = events[0]
    assert event["outcome"] == "succeeded" and event["env"] == "prod"
    assert event["backup_id"] == backup["id"]
    assert event["safety_backup_id"] == safety_id_from(result)
    assert event.get("user") and event.get("at")
    assert_no_password(json.dumps(event))
    audit_json = json.loads(ok(project.run("audit", "--json", env=prod)).stdout)
    assert audit_json[0]["action"] == "restore"


# == 9. somebody else is connected =============================================================
@pytest.mark.postgres
def test_restore_is_refused_while_another_session_is_connected(project, pgdb, pg_admin):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    backup = take_backup(project, "pgtest", env)
    insert_users(db, ("marker@example.org", None))
    untouched = Untouched(project, db, pg_admin, env)

    api = create_engine(db.url.update_query_dict({"application_name": "mida-api-worker"}),
                        poolclass=pool.NullPool)
    try:
        with api.connect() as session:
            session.execute(text("SELECT 1"))
            failed(project.run("restore", "--yes", f"--backup={backup['id']}", env=env), 3,
                   "mida-api-worker", db.role)
            assert session.execute(text("SELECT count(*) FROM users")).scalar() == 2
    finally:
        api.dispose()

    untouched.check()


@pytest.mark.postgres
def test_restore_by_a_role_that_may_not_create_databases_is_refused_first(project, pgdb,
                                                                         pg_admin):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    backup = take_backup(project, "pgtest", env)
    insert_users(db, ("marker@example.org", None))
    untouched = Untouched(project, db, pg_admin, env)
    with pg_admin.connect() as admin:
        admin.execute(text(f'ALTER ROLE "{db.role}" NOCREATEDB'))

    failed(project.run("restore", "--yes", f"--backup={backup['id']}", env=env), 3,
           "CREATEDB", db.role)

    untouched.check()  # no safety backup either


@pytest.mark.postgres
def test_a_step_the_server_refuses_is_one_sentence_not_a_traceback(pgdb):
    from app.ops.errors import BackupFailed
    from app.ops.databases.postgres_server import PostgresServer

    server = PostgresServer(pgdb.url)
    with pytest.raises(BackupFailed, match=f'"{pgdb.name}" already exists') as caught:
        server.create_like(pgdb.name, server.properties())
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# == 1b. every kind of database setting survives (see also test 1) ============================
@pytest.mark.postgres
@pytest.mark.parametrize("setting", ["search_path list", "role in database"])
def test_every_database_setting_survives_a_restore(project, pgdb, pg_admin, setting):
    """`ALTER DATABASE ... SET` of a list-valued setting (search_path) and `ALTER ROLE ... IN
    DATABASE ... SET` are the database's settings too: the restored database must read them back
    exactly as they were."""
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    quoted = f'"{db.name}"'
    if setting == "search_path list":
        db.sql(f'ALTER DATABASE {quoted} SET search_path = "$user", public')
    else:
        db.sql(f'ALTER ROLE "{db.role}" IN DATABASE {quoted} SET work_mem = \'16MB\'')
    query = ("SELECT coalesce(pg_get_userbyid(s.setrole), '-'), s.setconfig "
             "FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
             "WHERE d.datname = :n ORDER BY 1")
    settings = admin_sql(pg_admin, query, n=db.name)
    assert settings, "the setting did not take"
    backup = take_backup(project, "pgtest", env)
    at_backup = pg_state(db)
    insert_users(db, ("later@example.org", None))

    ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))
    assert admin_sql(pg_admin, query, n=db.name) == settings
    assert pg_state(db) == at_backup


# == 10. a backup whose manifest names another revision than its data holds ===================
def claim_revision(project, env_name: str, backup_id: str, revision: str) -> None:
    """Edit only the manifest's `revision`: checksum, sizes and artifact stay true, so the
    backup verifies, and only the revision checks can tell."""
    path = project.root / "backups" / env_name / f"{backup_id}.manifest.json"
    manifest = json.loads(path.read_text())
    manifest["revision"] = revision
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_sqlite_restore_ending_at_another_revision_than_the_backups_fails_and_is_audited(
        project):
    path = project.root / "dev.db"
    ok(project.run("migrate"))
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO users (email, full_name, hashed_password) "
                     "VALUES ('ada@example.org', 'Ada', 'x')")
    conn.close()
    backup = take_backup(project, "dev")
    assert backup["revision"] == HEAD
    claim_revision(project, "dev", backup["id"], FIRST)
    ok(project.run("rollback"))
    listed = ids(project.backups("dev"))

    result = project.run("restore", "--yes", f"--backup={backup['id']}")
    failed(result, 4, f"after the restore the database is at {HEAD}", backup["id"], FIRST)

    # The data did come back (SQLite has no copy to check before it writes): the run says it
    # failed, and the safety backup of the database as it was is listed and audited.
    assert sqlite_rows(path)["alembic_version"] == [(HEAD,)]
    events = [e for e in audit_events(project, "dev") if e["action"] == "restore"]
    assert len(events) == 1, events
    assert events[0]["outcome"] == "failed"
    assert events[0]["backup_id"] == backup["id"]
    assert events[0]["from_revision"] == FIRST and events[0]["to_revision"] == FIRST
    items = project.backups("dev")
    new = [i for i in items if i["id"] not in listed]
    assert len(new) == 1 and new[0]["reason"] == SAFETY_PREFIX + backup["id"], items
    assert new[0]["revision"] == FIRST
    assert events[0]["safety_backup_id"] == new[0]["id"]


@pytest.mark.postgres
def test_a_copy_at_another_revision_than_the_backups_is_never_swapped_in(project, pgdb,
                                                                        pg_admin):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    backup = take_backup(project, "pgtest", env)
    assert backup["revision"] == HEAD
    claim_revision(project, "pgtest", backup["id"], FIRST)
    insert_users(db, ("marker@example.org", None))
    untouched = Untouched(project, db, pg_admin, env)

    result = project.run("restore", "--yes", f"--backup={backup['id']}", env=env)

    # The state first: a check made only after the swap also ends exit 4, too late.
    untouched.check()  # same oid, same rows, no safety backup left, no copy left
    failed(result, 4, backup["id"], FIRST, "nothing was swapped")
    assert db.sql("SELECT count(*) FROM users WHERE email = 'marker@example.org'")[0][0] == 1
    events = [e for e in audit_events(project, "pgtest") if e["action"] == "restore"]
    assert len(events) == 1 and events[0]["outcome"] == "failed", events


# == 11. the application stays connected: --disconnect =========================================
class AppSession(threading.Thread):
    """The API, as the database sees it: one session (a role of its own choosing, application
    name `mida-api-writer`) inserting a row every 100 ms, reconnecting whenever the connection
    fails. Every insert the server acknowledged is recorded with the oid of the database that
    served it, so the test can tell the old database's writes from the restored one's."""

    def __init__(self, url, pace: float = 0.1):
        super().__init__(daemon=True)
        self.url = url
        self.pace = pace
        self.acked: list[tuple[int, int, float]] = []   # (n, database oid, monotonic time)
        self.failures: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.served_by_other = threading.Event()
        self.first_oid: int | None = None
        self.enough = threading.Event()

    def run(self) -> None:
        import psycopg2

        conn, n = None, 0
        dsn = dict(host=self.url.host, port=self.url.port or 5432, user=self.url.username,
                   password=self.url.password, dbname=self.url.database,
                   application_name="mida-api-writer", connect_timeout=2)
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(**dsn)
                    conn.autocommit = True
                n += 1
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO app_writes (n) VALUES (%s) RETURNING (SELECT oid "
                                "FROM pg_database WHERE datname = current_database())", (n,))
                    oid = cur.fetchone()[0]
                self.acked.append((n, oid, time.monotonic()))
                if self.first_oid is None:
                    self.first_oid = oid
                if len(self.acked) >= 5:
                    self.enough.set()
                if oid != self.first_oid:
                    self.served_by_other.set()
            except psycopg2.Error as exc:
                self.failures.append((time.monotonic(), str(exc).strip().splitlines()[0]))
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            self.stop.wait(self.pace)
        if conn is not None:
            conn.close()

    def longest_gap(self) -> float:
        times = [t for _, _, t in self.acked]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def with_app_table(project, db, env) -> dict:
    """Migrate, add the `app_writes` table the application writes to (in the backup too, so
    the restored database serves the application's writes), and take a backup."""
    ok(project.run("migrate", env=env))
    db.sql("CREATE TABLE app_writes (n integer PRIMARY KEY, at timestamptz DEFAULT now())")
    insert_users(db, ("ada@example.org", None))
    return take_backup(project, "pgtest", env)


@pytest.mark.postgres
def test_restore_with_disconnect_keeps_the_application_served_until_a_short_swap(
        project, pgdb, pg_admin):
    db = pgdb
    env = pg_env(db)
    backup = with_app_table(project, db, env)
    at_backup_users = pg_state(db)["users"]
    insert_users(db, ("after-backup@example.org", None))
    oid_before = db_properties(pg_admin, db.name)["oid"]

    app = AppSession(db.url)
    app.start()
    try:
        assert app.enough.wait(30), app.failures
        result = ok(project.run("restore", "--yes", "--disconnect", f"--backup={backup['id']}",
                                env=env))
        # The same application session is served by the restored database afterwards.
        assert app.served_by_other.wait(30), (app.failures, shown(result))
        served_after = len(app.acked)
        deadline = time.monotonic() + 30
        while len(app.acked) < served_after + 3:
            assert time.monotonic() < deadline, app.failures
            time.sleep(0.05)
    finally:
        app.stop.set()
        app.join(30)
    assert not app.is_alive()

    oid_after = db_properties(pg_admin, db.name)["oid"]
    assert oid_after != oid_before
    old = [n for n, oid, _ in app.acked if oid == oid_before]
    new = [n for n, oid, _ in app.acked if oid == oid_after]
    assert old and new and set(old) | set(new) == {n for n, _, _ in app.acked}
    # The application kept working while the copy was built; its downtime was the swap's.
    assert app.longest_gap() < 5.0, (app.longest_gap(), app.failures)
    match = re.search(r"downtime ([0-9.]+) s", result.stdout)
    assert match, shown(result)
    assert float(match.group(1)) < 2.0, shown(result)
    assert re.search(r"time to service ([0-9.]+) s", result.stdout), shown(result)

    # The restored database holds the backup, plus what the application wrote after the swap.
    assert pg_state(db)["users"] == at_backup_users
    assert sorted(r[0] for r in db.sql("SELECT n FROM app_writes")) == sorted(new)
    # Every write acknowledged by the old database is in it, kept under its dated name.
    kept = derived_databases(pg_admin, db.name, "__pre_restore_")
    assert len(kept) == 1, kept
    kept_rows = {r[0] for r in sql_in(kept[0], "SELECT n FROM app_writes")}
    assert set(old) <= kept_rows, sorted(set(old) - kept_rows)
    assert derived_databases(pg_admin, db.name, "__restoring_") == []
    # ...and in the safety backup, taken of that database after the swap: it counted exactly
    # the rows the kept database holds, which include every acknowledged one.
    safety = safety_id_from(result)
    item = next(i for i in project.backups("pgtest", env=env) if i["id"] == safety)
    assert item["reason"] == SAFETY_PREFIX + backup["id"] and item["verified"] is True
    assert item["revision"] == HEAD
    manifest = json.loads((project.root / "backups" / "pgtest" /
                           f"{safety}.manifest.json").read_text())
    assert manifest["row_counts"]["public.app_writes"] == len(kept_rows)
    assert f"--backup={safety} --yes --disconnect" in result.stdout, shown(result)

    events = [e for e in audit_events(project, "pgtest") if e["action"] == "restore"]
    assert len(events) == 1 and events[0]["outcome"] == "succeeded"
    assert events[0]["downtime_seconds"] == float(match.group(1))
    assert events[0]["time_to_service_seconds"] > 0
    assert events[0]["disconnect"] is True
    assert events[0]["safety_backup_id"] == safety


@pytest.mark.postgres
def test_restore_without_disconnect_refuses_at_once_naming_the_application(project, pgdb,
                                                                          pg_admin):
    db = pgdb
    env = pg_env(db)
    backup = with_app_table(project, db, env)
    store = project.root / "backups" / "pgtest"
    manifest_before = (store / f"{backup['id']}.manifest.json").read_text()
    untouched_files = {p.name for p in store.iterdir() if not p.name.endswith(".audit.json")}

    app = AppSession(db.url)
    app.start()
    try:
        assert app.enough.wait(30), app.failures
        pid = admin_sql(pg_admin, "SELECT pid FROM pg_stat_activity WHERE datname = :d AND "
                                  "application_name = 'mida-api-writer'", d=db.name)[0][0]
        untouched = Untouched(project, db, pg_admin, env)
        acked_before = len(app.acked)
        line = failed(project.run("restore", "--yes", f"--backup={backup['id']}", env=env), 3,
                      "mida-api-writer", db.role, f"pid {pid}", "--disconnect")
        untouched.check()
    finally:
        app.stop.set()
        app.join(30)
    assert "nothing was done" in line or "before any work" in line, line
    # The application was never interrupted.
    assert app.failures == [] and len(app.acked) > acked_before
    # No work at all: the backup was not even verified again (its manifest is unchanged).
    assert (store / f"{backup['id']}.manifest.json").read_text() == manifest_before
    assert {p.name for p in store.iterdir() if not p.name.endswith(".audit.json")} == \
        untouched_files


@pytest.mark.postgres
def test_restore_with_disconnect_by_a_role_that_may_not_end_the_sessions_is_told_the_grant(
        project, pgdb, pg_admin):
    db = pgdb
    env = pg_env(db)
    backup = with_app_table(project, db, env)
    other = f"mida_api_{secrets.token_hex(3)}"
    admin_sql(pg_admin, f"CREATE ROLE \"{other}\" LOGIN PASSWORD 'api'")
    db.sql(f'GRANT INSERT, SELECT ON app_writes TO "{other}"')
    app = AppSession(db.url.set(username=other, password="api"))
    app.start()
    try:
        assert app.enough.wait(30), app.failures
        untouched = Untouched(project, db, pg_admin, env)
        store = project.root / "backups" / "pgtest"
        manifest_before = (store / f"{backup['id']}.manifest.json").read_text()
        failed(project.run("restore", "--yes", "--disconnect", f"--backup={backup['id']}",
                           env=env), 3, "pg_signal_backend", other, db.role)
        untouched.check()
        assert (store / f"{backup['id']}.manifest.json").read_text() == manifest_before
        assert app.failures == []
    finally:
        app.stop.set()
        app.join(30)
        drop_derived(pg_admin, db.name)
        admin_sql(pg_admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE usename = :r", r=other)
        db.sql(f'REVOKE ALL ON app_writes FROM "{other}"')
        admin_sql(pg_admin, f'DROP ROLE IF EXISTS "{other}"')


@pytest.mark.postgres
def test_a_safety_backup_failing_after_the_swap_leaves_the_restore_done_and_the_old_database_kept(
        project, pgdb, pg_admin, tmp_path):
    db = pgdb
    env = pg_env(db)
    backup = with_app_table(project, db, env)
    at_backup = pg_state(db)
    insert_users(db, ("written-before-the-swap@example.org", None))
    listed = ids(project.backups("pgtest", env=env))
    # A pg_dump that fails for the previous database only (as a full store or a lost
    # connection would): the restore itself dumps nothing else.
    real = shutil.which("pg_dump")
    bin_dir = pg_bin_dir(tmp_path, f"exec '{shutil.which('pg_restore')}' \"$@\"\n")
    (bin_dir / "pg_dump").write_text(f"""#!/bin/bash
case "$1 $PGDATABASE" in
  --version*) ;;
  *__pre_restore_*) echo "pg_dump: error: connection to server lost" >&2; exit 1 ;;
esac
exec '{real}' "$@"
""")

    result = project.run("restore", "--yes", f"--backup={backup['id']}",
                         env=pg_env(db, PG_BIN_DIR=str(bin_dir)))

    line = failed(result, 4, backup["id"], "was restored", "safety backup",
                  "connection to server lost", "nothing was dropped")
    # Restored all the same, and served: the backup's data under the live name.
    assert pg_state(db) == at_backup
    assert "Restored backup" in result.stdout, shown(result)
    # The previous database is kept, with the write made before the swap, and named.
    kept = derived_databases(pg_admin, db.name, "__pre_restore_")
    assert len(kept) == 1 and kept[0] in line, (kept, line)
    assert sql_in(kept[0], "SELECT count(*) FROM users WHERE email = "
                           "'written-before-the-swap@example.org'") == [(1,)]
    assert derived_databases(pg_admin, db.name, "__restoring_") == []
    # No safety backup listed, no half-written file left in the store.
    assert ids(project.backups("pgtest", env=env)) == listed
    store = project.root / "backups" / "pgtest"
    assert not [p for p in store.iterdir() if ".partial" in p.name]
    events = [e for e in audit_events(project, "pgtest") if e["action"] == "restore"]
    assert len(events) == 1 and events[0]["outcome"] == "restored, safety backup failed"
    assert events[0]["kept_database"] == kept[0]
    assert "connection to server lost" in events[0]["safety_backup_error"]


# == 12. nothing decompressed has a name on disk ===============================================
@pytest.mark.postgres
@pytest.mark.parametrize("command", [("restore", "--yes"), ("verify", "--restore-test")])
def test_the_extracted_archive_never_has_a_name_and_a_kill_leaves_nothing(
        project, pgdb, pg_admin, tmp_path, command):
    """The seekable copy pg_restore --jobs needs is a file without a name, handed over as
    /proc/self/fd/N: while pg_restore reads it, TMPDIR holds no file at all, and a kill -9 there
    leaves nothing behind; the next run works."""
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", "+44 20 7946 0000"), ("grace@example.org", None))
    backup = take_backup(project, "pgtest", env)
    at_backup = pg_state(db)
    insert_users(db, ("later@example.org", None))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    store = project.root / "backups" / "pgtest"

    started, go, args = tmp_path / "started.fifo", tmp_path / "go.fifo", tmp_path / "args"
    os.mkfifo(started)
    os.mkfifo(go)
    bin_dir = pg_bin_dir(tmp_path, f"""
for arg in "$@"; do
  case "$arg" in
    --dbname=*)
      printf '%s\\n' "$*" > '{args}'
      echo started > '{started}'
      read -r _ < '{go}' ;;
  esac
done
exec '{shutil.which("pg_restore")}' "$@"
""")
    run_env = {**pg_env(db, PG_BIN_DIR=str(bin_dir)), "TMPDIR": str(tmp)}

    def run_until_pg_restore():
        started_fd = os.open(started, os.O_RDWR)
        run = project.start(*command, f"--backup={backup['id']}", env=run_env)
        try:
            while not select.select([started_fd], [], [], 1)[0]:
                assert run.poll() is None, f"ended early:\n{run.communicate()}"
            os.read(started_fd, 100)
        finally:
            os.close(started_fd)
        return run

    def files_on_disk() -> list[str]:
        """Any file in TMPDIR, and any half-written one in the store."""
        return sorted(str(p) for p in tmp.rglob("*") if not p.is_dir()) + \
            sorted(str(p) for p in store.iterdir() if ".partial" in p.name)

    # Killed while pg_restore holds the archive open.
    run = run_until_pg_restore()
    try:
        assert files_on_disk() == []
        handed = args.read_text()
        assert re.search(r" /proc/self/fd/\d+$", handed.strip()), handed
        assert f"--jobs={max(1, min(os.cpu_count() or 1, 8))}" in handed, handed
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        run.stdout.close()
        run.stderr.close()
    assert files_on_disk() == []
    wait_until_no_sessions(pg_admin, db.name)

    # The next run reads the archive through that path, in parallel, and succeeds.
    run = run_until_pg_restore()
    try:
        assert files_on_disk() == []
        fd = os.open(go, os.O_WRONLY)
        os.write(fd, b"go\n")
        os.close(fd)
        out, err = run.communicate(timeout=240)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 0, (out, err)
    assert files_on_disk() == []
    if command[0] == "restore":
        assert pg_state(db) == at_backup
    else:
        assert "2 tables" in out and "3 rows" in out, out
        assert derived_databases(pg_admin, db.name) == []


@pytest.mark.postgres
def test_a_swap_killed_after_closing_the_database_is_opened_again_by_the_next_restore(
        project, pgdb, pg_admin):
    """kill -9 between closing the live database to connections and the rename's commit leaves
    it closed (and its copy `__restoring_` beside it): the next restore opens it first, says
    so, and restores."""
    db = pgdb
    env = pg_env(db)
    backup = with_app_table(project, db, env)
    at_backup = pg_state(db)
    insert_users(db, ("later@example.org", None))
    # The state such a kill leaves: the copy beside it, the live database closed.
    stale = f"{db.name}__restoring_20260101000000000"
    admin_sql(pg_admin, f'CREATE DATABASE "{stale}" OWNER "{db.role}"')
    admin_sql(pg_admin, f'ALTER DATABASE "{db.name}" ALLOW_CONNECTIONS false')
    failed(project.run("status", env=env), 2, "not currently accepting connections")

    result = ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))

    assert "closed to new connections" in result.stderr, shown(result)
    assert admin_sql(pg_admin, "SELECT datallowconn FROM pg_database WHERE datname = :d",
                     d=db.name) == [(True,)]
    assert pg_state(db) == at_backup
    assert derived_databases(pg_admin, db.name, "__restoring_") == []
    kept = derived_databases(pg_admin, db.name, "__pre_restore_")
    assert len(kept) == 1
    assert sql_in(kept[0], "SELECT count(*) FROM users WHERE email = 'later@example.org'") == \
        [(1,)]
