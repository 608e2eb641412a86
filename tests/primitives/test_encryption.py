"""Client-side age encryption of backups, end to end: `invoke` runs as a subprocess in a copy of
the project (SQLite by default, one PostgreSQL round trip), with keys made by pyrage. Every test
checks what is left behind: the artifact's bytes, its manifest, the database's rows, and that a
backup can be decrypted by hand with standard tools.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pyrage
import pytest
import zstandard

from helpers import (AGE_MAGIC, FIRST, HEAD, dev_db, failed, ok, pg_env, read_manifest, sealed,
                     sqlite_query, without_audit)

SQLITE_MAGIC = b"SQLite format 3"
ROWS = [("ada@example.org", "Ada Lovelace", "+44 20 7946 0000"),
        ("grace@example.org", "Grace Hopper", None)]


# -- helpers ---------------------------------------------------------------------------------


def user_rows(path: Path) -> list[tuple]:
    return sqlite_query(path, "SELECT email, full_name, phone_number FROM users ORDER BY email")


def sqlite_revision(path: Path) -> str | None:
    rows = sqlite_query(path, "SELECT version_num FROM alembic_version")
    return rows[0][0] if rows else None


def dev_with_rows(project) -> Path:
    """dev.db migrated to head, holding ROWS (migrated without encryption: nothing to back up)."""
    ok(project.run("migrate"))
    conn = sqlite3.connect(dev_db(project))
    with conn:
        conn.executemany("INSERT INTO users (email, full_name, hashed_password, phone_number) "
                         "VALUES (?, ?, 'x', ?)", ROWS)
    conn.close()
    assert user_rows(dev_db(project)) == sorted(ROWS)
    return dev_db(project)


def stored(project, env_name: str = "dev") -> set[str]:
    """Backup artifacts and manifests in the env's local store (audit records aside)."""
    return without_audit(project.backup_files(env_name))


def encrypted_backup(project, keys) -> tuple:
    """dev.db with ROWS, one backup encrypted to (and decryptable by) a key `ops`: the key,
    the settings that use it, and the backup as listed."""
    dev_with_rows(project)
    key = keys("ops")
    env = sealed(key, identity=key)
    ok(project.run("backup", env=env))
    [item] = project.backups(env=env)
    return key, env, item


def unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def rows_of_sqlite_bytes(plain: bytes) -> tuple[str | None, list[tuple]]:
    assert plain.startswith(SQLITE_MAGIC)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "by-hand.sqlite3"
        copy.write_bytes(plain)
        conn = sqlite3.connect(copy)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()
        return sqlite_revision(copy), user_rows(copy)


def payload_offset(data: bytes) -> int:
    """Where the age payload starts: after the header's `--- MAC` line."""
    mac_line = data.index(b"\n---")
    return data.index(b"\n", mac_line + 1) + 1


# -- an encrypted backup ---------------------------------------------------------------------
def test_an_encrypted_backup_is_age_and_holds_nothing_in_the_clear(project, keys):
    dev_with_rows(project)
    key = keys("ops")
    env = sealed(key, identity=key)
    result = ok(project.run("backup", env=env))

    [item] = project.backups(env=env)
    artifact = Path(item["location"])
    assert item["id"] in result.stdout
    assert artifact.name.endswith(".age")
    assert artifact.stat().st_mode & 0o777 == 0o600
    data = artifact.read_bytes()
    assert data.startswith(AGE_MAGIC)
    assert SQLITE_MAGIC not in data
    assert b"ada@example.org" not in data
    assert len(data) == item["size"]

    manifest = read_manifest(project, item["id"])
    assert manifest["encryption"] == "age"
    assert manifest["recipients"] == [key.recipient]
    assert manifest["artifact"] == artifact.name
    assert manifest["verified"] is True
    assert manifest["revision"] == HEAD
    assert str(key.identity) not in json.dumps(manifest)
    # Nothing in the store holds the private key.
    for path in (project.root / "backups" / "dev").iterdir():
        assert str(key.identity).encode() not in path.read_bytes()


def test_an_encrypted_backup_verifies_with_its_key(project, keys):
    key, env, item = encrypted_backup(project, keys)
    result = ok(project.run("verify", "--backup", item["id"], env=env))
    assert item["id"] in result.stdout
    [after] = project.backups(env=env)
    assert after["verified"] is True
    assert read_manifest(project, item["id"])["verify_error"] is None


