"""What the benchmark prints about the cases it ran: a table of medians with their ratio against
the bare tool measured in the same run, peak RSS per process, and one line per target."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from .measure import loadavg
from .rounds import MIB, Outcome, mib

RSS_TARGET_MIB = 200


def med(values):
    return statistics.median(values) if values else float("nan")


def median_seconds(outcomes: list[Outcome]) -> float:
    return med([o.run.seconds for o in outcomes])


def biggest_kib(outcomes: list[Outcome]) -> int:
    """The largest single process over every round."""
    return max(o.run.biggest_kib for o in outcomes)


@dataclass
class Check:
    """One target: what it is about, the measured figure, the limit, and whether it was met.
    A goal is shown like a target but does not change the exit status."""
    name: str
    figure: str
    limit: str
    met: bool
    goal: bool = False

    def __str__(self) -> str:
        # A limit in words reads "(target: no larger)", one in figures "(target <= 0.5x)".
        sep = ": " if self.limit[0].isalpha() else " "
        return f"{self.name}: {self.figure} (target{sep}{self.limit})"


def ratio_check(name: str, ours: float, base: float, target: float, *, ours_label: str = "",
                base_label: str = "", limit: str | None = None, digits: int = 1) -> Check:
    """Ours in seconds against base in seconds: met when ours <= target x base."""
    figure = (f"{ours_label}{ours:.{digits}f} s / {base_label}{base:.{digits}f} s = "
              f"{ours / base:.3f}x")
    return Check(name, figure, limit or f"<= {target}x", ours <= target * base)


def rss_check(name: str, peak_kib: int) -> Check:
    return Check(name, f"largest process of invoke's tree {mib(peak_kib)}",
                 f"< {RSS_TARGET_MIB} MiB", peak_kib < RSS_TARGET_MIB * 1024)


def report_checks(checks: list[Check]) -> int:
    """Print every check; the exit status: 1 if a target (not a goal) was missed."""
    print(f"\nLoad average at the end: {loadavg()} (other work on the machine adds noise)")
    print("\n== Targets ==")
    for check in checks:
        print(f"  {'PASS' if check.met else 'FAIL'}  {check}"
              + ("  [a goal, not a target: does not change the exit status]" if check.goal else ""))
    return 0 if all(check.met for check in checks if not check.goal) else 1


def report_commands(results: dict[str, list[Outcome]], base_name: str, sample_interval: float,
                    size_label: str | None = "archive") -> None:
    """The median table (ratios against `base_name`), then peak RSS per process."""
    median_table(results, base_name, size_label)
    peak_rss_table(results, sample_interval)


def median_table(results: dict[str, list[Outcome]], base_name: str,
                 size_label: str | None) -> None:
    base = median_seconds(results[base_name])
    head = f"\n{'command':<34} {'median s':>9} {'ratio':>7} {'CPU s':>7} {'machine':>8}"
    if size_label:
        head += f" {size_label:>12}"
    print(head + f" {'peak RSS (largest process)':>27}")
    for name, outcomes in results.items():
        secs = median_seconds(outcomes)
        line = (f"{name:<34} {secs:9.1f} {secs / base:6.2f}x "
                f"{med([o.run.cpu_seconds for o in outcomes]):7.1f} "
                f"{med([o.run.machine_cpu_seconds for o in outcomes]):8.1f}")
        if size_label:
            line += f" {med([o.size or 0 for o in outcomes]) / MIB:8.1f} MiB"
        print(line + f" {mib(biggest_kib(outcomes)):>27}")
    print("  (ratio: against the median of " + base_name + " in this run; CPU s: user + system "
          "time of the command's process tree, median; the server's backends are not counted; "
          "machine: busy CPU seconds of the whole machine meanwhile, server included)")


def peak_rss_table(results: dict[str, list[Outcome]], sample_interval: float) -> None:
    print("\nPeak RSS per process (max over rounds; sampled VmHWM every "
          f"{sample_interval} s; wait4 ru_maxrss of the tree as a cross-check):")
    for name, outcomes in results.items():
        runs = [o.run for o in outcomes]
        by_name: dict[str, int] = {}
        for run in runs:
            for comm, kib in run.peak_by_name().items():
                by_name[comm] = max(by_name.get(comm, 0), kib)
        listed = ", ".join(f"{comm} {mib(kib)}" for comm, kib in
                           sorted(by_name.items(), key=lambda kv: -kv[1]))
        print(f"  {name:<34} {listed}")
        print(f"  {'':<34} sum of per-process peaks {mib(max(r.sum_of_peaks_kib for r in runs))}"
              f", largest concurrent sum {mib(max(r.concurrent_kib for r in runs))}"
              f", wait4 ru_maxrss (incl. pre-exec fork image) "
              f"{mib(max(r.tree_maxrss_kib for r in runs))}")
