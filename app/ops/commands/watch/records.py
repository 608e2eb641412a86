"""The env's watch verdicts, one JSON record each in the backup store (`*.watch-verdict.json`),
so that `invoke status` reads the last one with one listing and one read instead of the whole
audit trail. Kept light: status imports it.
"""
from __future__ import annotations

from datetime import datetime

from app.ops.catalog import records
from app.ops.errors import OpsError

VERDICT_SUFFIX = ".watch-verdict.json"


def store_verdict(storage, event: dict, now: datetime) -> None:
    try:
        records.write(storage, now, VERDICT_SUFFIX, event)
    except (OpsError, OSError):
        pass  # the audit event holds it too; only `invoke status` would miss it


def last_verdict(storage) -> dict | None:
    """The env's newest watch verdict: one listing, one read."""
    for _, verdict in records.each(storage, VERDICT_SUFFIX):
        if verdict is not records.UNREADABLE:
            return verdict
    return None
