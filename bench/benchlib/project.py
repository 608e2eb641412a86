"""The project under test, driven as its users drive it: `invoke` in a subprocess, its settings
given through the environment. Nothing of app/ is imported, so the app's modules may move freely.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .measure import fail_if, measure
from .rounds import Outcome

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The shared folder is the project root's sibling (/work/shared beside /work/main).
REFERENCE_SQL = PROJECT_ROOT.parent / "shared" / "bench" / "reference_db.sql"

APP_ENV = "bench"   # the environment the benchmark names; the backup store's folder is named so

# Settings the project reads from the process environment: no run may inherit them.
SETTING_NAMES = {"APP_ENV", "DATABASE_URL", "USE_SQLITE", "SQLITE_PATH", "PRODUCTION",
                 "PG_BIN_DIR", "BACKUP_STORAGE", "BACKUP_DIR", "MAINTENANCE_WINDOW",
                 "MAINTENANCE_TIMEZONE", "REQUIRE_STAGING_FIRST", "BACKUP_S3_BUCKET",
                 "BACKUP_S3_PREFIX", "BACKUP_S3_SSE", "BACKUP_S3_KMS_KEY_ID",
                 "BACKUP_ENCRYPTION_RECIPIENTS", "BACKUP_ENCRYPTION_IDENTITY_FILE",
                 "BACKUP_KEEP_LAST", "BACKUP_KEEP_DAYS"}


def project_environment() -> dict[str, str]:
    """This process's environment without the project's settings, PostgreSQL's, the backup
    store's or AWS's: with it, `invoke` runs on its defaults (SQLite, local backups)."""
    return {k: v for k, v in os.environ.items() if k not in SETTING_NAMES
            and not k.startswith(("POSTGRES_", "BACKUP_", "AWS_"))}


def database_url(args, database: str) -> str:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (3): name psycopg2, which we ship.
    return f"postgresql+psycopg2://{args.pg_user}@{args.pg_host}:{args.pg_port}/{database}"


def invoke_environment(args, database: str, backup_dir: Path) -> dict[str, str]:
    """The project's defaults, then APP_ENV=bench, DATABASE_URL naming `database` and BACKUP_DIR."""
    return dict(project_environment(), APP_ENV=APP_ENV, DATABASE_URL=database_url(args, database),
                BACKUP_DIR=str(backup_dir))


def invoke(*words: str) -> list[str]:
    return [sys.executable, "-m", "invoke", *words]


def copy_project(source: Path, target: Path) -> Path:
    """tasks.py, app/, alembic/ and alembic.ini: what the tasks need, without .env files or data."""
    target.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copy2(source / "tasks.py", target)
    shutil.copy2(source / "alembic.ini", target)
    shutil.copytree(source / "app", target / "app", ignore=ignore)
    shutil.copytree(source / "alembic", target / "alembic", ignore=ignore)
    return target


@dataclass(kw_only=True)
class Backup(Outcome):
    """One `invoke backup`: its measured run, its artifact's stored size and its manifest."""
    manifest: dict


def local_store(env: dict[str, str]) -> Path:
    """Where `invoke backup` with this environment keeps its files."""
    return Path(env["BACKUP_DIR"]) / env["APP_ENV"]


def only_local_manifest(store: Path) -> tuple[dict, int]:
    """The one manifest in `store` and its artifact's size on disk."""
    manifests = list(store.glob("*.manifest.json"))
    if len(manifests) != 1:
        raise SystemExit(f"invoke backup left {len(manifests)} manifests in {store}")
    manifest = json.loads(manifests[0].read_text())
    return manifest, (store / manifest["artifact"]).stat().st_size


def invoke_backup(args, env: dict[str, str], *, what: str = "invoke backup",
                  find: Callable[[], tuple[dict, int]] | None = None,
                  sample_interval: float | None = None) -> Backup:
    """Run `invoke backup` to completion, then find the one manifest it wrote (in the local store
    unless `find` looks elsewhere) and check that the stored artifact has the manifest's size."""
    run = measure(invoke("backup"), cwd=args.repo, env=env, sample_interval=sample_interval)
    fail_if(run, what)
    manifest, size = find() if find else only_local_manifest(local_store(env))
    if size != manifest["size"]:
        raise SystemExit(f"manifest size {manifest['size']} != stored size {size}")
    return Backup(run, size, manifest=manifest)
