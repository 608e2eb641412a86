"""End to end on a full disk: the backup store (BACKUP_DIR) or the temporary folder (TMPDIR) is a
small tmpfs of its own, filled to a chosen number of free bytes, so every write meets a real
ENOSPC. Each run must end with exit 4 and one `ERROR:` line naming the folder and the room
needed, never a traceback, and leave the database, the backups and their manifests as they were,
with nothing left behind (no artifact, no `.partial`, no scratch copy).
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from helpers import (FIRST, HEAD, Untouched, edit_manifest, failed, last_audit, ok, pg_env,
                     read_manifest, sqlite_state, store_files)

BLOCK = 4096  # tmpfs's page: the unit it hands out room in
MIB = 1 << 20


# -- helpers ---------------------------------------------------------------------------------


def store_on(disk) -> dict:
    return {"BACKUP_DIR": str(disk.path / "backups")}


class SqliteUntouched:
    """What a run that failed for want of room must leave as it was: the database, the listed
    backups, and the store's files byte for byte."""

    def __init__(self, project, env: dict, store: Path):
        self.project, self.env, self.store = project, env, store
        self.state, self.listed, self.files = self._read()

    def _read(self):
        return (sqlite_state(self.project.root / "dev.db"),
                self.project.backups("dev", env=self.env), store_files(self.store, records=False))

    def check(self) -> None:
        state, listed, files = self._read()
        assert state == self.state
        assert listed == self.listed
        assert files == self.files


def one_backup_on(project, disk, *migrate_args: str) -> tuple[dict, Path]:
    """dev.db migrated (to head, or as `migrate_args` say) and one backup of it, kept in a store
    on `disk`: the settings that say so, and the store's folder."""
    env, store = store_on(disk), disk.path / "backups" / "dev"
    ok(project.run("migrate", *migrate_args, env=env))
    ok(project.run("backup", env=env))
    return env, store


def with_backup_at(project, env: dict, revision: str) -> dict:
    """The database at HEAD with one backup of it taken at `revision`: a restore would change
    the database, so an untouched one shows."""
    ok(project.run("migrate", f"--revision={revision}", env=env))
    ok(project.run("backup", env=env))
    if revision != HEAD:
        ok(project.run("migrate", env=env))
    listed = project.backups("dev", env=env)
    return listed[-1] if revision != HEAD else listed[0]


def backed_up_with_a_full_tmpdir(project, small_disk) -> tuple:
    """dev.db at head with one backup, and a TMPDIR of 64 KiB with two blocks left (the copy of
    the 20 KiB database does not fit): the TMPDIR's SmallDisk, and what a refused run must
    leave SqliteUntouched."""
    tmp = small_disk(64 * 1024, "tmp")
    ok(project.run("migrate"))
    ok(project.run("backup"))
    before = SqliteUntouched(project, {}, project.store("dev"))
    tmp.fill(leave=2 * BLOCK)
    return tmp, before


def understate_raw_size(project, backup_id: str, env_name: str) -> None:
    """Make the manifest claim a 1-byte database, so the room checked before the extract is
    too little and the extract itself runs into the full disk (as a disk that fills up meanwhile
    would)."""
    edit_manifest(project, backup_id, env_name, raw_size=1)


# -- the backup store fills ------------------------------------------------------------------
def test_room_for_the_artifact_but_not_the_manifest_stops_the_migration(project, small_disk):
    disk = small_disk(MIB)
    env, store = one_backup_on(project, disk, f"--revision={FIRST}")
    before = SqliteUntouched(project, env, store)
    assert before.listed[0]["size"] <= BLOCK  # the new artifact fits in the one block left
    disk.fill(leave=BLOCK)

    line = failed(project.run("migrate", env=env), 4, str(store), "manifest", "needed")

    # Room for the artifact and the manifest, a block each; the artifact's is free again.
    assert "8.0 KiB needed, 4.0 KiB free" in line
    before.check()  # still at FIRST; no new backup listed; no artifact or `.partial` left
    assert last_audit(store)["outcome"] == "backup failed"


