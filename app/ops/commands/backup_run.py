"""The backup a run takes: before migrate or rollback changes anything, or on demand.

Taken by the env's backup method (app/ops/methods/registry.py): a dump (app/ops/catalog/backups.py) after its
free-disk guard, or, with BACKUP_METHOD=pgbackrest, a restore point (app/ops/methods/pgbackrest/command.py);
nothing at all while the database does not exist yet.
"""
from __future__ import annotations

from datetime import datetime

from app.ops.guards.encryption_policy import audit_unencrypted, check_policy
from app.ops.errors import ConfigError
from app.ops.guards.preflight import RunFacts
from app.ops.catalog.manifest import BackupManifest, check_label
from app.ops.report import Reporter


def backup_on_demand(target, *, now: datetime, label: str | None,
                     reporter: Reporter = Reporter()) -> BackupManifest:
    """`invoke backup`: the same backup migrate takes, with an optional label."""
    check_label(label)
    facts = RunFacts(target)
    check_policy(target.settings, lambda: facts.at_rest, action="backup")
    finish_interrupted_restores(target, now=now, reporter=reporter)
    manifest = backup_before_change(target, facts, now=now, revision=target.database.revision(),
                                    reporter=reporter, reason="on demand", label=label)
    if manifest is None:
        raise ConfigError(f"database {target.database.masked_url} does not exist yet: "
                          "there is nothing to back up")
    if target.settings.production and facts.at_rest is None:
        # Not audited otherwise: under BACKUP_ENCRYPTION=optional a plaintext copy is.
        audit_unencrypted(target, manifest, now=now, reporter=reporter)
    return manifest


def backup_before_change(target, facts=None, *, now: datetime, revision: str | None,
                         reason: str, reporter: Reporter,
                         label: str | None = None) -> BackupManifest | None:
    """The backup a run takes before it changes anything (None: no database yet). `facts`: the
    run's RunFacts (app/ops/guards/preflight.py), so nothing is read twice."""
    facts = facts or RunFacts(target)
    if not facts.database.exists:
        reporter.info(f"database {target.database.masked_url} does not exist yet: "
                      "there is nothing to back up")
        return None
    return target.method.take(target, facts, now=now, revision=revision, reason=reason,
                              reporter=reporter, label=label)


def finish_interrupted_restores(target, *, now: datetime, reporter: Reporter) -> None:
    """A backup on demand takes no lock, but a restore an earlier run left unfinished is
    finished first, under the lock, like migrate, rollback and restore do."""
    from app.ops.catalog.restore_intent import pending_intents
    if target.database.kind != "postgresql" or not pending_intents(target):
        return
    with target.database.lock("backup", now):
        target.database.finish_interrupted_restore(target, now=now, reporter=reporter)
