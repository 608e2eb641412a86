"""Drills on scratch copies: `invoke verify --restore-test` and `invoke rehearse`.

A scratch copy is the backup method's (`scratch_copy` of app/ops/methods/): built from a
verified backup, used, and always dropped; one left behind by a killed run is dropped by the next.

A backup is only as good as the last restore test: restore it into a scratch database and compare
every table's row count with what the dump's own snapshot counted. A rehearsal restores the newest
backup, runs the pending migrations there, down and up again (proving the rollback plan), and
times each step and revision; its timings feed the production "will it fit?" estimate.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from app.ops.catalog import drill_records, records
from app.ops.diskspace import STORE_ADVICE, in_blocks, is_full, no_room
from app.ops.errors import BackupFailed, MigrationFailed, OpsError
from app.ops.catalog.manifest import BackupManifest, iso
from app.ops.methods.registry import method_of
from app.ops.schema.migrations import Migrations
from app.ops.report import Reporter
from app.ops.databases.postgres.sequences import sequences_behind
from app.ops.commands.restore import plan_restore

REHEARSAL_SUFFIX = ".rehearsal.json"


@dataclass
class RestoreTest:
    backup: BackupManifest
    counts: dict[str, int]
    seconds: float
    checks: list[dict] = field(default_factory=list)


def scratch_copy(target, backup: BackupManifest, now: datetime):
    """A context manager yielding the target of a fresh, verified restore of `backup`, by the
    method that made it (a restore point refuses: only a whole cluster can hold it)."""
    return method_of(backup).scratch_copy(target, backup, now)


def restore_test(target, backup: BackupManifest, *, now: datetime) -> RestoreTest:
    """Restore into a scratch copy, compare the row counts with the dump's and check that every
    sequence is ahead of its column; the outcome goes on record either way (drill_records)."""
    method_of(backup).refuse_scratch_copy(backup)
    if not backup.row_counts:
        raise BackupFailed(f"backup {backup.id} recorded no row counts (taken by an older "
                           "version): take a new backup to restore-test")
    started = time.monotonic()
    checks, outcome = [], "failed"
    try:
        with scratch_copy(target, backup, now) as scratch:
            counts = scratch.database.row_counts()
            checked, behind = sequences_behind(scratch.database)
        checks = _restore_test_checks(backup, counts, checked, behind)
        failures = [c["detail"] for c in checks if not c["ok"]]
        if failures:
            raise BackupFailed(f"restore test of backup {backup.id} failed: " + "; ".join(failures))
        outcome = drill_records.SUCCEEDED
    except KeyboardInterrupt:
        outcome = "stopped"
        raise
    finally:
        drill_records.keep(target, drill_records.new_record(
            target, "restore-test", now, backup.id, time.monotonic() - started, outcome, checks,
            restore_seconds=time.monotonic() - started), now)
    return RestoreTest(backup, counts, round(time.monotonic() - started, 3), checks)


def _restore_test_checks(backup: BackupManifest, counts: dict[str, int], checked: int,
                         behind: list[str]) -> list[dict]:
    differences = [f"{t}: {backup.row_counts.get(t)} recorded, {counts.get(t)} restored"
                   for t in sorted(set(counts) | set(backup.row_counts))
                   if counts.get(t) != backup.row_counts.get(t)]
    return [
        drill_records.check("row counts", not differences, "; ".join(differences) or
                            f"{len(counts)} tables, {sum(counts.values())} rows, as recorded"),
        drill_records.check("sequences", not behind, "; ".join(behind) or (
            f"{checked} sequence(s), each ahead of the column it feeds" if checked
            else "no sequence feeds a column")),
    ]


def _rehearsal_drill(target, rehearsal: "Rehearsal", now: datetime, started: float):
    restored = [s.seconds for s in rehearsal.steps if s.action == "restore"]
    migrated = [s for s in rehearsal.steps if s.action != "restore"]
    checks = [drill_records.check(
        "migrations down and up", rehearsal.outcome == drill_records.SUCCEEDED,
        f"{len(migrated)} step(s) ran on the scratch copy"
        + ("" if rehearsal.outcome == drill_records.SUCCEEDED else ", then it failed"))]
    return drill_records.new_record(target, "rehearse", now, rehearsal.backup_id,
                                    time.monotonic() - started, rehearsal.outcome, checks,
                                    restore_seconds=restored[0] if restored else None)


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

    @classmethod
    def from_json(cls, data: dict) -> "Rehearsal":
        steps = [Step(s["action"], s.get("revision"), float(s["seconds"]))
                 for s in data.get("steps") or []]
        return cls(data["env"], data["backup_id"], data["started_at"], steps,
                   data.get("outcome", "failed"))


def rehearse(target, *, now: datetime, reporter: Reporter = Reporter()) -> Rehearsal:
    plan = plan_restore(target, None, now)
    for note in plan.passed_over:
        reporter.warn(note)
    backup = plan.backup
    head = Migrations(target).single_head()
    rehearsal = Rehearsal(target.env, backup.id, iso(now))
    started = time.monotonic()
    try:
        clock = time.monotonic()
        with scratch_copy(target, backup, now) as scratch:
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
            _save(target, rehearsal, now)
        drill_records.keep(target, _rehearsal_drill(target, rehearsal, now, started), now,
                           reporter)
        raise
    _save(target, rehearsal, now)
    drill_records.keep(target, _rehearsal_drill(target, rehearsal, now, started), now,
                           reporter)
    return rehearsal


def _since(clock: float) -> float:
    return round(time.monotonic() - clock, 3)


def _save(target, rehearsal: Rehearsal, now: datetime) -> None:
    name = records.new_name(now, REHEARSAL_SUFFIX)
    storage = target.storage
    data = records.as_bytes(asdict(rehearsal), indent=2, sort_keys=False)
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


def past_rehearsals(target) -> list[Rehearsal]:
    """Saved rehearsals, newest first (the "will it fit?" estimate reads them); an unreadable
    record is passed over."""
    return records.read_all(target.storage, REHEARSAL_SUFFIX, Rehearsal.from_json,
                            invalid=(ValueError, OSError, KeyError, TypeError, AttributeError))
