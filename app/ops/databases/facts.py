"""What a run reads of its database once (both kinds answer it the same way)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatabaseFacts:
    """What a run reads of its database once: a backup's estimate, the guards and the manifest
    use the same values."""
    exists: bool
    server_version_num: int | None  # None for SQLite
    size: int | None                # bytes; None while an SQLite file does not exist
