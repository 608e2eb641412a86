"""End to end with an S3 endpoint that goes away mid-transfer: not a dropped connection, gone.

A proxy sits between invoke and the moto server. At a chosen moment (a given UploadPart
request, or a few MiB into a download) it closes its listening socket and resets every
connection it carries: from then on every attempt, the abort's too, is refused. Later the test
opens a new proxy on the same port: the endpoint is back. The last two tests drive the S3 store
directly: its abort of a failed upload is retried, and gives up within seconds.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.ops.storage.s3 import S3Storage
from app.settings import Settings
from conftest import S3_PREFIX, Bucket, bucket_and_project
from helpers import (FIRST, HEAD, backup_id_of, dev_db, failed, listed, ok, pg_env, shown,
                     sqlite_rows, sqlite_state)
from tcp_proxy import Connection, ForwardingProxy, reset

pytestmark = pytest.mark.usefixtures("no_ambient_aws")

MiB = 1 << 20


class VanishingProxy(ForwardingProxy):
    """A TCP proxy in front of the S3 endpoint that forwards byte for byte until `vanish_on`
    says so, then goes away: its listener closes (new connections are refused) and every
    connection it carries is reset. `vanish_on(method, target, response_bytes)` is asked at
    every request line from the client (response_bytes 0) and at every chunk of the answer to
    it (response_bytes: how much of that answer has come through, this chunk included)."""

    def __init__(self, target_port: int, vanish_on=lambda method, target, answered: False,
                 port: int = 0, drop_on=lambda method, target: False):
        self.vanish_on = vanish_on
        self.drop_on = drop_on  # (method, target) -> reset this one connection, stay up
        super().__init__(target_port, port)

    def vanish(self) -> None:
        with self.lock:
            if self.gone:
                return
            self.gone = True
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            self.listener.close()
            for sock in self.sockets:
                try:
                    reset(sock)
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def from_client(self, conn: Connection, data: bytes) -> bytes | None:
        for method, target in self.request_lines(conn, data):
            conn.current, conn.answered = (method, target), 0
            if self.vanish_on(method, target, 0):
                self.vanish()
                return None
            if self.drop_on(method, target):
                reset(conn.client, conn.upstream)
                return None
        return data

    def from_server(self, conn: Connection, data: bytes) -> bytes | None:
        conn.answered += len(data)
        if self.vanish_on(*conn.current, conn.answered):
            self.vanish()
            return None
        return data

    def close(self) -> None:
        self.vanish()
        self.accepter.join(timeout=10)


def fill_sqlite(path: Path, mib: int) -> None:
    """`mib` MiB of random bytes in a table of their own: they do not compress."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE scans (id INTEGER PRIMARY KEY, image BLOB NOT NULL)")
        conn.executemany("INSERT INTO scans (image) VALUES (?)",
                         [(os.urandom(MiB),) for _ in range(mib)])
    conn.close()


def record_folder(project, env_name: str = "dev") -> Path:
    return project.root / "backups" / ".unaborted-uploads" / env_name


def part_request(number: int):
    return lambda method, target, answered: (
        method == "PUT" and answered == 0 and f"partNumber={number}&" in target + "&")


def artifact_download(backup_id: str, after: int):
    """Vanish once `after` bytes of the GET of that backup's artifact have come back."""
    return lambda method, target, answered: (
        method == "GET" and f"/{backup_id}." in target and ".zst" in target and answered > after)


