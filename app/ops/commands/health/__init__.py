"""`invoke check`: an environment's health in the monitoring-plugins convention, and the metrics
node_exporter's textfile collector reads.

`gather` (gather.py) reads the facts once, from the same sources `invoke status` reads
(Alembic's scripts, one connection to the database, the backup store, the audit trail);
`evaluate` (checks.py) turns them into checks, each OK, WARNING, CRITICAL or UNKNOWN with a
short reason. Nothing here writes to the database or the store: no connection creates an
SQLite file, no manifest or audit event is written. A problem the check finds is a check's
state; only the check's own settings (an unknown env, a malformed CHECK_* duration) raise
ConfigError, which the caller reports UNKNOWN.
The plugin's lines and JSON are report.py's; the Prometheus textfile is textfile.py's.
"""
from __future__ import annotations

from datetime import datetime

from app.ops.commands.health.checks import evaluate
from app.ops.commands.health.gather import gather
from app.ops.commands.health.report import UNIT_SECONDS, HealthReport, Limits, State, unknown
from app.ops.commands.health.textfile import textfile_failed, write_textfile

__all__ = ["UNIT_SECONDS", "HealthReport", "State", "evaluate", "gather", "run_check",
           "textfile_failed", "unknown", "write_textfile"]


def run_check(target, now: datetime) -> HealthReport:
    limits = Limits.from_settings(target.settings)
    return evaluate(gather(target, now), limits, now)
