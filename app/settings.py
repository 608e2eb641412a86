"""Settings: which environment, which database, where backups go.

`load_settings(env)` layers, highest first: the process environment, `.env.NAME`, `.env`
(python-dotenv reads the files; nothing is written back into `os.environ`). It returns a frozen
`Settings`. Nothing here is read at import time, and nothing here connects to anything.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from app.ops.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENV = "dev"
PRODUCTION_NAMES = {"prod", "production"}
TRUE_WORDS = {"1", "true", "yes", "on"}
DURATION_RE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$")
# Seconds per unit of a duration PostgreSQL reads (lock_timeout): a bare number is milliseconds.
POSTGRES_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "": 0.001}
# The watch after a change (app/ops/commands/watch/config.py checks each value); WATCH_AFTER_MIGRATE and
# WATCH_HEALTH_URL have no default: unset, migrate does not watch and no URL is probed.
WATCH_DEFAULTS = {"WATCH_BASELINE": "60s", "WATCH_INTERVAL": "5s", "WATCH_LATENCY_FACTOR": "2",
                  "WATCH_LATENCY_MIN": "10ms", "WATCH_HEALTH_FAILURES": "3",
                  "WATCH_LOCK_WAIT": "5s", "WATCH_REPLICA_LAG": "30s"}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_WORDS


def parse_duration(value: str, units: Mapping[str, float]) -> float | None:
    """`value` ("5s", "90 min") in seconds; None unless it is a whole number followed by one of
    `units` (seconds per unit; the unit "" admits a bare number). Each setting passes its own
    units, so each accepts what it always did, and the caller words the error."""
    match = DURATION_RE.match(value)
    if not match or match.group(2) not in units:
        return None
    return int(match.group(1)) * units[match.group(2)]


# The evidence targets `invoke report` and `invoke check` judge against, with their defaults.
EVIDENCE_TARGETS = {"RPO_TARGET": "24h", "RTO_TARGET": "4h", "DRILL_MAX_AGE": "30d"}
TARGET_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Settings:
    env: str
    values: Mapping[str, str] = field(repr=False)
    root: Path = PROJECT_ROOT

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name)
        return default if value is None or value == "" else value

    @property
    def production(self) -> bool:
        # Fail closed: either signal is enough.
        return _truthy(self.get("PRODUCTION")) or self.env.lower() in PRODUCTION_NAMES

    @property
    def database_url(self):
        """The SQLAlchemy URL object (never a string, so the password is never rendered)."""
        return build_database_url(self)

    @property
    def masked_database_url(self) -> str:
        return mask_url(self.database_url)

    @property
    def maintenance_database(self) -> str | None:
        """POSTGRES_MAINTENANCE_DB: where locks and restores connect (app/ops/databases/
        maintenance.py); unset, postgres, else template1, as libpq's tools do."""
        return self.get("POSTGRES_MAINTENANCE_DB")

    @property
    def pg_bin_dir(self) -> str | None:
        return self.get("PG_BIN_DIR")

    @property
    def backup_dir(self) -> Path:
        return self.path(self.get("BACKUP_DIR", "backups"))

    @property
    def backup_storage(self) -> str:
        kind = self.get("BACKUP_STORAGE", "local").lower()
        if kind not in {"local", "s3"}:
            raise ConfigError(f"BACKUP_STORAGE '{kind}' is not supported: use local or s3")
        return kind

    @property
    def backup_method(self) -> str:
        method = self.get("BACKUP_METHOD", "dump").lower()
        if method not in {"dump", "pgbackrest"}:
            raise ConfigError(f"BACKUP_METHOD '{method}' is not supported: use dump or pgbackrest")
        if method == "pgbackrest" and engine_kind(self.database_url) != "postgresql":
            raise ConfigError(f"BACKUP_METHOD=pgbackrest needs a PostgreSQL database, but env "
                              f"'{self.env}' is {engine_kind(self.database_url)}")
        return method

    @property
    def backup_encryption(self) -> str:
        """BACKUP_ENCRYPTION: `required` (the default in production) or `optional`."""
        value = self.get("BACKUP_ENCRYPTION", "required" if self.production else "optional")
        if value.strip().lower() not in {"required", "optional"}:
            raise ConfigError(f"BACKUP_ENCRYPTION '{value}' is not supported: use required or "
                              "optional")
        return value.strip().lower()

    def duration(self, name: str, default: str | None = None) -> str | None:
        """A PostgreSQL duration setting (5s, 500ms, 2min), validated so that a typo is a clear
        error before anything runs, not a failed SET halfway into a release."""
        value = self.get(name, default)
        if value is None:
            return None
        if parse_duration(value, POSTGRES_UNITS) is None:
            raise ConfigError(f"{name} '{value}' is not a duration: use e.g. 5s, 500ms or 2min")
        return value.replace(" ", "")

    def seconds(self, name: str, default: str) -> float:
        """A duration setting in PostgreSQL's form (as `duration` checks it), in seconds: for
        waits of our own, such as the pause between lock retries."""
        return parse_duration(self.duration(name, default), POSTGRES_UNITS)

    def target_seconds(self, name: str) -> float:
        """RPO_TARGET, RTO_TARGET or DRILL_MAX_AGE in seconds (a duration such as 24h or 30d)."""
        value = self.get(name, EVIDENCE_TARGETS[name])
        seconds = parse_duration(value, TARGET_UNITS)
        if not seconds:
            raise ConfigError(f"{name} '{value}' is not a duration: use e.g. 24h, 90min, 30d "
                              "or 3600s")
        return seconds

    def path(self, value: str) -> Path:
        """A path setting, relative to the project root so every working directory agrees."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p


def known_environments(root: Path, environ: Mapping[str, str]) -> list[str]:
    names = {DEFAULT_ENV}
    for f in root.glob(".env.*"):
        suffix = f.name[len(".env."):]
        if suffix and suffix != "example" and f.is_file():
            names.add(suffix)
    if environ.get("APP_ENV"):
        names.add(environ["APP_ENV"])
    return sorted(names)


def resolve_env_name(env: str | None, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return env or environ.get("APP_ENV") or DEFAULT_ENV


def load_settings(env: str | None = None, environ: Mapping[str, str] | None = None,
                  root: Path = PROJECT_ROOT) -> Settings:
    from dotenv import dotenv_values

    environ = dict(os.environ if environ is None else environ)
    name = resolve_env_name(env, environ)
    env_file = root / f".env.{name}"
    known = known_environments(root, environ)
    # A typo must never fall back to another environment's database.
    if not (name == DEFAULT_ENV or name == environ.get("APP_ENV") or env_file.is_file()):
        raise ConfigError(
            f"environment '{name}' is not configured (no {env_file.name} file and APP_ENV is not "
            f"'{name}'): known environments are {', '.join(known)}")
    values: dict[str, str] = {}
    for layer in (root / ".env", env_file):
        if layer.is_file():
            values.update({k: v for k, v in read_dotenv(layer, dotenv_values).items()
                           if v is not None})
    values.update(environ)
    return Settings(env=name, values=values, root=root)


def read_dotenv(path: Path, dotenv_values) -> dict:
    """`dotenv_values(path)`, refusing a line python-dotenv cannot parse: it skips such a line
    with a logging warning, and a skipped `POSTGRES_DB='mida_prod` (quote unclosed) would send a
    migrate to libpq's default database. The warning is caught by a handler on its logger, for
    the duration of the call only, and becomes a ConfigError naming the file and the line."""
    import logging

    class Unparsed(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            if "could not parse" in str(record.msg):
                self.lines.append(record.args[0] if record.args else "?")

    logger = logging.getLogger("dotenv.main")
    handler, propagate = Unparsed(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # ours to report, as an error, not python-dotenv's to print
    try:
        values = dotenv_values(path)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    if handler.lines:
        line = handler.lines[0]
        raise ConfigError(f"{path.name} line {line} cannot be read as a setting (python-dotenv "
                          f"could not parse it, e.g. a quote left open): fix that line in {path}")
    return values


def build_database_url(settings: Settings):
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    if settings.get("DATABASE_URL"):
        try:
            url = make_url(settings.get("DATABASE_URL"))
        except ArgumentError:
            raise ConfigError(
                f"DATABASE_URL for env '{settings.env}' is not a valid SQLAlchemy URL: "
                "use e.g. postgresql://user@host:5432/dbname or sqlite:///path.db") from None
        # A plain postgresql:// (or postgres://) means the driver we ship, psycopg2; SQLAlchemy
        # 2.1 would otherwise pick psycopg 3, which is not installed.
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg2")
        if url.get_backend_name() == "postgresql" and not url.database:
            raise ConfigError(_no_database_name(settings, "DATABASE_URL has no database name (its "
                                                "path, e.g. postgresql://user@host:5432/dbname)"))
        return url
    if _truthy(settings.get("USE_SQLITE")) or (
            not settings.get("POSTGRES_SERVER") and settings.env == DEFAULT_ENV):
        return URL.create("sqlite", database=str(settings.path(
            settings.get("SQLITE_PATH", f"{settings.env}.db"))))
    if not settings.get("POSTGRES_SERVER"):
        raise ConfigError(
            f"no database is configured for env '{settings.env}': set DATABASE_URL, "
            "USE_SQLITE=True, or POSTGRES_SERVER/POSTGRES_USER/POSTGRES_DB")
    if not settings.get("POSTGRES_DB"):
        raise ConfigError(_no_database_name(settings, "POSTGRES_DB is not set"))
    port = settings.get("POSTGRES_PORT", "5432")
    if not port.isdigit():
        raise ConfigError(f"POSTGRES_PORT '{port}' is not a port number")
    # URL.create keeps the password as data: no quoting, so any character survives.
    return URL.create("postgresql+psycopg2", username=settings.get("POSTGRES_USER"),
                      password=settings.get("POSTGRES_PASSWORD"),
                      host=settings.get("POSTGRES_SERVER"), port=int(port),
                      database=settings.get("POSTGRES_DB"))


def _no_database_name(settings: Settings, what: str) -> str:
    # libpq would pick the database named after the user: another database than meant.
    return (f"{what} for env '{settings.env}': a PostgreSQL env must name its database, or "
            "libpq falls back to the one named after the user; set it in .env."
            f"{settings.env} or the environment")


# Every secret a libpq URL can carry besides the authority's password: libpq reads connection
# parameters from the query string too (postgresql://u@host/db?password=...).
SECRET_QUERY_KEYS = ("password", "sslpassword")
MASK = "***"


def mask_url(url) -> str:
    """The one way a URL is shown (status, check, messages, manifests, the audit trail): the
    password in the authority and every secret query parameter replaced by ***."""
    secret = {k: MASK for k in url.query if k.lower() in SECRET_QUERY_KEYS}
    text = url.update_query_dict(secret).render_as_string(hide_password=True)
    # render_as_string percent-encodes the query's *** as %2A%2A%2A: show it as the authority's.
    return text.replace("=%2A%2A%2A", "=" + MASK)


def engine_kind(url) -> str:
    """'postgresql' or 'sqlite'; anything else is refused here, once."""
    backend = url.get_backend_name()
    if backend in {"postgresql", "sqlite"}:
        return backend
    raise ConfigError(f"database backend '{backend}' is not supported: use postgresql or sqlite")