# == 1. Gone mid-upload: the cause named, the upload recorded, aborted by the next run ========
def gone_midupload(project, bucket: Bucket, moto_port: int) -> SimpleNamespace:
    """A backup whose endpoint goes while it uploads part 2; another process's upload begun in
    the same folder; status and check reached by another endpoint URL; then the endpoint back
    for one more run. What each step left is read here."""
    direct = bucket.env()
    ok(project.run("migrate", env=direct))
    # 56 MiB that do not compress, in parts of 16 MiB: the endpoint goes at part 2, while the
    # dump goes on filling part 3.
    fill_sqlite(dev_db(project), 56)
    run = SimpleNamespace(state=sqlite_state(dev_db(project)), folder=record_folder(project))
    run.proxy = VanishingProxy(moto_port, part_request(2))
    try:
        run.result = project.run("backup", env=bucket.env(endpoint=run.proxy.endpoint))
    finally:
        run.proxy.close()
    run.state_after = sqlite_state(dev_db(project))

    # Nothing could abort the upload: its first part is still in the bucket, and recorded.
    [run.upload] = bucket.uploads()
    run.parts = bucket.client.list_parts(Bucket=bucket.name, Key=run.upload["Key"],
                                         UploadId=run.upload["UploadId"])["Parts"]
    run.folder_mode = stat.S_IMODE(run.folder.stat().st_mode)
    run.records = [(stat.S_IMODE(f.stat().st_mode), json.loads(f.read_text()))
                   for f in run.folder.iterdir()]  # (mode, record) of each record file
    run.listed = listed(project, bucket)

    # Another process's upload in progress in the same folder: never touched.
    run.other = bucket.client.create_multipart_upload(
        Bucket=bucket.name, Key=f"{S3_PREFIX}/dev/in-progress-elsewhere")
    # Reached by another endpoint URL, the upload is not this run's to abort.
    run.status = json.loads(ok(project.run("status", "--json", env=direct)).stdout)
    run.table = ok(project.run("status", env=direct)).stdout
    run.checked = project.run("check", "--json", env=direct)
    run.uploads_unreached = bucket.uploads()

    # The endpoint is back: the next run that reaches it aborts the recorded upload.
    run.back = VanishingProxy(moto_port, port=run.proxy.port)
    try:
        ok(project.run("backups", env=bucket.env(endpoint=run.back.endpoint)))
        run.uploads_back = bucket.uploads()
        run.records_back = list(run.folder.iterdir())
        run.status_back = json.loads(ok(project.run(
            "status", "--json", env=bucket.env(endpoint=run.back.endpoint))).stdout)
    finally:
        run.back.close()
    return run


@pytest.fixture(scope="class")
def midupload(e2e_moto, tmp_path_factory):
    with bucket_and_project(e2e_moto, tmp_path_factory.mktemp("midupload")) as (bucket,
                                                                                 project):
        yield bucket, gone_midupload(project, bucket, e2e_moto)


class TestEndpointGoneMidUpload:
    def test_the_backup_fails_naming_the_cause_and_the_record_and_changes_nothing(
            self, midupload):
        bucket, run = midupload
        assert run.proxy.gone, (run.proxy.requests, shown(run.result))
        error = failed(run.result, 4, f"s3://{bucket.name}/{S3_PREFIX}/dev/",
                       f"could not connect to the S3 endpoint {run.proxy.endpoint}",
                       "connection refused", "could not be aborted", str(run.folder))
        assert "already failed" not in error, error
        assert run.state_after == run.state

    def test_the_upload_stays_in_the_bucket_with_its_first_part(self, midupload):
        _, run = midupload
        assert run.upload["Key"].startswith(f"{S3_PREFIX}/dev/"), run.upload
        assert [p["PartNumber"] for p in run.parts] == [1]
        assert run.listed == []

    def test_the_upload_is_recorded_in_a_private_file(self, midupload):
        bucket, run = midupload
        [(mode, record)] = run.records
        assert run.folder_mode == 0o700
        assert mode == 0o600
        assert (record["bucket"], record["key"], record["upload_id"], record["endpoint"]) == \
            (bucket.name, run.upload["Key"], run.upload["UploadId"], run.proxy.endpoint), record

    def test_status_reached_by_another_endpoint_shows_it_and_aborts_nothing(self, midupload):
        bucket, run = midupload
        location = f"s3://{bucket.name}/{run.upload['Key']}"
        [shown_upload] = run.status["unaborted_uploads"]
        assert shown_upload["upload_id"] == run.upload["UploadId"], run.status
        assert shown_upload["location"] == location, run.status
        assert "unaborted upload" in run.table and location in run.table, run.table
        assert len(run.uploads_unreached) == 2

    def test_check_warns_of_it(self, midupload):
        _, run = midupload
        checks = {c["name"]: c for c in json.loads(run.checked.stdout)["checks"]}
        leftovers = checks["leftovers"]
        assert leftovers["state"] == "WARNING", run.checked
        assert run.upload["UploadId"] in leftovers["detail"], run.checked

    def test_the_next_run_that_reaches_the_endpoint_aborts_only_the_recorded_upload(
            self, midupload):
        _, run = midupload
        assert [u["UploadId"] for u in run.uploads_back] == [run.other["UploadId"]]
        assert run.records_back == []
        assert run.status_back["unaborted_uploads"] == []
        assert [m for m, t in run.back.requests
                if f"uploadId={run.upload['UploadId']}" in t] == ["DELETE"]


