"""End to end on the embedded default (SQLite): `invoke` runs as a subprocess in a fresh copy of
the project, exactly as a user runs it, and every test checks the state it leaves behind: the
database's revision and columns, the backups `invoke backups --json` lists, the files on disk.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard

from helpers import (FIRST, HEAD, add_revision, audit_events, dev_db, failed, ok, prod_at,
                     sqlite_state)

CONTRACT_TASKS = ("status", "migrate", "rollback", "backup", "backups", "restore", "verify",
                  "prune", "create", "rehearse", "audit", "history", "heads", "merge", "stamp",
                  "check", "report")


# -- helpers ---------------------------------------------------------------------------------


def migrated(project, revision: str = "head", env: dict | None = None):
    ok(project.run("migrate", f"--revision={revision}", env=env))


def artifacts(project, env_name: str = "dev") -> set[str]:
    return {n for n in project.backup_files(env_name) if n.endswith(".zst")}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state_inside_backup(item: dict) -> dict:
    """Decompress a backup artifact by hand and read the SQLite database inside it."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "restored.sqlite3"
        with open(item["location"], "rb") as src, open(copy, "wb") as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
        return sqlite_state(copy)


def versions(project) -> set[str]:
    return {p.name for p in (project.root / "alembic" / "versions").glob("*.py")}


def env_window(start: datetime, end: datetime) -> str:
    """A one-off MAINTENANCE_WINDOW entry; an end before its start crosses midnight."""
    return f"{start:%Y-%m-%d %H:%M}-{end:%H:%M}"




# -- the release round trip ------------------------------------------------------------------
def test_migrate_from_nothing_says_there_is_nothing_to_back_up(project):
    assert sqlite_state(dev_db(project)) is None
    result = ok(project.run("migrate"))
    assert "nothing to back up" in result.stdout + result.stderr
    state = sqlite_state(dev_db(project))
    assert state["revision"] == HEAD
    assert "phone_number" in state["tables"]["users"]
    assert project.backups() == []
    assert artifacts(project) == set()


def test_status_before_anything_is_read_only(project):
    info = json.loads(ok(project.run("status", "--json")).stdout)
    assert info["env"] == "dev"
    assert info["current"] is None
    assert info["heads"] == [HEAD]
    assert info["pending"] == [FIRST, HEAD]  # apply order
    assert info["last_backup"] is None
    assert info["production"] is False
    assert info["window"] is None
    assert sqlite_state(dev_db(project)) is None  # status created no database


def test_status_text_and_json_after_a_rollback(project):
    migrated(project)
    ok(project.run("rollback"))
    newest = project.backups()[0]

    info = json.loads(ok(project.run("status", "--json")).stdout)
    assert {"env", "database", "current", "heads", "pending", "last_backup", "production",
            "window"} <= info.keys()
    assert info["env"] == "dev"
    assert "dev.db" in info["database"]
    assert info["current"] == FIRST
    assert info["heads"] == [HEAD]
    assert info["pending"] == [HEAD]
    assert info["last_backup"]["id"] == newest["id"]
    assert {"id", "env", "created_at", "revision", "size", "sha256", "location"} <= \
        info["last_backup"].keys()
    assert info["production"] is False
    assert info["window"] is None

    text = ok(project.run("status")).stdout
    for word in ("dev.db", FIRST, HEAD, newest["id"], "production", "window"):
        assert word in text, text
    assert sqlite_state(dev_db(project))["revision"] == FIRST


def test_rollback_takes_a_backup_then_drops_phone_number(project):
    migrated(project)
    result = ok(project.run("rollback"))
    [item] = project.backups()
    assert item["revision"] == HEAD
    assert item["reason"] and "rollback" in item["reason"]
    assert item["id"] in result.stdout
    state = sqlite_state(dev_db(project))
    assert state["revision"] == FIRST
    assert "phone_number" not in state["tables"]["users"]
    # The backup holds the database as it was before the rollback.
    inside = state_inside_backup(item)
    assert inside["revision"] == HEAD and "phone_number" in inside["tables"]["users"]


