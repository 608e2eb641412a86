"""The parsers of the settings table (app/settings/table.py): text in, a typed value out, or a
ConfigError that names the setting, what it holds and what to write instead.

A parser is called as `parse(name, text, settings)` with the setting's text (never empty: an
empty value means unset, and the default's text is parsed instead), and only when the value is
first read, so a bad value is reported by the step that needs it. Each factory below keeps the
words its setting's error always had. Nothing here imports more than the standard library.
"""
from __future__ import annotations

import math
import re
import shlex
from pathlib import Path
from typing import Mapping

from app.ops.errors import ConfigError

TRUE_WORDS = {"1", "true", "yes", "on"}
DURATION_RE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$")
# Seconds per unit of each kind of duration. PostgreSQL's (lock_timeout): a bare number is
# milliseconds; a watch's: a bare number is seconds; the ages and targets take no bare number.
POSTGRES_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "": 0.001}
WATCH_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "": 1.0}
AGE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
TARGET_UNITS = AGE_UNITS


def parse_duration(value: str, units: Mapping[str, float]) -> float | None:
    """`value` ("5s", "90 min") in seconds; None unless it is a whole number followed by one of
    `units` (seconds per unit; the unit "" admits a bare number). Each setting passes its own
    units, so each accepts what it always did, and the caller words the error."""
    match = DURATION_RE.match(value)
    if not match or match.group(2) not in units:
        return None
    return int(match.group(1)) * units[match.group(2)]


class Duration(float):
    """A duration setting's value: seconds (a float), `.seconds`, the same number as its units
    give it (an int for whole units: what JSON output shows, `86400` and not `86400.0`), and
    `.text`, the setting as written (PostgreSQL's without spaces, as `SET lock_timeout` takes
    it)."""
    text: str
    seconds: float | int

    def __new__(cls, seconds: float | int, text: str) -> "Duration":
        value = super().__new__(cls, seconds)
        value.text, value.seconds = text, seconds
        return value


def text(name: str, value: str, settings) -> str:
    return value


def boolean(name: str, value: str, settings) -> bool:
    return value.strip().lower() in TRUE_WORDS


def duration(units: Mapping[str, float], example: str, *, zero_ok: bool = False,
             compact: bool = False):
    """A whole number and one of `units`; zero only where it means "off" (`zero_ok`)."""
    def parse(name: str, value: str, settings) -> Duration:
        seconds = parse_duration(value, units)
        if seconds is None or (seconds == 0 and not zero_ok):
            raise ConfigError(f"{name} '{value}' is not a duration: use e.g. {example}")
        return Duration(seconds, value.replace(" ", "") if compact else value)
    parse.example = example
    return parse


def seconds(example: float):
    """A positive number of seconds, a trailing `s` allowed (the pgBackRest timeouts)."""
    def parse(name: str, value: str, settings) -> float:
        try:
            number = float(value.rstrip("s"))
        except ValueError:
            number = -1
        if number <= 0:
            raise ConfigError(f"{name} '{value}' is not a number of seconds: use e.g. "
                              f"{example:g}")
        return number
    return parse


def count(what: str, example: int, *, maximum: int | None = None, strip: bool = False,
          hint: str | None = None):
    """A whole number of 0 or more, digits only (PGBACKREST_MAX_READY, MIGRATION_LOCK_RETRIES)."""
    def parse(name: str, value: str, settings) -> int:
        shown = value.strip() if strip else value
        if not value.strip().isdigit() or (maximum is not None and int(value) > maximum):
            raise ConfigError(f"{name} '{shown}' is not a number of {what}: use "
                              f"{hint or f'e.g. {example}'}")
        return int(value)
    return parse


def port(name: str, value: str, settings) -> int:
    if not value.isdigit():
        raise ConfigError(f"{name} '{value}' is not a port number")
    return int(value)


def keep_count(name: str, value: str, settings) -> int:
    """BACKUP_KEEP_LAST: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 1:
        raise ConfigError(f"{name} '{value}' is not a valid count: use a positive number")
    return number


def keep_days(maximum: int):
    """BACKUP_KEEP_DAYS: a number of days, 0 up to `maximum` (more is a typo, not a policy)."""
    def parse(name: str, value: str, settings) -> float:
        try:
            number = float(value)
        except ValueError:
            number = -1
        if not math.isfinite(number) or number < 0 or number > maximum:
            raise ConfigError(f"{name} '{value}' is not a valid count: use a positive number"
                              f" of days up to {maximum}")
        return number
    return parse


def number(minimum: float, *, whole: bool = False):
    """A number (or a whole one) of at least `minimum` (the watch's thresholds)."""
    def parse(name: str, value: str, settings) -> float | int:
        try:
            found = int(value) if whole else float(value)
        except ValueError:
            found = None
        if found is None or found < minimum or found != found:
            kind = "a whole number" if whole else "a number"
            raise ConfigError(f"{name} '{value}' is not {kind} of at least {minimum:g}")
        return found
    return parse


def choice(*choices: str, lower: bool = True, strip: bool = False, shown: str = "given"):
    """One of `choices` (compared lowercased); the error quotes the value as given, or
    lowercased (`shown="lowered"`) as BACKUP_STORAGE and BACKUP_METHOD always did."""
    def parse(name: str, value: str, settings) -> str:
        found = value.strip() if strip else value
        found = found.lower() if lower else found
        if found not in choices:
            quoted = found if shown == "lowered" else value
            raise ConfigError(f"{name} '{quoted}' is not supported: use "
                              f"{' or '.join(choices)}")
        return found
    parse.choices = choices
    return parse


def mapped(mapping: Mapping[str, str], wording: str):
    """One of `mapping`'s keys (compared uppercased), as its value (BACKUP_S3_SSE)."""
    def parse(name: str, value: str, settings) -> str:
        found = mapping.get(value.strip().upper())
        if found is None:
            raise ConfigError(f"{name} '{value}' is not supported: use {wording}")
        return found
    parse.choices = tuple(mapping.values())
    return parse


def words(name: str, value: str, settings) -> tuple[str, ...]:
    """A comma-separated list, each item stripped, empty items dropped."""
    return tuple(k.strip() for k in value.split(",") if k.strip())


def command(name: str, value: str, settings) -> list[str]:
    """A command line, split as a shell would split it (never run through one)."""
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise ConfigError(f"{name} cannot be split into words: {exc}") from None


def project_path(name: str, value: str, settings) -> Path:
    """A path, relative to the project root so every working directory agrees."""
    return settings.path(value)


def http_url(name: str, value: str, settings) -> str:
    if not value.lower().startswith(("http://", "https://")):
        raise ConfigError(f"{name} '{value}' is not an http:// or https:// URL")
    return value


def sqlalchemy_url(name: str, value: str, settings):
    """An SQLAlchemy URL object (never a string, so the password is never rendered)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(value)
    except ArgumentError:
        raise ConfigError(
            f"{name} for env '{settings.env}' is not a valid SQLAlchemy URL: "
            "use e.g. postgresql://user@host:5432/dbname or sqlite:///path.db") from None
