"""`invoke prune`: BACKUP_KEEP_LAST and BACKUP_KEEP_DAYS, end to end on SQLite. `invoke` runs as a
subprocess in a copy of the project; every test checks the store afterwards: which manifests and
artifacts are left, byte for byte where nothing may change.
"""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from helpers import FIRST, HEAD, edit_manifest, failed, ok, shown, store_files

BACKUP_LINE = re.compile(r"^Backup (\S+):", re.M)


# -- helpers ---------------------------------------------------------------------------------


def take_backups(project, count: int, env: dict | None = None) -> list[str]:
    """`invoke backup` `count` times; the ids in the order they were taken (oldest first)."""
    ids = []
    for n in range(count):
        result = ok(project.run("backup", "--label", f"backup {n}", env=env))
        [backup_id] = BACKUP_LINE.findall(result.stdout)
        ids.append(backup_id)
    return ids


def files_of(project, backup_id: str, env_name: str = "dev") -> tuple[Path, Path]:
    """(manifest, artifact) paths of a backup."""
    manifest = project.store(env_name) / f"{backup_id}.manifest.json"
    artifact = project.store(env_name) / json.loads(manifest.read_text())["artifact"]
    return manifest, artifact


def days_ago(days: float) -> str:
    when = datetime.now(UTC) - timedelta(days=days)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def assert_as_before(path: Path, before: dict[str, bytes]) -> None:
    """An artifact byte for byte; a manifest too, but for `verified_at`: prune reads the backup
    it must keep back whole before deleting anything, and records when."""
    if not path.name.endswith(".manifest.json"):
        assert path.read_bytes() == before[path.name]
        return
    now, then = json.loads(path.read_text()), json.loads(before[path.name])
    assert now.pop("verified_at") >= then.pop("verified_at")
    assert now == then


def listed_ids(project, env: dict | None = None) -> list[str]:
    return [item["id"] for item in project.backups(env=env)]


@pytest.fixture
def migrated(project):
    ok(project.run("migrate"))
    return project


# -- BACKUP_KEEP_LAST ------------------------------------------------------------------------
def test_keep_last_dry_run_lists_and_deletes_nothing_then_prune_deletes(migrated):
    project = migrated
    ids = take_backups(project, 5)
    assert listed_ids(project) == ids[::-1]
    env = {"BACKUP_KEEP_LAST": "2"}

    before = store_files(project.store())
    result = ok(project.run("prune", "--dry-run", env=env))
    for old in ids[:3]:
        assert old in result.stdout, shown(result)
    for kept in ids[3:]:
        assert kept not in result.stdout, shown(result)
    assert store_files(project.store()) == before
    assert listed_ids(project) == ids[::-1]

    audit_files = {n: b for n, b in before.items() if n.endswith(".audit.json")}
    result = ok(project.run("prune", env=env))
    for old in ids[:3]:
        assert old in result.stdout, shown(result)
        manifest, artifact = (project.store() / f"{old}.manifest.json",
                              project.store() / f"{old}.sqlite3.zst")
        assert not manifest.exists() and not artifact.exists()
    for kept in ids[3:]:
        for path in files_of(project, kept):
            assert_as_before(path, before)
    assert listed_ids(project) == ids[:2:-1]
    after = store_files(project.store())
    # Only the three backups' files went: the audit trail is not retention's business.
    assert set(before) - set(after) == {f"{i}.manifest.json" for i in ids[:3]} | \
        {f"{i}.sqlite3.zst" for i in ids[:3]}
    assert {n: b for n, b in after.items() if n.endswith(".audit.json")} == audit_files

    # Applying the same retention again has nothing left to do.
    again = store_files(project.store())
    ok(project.run("prune", env=env))
    assert store_files(project.store()) == again


def test_keep_last_keeps_the_newest_verified_even_beyond_the_count(migrated):
    project = migrated
    ids = take_backups(project, 4)
    for unverified in ids[2:]:  # the two newest failed a later verify
        edit_manifest(project, unverified, verified=False, verify_error="damaged")
    ok(project.run("prune", env={"BACKUP_KEEP_LAST": "2"}))
    assert listed_ids(project) == [ids[3], ids[2], ids[1]]
    for gone in ids[:1]:
        assert not (project.store() / f"{gone}.manifest.json").exists()


# -- BACKUP_KEEP_DAYS ------------------------------------------------------------------------
def test_keep_days_deletes_only_what_is_older(migrated):
    project = migrated
    old40, old10, fresh = take_backups(project, 3)
    edit_manifest(project, old40, created_at=days_ago(40))
    edit_manifest(project, old10, created_at=days_ago(10))
    before = store_files(project.store())

    dry = ok(project.run("prune", "--dry-run", env={"BACKUP_KEEP_DAYS": "30"}))
    assert old40 in dry.stdout and old10 not in dry.stdout and fresh not in dry.stdout
    assert store_files(project.store()) == before

    ok(project.run("prune", env={"BACKUP_KEEP_DAYS": "30"}))
    assert listed_ids(project) == [fresh, old10]
    manifest40 = project.store() / f"{old40}.manifest.json"
    assert not manifest40.exists()
    assert not (project.store() / f"{old40}.sqlite3.zst").exists()
    for kept in (old10, fresh):
        for path in files_of(project, kept):
            assert_as_before(path, before)