def test_migrate_again_takes_a_backup_and_returns_to_head(project):
    migrated(project)
    ok(project.run("rollback"))
    ok(project.run("migrate"))
    items = project.backups()
    assert len(items) == 2
    assert items[0]["revision"] == FIRST  # newest first: taken before this migrate
    assert items[1]["revision"] == HEAD
    state = sqlite_state(dev_db(project))
    assert state["revision"] == HEAD
    assert "phone_number" in state["tables"]["users"]


def test_migrate_with_nothing_pending_changes_nothing(project):
    migrated(project)
    before = sqlite_state(dev_db(project))
    result = ok(project.run("migrate"))
    assert "Nothing" in result.stdout
    assert project.backups() == []
    assert artifacts(project) == set()
    assert sqlite_state(dev_db(project)) == before


def test_rollback_to_base_then_migrate_to_a_revision(project):
    migrated(project)
    ok(project.run("rollback", "--to=base"))
    state = sqlite_state(dev_db(project))
    assert state["revision"] is None
    assert "users" not in state["tables"]
    assert [i["revision"] for i in project.backups()] == [HEAD]

    ok(project.run("migrate", f"--revision={FIRST}"))
    state = sqlite_state(dev_db(project))
    assert state["revision"] == FIRST
    assert "users" in state["tables"] and "phone_number" not in state["tables"]["users"]
    assert [i["revision"] for i in project.backups()] == [None, HEAD]


def test_a_failing_migration_exits_5_and_names_its_backup(project):
    migrated(project)
    add_revision(project, "0badc0ffee01", HEAD, """
        op.add_column("users", sa.Column("notes", sa.Text(), nullable=True))
        raise RuntimeError("the migration failed on purpose")
        """, 'op.drop_column("users", "notes")', message="Add notes to users, then fail",
                 slug="fail")
    error = failed(project.run("migrate"), 5, "invoke restore")
    [item] = project.backups()
    assert item["id"] in error
    assert item["revision"] == HEAD
    assert sqlite_state(dev_db(project))["revision"] == HEAD
    inside = state_inside_backup(item)
    assert inside["revision"] == HEAD and "notes" not in inside["tables"]["users"]
    last = audit_events(project.store())[-1]
    assert last["action"] == "migrate" and last["outcome"] == "failed"
    assert last["backup_id"] == item["id"]


# -- bad input -------------------------------------------------------------------------------
def test_unknown_env_is_refused_naming_the_known_ones(project):
    project.env_file("staging", USE_SQLITE="True")
    failed(project.run("migrate", "--env=prdo"), 2, "prdo", "dev", "staging")
    assert not (project.root / "prdo.db").exists()
    assert not dev_db(project).exists()
    assert not (project.root / "staging.db").exists()
    assert not (project.root / "backups" / "prdo").exists()


def test_unknown_revision_is_refused_and_changes_nothing(project):
    migrated(project, FIRST)
    before = sqlite_state(dev_db(project))
    failed(project.run("migrate", "--revision=nope"), 2, "nope")
    assert sqlite_state(dev_db(project)) == before
    assert project.backups() == []


