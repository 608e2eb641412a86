"""app.ops.commands.evidence: the period, the RPO stretches and the verdicts, from given facts."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.ops.catalog.drill_records import DrillRecord
from app.ops.errors import ConfigError
from app.ops.commands.evidence import _rto, encryption_of, period_start, rpo_stretches
from app.ops.catalog.manifest import BackupManifest, iso
from app.settings import load_settings

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def manifest(at: datetime, verified=True, present=True, n=0) -> BackupManifest:
    m = BackupManifest(id=f"{at:%Y%m%dT%H%M%S}.000Z-00000{n}", env="dev", engine="sqlite",
                       database="sqlite:///x", created_at=iso(at), revision=None, size=10,
                       raw_size=10, sha256="0" * 64, artifact="a", location="/x", format="sqlite",
                       reason="on demand", verified=verified)
    m.stored_size = 10 if present else None
    return m


def test_since_is_a_duration_or_a_date():
    assert period_start(None, NOW) == NOW - timedelta(days=90)
    assert period_start("12h", NOW) == NOW - timedelta(hours=12)
    assert period_start("2026-03-01", NOW) == datetime(2026, 3, 1, tzinfo=UTC)
    for bad in ("soon", "2027-01-01"):
        with pytest.raises(ConfigError):
            period_start(bad, NOW)


def test_the_rpo_counts_only_verified_backups_whose_artifact_is_present():
    start = NOW - timedelta(hours=30)
    backups = [manifest(NOW - timedelta(hours=40), n=1),            # before the period
               manifest(NOW - timedelta(hours=20), verified=False, n=2),
               manifest(NOW - timedelta(hours=10), present=False, n=3),
               manifest(NOW - timedelta(hours=5), n=4)]
    stretches = rpo_stretches(backups, start, NOW)
    assert [(s.after, s.before, s.seconds / 3600) for s in stretches] == [
        (backups[0].id, backups[3].id, 35.0), (backups[3].id, None, 5.0)]


def test_no_successful_drill_is_no_rto_evidence():
    settings = load_settings("dev", environ={})
    failed = DrillRecord("restore-test", "dev", iso(NOW), "b", 3.0, "failed")
    assert _rto(settings, [failed])["met"] is False
    done = DrillRecord("restore", "dev", iso(NOW), "b", 9.0, "succeeded", [], 2.0)
    verdict = _rto(settings, [failed, done])
    assert verdict["met"] is True and verdict["achieved_seconds"] == 2.0  # to service


@pytest.mark.parametrize("recorded, location, setting, expected", [
    ("AES256", "s3://b/dev/a", None, "sse"),        # what S3 reported, whatever the setting now
    ("aws:kms", "s3://b/dev/a", None, "sse"),
    ("none", "s3://b/dev/a", "AES256", "none"),     # stored before SSE was set: not encrypted
    (None, "s3://b/dev/a", "AES256", "sse"),        # a manifest from before the record
    (None, "s3://b/dev/a", None, "none"),
    (None, "/backups/dev/a", "AES256", "none"),     # a local file
])
def test_encryption_is_what_the_manifest_recorded_from_s3(recorded, location, setting, expected):
    m = manifest(NOW)
    m.location, m.sse = location, recorded
    environ = {"BACKUP_S3_SSE": setting} if setting else {}
    assert encryption_of(m, load_settings("dev", environ=environ)) == expected
    m.encryption = "age"  # client-side encryption is named first
    assert encryption_of(m, load_settings("dev", environ=environ)) == "age"
