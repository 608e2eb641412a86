"""The backup a run takes: before migrate or rollback changes anything, or on demand.

Taken by the env's backup method (app/ops/methods/) after the free-disk guard: a dump into our
store, or, with BACKUP_METHOD=pgbackrest, a restore point; nothing at all while the database
does not exist yet.
"""
from __future__ import annotations

from datetime import datetime

from app.ops.catalog import audit
from app.ops.catalog.manifest import BackupManifest, check_label
from app.ops.commands.run_facts import RunFacts
from app.ops.errors import ConfigError
from app.ops.guards.encryption_policy import OPTIONAL, check_policy
from app.ops.guards.preflight import check_free_disk
from app.ops.methods.registry import finish_interrupted_restores as finish_under_lock
from app.ops.methods.registry import restores_in_progress
from app.ops.report import Reporter


def backup_on_demand(target, *, now: datetime, label: str | None,
                     reporter: Reporter = Reporter()) -> BackupManifest:
    """`invoke backup`: the same backup migrate takes, with an optional label."""
    check_label(label)
    facts = RunFacts(target)
    check_policy(target.settings, facts, action="backup")
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
    run's RunFacts (app/ops/commands/run_facts.py), so nothing is read twice."""
    facts = facts or RunFacts(target)
    if not facts.database.exists:
        reporter.info(f"database {target.database.masked_url} does not exist yet: "
                      "there is nothing to back up")
        return None
    check_free_disk(facts, reporter)
    return target.method.take(target, facts, now=now, revision=revision, reason=reason,
                              reporter=reporter, label=label)


def finish_interrupted_restores(target, *, now: datetime, reporter: Reporter) -> None:
    """A backup on demand takes no lock, but a restore an earlier run left unfinished is
    finished first, under the lock, like migrate, rollback and restore do."""
    if not restores_in_progress(target):
        return
    with target.database.lock("backup", now):
        finish_under_lock(target, now=now, reporter=reporter)


def audit_unencrypted(target, manifest, *, now, reporter) -> None:
    """In production under BACKUP_ENCRYPTION=optional: each backup stored unencrypted is
    audited."""
    audit.record(target, action="backup", now=now, outcome="stored unencrypted",
                 reporter=reporter, backup_id=manifest.id, reason=manifest.reason,
                 encryption="none", encryption_policy=OPTIONAL,
                 from_revision=manifest.revision, to_revision=manifest.revision)
