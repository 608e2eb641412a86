"""A throwaway PostgreSQL cluster that archives its WAL to a local pgBackRest repository.

`initdb` under a fresh folder owned by the `postgres` OS user, on a free port, with `fsync=off`;
`archive_command` pushes to a repository in the same folder; `stanza-create` and one full
backup. Every PostgreSQL and pgBackRest command runs as `postgres` (`runuser`), never as root:
as root pgBackRest leaves root-owned repository files behind and archiving breaks.
`stop()` stops the cluster and removes the folder.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path(os.environ.get("TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OWNER = "postgres"
STANZA = "mida"


def as_owner(*args: str) -> list[str]:
    return ["runuser", "-u", OWNER, "--", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClusterUnavailable(Exception):
    """What is missing for a throwaway cluster (pgbackrest, initdb, the postgres user)."""


@dataclass
class ArchivingCluster:
    root: Path
    port: int
    timings: dict = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def config(self) -> Path:
        return self.root / "pgbackrest.conf"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
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

    # How an invoke run drives this cluster (the contract's settings).
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

    def start(self) -> None:
        self.pg_ctl("-l", str(self.root / "server.log"), "start", "-w")

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "immediate", "-w", check=False)

    def auto_conf(self) -> str:
        return (self.data / "postgresql.auto.conf").read_text()


def build_cluster() -> ArchivingCluster:
    """initdb, configure, start, stanza-create, full backup. Raises ClusterUnavailable when a
    tool is missing, RuntimeError when a step fails (the caller removes what was made)."""
    if shutil.which("pgbackrest") is None:
        raise ClusterUnavailable("pgbackrest is not installed (apt-get install -y pgbackrest)")
    root, owner = cluster_folder("pgbackrest-cluster-")
    cluster = ArchivingCluster(root, free_port())
    try:
        _set_up(cluster, owner)
    except BaseException:
        remove_cluster(cluster)
        raise
    return cluster


def cluster_folder(prefix: str):
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


def _set_up(cluster: ArchivingCluster, owner, repo: str | None = None) -> None:
    """`repo`: the config's repo1 lines (default: a posix repository in the cluster's folder).
    A config given its repo1 lines is made 0600 before they are written: they may hold the
    repository's credentials."""
    root = cluster.root
    for name in ("repo", "log", "lock", "spool", "sock"):
        (root / name).mkdir(mode=0o750)
        os.chown(root / name, owner.pw_uid, owner.pw_gid)
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
    started = time.monotonic()
    cluster.run(str(PG_BIN / "initdb"), "-D", str(cluster.data), "--auth=trust", "-U", OWNER,
                "--no-sync", "-E", "UTF8")
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write(
            f"port = {cluster.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{cluster.socket_dir}'\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = on\n"
            "wal_level = replica\narchive_mode = on\nmax_wal_senders = 3\n"
            f"archive_command = 'pgbackrest --config={cluster.config} --stanza={STANZA} "
            "archive-push %p'\n")
    cluster.start()
    cluster.pgbackrest("stanza-create")
    cluster.timings["initdb+stanza"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    cluster.pgbackrest("--type=full", "backup")
    cluster.timings["full backup"] = round(time.monotonic() - started, 2)


def remove_cluster(cluster: ArchivingCluster) -> None:
    if (cluster.data / "postmaster.pid").exists():
        cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)
