"""End to end: `invoke restore` and `invoke verify --restore-test`, run as a user runs them (a
subprocess in a fresh copy of the project), against a real PostgreSQL server and the embedded
SQLite default. Every test checks the DATABASE afterwards -- tables, rows, revision, sequence,
indexes, constraints, the database's own properties, the databases left on the server -- not
only the exit code.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, pool, text

from conftest import make_project, owned_database
from fake_tools import (ended_afterwards, fake_pg_bin, fifo_pair, size_of_handed_file,
                        started_and_parked)
from helpers import (FIRST, HEAD, SAFETY_PREFIX, Untouched, add_revision, admin_sql,
                     assert_no_password, db_properties, derived_databases,
                     drop_derived, edit_manifest, failed, flip_middle_bit, ids, insert_users,
                     migrated_with_backup, ok, pg_env, pg_state, restore_events, safety_id_from,
                     shown, sql_in, sqlite_rows, take_backup, wait_until_no_sessions,
                     without_audit)

REPORTS_REV = "5e1ea5e0c0de"


# -- helpers ---------------------------------------------------------------------------------
def add_reports_revision(project) -> None:
    """A release's revision after HEAD: a `reports` table with a FOREIGN KEY to users.id."""
    add_revision(project, REPORTS_REV, HEAD, '''
        op.create_table(
            "reports",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("user_id", sa.Integer(), nullable=False),
            sa.Column("finding", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("id", name="pk_reports"),
            sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_reports_user_id_users"),
        )
        op.create_index("ix_reports_user_id", "reports", ["user_id"])
        ''', '''
        op.drop_index("ix_reports_user_id", table_name="reports")
        op.drop_table("reports")
        ''', message="Add reports table", slug="add_reports_table")


def restore_bin(tmp_path: Path, pg_restore_body: str) -> Path:
    """A PG_BIN_DIR (tmp_path/bin): the real pg_dump and a pg_restore running the body."""
    return fake_pg_bin(tmp_path / "bin", pg_restore=pg_restore_body)


@pytest.fixture
def changed_since_backup(project, pgdb, pg_admin) -> SimpleNamespace:
    """pgdb migrated with Ada in it, a backup of that, then a marker row the backup lacks; and
    what a refused restore must leave Untouched."""
    env = pg_env(pgdb)
    backup = migrated_with_backup(project, pgdb, ("ada@example.org", None))
    insert_users(pgdb, ("marker@example.org", None))
    return SimpleNamespace(db=pgdb, env=env, backup=backup,
                           untouched=Untouched(project, pgdb, pg_admin, env))


@pytest.fixture
def reader_role(pgdb, pg_admin):
    """A second role whose name needs quoting, to grant database privileges to."""
    with quoted_role(pg_admin, pgdb) as name:
        yield name


@contextlib.contextmanager
def quoted_role(admin, db):
    """A role whose name needs quoting; on leaving, its grants on `db` go, and the role."""
    name = f"mida reader-{secrets.token_hex(3)}"
    admin_sql(admin, f'CREATE ROLE "{name}"')
    try:
        yield name
    finally:
        drop_derived(admin, db.name)
        admin_sql(admin, f'REVOKE ALL ON DATABASE "{db.name}" FROM "{name}"')
        admin_sql(admin, f'DROP ROLE IF EXISTS "{name}"')


# == 1. the release undone by restore ==========================================================
def set_database_properties(db, reader: str) -> dict:
    """The database's own properties, set by its owner before anything is restored."""
    quoted = f'"{db.name}"'
    db.sql(f"ALTER DATABASE {quoted} SET work_mem = '8MB'")
    db.sql(f"ALTER DATABASE {quoted} SET statement_timeout = '90s'")
    db.sql(f"REVOKE ALL ON DATABASE {quoted} FROM PUBLIC")
    db.sql(f"GRANT CONNECT ON DATABASE {quoted} TO PUBLIC")
    db.sql(f'GRANT CONNECT, TEMPORARY ON DATABASE {quoted} TO "{reader}" WITH GRANT OPTION')
    db.sql(f"COMMENT ON DATABASE {quoted} IS 'Patient''s images -- do not drop'")
    db.sql(f"ALTER DATABASE {quoted} CONNECTION LIMIT 40")
    props = db_properties(db.admin, db.name)
    assert props["acl"] is not None and len(props["acl"]) == 3, props
    assert props["owner"] == db.role
    return props


