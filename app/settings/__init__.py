"""Settings: which environment, which database, where backups go.

`load_settings(env)` layers, highest first: the process environment, `.env.NAME`, `.env`
(python-dotenv reads the files; nothing is written back into `os.environ`). It returns a frozen
`Settings`. Nothing here is read at import time, and nothing here connects to anything.

Every setting is declared once, in app/settings/table.py, and read typed: `settings.RPO_TARGET`
(a Duration), `settings.BACKUP_KEEP_LAST` (an int or None). A key of a `.env` file that is no
declared setting is named, with the closest declared name, by `Settings.unknown_keys`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from app.ops.errors import ConfigError
from app.settings.parsers import (AGE_UNITS, POSTGRES_UNITS, TARGET_UNITS, TRUE_WORDS,  # noqa: F401
                                  WATCH_UNITS, Duration, parse_duration)
from app.settings.table import LIBRARY_KEYS, TABLE, Declared, Setting, undeclared  # noqa: F401

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_ENV = "dev"
PRODUCTION_NAMES = {"prod", "production"}


@dataclass(frozen=True)
class Settings(Declared):
    """One env's settings. Read a declared setting as an attribute (`settings.BACKUP_DIR`): its
    typed value, or None when it is unset and has no default."""
    env: str
    values: Mapping[str, str] = field(repr=False)
    root: Path = PROJECT_ROOT
    # Each key read from a .env file, with the files it is in (the process environment's keys
    # are not ours to judge: it holds everything).
    file_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _parsed: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def typed(self, setting: Setting):
        """`setting`'s value, parsed on first read (an empty value means unset)."""
        if setting.name in self._parsed:
            return self._parsed[setting.name]
        value = self.values.get(setting.name)
        if value is None or value == "":
            value = setting.default_text(self)
        parsed = None if value is None else setting.parse(setting.name, value, self)
        self._parsed[setting.name] = parsed
        return parsed

    def library(self, name: str) -> str | None:
        """A library's variable (AWS_*) as the settings hold it, for code that passes it on."""
        if not LIBRARY_KEYS.match(name):
            raise ValueError(f"{name} is a setting of ours: read it as settings.{name}")
        return self.values.get(name) or None

    @property
    def unknown_keys(self) -> list[str]:
        """One warning per key of a .env file that is no setting, with the closest name."""
        found = []
        for key, files in self.file_keys.items():
            problem = undeclared(key)
            if problem:
                found.append(f"{problem} (in {', '.join(files)})")
        return found

    @property
    def production(self) -> bool:
        # Fail closed: either signal is enough.
        return self.PRODUCTION or self.env.lower() in PRODUCTION_NAMES

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
        return self.POSTGRES_MAINTENANCE_DB

    @property
    def pg_bin_dir(self) -> str | None:
        return self.PG_BIN_DIR

    @property
    def backup_dir(self) -> Path:
        return self.BACKUP_DIR

    @property
    def backup_storage(self) -> str:
        return self.BACKUP_STORAGE

    @property
    def backup_method(self) -> str:
        method = self.BACKUP_METHOD
        if method == "pgbackrest" and engine_kind(self.database_url) != "postgresql":
            raise ConfigError(f"BACKUP_METHOD=pgbackrest needs a PostgreSQL database, but env "
                              f"'{self.env}' is {engine_kind(self.database_url)}")
        return method

    @property
    def backup_encryption(self) -> str:
        """BACKUP_ENCRYPTION: `required` (the default in production) or `optional`."""
        return self.BACKUP_ENCRYPTION

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
    file_keys: dict[str, tuple[str, ...]] = {}
    for layer in (root / ".env", env_file):
        if layer.is_file():
            read = read_dotenv(layer, dotenv_values)
            values.update({k: v for k, v in read.items() if v is not None})
            for key in read:
                file_keys[key] = file_keys.get(key, ()) + (layer.name,)
    values.update(environ)
    return Settings(env=name, values=values, root=root, file_keys=file_keys)


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
    from sqlalchemy.engine import URL

    url = settings.DATABASE_URL
    if url is not None:
        # A plain postgresql:// (or postgres://) means the driver we ship, psycopg2; SQLAlchemy
        # 2.1 would otherwise pick psycopg 3, which is not installed.
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg2")
        if url.get_backend_name() == "postgresql" and not url.database:
            raise ConfigError(_no_database_name(settings, "DATABASE_URL has no database name (its "
                                                "path, e.g. postgresql://user@host:5432/dbname)"))
        return url
    if settings.USE_SQLITE or (not settings.POSTGRES_SERVER and settings.env == DEFAULT_ENV):
        return URL.create("sqlite", database=str(settings.SQLITE_PATH))
    if not settings.POSTGRES_SERVER:
        raise ConfigError(
            f"no database is configured for env '{settings.env}': set DATABASE_URL, "
            "USE_SQLITE=True, or POSTGRES_SERVER/POSTGRES_USER/POSTGRES_DB")
    if not settings.POSTGRES_DB:
        raise ConfigError(_no_database_name(settings, "POSTGRES_DB is not set"))
    # URL.create keeps the password as data: no quoting, so any character survives.
    return URL.create("postgresql+psycopg2", username=settings.POSTGRES_USER,
                      password=settings.POSTGRES_PASSWORD,
                      host=settings.POSTGRES_SERVER, port=settings.POSTGRES_PORT,
                      database=settings.POSTGRES_DB)


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
