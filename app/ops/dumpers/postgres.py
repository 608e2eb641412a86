"""PostgreSQL dumper: `pg_dump` in custom format out, `pg_restore` reading every block back.

The password reaches pg_dump and pg_restore through the environment (PGPASSWORD), never the
command line: every other connection detail goes the same way, so argv holds no secrets at all.
pg_dump compresses nothing itself (-Z0); zstd does it faster on the way to the store.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from typing import Callable

from app.ops.connection import maintenance_options
from app.ops.errors import BackupFailed, ConfigError
from app.ops.signals import spawn
from app.ops.streams import CHUNK

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
    def dump(self, sink, cancel=None) -> None:
        """Stream a custom-format archive into `sink`; raise BackupFailed unless pg_dump exits 0.

        pg_dump reads a snapshot exported by a transaction of ours, and that transaction counts
        every table's rows meanwhile: `row_counts` then describes exactly what the archive holds,
        which `invoke verify --restore-test` compares a restored copy against. `cancel` (a
        Cancellation) kills pg_dump, which ends the dump as a failure."""
        with exported_snapshot(self.url, self.lock_timeout) as (snapshot, conn):
            argv = [self.tool("pg_dump"), "--format=custom", "-Z0", "--no-password",
                    f"--snapshot={snapshot}"]
            if self.lock_timeout:
                argv.append(f"--lock-wait-timeout={self.lock_timeout}")
            counter = RowCounter(conn)
            # A cancel also stops the row counts, which could otherwise wait on a lock.
            stop_counting = conn.connection.dbapi_connection.cancel
            if cancel is not None:
                cancel.on_cancel(stop_counting)
            with tempfile.TemporaryFile() as errors:
                proc = spawn(argv, stdout=subprocess.PIPE, stderr=errors,
                                        env=self.environment())
                if cancel is not None:
                    cancel.on_cancel(proc.kill)
                counter.start()
                try:
                    while chunk := proc.stdout.read(CHUNK):
                        sink.write(chunk)
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
                finally:
                    proc.stdout.close()
                    counter.join()
                    if cancel is not None:
                        cancel.forget(proc.kill)
                        cancel.forget(stop_counting)
                status = proc.wait()
                if status != 0 and connection_lost(conn):
                    raise BackupFailed(f"the server ended the backup's connection while pg_dump "
                                       f"ran (a restart, or its session was terminated): "
                                       f"{_reason(errors)}; nothing was changed, run "
                                       "it again once the server is back")
                if status != 0:
                    raise BackupFailed(f"pg_dump failed (exit status {status}): "
                                       f"{_reason(errors)}; nothing was changed")
            self.row_counts = counter.result()

    def read_back(self, feed: Callable[[object], None]) -> None:
        """Feed the whole archive to `pg_restore -f /dev/null`, which reads every data block
        (`pg_restore --list` would not notice a truncated archive)."""
        argv = [self.tool("pg_restore"), "--file", os.devnull]
        with tempfile.TemporaryFile() as errors:
            proc = spawn(argv, stdin=subprocess.PIPE, stderr=errors,
                                    env=self.environment())
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
                pass_fds: tuple[int, ...] = ()) -> None:
        """pg_restore a seekable custom-format archive into the (empty) `database`, in `jobs`
        parallel workers, stopping at the first error. `pass_fds`: descriptors pg_restore
        inherits, for an archive without a name given as `/proc/self/fd/N` (each worker
        reopens the archive by that path, and finds the same file)."""
        argv = [self.tool("pg_restore"), "--exit-on-error", f"--jobs={max(1, jobs)}",
                f"--dbname={database}", archive_path]
        env = self.environment()
        env["PGDATABASE"] = database
        # Settings a database owner may set for its own sessions; they speed up index builds.
        env["PGOPTIONS"] += " -c maintenance_work_mem=256MB -c synchronous_commit=off"
        with tempfile.TemporaryFile() as errors:
            proc = spawn(argv, stdin=subprocess.DEVNULL, stderr=errors, env=env,
                                    pass_fds=pass_fds)
            try:
                status = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if status != 0:
                raise BackupFailed(f"pg_restore into {database} failed (exit status {status}): "
                                   f"{_reason(errors)}")


@contextlib.contextmanager
def exported_snapshot(url, lock_timeout: str | None):
    """A REPEATABLE READ transaction whose snapshot pg_dump can share (--snapshot)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from app.ops.connection import connect

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
    """Counts each user table's rows on the snapshot's connection, beside the running dump."""

    def __init__(self, conn):
        super().__init__(daemon=True)
        self.conn = conn
        self.counts: dict[str, int] = {}
        self.error: Exception | None = None

    def run(self) -> None:
        from app.ops.databases.postgres import postgres_row_counts

        try:
            # In a savepoint: a count the server refuses (a table the role may not read) must
            # not abort the snapshot's transaction under pg_dump, which then fails on that
            # table itself and says why, instead of on a snapshot that vanished.
            with self.conn.begin_nested():
                self.counts = postgres_row_counts(self.conn)
        except Exception as exc:  # reported by result(), in the caller's thread
            self.error = exc

    def result(self) -> dict[str, int]:
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
