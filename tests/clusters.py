"""Throwaway PostgreSQL clusters of a test's own, for what the shared server on 5432 must never
see: a restart, a stop, a preloaded library, a small lock table, WAL archiving.

One builder, `build_cluster()`: `initdb` under a fresh folder owned by the `postgres` OS user, on
a free port, `fsync=off`, trust authentication on 127.0.0.1 (the tool's password is sent and
ignored), then the options:

- `settings`: more postgresql.conf lines (a small lock table, a restless autovacuum);
- `statements=True`: pg_stat_statements preloaded, as the watch needs (a server start, so never
  the shared server);
- `archiving=True`: WAL archived to a local pgBackRest repository in the same folder,
  `stanza-create` and one full backup.

Every PostgreSQL and pgBackRest command runs as `postgres` (`runuser`), never as root: as root
pgBackRest leaves root-owned repository files behind and archiving breaks. `remove()` stops the
cluster and removes the folder; `throwaway()` is the fixtures' way to build one and remove it
afterwards. `Load` is the API's steady read traffic on one of its databases.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import random
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import AWKWARD_PASSWORD, free_port, unavailable

PG_BIN = Path(os.environ.get("TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OWNER = "postgres"
STANZA = "mida"


def as_owner(*args: str) -> list[str]:
    return ["runuser", "-u", OWNER, "--", *args]


class ClusterUnavailable(Exception):
    """What is missing for a throwaway cluster (pgbackrest, initdb, the postgres user)."""


@dataclass
class Cluster:
    root: Path
    port: int
    timings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.repo = self.root / "repo"                 # an archiving cluster's pgBackRest
        self.config = self.root / "pgbackrest.conf"    # repository, and its configuration

    # -- commands, as the cluster's owner ----------------------------------------------------
    def run(self, *args: str, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(as_owner(*args), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): "
                               f"{result.stdout}{result.stderr}")
        return result

    def pgbackrest(self, *args: str, check: bool = True, timeout: float = 120):
        return self.run("pgbackrest", f"--config={self.config}", f"--stanza={STANZA}", *args,
                        check=check, timeout=timeout)

    def pg_ctl(self, *args: str, check: bool = True):
        return self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args, check=check)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the cluster's superuser; the output, unaligned, tuples only."""
        return self.run(str(PG_BIN / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                        "-h", str(self.socket_dir), "-p", str(self.port), "-d", database,
                        "-c", sql).stdout.strip()

    def start(self) -> None:
        self.pg_ctl("-l", str(self.root / "server.log"), "start", "-w")

    def restart(self) -> None:
        """A fast restart: every session is ended, as a DBA's `pg_ctl restart` does."""
        self.pg_ctl("-l", str(self.root / "server.log"), "restart", "-m", "fast", "-w")

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "immediate", "-w", check=False)

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def auto_conf(self) -> str:
        return (self.data / "postgresql.auto.conf").read_text()

    # How an invoke run drives an archiving cluster (the contract's settings).
    @property
    def settings(self) -> dict:
        return {
            "BACKUP_METHOD": "pgbackrest",
            "PGBACKREST_STANZA": STANZA,
            "PGBACKREST_CONFIG": str(self.config),
            "PGBACKREST_COMMAND": f"runuser -u {OWNER} -- pgbackrest",
            "PG_STOP_COMMAND": f"runuser -u {OWNER} -- {PG_BIN / 'pg_ctl'} -D {self.data} "
                               "stop -m fast -w",
            "PG_START_COMMAND": f"runuser -u {OWNER} -- {PG_BIN / 'pg_ctl'} -D {self.data} "
                                f"-l {self.root / 'server.log'} start -w",
        }

    # -- connections and databases -----------------------------------------------------------
    def url(self, database: str = "postgres", role: str = OWNER, password: str | None = None):
        from sqlalchemy.engine import URL
        return URL.create("postgresql+psycopg2", username=role, password=password,
                          host="127.0.0.1", port=self.port, database=database)

    def admin_engine(self):
        from sqlalchemy import create_engine, pool
        return create_engine(self.url(), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")

    def admin_sql(self, statement: str, database: str = "postgres", **params):
        """One statement as the superuser over TCP; its rows (or None)."""
        from sqlalchemy import create_engine, pool, text
        engine = create_engine(self.url(database), poolclass=pool.NullPool,
                               isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                result = conn.execute(text(statement), params)
                return [tuple(r) for r in result.fetchall()] if result.returns_rows else None
        finally:
            engine.dispose()

    def create_database(self, name: str) -> dict:
        """A database owned by the superuser; the env settings that point an invoke run at it."""
        self.psql(f'CREATE DATABASE "{name}"')
        return {"APP_ENV": "pgtest", "POSTGRES_SERVER": "127.0.0.1",
                "POSTGRES_PORT": str(self.port), "POSTGRES_USER": OWNER, "POSTGRES_DB": name}

    def owned_database(self, admin, prefix: str = "mida"):
        """A new database owned by a new LOGIN CREATEDB role, as the shared server's fixtures
        give them (conftest.owned_database): a conftest.PgDatabase."""
        from conftest import PgDatabase

        suffix = secrets.token_hex(4)
        role, name = f"{prefix}_owner_{suffix}", f"{prefix}_test_{suffix}"
        self.psql(f'CREATE ROLE "{role}" LOGIN CREATEDB')
        self.psql(f'CREATE DATABASE "{name}" OWNER "{role}"')
        return PgDatabase(self.url(name, role, AWKWARD_PASSWORD), name, role, admin)

    def drop_database(self, db) -> None:
        """Drop `db`, every `<name>__...` copy a restore kept, and its owner role."""
        names = self.psql(f"SELECT datname FROM pg_database WHERE datname = '{db.name}' "
                          f"OR left(datname, {len(db.name) + 2}) = '{db.name}__'").split()
        for name in names:
            self.psql(f'DROP DATABASE "{name}" WITH (FORCE)')
        self.psql(f'DROP ROLE IF EXISTS "{db.role}"')

    @contextlib.contextmanager
    def database(self, statements: bool = True):
        """The watch's database: the url of an owner role that is a member of
        pg_read_all_stats, with pg_stat_statements created in it (or not, `statements=False`);
        dropped with the role afterwards."""
        db = self.owned_database(None, prefix="watch")
        self.psql(f'GRANT pg_read_all_stats TO "{db.role}"')
        if statements:
            self.psql("CREATE EXTENSION pg_stat_statements", database=db.name)
        try:
            yield db.url
        finally:
            self.drop_database(db)


# -- the builder -----------------------------------------------------------------------------
def build_cluster(prefix: str = "throwaway-cluster-", *, settings: dict[str, str] | None = None,
                  statements: bool = False, archiving: bool = False,
                  repo: str | None = None) -> Cluster:
    """initdb, configure (the options above), start; with `archiving`, stanza-create and a full
    backup, into a posix repository in the cluster's folder or, given `repo` (pgBackRest's
    repo1 lines: an S3 repository, tests/pgbackrest_s3.py), there. Raises ClusterUnavailable
    when a tool is missing, RuntimeError when a step fails (what was made is removed first)."""
    if archiving and shutil.which("pgbackrest") is None:
        raise ClusterUnavailable("pgbackrest is not installed (apt-get install -y pgbackrest)")
    if statements and not (PG_BIN.parent / "lib" / "pg_stat_statements.so").exists():
        raise ClusterUnavailable("pg_stat_statements is not installed (postgresql-contrib)")
    root, owner = _cluster_folder(prefix)
    cluster = Cluster(root, free_port())
    try:
        _set_up(cluster, owner, settings or {}, statements, archiving, repo)
    except BaseException:
        cluster.remove()
        raise
    return cluster


def _cluster_folder(prefix: str):
    """A new folder for a cluster, owned by the cluster's OS user, and that user's pwd entry;
    ClusterUnavailable when initdb or the user is missing."""
    if not (PG_BIN / "initdb").exists():
        raise ClusterUnavailable(f"no initdb in {PG_BIN} (set TEST_PG_BIN)")
    try:
        owner = pwd.getpwnam(OWNER)
    except KeyError:
        raise ClusterUnavailable(f"there is no '{OWNER}' OS user to own the cluster") from None
    # Not "mida-private-...": the tool removes abandoned ones from the temporary folder.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o755)  # the project runs as root; the cluster's owner must reach its files
    os.chown(root, owner.pw_uid, owner.pw_gid)
    return root, owner


def _set_up(cluster: Cluster, owner, settings: dict[str, str], statements: bool,
            archiving: bool, repo: str | None = None) -> None:
    folders = ("sock", "repo", "log", "lock", "spool") if archiving else ("sock",)
    for name in folders:
        (cluster.root / name).mkdir(mode=0o750)
        os.chown(cluster.root / name, owner.pw_uid, owner.pw_gid)
    lines = {"port": str(cluster.port), "listen_addresses": "'127.0.0.1'",
             "unix_socket_directories": f"'{cluster.socket_dir}'", "fsync": "off",
             "synchronous_commit": "off"}
    if statements:
        lines.update({"shared_preload_libraries": "'pg_stat_statements'",
                      "pg_stat_statements.track": "top"})
    if archiving:
        _write_pgbackrest_config(cluster, owner, repo)
        lines.update({"full_page_writes": "on", "wal_level": "replica", "archive_mode": "on",
                      "max_wal_senders": "3",
                      "archive_command": f"'pgbackrest --config={cluster.config} "
                                         f"--stanza={STANZA} archive-push %p'"})
    lines.update(settings)
    started = time.monotonic()
    cluster.run(str(PG_BIN / "initdb"), "-D", str(cluster.data), "--auth=trust", "-U", OWNER,
                "--no-sync", "-E", "UTF8")
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write("".join(f"{k} = {v}\n" for k, v in lines.items()))
    cluster.start()
    if archiving:
        cluster.pgbackrest("stanza-create")
        cluster.timings["initdb+stanza"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        cluster.pgbackrest("--type=full", "backup")
        cluster.timings["full backup"] = round(time.monotonic() - started, 2)


def _write_pgbackrest_config(cluster: Cluster, owner, repo: str | None = None) -> None:
    """`repo`: the repo1 lines (default: a posix repository in the cluster's folder). A config
    given its repo1 lines is made 0600 before they are written: they may hold credentials."""
    root = cluster.root
    if repo is not None:
        os.close(os.open(cluster.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    cluster.config.write_text(
        "[global]\n"
        f"{repo or f'repo1-path={cluster.repo}'}\nrepo1-retention-full=2\n"
        f"log-path={root / 'log'}\nlock-path={root / 'lock'}\nspool-path={root / 'spool'}\n"
        "log-level-file=off\nstart-fast=y\narchive-timeout=30\ncompress-type=lz4\n\n"
        f"[{STANZA}]\npg1-path={cluster.data}\npg1-port={cluster.port}\n"
        f"pg1-socket-path={cluster.socket_dir}\n")
    os.chown(cluster.config, owner.pw_uid, owner.pw_gid)


def throwaway(what: str, **options):
    """For a fixture: `yield from throwaway(...)` yields the cluster `build_cluster(**options)`
    makes and removes it afterwards. A cluster that cannot be built skips the tests, or fails
    them under CI=true."""
    try:
        cluster = build_cluster(**options)
    except (ClusterUnavailable, RuntimeError, OSError, KeyError) as exc:
        unavailable(f"cannot build {what}: {exc}")
    try:
        yield cluster
    finally:
        cluster.remove()


# -- a steady load ---------------------------------------------------------------------------
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
    autocommit connection (no rollbacks of its own), reconnecting after an error (a restore or
    a terminated session cuts it off)."""

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


@dataclass
class ClusterDatabase:
    """A database in the throwaway cluster owned by its own non-superuser role, as the
    application's owner role would be, with the grants the README asks a DBA for."""
    cluster: object
    name: str
    role: str

    def sql(self, statement: str) -> str:
        return self.cluster.psql(statement, database=self.name)

    def env(self, **extra: str) -> dict:
        return {"APP_ENV": "pgtest", "POSTGRES_SERVER": "127.0.0.1",
                "POSTGRES_PORT": str(self.cluster.port), "POSTGRES_USER": self.role,
                "POSTGRES_PASSWORD": AWKWARD_PASSWORD, "POSTGRES_DB": self.name,
                **self.cluster.settings, **extra}

    def revision(self) -> str:
        return self.sql("SELECT version_num FROM alembic_version") if "alembic_version" in \
            self.tables() else ""

    def tables(self) -> list[str]:
        return self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                        "ORDER BY 1").split()

    def schema(self) -> str:
        return self.sql("SELECT string_agg(table_name || '.' || column_name || ':' || data_type, "
                        "',' ORDER BY table_name, column_name) FROM information_schema.columns "
                        "WHERE table_schema = 'public'")


def owned_cluster_database(cluster, *grants: str):
    """For a fixture: `yield from owned_cluster_database(cluster)` yields a ClusterDatabase of
    its own, owned by its own login role, with the restore-point grants the README asks a DBA
    for (function privileges live in each database's catalog) and any further `grants`
    statements (`{role}` is the role); dropped afterwards unless the cluster is in recovery."""
    suffix = secrets.token_hex(4)
    role, name = f"mida_owner_{suffix}", f"mida_test_{suffix}"
    password = AWKWARD_PASSWORD.replace("'", "''")
    cluster.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    cluster.psql(f"CREATE DATABASE {name} OWNER {role}")
    cluster.psql(f"GRANT EXECUTE ON FUNCTION pg_create_restore_point(text), pg_switch_wal() "
                 f"TO {role}", database=name)
    for grant in grants:
        cluster.psql(grant.format(role=role))
    yield ClusterDatabase(cluster, name, role)
    if cluster.psql("SELECT pg_is_in_recovery()") == "f":
        cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cluster.psql(f"DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}")
