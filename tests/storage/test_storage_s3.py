"""The S3 store against a real S3 endpoint over HTTP: moto in server mode, no in-process mocks.

One moto server (a thread) serves most tests; a second one, a subprocess with IAM
authentication switched on, answers wrong credentials and denied access the way AWS does.
Every setting reaches the code through Settings values, as the .env files would give them.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from app.ops.errors import BackupFailed, ConfigError
from app.ops.storage import open_storage
from app.ops.storage.s3 import MAX_PARTS, PART_SIZE, S3Storage, part_size_for
from app.ops.target import open_target
from app.settings import Settings, load_settings
from conftest import s3_client
from helpers import T0, free_port

MiB = 1 << 20
PART = 5 * MiB  # S3's smallest part size: keeps the multipart tests quick

pytestmark = pytest.mark.usefixtures("no_ambient_aws")


@pytest.fixture(scope="session")
def moto_endpoint(e2e_moto):
    """The session's moto server (conftest), as an endpoint URL."""
    return f"http://127.0.0.1:{e2e_moto}"


@pytest.fixture(scope="session")
def auth_moto():
    """A moto server that checks credentials and IAM policies like AWS. Its first three
    requests are let through unauthenticated: they create the bucket and a user without
    permissions, whose key the tests then use."""
    import boto3

    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("the authenticating moto server did not start")
                time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{port}"
        boot = dict(endpoint_url=endpoint, aws_access_key_id="AKIABOOTSTRAP",
                    aws_secret_access_key="x", region_name="us-east-1")
        boto3.client("s3", **boot).create_bucket(Bucket="locked-bucket")
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def aws(moto_endpoint) -> dict:
    """Settings values for the moto server, with a fresh bucket of its own."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_endpoint,
            "BACKUP_S3_BUCKET": f"mida-test-{secrets.token_hex(4)}"}


@pytest.fixture
def s3(aws):
    """A plain boto3 client for the tests' own checks, and the bucket created."""
    client = s3_client(aws["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=aws["BACKUP_S3_BUCKET"])
    return client


def make_store(values: dict, folder: str = "backups/dev", **kwargs) -> S3Storage:
    return S3Storage(values["BACKUP_S3_BUCKET"], folder, Settings(env="dev", values=values),
                     **kwargs)


def chunks(total: int, seed: bytes = b"x"):
    """Deterministic, incompressible-looking data in odd-sized chunks (as zstd writes them)."""
    block, sent, i = 0, 0, 0
    while sent < total:
        size = min(total - sent, 1_000_003 + i * 7919)
        data = hashlib.shake_256(seed + block.to_bytes(8, "big")).digest(size)
        yield data
        sent, block, i = sent + size, block + 1, i + 1


def sha256_of_store(store: S3Storage, name: str) -> str:
    sha = hashlib.sha256()
    with store.reader(name) as source:
        while chunk := source.read(MiB):
            sha.update(chunk)
    return sha.hexdigest()


# -- data ------------------------------------------------------------------------------------
def test_multipart_round_trip_keeps_every_byte(aws, s3):
    store = make_store(aws, part_size=PART)
    total = 40 * MiB + 12345
    expected = hashlib.sha256()
    with store.writer("big.bin") as out:
        for data in chunks(total):
            out.write(data)
            expected.update(data)
    assert sha256_of_store(store, "big.bin") == expected.hexdigest()
    assert store.size("big.bin") == total
    key = "backups/dev/big.bin"
    head = s3.head_object(Bucket=aws["BACKUP_S3_BUCKET"], Key=key)
    assert head["ETag"].strip('"').endswith("-9")  # 8 full parts of 5 MiB and the rest
    first = s3.head_object(Bucket=aws["BACKUP_S3_BUCKET"], Key=key, PartNumber=1)
    assert first["ContentLength"] == PART
    assert store.location("big.bin") == f"s3://{aws['BACKUP_S3_BUCKET']}/{key}"


def test_small_objects_and_missing_ones(aws, s3):
    store = make_store(aws)
    store.put_bytes("a.json", b'{"a": 1}')
    assert store.get_bytes("a.json") == b'{"a": 1}'
    assert store.exists("a.json") and store.size("a.json") == 8
    with store.reader("a.json") as source:
        assert source.read(3) == b'{"a' and source.read() == b'": 1}'
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b"" and store.exists("empty")
    assert not store.exists("nope")
    with pytest.raises(FileNotFoundError):
        store.get_bytes("nope")
    with pytest.raises(FileNotFoundError):
        store.size("nope")
    store.delete("a.json")
    store.delete("a.json")  # deleting what is gone is not an error, as on disk
    assert store.list() == ["empty"]


@pytest.mark.parametrize("total", [PART, 2 * PART])
def test_object_of_exactly_whole_parts(aws, s3, total):
    store = make_store(aws, part_size=PART)
    data = b"".join(chunks(total, seed=b"whole"))
    with store.writer("exact") as out:
        out.write(data)
    assert store.get_bytes("exact") == data


# -- the part size: 10,000 parts must hold the object ----------------------------------------
TB, GiB, TiB = 10**12, 1 << 30, 1 << 40


def test_the_part_size_grows_with_the_size_expected_so_10000_parts_hold_twice_it():
    assert part_size_for(None) == part_size_for(0) == PART_SIZE == 16 * MiB
    assert part_size_for(70 * GiB) == PART_SIZE  # twice it fits in 10,000 x 16 MiB (156 GiB)
    for expected in (TB, 2 * TiB + 1, 1234567890123):
        size = part_size_for(expected)
        assert size * MAX_PARTS >= 2 * expected      # room for twice the estimate
        assert size % MiB == 0 and size < 2 * expected / MAX_PARTS + MiB  # not wasteful
    # A terabyte database, nothing known of its compression: parts of 191 MiB, not 16 MiB,
    # which would have stopped at 156 GiB (part 10,001).
    assert part_size_for(TB) == 191 * MiB


def test_the_part_size_stops_where_s3s_5_tib_object_limit_is_reached():
    biggest = part_size_for(50 * TiB)
    assert biggest == part_size_for(5 * TiB) == 525 * MiB  # 10,000 x 525 MiB >= 5 TiB
    assert biggest * MAX_PARTS >= 5 * TiB and (biggest - MiB) * MAX_PARTS < 5 * TiB
    assert biggest <= 5 * GiB  # S3's largest part
    assert part_size_for(1, floor=PART) == PART  # never under the store's own


def test_the_estimate_uses_the_worst_compression_of_the_last_backups():
    """The free-disk guard and the part size read the same estimate: the database's size times
    the highest ratio of the last five backups, plus half; no history: no compression."""
    from types import SimpleNamespace

    from app.ops.methods.dump.estimate import estimate_backup_size

    def facts(size, *ratios):
        backups = [SimpleNamespace(size=int(r * 1000), database_size=1000) for r in ratios]
        return SimpleNamespace(database=SimpleNamespace(size=size), backups=backups)

    assert estimate_backup_size(facts(TB)) == TB
    assert abs(estimate_backup_size(facts(TB, 0.2, 0.3, 0.1)) - TB * 0.45) <= 1
    assert estimate_backup_size(facts(None, 0.2)) is None
    assert part_size_for(estimate_backup_size(facts(TB, 0.2, 0.3))) == 86 * MiB


def test_a_writer_expecting_a_big_object_sends_bigger_parts(aws, s3):
    """An object expected at ~29 GiB (10,000 parts of 6 MiB hold twice it) goes in 6 MiB
    parts, where the store's own size is 5 MiB."""
    store = make_store(aws, part_size=PART)
    expected = 30_000 * MiB
    assert part_size_for(expected, PART) == 6 * MiB
    assert store.wants_estimate(expected) and not store.wants_estimate(20 * GiB)
    assert store.wants_estimate(None)  # nothing known: the backup reads the database's size
    data = b"".join(chunks(13 * MiB, seed=b"big"))
    with store.writer("expected", expected_size=expected) as out:
        out.write(data)
    key = "backups/dev/expected"
    head = s3.head_object(Bucket=aws["BACKUP_S3_BUCKET"], Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # 6 + 6 + 1 MiB
    first = s3.head_object(Bucket=aws["BACKUP_S3_BUCKET"], Key=key, PartNumber=1)
    assert first["ContentLength"] == 6 * MiB
    assert store.get_bytes("expected") == data


def put_small_and_large(store: S3Storage, large: int) -> None:
    """A small object in one put, and one of `large` bytes written through the store's writer
    (a multipart upload once it passes a part)."""
    store.put_bytes("small", b"tiny")
    with store.writer("large") as out:
        for data in chunks(large):
            out.write(data)


# -- encryption ------------------------------------------------------------------------------
def test_aes256_on_every_object(aws, s3):
    store = make_store({**aws, "BACKUP_S3_SSE": "AES256"}, part_size=PART)
    put_small_and_large(store, 11 * MiB)
    for name in ("small", "large"):
        head = s3.head_object(Bucket=aws["BACKUP_S3_BUCKET"], Key=f"backups/dev/{name}")
        assert head["ServerSideEncryption"] == "AES256"


def test_kms_with_key_id_on_every_object(aws, s3):
    import boto3

    kms = boto3.client("kms", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    key_id = kms.create_key(Description="mida backups")["KeyMetadata"]["KeyId"]
    store = make_store({**aws, "BACKUP_S3_SSE": "aws:kms", "BACKUP_S3_KMS_KEY_ID": key_id},
                       part_size=PART)
    put_small_and_large(store, 6 * MiB)
    for name in ("small", "large"):
        head = s3.head_object(Bucket=aws["BACKUP_S3_BUCKET"], Key=f"backups/dev/{name}")
        assert head["ServerSideEncryption"] == "aws:kms"
        assert key_id in head["SSEKMSKeyId"]
    assert store.get_bytes("small") == b"tiny"


@pytest.mark.parametrize("values", [
    {"BACKUP_S3_SSE": "AES128"},
    {"BACKUP_S3_SSE": "aws:kms:dsse"},
    {"BACKUP_S3_KMS_KEY_ID": "key-without-sse"},
    {"BACKUP_S3_SSE": "AES256", "BACKUP_S3_KMS_KEY_ID": "key-with-the-wrong-sse"},
])
def test_bad_encryption_settings_are_refused_before_anything_runs(aws, values):
    with pytest.raises(ConfigError, match="BACKUP_S3_"):
        open_storage(load_settings("dev", environ={**aws, "BACKUP_STORAGE": "s3", **values}))


# -- failures --------------------------------------------------------------------------------
def test_upload_failing_halfway_leaves_no_object_and_no_parts(aws, s3):
    store = make_store(aws, part_size=PART)
    with pytest.raises(RuntimeError, match="dump died"):
        with store.writer("half") as out:
            out.write(b"\0" * (2 * PART + 100))  # two parts uploaded, a third begun
            raise RuntimeError("dump died")
    bucket = aws["BACKUP_S3_BUCKET"]
    assert not store.exists("half") and store.list() == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_small_upload_failing_writes_nothing(aws, s3):
    store = make_store(aws)
    with pytest.raises(KeyboardInterrupt):
        with store.writer("small") as out:
            out.write(b"partial")
            raise KeyboardInterrupt
    assert s3.list_objects_v2(Bucket=aws["BACKUP_S3_BUCKET"]).get("KeyCount") == 0


def test_connection_lost_midway_is_a_backup_failure(aws):
    """Once S3 has answered, a broken transfer is a failed backup (exit 4), not bad config."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="t", aws_secret_access_key="t").create_bucket(Bucket="gone")
    store = make_store({**aws, "AWS_ENDPOINT_URL": endpoint, "BACKUP_S3_BUCKET": "gone"},
                       part_size=PART, max_attempts=1, connect_timeout=1, read_timeout=5)
    with pytest.raises(BackupFailed, match="s3://gone/backups/dev/cut.*midway"):
        with store.writer("cut") as out:
            out.write(b"\1" * PART)  # the multipart upload has begun; its first part is sent
            server.stop()
            out.write(b"\2" * PART)


def test_missing_bucket_names_the_bucket(aws):
    store = make_store({**aws, "BACKUP_S3_BUCKET": "no-such-bucket-here"})
    for action in (store.list, lambda: store.exists("x"), lambda: store.put_bytes("x", b"1"),
                   lambda: store.get_bytes("x"), lambda: store.size("x"),
                   lambda: store.delete("x")):
        with pytest.raises(ConfigError, match="'no-such-bucket-here' does not exist.*"
                                              "BACKUP_S3_BUCKET"):
            action()


def test_unreachable_endpoint_is_a_clear_configuration_error(aws):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = make_store({**aws, "AWS_ENDPOINT_URL": endpoint}, max_attempts=1,
                       connect_timeout=1, read_timeout=1)
    attempts = []
    store.client.meta.events.register("before-send.s3",
                                      lambda **kwargs: attempts.append(kwargs["request"].method))
    for action in (store.list, lambda: store.put_bytes("x", b"1")):
        with pytest.raises(ConfigError, match=f"endpoint {endpoint} for S3 bucket .* cannot "
                                              "be reached: check AWS_ENDPOINT_URL"):
            action()
    # Bounded by what it is made of, not timed: botocore's max_attempts counts retries, so 2
    # attempts per call, each waiting at most the 1 s connect timeout, one backoff of <= 1 s.
    config = store.client.meta.config
    assert config.connect_timeout == 1 and config.retries["total_max_attempts"] == 2
    assert attempts == ["GET", "GET", "PUT", "PUT"], attempts


def test_no_credentials_at_all(aws):
    values = {k: v for k, v in aws.items() if k not in {"AWS_ACCESS_KEY_ID",
                                                       "AWS_SECRET_ACCESS_KEY"}}
    with pytest.raises(ConfigError, match="no usable AWS credentials.*AWS_ACCESS_KEY_ID"):
        make_store(values).list()


def test_unknown_profile(aws):
    values = {k: v for k, v in aws.items() if not k.startswith("AWS_ACCESS")
              and not k.startswith("AWS_SECRET")}
    with pytest.raises(ConfigError, match="nosuchprofile.*AWS_PROFILE"):
        make_store({**values, "AWS_PROFILE": "nosuchprofile"}).list()


def test_profile_from_the_settings_config_files(aws, s3, tmp_path):
    """AWS_PROFILE and the files it lives in may come from a .env file, not only the shell."""
    credentials = tmp_path / "credentials"
    credentials.write_text("[backups]\naws_access_key_id = fromprofile\n"
                           "aws_secret_access_key = fromprofile\n")
    values = {k: v for k, v in aws.items() if not k.startswith("AWS_ACCESS")
              and not k.startswith("AWS_SECRET")}
    store = make_store({**values, "AWS_PROFILE": "backups",
                        "AWS_SHARED_CREDENTIALS_FILE": str(credentials)})
    store.put_bytes("p", b"1")
    assert store.list() == ["p"]


def test_wrong_access_key(auth_moto):
    endpoint, _, _ = auth_moto
    store = make_store({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "AKIANOTAKEY",
                        "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                        "BACKUP_S3_BUCKET": "locked-bucket"})
    with pytest.raises(ConfigError, match="rejected the AWS credentials for S3 bucket "
                                          "'locked-bucket' \\(InvalidAccessKeyId\\)"):
        store.list()


def test_wrong_secret(auth_moto):
    endpoint, key_id, _ = auth_moto
    store = make_store({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key_id,
                        "AWS_SECRET_ACCESS_KEY": "not-the-secret",
                        "AWS_DEFAULT_REGION": "us-east-1", "BACKUP_S3_BUCKET": "locked-bucket"})
    with pytest.raises(ConfigError, match="SignatureDoesNotMatch.*AWS_SECRET_ACCESS_KEY"):
        store.put_bytes("x", b"1")


def test_access_denied(auth_moto):
    endpoint, key_id, secret = auth_moto
    store = make_store({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key_id,
                        "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
                        "BACKUP_S3_BUCKET": "locked-bucket"})
    # Not listing: moto's signature check mishandles a "/" in the query string (Delimiter=/)
    # and answers SignatureDoesNotMatch where AWS answers AccessDenied.
    for action in (lambda: store.put_bytes("x", b"1"), lambda: store.exists("x"),
                   lambda: store.get_bytes("x"), lambda: store.delete("x")):
        with pytest.raises(ConfigError, match="access to S3 bucket 'locked-bucket' was denied"):
            action()


# -- listing ---------------------------------------------------------------------------------
def test_listing_sees_only_direct_children_of_its_own_folder(aws, s3):
    bucket = aws["BACKUP_S3_BUCKET"]
    for key in ("backups/dev/1.manifest.json", "backups/dev/2.audit.json",
                "backups/dev/nested/3.manifest.json", "backups-old/dev/4.manifest.json",
                "backups/dev-old/5.manifest.json", "backups/devx.manifest.json",
                "backups/dev.manifest.json", "dev/6.manifest.json", "top.manifest.json"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
    store = make_store(aws, folder="backups/dev")
    assert store.list() == ["1.manifest.json", "2.audit.json"]
    assert store.list(".manifest.json") == ["1.manifest.json"]
    no_prefix = open_storage(load_settings("dev", environ={**aws, "BACKUP_STORAGE": "s3"}))
    assert no_prefix.list() == ["6.manifest.json"]
    assert no_prefix.location("x") == f"s3://{bucket}/dev/x"


def test_listing_follows_pages(aws, s3):
    bucket = aws["BACKUP_S3_BUCKET"]
    names = [f"{i:02}.audit.json" for i in range(7)]
    for name in names:
        s3.put_object(Bucket=bucket, Key=f"backups/dev/{name}", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="backups/dev/sub/x.audit.json", Body=b"{}")
    assert make_store(aws, page_size=2).list(".audit.json") == names  # four pages


# -- wiring ----------------------------------------------------------------------------------
def test_open_storage_needs_a_bucket(tmp_path):
    settings = load_settings("dev", environ={"BACKUP_STORAGE": "s3"}, root=tmp_path)
    with pytest.raises(ConfigError, match="BACKUP_S3_BUCKET"):
        open_storage(settings)


def test_open_storage_builds_keys_from_prefix_and_env(aws, tmp_path):
    (tmp_path / ".env.staging").write_text("BACKUP_S3_PREFIX=/db/backups/\n")
    settings = load_settings("staging", environ={**aws, "BACKUP_STORAGE": "s3"}, root=tmp_path)
    store = open_storage(settings)
    assert isinstance(store, S3Storage)
    assert store.location("a") == f"s3://{aws['BACKUP_S3_BUCKET']}/db/backups/staging/a"


def test_a_url_is_not_a_bucket_name(aws):
    with pytest.raises(ConfigError, match="bucket name alone"):
        open_storage(load_settings("dev", environ={**aws, "BACKUP_STORAGE": "s3",
                                                    "BACKUP_S3_BUCKET": "s3://b/backups"}))


def test_an_invalid_bucket_name_is_a_configuration_error(aws):
    store = make_store({**aws, "BACKUP_S3_BUCKET": "no spaces allowed!"})
    with pytest.raises(ConfigError, match="Invalid bucket name.*check BACKUP_S3_BUCKET"):
        store.list()


def test_importing_the_store_does_not_import_boto3():
    code = ("import sys, app.ops.storage, app.ops.storage.s3; "
            "sys.exit('boto3' in sys.modules or 'botocore' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))))).returncode == 0


# -- through the backup code -----------------------------------------------------------------
def sqlite_target(aws, tmp_path, **extra):
    db = tmp_path / "app.db"
    if not db.exists():
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        conn.executemany("INSERT INTO users (email) VALUES (?)",
                         [(f"user{i}@example.org",) for i in range(500)])
        conn.commit()
        conn.close()
    return open_target(load_settings(
        "dev", environ={**aws, "BACKUP_STORAGE": "s3", "USE_SQLITE": "True",
                        "SQLITE_PATH": str(db), "BACKUP_S3_PREFIX": "mida",
                        "BACKUP_S3_SSE": "AES256", **extra}, root=tmp_path))


def test_sqlite_backup_list_and_verify_through_s3(aws, s3, tmp_path):
    from app.ops.catalog import audit
    from app.ops.catalog.backups import list_backups
    from app.ops.methods.dump.take import take_backup
    from app.ops.methods.registry import verify_backup

    settings = sqlite_target(aws, tmp_path)
    manifest = take_backup(settings, reason="test", revision=None, now=T0)
    bucket = aws["BACKUP_S3_BUCKET"]
    assert manifest.location == f"s3://{bucket}/mida/dev/{manifest.artifact}"
    body = s3.get_object(Bucket=bucket, Key=f"mida/dev/{manifest.artifact}")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == manifest.sha256
    [listed] = list_backups(settings)
    assert listed.id == manifest.id and listed.location == manifest.location
    assert verify_backup(settings, listed, now=T0).verified
    for key in (f"mida/dev/{manifest.artifact}", f"mida/dev/{manifest.id}.manifest.json"):
        assert s3.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"
    audit.record(settings, action="migrate", now=T0, outcome="succeeded")
    assert [e["action"] for e in audit.read_events(settings)] == ["migrate"]


def test_verify_finds_a_corrupted_s3_backup(aws, s3, tmp_path):
    from app.ops.catalog.backups import list_backups
    from app.ops.methods.dump.take import take_backup
    from app.ops.methods.registry import verify_backup

    settings = sqlite_target(aws, tmp_path)
    manifest = take_backup(settings, reason="test", revision=None, now=T0)
    key = f"mida/dev/{manifest.artifact}"
    body = bytearray(s3.get_object(Bucket=aws["BACKUP_S3_BUCKET"], Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=aws["BACKUP_S3_BUCKET"], Key=key, Body=bytes(body))
    with pytest.raises(BackupFailed, match=manifest.id):
        verify_backup(settings, list_backups(settings)[0], now=T0)
    assert not list_backups(settings)[0].verified


def test_backup_to_a_missing_bucket_stores_nothing(aws, tmp_path):
    from app.ops.methods.dump.take import take_backup

    settings = sqlite_target({**aws, "BACKUP_S3_BUCKET": "no-such-bucket-here"}, tmp_path)
    with pytest.raises(ConfigError, match="'no-such-bucket-here' does not exist"):
        take_backup(settings, reason="test", revision=None, now=T0)


@pytest.mark.postgres
def test_postgres_backup_through_s3(aws, s3, pg_database, tmp_path):
    from app.ops.catalog.backups import list_backups
    from app.ops.methods.dump.take import take_backup
    from app.ops.methods.registry import verify_backup

    pg_database.sql("CREATE TABLE scans (id serial PRIMARY KEY, note text)")
    pg_database.sql("INSERT INTO scans (note) SELECT md5(g::text) FROM generate_series(1, 2000) g")
    settings = open_target(load_settings("dev", environ={
        **aws, "BACKUP_STORAGE": "s3", "BACKUP_S3_SSE": "AES256",
        "DATABASE_URL": pg_database.url.render_as_string(hide_password=False)}, root=tmp_path))
    manifest = take_backup(settings, reason="test", revision=None, now=T0)
    assert manifest.engine == "postgresql"
    assert manifest.location == f"s3://{aws['BACKUP_S3_BUCKET']}/dev/{manifest.artifact}"
    [listed] = list_backups(settings)
    assert verify_backup(settings, listed, now=T0).verified
    assert "p@ss" not in s3.get_object(Bucket=aws["BACKUP_S3_BUCKET"],
                                       Key=f"dev/{manifest.id}.manifest.json")["Body"].read().decode()


def test_invoke_backup_and_backups_over_s3(aws, s3, project):
    db = project.root / "dev.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.close()
    env = {**aws, "BACKUP_STORAGE": "s3", "USE_SQLITE": "True", "SQLITE_PATH": str(db)}
    taken = project.run("backup", "--env=dev", env=env)
    assert taken.returncode == 0, taken.stderr
    [item] = project.backups("dev", env=env)
    assert item["location"].startswith(f"s3://{aws['BACKUP_S3_BUCKET']}/dev/")
    missing = project.run("backups", "--env=dev", env={**env, "BACKUP_S3_BUCKET": "not-there"})
    assert missing.returncode == 2
    assert "'not-there' does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr + missing.stdout
