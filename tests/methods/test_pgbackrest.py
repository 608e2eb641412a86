"""app.ops.methods.pgbackrest.command without a cluster: the preflight's own decisions (which pgbackrest can be
run, which is too old, what a wrong OS user looks like, PGBACKREST_MAX_READY). Real child
processes stand in for pgbackrest where the decision is about running one; the end-to-end
tests with a real cluster are in test_pgbackrest_e2e.py."""
from __future__ import annotations

import json

import pytest

from app.ops.errors import BackupFailed, ConfigError, TransferFailed
from app.ops.catalog.manifest import BackupManifest
from app.ops.methods.pgbackrest.archiver import DEFAULT_MAX_READY, max_ready_of
from app.ops.methods.pgbackrest.command import PgBackRest
from app.ops.methods.pgbackrest.verify import (problems_for, read_verify_output,
                                       verify_restore_point)
from app.ops.methods.pgbackrest.point_in_time import restore_timeout
from app.settings import load_settings
from helpers import PG_URL


def fake(script: str, timeout: float = 5) -> PgBackRest:
    """A pgbackrest that is a shell script (its arguments are $0, $1, ...)."""
    return PgBackRest(["sh", "-c", script], "mida", None, timeout)


def settings(tmp_path, **environ: str):
    return load_settings("dev", environ={"DATABASE_URL": PG_URL, "BACKUP_METHOD": "pgbackrest",
                                         "PGBACKREST_STANZA": "mida", **environ}, root=tmp_path)


def test_a_new_enough_pgbackrest_passes_and_its_version_is_returned():
    assert fake('echo "pgBackRest 2.45"').check_version() == "2.45"
    assert fake('echo "pgBackRest 3.0"').check_version() == "3.0"
    assert fake('echo "pgBackRest 2.39"').check_version() == "2.39"


def test_an_older_pgbackrest_is_configuration_naming_both_versions():
    with pytest.raises(ConfigError, match=r"pgBackRest 2\.38 .* is too old: .* 2\.39 or newer"):
        fake('echo "pgBackRest 2.38"').check_version()
    with pytest.raises(ConfigError, match=r"pgBackRest 1\.29 .* is too old"):
        fake('echo "pgBackRest 1.29"').check_version()


def test_a_pgbackrest_that_cannot_be_run_is_configuration_with_the_wrappers_words():
    # Missing outright: the OS says so.
    with pytest.raises(ConfigError, match="cannot run /nonexistent/pgbackrest: install"):
        PgBackRest(["/nonexistent/pgbackrest"], "mida", None, 5).check_version()
    # Behind a wrapper (sudo, runuser, env): the wrapper's own last line, and what to set.
    with pytest.raises(ConfigError, match=r"cannot run pgbackrest through PGBACKREST_COMMAND "
                                          r"\(`env /nonexistent/pgbackrest`\): .*No such file"):
        PgBackRest(["env", "/nonexistent/pgbackrest"], "mida", None, 5).check_version()
    # Something else that answers without a pgBackRest version.
    with pytest.raises(ConfigError, match="cannot run pgbackrest through PGBACKREST_COMMAND"):
        fake("echo hello").check_version()


def test_a_hanging_pgbackrest_version_ends_with_our_timeout():
    with pytest.raises(BackupFailed, match=r"pgbackrest version did not finish within 0\.5 s "
                                           r"\(PGBACKREST_TIMEOUT\)"):
        fake("sleep 30", timeout=0.5).check_version()


def test_permission_denied_is_worded_as_the_wrong_os_user():
    # What pgBackRest 2.45 says, run as `nobody`, on a repository owned by postgres.
    failing = fake(
        "echo \"ERROR: [050]: unable to acquire lock on file '/repo/lock/mida-backup.lock': "
        "Permission denied\" >&2; exit 50")
    with pytest.raises(ConfigError, match=r"pgbackrest may not use its own files .*Permission "
                                          r"denied.*another OS user.*sudo -u postgres"):
        failing.run("--type=incr", "backup")
    # Any other failure stays a failure of the command (exit 4), not configuration; so does
    # PostgreSQL refusing a function to the role pgbackrest connects as (a grant, not a user).
    with pytest.raises(BackupFailed, match=r"exit 57\): .*permission denied for function"):
        fake("echo 'ERROR: [057]: unable to execute query: ERROR:  permission denied for "
             "function pg_backup_start' >&2; exit 57").run("backup")
    with pytest.raises(BackupFailed, match=r"pgbackrest backup failed \(exit 3\): disk full"):
        fake("echo 'disk full' >&2; exit 3").run("backup")


