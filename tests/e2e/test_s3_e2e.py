"""End to end with the backups in S3: `invoke` runs as a subprocess in a fresh copy of the
project, exactly as a user runs it, with `BACKUP_STORAGE=s3` and the standard AWS variables
pointing at a real S3 endpoint over HTTP (moto in server mode, a thread of this process). The
tests create their buckets with boto3 and check the state every run leaves behind: the objects
in the bucket and their server-side encryption, the database's revision and tables, and what
`invoke backups --json` lists.

One test puts a small TCP proxy between invoke and moto that cuts every connection once it has
carried more than a few MiB of request: a multipart upload whose parts never arrive.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import zlib
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from conftest import S3_PREFIX, Bucket, bucket_and_project, s3_client
from helpers import (AGE_MAGIC, FIRST, HEAD, backup_id_of, dev_db, failed, listed, ok, pg_env,
                     sealed, shown, sqlite_state, without_audit)
from tcp_proxy import Connection, ForwardingProxy, reset

pytestmark = pytest.mark.usefixtures("no_ambient_aws")
MiB = 1 << 20


class CuttingProxy(ForwardingProxy):
    """A proxy in front of the S3 endpoint that cuts a connection (a reset on both of its
    sockets) as soon as more than `limit` bytes of request have come through it: small requests
    pass, a request carrying a large body never arrives whole."""

    def __init__(self, target_port: int, limit: int):
        self.limit = limit
        self.cuts = 0
        super().__init__(target_port)

    def from_client(self, conn: Connection, data: bytes) -> bytes | None:
        self.request_lines(conn, data)
        conn.sent += len(data)
        if conn.sent > self.limit:
            with self.lock:
                self.cuts += 1
            reset(conn.client, conn.upstream)
            return None
        return data


# -- helpers ---------------------------------------------------------------------------------


def output(result) -> str:
    return result.stdout + result.stderr


def assert_newest_first(items: list[dict]) -> None:
    stamps = [datetime.fromisoformat(i["created_at"].replace("Z", "+00:00")) for i in items]
    assert stamps == sorted(stamps, reverse=True), [i["created_at"] for i in items]


def iso_z(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# == 1. SQLite, the embedded default ==========================================================
def release_cycle(project, bucket: Bucket) -> SimpleNamespace:
    """migrate from nothing, rollback, migrate again, then status, verify and audit, all with
    the backups in `bucket`. What each step left is read here."""
    env = bucket.env()
    run = SimpleNamespace(first=ok(project.run("migrate", env=env)))
    run.after_first = SimpleNamespace(state=sqlite_state(dev_db(project)),
                                      listed=listed(project, bucket), names=bucket.folder("dev"))

    run.back = ok(project.run("rollback", env=env))
    run.after_back = SimpleNamespace(state=sqlite_state(dev_db(project)),
                                     listed=listed(project, bucket), names=bucket.folder("dev"),
                                     local=project.backup_files("dev"))
    run.heads = {n: bucket.head(bucket.key("dev", n)) for n in run.after_back.names}

    ok(project.run("migrate", env=env))
    run.state, run.items = sqlite_state(dev_db(project)), listed(project, bucket)
    run.status = json.loads(ok(project.run("status", "--json", env=env)).stdout)
    run.verified = ok(project.run("verify", env=env))
    run.verified_older = ok(project.run("verify", f"--backup={run.after_back.listed[0]['id']}",
                                        env=env))
    run.manifest_heads = [bucket.head(bucket.key("dev", f"{i['id']}.manifest.json"))
                          for i in run.items]
    run.audit = json.loads(ok(project.run("audit", "--json", env=env)).stdout)
    return run


@pytest.fixture(scope="class")
def cycle(e2e_moto, tmp_path_factory):
    with bucket_and_project(e2e_moto, tmp_path_factory.mktemp("cycle")) as (bucket, project):
        yield bucket, release_cycle(project, bucket)


class TestSqliteReleaseCycleKeepsEveryBackupInS3:
    def test_the_first_migrate_has_nothing_to_back_up(self, cycle):
        bucket, run = cycle
        assert "nothing to back up" in output(run.first), shown(run.first)
        assert run.after_first.state["revision"] == HEAD
        assert run.after_first.listed == []
        assert without_audit(run.after_first.names) == set()

    def test_the_rollbacks_backup_is_listed_at_its_s3_location(self, cycle):
        bucket, run = cycle
        assert run.after_back.state["revision"] == FIRST
        [taken] = run.after_back.listed
        assert taken["revision"] == HEAD and taken["env"] == "dev" and taken["verified"] is True
        location = f"s3://{bucket.name}/{S3_PREFIX}/dev/{taken['id']}"
        assert taken["location"].startswith(location), taken
        assert taken["location"] in run.back.stdout, shown(run.back)
        artifact = taken["location"][len(f"s3://{bucket.name}/"):]
        assert without_audit(run.after_back.names) == {artifact.rsplit("/", 1)[1],
                                                       f"{taken['id']}.manifest.json"}
        audits = [n for n in run.after_back.names if n.endswith(".audit.json")]
        assert len(audits) == 2, run.after_back.names  # the first migrate and the rollback
        assert bucket.head(artifact)["ContentLength"] == taken["size"]

    def test_every_object_in_the_bucket_is_encrypted_at_rest(self, cycle):
        _, run = cycle
        assert len(run.heads) == 4, run.heads  # artifact, manifest, two audit records
        for name, head in run.heads.items():
            assert head["ServerSideEncryption"] == "AES256", name

    def test_nothing_goes_to_local_disk(self, cycle):
        bucket, run = cycle
        # The rollback did write a backup, whole, and to the bucket...
        [taken] = run.after_back.listed
        artifact = taken["location"][len(f"s3://{bucket.name}/"):]
        assert taken["size"] > 0 and bucket.head(artifact)["ContentLength"] == taken["size"]
        # ...and none of it to the local store.
        assert run.after_back.local == set()

    def test_the_next_migrate_lists_both_backups_newest_first(self, cycle):
        bucket, run = cycle
        assert run.state["revision"] == HEAD
        assert [i["revision"] for i in run.items] == [FIRST, HEAD]
        assert run.items[1]["id"] == run.after_back.listed[0]["id"]
        assert_newest_first(run.items)
        for item in run.items:
            assert item["location"].startswith(f"s3://{bucket.name}/{S3_PREFIX}/dev/{item['id']}")

    def test_status_names_the_last_backup_in_s3(self, cycle):
        bucket, run = cycle
        info = run.status
        assert info["current"] == HEAD and info["pending"] == []
        assert info["last_backup"]["id"] == run.items[0]["id"]
        assert info["last_backup"]["location"] == run.items[0]["location"]
        assert info["last_backup"]["location"].startswith(f"s3://{bucket.name}/")

    def test_verify_rewrites_the_manifests_it_records_in_and_they_keep_their_encryption(
            self, cycle):
        _, run = cycle
        assert run.items[0]["id"] in run.verified.stdout, shown(run.verified)
        for head in run.manifest_heads:
            assert head["ServerSideEncryption"] == "AES256"

    def test_the_audit_trail_in_s3_has_every_run_and_its_backup(self, cycle):
        _, run = cycle
        assert [e["action"] for e in run.audit] == ["migrate", "rollback", "migrate"]
        assert run.audit[0]["backup_id"] == run.items[0]["id"]
        assert run.audit[1]["backup_id"] == run.after_back.listed[0]["id"]


def test_the_report_gives_the_encryption_s3_reported_when_storing_not_todays_setting(
        project, bucket):
    """An auditor's evidence: each manifest records the server-side encryption S3 said it
    applied to the artifact (the upload's response), so a backup stored before BACKUP_S3_SSE
    was set is not called encrypted because it is set now. A manifest from before that record
    falls back to the setting, the only evidence it has."""
    plain, sealed = bucket.env(BACKUP_S3_SSE=""), bucket.env()
    ok(project.run("migrate", env=plain))
    before = backup_id_of(ok(project.run("backup", env=plain)))
    after = backup_id_of(ok(project.run("backup", env=sealed)))

    manifests = {i: bucket.manifest("dev", i) for i in (before, after)}
    assert {i: m["sse"] for i, m in manifests.items()} == {before: "none", after: "AES256"}
    heads = {i: bucket.head(bucket.key("dev", m["artifact"])) for i, m in manifests.items()}
    assert "ServerSideEncryption" not in heads[before]  # what S3 itself says of the objects
    assert heads[after]["ServerSideEncryption"] == "AES256"
    assert {i["id"]: i["sse"] for i in listed(project, bucket)} == {before: "none",
                                                                     after: "AES256"}

    def reported() -> dict:
        report = json.loads(ok(project.run("report", "--json", env=sealed)).stdout)
        return {b["id"]: b["encryption"] for b in report["backups"]}

    assert reported() == {before: "none", after: "sse"}
    old = dict(manifests[before])
    del old["sse"]  # as a manifest written before the field was
    bucket.put_manifest("dev", old)
    assert reported() == {before: "sse", after: "sse"}


# == 2. PostgreSQL ============================================================================
@pytest.mark.postgres
def test_postgres_round_trip_restore_and_restore_test_from_s3(project, pgdb, bucket):
    db = pgdb
    env = pg_env(db, **bucket.env())
    people = [("ada@example.org", "+44 20 1234"), ("grace@example.org", "+1 555 0100"),
              ("alan@example.org", None)]

    ok(project.run("migrate", env=env))
    assert db.revision() == HEAD
    for email, phone in people:
        db.sql("INSERT INTO users (email, full_name, hashed_password, phone_number) "
               "VALUES (:e, :n, 'x', :p)", e=email, n=email.split("@")[0].title(), p=phone)

    ok(project.run("rollback", env=env))
    assert db.revision() == FIRST and "phone_number" not in db.columns("users")
    ok(project.run("migrate", env=env))
    assert db.revision() == HEAD
    # The phone numbers went with the column: only the rollback's backup still holds them.
    assert {r[0] for r in db.sql("SELECT phone_number FROM users")} == {None}

    items = listed(project, bucket, "pgtest", **pg_env(db))
    assert [i["revision"] for i in items] == [FIRST, HEAD, None]
    assert_newest_first(items)
    before_rollback = items[1]
    for item in items:
        assert item["engine"] == "postgresql"
        assert item["location"].startswith(f"s3://{bucket.name}/{S3_PREFIX}/pgtest/{item['id']}")
        artifact = item["location"][len(f"s3://{bucket.name}/"):]
        assert bucket.head(artifact)["ServerSideEncryption"] == "AES256"
        assert bucket.head(artifact)["ContentLength"] == item["size"]
        manifest = bucket.manifest("pgtest", item["id"])
        assert db.url.password not in json.dumps(manifest)

    restored = ok(project.run("restore", "--yes", f"--backup={before_rollback['id']}", env=env))
    assert before_rollback["id"] in restored.stdout, shown(restored)
    assert db.revision() == HEAD
    assert sorted(db.sql("SELECT email, phone_number FROM users")) == sorted(people)
    after = listed(project, bucket, "pgtest", **pg_env(db))
    assert len(after) == 4, after  # the safety backup of what was there, also in S3
    assert after[0]["location"].startswith(f"s3://{bucket.name}/{S3_PREFIX}/pgtest/")
    assert_newest_first(after)

    drill = ok(project.run("verify", "--restore-test", f"--backup={before_rollback['id']}",
                           env=env))
    # 3 users and the alembic_version row, as recorded when the backup was taken
    assert "passed" in drill.stdout and "2 tables, 4 rows" in drill.stdout, shown(drill)
    assert sorted(db.sql("SELECT email, phone_number FROM users")) == sorted(people)


# == 3. An upload cut off halfway =============================================================
@pytest.mark.postgres
def test_an_upload_cut_off_midway_migrates_nothing_and_leaves_no_parts(project, pgdb, bucket,
                                                                       e2e_moto):
    db = pgdb
    # Set up at FIRST straight through moto.
    ok(project.run("migrate", f"--revision={FIRST}", env=pg_env(db, **bucket.env())))
    assert db.revision() == FIRST
    # ~24 MiB of random bytes: more than one 16 MiB part even after zstd.
    db.sql("CREATE TABLE scans (id serial PRIMARY KEY, image bytea NOT NULL)")
    for _ in range(24):
        db.sql("INSERT INTO scans (image) VALUES (:b)", b=os.urandom(MiB))
    before = listed(project, bucket, "pgtest", **pg_env(db))
    assert len(before) == 1
    stored = without_audit(bucket.folder("pgtest"))

    proxy = CuttingProxy(e2e_moto, limit=3 * MiB)
    try:
        result = project.run("migrate", env=pg_env(db, **bucket.env(endpoint=proxy.endpoint)))
    finally:
        proxy.close()
    error = failed(result, 4, f"s3://{bucket.name}/{S3_PREFIX}/pgtest/")
    # The dump went into a multipart upload whose first part was cut off (and retried, and
    # cut again) until the upload was given up and aborted.
    seen = proxy.requests
    assert proxy.cuts >= 1, (seen, shown(result))
    assert any(m == "POST" and t.endswith("?uploads") for m, t in seen), seen
    assert any(m == "PUT" and "partNumber=1" in t for m, t in seen), seen
    assert not any(m == "POST" and "uploadId=" in t for m, t in seen), seen  # never completed
    assert any(m == "DELETE" and "uploadId=" in t for m, t in seen), seen  # aborted
    assert "Migrate done" not in result.stdout, shown(result)

    assert db.revision() == FIRST
    assert "phone_number" not in db.columns("users")
    assert db.sql("SELECT count(*) FROM scans")[0][0] == 24
    after = listed(project, bucket, "pgtest", **pg_env(db))
    assert [i["id"] for i in after] == [i["id"] for i in before], error
    assert without_audit(bucket.folder("pgtest")) == stored
    assert bucket.uploads() == []  # the multipart upload was aborted: no orphaned parts
    audit = json.loads(ok(project.run("audit", "--json", env=pg_env(db, **bucket.env()))).stdout)
    assert audit[0]["action"] == "migrate" and audit[0]["outcome"] == "backup failed", audit[0]

    # Once the part has failed through botocore's retries, the backup has failed: the part is
    # not sent again (and retried again) while the failure unwinds. One round of retries is
    # what one upload_part call through the same proxy with the store's retry settings makes.
    part_attempts = [t for m, t in seen if m == "PUT" and "partNumber=" in t]
    one_round = attempts_of_one_upload_part(bucket, e2e_moto)
    assert len(part_attempts) <= one_round, (
        f"{len(part_attempts)} attempts to upload part 1, one round of retries is {one_round}")


def attempts_of_one_upload_part(bucket: Bucket, moto_port: int) -> int:
    """How many times one upload_part call, with the S3 store's retry settings, sends a part
    that the cutting proxy cuts every time."""
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    from app.ops.storage.s3 import S3Storage

    defaults = S3Storage.__init__.__kwdefaults__
    config = Config(retries={"mode": "standard", "max_attempts": defaults["max_attempts"]},
                    connect_timeout=defaults["connect_timeout"],
                    read_timeout=defaults["read_timeout"])
    upload = bucket.client.create_multipart_upload(Bucket=bucket.name, Key="probe")
    proxy = CuttingProxy(moto_port, limit=3 * MiB)
    try:
        client = s3_client(proxy.endpoint, config=config)
        with pytest.raises(BotoCoreError):
            client.upload_part(Bucket=bucket.name, Key="probe", UploadId=upload["UploadId"],
                               PartNumber=1, Body=b"\0" * (8 * MiB), ChecksumAlgorithm="CRC32")
    finally:
        proxy.close()
        bucket.client.abort_multipart_upload(Bucket=bucket.name, Key="probe",
                                             UploadId=upload["UploadId"])
    return sum(1 for m, t in proxy.requests if m == "PUT" and "partNumber=" in t)


# == 4. A bucket that does not exist ==========================================================
def test_a_missing_bucket_is_bad_configuration_naming_the_bucket(project, bucket):
    ok(project.run("migrate", f"--revision={FIRST}"))  # local backups: nothing there yet
    assert sqlite_state(dev_db(project))["revision"] == FIRST
    missing = f"mida-missing-{secrets.token_hex(4)}"
    env = bucket.env(BACKUP_S3_BUCKET=missing)

    failed(project.run("backup", env=env), 2, f"'{missing}'", "does not exist")
    failed(project.run("backups", env=env), 2, f"'{missing}'")
    failed(project.run("backups", "--json", env=env), 2, f"'{missing}'")
    failed(project.run("migrate", env=env), 2, f"'{missing}'")
    assert sqlite_state(dev_db(project))["revision"] == FIRST
    assert missing not in {b["Name"] for b in bucket.client.list_buckets()["Buckets"]}


# == 5. Client-side encryption on S3 ==========================================================
def test_an_encrypted_backup_in_s3_verifies_only_with_its_key(project, bucket, keys):
    ops, stranger = keys("ops"), keys("stranger")
    env = bucket.env(**sealed(ops, identity=ops))
    ok(project.run("migrate", env=env))

    backup_id = backup_id_of(ok(project.run("backup", "--label", "sealed", env=env)))
    [item] = listed(project, bucket)
    assert item["id"] == backup_id and item["label"] == "sealed"
    artifact = item["location"][len(f"s3://{bucket.name}/"):]
    assert artifact.startswith(f"{S3_PREFIX}/dev/{backup_id}") and artifact.endswith(".age")
    data = bucket.body(artifact)
    assert data.startswith(AGE_MAGIC)
    assert b"SQLite format 3" not in data
    assert bucket.head(artifact)["ServerSideEncryption"] == "AES256"
    assert bucket.manifest("dev", backup_id)["encryption"] == "age"

    ok(project.run("verify", f"--backup={backup_id}", env=env))
    wrong = bucket.env(**sealed(ops, identity=stranger))
    failed(project.run("verify", f"--backup={backup_id}", env=wrong), 2, backup_id,
           "cannot be decrypted")
    # A wrong key says nothing about the backup: it stays verified, and untouched.
    assert bucket.manifest("dev", backup_id)["verified"] is True
    assert bucket.body(artifact) == data
    ok(project.run("verify", f"--backup={backup_id}", env=env))


# == 6. Retention on S3 =======================================================================
def test_prune_on_s3_by_count_and_by_age(project, bucket):
    env = bucket.env()
    ok(project.run("migrate", env=env))
    ids = [backup_id_of(ok(project.run("backup", "--label", f"b{n}", env=env)))
           for n in range(4)]
    # Distinct, ordered times an hour apart, whatever second each run fell in.
    now = datetime.now(timezone.utc)
    for age, backup_id in zip((4, 3, 2, 1), ids):
        manifest = bucket.manifest("dev", backup_id)
        manifest["created_at"] = iso_z(now - timedelta(hours=age))
        bucket.put_manifest("dev", manifest)
    assert [i["id"] for i in listed(project, bucket)] == ids[::-1]
    artifacts = {i["id"]: i["location"].rsplit("/", 1)[1] for i in listed(project, bucket)}

    everything = bucket.objects()
    dry = ok(project.run("prune", "--dry-run", env=bucket.env(BACKUP_KEEP_LAST="2")))
    assert ids[0] in dry.stdout and ids[1] in dry.stdout, shown(dry)
    assert bucket.objects() == everything

    ok(project.run("prune", env=bucket.env(BACKUP_KEEP_LAST="2")))
    names = bucket.folder("dev")
    for gone in ids[:2]:
        assert f"{gone}.manifest.json" not in names and artifacts[gone] not in names, names
    for kept in ids[2:]:
        assert f"{kept}.manifest.json" in names and artifacts[kept] in names, names
    assert [i["id"] for i in listed(project, bucket)] == ids[:1:-1]

    # By age: two more backups, then the two older ones made 40 days old.
    ids += [backup_id_of(ok(project.run("backup", env=env))) for _ in range(2)]
    for offset, backup_id in enumerate(ids[2:4]):
        manifest = bucket.manifest("dev", backup_id)
        manifest["created_at"] = iso_z(now - timedelta(days=40, hours=2 - offset))
        bucket.put_manifest("dev", manifest)
        key = bucket.key("dev", f"{backup_id}.manifest.json")
        assert bucket.head(key)["ServerSideEncryption"] == "AES256"
    ok(project.run("prune", env=bucket.env(BACKUP_KEEP_DAYS="30")))
    assert [i["id"] for i in listed(project, bucket)] == [ids[5], ids[4]]
    names = bucket.folder("dev")
    assert not any(n.startswith((ids[2], ids[3])) for n in names), names

    # Everything old: the newest verified backup still stays.
    for offset, backup_id in enumerate(ids[4:]):
        manifest = bucket.manifest("dev", backup_id)
        manifest["created_at"] = iso_z(now - timedelta(days=40, hours=1 - offset))
        bucket.put_manifest("dev", manifest)
    ok(project.run("prune", env=bucket.env(BACKUP_KEEP_DAYS="30")))
    [last] = listed(project, bucket)
    assert last["id"] == ids[5]
    names = bucket.folder("dev")
    assert without_audit(names) == {f"{ids[5]}.manifest.json", last["location"].rsplit("/", 1)[1]}
    ok(project.run("verify", env=env))


# == 7. A prefix that other keys share ========================================================
def test_listing_sees_only_the_environments_own_backups(project, bucket):
    env = bucket.env()
    ok(project.run("migrate", env=env))
    real = [backup_id_of(ok(project.run("backup", env=env))) for _ in range(2)]
    template = bucket.manifest("dev", real[0])
    strays = {f"{S3_PREFIX}-old/dev/x.manifest.json": "20200101T000000Z-aaaaaa",
              f"{S3_PREFIX}/dev/nested/y.manifest.json": "20200101T000000Z-bbbbbb",
              f"{S3_PREFIX}/devx/z.manifest.json": "20200101T000000Z-cccccc",
              f"{S3_PREFIX}/dev-old/w.manifest.json": "20200101T000000Z-dddddd",
              f"{S3_PREFIX}/dev.manifest.json": "20200101T000000Z-eeeeee"}
    for key, stray_id in strays.items():
        # Each is a well-formed manifest of env dev: only where it lives keeps it out.
        body = json.dumps({**template, "id": stray_id}).encode()
        bucket.client.put_object(Bucket=bucket.name, Key=key, Body=body)

    items = listed(project, bucket)
    assert sorted(i["id"] for i in items) == sorted(real), items
    assert_newest_first(items)
    for item in items:
        assert item["location"].startswith(f"s3://{bucket.name}/{S3_PREFIX}/dev/{item['id']}")
    info = json.loads(ok(project.run("status", "--json", env=env)).stdout)
    assert info["last_backup"]["id"] in real


# == 8. A store that keeps other bytes than it was sent =======================================
def crc32_blind_damage(length: int, at: int) -> dict[int, int]:
    """XOR masks {offset: mask} that damage a `length`-byte message at `at` (one bit there,
    and the four bytes after it) so that its CRC-32 stays what it was, whatever the message:
    damage that S3's own CRC32 check, and botocore's check of it on every read, cannot see."""
    zero = zlib.crc32(bytes(length))

    def effect(masks: dict[int, int]) -> int:
        # CRC-32 is affine: crc(m ^ d) == crc(m) ^ crc(d) ^ crc(zeros) for equal lengths.
        damage = bytearray(length)
        for offset, mask in masks.items():
            damage[offset] ^= mask
        return zlib.crc32(bytes(damage)) ^ zero

    bits = [(effect({at + 1 + k // 8: 1 << k % 8}), 1 << k) for k in range(32)]
    # Gaussian elimination over GF(2): which of the 32 bits after `at` cancel its flip.
    basis: list[tuple[int, int]] = []
    for vector, chosen in bits:
        for b_vector, b_chosen in basis:
            if vector ^ b_vector < vector:
                vector, chosen = vector ^ b_vector, chosen ^ b_chosen
        if vector:
            basis.append((vector, chosen))
            basis.sort(reverse=True)
    target, chosen = effect({at: 0x01}), 0
    for b_vector, b_chosen in basis:
        if target ^ b_vector < target:
            target, chosen = target ^ b_vector, chosen ^ b_chosen
    assert target == 0
    masks = {at: 0x01}
    for k in range(32):
        if chosen >> k & 1:
            masks[at + 1 + k // 8] = masks.get(at + 1 + k // 8, 0) | 1 << k % 8
    return masks


def test_crc32_blind_damage_changes_the_bytes_and_keeps_the_crc():
    for length, at in ((64, 0), (4096, 2048), (100_000, 99_990)):
        message = bytearray(os.urandom(length))
        crc = zlib.crc32(message)
        damaged = bytearray(message)
        for offset, mask in crc32_blind_damage(length, at).items():
            damaged[offset] ^= mask
        assert damaged != message and zlib.crc32(damaged) == crc


class DamagingProxy(ForwardingProxy):
    """A proxy in front of the S3 endpoint that reads the requests going through each
    connection (HTTP/1.1, one after another) and damages the body of each PUT whose key ends
    with `suffix`, in a way its CRC-32 does not show: S3 acknowledges, and then serves, other
    bytes than the client sent, and every checksum S3 and botocore compare still matches.
    (moto checks no SigV4 payload hash.) Responses pass unchanged."""

    def __init__(self, target_port: int, suffix: str):
        self.suffix = suffix.encode()
        self.damaged: list[str] = []
        super().__init__(target_port)

    def new_connection(self, client: socket.socket, upstream: socket.socket) -> Connection:
        conn = super().new_connection(client, upstream)
        conn.bodies = _RequestBodies(self)
        return conn

    def from_client(self, conn: Connection, data: bytes) -> bytes:
        return conn.bodies.feed(data)


class _RequestBodies:
    """Follows one connection's request stream: a head up to the blank line, then
    Content-Length bytes of body; damages the bodies the proxy picks."""

    def __init__(self, proxy: DamagingProxy):
        self.proxy = proxy
        self.head = b""
        self.left = 0                       # body bytes still to come
        self.offset = 0                     # body bytes seen so far
        self.masks: dict[int, int] = {}     # damage for the body under way

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            if self.left == 0:
                end = (self.head + data).find(b"\r\n\r\n")
                if end < 0:
                    self.head += data
                    out += data
                    break
                taken = end + 4 - len(self.head)
                out += data[:taken]
                head, self.head, data = self.head + data[:taken], b"", data[taken:]
                self._start(head)
                continue
            body = bytearray(data[:self.left])
            for offset, mask in self.masks.items():
                if self.offset <= offset < self.offset + len(body):
                    body[offset - self.offset] ^= mask
            out += body
            self.offset += len(body)
            self.left -= len(body)
            data = data[len(body):]
        return bytes(out)

    def _start(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        method, target = lines[0].split(b" ")[:2]
        length = next((int(line.split(b":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith(b"content-length:")), 0)
        self.left, self.offset, self.masks = length, 0, {}
        if method == b"PUT" and target.split(b"?")[0].endswith(self.proxy.suffix) and length > 8:
            self.masks = crc32_blind_damage(length, length // 2)
            with self.proxy.lock:
                self.proxy.damaged.append(target.decode())


def test_a_backup_that_s3_stores_damaged_is_refused_and_nothing_is_migrated(project, bucket,
                                                                            e2e_moto):
    env = bucket.env()
    ok(project.run("migrate", env=env))
    ok(project.run("rollback", env=env))  # at FIRST, with one backup in the bucket
    assert sqlite_state(dev_db(project))["revision"] == FIRST
    before = listed(project, bucket)
    assert len(before) == 1
    stored = without_audit(bucket.folder("dev"))

    proxy = DamagingProxy(e2e_moto, suffix=".sqlite3.zst")
    try:
        result = project.run("migrate", env=bucket.env(endpoint=proxy.endpoint))
    finally:
        proxy.close()
    error = failed(result, 4, "SHA-256")
    [damaged] = proxy.damaged  # the new backup's artifact, in one put
    assert damaged.startswith(f"/{bucket.name}/{S3_PREFIX}/dev/"), damaged

    assert sqlite_state(dev_db(project))["revision"] == FIRST
    assert [i["id"] for i in listed(project, bucket)] == [i["id"] for i in before], error
    assert without_audit(bucket.folder("dev")) == stored  # the damaged object was deleted
    assert bucket.uploads() == []
