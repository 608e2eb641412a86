"""Shared fixtures: a copy of the project to run `invoke` in, real PostgreSQL databases, an S3
endpoint (moto) with a bucket per test, a throwaway pgBackRest cluster and small disks.

PostgreSQL comes from TEST_DATABASE_URL (a role that may create roles and databases), else the
local server on 127.0.0.1:5432 as `postgres`. Each test gets its own non-superuser role that
owns its own database, with a password full of awkward characters. Under CI=true a missing
server fails the tests that need it instead of skipping them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import AWKWARD_PASSWORD, Key, admin_url, drop_derived, unavailable, write_dotenv

REPO = Path(__file__).resolve().parent.parent
S3_PREFIX = "mida/backups"   # where the e2e tests keep backups in their bucket
# Settings that must not leak from the developer's shell into a test's invoke run.
CLEARED = ("APP_ENV", "DATABASE_URL", "USE_SQLITE", "SQLITE_PATH", "PRODUCTION", "BACKUP_DIR",
           "BACKUP_STORAGE", "MAINTENANCE_WINDOW", "MAINTENANCE_TIMEZONE", "PG_BIN_DIR",
           "REQUIRE_STAGING_FIRST")
CLEARED_PREFIXES = ("POSTGRES_", "AWS_", "BACKUP_", "MIGRATION_", "PG", "CHECK_")


# Fixtures that mean a test runs invoke as a subprocess, or needs a server, a bucket or a disk.
E2E_FIXTURES = {"project", "pg_admin", "e2e_moto", "archiving_cluster", "small_disk"}


def pytest_collection_modifyitems(config, items):
    """Every test in a `*_e2e.py` file, and every test using an E2E_FIXTURES fixture, is marked
    `e2e`, so `pytest -m "not e2e"` is the fast loop of pure unit tests."""
    for item in items:
        if item.path.name.endswith("_e2e.py") or E2E_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def pg_admin():
    """An AUTOCOMMIT engine on the server's maintenance database."""
    from sqlalchemy import create_engine, pool, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(admin_url(), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        unavailable(f"PostgreSQL is not reachable at {admin_url().render_as_string()}: {exc.orig}")
    yield engine
    engine.dispose()


@dataclass
class PgDatabase:
    url: object      # SQLAlchemy URL of the owner role, password included
    name: str
    role: str
    admin: object

    def sql(self, statement: str, **params):
        """Run one statement as the owner; return all rows (or None)."""
        from sqlalchemy import create_engine, pool, text
        engine = create_engine(self.url, poolclass=pool.NullPool)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return result.fetchall() if result.returns_rows else None
        finally:
            engine.dispose()

    def admin_sql(self, statement: str, **params):
        """Run one statement as the server's admin role; return all rows."""
        from sqlalchemy import text
        with self.admin.connect() as conn:
            return conn.execute(text(statement), params).fetchall()

    def tables(self) -> set[str]:
        return {r[0] for r in self.sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}

    def revision(self):
        if "alembic_version" not in self.tables():
            return None
        rows = self.sql("SELECT version_num FROM alembic_version")
        return rows[0][0] if rows else None

    def columns(self, table: str) -> list[str]:
        return [r[0] for r in self.sql(
            "SELECT column_name FROM information_schema.columns WHERE table_name = :t "
            "ORDER BY ordinal_position", t=table)]


@contextlib.contextmanager
def owned_database(admin):
    """A fresh database owned by a fresh non-superuser role (LOGIN CREATEDB) with an awkward
    password; dropped, with the role, on leaving."""
    from sqlalchemy import text

    suffix = secrets.token_hex(4)
    role, name = f"mida_owner_{suffix}", f"mida_test_{suffix}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN CREATEDB PASSWORD :pw'),
                     {"pw": AWKWARD_PASSWORD})
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER "{role}"'))
    url = admin_url().set(username=role, password=AWKWARD_PASSWORD, database=name)
    try:
        yield PgDatabase(url, name, role, admin)
    finally:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))


@pytest.fixture
def pg_database(pg_admin):
    """A database of its own for the test (owned_database)."""
    with owned_database(pg_admin) as db:
        yield db


