"""How big a new dump will be in the store, erring high: read by the free-disk guard (through
the method's `room_needed`) and by S3 to choose its part size."""
from __future__ import annotations


def estimate_backup_size(facts) -> int | None:
    """The bytes a new backup will take in the store: the database's size times the highest
    ratio of stored to database size of the last five backups, plus half (None: the
    database's size is unknown). `facts`: the run's facts (its database and its backups)."""
    database_size = facts.database.size
    if not database_size:
        return None
    ratios = [m.size / m.database_size for m in facts.backups[:5] if m.database_size]
    # Without history assume no compression at all: better a false alarm than a full disk.
    return int(database_size * (max(ratios) * 1.5 if ratios else 1.0))
