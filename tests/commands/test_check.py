"""End to end for `invoke check`: the monitoring-plugin status (exit 0 OK, 1 WARNING, 2 CRITICAL,
3 UNKNOWN, one status line first) and the node_exporter textfile, run as cron or Nagios runs it.

Each test builds a real state (a migrated SQLite file, real backups, a real failed migrate, a
real PostgreSQL server or S3 endpoint) and asserts on the exit code, the first line and the
line of the check concerned. A backup is made to look old by moving its manifest's
`created_at` back, which is exactly what `check` reads; nothing sleeps.
"""
from __future__ import annotations

import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from check_output import CRITICAL, OK, UNKNOWN, WARNING, backed_up, checked, line_of, state_of
from conftest import Bucket
from helpers import (FIRST, HEAD, add_revision, audit_events, edit_manifest,
                     free_port, pg_env, read_manifest, shown)

pytestmark = pytest.mark.usefixtures("no_ambient_aws")


FAILING = "0badc0ffee01"   # a revision after HEAD whose upgrade fails


def add_failing_revision(project):
    return add_revision(project, FAILING, HEAD,
                        'raise RuntimeError("the migration failed on purpose")',
                        message="Fail on purpose", slug="fail")


# -- helpers ---------------------------------------------------------------------------------


def age_manifest(project, item: dict, age: timedelta, env_name: str = "dev") -> str:
    """Move a local backup's created_at `age` into the past; returns the new value."""
    created_at = (datetime.now(UTC) - age).isoformat(timespec="milliseconds")
    return edit_manifest(project, item["id"], env_name, created_at=created_at)["created_at"]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file under `root`: bytes, mode and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


# -- the backup checks ------------------------------------------------------------------------


def test_no_backup_is_critical(project):
    assert project.run("migrate").returncode == 0  # from nothing: there was nothing to back up
    assert project.backups() == []
    lines = checked(project.run("check"), CRITICAL)
    assert "no verified backup" in lines[0]
    assert state_of(lines, "backup") == "CRITICAL"
    assert state_of(lines, "database") == "OK" and HEAD in line_of(lines, "database")


def test_after_a_backup_everything_is_ok(project):
    item = backed_up(project)
    lines = checked(project.run("check"), OK)
    summary, perfdata = lines[0].split(" | ")
    assert HEAD in summary
    assert "backup_age=" in perfdata and "s;;93600" in perfdata  # the default limit, 26 h
    assert f"backup_size={item['size']}B" in perfdata
    assert item["id"] in line_of(lines, "backup")
    assert {line.split()[0] for line in lines[1:]} == {"OK"}

    report = json.loads(ok_json(project.run("check", "--json"), OK))
    assert report["status"] == "OK" and report["env"] == "dev"
    names = [c["name"] for c in report["checks"]]
    assert {"database", "backup", "pending", "heads", "leftovers", "last_run"} <= set(names)
    assert all(c["state"] == "OK" and c["detail"] for c in report["checks"])
    assert report["last_verified_backup"]["id"] == item["id"]


def ok_json(result, code: int) -> str:
    assert result.returncode == code, shown(result)
    assert "Traceback" not in result.stdout + result.stderr, shown(result)
    return result.stdout


def test_a_backup_older_than_the_limit_is_critical(project):
    item = backed_up(project)
    age_manifest(project, item, timedelta(seconds=2))
    lines = checked(project.run("check", env={"CHECK_BACKUP_MAX_AGE": "1s"}), CRITICAL)
    assert "limit 1s" in line_of(lines, "backup") and item["id"] in lines[0]
    assert re.search(r" \| backup_age=[2-9]s;;1 ", lines[0]), lines[0]
    # The same backup, the same moment, a wider limit: fine.
    checked(project.run("check", env={"CHECK_BACKUP_MAX_AGE": "1h"}), OK)
    # The default limit is 26 hours.
    age_manifest(project, item, timedelta(hours=27))
    lines = checked(project.run("check"), CRITICAL)
    assert "1d3h old (limit 26h)" in line_of(lines, "backup")
    age_manifest(project, item, timedelta(hours=25))
    checked(project.run("check"), OK)


def test_a_backup_whose_artifact_is_gone_does_not_count(project):
    item = backed_up(project)
    Path(item["location"]).unlink()
    lines = checked(project.run("check"), CRITICAL)
    assert "no verified backup" in line_of(lines, "backup")
    assert "artifact" in line_of(lines, "backup")


