"""The pgBackRest method (BACKUP_METHOD=pgbackrest): a backup is a named restore point whose WAL
pgBackRest has archived (command.py); verify asks pgBackRest (verify.py); a restore is a
point-in-time recovery of the whole cluster (point_in_time.py).
"""
from __future__ import annotations

from app.ops.catalog.backups import record_outcome
from app.ops.errors import ConfigError
from app.ops.methods.contract import RestoreResult
from app.ops.methods.pgbackrest import describe
from app.ops.methods.pgbackrest.command import (repository_encrypted, status_facts,
                                                take_restore_point)
from app.ops.methods.pgbackrest.point_in_time import restore_restore_point
from app.ops.methods.pgbackrest.verify import verify_restore_point


class PgBackRestMethod:
    name = "pgbackrest"
    # The data is in pgBackRest's repository: nothing of ours to read back, re-key or check.
    has_artifact = False
    # A restore is a point-in-time recovery: it rewinds every database of the cluster.
    restores_whole_cluster = True

    def room_needed(self, facts) -> int | None:
        return None  # nothing is written to our store but a manifest

    def at_rest(self, settings) -> str | None:
        """pgBackRest holds the data: encrypted at rest if every repository has a cipher."""
        return "pgbackrest" if repository_encrypted(settings) else None

    def encryption_advice(self, settings) -> str:
        return (f"give the pgBackRest repository of stanza '{settings.PGBACKREST_STANZA}' "
                "a cipher (repo1-cipher-type=aes-256-cbc, on a new repository)")

    def take(self, target, facts, *, now, revision, reason, reporter, label=None):
        # No progress: nothing is written but a manifest.
        return take_restore_point(target, reason=reason, revision=revision, now=now,
                                  label=label)

    def verify(self, target, manifest, *, now, **read_back):
        # `read_back` (progress, an extract, the archive check) is a dump's: there is nothing
        # of ours to read back, pgBackRest is asked instead.
        return record_outcome(target.storage, manifest, now,
                              lambda: verify_restore_point(target.settings, manifest))

    def restore(self, target, plan, *, now, reporter, disconnect, whole_cluster, started,
                check_lock):
        """No safety backup: the archived old timeline keeps the writes made since."""
        notes = restore_restore_point(target, plan.backup, whole_cluster=whole_cluster,
                                      reporter=reporter)
        return RestoreResult(plan.backup, None, None, 0.0, notes=notes)

    def refuse_scratch_copy(self, backup) -> None:
        """A restore point is a whole cluster's state: a scratch database cannot hold it."""
        raise ConfigError(f"backup {backup.id} is a pgBackRest restore point, which only a whole "
                          "cluster can hold: drill it by restoring it aside with pgbackrest on "
                          "another host or port (docs/pgbackrest.md)")

    def scratch_copy(self, target, backup, now):
        self.refuse_scratch_copy(backup)

    def status(self, target) -> dict:
        return {"pgbackrest": status_facts(target)}

    def status_lines(self, status: dict) -> list[tuple[str, str]]:
        """The line `invoke status` adds: the stanza and the archiver (`status` above)."""
        return [("pgbackrest", describe.status_line(status["pgbackrest"]))]

    def summary(self, manifest, *, brief: bool = False) -> str:
        """The line said of a restore point just taken, the same after a migrate or rollback."""
        return describe.summary(manifest)

    def describe(self, manifest) -> list[tuple[str, str]]:
        return describe.describe(manifest)

    def encryption_of(self, manifest) -> str:
        """pgbackrest: the repository's own cipher, if any; nothing of ours is encrypted."""
        return "pgbackrest"

    def encryption_text(self, manifest) -> str:
        return "pgbackrest"
