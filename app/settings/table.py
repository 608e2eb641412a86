"""The table of settings: every setting the tool reads, declared once.

Each is a `Setting` on `Declared` (which `Settings` extends), named exactly as in the `.env`
files: code reads `settings.BACKUP_KEEP_LAST` and gets the typed value (an int, or None when
unset), parsed on first read (a bad value is a ConfigError from the step that needs it, not
from loading the settings). `.env.example` and `docs/settings.md` are checked against this
table (tests/settings/test_settings_table.py); docs/settings.md is generated from it:
`python -m app.settings.doc > docs/settings.md`.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import app.settings.parsers as p

MAX_KEEP_DAYS = 36500  # Backups kept longer than this are kept "forever": a typo, not a policy.
SSE_VALUES = {"AES256": "AES256", "AWS:KMS": "aws:kms"}

# Keys a `.env` file may hold that are not ours: the variables a library reads. AWS_*: boto3's
# (the S3 store passes those of the .env files to boto3 explicitly); PG* but not PG_* or
# PGBACKREST_*: libpq's (PGHOST, PGSSLMODE, ...), for the other tools that source the files.
LIBRARY_KEYS = re.compile(r"AWS_|PG(?!_|BACKREST_)")
LIBRARY_PREFIXES_DOC = ("`AWS_*` (boto3's: the S3 store passes the standard ones from the "
                        "`.env` files to boto3) and `PG*` (libpq's, e.g. `PGSSLMODE`), except "
                        "`PG_*` and `PGBACKREST_*`, which are ours and checked")


class Setting:
    """One declared setting: its kind (for the docs), parser, default (text, or a function of
    the settings for a default that depends on the env), secrecy and one-line description."""

    def __init__(self, group: str, kind: str, doc: str, parse: Callable = p.text,
                 default: str | Callable[[Any], str] | None = None, *, secret: bool = False,
                 default_doc: str | None = None):
        self.group, self.kind, self.doc, self.parse = group, kind, doc, parse
        self.default, self.secret, self.default_doc = default, secret, default_doc
        self.name = ""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, settings, owner=None):
        if settings is None:
            return self  # on the class: the declaration itself
        return settings.typed(self)

    def default_text(self, settings) -> str | None:
        return self.default(settings) if callable(self.default) else self.default

    def __repr__(self) -> str:
        return f"Setting({self.name})"


ENV, DB, STORE, S3, KEYS, KEEP, GUARD, CHECK, TARGETS, PGBR, WATCH = (
    "Environment", "Database", "Backup storage", "S3", "Encryption", "Retention",
    "Production guardrails", "Health checks (`invoke check`)", "Evidence targets (`invoke report`)",
    "Backup method: pgBackRest", "Watching after a change (`invoke watch`)")
POSTGRES_DURATION = p.duration(p.POSTGRES_UNITS, "5s, 500ms or 2min", zero_ok=True, compact=True)
WATCH_DURATION = p.duration(p.WATCH_UNITS, "30s, 10m or 1h")


class Declared:
    """The table. Attribute order is the order of .env.example and docs/settings.md."""
    APP_ENV = Setting(ENV, "string", "the env a task acts on when --env is not given (read "
                      "from the process environment only)", default="dev")
    PRODUCTION = Setting(ENV, "bool", "`true` marks the env as production; envs named "
                         "`prod`/`production` always are", p.boolean, "false")

    DATABASE_URL = Setting(DB, "URL", "an SQLAlchemy URL; wins over everything below",
                           p.sqlalchemy_url, secret=True)
    USE_SQLITE = Setting(DB, "bool", "`true`: the env's database is the SQLite file "
                         "SQLITE_PATH", p.boolean, "false")
    SQLITE_PATH = Setting(DB, "path", "the SQLite file, relative to the project root",
                          p.project_path, lambda s: f"{s.env}.db", default_doc="`ENV.db`")
    POSTGRES_SERVER = Setting(DB, "string", "PostgreSQL host")
    POSTGRES_PORT = Setting(DB, "int", "PostgreSQL port", p.port, "5432")
    POSTGRES_USER = Setting(DB, "string", "PostgreSQL role")
    POSTGRES_PASSWORD = Setting(DB, "string", "PostgreSQL password; may hold any character",
                                secret=True)
    POSTGRES_DB = Setting(DB, "string", "PostgreSQL database; a PostgreSQL env must name one "
                          "(here or in DATABASE_URL's path)")
    POSTGRES_MAINTENANCE_DB = Setting(
        DB, "string", "where the lock and restore's server-level work connect", default_doc=
        "`postgres`, else `template1`")
    PG_BIN_DIR = Setting(DB, "path", "folder holding pg_dump and pg_restore",
                         default_doc="found on `PATH`")

    BACKUP_STORAGE = Setting(STORE, "enum", "where backups go: `local` or `s3`",
                             p.choice("local", "s3", shown="lowered"), "local")
    BACKUP_DIR = Setting(STORE, "path", "the local store's folder (one subfolder per env), "
                         "relative to the project root", p.project_path, "backups")
    BACKUP_S3_BUCKET = Setting(S3, "string", "S3 bucket (a name alone: no s3:// and no path)")
    BACKUP_S3_PREFIX = Setting(S3, "string", "key prefix: one PREFIX/ENV/ folder per env",
                               default_doc="empty")
    BACKUP_S3_SSE = Setting(S3, "enum", "server-side encryption: `AES256` or `aws:kms`",
                            p.mapped(SSE_VALUES, "AES256 or aws:kms"))
    BACKUP_S3_KMS_KEY_ID = Setting(S3, "string", "the KMS key for `aws:kms` (else the "
                                   "account's aws/s3 key)")
    BACKUP_S3_OBJECT_LOCK = Setting(S3, "duration", "every object put under an S3 Object Lock "
                                    "retention this long (the bucket must have Object Lock)",
                                    p.duration(p.AGE_UNITS, "35d, 12h or 90s"))
    BACKUP_ENCRYPTION_RECIPIENTS = Setting(KEYS, "list", "age public keys (comma-separated) "
                                           "every new backup is encrypted to", p.words)
    BACKUP_ENCRYPTION_IDENTITY_FILE = Setting(KEYS, "path", "the age private key that verify "
                                              "and restore read backups with")
    BACKUP_ENCRYPTION = Setting(KEYS, "enum", "`required`: a backup that would be stored "
                                "unencrypted is refused (exit 3); `optional`: allowed",
                                p.choice("required", "optional", strip=True),
                                lambda s: "required" if s.production else "optional",
                                default_doc="`required` in production, else `optional`")
    BACKUP_KEEP_LAST = Setting(KEEP, "int", "`invoke prune` keeps the newest N backups",
                               p.keep_count)
    BACKUP_KEEP_DAYS = Setting(KEEP, "number", "`invoke prune` keeps backups younger than N "
                               "days", p.keep_days(MAX_KEEP_DAYS))

    MAINTENANCE_WINDOW = Setting(GUARD, "window", "production's maintenance window: "
                                 "comma-separated `DAY HH:MM-HH:MM` or `YYYY-MM-DD HH:MM-HH:MM`"
                                 " entries (parsed by app/ops/guards/window.py)")
    MAINTENANCE_TIMEZONE = Setting(GUARD, "timezone", "the window's time zone, an IANA name",
                                   default="UTC")
    REQUIRE_STAGING_FIRST = Setting(GUARD, "string", "in production, refuse a target revision "
                                    "that this env has not reached")
    MIGRATION_LOCK_TIMEOUT = Setting(GUARD, "duration", "the migrations' (and backups') "
                                     "lock_timeout, in every env (a bare number is ms)",
                                     POSTGRES_DURATION, "5s")
    MIGRATION_STATEMENT_TIMEOUT = Setting(GUARD, "duration", "the migrations' "
                                          "statement_timeout (unset: the role's own)",
                                          POSTGRES_DURATION)
    MIGRATION_LOCK_RETRIES = Setting(GUARD, "int", "a migration that timed out on a lock is "
                                     "rolled back and tried again this many times (0 to 100)",
                                     p.count("retries", 3, maximum=100, strip=True,
                                             hint="0 (no retry) up to 100, e.g. 3"), "3")
    MIGRATION_LOCK_RETRY_DELAY = Setting(GUARD, "duration", "the pause before the first retry,"
                                         " doubling each time", POSTGRES_DURATION, "5s")

    CHECK_BACKUP_MAX_AGE = Setting(CHECK, "duration", "CRITICAL when the newest verified "
                                   "backup is older than this",
                                   p.duration(p.AGE_UNITS, "26h, 90min, 2d or 3600s"), "26h")
    CHECK_VERIFY_MAX_AGE = Setting(CHECK, "duration", "WARNING when the newest backup was last "
                                   "verified longer ago than this (unset: not checked)",
                                   p.duration(p.AGE_UNITS, "26h, 90min, 2d or 3600s"))
    RPO_TARGET = Setting(TARGETS, "duration", "the longest the env may go without a verified "
                         "backup", p.duration(p.TARGET_UNITS, "24h, 90min, 30d or 3600s"), "24h")
    RTO_TARGET = Setting(TARGETS, "duration", "the longest a restore drill may take",
                         p.duration(p.TARGET_UNITS, "24h, 90min, 30d or 3600s"), "4h")
    DRILL_MAX_AGE = Setting(TARGETS, "duration", "the oldest the newest successful restore "
                            "drill may be (`invoke check` warns in production beyond it)",
                            p.duration(p.TARGET_UNITS, "24h, 90min, 30d or 3600s"), "30d")

    BACKUP_METHOD = Setting(PGBR, "enum", "`dump` (pg_dump) or `pgbackrest` (restore points "
                            "in a pgBackRest repository; PostgreSQL only)",
                            p.choice("dump", "pgbackrest", shown="lowered"), "dump")
    PGBACKREST_STANZA = Setting(PGBR, "string", "the stanza that archives this cluster "
                                "(required with pgbackrest)")
    PGBACKREST_CONFIG = Setting(PGBR, "path", "pgbackrest.conf, when not pgBackRest's default")
    PGBACKREST_COMMAND = Setting(PGBR, "command", "how to run pgbackrest as the cluster's "
                                 "owner, split like a shell (never run by one)", p.command,
                                 "pgbackrest")
    PGBACKREST_TIMEOUT = Setting(PGBR, "seconds", "the longest any pgbackrest call or wait "
                                 "for the archiver may take", p.seconds(60.0), "60.0",
                                 default_doc="`60`")
    PGBACKREST_MAX_READY = Setting(PGBR, "int", "refuse a restore point while more WAL "
                                   "segments than this wait to be archived",
                                   p.count("WAL segments", 32), "32")
    PGBACKREST_VERIFY_TIMEOUT = Setting(PGBR, "seconds", "the longest `pgbackrest verify` "
                                        "may take", p.seconds(3600.0), "3600.0",
                                        default_doc="`3600`")
    PG_STOP_COMMAND = Setting(PGBR, "command", "restore only: how to stop the cluster on this "
                              "host", p.command)
    PG_START_COMMAND = Setting(PGBR, "command", "restore only: how to start the cluster on "
                               "this host", p.command)
    PGBACKREST_RESTORE_TIMEOUT = Setting(PGBR, "seconds", "the longest a restore's stop, "
                                         "restore and start may take", p.seconds(3600.0),
                                         "3600.0", default_doc="`3600`")

    WATCH_AFTER_MIGRATE = Setting(WATCH, "duration", "how long migrate and rollback watch by "
                                  "themselves after the change (unset or 0: no watch)",
                                  p.duration(p.WATCH_UNITS, "30s, 10m or 1h (0: no watch)",
                                             zero_ok=True))
    WATCH_BASELINE = Setting(WATCH, "duration", "how long normal traffic is observed right "
                             "before the change (2 intervals at least)", WATCH_DURATION, "60s")
    WATCH_INTERVAL = Setting(WATCH, "duration", "how often the watch samples", WATCH_DURATION,
                             "5s")
    WATCH_HEALTH_URL = Setting(WATCH, "URL", "the application's health endpoint: a non-2xx "
                               "answer, or none within 2 s, is a failure", p.http_url)
    WATCH_HEALTH_FAILURES = Setting(WATCH, "int", "health failures in a row that are a "
                                    "regression", p.number(1, whole=True), "3")
    WATCH_LATENCY_FACTOR = Setting(WATCH, "number", "a statement regresses when its mean time "
                                   "grows by this factor", p.number(1.0), "2")
    WATCH_LATENCY_MIN = Setting(WATCH, "duration", "a statement regresses only when its mean "
                                "time grows by at least this much too",
                                WATCH_DURATION, "10ms")
    WATCH_LOCK_WAIT = Setting(WATCH, "duration", "a session waiting on a lock longer than "
                              "this is a regression", WATCH_DURATION, "5s")
    WATCH_REPLICA_LAG = Setting(WATCH, "duration", "a replica replaying further behind than "
                                "this is a regression", WATCH_DURATION, "30s")


TABLE: tuple[Setting, ...] = tuple(v for v in vars(Declared).values() if isinstance(v, Setting))
NAMES = frozenset(s.name for s in TABLE)


def undeclared(key: str) -> str | None:
    """Why `key` (read from a .env file) is no setting, with the closest declared name; None
    when it is declared or a library's variable."""
    if key in NAMES or LIBRARY_KEYS.match(key):
        return None
    import difflib  # only once a key is unknown
    close = difflib.get_close_matches(key, sorted(NAMES), n=1)
    return f"{key}: not a setting" + (f"; did you mean {close[0]}?" if close else "")
