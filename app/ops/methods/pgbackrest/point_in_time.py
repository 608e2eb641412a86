"""`invoke restore` of a pgBackRest restore point: a point-in-time recovery of the whole cluster.

Order: refuse a cluster holding other databases unless --whole-cluster (they would be rewound
too); check the restore point is still reachable in pgBackRest's repository; switch WAL and wait
until it is archived, so every write made after the restore point stays on the old timeline in
the archive; stop the cluster (PG_STOP_COMMAND); `pgbackrest restore --delta` to the restore
point's LSN on its timeline, from the backup it rests on (`--set`, so a backup taken after the
restore point cannot make recovery end before the target); start it (PG_START_COMMAND); wait
until it has promoted and takes connections; clear the recovery target pgBackRest left in
postgresql.auto.conf; take an incremental backup on the new timeline, which the next restore
point needs. It must run on the database host: pgBackRest restores into the local data folder.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import time

from app.ops.errors import BackupFailed, ConfigError, GuardRefused
from app.ops.methods.pgbackrest.archiver import (POLL_SECONDS, check_primary, read_archiver, timeline_of,
                              wait_archived)
from app.ops.methods.pgbackrest.command import PgBackRest, run_bounded
from app.ops.methods.pgbackrest.verify import check_reachable
from app.ops.databases.connection import connect
from app.ops.errors import DatabaseUnreachable

# What this restore asks pgBackRest to write (--type=lsn, --target-action, --target-timeline).
RECOVERY_SETTINGS = ("recovery_target_lsn", "recovery_target_action", "recovery_target_timeline")


def other_databases(conn) -> list[str]:
    from sqlalchemy import text
    return list(conn.execute(text(
        "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' "
        "AND datname <> current_database() ORDER BY datname")).scalars())


def _command(settings, setting) -> list[str]:
    """PG_STOP_COMMAND or PG_START_COMMAND (`setting`: its declaration), split into words."""
    name, value = setting.name, settings.typed(setting)
    if value is None:
        raise ConfigError(f"restoring a pgBackRest restore point needs {name} (how to "
                          f"{'stop' if 'STOP' in name else 'start'} the cluster on this host, "
                          "e.g. `pg_ctlcluster 15 main stop -m fast`): set it for env "
                          f"'{settings.env}'")
    return value


def _run(argv: list[str], what: str, timeout: float, after: str) -> None:
    try:
        result = run_bounded(argv, timeout)
    except FileNotFoundError:
        raise BackupFailed(f"cannot run {argv[0]} ({what}); {after}") from None
    except subprocess.TimeoutExpired:
        raise BackupFailed(f"{what} did not finish within {timeout:g} s; {after}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no message"]
        raise BackupFailed(f"{what} failed (exit {result.returncode}): {lines[-1]}; {after}")


def restore_timeout(settings) -> float:
    """PGBACKREST_RESTORE_TIMEOUT (seconds): the longest the stop, restore and start may take."""
    return settings.PGBACKREST_RESTORE_TIMEOUT


def restore_restore_point(target, manifest, *, whole_cluster: bool, reporter) -> list[str]:
    """Rewind the cluster to `manifest`'s restore point; returns what to tell the engineer."""
    record = manifest.pgbackrest
    settings = target.settings
    pgbackrest = PgBackRest.from_settings(settings)
    stop = _command(settings, type(settings).PG_STOP_COMMAND)
    start = _command(settings, type(settings).PG_START_COMMAND)
    long_timeout = restore_timeout(settings)
    end_lsn, old_timeline = _archive_old_timeline(target, manifest, pgbackrest, whole_cluster,
                                                  reporter)
    reporter.info(f"WAL up to {end_lsn} (timeline {old_timeline}) archived; stopping the cluster")
    steps = _Steps()
    _run(stop, "PG_STOP_COMMAND", long_timeout,
         "the cluster may still be running; nothing was restored")
    restore = pgbackrest.argv(
        "--delta", _every_core(), f"--set={record['backup_label']}", "--type=lsn",
        f"--target={record['lsn']}", f"--target-timeline={record['timeline']}",
        "--target-action=promote", "restore")
    by_hand = " ".join(shlex.quote(a) for a in restore)
    steps.done("stop")
    _run(restore, "pgbackrest restore", long_timeout,
         f"the cluster is stopped; run `{by_hand}` and then PG_START_COMMAND by hand")
    steps.done("pgbackrest restore")
    reporter.info(f"pgBackRest restored backup {record['backup_label']}; starting the cluster "
                  f"to replay WAL up to {record['lsn']}")
    _run(start, "PG_START_COMMAND", long_timeout,
         "the cluster is restored but stopped: look at its log, then start it by hand")
    _wait_promoted(target.database.url, long_timeout)
    steps.done("start, replay and promotion")
    notes = [_clear_recovery_settings(target.database.url),
             _backup_new_timeline(pgbackrest, long_timeout)]
    steps.done("incremental backup")
    notes.append(f"steps: {', '.join(steps.lines)}.")
    notes.append(_aside_note(pgbackrest, record, end_lsn, old_timeline))
    return notes


class _Steps:
    """How long each step of the restore took, for the notes."""

    def __init__(self):
        self.lines: list[str] = []
        self.clock = time.monotonic()

    def done(self, name: str) -> None:
        self.lines.append(f"{name} {time.monotonic() - self.clock:.1f} s")
        self.clock = time.monotonic()


