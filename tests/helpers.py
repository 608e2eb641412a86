"""What the tests share that is not a fixture: the revisions the project ships, how a finished
`invoke` run must look, backups and the audit trail, age keys, hand-written revisions, and what
a PostgreSQL or SQLite database holds afterwards. Fixtures are in conftest.py, which builds on
this module (never the other way round); fake client tools are in fake_tools.py, throwaway
PostgreSQL clusters in clusters.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import textwrap
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, quote_plus

from pyrage import x25519
from sqlalchemy import create_engine, pool, text

# The project's two revisions: the first creates `users`, the head adds its phone_number.
FIRST, HEAD = "a9ef987fd631", "f8ff2ab1fdfa"
AWKWARD_PASSWORD = "p@ss:w/o%rd#1 'q' \"dq\" \\ end"
DEFAULT_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
SAFETY_PREFIX = "before restore of "   # the reason of the safety backup a restore takes
AGE_MAGIC = b"age-encryption.org/v1\n"   # how every age-encrypted file begins
PG_URL = "postgresql+psycopg2://mida:secret@127.0.0.1:5432/mida"   # a URL no test connects to
T0 = datetime(2026, 3, 2, 10, 15, 30, tzinfo=UTC)   # "now" for code called in-process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dev_target(root: Path, **environ: str):
    """The Target of env dev under `root` (settings from `environ` only), for code called
    in-process."""
    from app.ops.target import open_target
    from app.settings import load_settings
    return open_target(load_settings("dev", environ=environ, root=root))


def unavailable(message: str):
    """Skip the test for want of something it needs (a server, a mount, a tool), or fail it
    under CI=true, where everything it needs must be there."""
    import pytest
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def admin_url():
    from sqlalchemy.engine import make_url
    return make_url(os.environ.get("TEST_DATABASE_URL", DEFAULT_ADMIN_URL))


# -- a finished run ----------------------------------------------------------------------------
def _password_forms(pw: str) -> tuple[str, ...]:
    """Every form the test password could leak in: plain, cut at a `#` (a URL fragment), each
    way a URL library percent-encodes it (SQLAlchemy's URL renders `quote(pw, safe=" +")`), and
    each way a string escaper writes it (JSON, Python's repr, libpq's conninfo and .pgpass)."""
    forms = {
        pw,
        pw.split("#")[0],
        quote_plus(pw),              # a URL query string (?password=...), as urlencode writes it
        quote(pw, safe=""),
        quote(pw),                   # urllib's default keeps `/`
        quote(pw, safe=" +"),        # sqlalchemy URL.render_as_string(hide_password=False)
        json.dumps(pw)[1:-1],
        repr(pw)[1:-1],
        pw.replace("\\", "\\\\").replace("'", "\\'"),     # libpq conninfo value
        pw.replace("\\", "\\\\").replace(":", "\\:"),     # .pgpass field
    }
    return tuple(sorted(forms))


PASSWORD_FORMS = _password_forms(AWKWARD_PASSWORD)


def shown(result) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def assert_no_password(*texts: str) -> None:
    for text_ in texts:
        for form in PASSWORD_FORMS:
            assert form not in text_, f"the password leaked ({form!r}) into:\n{text_}"


def ok(result):
    """Exit 0, no traceback, no password anywhere in the output."""
    assert result.returncode == 0, shown(result)
    assert "Traceback" not in result.stdout + result.stderr, shown(result)
    assert_no_password(result.stdout, result.stderr)
    return result


def failed(result, code: int, *fragments: str) -> str:
    """Exit `code`, exactly one `ERROR:` line on stderr holding every fragment, no traceback,
    no password."""
    assert result.returncode == code, shown(result)
    assert "Traceback" not in result.stdout + result.stderr, shown(result)
    assert_no_password(result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, shown(result)
    for fragment in fragments:
        assert fragment in errors[0], shown(result)
    return errors[0]


# -- backups and their records -----------------------------------------------------------------
def ids(items: list[dict]) -> list[str]:
    return [i["id"] for i in items]


def take_backup(project, env_name: str, env: dict | None = None) -> dict:
    """`invoke backup`, and the one new item it lists (first, on demand, verified)."""
    before = set(ids(project.backups(env_name, env=env)))
    ok(project.run("backup", f"--env={env_name}", env=env))
    items = project.backups(env_name, env=env)
    new = [i for i in items if i["id"] not in before]
    assert len(new) == 1, items
    assert items[0]["id"] == new[0]["id"], "a backup just taken is not listed first"
    assert new[0]["reason"] == "on demand" and new[0]["verified"] is True
    return new[0]


def migrated_with_backup(project, db, *rows: tuple[str, str | None], env: dict | None = None,
                         env_name: str = "pgtest") -> dict:
    """`db` migrated to head, holding the users `rows`, and one backup of it taken on demand."""
    env = env or pg_env(db)
    ok(project.run("migrate", env=env))
    insert_users(db, *rows)
    return take_backup(project, env_name, env)


def dev_db(project) -> Path:
    """The dev environment's SQLite file (the default database)."""
    return project.root / "dev.db"


def flip_middle_bit(artifact: Path) -> None:
    """Damage a file by one bit, in its middle: what only a checksum catches."""
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))


