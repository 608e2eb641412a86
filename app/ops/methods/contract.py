"""What every backup method is handed and gives back when it restores: the plan of a restore
(which backup, over which database, and what a workflow found before it), its result, and the
few facts about safety backups that the methods and the restore workflow share.

A method (registry.py) has `take`, `verify`, `restore`, `scratch_copy`, `status` and
`room_needed`; to say what its backups are, `summary`, `describe`, `status_lines`,
`encryption_of` and `encryption_text` (its describe.py), `has_artifact` (an artifact of ours
to read back, re-key or check the keys of) and `restores_whole_cluster`. The workflows in
app/ops/commands/ and tasks.py call them and never ask which method it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from app.ops.catalog.manifest import BackupManifest

SAFETY_REASON = "before restore of "


@dataclass
class RestorePlan:
    backup: BackupManifest
    database_name: str      # what the engineer types to confirm
    current: str | None     # the live database's revision now
    closed: bool = False    # PostgreSQL: closed to connections (a swap killed halfway)
    passed_over: list = field(default_factory=list)  # newer backups the default skipped, why
    intent: object = None   # PostgreSQL: the swap's intent record, once written
    intent_done: bool = False  # settled on the way out: the record can go
    # Why no safety backup may be written (BACKUP_ENCRYPTION=required and no way to encrypt
    # it: app/ops/guards/encryption_policy.py), decided by the workflow; None: one is written.
    safety_refused: str | None = None


@dataclass
class RestoreResult:
    backup: BackupManifest
    safety: BackupManifest | None
    revision: str | None
    seconds: float
    kept_database: str | None = None
    safety_error: str | None = None  # the restore succeeded, its safety backup did not
    # BACKUP_ENCRYPTION=required and no way to encrypt: no safety backup, the old database kept
    safety_skipped: str | None = None
    downtime_seconds: float | None = None         # PostgreSQL: the swap, as clients see it
    time_to_service_seconds: float | None = None  # from the start to the restored data served
    notes: list = field(default_factory=list)  # what the engineer must know afterwards


def is_safety_backup(manifest: BackupManifest) -> bool:
    return manifest.reason.startswith(SAFETY_REASON)


def safety_skipped(plan: RestorePlan, kept: str) -> str | None:
    """What a restore says when it writes no safety backup of the database it replaces."""
    if plan.safety_refused is None:
        return None
    return (f"no safety backup was written: {plan.safety_refused}; the previous database is "
            f"kept as {kept} instead, and nothing was dropped")