def test_an_encrypted_backup_decrypts_by_hand(project, keys):
    key, env, item = encrypted_backup(project, keys)
    data = Path(item["location"]).read_bytes()

    # pyrage (rage) + zstandard: the by-hand path.
    plain = unzstd(pyrage.decrypt(data, [key.identity]))
    assert plain.startswith(SQLITE_MAGIC)
    assert len(plain) == read_manifest(project, item["id"])["raw_size"]
    assert rows_of_sqlite_bytes(plain) == (HEAD, sorted(ROWS))

    # The reference age CLI, when installed: `age -d -i KEY FILE | zstd -d`.
    if shutil.which("age"):
        decrypted = subprocess.run(["age", "-d", "-i", str(key.path), item["location"]],
                                   capture_output=True, timeout=60)
        assert decrypted.returncode == 0, decrypted.stderr
        assert rows_of_sqlite_bytes(unzstd(decrypted.stdout)) == (HEAD, sorted(ROWS))


def test_an_encrypted_backup_restores_over_the_database(project, keys):
    key, env, item = encrypted_backup(project, keys)
    path = dev_db(project)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM users")
        conn.execute("INSERT INTO users (email, hashed_password) VALUES ('mallory@x.org', 'x')")
    conn.close()

    ok(project.run("restore", "--backup", item["id"], "--yes", env=env))
    assert user_rows(path) == sorted(ROWS)
    assert sqlite_revision(path) == HEAD
    # The safety backup taken before the restore is encrypted too.
    for listed in project.backups(env=env):
        assert listed["location"].endswith(".age")
        assert read_manifest(project, listed["id"])["encryption"] == "age"


# -- the wrong key, or no key ----------------------------------------------------------------
def test_verify_with_the_wrong_identity_is_bad_input_and_keeps_the_backup_verified(project,
                                                                                  keys):
    dev_with_rows(project)
    key, stranger = keys("ops"), keys("stranger")
    ok(project.run("backup", env=sealed(key, identity=key)))
    [item] = project.backups()
    before = Path(item["location"]).read_bytes()

    failed(project.run("verify", "--backup", item["id"], env=sealed(key, identity=stranger)),
           2, item["id"], "cannot be decrypted")
    manifest = read_manifest(project, item["id"])
    assert manifest["verified"] is True
    assert manifest["verify_error"] is None
    [after] = project.backups()
    assert after["verified"] is True
    assert Path(item["location"]).read_bytes() == before
    # The right key still reads it.
    ok(project.run("verify", "--backup", item["id"], env=sealed(key, identity=key)))


def test_restore_with_the_wrong_identity_is_refused_and_changes_nothing(project, keys):
    path = dev_with_rows(project)
    key, stranger = keys("ops"), keys("stranger")
    ok(project.run("backup", env=sealed(key, identity=key)))
    [item] = project.backups()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM users WHERE email = 'grace@example.org'")
    conn.close()
    before = path.read_bytes()

    failed(project.run("restore", "--backup", item["id"], "--yes",
                       env=sealed(key, identity=stranger)), 2, "cannot be decrypted")
    assert path.read_bytes() == before
    assert [i["id"] for i in project.backups()] == [item["id"]]
    assert project.backups()[0]["verified"] is True


@pytest.mark.parametrize("how", ["unset", "missing file", "file without identity",
                                 "recipients only", "key readable by others"])
def test_verify_without_a_usable_identity_is_bad_input(project, keys, tmp_path, how):
    dev_with_rows(project)
    key = keys("ops")
    ok(project.run("backup", env=sealed(key, identity=key)))
    [item] = project.backups()
    env = {"unset": {},
           "missing file": {"BACKUP_ENCRYPTION_IDENTITY_FILE": str(tmp_path / "nowhere.key")},
           "file without identity": {"BACKUP_ENCRYPTION_IDENTITY_FILE": str(tmp_path / "x.key")},
           "recipients only": sealed(key),
           "key readable by others": sealed(key, identity=key)}[how]
    (tmp_path / "x.key").write_text("# nothing here\n")
    (tmp_path / "x.key").chmod(0o600)
    if how == "key readable by others":
        key.path.chmod(0o644)

    message = failed(project.run("verify", "--backup", item["id"], env=env), 2)
    assert "BACKUP_ENCRYPTION_IDENTITY_FILE" in message
    assert ("chmod 600" in message) == (how == "key readable by others"), message
    assert read_manifest(project, item["id"])["verified"] is True
    assert read_manifest(project, item["id"])["verify_error"] is None


