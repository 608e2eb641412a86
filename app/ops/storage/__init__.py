"""Backup stores: put, get, list and delete named objects. They know nothing of databases.

`open_storage(settings)` returns the configured store for the settings' environment; each store
keeps one environment's backups under its own folder or prefix.
"""
from __future__ import annotations
from app.ops.errors import ConfigError
from app.ops.storage.local import LocalStorage
from app.ops.storage.s3 import read_unaborted, S3Storage

UNABORTED_FOLDER = ".unaborted-uploads"  # under BACKUP_DIR, one subfolder per env: see s3.py


def open_storage(settings):
    kind = settings.backup_storage
    if kind == "local":
        return LocalStorage(settings.backup_dir / settings.env)
    bucket = settings.BACKUP_S3_BUCKET
    if not bucket:
        raise ConfigError(f"BACKUP_STORAGE=s3 needs BACKUP_S3_BUCKET for env '{settings.env}': "
                          "set it to the bucket that holds the backups")
    prefix = (settings.BACKUP_S3_PREFIX or "").strip("/")
    return S3Storage(bucket.strip(), f"{prefix}/{settings.env}" if prefix else settings.env,
                     settings, unaborted_folder=unaborted_folder(settings))


def unaborted_folder(settings):
    """Where S3 uploads of this env that could not be aborted are recorded (local disk)."""
    return settings.backup_dir / UNABORTED_FOLDER / settings.env


def unaborted_uploads(settings) -> list[dict]:
    """The env's recorded S3 uploads that still wait to be aborted, oldest first."""
    folder = unaborted_folder(settings)
    if not folder.is_dir():
        return []
    from datetime import datetime, timezone

    items = []
    for path, record in read_unaborted(folder):
        recorded = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
        items.append({"location": f"s3://{record['bucket']}/{record['key']}",
                      "upload_id": record["upload_id"], "endpoint": record.get("endpoint"),
                      "parts": record.get("parts"), "cause": record.get("cause"),
                      "recorded_at": recorded.isoformat(timespec="seconds").replace("+00:00", "Z"),
                      "record": str(path)})
    return items
