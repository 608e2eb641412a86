"""JSON records in the store (audit events, drills, rehearsals, restore intents, watch
baselines and verdicts), named and read back one way.

A record is one object, never an appended file: that works the same on local disk and in object
stores, and two runs can never overwrite each other's. Its name is the UTC time it was written,
to the microsecond, then a tail (random unless the caller gives its own), then optionally its
kind, then the suffix that says what it is: `20260102T030405123456Z-a1b2c3-rehearse.drill.json`.
Names sort by time, so the newest is the last in order, and a listing by suffix finds them.
"""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from typing import Callable, Iterator

TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"
TIME_LENGTH = 22  # len("20260102T030405123456Z")
READ_ERRORS = (ValueError, OSError)
UNREADABLE = object()  # what `each` yields for a record it could not read


def new_name(now: datetime, suffix: str, *, kind: str | None = None,
             tail: str | None = None) -> str:
    tail = secrets.token_hex(3) if tail is None else tail
    return (f"{now.astimezone(timezone.utc):{TIME_FORMAT}}-{tail}"
            f"{'-' + kind if kind else ''}{suffix}")


def as_bytes(data, *, indent: int | None = None, sort_keys: bool = True) -> bytes:
    """One JSON document and a newline."""
    return (json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n").encode()


def write(storage, now: datetime, suffix: str, data, *, kind: str | None = None) -> str:
    """Store `data` (bytes as they are, anything else as `as_bytes`) as a new record; its
    name. OSError and OpsError reach the caller."""
    name = new_name(now, suffix, kind=kind)
    storage.put_bytes(name, data if isinstance(data, bytes) else as_bytes(data))
    return name


def written_at(name: str) -> datetime | None:
    """When a record was written, from its name (None: not a record's name)."""
    try:
        return datetime.strptime(name[:TIME_LENGTH], TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def names(storage, suffix: str, *, newest_first: bool = True) -> list[str]:
    return sorted(storage.list(suffix), reverse=newest_first)


def each(storage, suffix: str, parse: Callable | None = None, *, newest_first: bool = True,
         invalid: tuple = READ_ERRORS) -> Iterator[tuple[str, object]]:
    """(name, record) of each record under `suffix`, read one at a time (on S3 each is a GET:
    a caller that has found what it wants stops there). The record is its JSON, through
    `parse` when given; one that raises one of `invalid` on the way is UNREADABLE."""
    for name in names(storage, suffix, newest_first=newest_first):
        try:
            data = json.loads(storage.get_bytes(name))
            record = data if parse is None else parse(data)
        except invalid:
            record = UNREADABLE
        yield name, record


def read_all(storage, suffix: str, parse: Callable | None = None, *, newest_first: bool = True,
             invalid: tuple = READ_ERRORS) -> list:
    """Every record under `suffix` that can be read; one that cannot is passed over."""
    return [record for _, record in each(storage, suffix, parse, newest_first=newest_first,
                                         invalid=invalid) if record is not UNREADABLE]