def test_info_with_a_denied_repository_is_the_wrong_os_user(tmp_path):
    # `pgbackrest info --output=json` of pgBackRest 2.45 run as `nobody`: the cause is only in
    # the repository's status.
    denied = tmp_path / "denied.json"
    denied.write_text(
        '[{"archive":[],"backup":[],"name":"mida","repo":[{"key":1,"status":{"code":99,'
        '"message":"[PathOpenError] unable to list file info for path \'/r/backup\': [13] '
        'Permission denied"}}],"status":{"code":99,"message":"other"}}]')
    with pytest.raises(ConfigError, match=r"may not use its own files \(other: \[PathOpenError\]"):
        fake(f"cat {denied}").info()
    missing = tmp_path / "missing.json"
    missing.write_text('[{"name":"mida","status":{"code":2,"message":"missing stanza path"}}]')
    with pytest.raises(BackupFailed, match="stanza 'mida' is not usable: missing stanza path;"):
        fake(f"cat {missing}").info()


def test_the_restore_timeout_is_a_positive_number_of_seconds(tmp_path):
    assert restore_timeout(settings(tmp_path)) == 3600
    assert restore_timeout(settings(tmp_path, PGBACKREST_RESTORE_TIMEOUT="90s")) == 90
    # 0 or less would time out the stop command at once, with the cluster halfway down.
    for bad in ("0", "-5", "soon"):
        with pytest.raises(ConfigError, match="PGBACKREST_RESTORE_TIMEOUT .* is not a number of "
                                              "seconds: use e.g. 3600"):
            restore_timeout(settings(tmp_path, PGBACKREST_RESTORE_TIMEOUT=bad))


def test_max_ready_is_a_count_of_segments(tmp_path):
    assert max_ready_of(settings(tmp_path)) == DEFAULT_MAX_READY
    assert max_ready_of(settings(tmp_path, PGBACKREST_MAX_READY="0")) == 0
    assert max_ready_of(settings(tmp_path, PGBACKREST_MAX_READY="500")) == 500
    for bad in ("-1", "lots", "1.5", " "):
        with pytest.raises(ConfigError, match="PGBACKREST_MAX_READY .* is not a number of WAL"):
            max_ready_of(settings(tmp_path, PGBACKREST_MAX_READY=bad))


