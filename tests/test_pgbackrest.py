"""app.ops.pgbackrest without a cluster: the preflight's own decisions (which pgbackrest can be
run, which is too old, what a wrong OS user looks like, PGBACKREST_MAX_READY). Real child
processes stand in for pgbackrest where the decision is about running one; the end-to-end
tests with a real cluster are in test_pgbackrest_e2e.py."""
from __future__ import annotations

import pytest

from app.ops.errors import BackupFailed, ConfigError
from app.ops.pgbackrest import DEFAULT_MAX_READY, PgBackRest, max_ready_of
from app.settings import load_settings

PG_URL = "postgresql+psycopg2://mida:secret@127.0.0.1:5432/mida"


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
    # Any other failure stays a failure of the command (exit 4), not configuration.
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


def test_max_ready_is_a_count_of_segments(tmp_path):
    assert max_ready_of(settings(tmp_path)) == DEFAULT_MAX_READY
    assert max_ready_of(settings(tmp_path, PGBACKREST_MAX_READY="0")) == 0
    assert max_ready_of(settings(tmp_path, PGBACKREST_MAX_READY="500")) == 500
    for bad in ("-1", "lots", "1.5", " "):
        with pytest.raises(ConfigError, match="PGBACKREST_MAX_READY .* is not a number of WAL"):
            max_ready_of(settings(tmp_path, PGBACKREST_MAX_READY=bad))