# -- backups and verify ----------------------------------------------------------------------
def test_backup_on_demand_is_listed_with_the_contract_fields(project):
    migrated(project)
    result = ok(project.run("backup", "--label", "before-hotfix-x"))
    [item] = project.backups()
    assert item["id"] in result.stdout
    assert item["env"] == "dev"
    created = datetime.fromisoformat(item["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    assert item["revision"] == HEAD
    artifact = Path(item["location"])
    assert artifact.parent == project.root / "backups" / "dev"
    assert item["size"] == artifact.stat().st_size
    assert item["sha256"] == sha256_file(artifact)
    listing = ok(project.run("backups")).stdout
    [row] = [line for line in listing.splitlines() if item["id"] in line]
    assert "before-hotfix-x" in row


def test_backup_files_are_private(project):
    migrated(project)
    ok(project.run("backup"))
    folder = project.root / "backups" / "dev"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list(folder.iterdir())
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_verify_an_intact_backup(project):
    migrated(project)
    ok(project.run("backup"))
    [item] = project.backups()
    result = ok(project.run("verify", "--backup", item["id"]))
    assert item["id"] in result.stdout
    [after] = project.backups()
    assert after["verified"] is True
    assert after["sha256"] == sha256_file(Path(after["location"]))


def test_verify_a_bit_flipped_backup_fails_and_marks_it_unverified(project):
    migrated(project)
    ok(project.run("backup"))
    [item] = project.backups()
    artifact = Path(item["location"])
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    failed(project.run("verify", "--backup", item["id"]), 4, item["id"])
    [after] = project.backups()
    assert after["verified"] is False
    status = json.loads(ok(project.run("status", "--json")).stdout)
    assert status["last_backup"]["verified"] is False


def test_verify_a_truncated_backup_fails(project):
    migrated(project)
    ok(project.run("backup"))
    [item] = project.backups()
    artifact = Path(item["location"])
    artifact.write_bytes(artifact.read_bytes()[: item["size"] // 2])
    failed(project.run("verify", "--backup", item["id"]), 4, item["id"])
    [after] = project.backups()
    assert after["verified"] is False


def test_verify_an_unknown_backup_is_bad_input(project):
    migrated(project)
    ok(project.run("backup"))
    before = project.backups()
    failed(project.run("verify", "--backup", "20990101T000000Z-nope"), 2, "20990101T000000Z-nope")
    assert project.backups() == before


# -- create ----------------------------------------------------------------------------------
def test_create_refuses_a_vague_message(project):
    migrated(project)
    before = versions(project)
    failed(project.run("create", "Add notes"), 2)
    assert versions(project) == before


def test_create_without_model_changes_writes_nothing(project):
    migrated(project)
    before = versions(project)
    failed(project.run("create", "nothing changed here"), 2)
    assert versions(project) == before


def test_create_empty_writes_a_revision_and_warns_about_downgrade(project):
    migrated(project)
    before = versions(project)
    result = ok(project.run("create", "hand written revision", "--empty"))
    [new] = versions(project) - before
    assert new in result.stdout
    assert "downgrade" in result.stderr and "WARNING" in result.stderr
    info = json.loads(ok(project.run("status", "--json")).stdout)
    [head] = info["heads"]
    assert head != HEAD and head in new
    assert info["pending"] == [head]


def test_list_shows_every_task(project):
    result = ok(project.run("--list"))
    listed = {line.split()[0] for line in result.stdout.splitlines()[1:] if line.startswith("  ")
              and line.strip()}
    missing = [name for name in CONTRACT_TASKS if name not in listed]
    assert not missing, f"tasks missing from `invoke --list`: {missing}\n{result.stdout}"
    assert not dev_db(project).exists()


# -- production guard ------------------------------------------------------------------------
def test_production_without_a_window_is_refused(project):
    path = prod_at(project, FIRST)
    before = sqlite_state(path)
    failed(project.run("migrate", "--env=prod"), 3, "MAINTENANCE_WINDOW")
    assert sqlite_state(path) == before
    assert project.backups("prod") == []
    assert artifacts(project, "prod") == set()


def test_production_inside_a_one_off_window_migrates(project):
    now = datetime.now(UTC)
    path = prod_at(project, FIRST, MAINTENANCE_WINDOW=env_window(now - timedelta(hours=1),
                                                                now + timedelta(hours=1)))
    ok(project.run("migrate", "--env=prod"))
    assert sqlite_state(path)["revision"] == HEAD
    [item] = project.backups("prod")
    assert item["env"] == "prod" and item["revision"] == FIRST


def test_production_after_its_window_is_refused_saying_when(project):
    past = datetime.now(UTC) - timedelta(days=3)
    path = prod_at(project, FIRST, MAINTENANCE_WINDOW=env_window(
        past.replace(hour=10, minute=0), past.replace(hour=11, minute=0)))
    before = sqlite_state(path)
    failed(project.run("migrate", "--env=prod"), 3, "next opens")
    assert sqlite_state(path) == before
    assert project.backups("prod") == []


def test_production_with_a_malformed_window_is_bad_input(project):
    path = prod_at(project, FIRST, MAINTENANCE_WINDOW="Someday 25:00-26:00")
    before = sqlite_state(path)
    failed(project.run("migrate", "--env=prod"), 2, "Someday")
    assert sqlite_state(path) == before
    assert project.backups("prod") == []


def test_break_glass_runs_outside_the_window_and_is_audited(project):
    past = datetime.now(UTC) - timedelta(days=3)
    path = prod_at(project, FIRST, MAINTENANCE_WINDOW=env_window(
        past.replace(hour=10, minute=0), past.replace(hour=11, minute=0)))
    result = ok(project.run("migrate", "--env=prod", "--break-glass", "INC-1 reason"))
    assert "BREAK GLASS" in result.stderr
    assert sqlite_state(path)["revision"] == HEAD
    [item] = project.backups("prod")
    events = [e for e in audit_events(project.store("prod")) if e.get("break_glass")]
    assert [e["break_glass"] for e in events] == ["INC-1 reason"]
    assert events[0]["env"] == "prod" and events[0]["backup_id"] == item["id"]


# -- one at a time ---------------------------------------------------------------------------
def test_a_held_lock_refuses_migrate_naming_the_holder(project):
    migrated(project, FIRST)
    before = sqlite_state(dev_db(project))
    lock = dev_db(project).with_name("dev.db.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"holder": "alice@release-box pid 4242"}).encode(), 0)
        failed(project.run("migrate"), 3, "alice@release-box pid 4242")
        assert sqlite_state(dev_db(project)) == before
        assert project.backups() == []
    finally:
        os.close(fd)  # releases the flock
    ok(project.run("migrate"))
    assert sqlite_state(dev_db(project))["revision"] == HEAD
    assert [i["revision"] for i in project.backups()] == [FIRST]


def test_the_audit_trail_survives_a_restore(project):
    """The trail lives with the backups, not in the database: restoring an older database
    keeps every earlier event and adds the restore's own."""
    ok(project.run("migrate"))
    ok(project.run("rollback"))
    backup_id = json.loads(ok(project.run("backups", "--json")).stdout)[0]["id"]
    ok(project.run("migrate"))
    ok(project.run("restore", "--yes", f"--backup={backup_id}"))
    events = json.loads(ok(project.run("audit", "--json")).stdout)
    assert [(e["action"], e["outcome"]) for e in events] == [
        ("restore", "succeeded"), ("migrate", "succeeded"), ("rollback", "succeeded"),
        ("migrate", "succeeded")]
    assert events[0]["backup_id"] == backup_id
    assert events[0]["to_revision"] == HEAD and events[0]["from_revision"] == HEAD
    assert sqlite_state(project.root / "dev.db")["revision"] == HEAD


HOSTILE_MESSAGES = [
    'Add notes """ + __import__("os").system("touch PWNED") + """ to users',
    "Add notes \\ to users \\",
    'Add notes to users "',
    "Add notes\nto users\r\n\tand more",
    "Ajouter les remarques à l'utilisateur ✓",
]


@pytest.mark.parametrize("message", HOSTILE_MESSAGES)
def test_create_writes_any_message_as_text_never_as_code(project, message):
    import ast
    migrated(project)
    before = versions(project)
    ok(project.run("create", message, "--empty"))
    [new] = versions(project) - before
    source = (project.root / "alembic" / "versions" / new).read_text()
    assert ast.get_docstring(ast.parse(source), clean=False).startswith(message + "\n")
    # Every later command still reads the revisions, and nothing ran.
    info = json.loads(ok(project.run("status", "--json")).stdout)
    assert len(info["pending"]) == 1
    ok(project.run("history"))
    assert not (project.root / "PWNED").exists()


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["restore", "--backup=", "--yes"], ["migrate", "--revision="],
                                  ["rollback", "--to="], ["stamp", ""], ["status", "--env="],
                                  ["backup", "--label="], ["create", " "],
                                  ["migrate", "--break-glass="]])
def test_an_empty_value_is_bad_input_and_changes_nothing(project, args):
    migrated(project, FIRST)
    ok(project.run("backup"))
    state, listed = sqlite_state(dev_db(project)), project.backups()
    failed(project.run(*args), 2, "empty value")
    assert sqlite_state(dev_db(project)) == state
    assert project.backups() == listed


@pytest.mark.parametrize("label", ["two\nlines", "red \x1b[31mtext", "bell\x07", "c1 \x9b31m csi"])
def test_a_label_with_control_characters_is_refused(project, label):
    migrated(project)
    failed(project.run("backup", f"--label={label}"), 2, "--label")
    assert project.backups() == []
