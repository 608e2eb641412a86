"""Measuring one command: wall time, CPU time of its process tree and of the whole machine, and
peak RSS per process.

Peak RSS comes from a sampler that walks /proc every `sample_interval` seconds and keeps each
process's VmHWM (its own high-water mark, so a short sampling gap loses nothing but the last
moments of a process), cross-checked with wait4()'s ru_maxrss (the largest single process of the
reaped tree, exact).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Run:
    """One command, run to completion."""
    seconds: float
    returncode: int
    tree_maxrss_kib: int                 # wait4 ru_maxrss: largest single process of the tree
    cpu_seconds: float = 0.0             # wait4 user + system time of the tree (not the server's)
    machine_cpu_seconds: float = 0.0     # busy CPU time of the whole machine meanwhile (/proc/stat)
    own_cpu_seconds: float = 0.0         # this process's meanwhile (its threads: moto, the sampler)
    peaks_kib: dict = field(default_factory=dict)   # pid -> (comm, VmHWM KiB)
    concurrent_kib: int = 0              # largest sampled sum of VmRSS over the tree
    stdout: bytes = b""
    stderr: bytes = b""

    def peak_by_name(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for comm, hwm in self.peaks_kib.values():
            out[comm] = max(out.get(comm, 0), hwm)
        return out

    @property
    def biggest_kib(self) -> int:
        # The sampled VmHWM when there is one: wait4's ru_maxrss also counts the image of the
        # forking process before exec (this script's, ~17 MiB), so it can exceed every process.
        sampled = max((hwm for _, hwm in self.peaks_kib.values()), default=0)
        return sampled or self.tree_maxrss_kib

    @property
    def sum_of_peaks_kib(self) -> int:
        return sum(hwm for _, hwm in self.peaks_kib.values())


def _read_status(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) in KiB, or None if the process is gone or a zombie."""
    hwm = rss = None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                    break
    except (OSError, ValueError):
        return None
    return None if hwm is None or rss is None else (hwm, rss)


def _ppid_and_comm(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces; the fields after the last ')' are fixed.
    left, right = data.find(b"("), data.rfind(b")")
    rest = data[right + 2:].split()
    return int(rest[1]), data[left + 1:right].decode(errors="replace")


class TreeSampler(threading.Thread):
    """Keeps each descendant's VmHWM (and the largest concurrent VmRSS sum) of one process."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self.concurrent = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        parents: dict[int, int] = {}
        names: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                info = _ppid_and_comm(int(entry))
                if info:
                    parents[int(entry)], names[int(entry)] = info
        tree, frontier = {self.root}, [self.root]
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        total = 0
        for pid in tree:
            status = _read_status(pid)
            if status is None:
                continue
            hwm, rss = status
            total += rss
            old = self.peaks.get(pid, ("", 0))[1]
            self.peaks[pid] = (names.get(pid, "?"), max(old, hwm))
        self.concurrent = max(self.concurrent, total)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all but idle and iowait) since boot: the
    PostgreSQL server's backends count here, which wait4 of our own tree never sees."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def measure(argv, *, cwd=None, env=None, sample_interval: float | None = None,
            capture: bool = True) -> Run:
    """Run argv to completion; wall time, wait4's ru_maxrss and (optionally) a /proc sampler."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    busy, own = machine_busy_seconds(), self_cpu()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=out,
                            stdin=subprocess.DEVNULL)
    sampler = None
    if sample_interval:
        sampler = TreeSampler(proc.pid, sample_interval)
        sampler.start()
    stdout = stderr = b""
    if capture:
        # Drain both pipes (as cron would) without letting either fill up.
        chunks = {"out": [], "err": []}
        readers = [threading.Thread(target=lambda s, k: chunks[k].append(s.read()),
                                    args=(s, k), daemon=True)
                   for s, k in ((proc.stdout, "out"), (proc.stderr, "err"))]
        for r in readers:
            r.start()
    # wait4 directly, so the root's rusage (max RSS of it and its reaped descendants) is ours.
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if capture:
        for r in readers:
            r.join()
        stdout, stderr = b"".join(chunks["out"]), b"".join(chunks["err"])
        proc.stdout.close()
        proc.stderr.close()
    run = Run(seconds, proc.returncode, usage.ru_maxrss, usage.ru_utime + usage.ru_stime,
              machine_busy_seconds() - busy, self_cpu() - own, stdout=stdout, stderr=stderr)
    if sampler:
        sampler.stop()
        run.peaks_kib, run.concurrent_kib = sampler.peaks, sampler.concurrent
    return run


def fail_if(run: Run, what: str) -> None:
    """Stop the benchmark, with the tail of the command's stderr, if it failed."""
    if run.returncode != 0:
        sys.stderr.write(run.stderr.decode(errors="replace")[-3000:])
        raise SystemExit(f"{what} failed with exit status {run.returncode}")


def self_cpu() -> float:
    """CPU time of this process (its threads: moto's server, the sampler)."""
    t = os.times()
    return t.user + t.system


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"
