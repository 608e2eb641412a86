"""PostgreSQL dumper: `pg_dump` in custom format out, `pg_restore` reading every block back.

The password reaches pg_dump and pg_restore through the environment (PGPASSWORD), never the
command line: every other connection detail goes the same way, so argv holds no secrets at all.
pg_dump compresses nothing itself (-Z0); zstd does it faster on the way to the store.
"""
from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import subprocess
import tempfile
import threading
from typing import Callable, Iterator

from app.ops.databases.connection import maintenance_options, revision_of
from app.ops.databases.postgres.locks import lock_room, out_of_locks
from app.ops.databases.postgres.owners import owners_in, owners_refusal
from app.ops.databases.postgres.toc import grant_statements, list_text, parse_toc, plan_passes
from app.ops.leftovers import child_path
from app.ops.errors import BackupFailed, ConfigError, GuardRefused
from app.ops.signals import spawn
from app.ops.streams import CHUNK, pipe_size
from app.ops.databases.connection import connect
from app.ops.databases.postgres.row_counts import count_in_batches, user_tables

VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class PostgresDumper:
    engine = "postgresql"
    suffix = ".pgdump.zst"
    format = "pg_dump custom (-Fc -Z0), zstd-compressed"
    read_back_copies = 0  # read_back pipes the archive to pg_restore: no copy on disk

    def __init__(self, url, bin_dir: str | None = None, lock_timeout: str | None = None):
        self.url = url
        self.bin_dir = bin_dir
        self.lock_timeout = lock_timeout
        self.versions: dict[str, str] = {}
        self.row_counts: dict[str, int] | None = None
        self.owners: list[str] | None = None  # other roles owning objects (owners.py)
        self.revision: str | None = None
        self.revision_read = False  # True once dump() read the revision in its snapshot

    # -- tools -----------------------------------------------------------------------------
    def tool(self, name: str) -> str:
        found = shutil.which(name, path=self.bin_dir) if self.bin_dir else shutil.which(name)
        if not found:
            where = f"PG_BIN_DIR ({self.bin_dir})" if self.bin_dir else "PATH"
            raise ConfigError(f"{name} was not found on {where}: install the PostgreSQL client "
                              "tools or set PG_BIN_DIR to the folder holding them")
        return found

    def tool_version(self, name: str) -> tuple[int, str]:
        try:
            out = subprocess.run([self.tool(name), "--version"], capture_output=True, text=True,
                                 timeout=30, env=self.environment())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"{name} could not be run: {exc}") from None
        match = VERSION_RE.search(out.stdout)
        if out.returncode != 0 or not match:
            raise ConfigError(f"{name} --version did not report a PostgreSQL version "
                              f"(got {out.stdout.strip()!r}): check PG_BIN_DIR")
        text = match.group(1) + (f".{match.group(2)}" if match.group(2) else "")
        self.versions[name] = text
        return int(match.group(1)), text

    def check_tools(self, server_version_num: int) -> None:
        """Refuse, before anything runs, a pg_dump or pg_restore older than the server."""
        server_major = server_version_num // 10000
        server_text = f"{server_major}.{server_version_num % 10000}"
        self.versions["server"] = server_text
        for name in ("pg_dump", "pg_restore"):
            major, text = self.tool_version(name)
            if major < server_major:
                raise ConfigError(
                    f"{name} {text} cannot dump a PostgreSQL {server_major} server: install "
                    f"{name} {server_major} or newer and point PG_BIN_DIR at its folder")

    def environment(self) -> dict[str, str]:
        # Only our own connection details reach libpq: a stray PGPASSFILE, PGSERVICE or
        # PGDATABASE in the caller's shell must not redirect a backup.
        env = {k: v for k, v in os.environ.items()
               if not (k.startswith("PG") and not k.startswith("PG_"))}
        url = self.url
        pairs = {"PGHOST": url.host, "PGPORT": url.port, "PGUSER": url.username,
                 "PGDATABASE": url.database, "PGPASSWORD": url.password}
        for key, value in url.query.items():
            # libpq options given in the URL's query (sslmode=require ...) travel as PG* too.
            if isinstance(value, str) and re.fullmatch(r"[a-z_]+", key):
                pairs["PG" + key.upper().replace("_", "")] = value
        env.update({k: str(v) for k, v in pairs.items() if v is not None and v != ""})
        env["PGAPPNAME"] = "invoke-backup"
        # pg_dump and pg_restore switch the role's timeouts off themselves, but only after a
        # few statements of their own: from the first one on, as the tool's other sessions.
        env["PGOPTIONS"] = maintenance_options(url)
        return env

    # -- dump and read back ----------------------------------------------------------------
    def dump(self, sink) -> None:
        """Stream a custom-format archive into `sink`; raise BackupFailed unless pg_dump exits 0.

        pg_dump reads a snapshot exported by a transaction of ours; in that snapshot the alembic
        revision is read (`revision`: what the archive holds, even if a migrate commits while
        the backup starts) and every table's rows are counted: `row_counts` then describes
        exactly what the archive holds, which `invoke verify --restore-test` compares a restored
        copy against; `owners` are the roles that own its objects (owners.py)."""
        with exported_snapshot(self.url, self.lock_timeout) as (snapshot, conn):
            self.revision = revision_of(conn)
            self.revision_read = True
            # Recorded in the manifest: a restore refuses, before any work, a backup whose
            # owners the restoring role may not give objects to.
            self.owners = owners_in(conn)
            room = lock_room(conn)
            if not room.enough:
                raise BackupFailed(f"pg_dump would run out of locks: "
                                   f"{room.advice(self.url.database)}; nothing was changed")
            argv = [self.tool("pg_dump"), "--format=custom", "-Z0", "--no-password",
                    f"--snapshot={snapshot}"]
            if self.lock_timeout:
                argv.append(f"--lock-wait-timeout={self.lock_timeout}")
            counter = RowCounter(self.url, snapshot, self.lock_timeout)
            with tempfile.TemporaryFile() as errors:
                proc = spawn(argv, stdout=subprocess.PIPE, stderr=errors,
                             env=self.environment(), pipesize=pipe_size())
                counter.start()
                try:
                    for chunk in _chunks_of(proc.stdout):
                        sink.write(chunk)
                except BaseException:
                    proc.kill()
                    proc.wait()
                    counter.stop()
                    raise
                finally:
                    proc.stdout.close()
                    counter.join()
                status = proc.wait()
                if status != 0 and connection_lost(conn):
                    raise BackupFailed(f"the server ended the backup's connection while pg_dump "
                                       f"ran (a restart, or its session was terminated): "
                                       f"{_reason(errors)}; nothing was changed, run "
                                       "it again once the server is back")
                if status != 0:
                    reason = _reason(errors)
                    if out_of_locks(reason):
                        reason += f"; {room.advice(self.url.database)}"
                    raise BackupFailed(f"pg_dump failed (exit status {status}): "
                                       f"{reason}; nothing was changed")
            self.row_counts = counter.result()

    def read_back(self, feed: Callable[[object], None]) -> None:
        """Feed the whole archive to `pg_restore -f /dev/null`, which reads every data block
        (`pg_restore --list` would not notice a truncated archive)."""
        argv = [self.tool("pg_restore"), "--file", os.devnull]
        with tempfile.TemporaryFile() as errors:
            proc = spawn(argv, stdin=subprocess.PIPE, stderr=errors,
                         env=self.environment(), pipesize=pipe_size())
            try:
                feed(proc.stdin)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # pg_restore stopped reading: its exit status and message say why
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            status = proc.wait()
            if status != 0:
                raise BackupFailed(f"the archive does not read back whole: pg_restore: "
                                   f"{_reason(errors)}")


    def restore(self, archive_path: str, database: str, jobs: int = 1,
                pass_fds: tuple[int, ...] = ()) -> list[str]:
        """pg_restore a seekable custom-format archive into the (empty) `database`, in `jobs`
        parallel workers, stopping at the first error; the notes the engineer must read
        afterwards. `pass_fds`: descriptors pg_restore inherits, for an archive without a name
        given as `/proc/self/fd/N` (each worker reopens the archive by that path, and finds
        the same file). Objects of other roles get their owners back (toc.py, owners.py)."""
        env = self.environment()
        env["PGDATABASE"] = database
        listing = self._pg_restore(["--list", archive_path], database, env, pass_fds)
        user, superuser = self._restoring_role(database)
        plan = plan_passes(parse_toc(listing), user, superuser)
        self._check_owners(database, plan.owners)
        notes = self._skipped_grants(archive_path, database, env, pass_fds, plan.skipped)
        # Settings a database owner may set for its own sessions; they speed up index builds.
        # The copy is the tool's own until the swap: a crash only loses a copy that is dropped.
        env["PGOPTIONS"] += " -c maintenance_work_mem=256MB -c synchronous_commit=off"
        restore = ["--exit-on-error", f"--jobs={max(1, jobs)}", f"--dbname={database}"]
        if not plan.passes:
            self._pg_restore([*restore, archive_path], database, env, pass_fds)
        for entries in plan.passes:
            with tempfile.TemporaryFile("w+") as chosen:  # unnamed: a kill leaves nothing
                chosen.write(list_text(entries))
                self._pg_restore([*restore, f"--use-list={child_path(chosen)}", archive_path],
                                 database, env, (*pass_fds, chosen.fileno()))
        return notes

    def _pg_restore(self, args: list[str], database: str, env: dict,
                    pass_fds: tuple[int, ...]) -> str:
        """Run pg_restore with `args`; its output (a listing, a script), or BackupFailed."""
        with tempfile.TemporaryFile() as errors, tempfile.TemporaryFile() as out:
            proc = spawn([self.tool("pg_restore"), *args], stdin=subprocess.DEVNULL,
                         stdout=out, stderr=errors, env=env, pass_fds=pass_fds)
            try:
                status = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if status != 0:
                raise BackupFailed(f"pg_restore into {database} failed (exit status {status}): "
                                   f"{_reason(errors)}")
            out.seek(0)
            return out.read().decode("utf-8", "replace")

    def _restoring_role(self, database: str) -> tuple[str, bool]:
        from sqlalchemy import text

        with connect(self.url.set(database=database)) as conn:
            row = conn.execute(text("SELECT current_user, rolsuper FROM pg_roles "
                                    "WHERE rolname = current_user")).one()
        return row[0], bool(row[1])

    def _check_owners(self, database: str, owners: set[str]) -> None:
        """Refuse, before pg_restore runs, an archive whose objects go to roles the restoring
        role may not give them to (owners.py)."""
        if not owners:
            return
        with connect(self.url.set(database=database)) as conn:
            why = owners_refusal(conn, owners)
        if why:
            raise GuardRefused(f"{why}, then run it again; the live database was not changed")

    def _skipped_grants(self, archive_path: str, database: str, env: dict,
                        pass_fds: tuple[int, ...], skipped: list) -> list[str]:
        """The note for grants on the server's own functions, left out: only a superuser may
        give them, in the restored database, with the statements the archive holds."""
        if not skipped:
            return []
        with tempfile.TemporaryFile("w+") as chosen:
            chosen.write(list_text(skipped))
            script = self._pg_restore(["--file=-", f"--use-list={child_path(chosen)}",
                                       archive_path], database, env,
                                      (*pass_fds, chosen.fileno()))
        statements = grant_statements(script)
        return [f"the backup's {len(skipped)} grant(s) on the server's own objects "
                f"({', '.join(e.name for e in skipped)}) were left out, as only a superuser "
                f"may give them: a superuser gives them back in the restored database with: "
                f"{' '.join(statements)}"]


