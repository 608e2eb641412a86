"""The backup method (BACKUP_METHOD): how a backup is taken, verified, restored and shown in
status, one object per method, so nothing else asks which method is configured.

- `DumpMethod` (default): the database's dumper writes an artifact into our store
  (app/ops/catalog/backups.py), read back whole; a restore goes over the database its own way
  (app/ops/databases/).
- `PgBackRestMethod`: a named restore point whose WAL pgBackRest has archived
  (app/ops/methods/pgbackrest/command.py); a restore is a point-in-time recovery of the whole cluster
  (app/ops/methods/pgbackrest/point_in_time.py).

A run takes its backups with the configured method (`Target.method`); an existing backup is
verified and restored by the method that made it (`method_of(manifest)`), whatever the env is
configured for now.
"""
from __future__ import annotations


class DumpMethod:
    name = "dump"

    def take(self, target, facts, *, now, revision, reason, reporter, label=None):
        from app.ops.catalog.backups import take_backup
        from app.ops.guards.preflight import check_free_disk, estimate_backup_size

        check_free_disk(target.settings, facts, reporter)
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
        from app.ops.catalog.backups import verify_dump
        return verify_dump(target, manifest, now=now, progress=progress,
                           extract_to=extract_to, archive_check=archive_check)

    def restore(self, target, plan, *, now, reporter, disconnect, whole_cluster, started,
                check_lock):
        return target.database.restore(target, plan, now=now, reporter=reporter,
                                       disconnect=disconnect, started=started,
                                       check_lock=check_lock)

    def status(self, target) -> dict:
        """What `invoke status` adds for this method: nothing, the store says it all."""
        return {}


class PgBackRestMethod:
    name = "pgbackrest"

    def take(self, target, facts, *, now, revision, reason, reporter, label=None):
        # No free-disk estimate and no progress: nothing is written but a manifest.
        from app.ops.methods.pgbackrest.command import take_restore_point
        return take_restore_point(target, reason=reason, revision=revision, now=now,
                                  label=label)

    def verify(self, target, manifest, *, now, **read_back):
        # `read_back` (progress, an extract, the archive check) is a dump's: there is nothing
        # of ours to read back, pgBackRest is asked instead.
        from app.ops.catalog.backups import record_outcome
        from app.ops.methods.pgbackrest.verify import verify_restore_point
        return record_outcome(target.storage, manifest, now,
                              lambda: verify_restore_point(target.settings, manifest))

    def restore(self, target, plan, *, now, reporter, disconnect, whole_cluster, started,
                check_lock):
        """No safety backup: the archived old timeline keeps the writes made since."""
        from app.ops.commands.restore import RestoreResult
        from app.ops.methods.pgbackrest.point_in_time import restore_restore_point
        notes = restore_restore_point(target, plan.backup, whole_cluster=whole_cluster,
                                      reporter=reporter)
        return RestoreResult(plan.backup, None, None, 0.0, notes=notes)

    def status(self, target) -> dict:
        from app.ops.methods.pgbackrest.command import status_facts
        return {"pgbackrest": status_facts(target)}


METHODS = {method.name: method for method in (DumpMethod(), PgBackRestMethod())}


def configured_method(settings):
    """BACKUP_METHOD's object (a bad value, or pgbackrest for SQLite, is a ConfigError)."""
    return METHODS[settings.backup_method]


def method_of(manifest):
    """The method that made `manifest` (checked when the manifest was read)."""
    return METHODS[manifest.method]
