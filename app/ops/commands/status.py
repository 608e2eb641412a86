"""`invoke status`: one JSON-ready snapshot of an environment, cheap enough to run from cron.

Everything here is read-only: no connection creates a database, nothing is written.
"""
from __future__ import annotations

from datetime import datetime

from app.ops.catalog.backups import BackupManifest, list_backups
from app.ops.catalog.dates import dated_in_future, in_the_present, is_future
from app.ops.errors import DatabaseUnreachable
from app.ops.schema.migrations import Migrations, UnknownRevision, UnloadableRevisionFile
from app.ops.storage import unaborted_uploads
from app.ops.catalog.restore_intent import pending_intents
from app.ops.commands.watch.records import last_verdict
from app.ops.guards.preflight import load_window


def backup_item(manifest: BackupManifest, now: datetime | None = None) -> dict:
    """A backup as `invoke backups --json` and `status --json` show it; `future`: dated later
    than `now` (app/ops/catalog/dates.py)."""
    return {
        "id": manifest.id, "env": manifest.env, "created_at": manifest.created_at,
        "revision": manifest.revision, "size": manifest.size, "sha256": manifest.sha256,
        "location": manifest.location, "engine": manifest.engine, "raw_size": manifest.raw_size,
        "verified": manifest.verified, "verified_at": manifest.verified_at,
        "artifact": manifest.artifact_state,
        "reason": manifest.reason, "label": manifest.label,
        "duration_seconds": manifest.duration_seconds,
        "method": manifest.method, "pgbackrest": manifest.pgbackrest,
        "future": is_future(manifest, now),
        "encryption": manifest.encryption, "recipients": manifest.recipients,
        "rekeyed_at": manifest.rekeyed_at, "sse": manifest.sse,
    }


def _retention(storage) -> dict | None:
    """S3 Object Lock (BACKUP_S3_OBJECT_LOCK): how long each object is kept, in which mode."""
    lock = storage.object_lock
    if lock is None:
        return None
    return {"object_lock": lock.text, "seconds": lock.seconds, "mode": lock.mode}


def window_status(settings, now: datetime) -> dict | None:
    spec = settings.MAINTENANCE_WINDOW
    if not spec:
        return None
    window = load_window(settings)
    next_open = window.next_open(now)
    closes = window.current_close(now)
    return {"open": window.is_open(now), "next_open": next_open.isoformat() if next_open else None,
            "closes_at": closes.isoformat() if closes else None,
            "spec": spec, "timezone": str(window.tz)}


def revision_state(target) -> tuple[str | None, list[str], list[str], str | None]:
    """(current, heads, pending ids, problem): a revision file that cannot be loaded, or a
    database at a revision the code does not have, is the problem's one sentence, and the rest
    of the status is still shown."""
    try:
        migrations = Migrations(target)
    except UnloadableRevisionFile as exc:
        return target.database.revision(), [], [], str(exc)
    heads = migrations.heads()
    current = migrations.current()
    try:
        pending = migrations.pending(current, heads[0]) if len(heads) == 1 else []
    except UnknownRevision as exc:
        return current, heads, [], str(exc)
    return current, heads, [r.id for r in pending], None


def collect_status(target, now: datetime, warn=None) -> dict:
    settings = target.settings
    interrupted = interrupted_restores(target)
    try:
        current, heads, pending, problem = revision_state(target)
    except DatabaseUnreachable as exc:
        if not interrupted:
            raise
        # A restore cut short at its swap may have left the database closed: say so.
        raise DatabaseUnreachable(f"{exc}; " + "; ".join(i["describe"] for i in interrupted)
                                  + f": the next migrate, rollback, backup or restore of env "
                                  f"'{settings.env}' finishes it") from None
    backups = list_backups(target, warn)  # on S3 this also aborts recorded uploads it can
    extra = target.method.status(target)  # pgbackrest: the stanza and the archiver
    return {
        "env": settings.env,
        "database": target.database.masked_url,
        "current": current,
        "heads": heads,
        "pending": pending,
        "revision_problem": problem,
        # The newest that counts: one dated in the future is listed apart, flagged.
        "last_backup": next((backup_item(m, now) for m in in_the_present(backups, now)), None),
        "future_backups": [backup_item(m, now) for m in dated_in_future(backups, now)],
        "production": settings.production,
        "window": window_status(settings, now),
        "unaborted_uploads": unaborted_uploads(settings),
        "last_watch": last_watch(target),
        "interrupted_restores": interrupted,
        "retention": _retention(target.storage),
        **extra,
    }


def last_watch(target) -> dict | None:
    """The env's newest watch verdict, as the audit recorded it (None: never watched)."""
    event = last_verdict(target.storage)
    if event is None:
        return None
    return {key: event.get(key) for key in ("at", "verdict", "baseline_at", "watched_seconds",
                                            "signals", "undo", "from_revision", "to_revision")}


def interrupted_restores(target) -> list[dict]:
    """The env's restores cut short at their swap (app/ops/catalog/restore_intent.py), as JSON."""
    return [{**intent.as_json(), "describe": intent.describe()}
            for intent in pending_intents(target)]