@pytest.fixture
def pgdb(pg_database):
    """pg_database, plus clean-up of every `<name>__...` database a restore, a drill or a
    rehearsal leaves or keeps: they belong to the test's role, which pg_database drops
    afterwards."""
    yield pg_database
    drop_derived(pg_database.admin, pg_database.name)


@dataclass
class Project:
    """A copy of the project, as a fresh clone would be, to run `invoke` in as a user does."""
    root: Path

    def env_file(self, name: str, **settings: str) -> Path:
        return write_dotenv(self.root / f".env.{name}", **settings)

    def environ(self, env: dict | None) -> dict:
        """This process's environment without the project's settings, plus `env`."""
        environ = {k: v for k, v in os.environ.items() if k not in CLEARED
                   and not k.startswith(CLEARED_PREFIXES)}
        environ.update(env or {})
        return environ

    def run(self, *args: str, env: dict | None = None, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=self.root,
                              env=self.environ(env), input=input, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        """Like run, but returns at once, in a session (process group) of its own, so that a
        test can end it and everything it started."""
        return subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=self.root,
                                env=self.environ(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def backups(self, env_name: str = "dev", env: dict | None = None) -> list[dict]:
        result = self.run("backups", f"--env={env_name}", "--json", env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def store(self, env_name: str = "dev") -> Path:
        """The local store folder of one environment."""
        return self.root / "backups" / env_name

    def backup_files(self, env_name: str = "dev") -> set[str]:
        folder = self.store(env_name)
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def make_project(root: Path) -> Project:
    """A copy of the project's app, migrations and tasks in `root` (which must not exist)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    root.mkdir()
    for name in ("app", "alembic"):
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    for name in ("tasks.py", "alembic.ini"):
        shutil.copy2(REPO / name, root / name)
    (root / "backups").mkdir()
    (root / "backups" / ".gitkeep").touch()
    return Project(root)


@pytest.fixture
def project(tmp_path) -> Project:
    return make_project(tmp_path / "project")


@pytest.fixture
def keys(tmp_path):
    """keys(name) makes an age key pair whose identity file is in a 0700 folder of the test's."""
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    return lambda name: Key(folder, name)


# -- S3 ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def e2e_moto():
    """One moto server for the session, on a free port, serving S3 over HTTP; its port."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server._server.server_port
    server.stop()


def clear_ambient_aws(monkeypatch, folder: Path) -> None:
    """The developer's own AWS variables, profiles and instance metadata stay out of the tests'
    own boto3 clients (invoke runs get none of them anyway: Project.environ)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(folder / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def no_ambient_aws(monkeypatch, tmp_path):
    clear_ambient_aws(monkeypatch, tmp_path)


def s3_client(endpoint: str, **config):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing", **config)


@dataclass
class Bucket:
    client: object
    name: str
    endpoint: str
    home: Path   # where the empty AWS config files live

    def env(self, endpoint: str | None = None, **extra: str) -> dict:
        """The process environment of an invoke run that keeps its backups in this bucket."""
        return {"BACKUP_STORAGE": "s3", "BACKUP_S3_BUCKET": self.name,
                "BACKUP_S3_PREFIX": S3_PREFIX, "BACKUP_S3_SSE": "AES256",
                "AWS_ENDPOINT_URL": endpoint or self.endpoint,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": str(self.home / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self.home / "no-aws-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true", **extra}

    def key(self, env_name: str, name: str) -> str:
        return f"{S3_PREFIX}/{env_name}/{name}"

    def objects(self, prefix: str = "") -> dict[str, str]:
        """{key: ETag} of every object under `prefix`."""
        found = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name,
                                                                       Prefix=prefix)
        for page in pages:
            found.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
        return found

    def folder(self, env_name: str) -> dict[str, str]:
        """{name: ETag} of the objects in one environment's folder."""
        start = f"{S3_PREFIX}/{env_name}/"
        return {k[len(start):]: v for k, v in self.objects(start).items()}

    def head(self, key: str) -> dict:
        return self.client.head_object(Bucket=self.name, Key=key)

    def body(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def manifest(self, env_name: str, backup_id: str) -> dict:
        return json.loads(self.body(self.key(env_name, f"{backup_id}.manifest.json")))

    def put_manifest(self, env_name: str, manifest: dict) -> None:
        self.client.put_object(Bucket=self.name,
                               Key=self.key(env_name, f"{manifest['id']}.manifest.json"),
                               Body=json.dumps(manifest, indent=2).encode(),
                               ServerSideEncryption="AES256")

    def uploads(self) -> list[dict]:
        return self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])


def make_bucket(moto_port: int, folder: Path) -> Bucket:
    """A fresh bucket on the moto server; its empty AWS config files go in folder/aws-home."""
    endpoint = f"http://127.0.0.1:{moto_port}"
    client = s3_client(endpoint)
    name = f"mida-e2e-{secrets.token_hex(4)}"
    client.create_bucket(Bucket=name)
    home = folder / "aws-home"
    home.mkdir()
    return Bucket(client, name, endpoint, home)


@contextlib.contextmanager
def bucket_and_project(moto_port: int, folder: Path):
    """For a class-scoped fixture (which cannot use `bucket`, `project` or `no_ambient_aws`): the
    same three, in `folder`, for as long as the block runs."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        clear_ambient_aws(monkeypatch, folder)
        yield make_bucket(moto_port, folder), make_project(folder / "project")


@pytest.fixture
def bucket(e2e_moto, tmp_path) -> Bucket:
    """A fresh bucket of the test's own on the session's moto server."""
    return make_bucket(e2e_moto, tmp_path)


# -- pgBackRest, small disks -------------------------------------------------------------------
@pytest.fixture(scope="session")
def archiving_cluster():
    """A throwaway PostgreSQL 15 cluster archiving to a local pgBackRest repository, with one
    full backup (tests/clusters.py); stopped and removed at the end of the session.
    Under CI=true a cluster that cannot be built fails the tests instead of skipping them."""
    from clusters import throwaway
    yield from throwaway("a throwaway pgBackRest cluster", prefix="pgbackrest-cluster-",
                         archiving=True)


@pytest.fixture(scope="module")
def plain_cluster():
    """A throwaway PostgreSQL cluster without archiving (tests/clusters.py), for tests that
    restart the server; stopped and removed after the module."""
    from clusters import throwaway
    yield from throwaway("a throwaway PostgreSQL cluster", prefix="plain-cluster-")


@dataclass
class SmallDisk:
    """A small tmpfs of its own: a real full disk, ENOSPC and all, without filling the machine's."""
    path: Path

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def fill(self, leave: int = 0) -> None:
        """Write a filler so that exactly `leave` bytes stay free (tmpfs counts 4 KiB pages:
        `leave` must be a multiple of the block size)."""
        block = os.statvfs(self.path).f_frsize
        assert leave % block == 0, f"leave {leave} is not a multiple of the block size {block}"
        assert self.free() >= leave, f"only {self.free()} bytes are free, {leave} wanted"
        with open(self.path / f"filler-{uuid.uuid4().hex}", "wb") as filler:
            filler.write(b"\0" * (self.free() - leave))
        assert self.free() == leave, (self.free(), leave)

    def unfill(self) -> None:
        for filler in self.path.glob("filler-*"):
            filler.unlink()

    def files(self) -> set[str]:
        """Everything on the disk but the fillers, as paths relative to it."""
        return {str(p.relative_to(self.path)) for p in self.path.rglob("*")
                if not p.name.startswith("filler-")}


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size) mounts a tmpfs of `size` bytes in tmp_path and returns a SmallDisk;
    every one is unmounted afterwards. Needs root (mount); under CI=true a mount that fails
    fails the test instead of skipping it."""
    mounted = []

    def mount(size: int, name: str = "disk") -> SmallDisk:
        path = tmp_path / name
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                                 "tmpfs", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            unavailable(f"cannot mount a tmpfs at {path}: {result.stderr.strip()}")
        mounted.append(path)
        return SmallDisk(path)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)