def test_keep_days_never_deletes_the_newest_verified_backup(migrated):
    project = migrated
    oldest, middle, newest = take_backups(project, 3)
    edit_manifest(project, oldest, created_at=days_ago(30))
    edit_manifest(project, middle, created_at=days_ago(20))
    edit_manifest(project, newest, created_at=days_ago(10), verified=False,
                  verify_error="failed verification")
    before = store_files(project.store())

    ok(project.run("prune", env={"BACKUP_KEEP_DAYS": "1"}))
    assert listed_ids(project) == [middle]
    for path in files_of(project, middle):
        assert_as_before(path, before)
    for gone in (oldest, newest):
        assert not (project.store() / f"{gone}.manifest.json").exists()
        assert not (project.store() / f"{gone}.sqlite3.zst").exists()


def test_keep_days_with_everything_old_keeps_only_the_newest(migrated):
    project = migrated
    ids = take_backups(project, 3)
    for age, backup_id in zip((30, 20, 10), ids):
        edit_manifest(project, backup_id, created_at=days_ago(age))
    ok(project.run("prune", env={"BACKUP_KEEP_DAYS": "1"}))
    assert listed_ids(project) == [ids[2]]


def test_keep_last_and_keep_days_together_keep_either(migrated):
    project = migrated
    ids = take_backups(project, 4)
    for age, backup_id in zip((40, 20, 10, 5), ids):
        edit_manifest(project, backup_id, created_at=days_ago(age))
    ok(project.run("prune", env={"BACKUP_KEEP_LAST": "1", "BACKUP_KEEP_DAYS": "15"}))
    assert listed_ids(project) == [ids[3], ids[2]]


# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize("setting,value", [("BACKUP_KEEP_LAST", "abc"),
                                           ("BACKUP_KEEP_LAST", "0"),
                                           ("BACKUP_KEEP_LAST", "-3"),
                                           ("BACKUP_KEEP_LAST", "2.5"),
                                           ("BACKUP_KEEP_DAYS", "abc"),
                                           ("BACKUP_KEEP_DAYS", "-1")])
def test_an_invalid_retention_setting_is_bad_input_and_deletes_nothing(migrated, setting, value):
    project = migrated
    take_backups(project, 2)
    before = store_files(project.store())
    for args in (("prune",), ("prune", "--dry-run")):
        failed(project.run(*args, env={setting: value}), 2, setting)
        assert store_files(project.store()) == before


def test_an_invalid_retention_setting_in_the_env_file_is_bad_input(migrated):
    project = migrated
    take_backups(project, 2)
    project.env_file("dev", BACKUP_KEEP_LAST="abc")
    before = store_files(project.store())
    failed(project.run("prune"), 2, "BACKUP_KEEP_LAST", "abc")
    assert store_files(project.store()) == before


def test_no_retention_configured_deletes_nothing(migrated):
    project = migrated
    ids = take_backups(project, 3)
    for backup_id in ids:
        edit_manifest(project, backup_id, created_at=days_ago(400))
    before = store_files(project.store())
    result = ok(project.run("prune"))
    assert "no retention configured" in result.stdout
    assert store_files(project.store()) == before
    assert sorted(listed_ids(project)) == sorted(ids)


def test_prune_with_no_backups_is_nothing_to_do(project):
    ok(project.run("prune", env={"BACKUP_KEEP_LAST": "1"}))
    assert store_files(project.store()) == {}


# -- never a side effect ---------------------------------------------------------------------
def test_backup_and_migrate_never_prune(project):
    project.env_file("dev", BACKUP_KEEP_LAST="1", BACKUP_KEEP_DAYS="0")
    ok(project.run("migrate", f"--revision={FIRST}"))  # creates the database: no backup
    ids = take_backups(project, 3)
    assert listed_ids(project) == ids[::-1]
    ok(project.run("migrate"))
    ok(project.run("rollback"))
    items = project.backups()
    assert len(items) == 5
    assert [i["revision"] for i in items[:2]] == [HEAD, FIRST]
    for item in items:
        assert Path(item["location"]).is_file()


