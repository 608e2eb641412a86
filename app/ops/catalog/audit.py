"""The audit trail: one small JSON object per migrate, rollback, restore or break-glass, each
chained to the one before it by its hash (app/ops/catalog/audit_chain.py).

Events live in the backup store beside the backups, not in the database, so restoring the
database cannot erase them. One object per event (never an appended file) works the same on
local disk and in object stores, and two runs can never overwrite each other's records.
"""
from __future__ import annotations

from datetime import datetime, timezone

from app.ops.catalog import records
from app.ops.catalog.audit_chain import AUDIT_SUFFIX, PREVIOUS, canonical_bytes, link
from app.ops.run_identity import RUN_ID, who  # noqa: F401  (audit.RUN_ID names this run)
from app.ops.errors import OpsError

def record(target, *, action: str, now: datetime, outcome: str, reporter=None,
           **details) -> dict:
    """Write one event. A store that fails here must not hide what the run itself did (it may
    have migrated, or be failing for a reason of its own): it is reported, never raised."""

    event = {"action": action, "env": target.env, "database": target.database.masked_url,
             "at": now.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
             "outcome": outcome, **who(), **details}
    try:
        # Chained to the env's previous event (app/ops/catalog/audit_chain.py): a removal shows.
        event[PREVIOUS] = link(target.storage)
        records.write(target.storage, now, AUDIT_SUFFIX, canonical_bytes(event))
    except (OpsError, OSError) as exc:
        if reporter is not None:
            reporter.warn(f"the audit record of this {action} ({outcome}) could not be written: "
                          f"{exc}; record it by hand")
    return event


def read_events(target, warn=None) -> list[dict]:
    """The environment's audit trail, newest first. An object that holds JSON but not an event
    (an array, a number) is skipped, with a warning through `warn` naming it."""
    events = []
    for name, event in records.each(target.storage, AUDIT_SUFFIX):
        if event is records.UNREADABLE:
            event = {"action": "unreadable", "object": name}
        if isinstance(event, dict):
            events.append(event)
        elif warn is not None:
            warn(f"audit object {name} holds a JSON {type(event).__name__}, not an event: "
                 "skipped (look at who wrote it)")
    return events
