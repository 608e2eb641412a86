"""A throwaway PostgreSQL cluster with settings of a test's choosing (a small lock table, a
restless autovacuum), and databases in it owned by non-superuser roles, as the shared server's
fixtures give them (conftest.owned_database).

`initdb` under a fresh folder owned by the `postgres` OS user, on a free port, `fsync=off`,
trust authentication on 127.0.0.1 (the tool's password is sent and ignored). `remove()` stops
the cluster and removes the folder.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pgbackrest_cluster import OWNER, PG_BIN, as_owner, cluster_folder, free_port
from helpers import AWKWARD_PASSWORD


@dataclass
class ThrowawayCluster:
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(as_owner(*args), capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): "
                               f"{result.stdout}{result.stderr}")
        return result.stdout

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the cluster's superuser; the output, unaligned, tuples only."""
        return self.run(str(PG_BIN / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                        "-h", str(self.root / "sock"), "-p", str(self.port), "-d", database,
                        "-c", sql).strip()

    def admin_engine(self):
        from sqlalchemy import create_engine, pool
        return create_engine(self.url("postgres", OWNER), poolclass=pool.NullPool,
                             isolation_level="AUTOCOMMIT")

    def url(self, database: str, role: str, password: str | None = None):
        from sqlalchemy.engine import URL
        return URL.create("postgresql+psycopg2", username=role, password=password,
                          host="127.0.0.1", port=self.port, database=database)

    def owned_database(self, admin):
        """A new database owned by a new LOGIN CREATEDB role: a conftest.PgDatabase."""
        from conftest import PgDatabase

        suffix = secrets.token_hex(4)
        role, name = f"mida_owner_{suffix}", f"mida_test_{suffix}"
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

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(as_owner(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "stop",
                                    "-m", "immediate", "-w"), capture_output=True, timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(settings: dict[str, str]) -> ThrowawayCluster:
    """initdb, the given postgresql.conf settings, start. ClusterUnavailable when initdb or the
    postgres OS user is missing."""
    root, owner = cluster_folder("throwaway-cluster-")
    cluster = ThrowawayCluster(root, free_port())
    try:
        (root / "sock").mkdir(mode=0o750)
        os.chown(root / "sock", owner.pw_uid, owner.pw_gid)
        cluster.run(str(PG_BIN / "initdb"), "-D", str(cluster.data), "--auth=trust", "-U", OWNER,
                    "--no-sync", "-E", "UTF8")
        lines = {"port": str(cluster.port), "listen_addresses": "'127.0.0.1'",
                 "unix_socket_directories": f"'{root / 'sock'}'", "fsync": "off",
                 "synchronous_commit": "off", **settings}
        with open(cluster.data / "postgresql.conf", "a") as conf:
            conf.write("".join(f"{k} = {v}\n" for k, v in lines.items()))
        cluster.run(str(PG_BIN / "pg_ctl"), "-D", str(cluster.data), "-l",
                    str(root / "server.log"), "start", "-w")
    except BaseException:
        cluster.remove()
        raise
    return cluster
