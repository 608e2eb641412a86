"""SIGTERM and SIGHUP, as a supervisor sends them: to invoke's own process only, mid-backup.

The run must stop its pg_dump, remove its partial file, write its audit record and end with one
line and 128 + the signal's number. What a kill -9 leaves (no clean-up can run) is removed by
the next run.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fake_tools import gone, wrapped_pg_dump
from helpers import FIRST, at_first_revision, failed, last_audit, ok, pg_env, without_audit

pytestmark = pytest.mark.postgres


def parked_after_dump(tmp_path) -> tuple[Path, Path]:
    """A PG_BIN_DIR whose pg_dump writes the whole dump, says its pid on a FIFO, then hangs
    (as one stuck on a slow table would), with the backup's partial file open."""
    said = tmp_path / "pid.fifo"
    os.mkfifo(said)
    return wrapped_pg_dump(tmp_path, f'"$REAL" "$@"\necho $$ > \'{said}\'\nexec sleep 600'), said


def partials(project) -> list[str]:
    folder = project.root / "backups" / "pgtest"
    return [p.name for p in folder.glob(".*.partial")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_backup_stops_pg_dump_cleans_up_and_audits(project, pg_database, tmp_path,
                                                                 signum):
    db = pg_database
    backups_before, files_before = at_first_revision(project, db)
    bin_dir, said = parked_after_dump(tmp_path)
    proc = project.start("migrate", env=pg_env(db, PG_BIN_DIR=str(bin_dir)))
    try:
        pg_dump_pid = int(said.read_text())  # blocks until pg_dump has dumped and parked
        assert partials(project), "the backup's partial file should exist while it is written"
        proc.send_signal(signum)  # to invoke alone, not its process group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    result = type("Result", (), {"returncode": proc.returncode, "stdout": out, "stderr": err})
    failed(result, 128 + signum, f"stopped by {signal.Signals(signum).name}")
    assert gone(pg_dump_pid), "pg_dump was left running"
    assert partials(project) == []
    assert without_audit(project.backup_files("pgtest")) == files_before
    assert project.backups("pgtest", env=pg_env(db)) == backups_before
    assert db.revision() == FIRST
    audit = last_audit(project.store("pgtest"))
    assert audit["action"] == "migrate" and audit["outcome"] == "stopped"


def test_the_partial_file_a_kill_9_leaves_is_removed_by_the_next_backup(project, pg_database,
                                                                         tmp_path):
    db = pg_database
    at_first_revision(project, db)
    bin_dir, said = parked_after_dump(tmp_path)
    proc = project.start("backup", env=pg_env(db, PG_BIN_DIR=str(bin_dir)))
    try:
        said.read_text()
        proc.kill()  # kill -9: no clean-up runs
        proc.wait(timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # and the parked pg_dump with it
    [left] = partials(project)
    path = project.root / "backups" / "pgtest" / left
    # Older than a partial being created: only the flock tells whether it is abandoned.
    old = time.time() - 3600
    os.utime(path, (old, old))
    ok(project.run("backup", env=pg_env(db)))
    assert partials(project) == []