def test_a_store_that_fills_during_the_artifact_names_its_folder(project, small_disk):
    disk = small_disk(MIB)
    env, store = one_backup_on(project, disk)
    # Rows that hardly compress: the next artifact outgrows the room the free-disk guard
    # expects from the first backup's ratio (and checks before the dump), so the write fills it.
    with sqlite3.connect(project.root / "dev.db") as conn:
        conn.executemany("INSERT INTO users (email, full_name, hashed_password) VALUES (?, ?, ?)",
                         [(f"u{i}@example.org", "U", os.urandom(500).hex()) for i in range(100)])
    conn.close()
    before = SqliteUntouched(project, env, store)
    disk.fill(leave=2 * BLOCK)

    line = failed(project.run("backup", env=env), 4, str(store), "more than", "needed")

    assert "Errno" not in line
    before.check()


def test_verify_that_finds_damage_but_cannot_record_it_says_so(project, small_disk):
    disk = small_disk(MIB)
    env, store = one_backup_on(project, disk)
    backup = project.backups("dev", env=env)[0]
    artifact = Path(backup["location"])
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the checksum can tell
    artifact.write_bytes(bytes(data))
    before = SqliteUntouched(project, env, store)
    disk.fill(leave=0)

    line = failed(project.run("verify", env=env), 4, backup["id"], "failed verification",
                  "could not be recorded", "still says verified", str(store), "needed",
                  f"invoke verify --env=dev --backup={backup['id']}")

    # The manifest could not change: the old one is intact (its rewrite went to a `.partial`,
    # removed), and what it still claims is what the message warned about.
    before.check()
    assert project.backups("dev", env=env)[0]["verified"] is True
    # The advice works: with room again, the same verify records the damage.
    disk.unfill()
    again = failed(project.run("verify", env=env), 4, "failed verification")
    assert "could not be recorded" not in again
    assert project.backups("dev", env=env)[0]["verified"] is False


def test_verify_of_an_intact_backup_that_cannot_record_it_fails(project, small_disk):
    disk = small_disk(MIB)
    env, store = one_backup_on(project, disk)
    backup = project.backups("dev", env=env)[0]
    before = SqliteUntouched(project, env, store)
    disk.fill(leave=0)

    failed(project.run("verify", env=env), 4, backup["id"], "is intact",
           "could not be recorded", str(store), "needed")

    before.check()  # verified_at is the backup's own still
    disk.unfill()
    ok(project.run("verify", env=env))
    assert project.backups("dev", env=env)[0]["verified_at"] != backup["verified_at"]


# -- the temporary folder fills --------------------------------------------------------------
def test_a_backup_whose_tmpdir_is_too_small_is_refused_naming_it(project, small_disk):
    tmp, before = backed_up_with_a_full_tmpdir(project, small_disk)

    failed(project.run("backup", env={"TMPDIR": str(tmp.path)}), 4, str(tmp.path), "needed",
           "TMPDIR")

    before.check()
    assert tmp.files() == set()


def test_verify_whose_tmpdir_is_too_small_is_refused_and_not_recorded_as_damage(project,
                                                                                small_disk):
    tmp, before = backed_up_with_a_full_tmpdir(project, small_disk)

    failed(project.run("verify", env={"TMPDIR": str(tmp.path)}), 4, str(tmp.path),
           "20.0 KiB needed, 8.0 KiB free", "TMPDIR")

    before.check()  # still verified: a full temporary folder says nothing about the backup
    assert tmp.files() == set()


