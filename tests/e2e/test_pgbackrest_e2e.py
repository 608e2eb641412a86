"""End to end with BACKUP_METHOD=pgbackrest: `invoke` runs as a subprocess against a throwaway
PostgreSQL cluster that archives its WAL to a real local pgBackRest repository (the
`archiving_cluster` fixture, tests/clusters.py). The tests assert on exit codes,
output, the manifests in the store and the database's schema and rows afterwards.
"""
from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest

from clusters import ClusterDatabase, owned_cluster_database
from conftest import Project
from helpers import HEAD, add_revision, failed, ok, read_manifest, shown


def test_the_throwaway_cluster_archives_and_has_a_full_backup(archiving_cluster):
    cluster = archiving_cluster
    info = json.loads(cluster.pgbackrest("info", "--output=json").stdout)
    assert [b["type"] for b in info[0]["backup"]] == ["full"]
    segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    archived = cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver")
    # archive-push runs asynchronously to the switch: poll the archiver's own record
    for _ in range(200):
        if archived >= segment:
            break
        archived = cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
    assert archived >= segment
    assert cluster.psql("SHOW fsync") == "off"
    assert cluster.data.stat().st_uid != 0 and cluster.repo.stat().st_uid != 0


@pytest.fixture
def cluster_db(archiving_cluster):
    yield from owned_cluster_database(archiving_cluster)


def wait_archived(cluster) -> None:
    """Switch WAL and poll the archiver until it has the segment (the archiver's own record)."""
    segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    for _ in range(600):
        if cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= segment:
            return
    raise AssertionError(f"segment {segment} was never archived")


def stored_files(project: Project) -> set[str]:
    folder = project.root / "backups" / "pgtest"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_migrate_takes_a_restore_point_whose_wal_is_archived_and_no_dump(project, cluster_db):
    cluster = cluster_db.cluster
    started = time.monotonic()
    result = ok(project.run("migrate", env=cluster_db.env()))
    migrate_seconds = time.monotonic() - started
    assert "restore point before-migrate-" in result.stdout, shown(result)
    assert cluster_db.revision() == HEAD
    [item] = project.backups("pgtest", env=cluster_db.env())
    rp = item["pgbackrest"]
    assert item["method"] == "pgbackrest" and item["verified"] and item["revision"] is None
    assert item["reason"] == f"before migrate base -> {HEAD}"
    assert rp["restore_point"] == f"before-migrate-{item['id']}"
    # The restore point's segment is in the repository's archive, and the backup it rests on
    # is the fixture's full backup, on the same timeline.
    info = json.loads(cluster.pgbackrest("info", "--output=json").stdout)[0]
    assert rp["backup_label"] in [b["label"] for b in info["backup"]]
    assert rp["timeline"] == int(rp["segment"][:8], 16)
    archived = [p.name for p in cluster.repo.glob(f"archive/mida/*/*/{rp['segment']}-*")]
    assert archived, f"{rp['segment']} is not in the repository"
    assert cluster.psql(f"SELECT '{rp['lsn']}'::pg_lsn <= pg_current_wal_lsn()") == "t"
    # No dump: the store holds the manifest and the audit record only.
    files = stored_files(project)
    assert {f for f in files if not f.endswith((".manifest.json", ".audit.json", ".lock"))} == set()
    assert sum(f.endswith(".manifest.json") for f in files) == 1
    # How long it took is a benchmark's figure (bench/pgbackrest_bench.py), not an assertion:
    # no dump was taken (above), which is what makes it quick.
    print(f"migrate with a restore point: {migrate_seconds:.2f} s, restore point "
          f"{item['duration_seconds']:.3f} s (archive wait {rp['archive_wait_seconds']:.3f} s)")


def test_backup_on_demand_then_verify_finds_it(project, cluster_db):
    ok(project.run("migrate", env=cluster_db.env()))
    result = ok(project.run("backup", env=cluster_db.env()))
    assert "restore point on-demand-" in result.stdout, shown(result)
    newest = project.backups("pgtest", env=cluster_db.env())[0]
    assert newest["reason"] == "on demand" and newest["revision"] == HEAD
    verified = ok(project.run("verify", f"--backup={newest['id']}", env=cluster_db.env()))
    assert newest["id"] in verified.stdout
    # Health counts it as the newest verified backup; a scratch drill says why it cannot.
    health = json.loads(project.run("check", "--json", env=cluster_db.env()).stdout)
    assert health["last_verified_backup"]["id"] == newest["id"], health
    assert [c["state"] for c in health["checks"] if c["name"] == "backup"] == ["OK"], health
    failed(project.run("verify", "--restore-test", f"--backup={newest['id']}",
                       env=cluster_db.env()), 2, "restore point", "aside")


