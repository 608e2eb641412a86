"""A PostgreSQL server's databases, as a restore and a scratch copy need them: a database's
properties, creating one like it, copying its grants and settings, its sessions, and the swap.

Restoring by swap (app/ops/methods/dump/postgres_swap.py) builds the restored copy beside the live database and
swaps names in one transaction. Until the swap the application may keep using the live database
(`--disconnect`): the swap closes it to new connections, ends its other sessions, renames, and
lets connections in again, so the application's downtime is that of the swap alone. Without
`--disconnect`, another session refuses the restore before any work. The new database gets the
old one's encoding, locale, grants, settings, comment and connection limit, so its own
properties survive; a setting the role may not set again refuses the restore before any work.
Everything here works for a role that owns its database and may create databases; no superuser
needed. Every statement runs over a connection to the maintenance database: a database can be
renamed only with nobody connected to it.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from app.ops.databases.postgres.maintenance import MaintenanceDatabase
from app.ops.errors import BackupFailed, GuardRefused
from app.ops.databases.connection import first_line

RESTORING = "__restoring_"
KEPT = "__pre_restore_"
MAX_NAME = 63  # PostgreSQL's identifier limit, in bytes
STAMP_DIGITS = 17  # YYYYmmddHHMMSS and milliseconds: two restores in one second get two names
# The sessions an application opens (pg_stat_activity of `a`), as opposed to the server's
# own background processes there (autovacuum workers, parallel workers). A role without
# pg_read_all_stats sees another role's backend_type as NULL: such a row is a client if it has
# a role (an autovacuum worker has none).
CLIENTS = ("(a.backend_type = 'client backend' "
           "OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL))")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def database_stamp(now: datetime) -> str:
    utc = now.astimezone(timezone.utc)
    return f"{utc:%Y%m%d%H%M%S}{utc.microsecond // 1000:03d}"


def derived_name(database: str, marker: str, stamp: str) -> str:
    tail = f"{marker}{stamp}"
    base = database.encode()[: MAX_NAME - len(tail.encode())].decode("utf-8", "ignore")
    return base + tail


@dataclass
class DatabaseProperties:
    oid: int
    owner: str
    encoding: str
    collate: str
    ctype: str
    conn_limit: int
    acl: list[str] | None
    comment: str | None
    settings: list[tuple[str | None, str]]  # (role or None for everyone, "name=value")


class PostgresServer:
    """The server of `url`'s database, seen from its maintenance database."""

    def __init__(self, url, maintenance: MaintenanceDatabase | None = None):
        self.url = url
        self.database = url.database
        self.maintenance = maintenance or MaintenanceDatabase()

    def _run(self, statements, params=None, fetch=False):
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError


        with self.maintenance.connect(self.url) as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                if isinstance(statements, str):
                    result = conn.execute(text(statements), params or {})
                    return result.fetchall() if fetch else None
                with conn.begin():
                    for statement in statements:
                        conn.execute(text(statement))
            except DBAPIError as exc:
                # One sentence, no traceback: the caller's cleanup leaves the live database
                # as it was, and this says what the server refused.
                raise BackupFailed(f"the server refused a step of the restore: "
                                   f"{first_line(exc.orig)}") from None

    def properties(self) -> DatabaseProperties:
        rows = self._run(
            "SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), "
            "d.datcollate, d.datctype, d.datconnlimit, d.datacl::text[], "
            "shobj_description(d.oid, 'pg_database') "
            "FROM pg_database d WHERE d.datname = :name", {"name": self.database}, fetch=True)
        if not rows:
            raise BackupFailed(f"database {self.database} does not exist on the server")
        r = rows[0]
        # Settings for everyone (setrole 0) and per role inside this database.
        settings = [(role, item) for role, config in self._run(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, "
            "s.setconfig FROM pg_db_role_setting s WHERE s.setdatabase = :oid ORDER BY 1 NULLS FIRST",
            {"oid": r[0]}, fetch=True) for item in config]
        return DatabaseProperties(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], settings)

    def check_can_swap(self, current_user: str, props: DatabaseProperties,
                       disconnect: bool = False) -> None:
        if props.owner != current_user:
            raise GuardRefused(f"restore must run as the owner of database {self.database} "
                               f"({props.owner}), not as {current_user}")
        can_create = self._run("SELECT rolcreatedb OR rolsuper FROM pg_roles "
                               "WHERE rolname = current_user", fetch=True)
        if not (can_create and can_create[0][0]):
            raise GuardRefused(f"restore builds the restored copy in a new database beside "
                               f"{self.database}, and {current_user} may not create databases: "
                               f"ALTER ROLE {quote(current_user)} CREATEDB, then run it again")
        self.check_can_copy_settings(current_user, props)
        self.check_sessions(current_user, disconnect)

    def check_sessions(self, current_user: str, disconnect: bool) -> None:
        """Without `disconnect`, another session refuses the restore now, not after minutes of
        work. With it, every session there now must be one this role may end at the swap."""
        sessions = self._sessions(self.database)
        if sessions and not disconnect:
            raise GuardRefused(
                f"{len(sessions)} other session(s) are connected to {self.database} "
                f"({'; '.join(s[0] for s in sessions)}): stop them, or run restore with "
                "--disconnect to keep them served while the copy is built and end them only "
                "at the swap; nothing was done")
        barred = [(text_, role) for text_, role, may_end in sessions if not may_end]
        if barred:
            roles = sorted({role for _, role in barred})
            raise GuardRefused(
                f"restore --disconnect ends the other sessions of {self.database} at the swap, "
                f"and {current_user} may not end {len(barred)} of them "
                f"({'; '.join(t for t, _ in barred)}): a role may end only its own roles' "
                f"sessions; as a superuser, GRANT pg_signal_backend TO {quote(current_user)} "
                f"(or run restore as {', '.join(roles)}), then run it again; nothing was done")

    def check_can_copy_settings(self, current_user: str, props: DatabaseProperties) -> None:
        """Refuse before any work if the restored copy could not get the live database's
        settings: another role's (`ALTER ROLE api IN DATABASE db SET ...`) needs CREATEROLE or
        more, a superuser-only parameter needs a superuser. The server itself answers: each
        statement is tried on the live database, with the value it already has, in a
        transaction that is rolled back, so the rules of every server version apply."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError


        refused = []
        with self.maintenance.connect(self.url) as conn:
            with conn.begin() as transaction:
                for role, key, value in _settings_of(props):
                    statement = _set_statement(quote(self.database), role, key, value)
                    try:
                        with conn.begin_nested():
                            conn.execute(text(statement))
                    except DBAPIError as exc:
                        refused.append((role, key, statement, first_line(exc.orig)))
                transaction.rollback()
        if not refused:
            return
        target = quote(self.database)
        named = "; ".join(f"{statement} ({reason})" for _, _, statement, reason in refused)
        resets = "; ".join(_reset_statement(target, role, key) for role, key, _, _ in refused)
        sets = "; ".join(statement for _, _, statement, _ in refused)
        raise GuardRefused(
            f"restore refused before any work: the restored database must get the settings "
            f"{self.database} has, and {current_user} may not set {len(refused)} of them: "
            f"{named}. A superuser can remove them first ({resets}), then run the restore "
            f"again and set them again afterwards ({sets})")

    def other_sessions(self, database: str) -> list[str]:
        return [described for described, _, _ in self._sessions(database)]

    def _sessions(self, database: str) -> list[tuple[str, str, bool]]:
        """(description, role, may this role end it) of each other client session of
        `database`. The server's own rule for pg_terminate_backend: a superuser's session only
        by a superuser, any other by a role with its privileges or with pg_signal_backend's.
        Background processes (an autovacuum worker, a parallel worker of a client counted
        already) are no application's sessions: the rename deals with them (see swap)."""
        rows = self._run(
            "SELECT a.pid, coalesce(a.usename, '?'), coalesce(host(a.client_addr), 'local'), "
            "coalesce(a.application_name, ''), "
            "CASE WHEN r.rolsuper "
            "THEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
            "ELSE pg_has_role(a.usesysid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE') "
            "END FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid "
            f"WHERE a.datname = :d AND a.pid <> pg_backend_pid() AND {CLIENTS} ORDER BY a.pid",
            {"d": database}, fetch=True)
        return [(f"pid {pid} {user}@{client} '{app}'", user, bool(may_end))
                for pid, user, client, app, may_end in rows]

    def drop_stale(self, marker: str = RESTORING) -> list[str]:
        """Drop copies a killed restore (or rehearsal) left behind: `DB<marker>STAMP`, STAMP of
        17 digits (14 before stamps had milliseconds). One that somebody is still connected to
        belongs to a run in progress (a scratch copy is built outside the lock): left alone."""
        prefix = derived_name(self.database, marker, "0" * STAMP_DIGITS)[:-STAMP_DIGITS]
        rows = self._run("SELECT datname FROM pg_database WHERE left(datname, :n) = :p "
                         "AND substr(datname, :n + 1) ~ '^[0-9]{14}([0-9]{3})?$'",
                         {"n": len(prefix), "p": prefix}, fetch=True)
        stale = [name for (name,) in rows if not self.other_sessions(name)]
        for name in stale:
            self.drop(name)
        return stale

    def create_like(self, name: str, props: DatabaseProperties) -> None:
        # Utility statements take no bind parameters: quote the literals ourselves.
        self._run(f"CREATE DATABASE {quote(name)} TEMPLATE template0 "
                  f"ENCODING {_literal(props.encoding)} LC_COLLATE {_literal(props.collate)} "
                  f"LC_CTYPE {_literal(props.ctype)}")

    def copy_properties(self, name: str, props: DatabaseProperties) -> None:
        """Give the new database the old one's grants, settings, comment and limit."""
        target = quote(name)
        statements = []
        if props.acl is not None:
            statements.append(f"REVOKE ALL ON DATABASE {target} FROM PUBLIC")
            for entry in props.acl:
                statements.extend(_grants(entry, target))
        for role, key, value in _settings_of(props):
            statements.append(_set_statement(target, role, key, value))
        if props.comment is not None:
            statements.append(f"COMMENT ON DATABASE {target} IS {_literal(props.comment)}")
        if props.conn_limit != -1:
            statements.append(f"ALTER DATABASE {target} CONNECTION LIMIT {int(props.conn_limit)}")
        for statement in statements:
            try:
                self._run(statement)
            except BackupFailed as exc:
                raise BackupFailed(f"{exc}, running: {statement}") from None

    def swap(self, new: str, kept: str, *, end_sessions: bool = False) -> float:
        """Rename the live database to `kept` and `new` to the live name, in one transaction;
        return the downtime in seconds: from closing the live database to new connections to
        the rename's commit. New connections are refused from the first step, so no session can
        slip in between the check (or the ending of sessions) and the rename. With
        `end_sessions`, the live database's other sessions are ended; without, one found there
        stops the swap. Either way a swap that fails lets connections in again."""
        live = quote(self.database)
        started = time.monotonic()
        self._run(f"ALTER DATABASE {live} ALLOW_CONNECTIONS false")
        try:
            if not end_sessions:
                others = self.other_sessions(self.database)
                if others:
                    raise BackupFailed(f"clients connected to {self.database} during the "
                                       f"restore ({'; '.join(others)}); nothing was swapped: "
                                       "stop them, or run restore with --disconnect")
            # pg_terminate_backend waits (up to 5 s) for each session to end, and the rename
            # itself waits a few seconds more for one still on its way out. Only client
            # sessions: PostgreSQL 15 lets no one but a superuser signal an autovacuum worker
            # (pg_signal_autovacuum_worker is 18's), and the rename itself sends every
            # autovacuum worker of the database SIGTERM while it waits for the others to go.
            self._run(["SELECT pg_terminate_backend(a.pid, 5000) FROM pg_stat_activity a "
                       f"WHERE a.datname = {_literal(self.database)} "
                       f"AND a.pid <> pg_backend_pid() AND {CLIENTS}",
                       f"ALTER DATABASE {live} RENAME TO {quote(kept)}",
                       f"ALTER DATABASE {quote(new)} RENAME TO {live}",
                       f"ALTER DATABASE {quote(kept)} ALLOW_CONNECTIONS true"])
            return time.monotonic() - started
        except BaseException:
            # Connections come back to whichever database now has the live name.
            try:
                self._run(f"ALTER DATABASE {live} ALLOW_CONNECTIONS true")
            except Exception:
                pass
            raise

    def is_closed(self) -> bool:
        closed = self._run("SELECT NOT datallowconn FROM pg_database WHERE datname = :d",
                           {"d": self.database}, fetch=True)
        return bool(closed and closed[0][0])

    def reopen(self) -> bool:
        """Let connections into the live database again if a swap killed halfway (kill -9)
        left it closed; True if it had to. The restore replaces the database with one open
        to connections anyway."""
        if not self.is_closed():
            return False
        self._run(f"ALTER DATABASE {quote(self.database)} ALLOW_CONNECTIONS true")
        return True

    def drop(self, name: str) -> None:
        """Drop `name`, ending its client sessions first. Not `WITH (FORCE)`: that refuses
        ("must be a member of the role whose process is being terminated") when an autovacuum
        worker is on the database, as one often is on a copy just restored, because PostgreSQL
        15 lets no one but a superuser signal one; a plain DROP sends them SIGTERM and waits."""
        self._run(f"SELECT pg_terminate_backend(a.pid, 5000) FROM pg_stat_activity a "
                  f"WHERE a.datname = {_literal(name)} AND a.pid <> pg_backend_pid() "
                  f"AND {CLIENTS}", fetch=True)
        self._run(f"DROP DATABASE IF EXISTS {quote(name)}")

    def databases_named(self, names: list[str]) -> dict[str, tuple[int, bool]]:
        """{name: (oid, accepts connections)} of those of `names` that exist: which database
        holds which name after an interrupted swap (a rename keeps the oid)."""
        rows = self._run("SELECT datname, oid, datallowconn FROM pg_database "
                         "WHERE datname = ANY(:names)", {"names": list(names)}, fetch=True)
        return {name: (int(oid), bool(allowed)) for name, oid, allowed in rows}

    def allow_connections(self, name: str) -> None:
        self._run(f"ALTER DATABASE {quote(name)} ALLOW_CONNECTIONS true")


