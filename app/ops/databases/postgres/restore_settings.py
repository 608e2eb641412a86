"""What the sessions of a restore into a new database are given: the copy is the tool's own
until the swap, so they are tuned as a DBA tunes a restore, with settings any role may set for
its own sessions (appended to PGOPTIONS after the URL's own options and the maintenance ones).
"""
from __future__ import annotations

import os

MIB = 1024 * 1024


def restore_work_mem(jobs: int) -> int:
    """maintenance_work_mem of each pg_restore worker, in MiB: a quarter of this machine's
    memory shared by the `jobs` workers, each at most 1 GiB and at least 64 MiB (PostgreSQL's
    default). Each worker builds one index at a time with it (a sort that fits stays in
    memory), and validates a foreign key under it (PostgreSQL runs that check with work_mem
    raised to maintenance_work_mem); `jobs` of them run at once. Past 1 GiB an index build of
    the tables a dump restores in minutes gains little, and the cap bounds what a server on
    another, smaller machine is asked for (jobs x 1 GiB at most)."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        memory = 0
    return max(64, min(1024, memory // 4 // max(1, jobs) // MIB))


def restore_options(jobs: int) -> str:
    """What the sessions of a restore into a new database add to PGOPTIONS. synchronous_commit
    off: a commit returns before its WAL is flushed; a crash can lose only the last commits of
    a copy that a restore cut short drops anyway (fsync stays as the server has it, so what
    was flushed is durable)."""
    return f" -c maintenance_work_mem={restore_work_mem(jobs)}MB -c synchronous_commit=off"