# == 2. Gone mid-download: restore is a failed restore (exit 4), the database untouched =======
def test_sqlite_restore_whose_endpoint_goes_midway_is_exit_4_and_changes_nothing(
        project, bucket, e2e_moto, tmp_path):
    direct = bucket.env()
    ok(project.run("migrate", env=direct))
    fill_sqlite(dev_db(project), 24)
    backup_id = backup_id_of(ok(project.run("backup", env=direct)))
    ok(project.run("rollback", env=direct))  # the database now differs from the backup
    state, rows = sqlite_state(dev_db(project)), sqlite_rows(dev_db(project))
    before = listed(project, bucket)
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    proxy = VanishingProxy(e2e_moto, artifact_download(backup_id, after=4 * MiB))
    try:
        result = project.run("restore", "--yes", f"--backup={backup_id}",
                             env=bucket.env(endpoint=proxy.endpoint, TMPDIR=str(scratch)))
    finally:
        proxy.close()
    assert proxy.gone, (proxy.requests, shown(result))
    failed(result, 4, f"reading s3://{bucket.name}/{S3_PREFIX}/dev/{backup_id}", "failed midway",
           "connection to S3 was lost")
    assert sqlite_state(dev_db(project)) == state and state["revision"] == FIRST
    assert sqlite_rows(dev_db(project)) == rows
    assert list(scratch.iterdir()) == []
    # The backup is as good as it was: a transfer that broke off says nothing about it.
    assert listed(project, bucket) == before
    assert next(i for i in before if i["id"] == backup_id)["verified"] is True
    assert bucket.uploads() == []


@pytest.mark.postgres
def test_postgres_restore_whose_endpoint_goes_midway_is_exit_4_and_changes_nothing(
        project, pgdb, bucket, e2e_moto, tmp_path):
    db = pgdb
    direct = pg_env(db, **bucket.env())
    ok(project.run("migrate", env=direct))
    db.sql("CREATE TABLE scans (id serial PRIMARY KEY, image bytea NOT NULL)")
    for _ in range(12):
        db.sql("INSERT INTO scans (image) VALUES (:b)", b=os.urandom(MiB))
    backup_id = backup_id_of(ok(project.run("backup", env=direct)))
    db.sql("INSERT INTO users (email, full_name, hashed_password) VALUES ('late@x.org', 'L', 'x')")
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    proxy = VanishingProxy(e2e_moto, artifact_download(backup_id, after=4 * MiB))
    try:
        result = project.run("restore", "--yes", f"--backup={backup_id}",
                             env=pg_env(db, **bucket.env(endpoint=proxy.endpoint,
                                                         TMPDIR=str(scratch))))
    finally:
        proxy.close()
    assert proxy.gone, (proxy.requests, shown(result))
    failed(result, 4, f"reading s3://{bucket.name}/{S3_PREFIX}/pgtest/{backup_id}",
           "failed midway", "connection to S3 was lost")
    assert db.revision() == HEAD
    assert [r[0] for r in db.sql("SELECT email FROM users")] == ["late@x.org"]
    assert db.sql("SELECT count(*) FROM scans")[0][0] == 12
    assert db.admin_sql("SELECT datname FROM pg_database WHERE datname LIKE :p",
                        p=db.name + "\\_\\_%") == []
    assert list(scratch.iterdir()) == []
    assert bucket.uploads() == []