def listed(project, bucket, env_name: str = "dev", **extra) -> list[dict]:
    """What `invoke backups --json` lists with the backups kept in `bucket`."""
    result = ok(project.run("backups", f"--env={env_name}", "--json",
                            env=bucket.env(**extra)))
    return json.loads(result.stdout)


def backup_id_of(result) -> str:
    """The id from `invoke backup`'s line `Backup <id>: ...`."""
    line = next(l for l in result.stdout.splitlines() if l.startswith("Backup "))
    return line.split()[1].rstrip(":")


def safety_id_from(result) -> str:
    match = re.search(r"Safety backup (\S+) holds", result.stdout)
    assert match, shown(result)
    return match.group(1)


def audit_events(folder: Path) -> list[dict]:
    """Every audit event in a store folder, oldest first."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.audit.json"))]


def last_audit(folder: Path) -> dict:
    return audit_events(folder)[-1]


def store_files(folder: Path, records: bool = True) -> dict[str, bytes]:
    """Every file of a local store folder with its bytes ({} when there is no folder); with
    `records=False` without the records a failed run adds (audit, rehearsal, drill), so that
    what it must not leave (a manifest rewritten, an artifact, a `.partial`) shows alone."""
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if records or not p.name.endswith((".audit.json", ".rehearsal.json", ".drill.json"))}


def manifest_path(project, backup_id: str, env_name: str = "dev") -> Path:
    return project.store(env_name) / f"{backup_id}.manifest.json"


def read_manifest(project, backup_id: str, env_name: str = "dev") -> dict:
    """A backup's manifest in the env's local store."""
    return json.loads(manifest_path(project, backup_id, env_name).read_text())


def edit_manifest(project, backup_id: str, env_name: str = "dev", **changes) -> dict:
    """Rewrite a backup's manifest with `changes`, as a hand (or a lying store) would."""
    path = manifest_path(project, backup_id, env_name)
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def restore_events(project, env_name: str = "pgtest") -> list[dict]:
    return [e for e in audit_events(project.store(env_name)) if e["action"] == "restore"]


def without_audit(names: Iterable[str]) -> set[str]:
    """Artifacts and manifests: every name but the audit trail's and the drill records'."""
    return {n for n in names if not n.endswith((".audit.json", ".drill.json"))}


# -- settings files, windows, revisions, keys ------------------------------------------------
def window_covering(start: datetime, end: datetime) -> str:
    """One-off MAINTENANCE_WINDOW entries (UTC) open from `start` to `end`; two entries when
    the span crosses midnight."""
    if start.date() == end.date():
        return f"{start:%Y-%m-%d %H:%M}-{end:%H:%M}"
    if (end.hour, end.minute) == (0, 0):
        return f"{start:%Y-%m-%d %H:%M}-24:00"
    return f"{start:%Y-%m-%d %H:%M}-24:00, {end:%Y-%m-%d} 00:00-{end:%H:%M}"


def open_window() -> str:
    """A MAINTENANCE_WINDOW open from an hour ago to an hour from now."""
    now = datetime.now(UTC)
    return window_covering(now - timedelta(hours=1), now + timedelta(hours=1))


def dotenv_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_dotenv(path: Path, **settings: str) -> Path:
    path.write_text("".join(f"{k}={dotenv_quote(v)}\n" for k, v in settings.items()))
    return path


def add_revision(project, rev: str, down: str | tuple, upgrade: str, downgrade: str = "pass",
                 message: str = "A hand-written revision", slug: str = "hand_written") -> Path:
    """A revision file in the project's alembic/versions; `upgrade` and `downgrade` are the
    bodies of its two functions."""
    path = project.root / "alembic" / "versions" / f"{rev}_{slug}.py"
    path.write_text(f'''"""{message}

Revision ID: {rev}
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{textwrap.indent(textwrap.dedent(upgrade).strip(), "    ")}


def downgrade():
{textwrap.indent(textwrap.dedent(downgrade).strip(), "    ")}
''')
    return path