# -- damage ----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flip a payload bit", "flip a header bit", "truncate"])
def test_a_damaged_encrypted_backup_fails_verify_and_is_marked_unverified(project, keys, damage):
    key, env, item = encrypted_backup(project, keys)
    artifact = Path(item["location"])
    data = bytearray(artifact.read_bytes())
    start = payload_offset(bytes(data))
    if damage == "flip a payload bit":
        data[start + (len(data) - start) // 2] ^= 0x01
    elif damage == "flip a header bit":
        data[len(AGE_MAGIC) + 20] ^= 0x01  # inside the X25519 stanza
    else:
        del data[start + (len(data) - start) // 2:]
    artifact.write_bytes(bytes(data))

    failed(project.run("verify", "--backup", item["id"], env=env), 4, item["id"])
    manifest = read_manifest(project, item["id"])
    assert manifest["verified"] is False
    assert manifest["verify_error"]
    [after] = project.backups(env=env)
    assert after["verified"] is False


# -- configuration refused before anything is stored -----------------------------------------
def test_recipients_without_an_identity_file_refuse_the_backup_and_store_nothing(project, keys):
    dev_with_rows(project)
    key = keys("ops")
    failed(project.run("backup", env=sealed(key)), 2, "BACKUP_ENCRYPTION_IDENTITY_FILE")
    assert stored(project) == set()
    assert project.backups() == []


def test_recipients_without_an_identity_file_stop_a_migration(project, keys):
    ok(project.run("migrate", f"--revision={FIRST}"))
    key = keys("ops")
    failed(project.run("migrate", env=sealed(key)), 2, "BACKUP_ENCRYPTION_IDENTITY_FILE")
    assert sqlite_revision(dev_db(project)) == FIRST
    assert stored(project) == set()


@pytest.mark.parametrize("recipient", ["age1notakeyatall", "ssh-ed25519 AAAAC3Nz", "secret key"])
def test_a_malformed_recipient_refuses_the_backup_and_stores_nothing(project, keys, recipient):
    dev_with_rows(project)
    key = keys("ops")
    if recipient == "secret key":
        recipient = str(key.identity)  # a private key pasted where the public key belongs
    env = {"BACKUP_ENCRYPTION_RECIPIENTS": f"{key.recipient},{recipient}",
           "BACKUP_ENCRYPTION_IDENTITY_FILE": str(key.path)}
    result = project.run("backup", env=env)
    failed(result, 2, "BACKUP_ENCRYPTION_RECIPIENTS")
    assert str(key.identity) not in result.stdout + result.stderr
    assert stored(project) == set()


# -- several recipients ----------------------------------------------------------------------
def test_each_of_several_recipients_can_verify_alone(project, keys):
    dev_with_rows(project)
    alice, bob, eve = keys("alice"), keys("bob"), keys("eve")
    env = {"BACKUP_ENCRYPTION_RECIPIENTS": f"{alice.recipient}, {bob.recipient}",
           "BACKUP_ENCRYPTION_IDENTITY_FILE": str(alice.path)}
    ok(project.run("backup", env=env))
    [item] = project.backups()
    assert read_manifest(project, item["id"])["recipients"] == [alice.recipient, bob.recipient]

    data = Path(item["location"]).read_bytes()
    for key in (alice, bob):
        ok(project.run("verify", "--backup", item["id"],
                       env={"BACKUP_ENCRYPTION_IDENTITY_FILE": str(key.path)}))
        assert rows_of_sqlite_bytes(unzstd(pyrage.decrypt(data, [key.identity]))) == \
            (HEAD, sorted(ROWS))
    failed(project.run("verify", "--backup", item["id"],
                       env={"BACKUP_ENCRYPTION_IDENTITY_FILE": str(eve.path)}),
           2, "cannot be decrypted")
    assert project.backups()[0]["verified"] is True


# -- PostgreSQL ------------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_encrypted_backup_verify_and_restore(project, pgdb, keys):
    db = pgdb
    key = keys("ops")
    env = pg_env(db, **sealed(key, identity=key))
    ok(project.run("migrate", env=env))
    assert db.revision() == HEAD
    for email, full_name, phone in ROWS:
        db.sql("INSERT INTO users (email, full_name, hashed_password, phone_number) "
               "VALUES (:e, :n, 'x', :p)", e=email, n=full_name, p=phone)

    ok(project.run("backup", "--label", "encrypted", env=env))
    item = project.backups("pgtest", env=env)[0]
    assert item["label"] == "encrypted"
    data = Path(item["location"]).read_bytes()
    assert item["location"].endswith(".pgdump.zst.age")
    assert data.startswith(AGE_MAGIC)
    assert b"PGDMP" not in data and b"ada@example.org" not in data
    assert read_manifest(project, item["id"], "pgtest")["encryption"] == "age"
    # The plaintext inside is a pg_dump custom archive.
    assert unzstd(pyrage.decrypt(data, [key.identity])).startswith(b"PGDMP")

    ok(project.run("verify", "--backup", item["id"], env=env))
    assert project.backups("pgtest", env=env)[0]["verified"] is True

    db.sql("DELETE FROM users")
    db.sql("INSERT INTO users (email, hashed_password) VALUES ('mallory@x.org', 'x')")
    ok(project.run("restore", "--backup", item["id"], "--yes", env=env))
    assert db.revision() == HEAD
    assert sorted(db.sql("SELECT email, full_name, phone_number FROM users")) == sorted(ROWS)
    for listed in project.backups("pgtest", env=env):
        assert listed["location"].endswith(".age")
