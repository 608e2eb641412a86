"""A restore stopped by SIGTERM (sent to invoke alone, as a supervisor does) halfway through
pg_restore: pg_restore stopped, the copy dropped, nothing decompressed left in $TMPDIR, the live
database as it was, the run audited, exit 143."""
from __future__ import annotations

import os
import select
import shutil
import signal

import pytest

from conftest import pg_env
from helpers import failed, ok
from test_restore_e2e import (audit_events, db_properties, derived_databases, insert_users,
                              pg_bin_dir, pg_state, pgdb, take_backup,  # noqa: F401 (fixture)
                              wait_until_no_sessions)
from test_signals_e2e import gone

pytestmark = pytest.mark.postgres


def test_sigterm_halfway_through_pg_restore_cleans_up_and_audits(project, pgdb, pg_admin,
                                                                 tmp_path):
    db = pgdb
    ok_env = pg_env(db)
    ok(project.run("migrate", env=ok_env))
    insert_users(db, ("ada@example.org", None))
    backup = take_backup(project, "pgtest", ok_env)
    insert_users(db, ("live-only@example.org", None))
    before, oid = pg_state(db), db_properties(pg_admin, db.name)["oid"]

    said = tmp_path / "pid.fifo"
    os.mkfifo(said)
    real = shutil.which("pg_restore")
    bin_dir = pg_bin_dir(tmp_path, f"""
for arg in "$@"; do
  case "$arg" in
    --dbname=*) echo $$ > '{said}'; exec sleep 600 ;;
  esac
done
exec '{real}' "$@"
""")
    scratch_tmp = tmp_path / "tmp"
    scratch_tmp.mkdir()
    said_fd = os.open(said, os.O_RDWR)  # never blocks, never reads EOF
    run = project.start("restore", "--yes", f"--backup={backup['id']}",
                        env=pg_env(db, PG_BIN_DIR=str(bin_dir), TMPDIR=str(scratch_tmp)))
    try:
        while not select.select([said_fd], [], [], 1)[0]:
            assert run.poll() is None, f"restore ended early:\n{run.communicate()}"
        pg_restore_pid = int(os.read(said_fd, 64).split()[0])
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=120)
    finally:
        os.close(said_fd)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    result = type("Result", (), {"returncode": run.returncode, "stdout": out, "stderr": err})
    failed(result, 143, "stopped by SIGTERM")
    assert gone(pg_restore_pid), "pg_restore was left running"
    assert list(scratch_tmp.iterdir()) == []
    wait_until_no_sessions(pg_admin, db.name)
    assert derived_databases(pg_admin, db.name, "__restoring_") == []
    assert pg_state(db) == before
    assert db_properties(pg_admin, db.name)["oid"] == oid
    event = audit_events(project, "pgtest")[-1]
    assert (event["action"], event["outcome"]) == ("restore", "stopped")