def release(project, db, env: dict) -> None:
    """The release: users change, a new revision adds `reports` (FOREIGN KEY to users.id)."""
    db.sql("UPDATE users SET full_name = 'Changed', phone_number = NULL "
           "WHERE email = 'ada@example.org'")
    db.sql("DELETE FROM users WHERE email = 'alan@example.org'")
    insert_users(db, ("barbara@example.org", "+1 555 0100"), ("donald@example.org", None))
    add_reports_revision(project)
    ok(project.run("migrate", env=env))
    assert db.revision() == REPORTS_REV
    db.sql("INSERT INTO reports (user_id, finding) SELECT id, 'nodule ' || email FROM users")
    assert "reports" in db.tables()


def undo_a_release(project, db, reader: str, folder: Path) -> SimpleNamespace:
    """Backup, release, restore of that backup (its pg_restore logging what it was asked to
    `folder`); everything the tests look at afterwards is read here, before any of them runs."""
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", "+44 20 7946 0000"), ("grace@example.org", None),
                 ("alan@example.org", "+44 161 496 0000"))
    db.sql("DELETE FROM users WHERE email = 'grace@example.org'")  # a gap in the ids
    insert_users(db, ("edsger@example.org", "+31 20 555 0000"))
    props = set_database_properties(db, reader)

    backup = take_backup(project, "pgtest", env)
    assert backup["revision"] == HEAD
    at_backup = pg_state(db)
    assert at_backup["tables"] == {"alembic_version", "users"}
    assert len(at_backup["users"]) == 3
    release(project, db, env)
    backups_before = ids(project.backups("pgtest", env=env))

    log = folder / "pg_restore.log"
    bin_dir = restore_bin(folder, f"""printf '%s\\n' "$*" >> '{log}'
exec "$REAL" "$@"
""")
    result = ok(project.run("restore", "--yes", f"--backup={backup['id']}",
                            env={**env, "PG_BIN_DIR": str(bin_dir)}))
    run = SimpleNamespace(
        db=db, backup=backup, at_backup=at_backup, props=props, result=result,
        loaded_into=[a for a in log.read_text().split() if a.startswith("--dbname=")],
        backups_before=backups_before, after=pg_state(db),
        props_after=db_properties(db.admin, db.name),
        kept=derived_databases(db.admin, db.name, "__pre_restore_"),
        restoring=derived_databases(db.admin, db.name, "__restoring_"),
        listed=project.backups("pgtest", env=env), events=restore_events(project, "pgtest"))
    run.kept_tables = [{r[0] for r in sql_in(name, "SELECT tablename FROM pg_tables "
                                                   "WHERE schemaname = 'public'")}
                       for name in run.kept]
    run.kept_revisions = [sql_in(name, "SELECT version_num FROM alembic_version")
                          for name in run.kept]
    # New rows get ids after the backup's, as they would have then.
    insert_users(db, ("new@example.org", None))
    run.new_id = db.sql("SELECT id FROM users WHERE email = 'new@example.org'")[0][0]
    return run


@pytest.fixture(scope="class")
def undone(pg_admin, tmp_path_factory):
    """One release undone by restore (undo_a_release), shared by the tests of its class."""
    folder = tmp_path_factory.mktemp("undone")
    project = make_project(folder / "project")
    with owned_database(pg_admin) as db, quoted_role(pg_admin, db) as reader:
        yield undo_a_release(project, db, reader, folder)