# `pgbackrest --output=text --verbose --log-level-console=detail verify` of pgBackRest 2.45 on a
# repository with segment 4 unreadable, segment 5 holding another segment's bytes, segment 3
# deleted (a gap) and one file of the full backup damaged. It exited 0.
DAMAGED = """\
2026-12-01 11:57:04.906 P01   INFO: invalid result 15-1/0000000100000000/000000010000000000000004-21a4f1f2a3d5e61b11f36d3056f30a03e7ee1089.lz4: [29] raised from local-1 protocol: lz4 error: [-16] ERROR_decompressionFailed
                                    [FormatError] on retry after 0ms
                                    [FormatError] on retry after 15000ms
2026-12-01 11:57:04.960 P01   INFO: invalid checksum '15-1/0000000100000000/000000010000000000000005-6a1c0af9aa89a2e30c64e0049faa573bc2cc4e3d.lz4'
2026-12-01 11:57:04.960 P01   INFO: invalid checksum '20261201-114349F/pg_data/base/1/1247.lz4'
2026-12-01 11:57:05.010 P00 DETAIL: archiveId: 15-1, wal start: 000000010000000000000001, wal stop: 000000010000000000000002
2026-12-01 11:57:05.010 P00 DETAIL: archiveId: 15-1, wal start: 000000010000000000000004, wal stop: 000000010000000000000005
2026-12-01 11:57:05.010 P00   INFO: stanza: mida
                                    status: error
                                      archiveId: 15-1, total WAL checked: 4, total valid WAL: 2
                                        missing: 0, checksum invalid: 1, size invalid: 0, other: 1
                                      backup: 20261201-114349F, status: invalid, total files checked: 964, total valid files: 963
                                        missing: 0, checksum invalid: 1, size invalid: 0, other: 0
stanza: mida
status: error
  archiveId: 15-1, total WAL checked: 4, total valid WAL: 2
    missing: 0, checksum invalid: 1, size invalid: 0, other: 1
  backup: 20261201-114349F, status: invalid, total files checked: 964, total valid files: 963
    missing: 0, checksum invalid: 1, size invalid: 0, other: 0
"""
INTACT = """\
2026-12-01 11:44:20.100 P00 DETAIL: archiveId: 15-1, wal start: 000000010000000000000001, wal stop: 000000010000000000000005
stanza: mida
status: ok
  archiveId: 15-1, total WAL checked: 5, total valid WAL: 5
    missing: 0, checksum invalid: 0, size invalid: 0, other: 0
  backup: 20261201-114349F, status: valid, total files checked: 964, total valid files: 964
    missing: 0, checksum invalid: 0, size invalid: 0, other: 0
"""
FULL = "20261201-114349F"
SEG = "0000000100000000000000%02X"


def test_verify_output_is_read_file_by_file():
    report = read_verify_output(DAMAGED)
    assert report.status == "error"
    assert sorted(report.invalid_wal) == [SEG % 4, SEG % 5]
    assert report.invalid_wal[SEG % 5].startswith("invalid checksum '15-1/")
    assert report.invalid_wal[SEG % 4].startswith("invalid result 15-1/")
    assert list(report.invalid_backups) == [FULL]
    assert report.backup_status == {FULL: "invalid"}
    assert report.wal_ranges == [(SEG % 1, SEG % 2), (SEG % 4, SEG % 5)]
    intact = read_verify_output(INTACT)
    assert (intact.status, intact.invalid_wal, intact.invalid_backups) == ("ok", {}, {})
    assert intact.backup_status == {FULL: "valid"}


def test_only_what_the_restore_point_needs_fails_it():
    intact = read_verify_output(INTACT)
    assert problems_for(intact, [FULL], SEG % 2, SEG % 5) == []
    damaged = read_verify_output(DAMAGED)
    # Its backup, the gap at 3, and segments 4 and 5 when the restore point is in 5.
    found = problems_for(damaged, [FULL], SEG % 2, SEG % 5)
    assert [f.split(":")[0] for f in found] == [f"WAL segment {SEG % 4}", f"WAL segment {SEG % 5}",
                                                f"backup {FULL}", "the archive has no continuous WAL from "
                                                f"{SEG % 2} to {SEG % 5} (ranges"], found
    # A restore point that needs neither the damaged backup nor that WAL is still reachable,
    # although verify's status is "error" for the repository as a whole.
    later = "20261201-120000F"
    damaged.backup_status[later] = "valid"
    assert problems_for(damaged, [later], SEG % 1, SEG % 2) == []
    # An incremental backup needs the full one it references.
    incr = f"{FULL}_20261201-120500I"
    damaged.backup_status[incr] = "valid"
    assert problems_for(damaged, [incr, FULL], SEG % 1, SEG % 2) == [
        f"backup {FULL}: invalid checksum '{FULL}/pg_data/base/1/1247.lz4'"]
    # A backup verify did not check at all is not taken as intact.
    assert problems_for(damaged, ["20261201-130000F"], SEG % 1, SEG % 2) == [
        "backup 20261201-130000F: not among the backups verify checked"]
    # Another timeline's damaged segment is not this restore point's.
    assert problems_for(damaged, [later], "000000020000000000000004",
                        "000000020000000000000005")[:1] == [
        "the archive has no continuous WAL from 000000020000000000000004 to "
        "000000020000000000000005 (ranges: 000000010000000000000001..000000010000000000000002, "
        "000000010000000000000004..000000010000000000000005)"]


