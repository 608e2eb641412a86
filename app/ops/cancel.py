"""Stopping work that runs on another thread: a backup whose result is no longer wanted.

`Cancellation.cancel()` runs what the worker registered (for a dump: killing pg_dump), so a
worker blocked in a read wakes up at once; no polling.
"""
from __future__ import annotations

import threading
from typing import Callable


class Cancellation:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: list[Callable[[], None]] = []
        self.cancelled = False

    def on_cancel(self, action: Callable[[], None]) -> None:
        """Run `action` when cancelled; at once if that has happened already."""
        with self._lock:
            if not self.cancelled:
                self._actions.append(action)
                return
        action()

    def forget(self, action: Callable[[], None]) -> None:
        with self._lock:
            if action in self._actions:
                self._actions.remove(action)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled, actions, self._actions = True, self._actions, []
        for action in actions:
            action()
