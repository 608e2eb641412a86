"""End to end on a throwaway cluster (issue 17, cases 4 and 6): a restore while autovacuum
works on the live database, and backups and restores of a database of 3,000 tables on a
server with a small lock table (max_locks_per_transaction 64, max_connections 50).
"""
from __future__ import annotations

import time

import pytest

from helpers import (HEAD, SAFETY_PREFIX, admin_sql, derived_databases, failed, ids, insert_users, ok,
                     pg_env, read_manifest, shown, take_backup, without_audit)
from clusters import PG_BIN, throwaway

@pytest.fixture(scope="module")
def cluster():
    for made in throwaway("a throwaway cluster with a small lock table",
                          settings={"max_connections": "50", "max_locks_per_transaction": "64",
                                    "autovacuum_naptime": "1s"}):
        admin = made.admin_engine()
        yield made, admin
        admin.dispose()


@pytest.fixture
def db(cluster):
    made, admin = cluster
    database = made.owned_database(admin)
    yield database
    made.drop_database(database)


def create_tables(cluster, db, count: int, start: int = 0) -> None:
    """`count` tables with two indexes (a primary key, a unique column), owned by db's role,
    500 to a transaction (one transaction creating them all would need a lock per table)."""
    made, _ = cluster
    made.run(str(PG_BIN / "psql"), "-X", "-q",
             "-v", "ON_ERROR_STOP=1", "-h", str(made.socket_dir), "-p", str(made.port),
             "-d", db.name, "-c", f'SET ROLE "{db.role}"', "-c", f"""
DO $$ BEGIN
  FOR i IN {start + 1}..{start + count} LOOP
    EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, note text UNIQUE)', i);
    IF i % 500 = 0 THEN COMMIT; END IF;
  END LOOP;
END $$""")


def wait_for_autovacuum(db, bound: float = 180) -> int:
    """The pid of an autovacuum worker on db, waited for (it starts within the naptime)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        rows = admin_sql(db.admin, "SELECT pid FROM pg_stat_activity WHERE datname = :d "
                                   "AND backend_type = 'autovacuum worker'", d=db.name)
        if rows:
            return rows[0][0]
        time.sleep(0.2)
    pytest.fail(f"no autovacuum worker started on {db.name} within {bound} s")


def slow_vacuum_work(db) -> None:
    """A table autovacuum takes minutes over (its cost limit 1, the longest delay), with
    dead rows for it to find: a worker stays on the live database throughout the restore."""
    db.sql("CREATE TABLE bloat (id int, pad text) WITH (autovacuum_vacuum_cost_delay = 100, "
           "autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_threshold = 0, "
           "autovacuum_vacuum_scale_factor = 0, autovacuum_analyze_threshold = 2000000000)")
    db.sql("INSERT INTO bloat SELECT i, repeat('x', 200) FROM generate_series(1, 60000) i")
    db.sql("DELETE FROM bloat")


def assert_restored_over(project, db, backup: dict, result) -> None:
    """db holds the backup again, open to connections; the old database is kept, with the
    table added after the backup, and its safety backup is listed and verified."""
    assert db.revision() == HEAD
    assert sorted(r[0] for r in db.sql("SELECT email FROM users")) == ["ada@example.org"]
    assert "bloat" not in db.tables()
    assert admin_sql(db.admin, "SELECT datallowconn FROM pg_database WHERE datname = :d",
                     d=db.name) == [(True,)]
    kept = derived_databases(db.admin, db.name, "__pre_restore_")
    assert len(kept) == 1 and kept[0] in result.stdout, shown(result)
    safety = [b for b in project.backups("pgtest", env=pg_env(db))
              if b["reason"] == SAFETY_PREFIX + backup["id"]]
    assert len(safety) == 1 and safety[0]["verified"] is True, shown(result)


# == case 4: autovacuum on the live database ==================================================
@pytest.mark.postgres
def test_an_autovacuum_worker_is_no_session_that_refuses_a_restore(project, db):
    """Before: refused "1 other session(s)" (the worker), advising a grant that cannot help."""
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    backup = take_backup(project, "pgtest", env)
    slow_vacuum_work(db)
    worker = wait_for_autovacuum(db)

    result = ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))
    assert_restored_over(project, db, backup, result)
    # The worker was on the live database until the swap; it is not on the restored one.
    assert admin_sql(db.admin, "SELECT pid FROM pg_stat_activity WHERE pid = :p "
                               "AND datname = :d", p=worker, d=db.name) == []


@pytest.mark.postgres
def test_restore_disconnect_ends_the_clients_and_lets_the_rename_end_autovacuum(project, db):
    """Before: the swap's pg_terminate_backend reached the worker too and failed "must be a
    superuser to terminate superuser process"; nothing was swapped."""
    from sqlalchemy import create_engine, pool, text

    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    backup = take_backup(project, "pgtest", env)
    slow_vacuum_work(db)
    wait_for_autovacuum(db)
    engine = create_engine(db.url, poolclass=pool.NullPool)
    client = engine.connect()  # the application, connected through the restore
    try:
        client.execute(text("SELECT 1"))
        client_pid = client.execute(text("SELECT pg_backend_pid()")).scalar()
        result = ok(project.run("restore", "--yes", "--disconnect",
                                f"--backup={backup['id']}", env=env))
    finally:
        client.invalidate()
        engine.dispose()
    assert_restored_over(project, db, backup, result)
    assert admin_sql(db.admin, "SELECT pid FROM pg_stat_activity WHERE pid = :p",
                     p=client_pid) == []


