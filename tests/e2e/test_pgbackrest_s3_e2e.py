"""End to end with BACKUP_METHOD=pgbackrest on an S3 repository, the way production teams run it:
`invoke` runs as a subprocess against a throwaway cluster whose WAL archive and backups are in a
bucket of moto's server, reached by pgBackRest over https through stunnel (self-signed
certificate, `repo1-storage-verify-tls=n`, `repo1-s3-uri-style=path`; tests/pgbackrest_s3.py).
The tests list the bucket with boto3 against moto's own endpoint: what pgBackRest should have
put there must be there, and the cluster's local repository folder must stay empty.
"""
from __future__ import annotations

import json
import secrets
import stat
import subprocess
import time

import pytest

from clusters import owned_cluster_database, throwaway
from conftest import s3_client
from helpers import failed, ok, shown, unavailable
from pgbackrest_s3 import REPO_PATH, S3_SECRET, Moto, Stunnel, s3_repository

STANZA_PREFIX = f"{REPO_PATH.strip('/')}/"   # the repository's keys in the bucket


class Endpoint:
    """moto, a bucket in it, and stunnel in front: what the S3 cluster's pgBackRest talks to."""

    def __init__(self, folder):
        self.moto = Moto(folder)
        self.stunnel = Stunnel(folder, self.moto.port)  # EndpointUnavailable before any start
        self.bucket = f"mida-pgbr-{secrets.token_hex(4)}"
        try:
            self.moto.start()
            self.client = s3_client(self.moto.endpoint)
            self.client.create_bucket(Bucket=self.bucket)
            self.stunnel.start()
        except BaseException:
            self.stop()
            raise

    def keys(self, prefix: str = "") -> set[str]:
        """Every key in the bucket under the repository (and `prefix` below it)."""
        found = set()
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=STANZA_PREFIX + prefix)
        for page in pages:
            found.update(o["Key"][len(STANZA_PREFIX):] for o in page.get("Contents", []))
        return found

    def stop(self) -> None:
        self.stunnel.stop()
        self.moto.stop()


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto and stunnel on free ports for the module's tests, stopped after them."""
    from pgbackrest_s3 import EndpointUnavailable
    try:
        endpoint = Endpoint(tmp_path_factory.mktemp("pgbr-s3-endpoint"))
    except EndpointUnavailable as exc:
        unavailable(f"cannot run the S3 endpoint: {exc}")
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="module")
def s3_cluster(s3_endpoint):
    """A throwaway cluster archiving to the bucket, with one full backup there."""
    yield from throwaway("a throwaway pgBackRest cluster on S3", prefix="pgbackrest-s3-cluster-",
                         archiving=True,
                         repo=s3_repository(s3_endpoint.bucket, s3_endpoint.stunnel.port))


@pytest.fixture
def s3_db(s3_cluster, s3_endpoint):
    """A database of its own in the S3 cluster, owned by its own role with the README's grants
    (also the ones restore needs to clear the recovery target)."""
    cluster = s3_cluster
    if not s3_endpoint.stunnel.running:   # a test that stopped it failed before its finally
        s3_endpoint.stunnel.start()
    yield from owned_cluster_database(
        cluster, "GRANT ALTER SYSTEM ON PARAMETER recovery_target_lsn, recovery_target_action, "
                 "recovery_target_timeline TO {role}")


def no_secret(result) -> None:
    """The repository's S3 secret is pgBackRest's alone: never in our output."""
    assert S3_SECRET not in result.stdout + result.stderr, shown(result)


def repo_info(cluster) -> dict:
    return json.loads(cluster.pgbackrest("info", "--output=json").stdout)[0]


def archived_in_bucket(endpoint: Endpoint, segment: str) -> list[str]:
    """The bucket's copies of one WAL segment (archive/<stanza>/<db id>/<first 16>/<seg>-<sha1>)."""
    return sorted(k for k in endpoint.keys("archive/mida/")
                  if k.split("/")[-2:-1] == [segment[:16]]
                  and k.split("/")[-1].startswith(f"{segment}-"))


