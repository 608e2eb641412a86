"""The backup methods (BACKUP_METHOD), one object each, so nothing else asks which method is
configured: `DumpMethod` (dump/method.py) and `PgBackRestMethod` (pgbackrest/method.py).

A run takes its backups with the configured method (`Target.method`); an existing backup is
verified and restored by the method that made it (`method_of(manifest)`), whatever the env is
configured for now.
"""
from __future__ import annotations

from datetime import datetime

from app.ops.methods.dump.method import DumpMethod
from app.ops.methods.pgbackrest.method import PgBackRestMethod

METHODS = {method.name: method for method in (DumpMethod(), PgBackRestMethod())}


def configured_method(settings):
    """BACKUP_METHOD's object (a bad value, or pgbackrest for SQLite, is a ConfigError)."""
    return METHODS[settings.backup_method]


def method_of(manifest):
    """The method that made `manifest` (checked when the manifest was read)."""
    return METHODS[manifest.method]


def verify_backup(target, manifest, *, now: datetime, progress=None, extract_to=None,
                  archive_check: bool = True):
    """Check a backup with the method that made it. The manifest records the outcome either
    way, so a backup found broken is never chosen as verified."""
    return method_of(manifest).verify(target, manifest, now=now, progress=progress,
                                      extract_to=extract_to, archive_check=archive_check)


def restores_in_progress(target) -> list:
    """Restores cut short at their swap: only a dump's restore swaps (a restore point has
    none), whatever the env's method is now."""
    return METHODS["dump"].interrupted_restores(target)


def finish_interrupted_restores(target, *, now: datetime, reporter) -> bool:
    """Under the env's lock: finish every restore a kill or a server restart cut short."""
    return METHODS["dump"].finish_interrupted(target, now=now, reporter=reporter)