@pytest.mark.parametrize("room", ["checked before", "runs out during the extract"])
def test_a_restore_whose_tmpdir_is_too_small_leaves_the_database_alone(project, small_disk,
                                                                       room):
    tmp = small_disk(64 * 1024, "tmp")
    store = project.root / "backups" / "dev"
    backup = with_backup_at(project, {}, FIRST)
    if room == "runs out during the extract":
        understate_raw_size(project, backup["id"], "dev")
    before = SqliteUntouched(project, {}, store)
    assert before.state["revision"] == HEAD
    tmp.fill(leave=2 * BLOCK)

    failed(project.run("restore", f"--backup={backup['id']}", "--yes",
                       env={"TMPDIR": str(tmp.path)}), 4, str(tmp.path), "needed", "TMPDIR")

    before.check()  # at HEAD still, no safety backup, the backup still verified
    assert tmp.files() == set()
    assert last_audit(store)["outcome"] == "failed"


def test_a_restore_test_whose_tmpdir_is_too_small_is_refused(project, small_disk):
    tmp, before = backed_up_with_a_full_tmpdir(project, small_disk)

    failed(project.run("verify", "--restore-test", env={"TMPDIR": str(tmp.path)}), 4,
           str(tmp.path), "needed", "TMPDIR")

    before.check()
    assert tmp.files() == set()


def test_a_rehearsal_whose_tmpdir_is_too_small_is_refused(project, small_disk):
    tmp = small_disk(64 * 1024, "tmp")
    store = project.root / "backups" / "dev"
    with_backup_at(project, {}, FIRST)
    before = SqliteUntouched(project, {}, store)
    tmp.fill(leave=2 * BLOCK)

    failed(project.run("rehearse", env={"TMPDIR": str(tmp.path)}), 4, str(tmp.path), "needed",
           "TMPDIR")

    before.check()
    assert tmp.files() == set()


@pytest.mark.parametrize("drill", [("verify", "--restore-test"), ("rehearse",)])
def test_a_drill_on_a_full_store_fails_in_one_line(project, small_disk, drill):
    disk = small_disk(MIB)
    env, store = store_on(disk), disk.path / "backups" / "dev"
    with_backup_at(project, env, FIRST)
    backup = project.backups("dev", env=env)[0]  # the newest: what both drills take
    before = SqliteUntouched(project, env, store)
    disk.fill(leave=0)

    # The drill's verify cannot record its outcome; a rehearsal's own record cannot be saved
    # either, and must not replace that message with a traceback.
    failed(project.run(*drill, env=env), 4, backup["id"], "could not be recorded", str(store),
           "needed")

    before.check()


# -- PostgreSQL: the restore's extract does not fit TMPDIR -----------------------------------
@pytest.mark.postgres
@pytest.mark.parametrize("room", ["checked before", "runs out during the extract"])
def test_a_postgres_restore_whose_tmpdir_is_too_small_changes_nothing(project, pgdb, pg_admin,
                                                                      small_disk, room):
    db, tmp = pgdb, small_disk(64 * 1024, "tmp")
    env, store = pg_env(db), project.root / "backups" / "pgtest"
    ok(project.run("migrate", f"--revision={FIRST}", env=env))
    for i in range(300):
        db.sql("INSERT INTO users (email, full_name, hashed_password) VALUES (:e, 'U', 'x')",
               e=f"user{i}@example.org")
    ok(project.run("backup", env=env))
    backup = project.backups("pgtest", env=env)[0]
    raw_size = read_manifest(project, backup["id"], "pgtest")["raw_size"]
    assert raw_size > 2 * BLOCK  # the extract cannot fit in the room left below
    ok(project.run("migrate", env=env))
    if room == "runs out during the extract":
        understate_raw_size(project, backup["id"], "pgtest")
    before, files = Untouched(project, db, pg_admin, env), store_files(store, records=False)
    tmp.fill(leave=2 * BLOCK)

    line = failed(project.run("restore", f"--backup={backup['id']}", "--yes",
                              env={**env, "TMPDIR": str(tmp.path)}), 4, str(tmp.path), "needed",
                  "TMPDIR")

    assert "extract" in line
    before.check()  # same data, same database (oid), same backups listed, no copy left
    assert store_files(store, records=False) == files  # the safety backup begun beside it is gone again
    assert tmp.files() == set()
    assert last_audit(store)["outcome"] == "failed"
