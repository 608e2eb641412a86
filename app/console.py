"""What the user sees: messages on stderr, tables and JSON on stdout, progress bars on a terminal.

On a terminal, rich draws tables and progress bars; piped (cron, CI) the output is plain text
and progress is silent. rich is imported only when a terminal is there to draw on, which keeps
`invoke status` in a pipeline fast.
"""
from __future__ import annotations

import contextlib
import json
import sys
from typing import Callable, Iterator, Sequence

from app.ops.printable import printable
from app.ops.report import Reporter


class Console(Reporter):
    def __init__(self):
        self.out = sys.stdout
        self.err = sys.stderr
        self._progress = None
        self._depth = 0

    @property
    def interactive(self) -> bool:
        return self.err.isatty()

    # -- messages --------------------------------------------------------------------------
    def info(self, message: str) -> None:
        print(printable(message), file=self.err, flush=True)

    def warn(self, message: str) -> None:
        print(f"WARNING: {printable(message)}", file=self.err, flush=True)

    def say(self, message: str = "") -> None:
        # Every line goes through printable(): tables and fields too, when piped.
        print(printable(message), file=self.out, flush=True)

    def json(self, data) -> None:
        self.say(json.dumps(data, indent=2))

    def show_migration_log(self) -> None:
        """Alembic reports each revision it runs through logging: show those lines."""
        import logging

        handler = logging.StreamHandler(self.err)
        handler.setFormatter(logging.Formatter("  %(message)s"))
        # "Running upgrade a -> b" is news; "Context impl ..." at every connection is not.
        handler.addFilter(lambda record: record.getMessage().startswith("Running "))
        log = logging.getLogger("alembic.runtime.migration")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

    # -- progress --------------------------------------------------------------------------
    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        if not self.interactive:
            yield lambda n: None
            return
        from rich.console import Console as RichConsole
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TransferSpeedColumn)

        if self._progress is None:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn(),
                                      console=RichConsole(file=self.err), transient=False)
            self._progress.start()
        self._depth += 1
        task = self._progress.add_task(description, total=total)
        try:
            yield lambda n: self._progress.advance(task, n)
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._progress.stop()
                self._progress = None

    # -- tables ----------------------------------------------------------------------------
    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self.out.isatty():
            from rich.console import Console as RichConsole
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*map(_cell, row))
            RichConsole(file=self.out).print(table)
            return
        rows = [[printable(c) for c in row] for row in rows]  # widths of what is shown
        widths = [max(len(str(c)) for c in col) for col in zip(columns, *rows)]
        self.say(title)
        for row in (columns, *rows):
            self.say("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())

    def fields(self, title: str, pairs: Sequence[tuple[str, str]]) -> None:
        if self.out.isatty():
            from rich.console import Console as RichConsole
            from rich.table import Table

            table = Table(title=title, title_justify="left", show_header=False)
            table.add_column(style="bold")
            table.add_column()
            for key, value in pairs:
                table.add_row(key, _cell(value))
            RichConsole(file=self.out).print(table)
            return
        pairs = [(key, printable(value)) for key, value in pairs]
        width = max(len(k) for k, _ in pairs)
        self.say(title)
        for key, value in pairs:
            self.say(f"  {key.ljust(width)}  {value}")


def _cell(value) -> str:
    """A table cell for rich: printable, and its `[...]` shown as written, not read as markup."""
    from rich.markup import escape
    return escape(printable(value))