def _chunks_of(pipe) -> Iterator[bytes]:
    """What pg_dump writes, as it comes, waking each second even when nothing comes: a SIGTERM
    the kernel hands to another thread of this process (the read-back's) only trips a flag,
    which the main thread acts on (app/ops/signals.py) between two Python steps, never inside
    a read that blocks (a pg_dump stuck on a lock writes nothing for minutes)."""
    fd = pipe.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return
        yield chunk


@contextlib.contextmanager
def exported_snapshot(url, lock_timeout: str | None):
    """A REPEATABLE READ transaction whose snapshot pg_dump can share (--snapshot)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError


    with connect(url) as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        transaction = conn.begin()
        try:
            if lock_timeout:
                conn.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": lock_timeout})
            yield conn.execute(text("SELECT pg_export_snapshot()")).scalar(), conn
        finally:
            # The transaction only read: ending it loses nothing. On a connection the server
            # ended (a restart) the ROLLBACK fails too, and must not replace the error that
            # says what happened.
            with contextlib.suppress(SQLAlchemyError):
                transaction.rollback()


def connection_lost(conn) -> bool:
    """Whether the server has ended `conn`'s session (asked with a statement of its own)."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    if conn.invalidated:  # found dead already (by the row counts beside pg_dump)
        return True
    try:
        conn.exec_driver_sql("SELECT 1")
    except DBAPIError as exc:
        return bool(exc.connection_invalidated)
    except SQLAlchemyError:
        return conn.invalidated
    return False