class Key:
    """An age key pair; the identity is written to a 0600 file as `age-keygen` would."""

    def __init__(self, folder: Path, name: str):
        self.identity = x25519.Identity.generate()
        self.recipient = str(self.identity.to_public())
        self.path = folder / f"{name}.key"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"# public key: {self.recipient}\n{self.identity}\n")
        assert self.recipient.startswith("age1")
        assert str(self.identity).startswith("AGE-SECRET-KEY-1")


def sealed(*recipients: Key, identity: Key | None = None, **extra: str) -> dict:
    """The settings that encrypt backups to `recipients` (and decrypt with `identity`)."""
    env = {"BACKUP_ENCRYPTION_RECIPIENTS": ",".join(k.recipient for k in recipients)}
    if identity is not None:
        env["BACKUP_ENCRYPTION_IDENTITY_FILE"] = str(identity.path)
    env.update(extra)
    return env


# -- PostgreSQL --------------------------------------------------------------------------------
def pg_env(db, **extra: str) -> dict:
    """Process environment that points an invoke run at `db` through POSTGRES_* settings."""
    url = db.url
    env = {"APP_ENV": "pgtest", "POSTGRES_SERVER": url.host or "127.0.0.1",
           "POSTGRES_PORT": str(url.port or 5432), "POSTGRES_USER": url.username,
           "POSTGRES_PASSWORD": url.password, "POSTGRES_DB": url.database}
    env.update(extra)
    return env


def pg_settings(db, root: Path, **extra: str):
    """The Settings of env pgtest pointed at `db` (as pg_env, plus `extra`), for code called
    in-process."""
    from app.settings import load_settings
    return load_settings("pgtest", environ=pg_env(db, **extra), root=root)


def advisory_locks_held(db) -> int:
    """How many sessions hold the advisory lock the tool takes on `db`."""
    from app.ops.databases.lock import advisory_key
    return admin_sql(db.admin, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                               "AND granted AND ((classid::bigint << 32) | objid::bigint) = :k",
                     k=advisory_key(db.name))[0][0]


def admin_sql(admin, statement: str, **params):
    with admin.connect() as conn:
        result = conn.execute(text(statement), params)
        return [tuple(r) for r in result.fetchall()] if result.returns_rows else None


def sql_in(database: str, statement: str, **params):
    """Run one statement as the admin in another database (e.g. the kept one)."""
    engine = create_engine(admin_url().set(database=database), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(statement), params).fetchall()]
    finally:
        engine.dispose()


def at_first_revision(project, db) -> tuple[list[dict], set[str]]:
    """`db` at FIRST through the real tools; its backups and backup files (audit aside)."""
    ok(project.run("migrate", f"--revision={FIRST}", env=pg_env(db)))
    assert db.revision() == FIRST
    return project.backups("pgtest", env=pg_env(db)), without_audit(project.backup_files("pgtest"))


def derived_databases(admin, name: str, marker: str = "__") -> list[str]:
    """The databases named `<name><marker>...`: what restores, drills and rehearsals leave."""
    prefix = name + marker
    return sorted(r[0] for r in admin_sql(
        admin, "SELECT datname FROM pg_database WHERE left(datname, :n) = :p",
        n=len(prefix), p=prefix))