@pytest.mark.postgres
class TestRestoreUndoesARelease:
    def test_it_names_the_backup_it_restored(self, undone):
        assert undone.backup["id"] in undone.result.stdout, shown(undone.result)

    def test_the_database_holds_exactly_what_the_backup_held(self, undone):
        after, at_backup = undone.after, undone.at_backup
        assert after["tables"] == {"alembic_version", "users"}
        assert after["revision"] == HEAD
        assert after["users"] == at_backup["users"]
        assert after["sequence"] == at_backup["sequence"]
        assert after["indexes"] == at_backup["indexes"]
        assert after["constraints"] == at_backup["constraints"]
        assert after == at_backup

    def test_new_rows_get_ids_after_the_backups(self, undone):
        assert undone.new_id == undone.at_backup["sequence"][0][0] + 1

    def test_the_databases_properties_and_owner_survive_the_swap(self, undone):
        props, props_after = undone.props, undone.props_after
        assert props_after["oid"] != props["oid"]  # a new database under the old name
        for key in ("owner", "acl", "settings", "comment", "conn_limit", "encoding", "collate",
                    "ctype"):
            assert props_after[key] == props[key], (key, props_after[key], props[key])
        assert props_after["owner"] == undone.db.role
        assert "work_mem=8MB" in props_after["settings"]

    def test_the_old_database_is_kept_with_the_release_in_it(self, undone):
        assert len(undone.kept) == 1, undone.kept
        assert undone.kept[0] in undone.result.stdout, shown(undone.result)
        assert undone.kept_tables == [{"alembic_version", "users", "reports"}]
        assert undone.kept_revisions == [[(REPORTS_REV,)]]

    def test_nothing_half_built_is_left(self, undone):
        # The restore did build a copy beside the live database: pg_restore loaded it...
        [loaded] = undone.loaded_into
        assert loaded.startswith(f"--dbname={undone.db.name}__restoring_"), loaded
        # ...and no such copy is left: the one it built became the live database.
        assert undone.restoring == []

    def test_the_safety_backup_is_named_listed_and_holds_the_release(self, undone):
        safety = safety_id_from(undone.result)
        assert set(ids(undone.listed)) == set(undone.backups_before) | {safety}
        item = next(i for i in undone.listed if i["id"] == safety)
        assert item["reason"].startswith(SAFETY_PREFIX) and undone.backup["id"] in item["reason"]
        assert item["revision"] == REPORTS_REV and item["verified"] is True
        assert f"--backup={safety}" in undone.result.stdout

    def test_the_restore_is_audited_with_both_revisions(self, undone):
        events = undone.events
        assert len(events) == 1 and events[0]["outcome"] == "succeeded"
        assert events[0]["backup_id"] == undone.backup["id"]
        assert events[0]["from_revision"] == REPORTS_REV and events[0]["to_revision"] == HEAD


# == 2. no confirmation ========================================================================
@pytest.mark.postgres
def test_restore_without_yes_and_without_a_terminal_is_refused(project, pgdb, pg_admin):
    db = pgdb
    env = pg_env(db)
    backup = migrated_with_backup(project, db, ("ada@example.org", None))
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
def backup_files(artifact: Path) -> set[str]:
    """The names beside a backup's artifact, audit records aside."""
    return without_audit(p.name for p in artifact.parent.iterdir())


