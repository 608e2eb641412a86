"""The dump method (BACKUP_METHOD=dump, the default): the database's dumper writes an artifact
into our store (take.py), read back whole; verify reads it back again (verify.py); a restore
goes over the database its own way: by swap on PostgreSQL (postgres_swap.py), by SQLite's
backup API on SQLite (sqlite_copy.py), chosen here once by the database's kind.
"""
from __future__ import annotations

from app.ops.encryption import dump_at_rest
from app.ops.methods.dump import describe, postgres_swap, sqlite_copy
from app.ops.methods.dump.estimate import estimate_backup_size
from app.ops.methods.dump.take import take_backup
from app.ops.methods.dump.verify import verify_dump

# How the dump method restores on each kind of database (`kind` of app/ops/databases/).
ENGINES = {"postgresql": postgres_swap, "sqlite": sqlite_copy}


class DumpMethod:
    name = "dump"
    # An artifact of ours in the store: listed, read back, re-keyed, its age header checked.
    has_artifact = True
    # A restore replaces the one database (the watch's undo says what it costs).
    restores_whole_cluster = False

    def room_needed(self, facts) -> int | None:
        """Bytes the store needs for a new backup (the free-disk guard's estimate)."""
        return estimate_backup_size(facts)

    def at_rest(self, settings) -> str | None:
        return dump_at_rest(settings)

    def encryption_advice(self, settings) -> str:
        """What to set so that a dump of this env rests encrypted."""
        s3 = ", or set BACKUP_S3_SSE (AES256 or aws:kms)" if settings.backup_storage == "s3" else ""
        return ("set BACKUP_ENCRYPTION_RECIPIENTS to an age public key (make a pair with "
                "`age-keygen -o key.txt`) and BACKUP_ENCRYPTION_IDENTITY_FILE to its private key"
                f"{s3}")

    def take(self, target, facts, *, now, revision, reason, reporter, label=None):
        # S3 takes 10,000 parts of an object: a big database needs bigger parts, chosen from
        # its size and (only then, as it reads every manifest) earlier backups' compression.
        expected = facts.database.size
        if expected and target.storage.wants_estimate(expected):
            expected = estimate_backup_size(facts)
        with reporter.progress("dumping") as dumped, \
                reporter.progress("reading back") as read_back:
            return take_backup(target, reason=reason, revision=revision, now=now, label=label,
                               database_size=facts.database.size, expected_size=expected,
                               progress=dumped, readback_progress=read_back)

    def verify(self, target, manifest, *, now, progress=None, extract_to=None,
               archive_check=True):
        return verify_dump(target, manifest, now=now, progress=progress,
                           extract_to=extract_to, archive_check=archive_check)

    def restore(self, target, plan, *, now, reporter, disconnect, whole_cluster, started,
                check_lock):
        return ENGINES[target.database.kind].restore(
            target, plan, now=now, reporter=reporter, disconnect=disconnect, started=started,
            check_lock=check_lock)

    def refuse_scratch_copy(self, backup) -> None:
        pass  # any dump can be restored into a scratch copy

    def scratch_copy(self, target, backup, now):
        """A context manager yielding the target of a fresh, verified restore of `backup`."""
        return ENGINES[target.database.kind].scratch_copy(target, backup, now)

    def interrupted_restores(self, target) -> list:
        """The intent records of restores cut short at their swap (app/ops/catalog/)."""
        return ENGINES[target.database.kind].pending(target)

    def finish_interrupted(self, target, *, now, reporter) -> bool:
        """Under the lock: finish the restores a kill or a server restart cut short."""
        return ENGINES[target.database.kind].finish_interrupted(target, now=now,
                                                                reporter=reporter)

    def status(self, target) -> dict:
        """What `invoke status` adds for this method: nothing, the store says it all."""
        return {}

    def status_lines(self, status: dict) -> list[tuple[str, str]]:
        """The lines `invoke status` adds for this method (none)."""
        return []

    def summary(self, manifest, *, brief: bool = False) -> str:
        """The line said of a backup just taken; `brief`: a migrate's or rollback's."""
        return describe.summary(manifest, brief=brief)

    def describe(self, manifest) -> list[tuple[str, str]]:
        """(label, text) lines `invoke restore` shows of the backup, besides id and revision."""
        return describe.describe(manifest)

    def encryption_of(self, manifest) -> str:
        """age (client side, recorded in the manifest) or none (what a store adds aside)."""
        return "age" if manifest.encryption == "age" else "none"

    def encryption_text(self, manifest) -> str:
        """The encryption as `invoke backups` lists it: age to which keys, or none."""
        return describe.encryption_text(manifest)
