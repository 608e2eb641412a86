"""The archive's table of contents and the passes a restore by the database's owner makes
over it (app/ops/databases/postgres/toc.py), and the lock-table room of a dump
(app/ops/databases/postgres/locks.py)."""
from __future__ import annotations

from app.ops.databases.postgres.locks import LockRoom, out_of_locks
from app.ops.databases.postgres.toc import (grant_statements, list_text, parse_toc,
                                          plan_passes)

LISTING = """;
; Archive created at 2026-12-02 04:00:00 UTC
;
4; 2615 2200 SCHEMA - public pg_database_owner
216; 1259 16390 TABLE public reports mida_reports
215; 1259 16389 SEQUENCE public reports_id_seq mida_reports
214; 1259 16384 TABLE public users app
3340; 0 16390 TABLE DATA public reports mida_reports
3341; 2606 16395 CONSTRAINT public reports reports_pkey mida_reports
3345; 0 0 ACL - SCHEMA public pg_database_owner
3346; 0 0 ACL pg_catalog FUNCTION pg_switch_wal() postgres
3347; 0 0 ACL public TABLE reports mida_reports
"""


def test_parse_toc_reads_descriptions_of_several_words_and_names_with_spaces():
    entries = parse_toc(LISTING)
    assert len(entries) == 9
    data = entries[4]
    assert (data.desc, data.schema, data.name, data.owner) == \
        ("TABLE DATA", "public", "reports", "mida_reports")
    constraint = entries[5]
    assert (constraint.desc, constraint.name) == ("CONSTRAINT", "reports reports_pkey")
    grant = entries[7]
    assert (grant.desc, grant.schema, grant.name) == \
        ("ACL", "pg_catalog", "FUNCTION pg_switch_wal()")


def test_objects_of_other_roles_get_schemas_and_their_grants_first():
    entries = parse_toc(LISTING)
    plan = plan_passes(entries, "app", superuser=False)
    assert plan.owners == {"mida_reports"}
    assert [e.name for e in plan.skipped] == ["FUNCTION pg_switch_wal()"]
    first, second = plan.passes
    assert [e.line.split(";")[0] for e in first] == ["4", "3345"]
    assert set(first) | set(second) | set(plan.skipped) == set(entries)
    assert not set(first) & set(second)
    assert list_text(first) == "4; 2615 2200 SCHEMA - public pg_database_owner\n" \
                               "3345; 0 0 ACL - SCHEMA public pg_database_owner\n"


def test_a_database_of_its_owner_alone_is_restored_in_one_pass_as_it_is():
    own = "\n".join(line for line in LISTING.splitlines() if "mida_reports" not in line
                    and "pg_catalog" not in line)
    plan = plan_passes(parse_toc(own), "app", superuser=False)
    assert (plan.passes, plan.skipped, plan.owners) == ([], [], set())


def test_a_superuser_restores_everything_in_one_pass():
    plan = plan_passes(parse_toc(LISTING), "postgres", superuser=True)
    assert (plan.passes, plan.skipped) == ([], [])


def test_catalog_grants_alone_are_left_out_of_a_single_pass():
    only = "\n".join(line for line in LISTING.splitlines() if "mida_reports" not in line)
    plan = plan_passes(parse_toc(only), "app", superuser=False)
    assert len(plan.passes) == 1 and len(plan.skipped) == 1
    assert plan.skipped[0] not in plan.passes[0]


def test_grant_statements_come_from_the_script():
    script = "--\nSET x = 1;\nGRANT ALL ON FUNCTION pg_catalog.pg_switch_wal() TO app;\n"
    assert grant_statements(script) == ["GRANT ALL ON FUNCTION pg_catalog.pg_switch_wal() TO app;"]


def test_lock_room_names_the_setting_and_a_value_that_fits():
    room = LockRoom(tables=4502, per_process=64, processes=72)
    assert not room.enough
    assert "max_locks_per_transaction = 128" in room.advice("db")
    assert LockRoom(tables=3002, per_process=64, processes=72).enough
    assert out_of_locks("ERROR: out of shared memory HINT: You might need to increase "
                        "max_locks_per_transaction.")