def test_a_newer_backup_without_its_artifact_warns_while_an_older_one_still_counts(project):
    older = backed_up(project)
    newer = backed_up(project)
    assert newer["id"] != older["id"]
    Path(newer["location"]).unlink()
    lines = checked(project.run("check"), WARNING)
    assert older["id"] in line_of(lines, "backup") and newer["id"] in line_of(lines, "backup")


def test_a_backup_that_failed_verification_warns(project):
    older = backed_up(project)
    newer = backed_up(project)
    Path(newer["location"]).write_bytes(b"damaged")
    assert project.run("verify", f"--backup={newer['id']}").returncode == 4
    lines = checked(project.run("check"), WARNING)
    assert newer["id"] in line_of(lines, "verification")
    assert older["id"] in line_of(lines, "backup") and state_of(lines, "backup") == "OK"


def test_verification_older_than_check_verify_max_age_warns(project):
    item = backed_up(project)
    age_manifest(project, item, timedelta(hours=2))  # created (and verified) two hours ago
    edit_manifest(project, item["id"], verified_at=read_manifest(project, item["id"])["created_at"])
    checked(project.run("check"), OK)  # not set: not checked
    lines = checked(project.run("check", env={"CHECK_VERIFY_MAX_AGE": "1h"}), WARNING)
    assert "limit 1h" in line_of(lines, "verification")
    assert project.run("verify").returncode == 0  # records a fresh verification
    checked(project.run("check", env={"CHECK_VERIFY_MAX_AGE": "1h"}), OK)


# -- migrations, runs and leftovers -----------------------------------------------------------


def test_a_failed_migrate_in_the_audit_warns_until_a_run_succeeds(project):
    backed_up(project)
    failing = add_failing_revision(project)
    assert project.run("migrate").returncode == 5
    lines = checked(project.run("check"), WARNING)
    assert "migrate" in line_of(lines, "last_run") and "failed" in line_of(lines, "last_run")
    assert "failed" in lines[0]
    assert state_of(lines, "pending") == "OK"  # pending outside production is no warning
    failing.unlink()
    assert project.run("rollback").returncode == 0
    lines = checked(project.run("check"), OK)
    assert "rollback" in line_of(lines, "last_run")


def test_pending_migrations_warn_in_production_only(project, keys):
    key = keys("prod")  # production's backups must be encrypted (BACKUP_ENCRYPTION=required)
    for name in ("prod", "staging"):
        project.env_file(name, USE_SQLITE="True", SQLITE_PATH=f"{name}.db",
                         BACKUP_ENCRYPTION_RECIPIENTS=key.recipient,
                         BACKUP_ENCRYPTION_IDENTITY_FILE=str(key.path))
        assert project.run("migrate", f"--env={name}", f"--revision={FIRST}",
                           "--break-glass=test set-up").returncode == 0
        assert project.run("backup", f"--env={name}").returncode == 0
    lines = checked(project.run("check", "--env=prod"), WARNING)
    assert HEAD in line_of(lines, "pending") and "production" in lines[0]
    lines = checked(project.run("check", "--env=staging"), OK)
    assert HEAD in line_of(lines, "pending")


def test_several_heads_warn(project):
    backed_up(project)
    add_revision(project, "0b2a2c4e0001", FIRST, "pass",
                 message="A second branch from the first revision", slug="branch")
    lines = checked(project.run("check"), WARNING)
    assert "0b2a2c4e0001" in line_of(lines, "heads") and "invoke merge" in line_of(lines, "heads")
    assert "heads=2" in lines[0] and "pending=" not in lines[0]  # unknown, not 0


