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
    raise ConfigError("BACKUP_STORAGE=s3 is not available in this version yet: use "
                      "BACKUP_STORAGE=local")
