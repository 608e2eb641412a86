"""`invoke status`: one JSON-ready snapshot of an environment, cheap enough to run from cron.

Everything here is read-only: no connection creates a database, nothing is written.
"""
from __future__ import annotations

from datetime import datetime

from app.ops.backups import BackupManifest, list_backups
from app.ops.migrations import Migrations
from app.ops.storage import unaborted_uploads


def backup_item(manifest: BackupManifest) -> dict:
    """A backup as `invoke backups --json` and `status --json` show it."""
    return {
        "id": manifest.id, "env": manifest.env, "created_at": manifest.created_at,
        "revision": manifest.revision, "size": manifest.size, "sha256": manifest.sha256,
        "location": manifest.location, "engine": manifest.engine, "raw_size": manifest.raw_size,
        "verified": manifest.verified, "verified_at": manifest.verified_at,
        "artifact": manifest.artifact_state,
        "reason": manifest.reason, "label": manifest.label,
        "duration_seconds": manifest.duration_seconds,
        "method": manifest.method, "pgbackrest": manifest.pgbackrest,
        "encryption": manifest.encryption, "recipients": manifest.recipients,
        "rekeyed_at": manifest.rekeyed_at,
    }


def _retention(storage) -> dict | None:
    """S3 Object Lock (BACKUP_S3_OBJECT_LOCK): how long each object is kept, in which mode."""
    lock = getattr(storage, "object_lock", None)
    if lock is None:
        return None
    return {"object_lock": lock.text, "seconds": lock.seconds, "mode": lock.mode}


def window_status(settings, now: datetime) -> dict | None:
    spec = settings.get("MAINTENANCE_WINDOW")
    if not spec:
        return None
    from app.ops.guards import load_window
    window = load_window(settings)
    next_open = window.next_open(now)
    closes = window.current_close(now)
    return {"open": window.is_open(now), "next_open": next_open.isoformat() if next_open else None,
            "closes_at": closes.isoformat() if closes else None,
            "spec": spec, "timezone": str(window.tz)}


def collect_status(target, now: datetime, warn=None) -> dict:
    settings = target.settings
    migrations = Migrations(target)
    heads = migrations.heads()
    current = migrations.current()
    pending = migrations.pending(current, heads[0]) if len(heads) == 1 else []
    backups = list_backups(target, warn)  # on S3 this also aborts recorded uploads it can
    extra = target.method.status(target)  # pgbackrest: the stanza and the archiver
    return {
        "env": settings.env,
        "database": target.database.masked_url,
        "current": current,
        "heads": heads,
        "pending": [r.id for r in pending],
        "last_backup": backup_item(backups[0]) if backups else None,
        "production": settings.production,
        "window": window_status(settings, now),
        "unaborted_uploads": unaborted_uploads(settings),
        "retention": _retention(target.storage),
        **extra,
    }
