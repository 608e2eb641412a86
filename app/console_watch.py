"""What the user sees of a watch: the baseline's progress bar, the live table of signals
refreshed every interval (rich, on a terminal; one line per interval when piped), and the
verdict with the undo commands. rich is imported only when a terminal is there to draw on.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

STATE_STYLE = {"ok": "green", "regression": "bold red", "unavailable": "yellow"}


class WatchDisplay:
    def __init__(self, console):
        self.console = console

    @contextlib.contextmanager
    def baseline(self, seconds: float) -> Iterator[Callable[[float], None]]:
        self.console.info(f"Recording a baseline of normal traffic for {seconds:g} s "
                          "(nothing is changed meanwhile)")
        if not self.console.interactive:
            yield lambda done: None
            return
        from rich.console import Console as RichConsole
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("baseline"), BarColumn(), TimeRemainingColumn(),
                      console=RichConsole(file=self.console.err), transient=True) as bar:
            task = bar.add_task("baseline", total=seconds)
            yield lambda done: bar.update(task, completed=done)

    @contextlib.contextmanager
    def live(self, duration: float) -> Iterator[Callable]:
        """Yields on_interval(signals, elapsed, left)."""
        self.console.info(f"Watching for {duration:g} s")
        if not self.console.interactive:
            yield self._line
            return
        from rich.console import Console as RichConsole
        from rich.live import Live

        with Live(self._table([], 0, duration), console=RichConsole(file=self.console.err),
                  transient=False, auto_refresh=False) as live:
            yield lambda signals, elapsed, left: live.update(
                self._table(signals, elapsed, left), refresh=True)

    def _line(self, signals, elapsed: float, left: float) -> None:
        bad = [f"{s.name} {s.state.upper()}" for s in signals if s.state == "regression"]
        ok = sum(s.state == "ok" for s in signals)
        self.console.info(f"  {elapsed:.0f} s watched, {left:.0f} s left: "
                          + (", ".join(bad) if bad else f"{ok} signal(s) ok"))

    @staticmethod
    def _table(signals, elapsed: float, left: float):
        from rich.table import Table

        table = Table(title=f"Watch: {elapsed:.0f} s watched, {left:.0f} s left",
                      title_justify="left")
        for column in ("signal", "baseline", "now", "state", "detail"):
            table.add_column(column, overflow="fold")
        for s in signals:
            style = STATE_STYLE.get(s.state, "")
            table.add_row(s.name, s.baseline, s.now, f"[{style}]{s.state}[/]", s.detail)
        return table

    def verdict(self, outcome) -> None:
        """The signals, one verdict line, and on a regression the commands that undo it."""
        say = self.console.say
        self.console.table(f"Watch of env {outcome.env} against the baseline of "
                           f"{outcome.baseline.at}",
                           ["signal", "baseline", "now", "state", "detail"],
                           [[s.name, s.baseline, s.now, s.state, s.detail]
                            for s in outcome.signals])
        if outcome.verdict != "regression":
            return say(f"Verdict: ok, no regression in {outcome.watched_seconds:.0f} s watched.")
        say(f"Verdict: REGRESSION after {outcome.watched_seconds:.0f} s watched: "
            + "; ".join(s.detail for s in outcome.regressions))
        if not outcome.undo:
            return say("No migrate or rollback preceded this baseline: undo the deploy that "
                       "came after it.")
        say("To undo the change (the watch changes nothing by itself), one of:")
        for command, cost in outcome.undo:
            say(f"  {command}")
            say(f"      {cost}")
