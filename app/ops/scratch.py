"""Scratch copies of a backup, for rehearsals and restore tests: built, used, always dropped.

PostgreSQL: a new database on the same server (`DB__scratch_STAMP`), restored in parallel from
the verified archive, a file without a name (app/ops/leftovers.py). SQLite: a file in a private temporary folder. The copy is dropped whatever
happens inside the block; one left behind by a killed run is dropped by the next.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from datetime import datetime
from pathlib import Path
from typing import Iterator

from app.ops.backups import BackupManifest, verify_backup
from app.ops.database import connect, postgres_row_counts, server_version_num
from app.ops.leftovers import child_path, private_folder, unnamed_file
from app.settings import engine_kind

SCRATCH = "__scratch_"


def with_database(settings, url):
    """The same settings, pointed at another database."""
    values = dict(settings.values)
    values["DATABASE_URL"] = url.render_as_string(hide_password=False)
    return dataclasses.replace(settings, values=values)


def refuse_restore_point(backup: BackupManifest) -> None:
    """A restore point is a whole cluster's state: a scratch database cannot hold it."""
    if backup.is_restore_point:
        from app.ops.errors import ConfigError
        raise ConfigError(f"backup {backup.id} is a pgBackRest restore point, which only a whole "
                          "cluster can hold: drill it by restoring it aside with pgbackrest on "
                          "another host or port (README, 'pgBackRest restore points')")


@contextlib.contextmanager
def scratch_copy(settings, backup: BackupManifest, *, now: datetime) -> Iterator[object]:
    """Yields settings whose database is a fresh, verified restore of `backup`."""
    refuse_restore_point(backup)
    with private_folder("scratch") as folder:
        if engine_kind(settings.database_url) == "sqlite":
            # SQLite opens files by name (and resolves /proc/self/fd links): this copy lives
            # in the run's held folder, which the next run sweeps if this one is killed.
            archive = Path(folder) / "archive"
            with open(os.open(archive, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as extracted:
                verify_backup(settings, backup, now=now, extract_to=extracted)
            yield with_database(settings, settings.database_url.set(database=str(archive)))
            return
        with unnamed_file(folder) as archive:  # no name: a killed run leaves nothing
            verify_backup(settings, backup, now=now, extract_to=archive)
            with _postgres_scratch(settings, archive, now) as scratch_url:
                yield with_database(settings, scratch_url)


@contextlib.contextmanager
def _postgres_scratch(settings, archive, now: datetime):
    from app.ops.dumpers import dumper_for
    from app.ops.restore import restore_jobs
    from app.ops.restore_postgres import DatabaseSwap, database_stamp, derived_name

    url = settings.database_url
    server = DatabaseSwap(url)
    server.drop_stale(SCRATCH)
    props = server.properties()
    name = derived_name(url.database, SCRATCH, database_stamp(now))
    dumper = dumper_for(settings)
    with connect(url) as conn:
        dumper.check_tools(server_version_num(conn))
    server.create_like(name, props)
    try:
        dumper.restore(child_path(archive), name, jobs=restore_jobs(),
                       pass_fds=(archive.fileno(),))
        yield url.set(database=name)
    finally:
        server.drop(name)


def row_counts(settings) -> dict[str, int]:
    url = settings.database_url
    if engine_kind(url) == "sqlite":
        from app.ops.dumpers.sqlite import count_rows
        return count_rows(Path(url.database))
    with connect(url) as conn:
        return postgres_row_counts(conn)
