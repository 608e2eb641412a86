"""BACKUP_S3_OBJECT_LOCK end to end against moto's S3 server: every object the tool writes
carries a retain-until date, a bucket without Object Lock is refused at once (exit 2, with the
command that makes one), prune keeps what is under retention and deletes it once the retention
has passed, and a manifest that verify rewrites is a new version that the reader takes."""
from __future__ import annotations

import dataclasses
import secrets
import time
from datetime import UTC, datetime, timedelta

from helpers import failed, listed, ok, shown


def locked(bucket):
    """A bucket of the test's own created with Object Lock (moto supports it)."""
    name = f"mida-locked-{secrets.token_hex(4)}"
    bucket.client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return dataclasses.replace(bucket, name=name)


def test_a_bucket_without_object_lock_is_refused_at_once(project, bucket):
    ok(project.run("migrate", env=bucket.env()))   # from nothing: no backup, one audit event
    before = bucket.objects()
    env = bucket.env(BACKUP_S3_OBJECT_LOCK="35d")
    failed(project.run("backup", env=env), 2, bucket.name, "no Object Lock",
           "aws s3api create-bucket", "--object-lock-enabled-for-bucket")
    failed(project.run("backups", env=env), 2, "--object-lock-enabled-for-bucket")
    assert bucket.objects() == before


def test_a_migrate_with_nothing_to_back_up_is_refused_too(project, bucket):
    """A migrate of a database that does not exist yet writes only its audit event (which may
    not fail a run): the bucket is still refused before the database is created."""
    before = bucket.objects()
    failed(project.run("migrate", env=bucket.env(BACKUP_S3_OBJECT_LOCK="35d")), 2,
           bucket.name, "no Object Lock", "--object-lock-enabled-for-bucket")
    assert not (project.root / "dev.db").exists()
    assert bucket.objects() == before


def test_a_bad_duration_is_bad_input(project, bucket):
    failed(project.run("backups", env=bucket.env(BACKUP_S3_OBJECT_LOCK="forever")), 2,
           "BACKUP_S3_OBJECT_LOCK", "forever")


def test_every_object_is_put_with_a_retention_and_status_shows_it(project, bucket):
    store = locked(bucket)
    env = store.env(BACKUP_S3_OBJECT_LOCK="2d")
    ok(project.run("migrate", env=env))      # audited: its event is an object too
    ok(project.run("backup", env=env))
    names = store.folder("dev")
    assert any(n.endswith(".zst") for n in names) and any(n.endswith(".audit.json")
                                                          for n in names)
    for name in names:
        head = store.head(store.key("dev", name))
        assert head["ObjectLockMode"] == "GOVERNANCE", name
        ahead = head["ObjectLockRetainUntilDate"] - datetime.now(UTC)
        assert timedelta(days=1) < ahead <= timedelta(days=2), (name, ahead)
    status = ok(project.run("status", env=env)).stdout
    assert "S3 Object Lock, 2d per object (GOVERNANCE mode)" in status


def test_a_rewritten_manifest_is_a_new_version_and_the_newest_is_read(project, bucket):
    store = locked(bucket)
    env = store.env(BACKUP_S3_OBJECT_LOCK="1d")
    ok(project.run("migrate", env=env))
    ok(project.run("backup", env=env))
    [item] = listed(project, store, BACKUP_S3_OBJECT_LOCK="1d")
    key = store.key("dev", f"{item['id']}.manifest.json")
    ok(project.run("verify", env=env))
    versions = [v for v in store.client.list_object_versions(
        Bucket=store.name, Prefix=key)["Versions"] if v["Key"] == key]
    assert len(versions) == 2
    [again] = listed(project, store, BACKUP_S3_OBJECT_LOCK="1d")
    assert again["verified_at"] >= item["verified_at"]
    assert again["verified_at"] == store.manifest("dev", item["id"])["verified_at"]


def test_prune_keeps_an_object_under_retention_and_deletes_it_once_it_has_passed(project,
                                                                                  bucket):
    store = locked(bucket)
    env = store.env(BACKUP_S3_OBJECT_LOCK="120s", BACKUP_KEEP_LAST="1")
    ok(project.run("migrate", env=env))
    ok(project.run("backup", env=env))
    ok(project.run("backup", env=env))
    older = listed(project, store, BACKUP_S3_OBJECT_LOCK="120s")[1]
    before = store.folder("dev")
    result = ok(project.run("prune", env=env))
    assert f"Keeping {older['id']}" in result.stdout and "retention until" in result.stdout, \
        shown(result)
    assert store.folder("dev") == before
    # Wait the retention out: until the newest retain-until date of the older backup passes.
    until = max(store.head(store.key("dev", n))["ObjectLockRetainUntilDate"]
                for n in before if n.startswith(older["id"]))
    while datetime.now(UTC) <= until + timedelta(seconds=1):
        time.sleep(0.5)
    result = ok(project.run("prune", env=env))
    assert f"Deleting {older['id']}" in result.stdout, shown(result)
    left = store.folder("dev")
    assert not [n for n in left if n.startswith(older["id"])]
    versions = store.client.list_object_versions(Bucket=store.name,
                                                 Prefix=store.key("dev", older["id"]))
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")
