"""SIGTERM and SIGHUP, as a supervisor sends them: to invoke's own process only, mid-backup.

The run must stop its pg_dump, leave no file behind, write its audit record and end with one
line and 128 + the signal's number. A kill -9 (no clean-up can run) leaves nothing either: the
artifact being written has no name until it is complete.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fake_tools import ended_afterwards, gone, unnamed_files, wrapped_pg_dump
from helpers import (FIRST, HEAD, add_revision, admin_sql, at_first_revision, failed, last_audit,
                     ok, pg_env, take_backup, without_audit)

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
        assert unnamed_files(proc.pid, project.store("pgtest")), \
            "the backup's artifact should be open, without a name, while it is written"
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


def test_a_kill_9_mid_backup_leaves_nothing_to_sweep(project, pg_database, tmp_path):
    """kill -9 of the whole process group while the artifact is being written: nothing in the
    store (no `.partial`, no artifact, no manifest), nothing in TMPDIR, and the next backup, at
    once (no sweep waits for it), is fine."""
    db = pg_database
    backups_before, files_before = at_first_revision(project, db)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    bin_dir, said = parked_after_dump(tmp_path)
    proc = project.start("backup", env=pg_env(db, PG_BIN_DIR=str(bin_dir), TMPDIR=str(tmpdir)))
    try:
        said.read_text()  # pg_dump has dumped everything and parked: the artifact is open
        # The artifact being written: open in the store's folder, under no name.
        assert len(unnamed_files(proc.pid, project.store("pgtest"))) == 1
        os.killpg(proc.pid, signal.SIGKILL)  # invoke, pg_dump's wrapper, the read-back
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()
    assert without_audit(project.backup_files("pgtest")) == files_before  # hidden ones too
    assert list(tmpdir.iterdir()) == []
    assert project.backups("pgtest", env=pg_env(db)) == backups_before

    item = take_backup(project, "pgtest", pg_env(db, TMPDIR=str(tmpdir)))
    assert without_audit(project.backup_files("pgtest")) - files_before == {
        f"{item['id']}.manifest.json", Path(item["location"]).name}
    assert list(tmpdir.iterdir()) == []
    ok(project.run("verify", "--env=pgtest", f"--backup={item['id']}", env=pg_env(db)))


# -- a signal during a long statement -----------------------------------------------------------
def sleeping_backend(db, proc, timeout: float = 60) -> int:
    """The pid of the backend running the migration's pg_sleep, once the server runs it (polled:
    a condition, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = admin_sql(db.admin, "SELECT pid FROM pg_stat_activity WHERE datname = :d AND "
                                   "state = 'active' AND query LIKE '%pg_sleep(600)%' "
                                   "AND pid <> pg_backend_pid()", d=db.name)
        if rows:
            return rows[0][0]
        assert proc.poll() is None, f"the migrate ended early:\n{proc.communicate()}"
        assert time.monotonic() < deadline, "the migration's statement never started"
        time.sleep(0.05)


def test_sigterm_during_a_long_statement_cancels_it_then_rolls_back_and_stops(project,
                                                                             pg_database):
    """A migration running pg_sleep(600), as a big ALTER TABLE would: SIGTERM cancels the
    statement on the server (the run ends within the minute the test waits, which only a cancel
    allows), the transaction is rolled back, exit 143, audited as stopped."""
    db = pg_database
    env = pg_env(db)
    ok(project.run("migrate", env=env))
    add_revision(project, "5100e0000001", HEAD, """
        op.add_column("users", sa.Column("notes", sa.Text(), nullable=True))
        op.execute("SELECT pg_sleep(600)")
        """, message="Add notes, slowly", slug="slow")
    proc = project.start("migrate", env=env)
    with ended_afterwards(proc):
        backend = sleeping_backend(db, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    result = type("Result", (), {"returncode": proc.returncode, "stdout": out, "stderr": err})
    failed(result, 143, "stopped by SIGTERM")
    assert admin_sql(db.admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = :p AND "
                               "query LIKE '%pg_sleep(600)%' AND state = 'active'",
                     p=backend) == [(0,)], "the statement still runs on the server"
    assert db.revision() == HEAD
    assert "notes" not in db.columns("users")
    event = last_audit(project.store("pgtest"))
    assert event["action"] == "migrate" and event["outcome"] == "stopped"
