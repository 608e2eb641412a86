"""What one sample of the database and the application read, as plain values: the sampler
fills them in, the baseline and the verdict only compute on them (so tests build them by hand).

A field left `None` was not read; `unreadable` says why, once per signal.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# Literals in a session's query text (pg_stat_activity shows it as sent, values included): a
# quoted string, a dollar-quoted one, or a number that is not part of a name or a `$n`.
_STRING = re.compile(r"(?:[EeBbXxNn]|[Uu]&)?'(?:[^']|'')*'?")
_DOLLAR = re.compile(r"\$(\w*)\$.*?(?:\$\1\$|$)", re.S)
_NUMBER = re.compile(r"(?<![\w$.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")
TEXT_LIMIT = 80


def mask_literals(sql: str | None) -> str:
    """A session's query with its literals as `$?` and cut short, so that no patient data in a
    WHERE clause reaches the screen, the JSON or the audit trail."""
    if not sql:
        return "?"
    masked = _DOLLAR.sub("$?", sql)
    masked = _STRING.sub("$?", masked)
    masked = _NUMBER.sub("$?", masked)
    return shorten(masked)


def shorten(text: str, limit: int = TEXT_LIMIT) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[:limit - 3] + "..."


@dataclass(frozen=True)
class LockWait:
    """A session waiting on a lock: for how long, on what, and who holds it."""
    pid: int
    seconds: float
    query: str            # masked
    relation: str | None
    blocker_pid: int | None
    blocker_query: str    # masked


@dataclass
class Sample:
    at: float                                   # seconds on the caller's clock
    rollbacks: int | None = None                # pg_stat_database.xact_rollback
    deadlocks: int | None = None
    seq_rows: dict[str, int] | None = None      # table -> pg_stat_user_tables.seq_tup_read
    # "userid:queryid" -> (calls, total execution time in ms), from pg_stat_statements
    statements: dict[str, tuple[int, float]] | None = None
    lock_waits: list[LockWait] | None = None
    replica_lag: dict[str, float] | None = None  # replica -> replay lag in seconds
    health_ok: bool | None = None
    health_detail: str = ""
    unreadable: dict[str, str] = field(default_factory=dict)   # signal -> why, with the fix
    own_seconds: float = 0.0                    # how long the sampler's own queries took