def test_an_error_verify_ties_to_no_file_fails_closed():
    unusable = "stanza: mida\nstatus: error\n  No usable backup.info file\n" \
               "2026-12-01 11:57:04.906 P00   WARN: unable to open missing file 'backup.info'\n"
    [found] = problems_for(read_verify_output(unusable), [FULL], SEG % 2, SEG % 5)
    assert found == ("verify says status error without naming a file: unable to open missing "
                     "file 'backup.info'")


def a_restore_point(segment: str = SEG % 5, label: str = FULL):
    return BackupManifest(
        id="20261201T120000.000Z-abcdef", env="dev", engine="postgresql", database=PG_URL,
        created_at="2026-12-01T12:00:00+00:00", revision=None, size=0, raw_size=0, sha256="",
        artifact="", location="pgBackRest", format="pgbackrest-restore-point", reason="on demand",
        method="pgbackrest",
        pgbackrest={"stanza": "mida", "restore_point": "on-demand-x", "lsn": "0/5000028",
                    "segment": segment, "timeline": 1, "backup_label": label})


def scripted_pgbackrest(tmp_path, verify: str) -> str:
    """A PGBACKREST_COMMAND that answers version and info like 2.45 and verify with `verify`
    (a shell command)."""
    info = tmp_path / "info.json"
    info.write_text(json.dumps([{"name": "mida", "status": {"code": 0, "message": "ok"},
                                 "backup": [{"label": FULL, "archive": {"start": SEG % 2}}],
                                 "archive": [{"min": SEG % 1, "max": SEG % 5}]}]))
    script = tmp_path / "pgbackrest"
    script.write_text(f'#!/bin/sh\ncase "$*" in\n  *version*) echo "pgBackRest 2.45";;\n'
                      f'  *verify) {verify};;\n  *info) cat {info};;\nesac\n')
    script.chmod(0o755)
    return str(script)


def test_verify_restore_point_runs_pgbackrest_verify_and_fails_on_what_it_needs(tmp_path):
    (tmp_path / "damaged.txt").write_text(DAMAGED)
    (tmp_path / "intact.txt").write_text(INTACT)
    intact = settings(tmp_path, PGBACKREST_COMMAND=scripted_pgbackrest(
        tmp_path, f"cat {tmp_path / 'intact.txt'}"))
    verify_restore_point(intact, a_restore_point())
    damaged = settings(tmp_path, PGBACKREST_COMMAND=scripted_pgbackrest(
        tmp_path, f"cat {tmp_path / 'damaged.txt'}"))
    with pytest.raises(BackupFailed, match=rf"pgbackrest verify finds what restore point "
                                           rf"on-demand-x needs damaged: WAL segment {SEG % 4}"):
        verify_restore_point(damaged, a_restore_point())


def test_a_verify_that_does_not_finish_in_time_says_nothing_about_the_backup(tmp_path):
    slow = settings(tmp_path, PGBACKREST_VERIFY_TIMEOUT="0.5",
                    PGBACKREST_COMMAND=scripted_pgbackrest(tmp_path, "sleep 30"))
    with pytest.raises(TransferFailed, match=r"pgbackrest verify did not finish within 0\.5 s "
                                             r"\(PGBACKREST_VERIFY_TIMEOUT\)"):
        verify_restore_point(slow, a_restore_point())
    silent = settings(tmp_path, PGBACKREST_COMMAND=scripted_pgbackrest(tmp_path, "true"))
    with pytest.raises(ConfigError, match="pgbackrest verify printed no status line"):
        verify_restore_point(silent, a_restore_point())
    with pytest.raises(ConfigError, match="PGBACKREST_VERIFY_TIMEOUT 'soon' is not a number"):
        verify_restore_point(settings(tmp_path, PGBACKREST_VERIFY_TIMEOUT="soon"),
                             a_restore_point())
