"""`invoke status`: one JSON-ready snapshot of an environment, cheap enough to run from cron.

Everything here is read-only: no connection creates a database, nothing is written.
"""
from __future__ import annotations

from datetime import datetime

from app.ops.backups import BackupManifest, list_backups
from app.ops.errors import DatabaseUnreachable
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
    }


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
    interrupted = interrupted_restores(target)
    try:
        current = migrations.current()
    except DatabaseUnreachable as exc:
        if not interrupted:
            raise
        # A restore cut short at its swap may have left the database closed: say so.
        raise DatabaseUnreachable(f"{exc}; " + "; ".join(i["describe"] for i in interrupted)
                                  + f": the next migrate, rollback, backup or restore of env "
                                  f"'{settings.env}' finishes it") from None
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
        "interrupted_restores": interrupted,
        **extra,
    }


def interrupted_restores(target) -> list[dict]:
    """The env's restores cut short at their swap (app/ops/restore_intent.py), as JSON."""
    from app.ops.restore_intent import pending_intents
    return [{**intent.as_json(), "describe": intent.describe()}
            for intent in pending_intents(target)]
