"""Cases run in alternating rounds: each round runs every case once, in order, so that whatever
else the machine is doing falls on all of them alike."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .measure import Run, loadavg

MIB = 1024 * 1024


@dataclass
class Outcome:
    """What one case did in one round: its measured run, and the size of the archive it wrote."""
    run: Run
    size: int | None = None


def _nothing(scratch: Path) -> None:
    pass


def _no_note(outcome: Outcome) -> str:
    return ""


@dataclass
class Case:
    """One command compared with others. `run` is handed a path of its own for the round (not
    yet created) and returns the measured Outcome; `setup` runs before it and `cleanup` after
    it, also after a failure, both outside the measurement. `note` adds to the round's line."""
    name: str
    run: Callable[[Path], Outcome]
    setup: Callable[[Path], None] = _nothing
    cleanup: Callable[[Path], None] = _nothing
    note: Callable[[Outcome], str] = _no_note


def make_folder(scratch: Path) -> None:
    scratch.mkdir()


def remove_folder(scratch: Path) -> None:
    """Each round's outputs go as soon as it ends, so the disk does not fill up."""
    shutil.rmtree(scratch, ignore_errors=True)


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def round_line(number: int, case: Case, outcome: Outcome, name_width: int) -> str:
    run = outcome.run
    size = "" if outcome.size is None else f"  {outcome.size / MIB:7.1f} MiB"
    return (f"  round {number}: {case.name:<{name_width}} {run.seconds:7.1f} s  (CPU "
            f"{run.cpu_seconds:5.1f} s){size}  biggest process {mib(run.biggest_kib)}"
            f"{case.note(outcome)}  [load {loadavg()}]")


def run_rounds(cases: list[Case], rounds: int, scratch: Path, *, name_width: int = 28,
               show: bool = True) -> dict[str, list[Outcome]]:
    """Each case's outcomes, one per round; with `show`, a line per case and round as it ends."""
    results: dict[str, list[Outcome]] = {case.name: [] for case in cases}
    for number in range(1, rounds + 1):
        for index, case in enumerate(cases):
            place = scratch / f"round{number}-cmd{index}"
            case.setup(place)
            try:
                outcome = case.run(place)
            finally:
                case.cleanup(place)
            results[case.name].append(outcome)
            if show:
                print(round_line(number, case, outcome, name_width), flush=True)
    return results
