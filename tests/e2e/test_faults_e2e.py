"""End to end with broken client tools: PG_BIN_DIR points at a folder of bash wrappers around the
real pg_dump and pg_restore that fail, truncate, lie about their version, or record how they were
called. Whatever goes wrong with the backup, the database must stay where it was.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_tools import REAL_PG_RESTORE, dump_calls, wrapped_pg_dump
from helpers import (AWKWARD_PASSWORD, FIRST, HEAD, at_first_revision, failed, last_audit, ok,
                     pg_env, without_audit)
from helpers import sealed as age_sealed  # `sealed` is a parameter of a test here

pytestmark = pytest.mark.postgres


# -- helpers ---------------------------------------------------------------------------------


def non_audit_files(project) -> set[str]:
    return without_audit(project.backup_files("pgtest"))


def migrate_with(project, db, bin_dir: Path):
    """`invoke migrate` of `db` with the client tools in `bin_dir`."""
    return project.run("migrate", env=pg_env(db, PG_BIN_DIR=str(bin_dir)))


class Unchanged:
    """What a migrate whose backup failed must leave as it was: the database at FIRST (no
    phone_number), the backups listed, the backup files."""

    def __init__(self, project, db):
        self.project, self.db = project, db
        self.backups = project.backups("pgtest", env=pg_env(db))
        self.files = non_audit_files(project)

    def check(self) -> None:
        assert self.db.revision() == FIRST
        assert "phone_number" not in self.db.columns("users")
        assert self.project.backups("pgtest", env=pg_env(self.db)) == self.backups
        assert non_audit_files(self.project) == self.files  # no new artifact, no `.partial`


@pytest.fixture
def at_first(project, pg_database) -> Unchanged:
    """pg_database at FIRST through the real tools, and what a failed migrate must leave."""
    at_first_revision(project, pg_database)
    return Unchanged(project, pg_database)


# -- the backup fails: nothing is migrated ---------------------------------------------------
def test_pg_dump_failing_stops_the_migration(project, at_first, tmp_path):
    db = at_first.db
    bin_dir = wrapped_pg_dump(tmp_path,
                              'echo "pg_dump: error: connection to server lost" >&2\nexit 1')
    failed(migrate_with(project, db, bin_dir), 4,
           "pg_dump", "connection to server lost")
    assert len(dump_calls(tmp_path)) == 1
    at_first.check()
    audit = last_audit(project.store("pgtest"))
    assert audit["action"] == "migrate" and audit["outcome"] != "succeeded"


def test_a_truncated_dump_that_exits_0_stops_the_migration(project, at_first, tmp_path):
    db = at_first.db
    db.sql("INSERT INTO users (email, hashed_password, full_name) "
           "SELECT 'user' || n || '@example.org', md5(n::text), repeat('name ', 20) "
           "FROM generate_series(1, 500) AS n")
    ok(project.run("backup", env=pg_env(db)))  # real tools: how big a whole dump is
    before = Unchanged(project, db)
    assert before.backups[0]["raw_size"] > 8000  # so 2000 bytes really is a truncation
    bin_dir = wrapped_pg_dump(tmp_path, '"$REAL" "$@" | head -c 2000\nexit 0')
    failed(migrate_with(project, db, bin_dir), 4)
    assert len(dump_calls(tmp_path)) == 1
    before.check()
    assert db.sql("SELECT count(*) FROM users") == [(500,)]


def test_a_pg_dump_older_than_the_server_is_refused_before_anything_runs(project, at_first,
                                                                          tmp_path):
    db = at_first.db
    bin_dir = wrapped_pg_dump(tmp_path, 'exec "$REAL" "$@"', version="9.6.24")
    failed(migrate_with(project, db, bin_dir), 2, "9.6", "15")
    assert dump_calls(tmp_path) == []  # the dump mode never ran
    at_first.check()


def test_pg_dump_missing_from_pg_bin_dir_is_a_configuration_error(project, at_first, tmp_path):
    db = at_first.db
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    failed(project.run("migrate", env=pg_env(db, PG_BIN_DIR=str(empty))), 2, "pg_dump")
    at_first.check()


# -- the password's plumbing -----------------------------------------------------------------
def test_the_password_reaches_pg_dump_only_through_its_environment(project, at_first,
                                                                   tmp_path):
    db = at_first.db
    record = tmp_path / "record"
    record.mkdir()
    bin_dir = wrapped_pg_dump(tmp_path, f"""
