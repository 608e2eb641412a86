"""The audit trail as a hash chain: each event names the env's previous event, by its object
name and the SHA-256 of its bytes as they were written, so a removed or edited event shows.

`link(storage)` is what `audit.record` writes into a new event: the chain's newest end (the
newest event no other names). `walk(storage)` checks the whole trail: a named predecessor that
is gone is `removed`, one whose bytes no longer hash to what was recorded is `changed`, and two
events naming the same predecessor (two runs that wrote at once) are `concurrent`, reported but
not a break. Events written before the chain existed carry no link: they are counted as
unchained, not as problems. A chain cannot show what happened at its newest end (the newest
event removed or edited), so the walk names the newest event it saw: a later walk can be held
against it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from app.ops.catalog import records

AUDIT_SUFFIX = ".audit.json"
PREVIOUS = "previous"  # the field of an event: {"name", "sha256"} or None for the first
# How many of the newest events `link` reads to find the chain's end: an event is named by the
# time its run started, so one written after a longer run began can sort a little earlier.
# Each is a GET on S3, so a few overlapping runs' worth, not the whole trail.
LINK_WINDOW = 16


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_bytes(event: dict) -> bytes:
    """The bytes an event is written as (and hashed by)."""
    return (json.dumps(event, sort_keys=True) + "\n").encode()


@dataclass
class StoredEvent:
    name: str
    sha256: str
    event: dict | None  # None: not a JSON object
    parsed: bool = True  # False: not JSON at all (unreadable), as opposed to JSON of another kind

    @property
    def previous(self) -> dict | None:
        link = (self.event or {}).get(PREVIOUS)
        return link if isinstance(link, dict) else None

    @property
    def chained(self) -> bool:
        return self.event is not None and PREVIOUS in self.event


def read_stored(storage, names=None) -> list[StoredEvent]:
    """The events with their hashes, oldest name first."""
    names = records.names(storage, AUDIT_SUFFIX, newest_first=False) if names is None else names
    out = []
    for name in names:
        try:
            data = storage.get_bytes(name)
        except FileNotFoundError:
            continue  # removed between the listing and the read
        try:
            event, parsed = json.loads(data), True
        except ValueError:
            event, parsed = None, False
        out.append(StoredEvent(name, sha256_of(data), event if isinstance(event, dict) else None,
                               parsed))
    return out


def _ends(events: list[StoredEvent]) -> list[StoredEvent]:
    named = {(e.previous or {}).get("name") for e in events}
    return [e for e in events if e.name not in named]


def link(storage) -> dict | None:
    """The predecessor a new event records: the newest end of the chain among the newest
    events, or None when the trail is empty."""
    names = records.names(storage, AUDIT_SUFFIX, newest_first=False)[-LINK_WINDOW:]
    ends = _ends(read_stored(storage, names))
    if not ends:
        return None
    newest = ends[-1]
    return {"name": newest.name, "sha256": newest.sha256}


@dataclass
class TrailReport:
    events: int = 0
    unchained: int = 0
    problems: list[dict] = field(default_factory=list)
    newest: dict | None = None  # {"name", "sha256", "at"} of the newest event seen

    @property
    def intact(self) -> bool:
        return not any(p["kind"] in ("removed", "changed") for p in self.problems)

    def as_json(self) -> dict:
        return {"intact": self.intact, "events": self.events, "unchained": self.unchained,
                "problems": self.problems, "newest": self.newest,
                "note": "a chain cannot show a removed or edited newest event: hold this "
                        "report's newest event against a later report's trail"}


def walk(storage) -> TrailReport:
    stored = read_stored(storage)
    by_name = {e.name: e for e in stored}
    report = TrailReport(events=len(stored))
    children: dict[str, list[str]] = {}
    for e in stored:
        if e.event is None:
            continue  # an unreadable event: its successor's link says whether it was changed
        if not e.chained:
            report.unchained += 1
            continue
        link_ = e.previous
        if link_ is None:
            continue  # the first event of the chain
        name, digest = str(link_.get("name")), link_.get("sha256")
        children.setdefault(name, []).append(e.name)
        before = by_name.get(name)
        if before is None:
            report.problems.append({"kind": "removed", "detail": (
                f"event {name}, which {e.name} names as its predecessor, is not in the store")})
        elif before.sha256 != digest:
            report.problems.append({"kind": "changed", "detail": (
                f"event {name} no longer has the bytes {e.name} recorded for it "
                f"(sha256 {digest}, now {before.sha256})")})
    for name, successors in sorted(children.items()):
        if len(successors) > 1:
            report.problems.append({"kind": "concurrent", "detail": (
                f"events {' and '.join(sorted(successors))} both follow {name}: runs that "
                "wrote at the same time, not a break")})
    if stored:
        newest = stored[-1]
        report.newest = {"name": newest.name, "sha256": newest.sha256,
                         "at": (newest.event or {}).get("at")}
    return report


def events_with_hashes(storage, warn=None) -> list[dict]:
    """`invoke audit --json`: each event, newest first, with its own hash and its link. JSON
    that is not an event (an array, a number) is skipped, with a warning through `warn`, as
    `invoke audit` does (app/ops/catalog/audit.py); bytes that are not JSON are `unreadable`."""
    out = []
    for e in reversed(read_stored(storage)):
        if e.event is None and e.parsed:
            if warn is not None:
                warn(f"audit object {e.name} holds JSON that is not an event: skipped (look at "
                     "who wrote it)")
            continue
        item = dict(e.event) if e.event is not None else {"action": "unreadable"}
        item.update({"object": e.name, "sha256": e.sha256,
                     PREVIOUS: e.previous if e.chained else None,
                     "chained": e.chained})
        out.append(item)
    return out