# == 3. The store itself: the abort is retried, and bounded ===================================
def store_via(bucket: Bucket, endpoint: str, **kwargs) -> S3Storage:
    values = {k: v for k, v in bucket.env(endpoint=endpoint).items() if k.startswith("AWS_")}
    return S3Storage(bucket.name, "backups/dev", Settings(env="dev", values=values),
                     part_size=5 * MiB, **kwargs)


def test_an_abort_that_meets_a_broken_connection_is_retried(bucket, e2e_moto, tmp_path):
    dropped = []

    def drop_two_aborts(method, target):
        if method == "DELETE" and "uploadId=" in target and len(dropped) < 2:
            dropped.append(target)
            return True
        return False

    proxy = VanishingProxy(e2e_moto, drop_on=drop_two_aborts)
    records = tmp_path / "records"
    try:
        store = store_via(bucket, proxy.endpoint, unaborted_folder=records)
        with pytest.raises(RuntimeError, match="dump died"):
            with store.writer("half") as out:
                out.write(b"\0" * (2 * 5 * MiB + 100))  # two parts sent, a third begun
                raise RuntimeError("dump died")
    finally:
        proxy.close()
    aborts = [t for m, t in proxy.requests if m == "DELETE" and "uploadId=" in t]
    assert len(dropped) == 2 and len(aborts) == 3, proxy.requests
    assert bucket.uploads() == []
    assert not records.exists()


def longest_connect_failure(config) -> float:
    """The longest botocore can spend on one call to an endpoint that is gone (refused, or
    dropping packets: no connection, so no read timeout), by what it is made of: every attempt
    waiting its whole connect timeout, plus the standard mode's backoff after each failed
    attempt but the last (at most min(2 ** i, 20) s after attempt i + 1)."""
    attempts = config.retries["total_max_attempts"]  # the first attempt included
    assert config.retries["mode"] == "standard", config.retries
    return attempts * config.connect_timeout + sum(min(2 ** i, 20) for i in range(attempts - 1))


def test_an_abort_against_a_vanished_endpoint_gives_up_within_seconds(bucket, e2e_moto):
    """Bounded by its client's configuration, not timed: the attempts botocore made are counted
    (before-send, once per attempt), and the bound comes from the timeouts and attempts the
    abort's client was given. A wall-clock bound failed CI on a busy machine."""
    upload = bucket.client.create_multipart_upload(Bucket=bucket.name, Key="backups/dev/x")
    proxy = VanishingProxy(e2e_moto)
    store = store_via(bucket, proxy.endpoint)
    store.list()  # the endpoint answered once
    proxy.close()  # then went away
    cause, answered = store.abort_upload("backups/dev/x", upload["UploadId"])
    assert (cause, answered) == ("connection refused", False)
    client = store._abort_s3  # the client the abort was made with
    attempts = []
    client.meta.events.register("before-send.s3.AbortMultipartUpload",
                                lambda **kwargs: attempts.append(kwargs["request"].url))
    assert store.abort_upload("backups/dev/x", upload["UploadId"]) == (cause, answered)
    config = client.meta.config
    assert len(attempts) == config.retries["total_max_attempts"] == 4, attempts
    assert config.connect_timeout <= 3 and config.read_timeout <= 15
    # 4 attempts of at most 3 s, 3 backoffs of at most 1, 2 and 4 s: seconds, never minutes.
    assert longest_connect_failure(config) <= 19
    assert [u["UploadId"] for u in bucket.uploads()] == [upload["UploadId"]]
