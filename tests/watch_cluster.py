"""A throwaway PostgreSQL cluster for the watch's tests: `pg_stat_statements` in
shared_preload_libraries (it needs a server start, so never the shared server), initdb on a
free port as the `postgres` OS user, and a steady load of the kind an API puts on it.

`WatchCluster.database()` makes a database owned by a fresh role that is a member of
pg_read_all_stats, with the extension created (or not, `statements=False`). `Load` is a thread
that looks users up by email, the indexed column, as fast as it can, reconnecting when a
restore or a terminated session cuts it off.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import random
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from pgbackrest_cluster import OWNER, PG_BIN, ClusterUnavailable, as_owner, free_port

import subprocess


@dataclass
class WatchCluster:
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, *args: str, check: bool = True):
        result = subprocess.run(as_owner(*args), capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result

    def admin_url(self, database: str = "postgres"):
        from sqlalchemy.engine import URL
        return URL.create("postgresql+psycopg2", username=OWNER, host="127.0.0.1",
                          port=self.port, database=database)

    def admin_sql(self, statement: str, database: str = "postgres", **params):
        from sqlalchemy import create_engine, pool, text
        engine = create_engine(self.admin_url(database), poolclass=pool.NullPool,
                               isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                result = conn.execute(text(statement), params)
                return [tuple(r) for r in result.fetchall()] if result.returns_rows else None
        finally:
            engine.dispose()

    @contextlib.contextmanager
    def database(self, statements: bool = True):
        """(url of the owner role, database name); dropped with the role afterwards."""
        suffix = secrets.token_hex(4)
        role, name = f"watch_owner_{suffix}", f"watch_test_{suffix}"
        password = "w@tch:pw/" + secrets.token_hex(4)
        self.admin_sql(f'CREATE ROLE "{role}" LOGIN CREATEDB PASSWORD :pw', pw=password)
        self.admin_sql(f'GRANT pg_read_all_stats TO "{role}"')
        self.admin_sql(f'CREATE DATABASE "{name}" OWNER "{role}"')
        if statements:
            self.admin_sql("CREATE EXTENSION pg_stat_statements", database=name)
        url = self.admin_url(name).set(username=role, password=password)
        try:
            yield url
        finally:
            self.admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for other in self.admin_sql("SELECT datname FROM pg_database WHERE datname LIKE :p",
                                        p=name + "\\_\\_%"):
                self.admin_sql(f'DROP DATABASE IF EXISTS "{other[0]}" WITH (FORCE)')
            self.admin_sql(f'DROP ROLE IF EXISTS "{role}"')


def build_watch_cluster() -> WatchCluster:
    if not (PG_BIN / "initdb").exists():
        raise ClusterUnavailable(f"no initdb in {PG_BIN} (set TEST_PG_BIN)")
    if not (PG_BIN.parent / "lib" / "pg_stat_statements.so").exists():
        raise ClusterUnavailable("pg_stat_statements is not installed (postgresql-contrib)")
    try:
        owner = pwd.getpwnam(OWNER)
    except KeyError:
        raise ClusterUnavailable(f"there is no '{OWNER}' OS user to own the cluster") from None
    root = Path(tempfile.mkdtemp(prefix="watch-cluster-"))
    os.chmod(root, 0o755)
    os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = WatchCluster(root, free_port())
    try:
        (root / "sock").mkdir(mode=0o750)
        os.chown(root / "sock", owner.pw_uid, owner.pw_gid)
        cluster.run(str(PG_BIN / "initdb"), "-D", str(cluster.data), "--auth=trust", "-U",
                    OWNER, "--no-sync", "-E", "UTF8")
        with open(cluster.data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {cluster.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{root / 'sock'}'\n"
                       "fsync = off\nsynchronous_commit = off\n"
                       "shared_preload_libraries = 'pg_stat_statements'\n"
                       "pg_stat_statements.track = top\n")
        cluster.run(str(PG_BIN / "pg_ctl"), "-D", str(cluster.data), "-l",
                    str(root / "server.log"), "start", "-w")
    except BaseException:
        remove_watch_cluster(cluster)
        raise
    return cluster


def remove_watch_cluster(cluster: WatchCluster) -> None:
    if (cluster.data / "postmaster.pid").exists():
        cluster.run(str(PG_BIN / "pg_ctl"), "-D", str(cluster.data), "stop", "-m",
                    "immediate", "-w", check=False)
    shutil.rmtree(cluster.root, ignore_errors=True)


def fill_users(url, rows: int) -> None:
    """`rows` users (the table migrations created), emails user<N>@example.org."""
    from sqlalchemy import create_engine, pool, text
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO users (email, full_name, hashed_password) "
                "SELECT 'user' || n || '@example.org', 'User ' || n, 'x' "
                "FROM generate_series(1, :rows) n"), {"rows": rows})
            conn.execute(text("ANALYZE users"))
    finally:
        engine.dispose()


class Load(threading.Thread):
    """The API's steady read traffic: `SELECT ... WHERE email = %s` in a loop, on one
    autocommit connection (no rollbacks of its own), reconnecting after an error."""

    def __init__(self, url, rows: int):
        super().__init__(daemon=True)
        self.dsn = dict(host=url.host, port=url.port, user=url.username, password=url.password,
                        dbname=url.database, application_name="api-load")
        self.rows, self.stop = rows, threading.Event()
        self.queries = 0

    def run(self) -> None:
        import psycopg2

        rng = random.Random(7)
        while not self.stop.is_set():
            conn = None
            try:
                conn = psycopg2.connect(**self.dsn)
                conn.autocommit = True
                # Not `with conn`: since psycopg2 2.9 that opens a transaction even in
                # autocommit, and would hold the table's lock for the whole load.
                with conn.cursor() as cur:
                    while not self.stop.is_set():
                        cur.execute("SELECT id, full_name FROM users WHERE email = %s",
                                    (f"user{rng.randint(1, self.rows)}@example.org",))
                        cur.fetchall()
                        self.queries += 1
            except psycopg2.Error:
                self.stop.wait(0.05)   # a restore or a terminated session: connect again
            finally:
                if conn is not None:
                    conn.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(timeout=30)