def test_a_leftover_partial_file_warns_but_one_being_written_does_not(project):
    backed_up(project)
    partial = project.root / "backups" / "dev" / ".20240101T000000.000Z-abcdef.sqlite3.zst.partial"
    partial.write_bytes(b"half a backup")
    lines = checked(project.run("check"), OK)  # written to just now: a backup in progress
    assert partial.name in line_of(lines, "leftovers")
    an_hour_ago = time.time() - 3600
    os.utime(partial, (an_hour_ago, an_hour_ago))
    # An hour old but held under its writer's flock: a long backup still being written.
    import fcntl
    fd = os.open(partial, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lines = checked(project.run("check"), OK)
        assert partial.name in line_of(lines, "leftovers")
    finally:
        os.close(fd)
    lines = checked(project.run("check"), WARNING)  # nobody holds it: abandoned
    assert partial.name in line_of(lines, "leftovers") and "interrupted" in lines[0]


# -- bad settings -----------------------------------------------------------------------------


def test_a_malformed_duration_is_unknown(project, tmp_path):
    backed_up(project)
    textfile = tmp_path / "mida.prom"
    result = project.run("check", f"--prometheus={textfile}",
                         env={"CHECK_BACKUP_MAX_AGE": "a day"})
    lines = checked(result, UNKNOWN)
    assert len(lines) == 1 and "CHECK_BACKUP_MAX_AGE" in lines[0] and "26h" in lines[0]
    # The textfile says so too, so an alert on the check's state fires.
    state = metric_samples(textfile)["mida_db_check_state"]
    assert state == {(("env", "dev"),): 3.0}
    lines = checked(project.run("check", env={"CHECK_VERIFY_MAX_AGE": "-1h"}), UNKNOWN)
    assert "CHECK_VERIFY_MAX_AGE" in lines[0]


def test_an_unknown_env_is_unknown(project):
    backed_up(project)
    lines = checked(project.run("check", "--env=prdo"), UNKNOWN)
    assert len(lines) == 1 and "prdo" in lines[0] and "dev" in lines[0]
    report = json.loads(ok_json(project.run("check", "--env=prdo", "--json"), UNKNOWN))
    assert report["status"] == "UNKNOWN" and "prdo" in report["summary"]


def test_an_unexpected_error_is_unknown_in_one_line(project):
    backed_up(project)
    # A revision that revises one that is nowhere: Alembic itself fails, with a KeyError.
    (project.root / "alembic" / "versions" / "0bad5ca1e001_broken.py").write_text(
        'revision = "0bad5ca1e001"\ndown_revision = "123456789abc"\n')
    lines = checked(project.run("check"), UNKNOWN)
    assert len(lines) == 1 and "unexpected error" in lines[0] and "KeyError" in lines[0]


def test_a_revision_file_that_does_not_parse_is_unknown_naming_file_and_line(project):
    backed_up(project)
    (project.root / "alembic" / "versions" / "0bad5ca1e001_broken.py").write_text(
        'revision = "0bad5ca1e001"\ndown_revision = (\n')
    lines = checked(project.run("check"), UNKNOWN)
    assert len(lines) == 1 and lines[0].startswith(
        "UNKNOWN: revision file alembic/versions/0bad5ca1e001_broken.py line 2 cannot be "
        "loaded: '(' was never closed"), lines


# -- the textfile -----------------------------------------------------------------------------


def metric_samples(path: Path) -> dict[str, dict[tuple, float]]:
    """{metric: {sorted labels: value}}, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_the_textfile_holds_what_a_dashboard_and_an_alert_need(project, tmp_path):
    item = backed_up(project)  # the migrate from nothing is audited as succeeded
    [event] = audit_events(project.store("dev"))
    folder = tmp_path / "textfiles"
    folder.mkdir()
    textfile = folder / "mida_db.prom"
    lines = checked(project.run("check", f"--prometheus={textfile}"), OK)
    assert len(lines) > 1
    assert [p.name for p in folder.iterdir()] == ["mida_db.prom"]  # no temp file left behind
    samples = metric_samples(textfile)
    dev = (("env", "dev"),)
    created = datetime.fromisoformat(item["created_at"]).timestamp()
    assert samples["mida_db_last_verified_backup_timestamp_seconds"] == {dev: created}
    assert samples["mida_db_last_verified_backup_size_bytes"] == {dev: float(item["size"])}
    assert samples["mida_db_pending_migrations"] == {dev: 0.0}
    assert samples["mida_db_check_state"] == {dev: 0.0}
    assert samples["mida_db_up"] == {dev: 1.0}
    migrate = (("action", "migrate"), ("env", "dev"))
    assert samples["mida_db_last_run_success"] == {migrate: 1.0}
    assert samples["mida_db_last_run_timestamp_seconds"] == {
        migrate: datetime.fromisoformat(event["at"]).timestamp()}

    # A failed restore shows up as such, and the state follows the check. (One byte flipped,
    # the size kept: an artifact of the wrong size is passed over by restore's default.)
    artifact = Path(item["location"])
    damaged = bytearray(artifact.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    artifact.write_bytes(bytes(damaged))
    assert project.run("restore", "--yes").returncode == 4
    checked(project.run("check", f"--prometheus={textfile}"), CRITICAL)
    samples = metric_samples(textfile)
    restore = (("action", "restore"), ("env", "dev"))
    assert samples["mida_db_last_run_success"][restore] == 0.0
    assert samples["mida_db_last_run_success"][migrate] == 1.0
    assert samples["mida_db_check_state"] == {dev: 2.0}
    # No verified backup is a timestamp of 0, so "older than 26 h" covers "none at all".
    assert samples["mida_db_last_verified_backup_timestamp_seconds"] == {dev: 0.0}


# -- check changes nothing --------------------------------------------------------------------


def test_check_never_changes_anything(project, tmp_path):
    # Nothing yet: no database file is created, no backup folder, no audit event.
    checked(project.run("check"), CRITICAL)
    assert not (project.root / "dev.db").exists()
    assert not (project.root / "backups" / "dev").exists()
    # A migrated database with a backup, a failed run and a leftover: every byte stays.
    backed_up(project)
    add_failing_revision(project)
    assert project.run("migrate").returncode == 5
    before = snapshot(project.root / "backups"), snapshot_db(project)
    checked(project.run("check", f"--prometheus={tmp_path / 'm.prom'}"), WARNING)
    assert json.loads(ok_json(project.run("check", "--json"), WARNING))["status"] == "WARNING"
    assert (snapshot(project.root / "backups"), snapshot_db(project)) == before


def snapshot_db(project) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in project.root.glob("dev.db*")}


# -- PostgreSQL ---------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_unreachable_is_critical(project, pg_database):
    backed_up(project, pg_env(pg_database), "pgtest")
    checked(project.run("check", env=pg_env(pg_database)), OK)
    lines = checked(project.run("check", env=pg_env(pg_database, POSTGRES_PORT=str(free_port()))),
                    CRITICAL)
    assert state_of(lines, "database") == "CRITICAL"
    assert "cannot connect" in line_of(lines, "database") and "database" in lines[0]
    assert state_of(lines, "backup") == "OK"  # the backups are still there and say so


@pytest.mark.postgres
def test_postgres_leftover_databases_warn(project, pg_database):
    from sqlalchemy import text

    env = pg_env(pg_database)
    backed_up(project, env, "pgtest")
    checked(project.run("check", env=env), OK)
    leftover = f"{pg_database.name}__restoring_20240101000000123"
    with pg_database.admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{leftover}" OWNER "{pg_database.role}"'))
    try:
        lines = checked(project.run("check", env=env), WARNING)
        assert leftover in line_of(lines, "leftovers") and "dropdb" in line_of(lines, "leftovers")
    finally:
        with pg_database.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{leftover}"'))
    checked(project.run("check", env=env), OK)


# -- S3 -------------------------------------------------------------------------------------------


def test_s3_with_the_object_gone_is_critical(project, bucket: Bucket):
    env = bucket.env()
    item = backed_up(project, env)
    lines = checked(project.run("check", env=env), OK)
    assert item["id"] in line_of(lines, "backup")
    [artifact] = [n for n in bucket.folder("dev") if n.endswith(".zst")]
    bucket.client.delete_object(Bucket=bucket.name, Key=bucket.key("dev", artifact))
    lines = checked(project.run("check", env=env), CRITICAL)
    assert "no verified backup" in line_of(lines, "backup")


def test_a_restore_intent_record_left_in_the_store_warns_until_it_is_gone(project):
    """A record a restore cut short at its swap left (one that cannot be read counts too: it
    is named, not skipped); the restore itself is e2e in test_restore_crash_e2e.py."""
    backed_up(project)
    record = project.store("dev") / "20260101T000000000000Z-0badc0de.restore-intent.json"
    record.write_text("{not json")
    lines = checked(project.run("check"), WARNING)
    assert record.name in line_of(lines, "interrupted_restore")
    assert state_of(lines, "interrupted_restore") == "WARNING"
    record.unlink()
    lines = checked(project.run("check"), OK)
    assert "no restore left unfinished" in line_of(lines, "interrupted_restore")
