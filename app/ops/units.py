"""Sizes and ages as people read them ("1.5 GiB", "3h ago"), for messages from library code
(a full disk, a refused guard) as well as for the console's tables.
"""
from __future__ import annotations

from datetime import datetime


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_age(created_at: str, now: datetime) -> str:
    seconds = max(0, int((now - datetime.fromisoformat(created_at)).total_seconds()))
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit} ago"
    return f"{seconds}s ago"