# -- the store is input too ------------------------------------------------------------------
def test_a_missing_artifact_is_shown_and_does_not_make_prune_delete_the_good_backups(migrated):
    project = migrated
    ids = take_backups(project, 3)
    _, artifact = files_of(project, ids[-1])
    artifact.unlink()  # the newest backup's artifact is gone

    items = {item["id"]: item for item in project.backups()}
    assert items[ids[-1]]["artifact"] == "missing"
    assert items[ids[0]]["artifact"] == "present"
    assert "MISSING" in ok(project.run("backups")).stdout
    assert "ARTIFACT MISSING" in ok(project.run("status")).stdout

    result = ok(project.run("prune", env={"BACKUP_KEEP_LAST": "1"}))
    assert "missing" in result.stderr, shown(result)
    # The newest whole backup is kept; the broken one stays listed for a person to look at.
    assert listed_ids(project) == [ids[2], ids[1]]
    assert files_of(project, ids[1])[1].exists()


def test_a_flipped_byte_in_the_newest_backup_makes_prune_keep_the_next_good_one(migrated):
    project = migrated
    ids = take_backups(project, 3)
    _, artifact = files_of(project, ids[-1])
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))  # same size: only reading it back shows the damage

    result = ok(project.run("prune", env={"BACKUP_KEEP_LAST": "1"}))
    assert ids[-1] in result.stderr and "verif" in result.stderr, shown(result)
    assert listed_ids(project) == [ids[2], ids[1]]
    items = {item["id"]: item for item in project.backups()}
    assert items[ids[2]]["verified"] is False  # the failed read-back is recorded
    assert items[ids[1]]["verified"] is True
    ok(project.run("verify", f"--backup={ids[1]}"))


def test_prune_deletes_nothing_when_no_backup_verifies(migrated):
    project = migrated
    ids = take_backups(project, 3)
    for backup_id in ids:
        edit_manifest(project, backup_id, verified=False, verify_error="damaged")
    before = store_files(project.store())
    failed(project.run("prune", env={"BACKUP_KEEP_LAST": "1"}), 4, "no backup that verifies",
           "deleted nothing")
    assert store_files(project.store()) == before


def test_when_every_read_back_fails_prune_deletes_nothing(migrated):
    project = migrated
    ids = take_backups(project, 3)
    for backup_id in ids:
        _, artifact = files_of(project, backup_id)
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF
        artifact.write_bytes(bytes(data))
    result = project.run("prune", env={"BACKUP_KEEP_LAST": "1"})
    failed(result, 4, "no backup that verifies", "deleted nothing")
    # Each candidate to protect was read back in turn, and each failure recorded.
    for backup_id in ids:
        assert backup_id in result.stderr, shown(result)
    assert [item["verified"] for item in project.backups()] == [False, False, False]
    assert sorted(listed_ids(project)) == sorted(ids)
    for backup_id in ids:
        assert files_of(project, backup_id)[1].exists()


def forge(project, template_id: str, backup_id: str, **changes) -> Path:
    """A manifest written by hand into the store: a copy of a real one with `changes`."""
    data = json.loads((project.store() / f"{template_id}.manifest.json").read_text())
    data.update(id=backup_id, **changes)
    path = project.store() / f"{backup_id}.manifest.json"
    path.write_text(json.dumps(data))
    return path


def test_a_forged_manifest_naming_a_file_outside_the_store_is_skipped(migrated, tmp_path):
    project = migrated
    ids = take_backups(project, 2)
    victim = tmp_path / "victim.txt"
    victim.write_text("not a backup")
    forged = forge(project, ids[0], "29991231T000000.000Z-abcdef", artifact=str(victim))

    result = ok(project.run("backups"))
    assert str(forged) in result.stderr and "artifact" in result.stderr, shown(result)
    assert listed_ids(project) == ids[::-1]
    ok(project.run("prune", env={"BACKUP_KEEP_LAST": "1"}))
    failed(project.run("verify", "--backup=29991231T000000.000Z-abcdef"), 2)
    assert victim.read_text() == "not a backup"
    assert listed_ids(project) == [ids[1]]


@pytest.mark.parametrize("changes", [{"reason": None}, {"size": "big"}, {"verified": "yes"},
                                     {"sha256": "../../etc/passwd"}, {"created_at": 5}])
def test_an_invalid_manifest_is_skipped_with_a_warning_naming_it(migrated, changes):
    project = migrated
    [good] = take_backups(project, 1)
    forged = forge(project, good, "29991231T000000.000Z-abcdef", **changes)
    for task in (["backups"], ["backups", "--json"], ["status"]):
        result = ok(project.run(*task))
        assert str(forged) in result.stderr, shown(result)
    assert listed_ids(project) == [good]
    result = ok(project.run("restore", "--yes"))
    assert good in result.stdout, shown(result)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e10"])
def test_keep_days_that_is_not_a_number_of_days_is_refused(migrated, value):
    project = migrated
    take_backups(project, 2)
    before = store_files(project.store())
    failed(project.run("prune", env={"BACKUP_KEEP_DAYS": value}), 2, "BACKUP_KEEP_DAYS")
    assert store_files(project.store()) == before