def drop_derived(admin, name: str) -> None:
    for other in derived_databases(admin, name):
        admin_sql(admin, f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')


def insert_users(db, *rows: tuple[str, str | None]) -> None:
    for email, phone in rows:
        db.sql("INSERT INTO users (email, full_name, hashed_password, phone_number) "
               "VALUES (:e, :n, 'x', :p)", e=email, n=email.split("@")[0].title(), p=phone)


def pg_state(db) -> dict:
    """Everything a restore must bring back exactly."""
    tables = db.tables()
    return {
        "tables": tables,
        "revision": db.revision(),
        "users": [tuple(r) for r in db.sql("SELECT * FROM users ORDER BY id")]
        if "users" in tables else None,
        "sequence": [tuple(r) for r in db.sql("SELECT last_value, is_called FROM users_id_seq")]
        if "users" in tables else None,
        "indexes": sorted(tuple(r) for r in db.sql(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")),
        "constraints": sorted(tuple(r) for r in db.sql(
            "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = 'public'::regnamespace")),
    }


def db_properties(admin, name: str) -> dict:
    rows = admin_sql(admin, (
        "SELECT d.oid, pg_get_userbyid(d.datdba), d.datacl::text[], d.datconnlimit, "
        "shobj_description(d.oid, 'pg_database'), "
        "(SELECT s.setconfig FROM pg_db_role_setting s "
        " WHERE s.setdatabase = d.oid AND s.setrole = 0), "
        "pg_encoding_to_char(d.encoding), d.datcollate, d.datctype "
        "FROM pg_database d WHERE d.datname = :n"), n=name)
    assert rows, f"database {name} does not exist"
    oid, owner, acl, limit, comment, settings, encoding, collate, ctype = rows[0]
    return {"oid": oid, "owner": owner, "acl": sorted(acl) if acl is not None else None,
            "conn_limit": limit, "comment": comment, "settings": sorted(settings or []),
            "encoding": encoding, "collate": collate, "ctype": ctype}


class Untouched:
    """What a refused or failed restore must leave exactly as it was: the live database's
    state and identity (its oid: it was not swapped), the listed backups, and no copies."""

    def __init__(self, project, db, admin, env: dict):
        self.project, self.db, self.admin, self.env = project, db, admin, env
        self.state, self.oid, self.listed = self._read()

    def _read(self):
        return (pg_state(self.db), db_properties(self.admin, self.db.name)["oid"],
                ids(self.project.backups("pgtest", env=self.env)))

    def check(self) -> None:
        state, oid, listed = self._read()
        assert state == self.state
        assert oid == self.oid
        assert listed == self.listed
        assert derived_databases(self.admin, self.db.name) == []


def wait_until_no_sessions(admin, *databases: str, timeout: float = 30) -> None:
    """Poll the server until the backends of a killed client have gone (the server notices a
    dead client asynchronously); a condition, not a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        # The run's lock session is on the maintenance database, under the role that owns the
        # first database: another suite's runs on the same server are not this run's.
        rows = admin_sql(admin, "SELECT datname, application_name FROM pg_stat_activity "
                                "WHERE (datname = ANY(:d) OR (application_name LIKE 'mida %' "
                                "AND usename = (SELECT pg_get_userbyid(datdba) FROM pg_database "
                                "WHERE datname = :first))) AND pid <> pg_backend_pid()",
                         d=list(databases), first=databases[0])
        if not rows:
            return
        assert time.monotonic() < deadline, f"sessions of the killed run linger: {rows}"
        time.sleep(0.05)


class HeldLock:
    """Another session holding a lock in an open transaction (`statement` takes it), as an API
    request or a report query would."""

    def __init__(self, db, statement: str):
        self.engine = create_engine(db.url, poolclass=pool.NullPool)
        self.conn = self.engine.connect()
        # Never wait forever here: if the test's own setup holds a lock, fail loudly instead.
        self.conn.execute(text("SET lock_timeout = '10s'"))
        self.conn.execute(text(statement))

    def release(self) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.engine.dispose()
            self.conn = None


# -- SQLite ------------------------------------------------------------------------------------
def prod_at(project, revision: str, **settings: str) -> Path:
    """`.env.prod` on SQLite file prod.db, brought to `revision` outside any guard (env dev).
    Plaintext backups allowed: the tests that use it are about other guards (encryption has
    its own tests)."""
    project.env_file("prod", USE_SQLITE="True", BACKUP_ENCRYPTION="optional", **settings)
    ok(project.run("migrate", f"--revision={revision}", env={"SQLITE_PATH": "prod.db"}))
    path = project.root / "prod.db"
    assert sqlite_state(path)["revision"] == revision
    return path


def make_sqlite(path: Path, rows: int = 50) -> None:
    """A small SQLite database at FIRST: a `users` table (id, email) holding `rows` users."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
        conn.executemany("INSERT INTO users (id, email) VALUES (?, ?)",
                         [(i, f"user{i}@example.org") for i in range(rows)])
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES (?)", (FIRST,))
    conn.close()


def sqlite_state(path: Path) -> dict | None:
    """Revision and {table: [columns]} of an SQLite file, read-only; None if it is absent."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        tables = {n: [c[1] for c in conn.execute(f'PRAGMA table_info("{n}")')] for n in names}
        revision = None
        if "alembic_version" in tables:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        return {"revision": revision, "tables": tables}
    finally:
        conn.close()


def sqlite_rows(path: Path) -> dict[str, list[tuple]]:
    """Every table of an SQLite file with all its rows (ordered by the first column), read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = sorted(r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}
    finally:
        conn.close()


def sqlite_query(path: Path, statement: str) -> list[tuple]:
    """All rows of one query on an SQLite file, opened read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(statement).fetchall()
    finally:
        conn.close()


def prod_at_first(project, **settings: str):
    """`.env.prod` on SQLite prod.db at FIRST (brought there as env dev, outside any guard)."""
    project.env_file("prod", USE_SQLITE="True", MAINTENANCE_WINDOW=open_window(), **settings)
    ok(project.run("migrate", f"--revision={FIRST}", env={"SQLITE_PATH": "prod.db"}))
    shutil.rmtree(project.store("dev"), ignore_errors=True)
    (project.root / "prod.db.lock").unlink()  # so a refused run can be seen not to take it
    return project.root / "prod.db"
