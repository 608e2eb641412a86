"""Choosing among an env's backups: which ones count as the newest, which one restore takes by
default, and which ones are dated in the future.

A manifest's `created_at` is input like the rest of it: a host whose clock ran ahead (or a
manifest edited by hand) dates a backup later than now. Such a backup is listed and flagged,
but never counts as the newest: not for prune's BACKUP_KEEP_LAST (or a 2099 backup would
outrank every real one), not for check's age (or check would stay OK forever), and not for
restore's default. `now` comes from the caller (only tasks.py reads the clock).

Restore's default is the newest verified backup whose artifact is present (the contract's
`restore` row); each newer one that is not (its artifact missing or of the wrong size, failed
verification, dated in the future) is named with the reason it was passed over.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from app.ops.catalog.manifest import BackupManifest

# Clocks of well-kept hosts agree to well under a second (NTP); five minutes leaves room for a
# badly synced one without letting a wrong date count.
CLOCK_SKEW = timedelta(minutes=5)


def is_future(manifest: BackupManifest, now: datetime | None) -> bool:
    """Dated later than `now`, beyond the skew two hosts' clocks may have (no `now`: no)."""
    return now is not None and manifest.created - now > CLOCK_SKEW


def dated_in_future(backups: list[BackupManifest], now: datetime) -> list[BackupManifest]:
    return [m for m in backups if is_future(m, now)]


def in_the_present(backups: list[BackupManifest], now: datetime) -> list[BackupManifest]:
    """The backups that may count as the newest: all but those dated in the future."""
    return [m for m in backups if not is_future(m, now)]


def future_note(manifest: BackupManifest) -> str:
    """One sentence for a backup dated in the future, for every command that shows it."""
    return (f"backup {manifest.id} is dated {manifest.created_at}, later than now: the clock of "
            "the host that took it was wrong (or its manifest was edited), so it never counts "
            "as the newest backup; fix the clock, then check it with `invoke verify "
            f"--env={manifest.env} --backup={manifest.id}`")


def not_restorable(manifest: BackupManifest, now: datetime | None) -> str | None:
    """Why restore's default passes `manifest` over (None: it may be chosen)."""
    if is_future(manifest, now):
        return f"it is dated {manifest.created_at}, in the future"
    if not manifest.verified:
        return f"it failed verification ({manifest.verify_error or 'no reason recorded'})"
    if not manifest.intact:
        return f"its artifact is {manifest.artifact_state} ({manifest.location})"
    return None


def default_restore(candidates: list[BackupManifest], now: datetime | None
                    ) -> tuple[BackupManifest | None, list[str]]:
    """The newest of `candidates` (newest first) that restore may take by default, and one
    sentence for each newer one passed over on the way."""
    passed_over = []
    for manifest in candidates:
        why = not_restorable(manifest, now)
        if why is None:
            return manifest, passed_over
        passed_over.append(f"passed over the newer backup {manifest.id}: {why}")
    return None, passed_over