# == case 6: many tables, a small lock table ===================================================
@pytest.mark.postgres
def test_a_backup_of_3000_tables_needs_no_more_locks_than_pg_dump(project, db, cluster):
    """Before: the row counts, in the snapshot's one transaction, locked every table and its
    index beside pg_dump's locks, and the backup failed "out of shared memory" where bare
    pg_dump succeeds; a restore's safety backup failed the same way after the swap."""
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    create_tables(cluster, db, 3000)
    db.sql("INSERT INTO t1234 VALUES (1, 'one'), (2, 'two')")

    backup = take_backup(project, "pgtest", env)
    counts = read_manifest(project, backup["id"], "pgtest")["row_counts"]
    assert len(counts) == 3002 and counts["public.t1234"] == 2 and counts["public.users"] == 1
    ok(project.run("verify", "--restore-test", f"--backup={backup['id']}", env=env))

    db.sql("INSERT INTO t1234 VALUES (3, 'three')")  # written after the backup
    result = ok(project.run("restore", "--yes", f"--backup={backup['id']}", env=env))
    assert db.sql("SELECT count(*) FROM t1234") == [(2,)]
    assert len(db.tables()) == 3002
    safety = [b for b in project.backups("pgtest", env=env)
              if b["reason"] == SAFETY_PREFIX + backup["id"]]
    assert len(safety) == 1 and safety[0]["verified"] is True, shown(result)
    assert read_manifest(project, safety[0]["id"], "pgtest")["row_counts"]["public.t1234"] == 3


@pytest.mark.postgres
def test_a_database_that_needs_a_bigger_lock_table_is_refused_naming_the_setting(project, db,
                                                                                cluster):
    """4,500 tables do not fit a lock table of 64 x 72 processes with room to spare: the
    backup says so, and the value to set, before pg_dump starts; a restore refuses before
    any work (its safety backup would fail after the swap)."""
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, ("ada@example.org", None))
    small = take_backup(project, "pgtest", env)
    create_tables(cluster, db, 4500)
    listed = ids(project.backups("pgtest", env=env))
    files = project.backup_files("pgtest")

    failed(project.run("backup", env=env), 4, "4502 tables",
           "max_locks_per_transaction = 128", "nothing was changed")
    failed(project.run("restore", "--yes", f"--backup={small['id']}", env=env), 3,
           "before any work", "max_locks_per_transaction = 128")
    assert ids(project.backups("pgtest", env=env)) == listed
    # No backup made or changed (the refused restore is on record: audited, and a drill).
    assert without_audit(project.backup_files("pgtest")) == without_audit(files)
    assert len(db.tables()) == 4502 and db.revision() == HEAD
    assert derived_databases(db.admin, db.name) == []
