"""The dump method on SQLite: a restore copies a verified copy over the file, and a scratch
copy is the verified backup as a file of its own.

SQLite opens its files by name (and resolves /proc/self/fd links), so its copies live in the
run's held private folder, which the next run sweeps if this one is killed. The copy over the
live file goes through SQLite's backup API (the adapter's `replace_with`): readers see the old
database or the new one, never a mix.
"""
from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path
from typing import Iterator

from app.ops.catalog.manifest import BackupManifest
from app.ops.databases.sqlite.database import private_file
from app.ops.leftovers import private_folder
from app.ops.methods.contract import SAFETY_REASON, RestorePlan, RestoreResult, safety_skipped
from app.ops.methods.dump.take import take_backup
from app.ops.methods.dump.verify import verify_dump


def restore(target, plan: RestorePlan, *, now: datetime, reporter, disconnect: bool,
            started: float, check_lock) -> RestoreResult:
    """Verify into a private copy, take the safety backup of the database as it is just
    before, then copy over it."""
    database = target.database
    with private_folder("sqlite-restore") as folder:
        copy = Path(folder) / "restore.sqlite3"
        with private_file(copy) as extracted:
            verify_dump(target, plan.backup, now=now, extract_to=extracted)
        reporter.info(f"backup {plan.backup.id} verified")
        safety, kept, skipped = None, None, None
        if database.exists():
            kept = database.path.with_name(
                f"{database.path.name}__pre_restore_{now:%Y%m%d%H%M%S}")
            skipped = safety_skipped(plan, str(kept))
            if skipped:
                database.keep_copy(kept)  # the only copy of what is there now
            else:
                kept = None
                safety = take_backup(target, reason=f"{SAFETY_REASON}{plan.backup.id}",
                                     revision=plan.current, now=now)
                reporter.info(f"safety backup {safety.id} taken")
        check_lock()  # a no-op: an flock cannot be taken away from its holder
        database.replace_with(copy)
    return RestoreResult(plan.backup, safety, None, 0.0,
                         kept_database=str(kept) if kept else None, safety_skipped=skipped)


@contextlib.contextmanager
def scratch_copy(target, backup: BackupManifest, now: datetime) -> Iterator[object]:
    """The verified backup as a file in the run's held private folder."""
    with private_folder("scratch") as folder:
        copy = Path(folder) / "archive"
        with private_file(copy) as extracted:
            verify_dump(target, backup, now=now, extract_to=extracted)
        yield target.at(target.database.at(copy))


def pending(target) -> list:
    return []  # an SQLite restore has no swap that a kill could cut short


def finish_interrupted(target, *, now: datetime, reporter) -> bool:
    return False