def _archive_old_timeline(target, manifest, pgbackrest, whole_cluster: bool,
                          reporter) -> tuple[str, int]:
    """Refuse what cannot be rewound, check the restore point is reachable, then archive the
    old timeline's last segment: the writes made since the restore point are kept before
    anything stops. Returns the old timeline's end LSN and the timeline."""
    from sqlalchemy import text


    record = manifest.pgbackrest
    with connect(target.database.url) as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        others = other_databases(conn)
        if others and not whole_cluster:
            raise GuardRefused(f"restore point {record['restore_point']} rewinds the whole "
                               f"cluster, which also holds {', '.join(others)}: they would lose "
                               "every write since then too; pass --whole-cluster to rewind them "
                               "as well; nothing was changed")
        check_primary(conn)
        system_id = conn.execute(text("SELECT system_identifier FROM pg_control_system()")).scalar()
        if record.get("system_identifier") and str(system_id) != record["system_identifier"]:
            raise ConfigError(f"backup {manifest.id} was taken on another cluster (system "
                              f"identifier {record['system_identifier']}, this one is "
                              f"{system_id}); nothing was changed")
        _check_restorable(pgbackrest, manifest)
        reporter.info(f"restore point {record['restore_point']} is reachable from pgBackRest "
                      f"backup {record['backup_label']}")
        end_lsn = conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar()
        end_segment = conn.execute(text("SELECT pg_walfile_name(pg_switch_wal())")).scalar()
        wait_archived(conn, end_segment, pgbackrest.timeout)
        if read_archiver(conn).failing:
            raise BackupFailed("WAL archiving is failing: the writes since the restore point "
                               "would be lost; fix archiving first; nothing was changed")
    return end_lsn, timeline_of(end_segment)


def _every_core() -> str:
    """pgBackRest copies and checksums files in one process unless told otherwise: the restore
    (the cluster is down meanwhile) and the backup right after it use every core of the host."""
    return f"--process-max={max(1, min(os.cpu_count() or 1, 16))}"


def _check_restorable(pgbackrest, manifest) -> None:
    """Before the cluster stops: the restore point is reachable (`pgbackrest info`, quick at
    any size), and its last `invoke verify` did not find it damaged. Restore does not run
    `pgbackrest verify` itself: up to pgBackRest 2.54 it reads the whole repository, which on
    the databases this method is for takes longer than the restore; `invoke verify` on a
    schedule (and `invoke check`'s CHECK_VERIFY_MAX_AGE) reads it, and pgBackRest checks each
    file's checksum as it restores it."""
    check_reachable(pgbackrest, manifest)
    if not manifest.verified:
        raise BackupFailed(f"restore point {manifest.pgbackrest['restore_point']} failed its last "
                           f"verification ({manifest.verify_error}); nothing was changed: repair "
                           f"the repository and run `invoke verify --env={manifest.env} "
                           f"--backup={manifest.id}` again, or restore another backup")


def _backup_new_timeline(pgbackrest, timeout: float) -> str:
    """The next restore point needs a pgBackRest backup on the new timeline: take one now (a
    warning, not a failure, if it cannot)."""
    try:
        # --start-fast: an immediate checkpoint, not a spread one that could take minutes
        # whatever the DBA's pgbackrest.conf says.
        pgbackrest.run("--type=incr", "--start-fast", _every_core(), "backup", timeout=timeout)
        return "an incremental pgBackRest backup was taken on the new timeline."
    except (BackupFailed, ConfigError) as exc:
        return (f"WARNING: no pgBackRest backup on the new timeline ({exc}): take one "
                f"(`pgbackrest --stanza={pgbackrest.stanza} --type=incr backup`) before the "
                "next migrate.")


def _aside_note(pgbackrest, record: dict, end_lsn: str, old_timeline: int) -> str:
    """How to look at the writes made after the restore point: restore them aside, into
    another folder, from the backup the restore point rests on (the newest one is now on the
    new timeline), with archiving off so the copy never pushes WAL into the stanza."""
    aside = " ".join(shlex.quote(a) for a in pgbackrest.argv(
        "--pg1-path=/path/to/an/empty/folder", f"--set={record['backup_label']}",
        "--type=lsn", f"--target={end_lsn}", f"--target-timeline={old_timeline}",
        "--target-action=promote", "--archive-mode=off", "restore"))
    return (f"the writes made after the restore point are kept in pgBackRest's archive on "
            f"timeline {old_timeline} up to LSN {end_lsn}; to look at them, restore them "
            f"aside (an empty folder, then start it on another port) with:\n    {aside}")


def _wait_promoted(url, timeout: float) -> None:
    """Until the server takes connections and is out of recovery (promoted)."""
    from sqlalchemy import text


    started, last = time.monotonic(), "not reachable"
    while time.monotonic() - started < timeout:
        try:
            with connect(url) as conn:
                if not conn.execute(text("SELECT pg_is_in_recovery()")).scalar():
                    return
                last = "still in recovery"
        except DatabaseUnreachable as exc:
            last = str(exc)
        time.sleep(POLL_SECONDS * 4)
    raise BackupFailed(f"the cluster was restored and started but is not promoted after "
                       f"{timeout:g} s ({last}): look at its log")


def _clear_recovery_settings(url) -> str:
    """pgBackRest writes the recovery target into postgresql.auto.conf, where it stays after
    promotion and would steer any later recovery: reset what this restore asked it to write."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError


    failed = []
    with connect(url) as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        for name in RECOVERY_SETTINGS:
            try:
                conn.execute(text(f"ALTER SYSTEM RESET {name}"))
            except DBAPIError:
                failed.append(name)
    if failed:
        return (f"WARNING: remove {', '.join(failed)} from postgresql.auto.conf by hand (the role "
                "may not ALTER SYSTEM them; see docs/pgbackrest.md).")
    return "the recovery target settings were removed from postgresql.auto.conf."
