"""A confirmation typed on a terminal: the name of what is about to be changed (the database a
restore goes over, the env a rollback deletes data in), written once for every command that
asks for it. `--yes` is each caller's to honour before asking.
"""
from __future__ import annotations

from typing import Callable

from app.ops.errors import GuardRefused


def typed_confirmation(ask: Callable[[str], str] | None, prompt: str, expected: str, *,
                       action: str, no_terminal: str) -> None:
    """`expected` typed at `ask(prompt)`, or GuardRefused. Without a terminal (`ask` None) the
    refusal is `no_terminal`; a wrong answer names what was typed and what was asked for."""
    if ask is None:
        raise GuardRefused(no_terminal)
    typed = ask(prompt).strip()
    if typed != expected:
        raise GuardRefused(f"{action} not confirmed: '{typed}' is not '{expected}'; nothing was "
                           "changed")