printf '%s\\0' "$@" > '{record}/argv'
env -0 > '{record}/environ'
cat /proc/$$/cmdline > '{record}/cmdline'
cat /proc/$PPID/cmdline > '{record}/parent_cmdline'
exec "$REAL" "$@"
""")
    ok(migrate_with(project, db, bin_dir))
    assert db.revision() == HEAD
    assert len(project.backups("pgtest", env=pg_env(db))) == len(at_first.backups) + 1

    argv = (record / "argv").read_bytes().split(b"\0")[:-1]
    assert argv, "pg_dump was not called"
    environ = dict(item.split(b"=", 1) for item in
                   (record / "environ").read_bytes().split(b"\0") if b"=" in item)
    assert environ[b"PGPASSWORD"] == AWKWARD_PASSWORD.encode()
    secret = AWKWARD_PASSWORD.encode()
    for name in ("argv", "cmdline", "parent_cmdline"):
        assert secret not in (record / name).read_bytes(), name
        assert b"p@ss" not in (record / name).read_bytes(), name


# -- the store keeps other bytes than it was sent -------------------------------------------
def scribbling_pg_dump(tmp_path, folder: Path) -> str:
    """A pg_dump body: the real pg_dump, then, before it exits (the backup is still being
    written: the invoke run waits for pg_dump's end), one byte of the file already on disk in
    `folder` is flipped, as a failing disk or another process would. That file has no name yet
    (O_TMPFILE): it is reached through the invoke process's descriptor, /proc/PID/fd/N, or, on
    a file system without unnamed files, as its `.partial`. The bytes that went through the
    inline read-back were whole: only re-reading the stored object shows it. The flip is
    recorded in `flipped`."""
    script = tmp_path / "scribble.py"
    script.write_text(f"""
import os, pathlib, sys, time
folder, deadline = pathlib.Path({str(folder)!r}), time.monotonic() + 60
invoke_fds = pathlib.Path(f"/proc/{{sys.argv[1]}}/fd")


def being_written():
    for fd in invoke_fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(f"{{folder}}/") and target.endswith(" (deleted)"):
            yield fd
    yield from folder.glob(".*.partial")


while True:  # until the buffered writer has put bytes on disk (a condition, not a delay)
    written = [(p, p.stat().st_size) for p in being_written()]
    written = [(p, size) for p, size in written if size > 0]
    if written:
        break
    if time.monotonic() > deadline:
        sys.exit("no partial backup file with bytes in it appeared")
    time.sleep(0.01)
[(path, size)] = written
with open(path, "r+b") as f:
    f.seek(size // 2)
    byte = f.read(1)[0]
    f.seek(size // 2)
    f.write(bytes([byte ^ 0x01]))
pathlib.Path({str(tmp_path / "flipped")!r}).write_text(
    f"{{os.readlink(path) if path.is_symlink() else path}} {{size // 2}}")
""")
    # $PPID: the invoke run that writes the backup (the wrapper's parent).
    return (f'"$REAL" "$@"\nstatus=$?\n"{sys.executable}" \'{script}\' $PPID || exit 97\n'
            'exit $status')


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "age"])
def test_a_backup_damaged_on_disk_while_written_stops_the_migration(project, pg_database,
                                                                    tmp_path, keys, sealed):
    db = pg_database
    env = pg_env(db)
    if sealed:
        key = keys("ops")
        env.update(age_sealed(key, identity=key))
    ok(project.run("migrate", f"--revision={FIRST}", env=env))
    # 4 MiB that neither zstd nor age shrinks: far more than the store's 1 MiB write buffer,
    # so most of the backup is on disk while pg_dump is still running.
    db.sql("CREATE TABLE scans (id serial PRIMARY KEY, image bytea NOT NULL)")
    db.sql("INSERT INTO scans (image) VALUES (:b)", b=os.urandom(4 << 20))
    before = Unchanged(project, db)
    bin_dir = wrapped_pg_dump(tmp_path, scribbling_pg_dump(tmp_path, project.store("pgtest")))

    error = failed(project.run("migrate", env=dict(env, PG_BIN_DIR=str(bin_dir))), 4,
                   "SHA-256")
    # The file flipped was the artifact being written (the manifest comes after it), unnamed.
    assert (tmp_path / "flipped").read_text().startswith(f"{project.store('pgtest')}/#"), error
    before.check()
    assert db.sql("SELECT count(*) FROM scans") == [(1,)]


# -- pg_dump's exit status alone -------------------------------------------------------------
def test_a_complete_dump_from_a_pg_dump_that_exits_1_stops_the_migration(project, at_first,
                                                                         tmp_path):
    db = at_first.db
    archive = tmp_path / "what-pg_dump-wrote.pgdump"
    bin_dir = wrapped_pg_dump(tmp_path, f"""set -o pipefail
"$REAL" "$@" | tee '{archive}' || exit
echo "pg_dump: error: could not close the output: input/output error" >&2
exit 1""")
    failed(migrate_with(project, db, bin_dir), 4,
           "pg_dump", "exit status 1", "input/output error")
    assert len(dump_calls(tmp_path)) == 1
    # What it wrote is a whole, valid archive: the exit status is the only thing wrong.
    check = subprocess.run([REAL_PG_RESTORE, "--list", str(archive)], capture_output=True,
                           text=True)
    assert check.returncode == 0 and "TABLE DATA public users" in check.stdout, check.stderr
    assert subprocess.run([REAL_PG_RESTORE, "--file", os.devnull, str(archive)]).returncode == 0
    at_first.check()