@pytest.mark.postgres
@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_damaged_backup_is_refused_and_nothing_is_touched(project, pgdb, pg_admin, damage):
    db = pgdb
    env = pg_env(db)
    backup = migrated_with_backup(project, db, ("ada@example.org", None),
                                  ("grace@example.org", "+1 555 0101"))
    artifact = Path(backup["location"])
    if damage == "truncated":
        data = artifact.read_bytes()
        artifact.write_bytes(data[: len(data) // 2])
    else:
        flip_middle_bit(artifact)
    insert_users(db, ("marker@example.org", None))
    ok(project.run("stamp", FIRST, env=env))  # the live database moves on, too
    untouched = Untouched(project, db, pg_admin, env)
    files = backup_files(artifact)

    failed(project.run("restore", "--yes", f"--backup={backup['id']}", env=env), 4,
           backup["id"])

    untouched.check()
    assert db.revision() == FIRST
    assert db.sql("SELECT count(*) FROM users WHERE email = 'marker@example.org'")[0][0] == 1
    assert backup_files(artifact) == files
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
    backup = migrated_with_backup(project, db, ("ada@example.org", None))
    artifact = Path(backup["location"])
    flip_middle_bit(artifact)
    untouched = Untouched(project, db, pg_admin, env)
    files = backup_files(artifact)

    calls = tmp_path / "pg_dump-calls"
    bin_dir = fake_pg_bin(tmp_path / "bin", pg_dump=f"""echo "$1" >> '{calls}'
exec "$REAL" "$@"
""")
    result = project.run("restore", "--yes", f"--backup={backup['id']}",
                         env=pg_env(db, PG_BIN_DIR=str(bin_dir)), timeout=120)
    failed(result, 4, backup["id"], "checksum")
    assert set(calls.read_text().splitlines()) == {"--version"}, calls.read_text()

    untouched.check()
    assert backup_files(artifact) == files


# == 4. killed halfway =========================================================================
@contextlib.contextmanager
def project_and_database(pg_admin, tmp_path_factory, name: str):
    """For a class-scoped fixture: a project in a folder of its own, a database of its own
    (dropped on leaving, with every `<name>__...` database beside it) and a scratch folder."""
    folder = tmp_path_factory.mktemp(name)
    with owned_database(pg_admin) as db:
        try:
            yield make_project(folder / "project"), db, folder
        finally:
            drop_derived(pg_admin, db.name)


def kill_halfway(project, db, tmp: Path) -> SimpleNamespace:
    """A backup, changes after it, then a restore killed while its pg_restore has built the
    copy's schema but not its rows; then the next restore. What each step left is read here."""
    backup = migrated_with_backup(project, db, ("ada@example.org", None),
                                  ("grace@example.org", None))
    run = SimpleNamespace(at_backup=pg_state(db))
    insert_users(db, ("marker-1@example.org", None), ("marker-2@example.org", None))
    db.sql("DELETE FROM users WHERE email = 'ada@example.org'")
    db.sql("CREATE TABLE audit_notes (id serial PRIMARY KEY, note text)")
    db.sql("INSERT INTO audit_notes (note) VALUES ('live only')")
    run.before, run.oid = pg_state(db), db_properties(db.admin, db.name)["oid"]

    # pg_restore into the new database: build its schema, tell the test, then wait (forever:
    # the test kills the run here, halfway through the restore).
    started, go = fifo_pair(tmp)
    bin_dir = restore_bin(tmp, f"""
for arg in "$@"; do
  case "$arg" in
    --dbname=*)
      "$REAL" --section=pre-data "$@" || exit $?
      echo started > '{started}'
      read -r _ < '{go}'
      exec "$REAL" --section=data --section=post-data "$@" ;;
  esac
done
exec "$REAL" "$@"
""")
    restore, _ = started_and_parked(project, started, "restore", "--yes",
                                    f"--backup={backup['id']}",
                                    env=pg_env(db, PG_BIN_DIR=str(bin_dir)))
    with ended_afterwards(restore):
        run.restoring = derived_databases(db.admin, db.name, "__restoring_")
        run.halfway_rows = [sql_in(name, "SELECT count(*) FROM users") for name in run.restoring]
        os.killpg(restore.pid, signal.SIGKILL)
        restore.wait(timeout=60)
    wait_until_no_sessions(db.admin, db.name, *run.restoring)
    run.after_kill = SimpleNamespace(
        state=pg_state(db), oid=db_properties(db.admin, db.name)["oid"],
        notes=db.sql("SELECT note FROM audit_notes"),
        kept=derived_databases(db.admin, db.name, "__pre_restore_"),
        restoring=derived_databases(db.admin, db.name, "__restoring_"))

    run.next = ok(project.run("restore", "--yes", env=pg_env(db)))
    run.after_next = SimpleNamespace(
        state=pg_state(db), kept=derived_databases(db.admin, db.name, "__pre_restore_"),
        restoring=derived_databases(db.admin, db.name, "__restoring_"))
    return run


@pytest.fixture(scope="class")
def killed_halfway(pg_admin, tmp_path_factory):
    with project_and_database(pg_admin, tmp_path_factory, "killed") as (project, db, tmp):
        yield kill_halfway(project, db, tmp)


@pytest.mark.postgres
class TestARestoreKilledHalfway:
    def test_halfway_the_copy_has_its_schema_but_no_rows(self, killed_halfway):
        assert len(killed_halfway.restoring) == 1, killed_halfway.restoring
        assert killed_halfway.halfway_rows == [[(0,)]]

    def test_the_live_database_is_as_it_was(self, killed_halfway):
        after = killed_halfway.after_kill
        assert after.state == killed_halfway.before
        assert after.oid == killed_halfway.oid
        assert after.notes == [("live only",)]
        assert after.kept == []

    def test_the_half_built_copy_is_left_behind(self, killed_halfway):
        assert killed_halfway.after_kill.restoring == killed_halfway.restoring

    def test_the_next_restore_drops_the_stale_copy_and_restores(self, killed_halfway):
        result, after = killed_halfway.next, killed_halfway.after_next
        assert killed_halfway.restoring[0] in result.stdout + result.stderr, shown(result)
        assert after.restoring == []
        assert after.state == killed_halfway.at_backup
        assert len(after.kept) == 1


# == 5. the default choice skips safety backups ================================================
@pytest.mark.postgres
def test_two_restores_in_a_row_choose_the_same_backup_not_the_safety_backup(project, pgdb,
                                                                           pg_admin):
    db = pgdb
    env = pg_env(db)
    backup_a = migrated_with_backup(project, db, ("ada@example.org", None))
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


def sqlite_backed_up(project, path: Path) -> dict:
    """dev.db at head in WAL mode, three users, and one backup of it."""
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
    return backup


def sqlite_later_release(project, path: Path) -> dict:
    """Rows changed, a table added, and a rollback (the schema moves, too); the rows after."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE users SET full_name = 'Changed' WHERE email = 'ada@example.org'")
        conn.execute("DELETE FROM users WHERE email = 'alan@example.org'")
        conn.executemany("INSERT INTO users (email, full_name, hashed_password) VALUES (?, ?, 'x')",
                         [("b@example.org", "B"), ("c@example.org", "C"), ("d@example.org", "D")])
        conn.execute("CREATE TABLE extra (id INTEGER PRIMARY KEY, note TEXT)")
        conn.execute("INSERT INTO extra (note) VALUES ('from a later release')")
    conn.close()
    ok(project.run("rollback"))
    changed = sqlite_rows(path)
    assert changed["alembic_version"] == [(FIRST,)] and "extra" in changed
    return changed


def restore_while_read(project) -> SimpleNamespace:
    """An SQLite backup, a later release, and a restore of the backup while a reader is at
    work; what the reader saw, and what the tests look at, is read here."""
    path = project.root / "dev.db"
    backup = sqlite_backed_up(project, path)
    run = SimpleNamespace(backup=backup, at_backup=sqlite_rows(path))
    assert set(run.at_backup) == {"alembic_version", "users"} and len(run.at_backup["users"]) == 3
    changed = sqlite_later_release(project, path)
    run.old, run.new = (len(changed["users"]), FIRST, 1), (3, HEAD, 0)
    run.listed_before = ids(project.backups("dev"))

    run.reader = Reader(path)
    run.reader.start()
    try:
        assert run.reader.first.wait(30)
        run.result = ok(project.run("restore", "--yes", f"--backup={backup['id']}"))
    finally:
        run.reader.stop.set()
        run.reader.join(60)
    run.rows = sqlite_rows(path)
    check = sqlite3.connect(path)
    try:
        run.integrity = check.execute("PRAGMA integrity_check").fetchall()
    finally:
        check.close()
    run.listed, run.events = project.backups("dev"), restore_events(project, "dev")
    return run


@pytest.fixture(scope="class")
def read_while_restored(tmp_path_factory):
    yield restore_while_read(make_project(tmp_path_factory.mktemp("sqlite") / "project"))


class TestSqliteRestoreWithAConcurrentReader:
    def test_the_reader_sees_the_old_database_then_the_restored_one_and_nothing_between(
            self, read_while_restored):
        reader, old, new = read_while_restored.reader, read_while_restored.old, \
            read_while_restored.new
        assert not reader.is_alive()
        assert reader.errors == [], reader.errors
        assert reader.seen[0] == old
        assert reader.seen[-1] == new
        assert set(reader.seen) <= {old, new}, set(reader.seen)

    def test_the_database_holds_exactly_the_backup_and_is_intact(self, read_while_restored):
        assert read_while_restored.rows == read_while_restored.at_backup
        assert read_while_restored.integrity == [("ok",)]

    def test_the_safety_backup_is_listed_and_holds_the_database_as_it_was(
            self, read_while_restored):
        run = read_while_restored
        safety = safety_id_from(run.result)
        assert set(ids(run.listed)) == set(run.listed_before) | {safety}
        item = next(i for i in run.listed if i["id"] == safety)
        assert item["reason"] == SAFETY_PREFIX + run.backup["id"] and item["revision"] == FIRST

    def test_the_restore_is_audited(self, read_while_restored):
        events = read_while_restored.events
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
    bin_dir = restore_bin(tmp_path, f"""printf '%s\\n' "$*" >> '{log}'
exec "$REAL" "$@"
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
    prod = pg_env(db, APP_ENV="prod", BACKUP_ENCRYPTION="optional")
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

    events = restore_events(project, "prod")
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
def test_restore_is_refused_while_another_session_is_connected(project, changed_since_backup):
    db, env, backup = changed_since_backup.db, changed_since_backup.env, changed_since_backup.backup

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

    changed_since_backup.untouched.check()


@pytest.mark.postgres
def test_restore_by_a_role_that_may_not_create_databases_is_refused_first(
        project, changed_since_backup, pg_admin):
    db, backup = changed_since_backup.db, changed_since_backup.backup
    with pg_admin.connect() as admin:
        admin.execute(text(f'ALTER ROLE "{db.role}" NOCREATEDB'))

    failed(project.run("restore", "--yes", f"--backup={backup['id']}",
                       env=changed_since_backup.env), 3, "CREATEDB", db.role)

    changed_since_backup.untouched.check()  # no safety backup either


@pytest.mark.postgres
def test_a_step_the_server_refuses_is_one_sentence_not_a_traceback(pgdb):
    from app.ops.errors import BackupFailed
    from app.ops.databases.postgres.server import PostgresServer

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
    edit_manifest(project, backup["id"], "dev", revision=FIRST)
    ok(project.run("rollback"))
    listed = ids(project.backups("dev"))

    result = project.run("restore", "--yes", f"--backup={backup['id']}")
    failed(result, 4, f"after the restore the database is at {HEAD}", backup["id"], FIRST)

    # The data did come back (SQLite has no copy to check before it writes): the run says it
    # failed, and the safety backup of the database as it was is listed and audited.
    assert sqlite_rows(path)["alembic_version"] == [(HEAD,)]
    events = restore_events(project, "dev")
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
def test_a_copy_at_another_revision_than_the_backups_is_never_swapped_in(
        project, changed_since_backup):
    db, backup = changed_since_backup.db, changed_since_backup.backup
    assert backup["revision"] == HEAD
    edit_manifest(project, backup["id"], "pgtest", revision=FIRST)

    result = project.run("restore", "--yes", f"--backup={backup['id']}",
                         env=changed_since_backup.env)

    # The state first: a check made only after the swap also ends exit 4, too late.
    changed_since_backup.untouched.check()  # same oid, same rows, no safety backup, no copy
    failed(result, 4, backup["id"], FIRST, "nothing was swapped")
    assert db.sql("SELECT count(*) FROM users WHERE email = 'marker@example.org'")[0][0] == 1
    events = restore_events(project, "pgtest")
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


def restore_under_load(project, db) -> SimpleNamespace:
    """`restore --disconnect` while the application writes a row every 100 ms; the writes it
    saw acknowledged, and everything the tests look at afterwards, are read here."""
    env = pg_env(db)
    backup = with_app_table(project, db, env)
    run = SimpleNamespace(backup=backup, at_backup_users=pg_state(db)["users"])
    insert_users(db, ("after-backup@example.org", None))
    run.oid_before = db_properties(db.admin, db.name)["oid"]

    app = AppSession(db.url)
    app.start()
    try:
        assert app.enough.wait(30), app.failures
        run.result = ok(project.run("restore", "--yes", "--disconnect",
                                    f"--backup={backup['id']}", env=env))
        # Served by the restored database, the same session goes on writing a few rows more.
        run.served_by_other = app.served_by_other.wait(30)
        if run.served_by_other:
            served_after = len(app.acked)
            deadline = time.monotonic() + 30
            while len(app.acked) < served_after + 3:
                assert time.monotonic() < deadline, app.failures
                time.sleep(0.05)
    finally:
        app.stop.set()
        app.join(30)
    assert not app.is_alive()
    run.app, run.oid_after = app, db_properties(db.admin, db.name)["oid"]
    run.old = [n for n, oid, _ in app.acked if oid == run.oid_before]
    run.new = [n for n, oid, _ in app.acked if oid == run.oid_after]
    run.downtime = re.search(r"downtime ([0-9.]+) s", run.result.stdout)
    run.users = pg_state(db)["users"]
    run.writes = sorted(r[0] for r in db.sql("SELECT n FROM app_writes"))
    run.kept = derived_databases(db.admin, db.name, "__pre_restore_")
    run.kept_rows = [{r[0] for r in sql_in(name, "SELECT n FROM app_writes")} for name in run.kept]
    run.restoring = derived_databases(db.admin, db.name, "__restoring_")
    run.listed = project.backups("pgtest", env=env)
    run.store, run.events = project.store("pgtest"), restore_events(project, "pgtest")
    return run


@pytest.fixture(scope="class")
def under_load(pg_admin, tmp_path_factory):
    with project_and_database(pg_admin, tmp_path_factory, "under-load") as (project, db, _):
        yield restore_under_load(project, db)


@pytest.mark.postgres
class TestRestoreWithDisconnectKeepsTheApplicationServed:
    def test_the_same_session_is_served_by_the_restored_database_afterwards(self, under_load):
        assert under_load.served_by_other, (under_load.app.failures, shown(under_load.result))
        assert under_load.oid_after != under_load.oid_before
        old, new = under_load.old, under_load.new
        assert old and new and set(old) | set(new) == {n for n, _, _ in under_load.app.acked}

    def test_the_application_kept_working_while_the_copy_was_built(self, under_load):
        # Its downtime was the swap's.
        app = under_load.app
        assert app.longest_gap() < 5.0, (app.longest_gap(), app.failures)

    def test_the_downtime_is_short_and_reported_with_the_time_to_service(self, under_load):
        result = under_load.result
        assert under_load.downtime, shown(result)
        assert float(under_load.downtime.group(1)) < 2.0, shown(result)
        assert re.search(r"time to service ([0-9.]+) s", result.stdout), shown(result)

    def test_the_restored_database_holds_the_backup_and_the_writes_after_the_swap(
            self, under_load):
        assert under_load.users == under_load.at_backup_users
        assert under_load.writes == sorted(under_load.new)

    def test_every_write_the_old_database_acknowledged_is_kept_under_its_dated_name(
            self, under_load):
        assert len(under_load.kept) == 1, under_load.kept
        [kept_rows] = under_load.kept_rows
        assert set(under_load.old) <= kept_rows, sorted(set(under_load.old) - kept_rows)
        assert under_load.restoring == []

    def test_the_safety_backup_counted_exactly_the_rows_the_kept_database_holds(self, under_load):
        # Taken of that database after the swap, it holds every acknowledged write.
        result, backup = under_load.result, under_load.backup
        safety = safety_id_from(result)
        item = next(i for i in under_load.listed if i["id"] == safety)
        assert item["reason"] == SAFETY_PREFIX + backup["id"] and item["verified"] is True
        assert item["revision"] == HEAD
        manifest = json.loads((under_load.store / f"{safety}.manifest.json").read_text())
        assert manifest["row_counts"]["public.app_writes"] == len(under_load.kept_rows[0])
        assert f"--backup={safety} --yes --disconnect" in result.stdout, shown(result)

    def test_the_restore_is_audited_with_its_downtime(self, under_load):
        events = under_load.events
        assert len(events) == 1 and events[0]["outcome"] == "succeeded"
        assert events[0]["downtime_seconds"] == float(under_load.downtime.group(1))
        assert events[0]["time_to_service_seconds"] > 0
        assert events[0]["disconnect"] is True
        assert events[0]["safety_backup_id"] == safety_id_from(under_load.result)


@pytest.mark.postgres
def test_restore_without_disconnect_refuses_at_once_naming_the_application(project, pgdb,
                                                                          pg_admin):
    db = pgdb
    env = pg_env(db)
    backup = with_app_table(project, db, env)
    store = project.store("pgtest")
    manifest_before = (store / f"{backup['id']}.manifest.json").read_text()
    untouched_files = without_audit(project.backup_files("pgtest"))

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
    assert without_audit(project.backup_files("pgtest")) == untouched_files


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
    bin_dir = fake_pg_bin(tmp_path / "bin", pg_dump="""case "$1 $PGDATABASE" in
  --version*) ;;
  *__pre_restore_*) echo "pg_dump: error: connection to server lost" >&2; exit 1 ;;
esac
exec "$REAL" "$@"
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
    events = restore_events(project, "pgtest")
    assert len(events) == 1 and events[0]["outcome"] == "restored, safety backup failed"
    assert events[0]["kept_database"] == kept[0]
    assert "connection to server lost" in events[0]["safety_backup_error"]


# == 12. nothing decompressed has a name on disk ===============================================
def files_on_disk(tmp: Path, store: Path) -> list[str]:
    """Any file in TMPDIR, and any half-written one in the store."""
    return sorted(str(p) for p in tmp.rglob("*") if not p.is_dir()) + \
        sorted(str(p) for p in store.iterdir() if ".partial" in p.name)


def kill_then_run_again(project, db, folder: Path, command: tuple) -> SimpleNamespace:
    """`command` on a backup, killed -9 while its pg_restore holds the archive open; then run
    again to its end. What was on disk at each step is read here."""
    backup = migrated_with_backup(project, db, ("ada@example.org", "+44 20 7946 0000"),
                                  ("grace@example.org", None))
    run = SimpleNamespace(at_backup=pg_state(db))
    insert_users(db, ("later@example.org", None))
    tmp = folder / "tmp"
    tmp.mkdir()
    store = project.store("pgtest")
    started, go = fifo_pair(folder)
    args = folder / "args"
    bin_dir = restore_bin(folder, f"""
for arg in "$@"; do
  case "$arg" in
    --dbname=*)
      printf '%s\\n' "$*" > '{args}'
      echo $$ > '{started}'
      read -r _ < '{go}' ;;
  esac
done
exec "$REAL" "$@"
""")
    env = {**pg_env(db, PG_BIN_DIR=str(bin_dir)), "TMPDIR": str(tmp)}
    argv = (*command, f"--backup={backup['id']}")

    # Killed while pg_restore holds the archive open: the extract, in TMPDIR under no name.
    first, said = started_and_parked(project, started, *argv, env=env)
    with ended_afterwards(first):
        run.while_read, run.handed = files_on_disk(tmp, store), args.read_text()
        run.held = size_of_handed_file(int(said.split()[0]), run.handed, tmp)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    run.after_kill = files_on_disk(tmp, store)
    wait_until_no_sessions(db.admin, db.name)

    # The next run reads the archive through that path, in parallel, and succeeds.
    second, said = started_and_parked(project, started, *argv, env=env)
    try:
        run.while_read_again = files_on_disk(tmp, store)
        run.held_again = size_of_handed_file(int(said.split()[0]), args.read_text(), tmp)
        fd = os.open(go, os.O_WRONLY)
        os.write(fd, b"go\n")
        os.close(fd)
        run.out, run.err = second.communicate(timeout=240)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()
    run.returncode, run.after_run = second.returncode, files_on_disk(tmp, store)
    run.state, run.derived = pg_state(db), derived_databases(db.admin, db.name)
    return run


@pytest.fixture(scope="class", params=[("restore", "--yes"), ("verify", "--restore-test")],
                ids=["restore", "restore-test"])
def killed_reading(request, pg_admin, tmp_path_factory):
    with project_and_database(pg_admin, tmp_path_factory, "killed-reading") as (project, db,
                                                                                folder):
        yield request.param, kill_then_run_again(project, db, folder, request.param)


@pytest.mark.postgres
class TestTheExtractedArchiveNeverHasAName:
    """The seekable copy pg_restore --jobs needs is a file without a name, handed over as
    /proc/self/fd/N: while pg_restore reads it, TMPDIR holds no file at all, and a kill -9 there
    leaves nothing behind; the next run works."""

    def test_no_file_is_on_disk_while_pg_restore_reads_it(self, killed_reading):
        _, run = killed_reading
        # The extract exists, not empty, in TMPDIR: pg_restore holds it open...
        assert (run.held or 0) > 0 and (run.held_again or 0) > 0, (run.held, run.held_again)
        # ...under no name.
        assert run.while_read == []
        assert run.while_read_again == []

    def test_pg_restore_is_handed_a_proc_fd_path_and_jobs(self, killed_reading):
        _, run = killed_reading
        assert re.search(r" /proc/self/fd/\d+$", run.handed.strip()), run.handed
        assert f"--jobs={max(1, min(os.cpu_count() or 1, 8))}" in run.handed, run.handed

    def test_a_kill_leaves_nothing_behind(self, killed_reading):
        _, run = killed_reading
        assert (run.held or 0) > 0, run.held  # the extract, in TMPDIR, at the kill
        assert run.after_kill == []

    def test_the_next_run_succeeds_and_leaves_nothing(self, killed_reading):
        command, run = killed_reading
        assert run.returncode == 0, (run.out, run.err)
        assert (run.held_again or 0) > 0, run.held_again
        assert run.after_run == []
        if command[0] == "restore":
            assert run.state == run.at_backup
        else:
            assert "2 tables" in run.out and "3 rows" in run.out, run.out
            assert run.derived == []


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
