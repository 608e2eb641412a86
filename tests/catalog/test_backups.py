"""app.ops.catalog.backups: take, verify, list and find backups, on real SQLite files and on a real
PostgreSQL database (the `pg_database` fixture, whose role has an awkward password)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import zstandard
from pyrage import x25519

from app.ops.catalog.backups import find_backup, list_backups
from app.ops.methods.dump.take import take_backup
from app.ops.methods.registry import verify_backup
from app.ops.databases import open_database
from app.ops.errors import BackupFailed, ConfigError
from app.ops.catalog.manifest import MANIFEST_SUFFIX, BackupManifest
from app.ops.storage.local import LocalStorage
from app.ops.target import Target, open_target
from app.settings import load_settings
from fake_tools import dump_calls, wrapped_pg_dump
from helpers import (FIRST, HEAD, T0, dev_target, flip_middle_bit, make_sqlite, pg_settings,
                     sqlite_rows)



# -- helpers -----------------------------------------------------------------------------------
def decompress(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def recompress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


@pytest.fixture
def sqlite_target(tmp_path):
    target = dev_target(tmp_path)
    make_sqlite(target.database.path)
    return target


def backup_folder(target) -> Path:
    return target.settings.backup_dir / target.env


def stored_manifest(target, backup_id: str) -> BackupManifest:
    return BackupManifest.from_json(
        (backup_folder(target) / (backup_id + MANIFEST_SUFFIX)).read_text())


# -- take_backup on SQLite ---------------------------------------------------------------------
def test_take_backup_sqlite_manifest_fields(sqlite_target, tmp_path):
    manifest = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0,
                           label="before release 7")
    artifact = backup_folder(sqlite_target) / manifest.artifact
    assert manifest.id.startswith("20260302T101530.000Z-")
    assert manifest.env == "dev"
    assert manifest.engine == "sqlite"
    assert manifest.database == sqlite_target.database.masked_url
    assert manifest.created_at == "2026-03-02T10:15:30.000Z"
    assert datetime.fromisoformat(manifest.created_at) == T0
    assert manifest.revision == FIRST
    assert manifest.reason == "manual"
    assert manifest.label == "before release 7"
    assert manifest.artifact == manifest.id + ".sqlite3.zst"
    assert manifest.location == str(artifact)
    assert manifest.size == artifact.stat().st_size
    assert manifest.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert manifest.verified is True
    assert manifest.verify_error is None
    assert manifest.versions.get("sqlite")
    # The decompressed artifact is the database, with every row.
    raw = decompress(artifact.read_bytes())
    assert manifest.raw_size == len(raw)
    assert raw.startswith(b"SQLite format 3\x00")
    copy = tmp_path / "copy.db"
    copy.write_bytes(raw)
    assert sqlite_rows(copy) == sqlite_rows(Path(sqlite_target.database.url.database))
    assert len(sqlite_rows(copy)["users"]) == 50


def test_take_backup_writes_the_manifest_last_and_matching(sqlite_target):
    manifest = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    assert sorted(os.listdir(backup_folder(sqlite_target))) == sorted(
        [manifest.artifact, manifest.id + MANIFEST_SUFFIX])
    assert stored_manifest(sqlite_target, manifest.id) == manifest


def test_take_backup_files_are_private(sqlite_target):
    previous = os.umask(0o022)
    try:
        manifest = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    finally:
        os.umask(previous)
    folder = backup_folder(sqlite_target)
    assert os.stat(folder).st_mode & 0o777 == 0o700
    for name in (manifest.artifact, manifest.id + MANIFEST_SUFFIX):
        assert os.stat(folder / name).st_mode & 0o777 == 0o600


def test_take_backup_of_missing_sqlite_db_fails_and_stores_nothing(tmp_path):
    settings = dev_target(tmp_path)
    with pytest.raises(BackupFailed):
        take_backup(settings, reason="manual", revision=None, now=T0)
    assert list_backups(settings) == []
    folder = backup_folder(settings)
    assert not folder.exists() or os.listdir(folder) == []
    assert not settings.database.path.exists()


def test_verify_backup_ok_records_verification(sqlite_target):
    manifest = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    later = T0 + timedelta(hours=2)
    verified = verify_backup(sqlite_target, manifest, now=later)
    assert verified.verified is True
    assert verified.verify_error is None
    assert verified.verified_at == "2026-03-02T12:15:30.000Z"
    on_disk = stored_manifest(sqlite_target, manifest.id)
    assert on_disk.verified is True
    assert on_disk.verified_at == "2026-03-02T12:15:30.000Z"


def test_verify_backup_extracts_the_database(sqlite_target, tmp_path):
    manifest = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    target = tmp_path / "extracted.db"
    with open(target, "wb") as out:
        verify_backup(sqlite_target, manifest, now=T0, extract_to=out)
    assert sqlite_rows(target) == sqlite_rows(Path(sqlite_target.database.url.database))


def test_corrupt_artifact_fails_and_is_recorded(sqlite_target):
    manifest = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    flip_middle_bit(backup_folder(sqlite_target) / manifest.artifact)
    with pytest.raises(BackupFailed, match=manifest.id):
        verify_backup(sqlite_target, manifest, now=T0 + timedelta(minutes=5))
    on_disk = stored_manifest(sqlite_target, manifest.id)
    assert on_disk.verified is False
    assert on_disk.verify_error
    assert on_disk.verified_at == "2026-03-02T10:20:30.000Z"
    assert [m.verified for m in list_backups(sqlite_target)] == [False]


def test_truncated_artifact_fails(sqlite_target):
    manifest = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    artifact = backup_folder(sqlite_target) / manifest.artifact
    artifact.write_bytes(artifact.read_bytes()[:-20])
    with pytest.raises(BackupFailed):
        verify_backup(sqlite_target, manifest, now=T0)
    assert stored_manifest(sqlite_target, manifest.id).verified is False


def test_artifact_replaced_by_other_valid_backup_fails_checksum(sqlite_target):
    first = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    conn = sqlite3.connect(sqlite_target.database.url.database)
    with conn:
        conn.execute("DELETE FROM users WHERE id > 10")
    conn.close()
    second = take_backup(sqlite_target, reason="manual", revision=FIRST,
                         now=T0 + timedelta(seconds=1))
    folder = backup_folder(sqlite_target)
    (folder / first.artifact).write_bytes((folder / second.artifact).read_bytes())
    # Of another size, it is refused before a byte is read; of the same size, by the checksum.
    with pytest.raises(BackupFailed, match="SHA-256|checksum|bytes but its manifest records"):
        verify_backup(sqlite_target, first, now=T0)
    assert stored_manifest(sqlite_target, first.id).verified is False
    assert stored_manifest(sqlite_target, second.id).verified is True


def test_well_formed_zstd_of_a_broken_database_fails_integrity(sqlite_target):
    """The checksum and zstd frame are consistent; only the dumper's own read-back can notice."""
    manifest = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    artifact = backup_folder(sqlite_target) / manifest.artifact
    raw = decompress(artifact.read_bytes())
    broken = raw[:100] + b"\xff" * (len(raw) - 100)  # header survives, pages do not
    artifact.write_bytes(recompress(broken))
    manifest.sha256 = hashlib.sha256(artifact.read_bytes()).hexdigest()
    manifest.size = artifact.stat().st_size
    manifest.raw_size = len(broken)
    with pytest.raises(BackupFailed):
        verify_backup(sqlite_target, manifest, now=T0)
    assert stored_manifest(sqlite_target, manifest.id).verified is False


