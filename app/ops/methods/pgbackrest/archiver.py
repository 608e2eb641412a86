"""The server's WAL archiver, as a restore point needs it: pg_stat_archiver (failing? how far
behind?), the .ready backlog (pg_wal/archive_status), a primary that archives, and waiting until
a given segment is archived. Plain SQL on a connection the caller opens; pgBackRest itself is
app/ops/methods/pgbackrest/command.py's.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

from app.ops.errors import BackupFailed, ConfigError, GuardRefused
from app.settings import Settings
from app.ops.databases.connection import connect, first_line

SEGMENT_RE = re.compile(r"[0-9A-F]{24}")
POLL_SECONDS = 0.05
# Segments (16 MiB each by default) the archiver may still owe before a restore point is
# refused: its own segment queues behind them, and at one segment a second 32 drain well
# within the default PGBACKREST_TIMEOUT of 60 s.
DEFAULT_MAX_READY = int(Settings.PGBACKREST_MAX_READY.default)


def max_ready_of(settings) -> int:
    """PGBACKREST_MAX_READY: the most .ready WAL segments a restore point is taken behind."""
    return settings.PGBACKREST_MAX_READY


def timeline_of(segment: str) -> int:
    return int(segment[:8], 16)


@dataclass
class Archiver:
    """pg_stat_archiver, as one row."""
    archived: str | None
    archived_at: datetime | None
    failed: str | None
    failed_at: datetime | None

    @property
    def failing(self) -> bool:
        return self.failed_at is not None and (self.archived_at is None
                                               or self.failed_at > self.archived_at)

    def reached(self, segment: str) -> bool:
        """Has the archiver archived `segment` or a later one of the same timeline?"""
        archived = self.archived or ""
        return (bool(SEGMENT_RE.fullmatch(archived)) and archived[:8] == segment[:8]
                and archived >= segment)


def read_archiver(conn) -> Archiver:
    from sqlalchemy import text
    row = conn.execute(text("SELECT last_archived_wal, last_archived_time, last_failed_wal, "
                            "last_failed_time FROM pg_stat_archiver")).one()
    return Archiver(*row)


def check_primary(conn) -> None:
    """A restore point can only be made on a primary that archives."""
    from sqlalchemy import text
    if conn.execute(text("SELECT pg_is_in_recovery()")).scalar():
        raise GuardRefused("the database server is a standby (in recovery): a restore point can "
                           "only be created on the primary; point the env at the primary")
    mode = conn.execute(text("SHOW archive_mode")).scalar()
    if mode == "off":
        raise ConfigError("the server has archive_mode=off, so pgBackRest receives no WAL: set "
                          "archive_mode and archive_command as pgBackRest's user guide says")


def count_ready(conn) -> tuple[int | None, str | None]:
    """WAL segments the archiver still owes (pg_wal/archive_status/*.ready), or None and why
    not: pg_ls_archive_statusdir() needs pg_monitor or a superuser."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError


    try:
        return conn.execute(text("SELECT count(*) FROM pg_ls_archive_statusdir() "
                                 "WHERE name LIKE '%.ready'")).scalar(), None
    except DBAPIError as exc:
        conn.rollback()  # status reads on in the same session
        return None, (f"{first_line(exc.orig)}; GRANT pg_monitor TO the role to count the "
                      ".ready backlog")


def check_ready_backlog(conn, max_ready: int) -> None:
    """Refuse a restore point behind more .ready segments than PGBACKREST_MAX_READY: its own
    segment would wait for all of them. A role that may not count them is not refused (status
    says so)."""
    ready, _ = count_ready(conn)
    if ready is not None and ready > max_ready:
        raise GuardRefused(f"{ready} WAL segments wait to be archived (.ready in "
                           f"pg_wal/archive_status), more than PGBACKREST_MAX_READY={max_ready}: "
                           "the restore point's segment would queue behind them; wait until the "
                           "archiver catches up (pg_stat_archiver) or raise PGBACKREST_MAX_READY; "
                           "nothing was changed")


def check_archiving(archiver: Archiver) -> None:
    if archiver.failing:
        raise BackupFailed(f"WAL archiving is failing (last failed segment {archiver.failed} at "
                           f"{archiver.failed_at:%Y-%m-%d %H:%M:%S %Z}, after the last archived "
                           f"one): fix archive_command or the pgBackRest repository; nothing was "
                           "changed")


def wait_archived(conn, segment: str, timeout: float) -> float:
    """Poll the archiver until `segment` is archived; the seconds it took. An archive_command
    that fails on the way, or the timeout, is BackupFailed."""
    started = time.monotonic()
    while True:
        archiver = read_archiver(conn)
        if archiver.reached(segment):
            return time.monotonic() - started
        if archiver.failing and archiver.failed and archiver.failed[:24] >= segment:
            raise BackupFailed(f"WAL segment {segment} could not be archived (archive_command "
                               f"failed on {archiver.failed}): fix archive_command or the "
                               "pgBackRest repository; nothing was changed")
        if time.monotonic() - started > timeout:
            raise BackupFailed(f"WAL segment {segment} was not archived within {timeout:g} s "
                               f"(PGBACKREST_TIMEOUT; last archived: {archiver.archived or 'none'})"
                               ": check archive_command and the pgBackRest repository; nothing "
                               "was changed")
        time.sleep(POLL_SECONDS)


def archiver_facts(url) -> dict:
    """pg_stat_archiver, the segments between it and the current one, and the .ready backlog
    (None, with the reason, when the role may not count it)."""
    from sqlalchemy import text


    with connect(url) as conn:
        archiver = read_archiver(conn)
        current = conn.execute(text("SELECT pg_walfile_name(pg_current_wal_lsn())")).scalar()
        ready, ready_unknown = count_ready(conn)
    behind = None
    if archiver.archived and SEGMENT_RE.fullmatch(archiver.archived) and \
            archiver.archived[:8] == current[:8]:
        behind = max(0, int(current[8:], 16) - int(archiver.archived[8:], 16) - 1)
    return {"last_archived_wal": archiver.archived,
            "last_archived_at": archiver.archived_at.isoformat() if archiver.archived_at else None,
            "failing": archiver.failing, "last_failed_wal": archiver.failed,
            "segments_behind": behind, "ready": ready, "ready_unknown": ready_unknown}
