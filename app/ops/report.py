"""How library code tells the user what is happening without printing: a Reporter.

tasks.py passes a console reporter (app/console.py); tests pass one that records. The base class
is silent, so a caller that does not care passes nothing.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator


class Reporter:
    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        """Yields a callable that advances the bar by a number of bytes."""
        yield lambda n: None