def test_missing_artifact_fails_and_is_recorded(sqlite_target):
    manifest = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    (backup_folder(sqlite_target) / manifest.artifact).unlink()
    with pytest.raises(BackupFailed, match=manifest.id):
        verify_backup(sqlite_target, manifest, now=T0)
    on_disk = stored_manifest(sqlite_target, manifest.id)
    assert on_disk.verified is False
    assert on_disk.verify_error


def test_verify_refuses_a_backup_of_another_engine(sqlite_target):
    manifest = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    manifest.engine = "postgresql"
    with pytest.raises(ConfigError, match="postgresql"):
        verify_backup(sqlite_target, manifest, now=T0)


# -- list_backups / find_backup ----------------------------------------------------------------
def test_list_backups_newest_first(sqlite_target):
    # Two of them in one second: the one taken a few milliseconds later still lists first.
    times = [T0 + timedelta(days=1), T0, T0 + timedelta(days=2), T0 + timedelta(seconds=1),
             T0 + timedelta(seconds=1, milliseconds=4)]
    taken = {take_backup(sqlite_target, reason="manual", revision=FIRST, now=t).id: t
             for t in times}
    listed = list_backups(sqlite_target)
    assert [m.id for m in listed] == sorted(taken, key=taken.get, reverse=True)
    assert [m.created for m in listed] == sorted(times, reverse=True)


