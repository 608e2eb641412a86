"""A throwaway PostgreSQL cluster of its own (initdb on a free port, trust on 127.0.0.1), for
tests that restart or stop a server: the shared server on 5432 is never restarted.

Built from the pieces of tests/pgbackrest_cluster.py (the same owner, binaries and clean-up),
without WAL archiving. `database(name)` makes a database owned by the cluster's superuser and
returns the env settings that point an invoke run at it.
"""
from __future__ import annotations

import os

from pgbackrest_cluster import OWNER, PG_BIN, ArchivingCluster, free_port, cluster_folder, remove_cluster


class PlainCluster(ArchivingCluster):
    def restart(self) -> None:
        """A fast restart: every session is ended, as a DBA's `pg_ctl restart` does."""
        self.pg_ctl("-l", str(self.root / "server.log"), "restart", "-m", "fast", "-w")

    def database(self, name: str) -> dict:
        self.psql(f'CREATE DATABASE "{name}"')
        return {"APP_ENV": "pgtest", "POSTGRES_SERVER": "127.0.0.1",
                "POSTGRES_PORT": str(self.port), "POSTGRES_USER": OWNER, "POSTGRES_DB": name}


def build_plain_cluster() -> PlainCluster:
    root, owner = cluster_folder("plain-cluster-")
    cluster = PlainCluster(root, free_port())
    try:
        (root / "sock").mkdir(mode=0o750)
        os.chown(root / "sock", owner.pw_uid, owner.pw_gid)
        cluster.run(str(PG_BIN / "initdb"), "-D", str(cluster.data), "--auth=trust", "-U", OWNER,
                    "--no-sync", "-E", "UTF8")
        with open(cluster.data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {cluster.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{cluster.socket_dir}'\n"
                       "fsync = off\nsynchronous_commit = off\n")
        cluster.start()
    except BaseException:
        remove_cluster(cluster)
        raise
    return cluster
