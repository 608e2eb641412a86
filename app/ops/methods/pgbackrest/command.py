"""BACKUP_METHOD=pgbackrest: a backup is a named restore point whose WAL pgBackRest has
archived, resting on a pgBackRest backup of the current timeline.

This module owns talking to pgBackRest (always through PGBACKREST_COMMAND split like a shell
would, never through one, with our own timeout: with the repository unreachable one
`archive-push` hangs for minutes); the server's archiver is app/ops/methods/pgbackrest/archiver.py's. The restore point is recorded
in a manifest in our own store, like every other backup, because `pgbackrest info` does not
list restore points. Verifying one is app/ops/methods/pgbackrest/verify.py's, the point-in-time restore
app/ops/methods/pgbackrest/point_in_time.py's.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime

from app.ops.methods.pgbackrest.archiver import (SEGMENT_RE, archiver_facts, check_archiving, check_primary,
                              check_ready_backlog, max_ready_of, read_archiver, timeline_of,
                              wait_archived)
from app.ops.errors import BackupFailed, ConfigError
from app.ops.signals import spawn
from app.ops.catalog.manifest import BackupManifest, iso, MANIFEST_SUFFIX, new_backup_id, TOOL_NAME
from app.ops.databases.connection import connect, first_line
from app.ops.errors import OpsError

METHOD = "pgbackrest"
FORMAT = "pgbackrest-restore-point"
# 2.39 made `verify` (which `invoke verify` runs) a user command, with its text output; it is
# also the first release that supports PostgreSQL 15. Everything else we call is older.
MINIMUM_VERSION = (2, 39)
VERSION_RE = re.compile(r"pgBackRest (\d+)\.(\d+)")
# What pgBackRest says when it may not read or write its repository, lock or log files: run by
# another OS user than the one that owns them. strerror(EACCES), capitalised: PostgreSQL's own
# "permission denied for function ..." (a missing grant, relayed by pgbackrest) is another matter.
DENIED = "Permission denied"
# pgBackRest's words for a repository host it could not reach (error 049, HostConnectError):
# that says nothing about the backups in it.
HOST_UNREACHABLE = re.compile(r"HostConnectError|unable to connect to")


def timeout_of(settings) -> float:
    """PGBACKREST_TIMEOUT (seconds): the longest any pgbackrest call or wait may take."""
    return settings.PGBACKREST_TIMEOUT


@dataclass
class PgBackRest:
    """One stanza, run through the configured command."""
    command: list[str]
    stanza: str
    config: str | None
    timeout: float

    @classmethod
    def from_settings(cls, settings) -> "PgBackRest":
        stanza = settings.PGBACKREST_STANZA
        if not stanza:
            raise ConfigError(f"BACKUP_METHOD=pgbackrest needs PGBACKREST_STANZA for env "
                              f"'{settings.env}': set it to the stanza that archives this cluster")
        command = settings.PGBACKREST_COMMAND
        if not command:
            raise ConfigError("PGBACKREST_COMMAND is empty: set it to e.g. `pgbackrest`")
        return cls(command, stanza, settings.PGBACKREST_CONFIG, timeout_of(settings))

    def argv(self, *args: str) -> list[str]:
        config = [f"--config={self.config}"] if self.config else []
        return [*self.command, *config, f"--stanza={self.stanza}", *args]

    def run(self, *args: str, timeout: float | None = None, unreachable=BackupFailed) -> str:
        """Run one pgbackrest command; its stdout. Any failure is one sentence (BackupFailed;
        ConfigError when pgbackrest was denied its own files; `unreachable` when it did not
        finish in time or could not reach the repository's host)."""
        what = f"pgbackrest {args[-1] if args else ''}".strip()
        result = self.call(self.argv(*args), what, "check that the repository is reachable",
                           timeout, timed_out=unreachable)
        if result.returncode != 0:
            detail = last_line(result.stderr or result.stdout)
            self.refuse_wrong_user(f"{result.stderr}\n{result.stdout}", detail)
            error = (unreachable if HOST_UNREACHABLE.search(result.stderr + result.stdout)
                     else BackupFailed)
            raise error(f"{what} failed (exit {result.returncode}): {detail}")
        return result.stdout

    def call(self, argv: list[str], what: str, advice: str, timeout: float | None = None, *,
             timed_out=BackupFailed, timeout_setting: str = "PGBACKREST_TIMEOUT"):
        """Run `argv` under our timeout (`timed_out` is raised when it passes); the completed
        process, whatever its exit code."""
        timeout = self.timeout if timeout is None else timeout
        try:
            return run_bounded(argv, timeout, env=_child_environment())
        except FileNotFoundError:
            raise ConfigError(f"cannot run {self.command[0]}: install pgBackRest or set "
                              "PGBACKREST_COMMAND to how it is run as the cluster's owner") from None
        except subprocess.TimeoutExpired:
            raise timed_out(f"{what} did not finish within {timeout:g} s ({timeout_setting}): "
                            f"{advice}") from None

    def check_version(self) -> str:
        """Refuse, before anything changes, a pgbackrest that PGBACKREST_COMMAND cannot run
        (missing, or a `sudo`/`runuser` in front that cannot find it) or one older than
        MINIMUM_VERSION; the version found."""
        command = shlex.join(self.command)
        result = self.call([*self.command, "version"], "pgbackrest version",
                            "check PGBACKREST_COMMAND")
        found = VERSION_RE.search(result.stdout or "")
        if result.returncode != 0 or found is None:
            raise ConfigError(f"cannot run pgbackrest through PGBACKREST_COMMAND (`{command}`): "
                              f"{last_line(result.stderr or result.stdout)}; install pgBackRest "
                              "or set PGBACKREST_COMMAND to how it is run as the cluster's owner")
        version = (int(found.group(1)), int(found.group(2)))
        if version < MINIMUM_VERSION:
            raise ConfigError(f"pgBackRest {version[0]}.{version[1]} (`{command}`) is too old: "
                              f"restore points need pgBackRest {MINIMUM_VERSION[0]}."
                              f"{MINIMUM_VERSION[1]} or newer (for `pgbackrest verify`); "
                              "upgrade it on this host")
        return f"{version[0]}.{version[1]}"

    def refuse_wrong_user(self, output: str, detail: str) -> None:
        """pgBackRest denied its own files: PGBACKREST_COMMAND runs it as an OS user that does
        not own the repository (root, which may read anything, is not caught here)."""
        if DENIED in output:
            raise ConfigError(f"pgbackrest may not use its own files ({detail}): "
                              f"PGBACKREST_COMMAND (`{shlex.join(self.command)}`) runs it as "
                              "another OS user than the one that owns the repository; set it to "
                              "run pgbackrest as the cluster's owner, e.g. `sudo -u postgres "
                              "pgbackrest`")

    def info(self, unreachable=BackupFailed) -> dict:
        """The stanza's entry of `pgbackrest info --output=json`. `unreachable` is raised when
        the repository cannot be reached in time (a verify then records nothing)."""
        try:
            stanzas = json.loads(self.run("--output=json", "info", unreachable=unreachable))
            stanza = next(s for s in stanzas if s.get("name") == self.stanza)
        except (ValueError, StopIteration, TypeError, AttributeError):
            raise BackupFailed(f"pgbackrest info gave no readable entry for stanza "
                               f"'{self.stanza}'") from None
        status = stanza.get("status") or {}
        if status.get("code") not in (0, None):
            message = _status_message(stanza)
            self.refuse_wrong_user(message, message)
            raise (unreachable if HOST_UNREACHABLE.search(message) else BackupFailed)(f"pgBackRest stanza '{self.stanza}' is not usable: {message}; "
                               "check PGBACKREST_CONFIG and the repository (`pgbackrest "
                               f"--stanza={self.stanza} check`)")
        return stanza


def _status_message(stanza: dict) -> str:
    """The stanza's status, with each failing repository's own message: for "other" pgBackRest
    puts the cause (a permission denied, say) only there."""
    message = (stanza.get("status") or {}).get("message", "unknown status")
    causes = [(repo.get("status") or {}).get("message") for repo in stanza.get("repo") or []
              if (repo.get("status") or {}).get("code") not in (0, None)]
    causes = [cause for cause in causes if cause and cause != message]
    return ": ".join([message, *causes])


def run_bounded(argv: list[str], timeout: float, env: dict | None = None):
    """subprocess.run with a timeout that ends the whole process group: `sudo -u postgres
    pgbackrest` or `runuser` killed alone would leave a hanging pgbackrest behind. Stopped
    (Ctrl-C, SIGTERM) the same way."""
    import signal
    with spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL, env=env, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.communicate()
            raise
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _child_environment() -> dict:
    # pgbackrest reads PGBACKREST_* variables as its own options: ours (PGBACKREST_COMMAND,
    # PGBACKREST_TIMEOUT) would be warned about, and the stanza and config are given as options.
    # The database password never goes to pgbackrest: it connects as the cluster's owner.
    return {k: v for k, v in os.environ.items()
            if not k.startswith("PGBACKREST_") and k not in ("PGPASSWORD", "DATABASE_URL",
                                                              "POSTGRES_PASSWORD")}


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def newest_backup_on(stanza_info: dict, timeline: int, lsn: int | None = None) -> dict | None:
    """The newest pgBackRest backup (full, diff or incr) of `timeline` that ended at or before
    `lsn` (when given), or None."""
    found = []
    for backup in stanza_info.get("backup") or []:
        start = (backup.get("archive") or {}).get("start") or ""
        stop_lsn = (backup.get("lsn") or {}).get("stop")
        if backup.get("error") or not SEGMENT_RE.fullmatch(start) or timeline_of(start) != timeline:
            continue
        if lsn is not None and stop_lsn and parse_lsn(stop_lsn) > lsn:
            continue
        found.append(backup)
    return max(found, key=lambda b: (b.get("timestamp") or {}).get("stop") or 0, default=None)


def parse_lsn(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def restore_point_name(reason: str, backup_id: str) -> str:
    """Unique (PostgreSQL allows duplicate names and stops at the first), and within the 63
    characters a restore point name may have: what it was for, then our backup id."""
    words = re.sub(r"[^a-z]+", "-", reason.lower()).strip("-").split("-")
    return f"{'-'.join(words[:2])}-{backup_id}"[-63:]


def take_restore_point(target, *, reason: str, revision: str | None, now: datetime,
                       label: str | None = None):
    """Create a restore point, switch WAL, wait until it is archived, find the pgBackRest backup
    it rests on, and record the manifest. Refuses (nothing changed) when archiving is failing,
    the server is a standby, or the current timeline has no backup."""
    from sqlalchemy import text


    pgbackrest = PgBackRest.from_settings(target.settings)
    max_ready = max_ready_of(target.settings)
    pgbackrest.check_version()
    storage = target.storage
    storage.prepare()
    started = time.monotonic()
    with connect(target.database.url) as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        version = int(conn.execute(text("SHOW server_version_num")).scalar())
        base, timeline, system_id = _base_backup(conn, pgbackrest, max_ready)
        backup_id = new_backup_id(now)
        name = restore_point_name(reason, backup_id)
        lsn, segment = _create_restore_point(conn, name)
        waited = wait_archived(conn, segment, pgbackrest.timeout)
    manifest = BackupManifest(
        id=backup_id, env=target.env, engine=target.database.kind,
        database=target.database.masked_url,
        created_at=iso(now), revision=revision, size=0, raw_size=0, sha256="", artifact="",
        location=f"pgBackRest stanza {pgbackrest.stanza}, restore point {name}",
        format=FORMAT, reason=reason, label=label,
        duration_seconds=round(time.monotonic() - started, 3), tool=TOOL_NAME,
        versions={"postgresql": str(version)}, verified=True, verified_at=iso(now),
        method=METHOD,
        pgbackrest={"stanza": pgbackrest.stanza, "restore_point": name, "lsn": lsn,
                    "segment": segment, "timeline": timeline, "system_identifier": str(system_id),
                    "backup_label": base["label"], "backup_type": base.get("type"),
                    "archive_wait_seconds": round(waited, 3)})
    storage.put_bytes(backup_id + MANIFEST_SUFFIX, manifest.to_json().encode())
    return manifest


def _base_backup(conn, pgbackrest: PgBackRest, max_ready: int) -> tuple[dict, int, str]:
    """Refuse what a restore point cannot be taken on (a standby, failing archiving, a .ready
    backlog, no backup on the current timeline, a stanza of another cluster); return the
    pgBackRest backup it will rest on, the timeline and the system identifier."""
    from sqlalchemy import text

    check_primary(conn)
    check_archiving(read_archiver(conn))
    check_ready_backlog(conn, max_ready)
    current = conn.execute(text("SELECT pg_walfile_name(pg_current_wal_lsn())")).scalar()
    timeline = timeline_of(current)
    system_id = conn.execute(text("SELECT system_identifier FROM pg_control_system()")).scalar()
    try:
        stanza = pgbackrest.info()
    except BackupFailed as exc:
        raise BackupFailed(f"{exc}; nothing was changed") from None
    base = newest_backup_on(stanza, timeline)
    if base is None:
        raise BackupFailed(f"pgBackRest stanza '{pgbackrest.stanza}' has no backup on the "
                           f"current timeline {timeline}: take one with `pgbackrest "
                           f"--stanza={pgbackrest.stanza} --type=incr backup`; nothing was "
                           "changed")
    known = {str(db.get("system-id")) for db in stanza.get("db") or []}
    if known and str(system_id) not in known:
        raise ConfigError(f"pgBackRest stanza '{pgbackrest.stanza}' backs up another cluster "
                          f"(system identifier {', '.join(sorted(known))}, this one is "
                          f"{system_id}): check PGBACKREST_STANZA and PGBACKREST_CONFIG")
    return base, timeline, str(system_id)


def _create_restore_point(conn, name: str) -> tuple[str, str]:
    """The restore point's LSN and WAL segment, then a switch to the next segment so that this
    one can be archived now."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError


    try:
        lsn = conn.execute(text("SELECT pg_create_restore_point(:n)::text"), {"n": name}).scalar()
        segment = conn.execute(text("SELECT pg_walfile_name(CAST(:l AS pg_lsn))"),
                               {"l": lsn}).scalar()
        conn.execute(text("SELECT pg_switch_wal()"))
    except DBAPIError as exc:
        why = first_line(exc.orig)
        advice = ("the role needs EXECUTE on pg_create_restore_point(text) and "
                  "pg_switch_wal() in this database (see docs/pgbackrest.md)"
                  if "permission denied" in why else "see the server's log")
        raise BackupFailed(f"cannot create restore point {name}: {why}; {advice}; nothing "
                           "was changed") from None
    return lsn, segment


def status_facts(target) -> dict:
    """For `invoke status`: pgBackRest's version, the stanza's newest backups and archive range
    (`pgbackrest info`), and how far the server's archiver is behind. A failure is reported in
    the dict, not raised: status must show everything else."""
    facts: dict = {"stanza": target.settings.PGBACKREST_STANZA}
    try:
        facts.update(_stanza_facts(target.settings))
    except OpsError as exc:
        facts["error"] = str(exc)
    try:
        facts["archiver"] = archiver_facts(target.database.url)
    except OpsError as exc:
        facts.setdefault("error", str(exc))
    return facts


def _stanza_facts(settings) -> dict:
    pgbackrest = PgBackRest.from_settings(settings)
    facts: dict = {"version": pgbackrest.check_version()}
    stanza = pgbackrest.info()
    backups = stanza.get("backup") or []
    for kind in ("full", "incr", "diff"):
        newest = max((b for b in backups if b.get("type") == kind),
                     key=lambda b: (b.get("timestamp") or {}).get("stop") or 0, default=None)
        facts[f"newest_{kind}"] = None if newest is None else {
            "label": newest.get("label"),
            "stopped_at": (newest.get("timestamp") or {}).get("stop")}
    archive = stanza.get("archive") or []
    facts["archive"] = {"min": min((a.get("min") or "" for a in archive), default=None),
                        "max": max((a.get("max") or "" for a in archive), default=None)}
    facts["repo_status"] = (stanza.get("status") or {}).get("message")
    return facts


def repository_encrypted(settings) -> bool:
    """Every repository of the stanza has a cipher (a plaintext one holds a clear copy too)."""
    stanza = PgBackRest.from_settings(settings).info()
    ciphers = [repo.get("cipher") for repo in stanza.get("repo") or [] if isinstance(repo, dict)]
    ciphers = ciphers or [stanza.get("cipher")]
    return all(c not in (None, "", "none") for c in ciphers)
