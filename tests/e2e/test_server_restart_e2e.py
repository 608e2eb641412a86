"""A server restart in the middle of a run, on a throwaway cluster of the test's own
(conftest's plain_cluster, tests/clusters.py): the shared server is never restarted.

The restart lands while pg_dump starts (a PG_BIN_DIR wrapper says so on a FIFO and waits for
the test's word), so the backup's own sessions die under it: one sentence, exit 4, nothing
changed, no backup listed, and migrate's audit record names the cause.
"""
from __future__ import annotations

import secrets
import subprocess

import pytest

from fake_tools import (ended_afterwards, fifo_pair, started_and_parked, unnamed_files,
                        wrapped_pg_dump)
from helpers import FIRST, failed, last_audit, ok, without_audit

pytestmark = pytest.mark.postgres


def columns(cluster, database: str) -> list[str]:
    return cluster.psql("SELECT column_name FROM information_schema.columns WHERE "
                        "table_name = 'users' ORDER BY 1", database).split()


@pytest.mark.parametrize("action", ["migrate", "backup"])
def test_a_server_restart_while_pg_dump_starts_is_one_sentence_and_exit_4(project, plain_cluster,
                                                                          tmp_path, action):
    cluster = plain_cluster
    database = f"mida_restart_{secrets.token_hex(4)}"
    env = cluster.create_database(database)
    ok(project.run("migrate", f"--revision={FIRST}", env=env))
    backups_before = project.backups("pgtest", env=env)
    files_before = without_audit(project.backup_files("pgtest"))
    started, go = fifo_pair(tmp_path)
    bin_dir = wrapped_pg_dump(tmp_path, f"echo started > '{started}'\nread _ < '{go}'\n"
                                        'exec "$REAL" "$@"\n')
    run, _ = started_and_parked(project, started, action, env=dict(env, PG_BIN_DIR=str(bin_dir)))
    with ended_afterwards(run):
        # The backup's artifact is open in the store, under no name: what the failure must
        # leave no trace of.
        assert len(unnamed_files(run.pid, project.store("pgtest"))) == 1
        cluster.restart()  # every session of the run's is ended, the snapshot's among them
        with open(go, "w") as word:
            word.write("go\n")
        out, err = run.communicate(timeout=120)
    result = subprocess.CompletedProcess(run.args, run.returncode, out, err)

    error = failed(result, 4, "connection", "server", "nothing was changed")
    assert cluster.psql("SELECT version_num FROM alembic_version", database) == FIRST
    assert "phone_number" not in columns(cluster, database)
    assert project.backups("pgtest", env=env) == backups_before
    assert without_audit(project.backup_files("pgtest")) == files_before  # no partial file left
    if action == "migrate":
        event = last_audit(project.store("pgtest"))
        assert event["action"] == "migrate" and event["outcome"] == "backup failed"
        assert event["error"] == error.removeprefix("ERROR: ")