def test_list_backups_empty_store(tmp_path):
    assert list_backups(dev_target(tmp_path)) == []


def test_list_backups_skips_unreadable_manifests(sqlite_target):
    good = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    folder = backup_folder(sqlite_target)
    (folder / ("20990101T000000Z-aaaaaa" + MANIFEST_SUFFIX)).write_text("{not json")
    (folder / ("20990101T000000Z-bbbbbb" + MANIFEST_SUFFIX)).write_text('{"id": "x"}')
    (folder / ("20990101T000000Z-cccccc" + MANIFEST_SUFFIX)).write_bytes(b"\xff\xfe\x00")
    (folder / ("20990101T000000Z-dddddd" + MANIFEST_SUFFIX)).write_text("")
    assert [m.id for m in list_backups(sqlite_target)] == [good.id]


@pytest.mark.parametrize("text", ["[]", "null", "42", '"a string"'])
def test_list_backups_skips_json_that_is_not_an_object(sqlite_target, text):
    good = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    folder = backup_folder(sqlite_target)
    (folder / ("20990101T000000Z-eeeeee" + MANIFEST_SUFFIX)).write_text(text)
    assert [m.id for m in list_backups(sqlite_target)] == [good.id]



def test_list_backups_survives_a_manifest_with_a_broken_created_at(sqlite_target):
    good = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    bad = json.loads(good.to_json())
    bad["id"], bad["created_at"] = "20990101T000000Z-abcabc", None
    folder = backup_folder(sqlite_target)
    (folder / (bad["id"] + MANIFEST_SUFFIX)).write_text(json.dumps(bad))
    bad["id"], bad["created_at"] = "20990101T000000Z-defdef", "yesterday"
    (folder / (bad["id"] + MANIFEST_SUFFIX)).write_text(json.dumps(bad))
    bad["id"], bad["created_at"] = "20990101T000000Z-fedfed", "2099-01-01T00:00:00"  # no zone
    (folder / (bad["id"] + MANIFEST_SUFFIX)).write_text(json.dumps(bad))
    assert [m.id for m in list_backups(sqlite_target)] == [good.id]


def test_list_backups_only_lists_its_own_env(sqlite_target):
    good = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    stray = BackupManifest.from_json(good.to_json())
    stray.id, stray.env = "20990101T000000Z-ffffff", "staging"
    (backup_folder(sqlite_target) / (stray.id + MANIFEST_SUFFIX)).write_text(stray.to_json())
    assert [m.id for m in list_backups(sqlite_target)] == [good.id]


def test_find_backup(sqlite_target):
    a = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    b = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0 + timedelta(seconds=1))
    c = take_backup(sqlite_target, reason="manual", revision=HEAD, now=T0 + timedelta(days=3))
    assert find_backup(sqlite_target, None).id == c.id
    assert find_backup(sqlite_target, a.id).id == a.id
    assert find_backup(sqlite_target, b.id).id == b.id
    assert find_backup(sqlite_target, c.id[:12]).id == c.id  # 20260305T101 is unique
    assert find_backup(sqlite_target, b.id[:-2]).id == b.id
    with pytest.raises(ConfigError, match="nope"):
        find_backup(sqlite_target, "nope")
    with pytest.raises(ConfigError, match="ambiguous"):
        find_backup(sqlite_target, "20260302T1015")  # a and b


