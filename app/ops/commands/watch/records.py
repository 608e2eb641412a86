"""The env's watch verdicts, one JSON record each in the backup store (`*.watch-verdict.json`),
so that `invoke status` reads the last one with one listing and one read instead of the whole
audit trail. Kept light: status imports it.
"""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone

from app.ops.errors import OpsError

VERDICT_SUFFIX = ".watch-verdict.json"


def store_verdict(storage, event: dict, now: datetime) -> None:
    name = f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}" \
           f"{VERDICT_SUFFIX}"
    try:
        storage.put_bytes(name, (json.dumps(event, sort_keys=True) + "\n").encode())
    except (OpsError, OSError):
        pass  # the audit event holds it too; only `invoke status` would miss it


def last_verdict(storage) -> dict | None:
    """The env's newest watch verdict: one listing, one read."""
    for name in sorted(storage.list(VERDICT_SUFFIX), reverse=True):
        try:
            return json.loads(storage.get_bytes(name))
        except (ValueError, OSError):
            continue
    return None
