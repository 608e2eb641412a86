"""A restore stopped by SIGTERM (sent to invoke alone, as a supervisor does) halfway through
pg_restore: pg_restore stopped, the copy dropped, nothing decompressed left in $TMPDIR, the live
database as it was, the run audited, exit 143."""
from __future__ import annotations

import os
import signal

import pytest

from fake_tools import ended_afterwards, fake_pg_bin, gone, size_of_handed_file, started_and_parked
from helpers import (audit_events, db_properties, derived_databases, failed, insert_users,
                     migrated_with_backup, pg_env, pg_state, wait_until_no_sessions)

pytestmark = pytest.mark.postgres


def test_sigterm_halfway_through_pg_restore_cleans_up_and_audits(project, pgdb, pg_admin,
                                                                 tmp_path):
    db = pgdb
    backup = migrated_with_backup(project, db, ("ada@example.org", None))
    insert_users(db, ("live-only@example.org", None))
    before, oid = pg_state(db), db_properties(pg_admin, db.name)["oid"]

    said = tmp_path / "pid.fifo"
    os.mkfifo(said)
    bin_dir = fake_pg_bin(tmp_path / "bin", pg_restore=f"""
for arg in "$@"; do
  case "$arg" in
    --dbname=*) echo "$$ ${{!#}}" > '{said}'; exec sleep 600 ;;   # its pid, the archive
  esac
done
exec "$REAL" "$@"
""")
    scratch_tmp = tmp_path / "tmp"
    scratch_tmp.mkdir()
    run, said_line = started_and_parked(
        project, said, "restore", "--yes", f"--backup={backup['id']}",
        env=pg_env(db, PG_BIN_DIR=str(bin_dir), TMPDIR=str(scratch_tmp)))
    with ended_afterwards(run):
        pg_restore_pid = int(said_line.split()[0])
        # What the stop must clean up is there: the copy being loaded, and the extract that
        # pg_restore was handed, in TMPDIR under no name.
        assert len(derived_databases(pg_admin, db.name, "__restoring_")) == 1
        extract = size_of_handed_file(pg_restore_pid, said_line.decode(), scratch_tmp)
        assert (extract or 0) > 0, (extract, said_line)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=120)
    result = type("Result", (), {"returncode": run.returncode, "stdout": out, "stderr": err})
    failed(result, 143, "stopped by SIGTERM")
    assert gone(pg_restore_pid), "pg_restore was left running"
    assert list(scratch_tmp.iterdir()) == []
    wait_until_no_sessions(pg_admin, db.name)
    assert derived_databases(pg_admin, db.name, "__restoring_") == []
    assert pg_state(db) == before
    assert db_properties(pg_admin, db.name)["oid"] == oid
    event = audit_events(project.store("pgtest"))[-1]
    assert (event["action"], event["outcome"]) == ("restore", "stopped")