def test_find_backup_exact_id_wins_over_prefix(sqlite_target):
    a = take_backup(sqlite_target, reason="manual", revision=FIRST, now=T0)
    longer = BackupManifest.from_json(a.to_json())
    longer.id = a.id + "x"
    (backup_folder(sqlite_target) / (longer.id + MANIFEST_SUFFIX)).write_text(longer.to_json())
    assert find_backup(sqlite_target, a.id).id == a.id


def test_find_backup_with_no_backups_is_config_error(tmp_path):
    settings = dev_target(tmp_path)
    with pytest.raises(ConfigError, match="no backups"):
        find_backup(settings, None)


# -- PostgreSQL --------------------------------------------------------------------------------
def pg_target(db, root: Path, **extra: str):
    return open_target(pg_settings(db, root, **extra))


def password_forms(password: str) -> list[str]:
    return [password, quote(password, safe=""), quote_plus(password),
            json.dumps(password)[1:-1]]


@pytest.fixture
def pg_settings_with_rows(pg_database, tmp_path):
    pg_database.sql("CREATE TABLE patients (id serial PRIMARY KEY, name text NOT NULL)")
    pg_database.sql("INSERT INTO patients (name) SELECT 'patient-marker-' || g "
                    "FROM generate_series(1, 200) AS g")
    pg_database.sql("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    pg_database.sql(f"INSERT INTO alembic_version VALUES ('{FIRST}')")
    return pg_target(pg_database, tmp_path)


def server_version(target) -> int:
    return target.database.facts().server_version_num


@pytest.mark.postgres
def test_take_backup_postgres(pg_database, pg_settings_with_rows):
    settings = pg_settings_with_rows
    assert settings.database.url.password == pg_database.url.password
    version = server_version(settings)
    manifest = take_backup(settings, reason="manual", revision=FIRST, now=T0)
    artifact = backup_folder(settings) / manifest.artifact
    assert manifest.engine == "postgresql"
    assert manifest.env == "pgtest"
    assert manifest.artifact.endswith(".pgdump.zst")
    assert manifest.revision == FIRST
    assert manifest.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert manifest.size == artifact.stat().st_size
    # check_tools ran: the server and tool versions are recorded.
    assert manifest.versions["server"].split(".")[0] == str(version // 10000)
    assert manifest.versions["pg_dump"]
    assert manifest.versions["pg_restore"]
    raw = decompress(artifact.read_bytes())
    assert manifest.raw_size == len(raw)
    assert raw.startswith(b"PGDMP")
    assert b"patient-marker-200" in raw  # -Z0: the table data is in the archive as is
    assert verify_backup(settings, manifest, now=T0).verified is True


@pytest.mark.postgres
def test_postgres_manifest_never_holds_the_password(pg_database, pg_settings_with_rows):
    settings = pg_settings_with_rows
    password = pg_database.url.password
    manifest = take_backup(settings, reason="manual", revision=FIRST, now=T0)
    assert pg_database.url.username in manifest.database
    assert pg_database.name in manifest.database
    text = (backup_folder(settings) / (manifest.id + MANIFEST_SUFFIX)).read_text()
    for form in password_forms(password):
        assert form not in manifest.database
        assert form not in text
        assert form not in manifest.to_json()
    assert json.loads(text)["database"] == manifest.database


@pytest.mark.postgres
def test_postgres_archive_truncated_inside_is_refused_by_read_back(pg_database,
                                                                   pg_settings_with_rows):
    """A consistent checksum and zstd frame around a cut archive: pg_restore must notice."""
    settings = pg_settings_with_rows
    manifest = take_backup(settings, reason="manual", revision=FIRST, now=T0)
    artifact = backup_folder(settings) / manifest.artifact
    raw = decompress(artifact.read_bytes())
    cut = raw[: len(raw) * 2 // 3]
    artifact.write_bytes(recompress(cut))
    manifest.sha256 = hashlib.sha256(artifact.read_bytes()).hexdigest()
    manifest.size, manifest.raw_size = artifact.stat().st_size, len(cut)
    with pytest.raises(BackupFailed):
        verify_backup(settings, manifest, now=T0)
    assert stored_manifest(settings, manifest.id).verified is False


@pytest.mark.postgres
def test_postgres_corrupt_artifact_fails(pg_settings_with_rows):
    settings = pg_settings_with_rows
    manifest = take_backup(settings, reason="manual", revision=FIRST, now=T0)
    flip_middle_bit(backup_folder(settings) / manifest.artifact)
    with pytest.raises(BackupFailed):
        verify_backup(settings, manifest, now=T0)
    assert stored_manifest(settings, manifest.id).verified is False


@pytest.mark.postgres
def test_pg_dump_older_than_server_is_refused_before_anything_runs(pg_database, tmp_path):
    pg_bin = wrapped_pg_dump(tmp_path, "exit 1", version="9.6")
    target = pg_target(pg_database, tmp_path, PG_BIN_DIR=str(pg_bin))
    with pytest.raises(ConfigError, match=r"pg_dump 9\.6 cannot dump a PostgreSQL \d+ server"):
        take_backup(target, reason="manual", revision=None, now=T0)
    assert dump_calls(tmp_path) == []  # refused before pg_dump ran
    folder = backup_folder(target)
    assert not folder.exists() or os.listdir(folder) == []


@pytest.mark.postgres
def test_missing_pg_bin_dir_tools_is_config_error(pg_database, tmp_path):
    target = pg_target(pg_database, tmp_path, PG_BIN_DIR=str(tmp_path / "no-such-bin"))
    with pytest.raises(ConfigError, match="PG_BIN_DIR"):
        take_backup(target, reason="manual", revision=None, now=T0)
    assert list_backups(target) == []


# -- a local disk that keeps other bytes than it was sent -------------------------------------
class FlippingLocalStorage(LocalStorage):
    """A local store on a disk that silently damages what it is given: one bit of every
    artifact flips on its way in. The SQLite dump runs inside the process, from start to end in
    one call, so no outside fault can be timed to land while it writes (the PostgreSQL and S3
    cases are end to end, in test_faults_e2e.py and test_s3_e2e.py); this store stands in for
    the disk instead. Manifests are left whole: they are written after the read-back."""

    flipped = False

    @contextlib.contextmanager
    def writer(self, name: str, expected_size: int | None = None):
        with super().writer(name, expected_size) as out:
            if name.endswith(MANIFEST_SUFFIX):
                yield out
            else:
                self.flipped = True
                yield _FlipOnce(out)


class _FlipOnce:
    def __init__(self, out):
        self.out, self.flipped = out, False

    def write(self, data) -> int:
        data = bytes(data)
        if not self.flipped and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]
            self.flipped = True
        self.out.write(data)
        return len(data)


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "age"])
def test_an_sqlite_backup_damaged_on_disk_while_written_is_refused(tmp_path, sealed):
    environ = {}
    if sealed:
        identity = x25519.Identity.generate()
        key = tmp_path / "ops.key"
        with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(f"{identity}\n")
        environ = {"BACKUP_ENCRYPTION_RECIPIENTS": str(identity.to_public()),
                   "BACKUP_ENCRYPTION_IDENTITY_FILE": str(key)}
    plain = load_settings("dev", environ=environ, root=tmp_path)
    store = FlippingLocalStorage(plain.backup_dir / plain.env)
    settings = Target(plain, open_database(plain), store)
    make_sqlite(settings.database.path, rows=2000)
    with pytest.raises(BackupFailed, match="SHA-256"):
        take_backup(settings, reason="manual", revision=FIRST, now=T0)
    assert store.flipped, "the flipping store was not used"
    assert list_backups(settings) == []
    folder = backup_folder(settings)
    assert not folder.exists() or os.listdir(folder) == []  # no artifact, no partial