def test_the_s3_cluster_keeps_its_repository_in_the_bucket_over_tls(s3_cluster, s3_endpoint):
    cluster, endpoint = s3_cluster, s3_endpoint
    info = repo_info(cluster)
    full = info["backup"][0]   # the one build_s3_cluster took (later tests add their own)
    assert full["type"] == "full" and info["status"]["code"] == 0, info
    # The full backup and the stanza's files are objects in the bucket, not files on disk.
    keys = endpoint.keys()
    assert {"backup/mida/backup.info", "archive/mida/archive.info",
            f"backup/mida/{full['label']}/backup.manifest"} <= keys, sorted(keys)
    assert list(cluster.repo.iterdir()) == []
    # Only over TLS: the config names the stunnel port, which is not moto's.
    config = cluster.config.read_text()
    assert f"repo1-storage-port={endpoint.stunnel.port}\n" in config
    assert endpoint.stunnel.port != endpoint.moto.port and "repo1-type=s3\n" in config
    # The credentials are in the config file only, which only its owner may read.
    mode = cluster.config.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600 and S3_SECRET in config
    assert cluster.config.stat().st_uid == cluster.data.stat().st_uid != 0


def test_restore_point_verify_and_whole_cluster_restore_on_s3(project, s3_db, s3_endpoint):
    db, endpoint = s3_db, s3_endpoint
    cluster = db.cluster
    env = db.env()
    other = f"other_app_{secrets.token_hex(3)}"
    cluster.psql(f"CREATE DATABASE {other}")
    try:
        ok(project.run("migrate", env=env))
        db.sql("INSERT INTO users (email, hashed_password) SELECT 'before' || g || "
               "'@example.org', md5(g::text) FROM generate_series(1, 50) g")
        cluster.psql("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('before')",
                     database=other)
        timeline_before = int(cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()"))

        # A restore point, its WAL archived to the bucket.
        started = time.monotonic()
        result = ok(project.run("backup", env=env))
        backup_seconds = time.monotonic() - started
        no_secret(result)
        assert "restore point on-demand-" in result.stdout, shown(result)
        [item, _before_migrate] = project.backups("pgtest", env=env)
        rp = item["pgbackrest"]
        assert item["method"] == "pgbackrest" and item["reason"] == "on demand", item
        assert rp["restore_point"] == f"on-demand-{item['id']}"
        assert (project.store("pgtest") / f"{item['id']}.manifest.json").is_file()
        assert rp["backup_label"] in [b["label"] for b in repo_info(cluster)["backup"]]
        assert f"backup/mida/{rp['backup_label']}/backup.manifest" in endpoint.keys()
        assert archived_in_bucket(endpoint, rp["segment"]), \
            f"{rp['segment']} is not in the bucket: {sorted(endpoint.keys('archive/'))}"
        assert list(cluster.repo.iterdir()) == []

        # verify asks pgBackRest, which reads the bucket back.
        started = time.monotonic()
        verified = ok(project.run("verify", f"--backup={item['id']}", env=env))
        verify_seconds = time.monotonic() - started
        no_secret(verified)
        assert item["id"] in verified.stdout, shown(verified)
        assert project.backups("pgtest", env=env)[0]["verified"] is True

        # Writes after the restore point, in both databases, archived too (the old timeline).
        db.sql("INSERT INTO users (email, hashed_password) VALUES ('after@example.org', 'x')")
        db.sql("DELETE FROM users WHERE email = 'before1@example.org'")
        cluster.psql("INSERT INTO notes VALUES ('after')", database=other)
        after_segment = cluster.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")

        # Restore rewinds the whole cluster from the bucket; nothing here comes from disk.
        started = time.monotonic()
        result = ok(project.run("restore", f"--backup={item['id']}", "--yes", "--whole-cluster",
                                env=env))
        restore_seconds = time.monotonic() - started
        no_secret(result)
        assert db.sql("SELECT count(*) FROM users WHERE email LIKE 'before%'") == "50"
        assert db.sql("SELECT count(*) FROM users WHERE email = 'after@example.org'") == "0"
        assert cluster.psql("SELECT string_agg(body, ',') FROM notes", database=other) == \
            "before"
        assert cluster.psql("SELECT pg_is_in_recovery()") == "f"
        timeline = int(cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()"))
        assert timeline > timeline_before
        assert "recovery_target" not in cluster.auto_conf(), cluster.auto_conf()
        assert f"--target-timeline={timeline_before}" in result.stdout, shown(result)
        [event, *_] = json.loads(ok(project.run("audit", "--json", env=env)).stdout)
        assert (event["action"], event["outcome"], event["backup_id"]) == \
            ("restore", "succeeded", item["id"]), event
        # In the bucket: the writes after the point (old timeline), the new timeline's history
        # and the incremental backup restore took on it.
        assert archived_in_bucket(endpoint, after_segment), \
            sorted(endpoint.keys("archive/"))
        assert any(k.endswith(f"/{timeline:08X}.history") for k in endpoint.keys("archive/"))
        newest = repo_info(cluster)["backup"][-1]
        assert newest["type"] == "incr" and newest["label"] != rp["backup_label"], newest
        assert f"backup/mida/{newest['label']}/backup.manifest" in endpoint.keys()
        assert list(cluster.repo.iterdir()) == []
        # And the next restore point rests on it at once.
        ok(project.run("backup", env=env))
        print(f"S3 repository behind stunnel: restore point {backup_seconds:.2f} s, verify "
              f"{verify_seconds:.2f} s, whole-cluster restore {restore_seconds:.2f} s")
    finally:
        cluster.psql(f"DROP DATABASE IF EXISTS {other} WITH (FORCE)")


def verify_with_the_endpoint_down(project, db, endpoint, backup_id: str):
    """`invoke verify` of one backup while stunnel is stopped (S3 unreachable); stunnel is
    started again before this returns. The run and how long it took."""
    endpoint.stunnel.stop()
    try:
        started = time.monotonic()
        result = project.run("verify", f"--backup={backup_id}",
                             env=db.env(PGBACKREST_TIMEOUT="5"))
        return result, time.monotonic() - started
    finally:
        endpoint.stunnel.start()


def test_verify_with_the_s3_endpoint_unreachable_fails_in_one_sentence(project, s3_db,
                                                                       s3_endpoint):
    db, endpoint = s3_db, s3_endpoint
    cluster = db.cluster
    env = db.env()
    ok(project.run("backup", env=env))
    [item] = project.backups("pgtest", env=env)
    assert item["verified"] is True
    # pgBackRest itself keeps retrying a refused connection (`pgbackrest info` took 240 s with
    # its default io-timeout=60): our PGBACKREST_TIMEOUT ends it, in one sentence.
    result, seconds = verify_with_the_endpoint_down(project, db, endpoint, item["id"])
    no_secret(result)
    # Not "failed verification": an unreachable repository says nothing about the backup.
    failed(result, 4, "pgbackrest info did not finish within 5 s (PGBACKREST_TIMEOUT)",
           "check that the repository is reachable")
    assert "failed verification" not in result.stderr
    assert seconds < 60, f"verify took {seconds:.1f} s"
    print(f"verify with the S3 endpoint down: exit {result.returncode} in {seconds:.1f} s: "
          f"{result.stderr.strip()}")
    # Its process group went with it: no pgbackrest of this cluster is left retrying.
    left = subprocess.run(["pgrep", "-af", "--", f"--config={cluster.config} --stanza=mida .*info"],
                          capture_output=True, text=True)
    assert left.returncode == 1, f"pgrep {left.returncode}: {left.stdout}{left.stderr}"
    # The endpoint back: the same backup verifies.
    ok(project.run("verify", f"--backup={item['id']}", env=env))
    assert project.backups("pgtest", env=env)[0]["verified"] is True


def test_an_s3_outage_during_verify_holds_nothing_against_the_restore_point(project, s3_db,
                                                                            s3_endpoint):
    db, endpoint = s3_db, s3_endpoint
    env = db.env()
    ok(project.run("backup", env=env))
    [item] = project.backups("pgtest", env=env)
    result, _ = verify_with_the_endpoint_down(project, db, endpoint, item["id"])
    assert result.returncode == 4, shown(result)
    [after] = project.backups("pgtest", env=env)
    print(f"after the outage: verified={after['verified']}, "
          f"verify_error={after.get('verify_error')!r}")
    # With the endpoint back, restore (the incident tool) may use the restore point.
    restored = project.run("restore", f"--backup={item['id']}", "--yes", env=env)
    print(f"restore after the outage: exit {restored.returncode}: {restored.stderr.strip()}")
    assert after["verified"] is True, after
    ok(restored)
