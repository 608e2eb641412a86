"""Backup stores: put, get, list and delete named objects. They know nothing of databases.

`open_storage(settings)` returns the configured store for the settings' environment; each store
keeps one environment's backups under its own folder or prefix.
"""
from __future__ import annotations


def open_storage(settings):
    kind = settings.backup_storage
    if kind == "local":
        from app.ops.storage.local import LocalStorage
        return LocalStorage(settings.backup_dir / settings.env)
    from app.ops.errors import ConfigError
    from app.ops.storage.s3 import S3Storage
    bucket = settings.get("BACKUP_S3_BUCKET")
    if not bucket:
        raise ConfigError(f"BACKUP_STORAGE=s3 needs BACKUP_S3_BUCKET for env '{settings.env}': "
                          "set it to the bucket that holds the backups")
    prefix = (settings.get("BACKUP_S3_PREFIX") or "").strip("/")
    return S3Storage(bucket.strip(), f"{prefix}/{settings.env}" if prefix else settings.env,
                     settings)
