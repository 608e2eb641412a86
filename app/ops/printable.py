"""Text fit for a terminal: what the tool prints may come from the store (audit events,
manifests, S3 keys), which anyone with write access to it can fill with escape sequences that
clear the screen, rewrite earlier lines or retitle the window. Every control character but the
newline and the tab, and the bidirectional overrides that reorder what is shown, is printed as
its `\\xNN` / `\\uNNNN` escape instead: visible, so a tampered record shows it was tampered with.
"""
from __future__ import annotations

import re

# C0 controls but \\t and \\n, DEL, C1 controls; the bidi embeddings, overrides and isolates.
UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text) -> str:
    """`text` (anything; str() first) with every unprintable character escaped."""
    return UNPRINTABLE.sub(_escaped, str(text))
