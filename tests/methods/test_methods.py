"""app.ops.methods.registry: the backup method is chosen once (BACKUP_METHOD, or the manifest's own
method for an existing backup), and backups, restore and status ask that object instead of
branching on "pgbackrest" themselves. Real SQLite files; a recording method stands in where a
test must see what was asked of it."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from app.ops.commands.backup_run import backup_before_change
from app.ops.catalog.backups import list_backups
from app.ops.methods.dump.take import take_backup
from app.ops.methods.registry import verify_backup
from app.ops.errors import BackupFailed, ConfigError
from app.ops.commands.run_facts import RunFacts
from app.ops.methods.registry import METHODS, DumpMethod, PgBackRestMethod, method_of
from app.ops.report import Reporter
from app.ops.commands.restore import run_restore
from app.ops.commands.status import collect_status
from app.ops.methods.contract import RestorePlan, RestoreResult
from helpers import FIRST, PG_URL, T0, dev_target, make_sqlite



class RecordingMethod:
    """Answers like a method and remembers what it was asked."""
    name = "recording"

    def __init__(self, answer=None):
        self.answer, self.calls = answer, []

    def room_needed(self, facts):
        return None  # writes nothing to the store: the free-disk guard has nothing to weigh

    def take(self, target, facts, **kwargs):
        self.calls.append(("take", target, facts, kwargs))
        return self.answer

    def verify(self, target, manifest, **kwargs):
        self.calls.append(("verify", target, manifest, kwargs))
        return manifest

    def restore(self, target, plan, **kwargs):
        self.calls.append(("restore", target, plan, kwargs))
        return RestoreResult(plan.backup, None, None, 0.0, notes=["recorded"])

    def status(self, target):
        self.calls.append(("status", target))
        return {"recording": {"asked": True}}


def test_the_configured_method_is_chosen_once_from_backup_method(tmp_path):
    assert isinstance(dev_target(tmp_path).method, DumpMethod)
    target = dev_target(tmp_path, BACKUP_METHOD="pgbackrest", DATABASE_URL=PG_URL)
    assert isinstance(target.method, PgBackRestMethod)
    assert target.method is target.method  # one object per target
    with pytest.raises(ConfigError, match="needs a PostgreSQL database"):
        dev_target(tmp_path, BACKUP_METHOD="pgbackrest").method
    with pytest.raises(ConfigError, match="'tape' is not supported"):
        dev_target(tmp_path, BACKUP_METHOD="tape").method


def test_an_existing_backup_is_handled_by_the_method_that_made_it(tmp_path):
    target = dev_target(tmp_path)
    make_sqlite(target.database.path, rows=0)
    manifest = take_backup(target, reason="manual", revision=FIRST, now=T0)
    assert isinstance(method_of(manifest), DumpMethod)
    restore_point = replace(manifest, method="pgbackrest", artifact="", pgbackrest={})
    assert isinstance(method_of(restore_point), PgBackRestMethod)
    # A restore point in an env now configured for dumps still goes to pgBackRest, which
    # this env has no stanza for: a configuration error, and nothing recorded against it.
    with pytest.raises(ConfigError, match="PGBACKREST_STANZA"):
        verify_backup(target, restore_point, now=T0)


def test_backup_before_change_asks_the_configured_method_with_the_runs_facts(tmp_path):
    target = dev_target(tmp_path)
    make_sqlite(target.database.path, rows=0)
    sentinel = object()
    target.method = RecordingMethod(answer=sentinel)
    facts = RunFacts(target)
    reporter = Reporter()
    got = backup_before_change(target, facts, now=T0, revision=FIRST, reason="on demand",
                               reporter=reporter, label="x")
    assert got is sentinel
    [(what, asked_target, asked_facts, kwargs)] = target.method.calls
    assert (what, asked_target, asked_facts) == ("take", target, facts)
    assert kwargs == {"now": T0, "revision": FIRST, "reason": "on demand",
                      "reporter": reporter, "label": "x"}
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").rglob("*.zst"))


def test_a_dump_backup_is_still_verified_and_a_damaged_one_recorded(tmp_path):
    target = dev_target(tmp_path)
    make_sqlite(target.database.path, rows=0)
    manifest = take_backup(target, reason="manual", revision=FIRST, now=T0)
    assert verify_backup(target, manifest, now=T0).verified
    artifact = Path(manifest.location)
    artifact.write_bytes(artifact.read_bytes()[:-7])
    with pytest.raises(BackupFailed, match=f"backup {manifest.id} failed verification"):
        verify_backup(target, manifest, now=T0)
    [stored] = [m for m in list_backups(target) if m.id == manifest.id]
    assert stored.verified is False and stored.verify_error


def test_restore_asks_the_method_of_the_backup_not_of_the_env(tmp_path, monkeypatch):
    target = dev_target(tmp_path)
    make_sqlite(target.database.path, rows=0)
    manifest = take_backup(target, reason="manual", revision=FIRST, now=T0)
    restore_point = replace(manifest, method="pgbackrest", artifact="", pgbackrest={})
    recording = RecordingMethod()
    monkeypatch.setitem(METHODS, "pgbackrest", recording)
    plan = RestorePlan(restore_point, target.database.name, FIRST)
    result = run_restore(target, plan, now=T0, whole_cluster=True)
    [(what, asked_target, asked_plan, kwargs)] = recording.calls
    assert (what, asked_target, asked_plan) == ("restore", target, plan)
    assert kwargs["whole_cluster"] is True and kwargs["disconnect"] is False
    assert result.notes == ["recorded"] and result.revision == FIRST


def test_status_adds_what_the_configured_method_reports(tmp_path):
    target = dev_target(tmp_path)
    make_sqlite(target.database.path, rows=0)
    assert "pgbackrest" not in collect_status(target, T0)
    target.method = RecordingMethod()
    info = collect_status(target, T0)
    assert info["recording"] == {"asked": True}
    assert [call[0] for call in target.method.calls] == ["status"]


def test_the_dump_method_restores_every_kind_of_database_the_same_way():
    """Each kind's module (app/ops/methods/dump/) answers the same four calls the method makes."""
    from app.ops.databases.postgres.database import PostgresDatabase
    from app.ops.databases.sqlite.database import SqliteDatabase
    from app.ops.methods.dump.method import ENGINES

    assert set(ENGINES) == {PostgresDatabase.kind, SqliteDatabase.kind}
    for module in ENGINES.values():
        for name in ("restore", "scratch_copy", "pending", "finish_interrupted"):
            assert callable(getattr(module, name, None)), (module.__name__, name)
