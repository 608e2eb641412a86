"""How a dump reads in the tasks' output: the line after one is taken, its lines in a restore's
summary, and its encryption (age to its recipients, or none).
"""
from __future__ import annotations

from app.ops.units import human_size


def summary(manifest, *, brief: bool = False) -> str:
    """The line `invoke backup` prints; `brief`: a migrate's or rollback's backup."""
    if brief:
        return (f"Backup {manifest.id} ({human_size(manifest.size)}, verified) "
                f"at {manifest.location}")
    return (f"Backup {manifest.id}: {human_size(manifest.size)} "
            f"(from {human_size(manifest.raw_size)}), revision {manifest.revision or 'base'}, "
            f"sha256 {manifest.sha256}, verified, at {manifest.location}")


def describe(manifest) -> list[tuple[str, str]]:
    """What `invoke restore` shows of the backup it restores, besides its id and revision."""
    return [("size", human_size(manifest.size))]


def encryption_text(manifest) -> str:
    """age and its recipients (public keys, shortened), and when it was last re-keyed."""
    if manifest.encryption != "age":
        return "none"
    keys = ", ".join(f"{k[:12]}...{k[-4:]}" for k in manifest.recipients or [])
    return f"age to {keys}" + (f", re-keyed {manifest.rekeyed_at}" if manifest.rekeyed_at else "")