def test_archiving_broken_refuses_migrate_with_exit_4_and_changes_nothing(project, cluster_db):
    cluster = cluster_db.cluster
    cluster.psql("ALTER SYSTEM SET archive_command = 'false'")
    cluster.psql("SELECT pg_reload_conf()")
    try:
        started = time.monotonic()
        result = project.run("migrate", env=cluster_db.env())
        seconds = time.monotonic() - started
        # Not timed: "could not be archived (archive_command failed on ...)" is what the
        # archiver's failure says at once; the timeout says "was not archived within".
        failed(result, 4, "could not be archived", "archive_command failed on",
               "nothing was changed")
        print(f"a failing archive_command refused migrate in {seconds:.1f} s")
        # The archiver now records the failure: the next run is refused before any restore point.
        failed(project.run("migrate", env=cluster_db.env()), 4, "WAL archiving is failing",
               "nothing was changed")
    finally:
        cluster.psql("ALTER SYSTEM RESET archive_command")
        cluster.psql("SELECT pg_reload_conf()")
        wait_archived(cluster)
    assert cluster_db.tables() == [] and cluster_db.revision() == ""
    assert project.backups("pgtest", env=cluster_db.env()) == []
    # With archiving back, the next migrate goes through.
    ok(project.run("migrate", env=cluster_db.env()))
    assert cluster_db.revision() == HEAD


def test_no_backup_on_the_current_timeline_or_no_stanza_is_refused(project, cluster_db):
    failed(project.run("migrate", env=cluster_db.env(PGBACKREST_STANZA="nosuch")), 4, "nosuch")
    assert cluster_db.tables() == []
    failed(project.run("migrate", env=cluster_db.env(PGBACKREST_STANZA="")), 2,
           "PGBACKREST_STANZA")




def add_bad_release(project) -> None:
    """A bad release: deletes rows and adds a column."""
    add_revision(project, "0badc0ffee01", HEAD, """
        op.execute("DELETE FROM users WHERE id > 1")
        op.execute("UPDATE users SET email = 'clobbered@example.org'")
        op.add_column("users", sa.Column("junk", sa.Integer()))
        op.create_table("leftover", sa.Column("id", sa.Integer(), primary_key=True))
        """, """
        op.drop_table("leftover")
        op.drop_column("users", "junk")
        """, message="a bad release: deletes rows and adds a column", slug="bad_release")


def users(db: ClusterDatabase) -> str:
    return db.sql("SELECT string_agg(format('%s|%s|%s', id, email, phone_number), ';' "
                  "ORDER BY id) FROM users")


