"""End to end: every restore-test, rehearsal and real restore leaves a drill record in the
store (kind, when, backup, seconds, outcome, checks), and a restore-test checks that every
sequence is ahead of the column it feeds."""
from __future__ import annotations

import json

import pytest

from helpers import failed, insert_users, migrated_with_backup, ok, pg_env, shown


def drills(project, env_name: str = "pgtest") -> list[dict]:
    return [json.loads(p.read_text())
            for p in sorted(project.store(env_name).glob("*.drill.json"))]


@pytest.mark.postgres
def test_restore_test_rehearsal_and_restore_each_leave_a_drill_record(project, pgdb):
    env = pg_env(pgdb)
    backup = migrated_with_backup(project, pgdb, ("ada@example.org", None),
                                  ("grace@example.org", None))
    result = ok(project.run("verify", "--restore-test", f"--backup={backup['id']}", env=env))
    assert "sequences: 1 sequence(s), each ahead of the column it feeds" in result.stdout, \
        shown(result)
    ok(project.run("rehearse", env=env))
    ok(project.run("restore", f"--backup={backup['id']}", "--yes", env=env))
    records = drills(project)
    assert [r["kind"] for r in records] == ["restore-test", "rehearse", "restore"]
    for r in records:
        assert r["backup"] == backup["id"] and r["outcome"] == "succeeded", r
        assert r["seconds"] > 0 and r["restore_seconds"] > 0 and r["env"] == "pgtest", r
        assert r["at"].endswith("Z")
    test, rehearsal, restore = records
    assert {c["name"]: c["ok"] for c in test["checks"]} == {"row counts": True,
                                                           "sequences": True}
    assert rehearsal["checks"][0]["ok"] is True
    # A restore on PostgreSQL measures its time to service apart from the whole run.
    assert restore["restore_seconds"] <= restore["seconds"]
    assert restore["checks"] == [{"name": "revision", "ok": True, "detail": (
        f"the database is at {backup['revision']}, the backup's revision")}]


@pytest.mark.postgres
def test_a_restore_test_of_a_copy_whose_sequence_is_behind_its_column_fails(project, pgdb):
    env = pg_env(pgdb)
    ok(project.run("migrate", env=env))
    insert_users(pgdb, ("ada@example.org", None), ("grace@example.org", None),
                 ("alan@example.org", None))
    # The rows are all there (row counts match), but the next insert would reuse id 2.
    pgdb.sql("SELECT setval('users_id_seq', 1)")
    backup = migrated_with_backup(project, pgdb, env=env)
    error = failed(project.run("verify", "--restore-test", f"--backup={backup['id']}", env=env),
                   4, "sequence public.users_id_seq would give 2 next",
                   "public.users.id already holds 3")
    assert "row counts" not in error
    (record,) = drills(project)
    assert record["kind"] == "restore-test" and record["outcome"] == "failed"
    checks = {c["name"]: c for c in record["checks"]}
    assert checks["row counts"]["ok"] is True and checks["sequences"]["ok"] is False
    assert "users_id_seq" in checks["sequences"]["detail"]