class RowCounter(threading.Thread):
    """Counts each user table's rows in the dump's snapshot, beside the running dump, on a
    connection of its own: each batch of tables in a transaction that imports the snapshot
    (the exporting one stays open until the counts are done), so its locks are let go batch
    by batch instead of doubling pg_dump's."""

    def __init__(self, url, snapshot: str, lock_timeout: str | None):
        super().__init__(daemon=True)
        self.url, self.snapshot, self.lock_timeout = url, snapshot, lock_timeout
        self.counts: dict[str, int] = {}
        self.error: Exception | None = None
        self._stopped = False
        self._cancel_query = None

    def run(self) -> None:
        try:
            with connect(self.url) as conn:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                self._cancel_query = conn.connection.dbapi_connection.cancel
                with conn.begin():
                    self._in_snapshot(conn)
                    tables = user_tables(conn)
                self.counts = count_in_batches(conn, tables, self._in_snapshot,
                                               stopped=lambda: self._stopped)
        except Exception as exc:  # reported by result(), in the caller's thread
            self.error = exc

    def _in_snapshot(self, conn) -> None:
        from sqlalchemy import text

        # Utility statement: no bind parameter; pg_export_snapshot's ids are hex and dashes.
        conn.execute(text(f"SET TRANSACTION SNAPSHOT '{self.snapshot}'"))
        if self.lock_timeout:
            conn.execute(text("SELECT set_config('lock_timeout', :t, true)"),
                         {"t": self.lock_timeout})

    def stop(self) -> None:
        self._stopped = True
        if self._cancel_query is not None:
            with contextlib.suppress(Exception):
                self._cancel_query()

    def result(self) -> dict[str, int]:
        if self._stopped and self.error is None:
            raise BackupFailed("counting rows for the manifest was stopped")
        if self.error is not None:
            raise BackupFailed(f"counting rows for the manifest failed: {self.error}")
        return self.counts


def _reason(stream) -> str:
    """What a failed pg_dump or pg_restore said: its first `error:` line and the `detail:`,
    `hint:` or `Query was:` lines after it (PostgreSQL 15's tools end with the detail, so the
    last line alone would drop the reason), else its last line."""
    stream.seek(0)
    lines = [" ".join(line.split()) for line in
             stream.read().decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return "no message"
    first = next((i for i, line in enumerate(lines) if ERROR_LINE.search(line)), None)
    if first is None:
        return lines[-1]
    shown = [lines[first]]
    for line in lines[first + 1:]:
        if not FOLLOW_LINE.search(line):
            break
        shown.append(line)
    return " -- ".join(shown)


ERROR_LINE = re.compile(r"^(pg_\w+: )?(error|fatal):", re.IGNORECASE)
FOLLOW_LINE = re.compile(r"^(pg_\w+: )?(detail|hint|query was|command was):", re.IGNORECASE)