def test_restore_undoes_a_bad_migration_exactly_even_with_a_later_backup(project, cluster_db):
    cluster = cluster_db.cluster
    # ALTER SYSTEM on the settings pgBackRest writes, so restore can clear them (README).
    cluster.psql(f"GRANT ALTER SYSTEM ON PARAMETER recovery_target_lsn, recovery_target_action, "
                 f"recovery_target_timeline TO {cluster_db.role}")
    env = cluster_db.env()
    ok(project.run("migrate", env=env))
    cluster_db.sql("INSERT INTO users (email, hashed_password, phone_number) SELECT "
                   "'u' || g || '@example.org', md5(g::text), '+41 ' || g "
                   "FROM generate_series(1, 500) g")
    assert cluster_db.sql("SELECT count(*) FROM users") == "500"
    schema_before, rows_before = cluster_db.schema(), users(cluster_db)
    timeline_before = cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()")

    add_bad_release(project)
    ok(project.run("migrate", env=env))
    assert cluster_db.revision() == "0badc0ffee01" and "leftover" in cluster_db.tables()
    assert users(cluster_db) != rows_before
    # A pgBackRest backup taken after the restore point: a plain restore would use it and end
    # recovery before the target; ours names the backup the restore point rests on.
    cluster.pgbackrest("--type=incr", "backup")
    # And a write after the restore point, to be kept on the old timeline in the archive.
    cluster_db.sql("INSERT INTO leftover VALUES (42)")
    [newest, *_] = project.backups("pgtest", env=env)
    assert newest["reason"] == f"before migrate {HEAD} -> 0badc0ffee01"

    started = time.monotonic()
    result = ok(project.run("restore", f"--backup={newest['id']}", "--yes", env=env))
    seconds = time.monotonic() - started
    assert cluster_db.revision() == HEAD
    assert cluster_db.tables() == ["alembic_version", "users"]
    assert cluster_db.schema() == schema_before
    assert users(cluster_db) == rows_before
    assert cluster.psql("SELECT pg_is_in_recovery()") == "f"
    assert int(cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()")) > \
        int(timeline_before)
    assert "recovery_target" not in cluster.auto_conf(), cluster.auto_conf()
    assert f"--target-timeline={timeline_before}" in result.stdout, shown(result)
    assert "restore them aside" in result.stdout, shown(result)
    [event, *_] = json.loads(ok(project.run("audit", "--json", env=env)).stdout)
    assert (event["action"], event["outcome"], event["backup_id"]) == \
        ("restore", "succeeded", newest["id"])
    # The new timeline has a backup of its own: the next migrate takes a restore point at once.
    ok(project.run("migrate", env=env))
    assert cluster_db.revision() == "0badc0ffee01"
    print(f"restore of a restore point (PITR, incl. incremental backup): {seconds:.2f} s")


def test_restore_refuses_a_cluster_with_other_databases_without_whole_cluster(project,
                                                                              cluster_db):
    cluster = cluster_db.cluster
    other = f"other_app_{secrets.token_hex(3)}"
    cluster.psql(f"CREATE DATABASE {other}")
    try:
        ok(project.run("migrate", env=cluster_db.env()))
        timeline = cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()")
        started = cluster.psql("SELECT pg_postmaster_start_time()")
        failed(project.run("restore", "--yes", env=cluster_db.env()), 3, other,
               "--whole-cluster", "nothing was changed")
        assert cluster.psql("SELECT pg_postmaster_start_time()") == started
        assert cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()") == timeline
        assert cluster_db.revision() == HEAD
    finally:
        cluster.psql(f"DROP DATABASE {other}")


def test_status_shows_the_stanza_and_the_archiver(project, cluster_db):
    cluster = cluster_db.cluster
    ok(project.run("migrate", env=cluster_db.env()))
    info = json.loads(ok(project.run("status", "--json", env=cluster_db.env())).stdout)
    facts = info["pgbackrest"]
    repo = json.loads(cluster.pgbackrest("info", "--output=json").stdout)[0]
    fulls = [b["label"] for b in repo["backup"] if b["type"] == "full"]
    assert facts["newest_full"]["label"] == fulls[-1], facts
    assert facts["archive"]["max"] == repo["archive"][-1]["max"], facts
    assert facts["archiver"]["failing"] is False and facts["archiver"]["segments_behind"] == 0
    assert info["last_backup"]["pgbackrest"]["segment"] <= facts["archive"]["max"]
    table = ok(project.run("status", env=cluster_db.env())).stdout
    assert f"newest full {fulls[-1]}" in table and "0 segment(s) behind" in table, table
    # A stanza pgBackRest does not know: status still answers, and says so.
    broken = ok(project.run("status", "--json", env=cluster_db.env(PGBACKREST_STANZA="nosuch")))
    assert "nosuch" in json.loads(broken.stdout)["pgbackrest"]["error"]


def test_a_standby_is_refused_before_anything(project, cluster_db):
    from clusters import PG_BIN
    from helpers import free_port
    cluster = cluster_db.cluster
    standby, port = cluster.root / "standby", free_port()
    cluster.run(str(PG_BIN / "pg_basebackup"), "-h", str(cluster.socket_dir), "-p",
                str(cluster.port), "-D", str(standby), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast")
    pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(standby)]
    cluster.run(*pg_ctl, "-o", f"-p {port}", "-l", str(cluster.root / "standby.log"), "start", "-w")
    try:
        env = cluster_db.env(POSTGRES_PORT=str(port))
        failed(project.run("migrate", env=env), 3, "standby", "primary")
        failed(project.run("backup", env=env), 3, "standby")
        assert cluster_db.tables() == []
        assert project.backups("pgtest", env=env) == []
    finally:
        cluster.run(*pg_ctl, "stop", "-m", "immediate", "-w", check=False)
        cluster.run("rm", "-rf", str(standby))


def test_an_unreachable_repository_or_a_hanging_pgbackrest_fails_within_the_timeout(
        project, cluster_db):
    cluster = cluster_db.cluster
    wrong = cluster.root / "wrong-repo.conf"
    wrong.write_text(cluster.config.read_text().replace(
        f"repo1-path={cluster.repo}", f"repo1-path={cluster.root / 'no-such-repo'}"))
    result = project.run("migrate", env=cluster_db.env(PGBACKREST_CONFIG=str(wrong)))
    failed(result, 4, "stanza 'mida' is not usable", "missing stanza path", "nothing was changed")
    # A pgbackrest that never answers (a repository behind a dead endpoint hangs for minutes):
    # our own timeout ends it, in one sentence.
    started = time.monotonic()
    result = project.run("migrate", env=cluster_db.env(
        PGBACKREST_TIMEOUT="2",
        PGBACKREST_COMMAND="sh -c 'sleep 117.31; :'"))
    seconds = time.monotonic() - started
    # Not timed: only our timeout says this (the command would have ended well, after 117 s),
    # and the sleep it ran is gone below.
    failed(result, 4, "did not finish within 2 s", "PGBACKREST_TIMEOUT")
    print(f"a hanging pgbackrest was ended after {seconds:.1f} s")
    # The whole process group went, not only its leader (as with sudo or runuser in front).
    left = subprocess.run(["pgrep", "-f", "sleep 117.31"], capture_output=True, text=True)
    assert left.stdout == "", left.stdout
    assert cluster_db.tables() == [] and project.backups("pgtest", env=cluster_db.env()) == []


def no_restore_point_taken(project: Project, db: ClusterDatabase) -> None:
    assert db.tables() == [] and db.revision() == ""
    assert project.backups("pgtest", env=db.env()) == []


def test_a_missing_or_too_old_pgbackrest_is_refused_before_anything(project, cluster_db, tmp_path):
    env = cluster_db.env
    # Behind runuser (as behind sudo) a missing pgbackrest is the wrapper's failure, not ours.
    failed(project.run("migrate", env=env(
        PGBACKREST_COMMAND="runuser -u postgres -- /nonexistent/pgbackrest")), 2,
        "cannot run pgbackrest through PGBACKREST_COMMAND", "/nonexistent/pgbackrest",
        "No such file or directory")
    old = tmp_path / "pgbackrest-2.38"
    old.write_text("#!/bin/sh\necho 'pgBackRest 2.38'\n")
    old.chmod(0o755)
    failed(project.run("backup", env=env(PGBACKREST_COMMAND=str(old))), 2,
           "pgBackRest 2.38", "too old", "2.39 or newer")
    no_restore_point_taken(project, cluster_db)
    # status names it too, and still answers.
    info = json.loads(ok(project.run("status", "--json", env=env(
        PGBACKREST_COMMAND=str(old)))).stdout)
    assert "2.38" in info["pgbackrest"]["error"], info["pgbackrest"]
    current = json.loads(ok(project.run("status", "--json", env=env())).stdout)["pgbackrest"]
    installed = subprocess.run(["pgbackrest", "version"], capture_output=True, text=True).stdout
    assert installed.split()[-1] == current["version"], current


def test_pgbackrest_run_as_another_os_user_is_worded_and_refused(project, cluster_db):
    # `nobody` may not read the repository (0750, owned by postgres): what pgBackRest reports
    # is a permission denied, and that is what we word.
    result = project.run("migrate", env=cluster_db.env(
        PGBACKREST_COMMAND="runuser -u nobody -- pgbackrest"))
    failed(result, 2, "may not use its own files", "Permission denied", "another OS user",
           "PGBACKREST_COMMAND")
    no_restore_point_taken(project, cluster_db)


class Gate:
    """An archive_command that waits while a file exists: the archiver falls behind without
    failing, as it does when the repository is slow. Open it and reset the command after."""

    def __init__(self, cluster):
        self.cluster, self.path = cluster, cluster.root / f"gate-{secrets.token_hex(3)}"

    def close(self) -> None:
        self.path.touch()
        push = (f"pgbackrest --config={self.cluster.config} --stanza=mida archive-push %p")
        waiting = f"while [ -e {self.path} ]; do sleep 0.05; done; {push}"
        self.cluster.psql(f"ALTER SYSTEM SET archive_command = '{waiting}'")
        self.cluster.psql("SELECT pg_reload_conf()")

    def open(self) -> None:
        self.path.unlink(missing_ok=True)
        self.cluster.psql("ALTER SYSTEM RESET archive_command")
        self.cluster.psql("SELECT pg_reload_conf()")
        wait_archived(self.cluster)

    def finish_segments(self, count: int) -> None:
        for _ in range(count):
            self.cluster.psql("SELECT pg_logical_emit_message(false, 'mida', 'x')")
            self.cluster.psql("SELECT pg_switch_wal()")

    def ready(self) -> int:
        return int(self.cluster.psql(
            "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"))


def test_a_ready_backlog_over_the_limit_refuses_and_status_counts_it(project, cluster_db):
    cluster = cluster_db.cluster
    gate = Gate(cluster)
    gate.close()
    try:
        gate.finish_segments(3)
        assert gate.ready() >= 3
        # The role may not list pg_wal/archive_status: status says so, and the backlog guard
        # does not refuse (this run fails later, waiting for the archiver, as before).
        facts = json.loads(ok(project.run("status", "--json", env=cluster_db.env())).stdout)
        archiver = facts["pgbackrest"]["archiver"]
        assert archiver["ready"] is None and "pg_monitor" in archiver["ready_unknown"], archiver
        failed(project.run("migrate", env=cluster_db.env(PGBACKREST_MAX_READY="1",
                                                         PGBACKREST_TIMEOUT="2")),
               4, "was not archived within 2 s")
        cluster.psql(f"GRANT pg_monitor TO {cluster_db.role}")
        backlog = gate.ready()
        failed(project.run("migrate", env=cluster_db.env(PGBACKREST_MAX_READY="1")), 3,
               f"{backlog} WAL segments wait to be archived", "PGBACKREST_MAX_READY=1",
               "nothing was changed")
        facts = json.loads(ok(project.run("status", "--json", env=cluster_db.env())).stdout)
        assert facts["pgbackrest"]["archiver"]["ready"] == backlog, facts["pgbackrest"]
        table = ok(project.run("status", env=cluster_db.env())).stdout
        assert f"{backlog} segment(s) ready to archive" in table, table
        failed(project.run("migrate", env=cluster_db.env(PGBACKREST_MAX_READY="many")), 2,
               "PGBACKREST_MAX_READY 'many' is not a number")
        assert cluster_db.tables() == [] and project.backups("pgtest", env=cluster_db.env()) == []
    finally:
        gate.open()
    # With the archiver caught up, the default limit lets the next migrate through.
    assert gate.ready() == 0
    ok(project.run("migrate", env=cluster_db.env()))
    assert cluster_db.revision() == "f8ff2ab1fdfa"


def repo_wal(cluster, segment: str):
    [path] = cluster.repo.glob(f"archive/mida/*/*/{segment}-*")
    return path


def test_verify_fails_on_a_corrupt_wal_segment_the_restore_point_needs(project, cluster_db):
    cluster = cluster_db.cluster
    env = cluster_db.env()
    ok(project.run("migrate", env=env))
    [item] = project.backups("pgtest", env=env)
    segment = item["pgbackrest"]["segment"]
    wait_archived(cluster)  # a segment after the restore point, which it does not need
    later = cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver")
    needed, unneeded = repo_wal(cluster, segment), repo_wal(cluster, later)
    saved = {path: path.read_bytes() for path in (needed, unneeded)}
    try:
        # Another segment's bytes: a readable file whose checksum is wrong.
        unneeded.write_bytes(saved[needed])
        raw = cluster.pgbackrest("--output=text", "verify")
        assert raw.returncode == 0 and "status: error" in raw.stdout, raw.stdout
        # Damage the restore point does not need: still verified.
        ok(project.run("verify", f"--backup={item['id']}", env=env))
        assert project.backups("pgtest", env=env)[0]["verified"] is True
        needed.write_bytes(saved[unneeded])
        failed(project.run("verify", f"--backup={item['id']}", env=env), 4,
               "failed verification", "pgbackrest verify", f"WAL segment {segment}",
               "invalid checksum")
        manifest = read_manifest(project, item["id"], "pgtest")
        assert manifest["verified"] is False and segment in manifest["verify_error"], manifest
        # restore refuses a restore point its last verify found damaged, before anything stops.
        started = cluster.psql("SELECT pg_postmaster_start_time()")
        failed(project.run("restore", f"--backup={item['id']}", "--yes", env=env), 4,
               f"WAL segment {segment}")
        assert cluster.psql("SELECT pg_postmaster_start_time()") == started
        assert cluster_db.revision() == "f8ff2ab1fdfa"
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
    ok(project.run("verify", f"--backup={item['id']}", env=env))
    assert project.backups("pgtest", env=env)[0]["verified"] is True