def _settings_of(props: DatabaseProperties) -> list[tuple[str | None, str, str]]:
    """(role or None, name, value) of each setting of the database that can be set again."""
    out = []
    for role, setting in props.settings:
        key, _, value = setting.partition("=")
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            out.append((role, key, value))
    return out


def _set_statement(target: str, role: str | None, key: str, value: str) -> str:
    alter = f"ALTER ROLE {quote(role)} IN DATABASE" if role else "ALTER DATABASE"
    return f"{alter} {target} SET {key} = {_setting_value(key, value)}"


def _reset_statement(target: str, role: str | None, key: str) -> str:
    alter = f"ALTER ROLE {quote(role)} IN DATABASE" if role else "ALTER DATABASE"
    return f"{alter} {target} RESET {key}"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# Settings whose stored value is a list of quoted items, as pg_dump treats them (GUC_LIST_QUOTE):
# `search_path="$user", public` must come back as two items, not as one odd schema name.
LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries",
                 "shared_preload_libraries", "local_preload_libraries", "unix_socket_directories"}


def _setting_value(key: str, value: str) -> str:
    if key.lower() not in LIST_SETTINGS:
        return _literal(value)
    items = [m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2).strip()
             for m in re.finditer(r'\s*(?:"((?:[^"]|"")*)"|([^,]+))\s*(?:,|$)', value)]
    return ", ".join(_literal(item) for item in items if item != "") or "''"


ACL_RE = re.compile(r'^(?P<grantee>"(?:[^"]|"")*"|[^=]*)=(?P<privs>[a-zA-Z*]*)/')
PRIVILEGES = {"C": "CREATE", "T": "TEMPORARY", "c": "CONNECT"}


def _grants(entry: str, target: str) -> list[str]:
    """GRANT statements reproducing one aclitem of a database (e.g. `api=c/owner`)."""
    match = ACL_RE.match(entry)
    if not match:
        return []
    grantee = match.group("grantee")
    grantee = "PUBLIC" if grantee == "" else (grantee if grantee.startswith('"')
                                               else quote(grantee))
    privs = match.group("privs")
    out = []
    for i, letter in enumerate(privs):
        if letter in PRIVILEGES:
            option = " WITH GRANT OPTION" if privs[i + 1:i + 2] == "*" else ""
            out.append(f"GRANT {PRIVILEGES[letter]} ON DATABASE {target} TO {grantee}{option}")
    return out
