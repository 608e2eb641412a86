"""Drills on scratch copies: `invoke verify --restore-test` and `invoke rehearse`.

A backup is only as good as the last restore test: restore it into a scratch database and compare
every table's row count with what the dump's own snapshot counted. A rehearsal restores the newest
backup, runs the pending migrations there, down and up again (proving the rollback plan), and
times each step and revision; its timings feed the production "will it fit?" estimate.
"""
from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from app.ops.backups import BackupManifest, iso
from app.ops.diskspace import STORE_ADVICE, in_blocks, is_full, no_room
from app.ops.errors import BackupFailed, MigrationFailed, OpsError
from app.ops.migrations import Migrations
from app.ops.report import Reporter
from app.ops.scratch import refuse_restore_point, row_counts, scratch_copy
from app.ops.storage import open_storage

REHEARSAL_SUFFIX = ".rehearsal.json"


@dataclass
class RestoreTest:
    backup: BackupManifest
    counts: dict[str, int]
    seconds: float


def restore_test(settings, backup: BackupManifest, *, now: datetime) -> RestoreTest:
    refuse_restore_point(backup)
    if not backup.row_counts:
        raise BackupFailed(f"backup {backup.id} recorded no row counts (taken by an older "
                           "version): take a new backup to restore-test")
    started = time.monotonic()
    with scratch_copy(settings, backup, now=now) as scratch:
        counts = row_counts(scratch)
    differences = [f"{t}: {backup.row_counts.get(t)} recorded, {counts.get(t)} restored"
                   for t in sorted(set(counts) | set(backup.row_counts))
                   if counts.get(t) != backup.row_counts.get(t)]
    if differences:
        raise BackupFailed(f"restore test of backup {backup.id} failed: " + "; ".join(differences))
    return RestoreTest(backup, counts, round(time.monotonic() - started, 3))


@dataclass
class Step:
    action: str            # restore, upgrade, downgrade, upgrade again
    revision: str | None
    seconds: float


@dataclass
class Rehearsal:
    env: str
    backup_id: str
    started_at: str
    steps: list[Step] = field(default_factory=list)
    outcome: str = "failed"

    def upgrade_seconds(self) -> dict[str, float]:
        return {s.revision: s.seconds for s in self.steps if s.action == "upgrade"}


def rehearse(settings, *, now: datetime, reporter: Reporter = Reporter()) -> Rehearsal:
    from app.ops.restore import plan_restore

    backup = plan_restore(settings, None).backup
    head = Migrations(settings).single_head()
    rehearsal = Rehearsal(settings.env, backup.id, iso(now))
    try:
        clock = time.monotonic()
        with scratch_copy(settings, backup, now=now) as scratch:
            rehearsal.steps.append(Step("restore", backup.revision, _since(clock)))
            reporter.info(f"restored backup {backup.id} into a scratch copy in "
                          f"{rehearsal.steps[-1].seconds:.1f} s")
            migrations = Migrations(scratch, reporter=reporter)
            pending = migrations.pending(backup.revision, head)
            for action, revisions in (("upgrade", pending), ("downgrade", pending[::-1]),
                                      ("upgrade again", pending)):
                for revision in revisions:
                    clock = time.monotonic()
                    if action == "downgrade":
                        migrations.downgrade("-1")
                    else:
                        migrations.upgrade(revision.id)
                    rehearsal.steps.append(Step(action, revision.id, _since(clock)))
                    reporter.info(f"  {action} {revision}: {rehearsal.steps[-1].seconds:.2f} s")
            if migrations.current() != head:
                raise MigrationFailed(f"the rehearsal ended at {migrations.current()}, not {head}")
        rehearsal.outcome = "succeeded"
    except BaseException:
        # The run's own failure is the one to report: a store that cannot take its record
        # too (full, say) must not replace it.
        with contextlib.suppress(OpsError):
            _save(settings, rehearsal, now)
        raise
    _save(settings, rehearsal, now)
    return rehearsal


def _since(clock: float) -> float:
    return round(time.monotonic() - clock, 3)


def _save(settings, rehearsal: Rehearsal, now: datetime) -> None:
    name = f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}{REHEARSAL_SUFFIX}"
    storage = open_storage(settings)
    data = (json.dumps(asdict(rehearsal), indent=2) + "\n").encode()
    try:
        storage.put_bytes(name, data)
    except OSError as exc:
        # Its timings feed the "will it fit?" estimate: a rehearsal not saved is not done.
        folder = Path(storage.location(name)).parent
        what = f"save the record of the rehearsal on backup {rehearsal.backup_id} ({rehearsal.outcome})"
        if is_full(exc):
            raise no_room(folder, what, in_blocks(folder, len(data)),
                          advice=STORE_ADVICE) from None
        raise BackupFailed(f"could not {what} to {folder}: {exc.strerror or exc}") from None


def past_rehearsals(settings) -> list[dict]:
    """Saved rehearsals, newest first (the "will it fit?" estimate reads them)."""
    storage = open_storage(settings)
    out = []
    for name in sorted(storage.list(REHEARSAL_SUFFIX), reverse=True):
        try:
            out.append(json.loads(storage.get_bytes(name)))
        except (ValueError, OSError):
            continue
    return out
