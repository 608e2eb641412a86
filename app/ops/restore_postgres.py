"""Restoring PostgreSQL by swapping databases: build the restored copy beside the live one,
then swap names in one transaction.

Until the swap the live database is never touched, so a restore that fails or is killed leaves
it exactly as it was (a killed run leaves a `__restoring_` database, which the next restore drops).
The swap is two renames in one transaction: the old database stays under a dated name until the
engineer drops it. The new database gets the old one's encoding, locale, grants, settings,
comment and connection limit, so its own properties survive; a setting the role may not set
again refuses the restore before any work. Everything here works for a role that owns its
database and may create databases; no superuser needed.

Why not `pg_restore --clean` into the live database: a table added by a later migration survives
it, a foreign key from such a table makes the restore fail halfway, and it cannot run in parallel.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from app.ops.errors import BackupFailed, GuardRefused
from app.ops.lock import MAINTENANCE_DATABASE

RESTORING = "__restoring_"
KEPT = "__pre_restore_"
MAX_NAME = 63  # PostgreSQL's identifier limit, in bytes
STAMP_DIGITS = 17  # YYYYmmddHHMMSS and milliseconds: two restores in one second get two names


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


class DatabaseSwap:
    """Operations on the server level, over a connection to the maintenance database."""

    def __init__(self, url):
        self.url = url
        self.database = url.database

    def _run(self, statements, params=None, fetch=False):
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        from app.ops.database import connect, first_line

        with connect(self.url.set(database=MAINTENANCE_DATABASE)) as conn:
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

    def check_can_swap(self, current_user: str, props: DatabaseProperties) -> None:
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
        others = self.other_sessions(self.database)
        if others:
            raise GuardRefused(f"{len(others)} other session(s) are connected to "
                               f"{self.database} ({', '.join(sorted(set(others)))}): stop the "
                               "API and other clients, then run restore again")

    def check_can_copy_settings(self, current_user: str, props: DatabaseProperties) -> None:
        """Refuse before any work if the restored copy could not get the live database's
        settings: another role's (`ALTER ROLE api IN DATABASE db SET ...`) needs CREATEROLE or
        more, a superuser-only parameter needs a superuser. The server itself answers: each
        statement is tried on the live database, with the value it already has, in a
        transaction that is rolled back, so the rules of every server version apply."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        from app.ops.database import connect, first_line

        refused = []
        with connect(self.url.set(database=MAINTENANCE_DATABASE)) as conn:
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
        rows = self._run("SELECT usename || '@' || coalesce(host(client_addr), 'local') || ' ' || "
                         "coalesce(application_name, '') FROM pg_stat_activity "
                         "WHERE datname = :d AND pid <> pg_backend_pid()", {"d": database},
                         fetch=True)
        return [r[0].strip() for r in rows]

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

    def swap(self, new: str, kept: str) -> None:
        others = self.other_sessions(self.database)
        if others:
            raise BackupFailed(f"clients connected to {self.database} during the restore "
                               f"({', '.join(sorted(set(others)))}); nothing was swapped")
        self._run([f"ALTER DATABASE {quote(self.database)} RENAME TO {quote(kept)}",
                   f"ALTER DATABASE {quote(new)} RENAME TO {quote(self.database)}"])

    def drop(self, name: str) -> None:
        self._run(f"DROP DATABASE IF EXISTS {quote(name)} WITH (FORCE)")


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
