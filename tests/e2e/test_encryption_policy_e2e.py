"""BACKUP_ENCRYPTION end to end: production refuses a run whose backup would rest unencrypted
(exit 3, before the lock, the backup and any audit), `optional` lets it through audited and with
a `check` warning, S3 server-side encryption passes, and restore is never refused: without a
way to encrypt its safety backup it writes none and keeps the old database instead."""
from __future__ import annotations

import json

import pytest

from helpers import (FIRST, prod_at_first, HEAD, audit_events, derived_databases, failed, insert_users, ok,
                     open_window, pg_env, pg_state, sealed, shown, sql_in, sqlite_state)


def test_production_without_encryption_refuses_migrate_before_anything(project):
    db = prod_at_first(project)
    before = sqlite_state(db)
    error = failed(project.run("migrate", "--env=prod"), 3, "BACKUP_ENCRYPTION",
                   "unencrypted", "BACKUP_ENCRYPTION_RECIPIENTS", "age-keygen",
                   "BACKUP_ENCRYPTION=optional")
    assert "BACKUP_S3_SSE" not in error  # local storage: SSE is no way out here
    assert sqlite_state(db) == before
    assert not project.store("prod").exists()       # no backup, no audit event
    assert not (project.root / "prod.db.lock").exists()  # the lock was never taken
    failed(project.run("backup", "--env=prod"), 3, "BACKUP_ENCRYPTION_RECIPIENTS")
    assert not project.store("prod").exists()


def test_optional_in_production_is_audited_per_backup_and_makes_check_warn(project):
    db = prod_at_first(project, BACKUP_ENCRYPTION="optional")
    ok(project.run("migrate", "--env=prod"))
    assert sqlite_state(db)["revision"] == HEAD
    [item] = project.backups("prod")
    [event] = audit_events(project.store("prod"))
    assert (event["action"], event["backup_id"], event["encryption"],
            event["encryption_policy"]) == ("migrate", item["id"], "none", "optional")
    ok(project.run("backup", "--env=prod"))
    on_demand = project.backups("prod")[0]
    [event] = [e for e in audit_events(project.store("prod")) if e["action"] == "backup"]
    assert (event["backup_id"], event["outcome"], event["encryption_policy"]) == \
        (on_demand["id"], "stored unencrypted", "optional")
    check = project.run("check", "--env=prod")
    assert check.returncode == 1, shown(check)
    assert check.stdout.startswith("WARNING:")
    assert "WARNING encryption:" in check.stdout and "BACKUP_ENCRYPTION=optional" in check.stdout


def test_recipients_satisfy_the_policy_and_nothing_is_audited_as_unencrypted(project, keys):
    key = keys("prod")
    db = prod_at_first(project, **sealed(key, identity=key))
    ok(project.run("migrate", "--env=prod"))
    assert sqlite_state(db)["revision"] == HEAD
    [item] = project.backups("prod")
    assert item["id"]
    [event] = audit_events(project.store("prod"))
    assert event["action"] == "migrate" and "encryption_policy" not in event
    check = project.run("check", "--env=prod")
    assert "OK encryption:" in check.stdout, shown(check)


def test_s3_server_side_encryption_passes_the_policy(project, bucket):
    db = prod_at_first(project)
    env = bucket.env(APP_ENV="prod")
    ok(project.run("migrate", "--env=prod", env=env))
    assert sqlite_state(db)["revision"] == HEAD
    names = bucket.folder("prod")
    [artifact] = [n for n in names if n.endswith(".zst")]
    assert bucket.head(bucket.key("prod", artifact))["ServerSideEncryption"] == "AES256"
    # The same bucket without SSE: refused, and nothing new in the bucket.
    env.pop("BACKUP_S3_SSE")
    failed(project.run("backup", "--env=prod", env=env), 3, "BACKUP_S3_SSE",
           "BACKUP_ENCRYPTION_RECIPIENTS")
    assert bucket.folder("prod") == names


def test_restore_is_never_refused_and_keeps_the_old_database_instead(project):
    db = prod_at_first(project, BACKUP_ENCRYPTION="optional")
    ok(project.run("backup", "--env=prod"))
    [item] = project.backups("prod")
    ok(project.run("migrate", "--env=prod"))
    before = sqlite_state(db)
    assert before["revision"] == HEAD
    # Now the policy is required (the default) and nothing can encrypt a safety backup.
    project.env_file("prod", USE_SQLITE="True", MAINTENANCE_WINDOW=open_window())
    result = ok(project.run("restore", "--env=prod", f"--backup={item['id']}", "--yes"))
    assert sqlite_state(db)["revision"] == FIRST
    assert "no safety backup was written" in result.stdout.lower(), shown(result)
    [kept] = [p for p in project.root.glob("prod.db__pre_restore_*")]
    assert kept.name in result.stdout
    assert kept.stat().st_mode & 0o777 == 0o600
    assert sqlite_state(kept) == before     # the only copy of what was there
    listed = project.backups("prod")
    assert not [b for b in listed if b["reason"].startswith("before restore of")]
    [event] = [e for e in audit_events(project.store("prod")) if e["action"] == "restore"]
    assert event["outcome"] == "succeeded"
    assert event["safety_backup_id"] is None
    assert kept.name in event["safety_backup_skipped"]
    assert event["kept_database"] == str(kept)
    json.dumps(event)


@pytest.mark.postgres
def test_postgres_restore_without_a_way_to_encrypt_keeps_the_old_database(project, pgdb):
    db = pgdb
    prod = pg_env(db, APP_ENV="prod", BACKUP_ENCRYPTION="optional")
    ok(project.run("migrate", "--break-glass=set-up", env=prod))
    insert_users(db, ("ada@example.org", None))
    ok(project.run("backup", env=prod))
    backup_id = project.backups("prod", env=prod)[0]["id"]
    wanted = pg_state(db)
    insert_users(db, ("grace@example.org", None))
    replaced = pg_state(db)
    required = {**prod, "BACKUP_ENCRYPTION": "required"}
    result = ok(project.run("restore", f"--backup={backup_id}", "--yes", env=required))
    assert pg_state(db) == wanted
    [kept] = derived_databases(db.admin, db.name, "__pre_restore_")
    assert "no safety backup was written" in result.stdout.lower() and kept in result.stdout
    assert sql_in(kept, "SELECT email FROM users ORDER BY id") == \
        [(row[1],) for row in replaced["users"]]
    assert not [b for b in project.backups("prod", env=prod)
                if b["reason"].startswith("before restore of")]
    [event] = [e for e in audit_events(project.store("prod")) if e["action"] == "restore"]
    assert event["outcome"] == "succeeded" and event["safety_backup_id"] is None
    assert kept in event["safety_backup_skipped"] and event["kept_database"] == kept
