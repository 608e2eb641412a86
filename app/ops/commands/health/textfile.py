"""`invoke check --prometheus`: the metrics node_exporter's textfile collector reads, and the
report once they could not be written."""
from __future__ import annotations

from datetime import datetime

from app.ops.catalog.drill_records import newest_successful
from app.ops.commands.evidence import longest_stretch
from app.ops.commands.health.report import (FINE_OUTCOMES, METRIC_PREFIX, Check, Facts,
                                            HealthReport, State, event_time, worst)


def write_textfile(report: HealthReport, path: str) -> None:
    """The metrics a dashboard and an alert need, labelled by env, written to a temporary file
    and renamed into place (prometheus_client's write_to_textfile), so the collector never
    reads half a file. No verified backup is a timestamp of 0, so one alert on the age covers
    "none at all"."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels=("env",)):
        return Gauge(METRIC_PREFIX + name, doc, labels, registry=registry)

    env = report.env
    gauge("check_state", "state of `invoke check`: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"
          ).labels(env).set(int(report.state))
    facts = report.facts
    if facts is not None:
        if report.now is not None:
            gauge("check_timestamp_seconds", "when `invoke check` last ran").labels(env).set(
                report.now.timestamp())
        gauge("up", "1 if the database could be reached and read").labels(env).set(
            int(facts.reachable))
        if facts.backups is not None:
            newest = facts.newest_verified
            gauge("last_verified_backup_timestamp_seconds",
                  "creation time of the newest verified backup whose artifact exists "
                  "(0: none)").labels(env).set(newest.created.timestamp() if newest else 0)
            gauge("last_verified_backup_size_bytes",
                  "stored size of that backup (0: none)").labels(env).set(
                newest.size if newest else 0)
        if facts.pending is not None:
            gauge("pending_migrations", "revisions an upgrade to head would apply").labels(
                env).set(len(facts.pending))
        gauge("heads", "head revisions in alembic/versions").labels(env).set(len(facts.heads))
        _drill_gauges(gauge, env, facts, report.now)
        if facts.last_runs:
            success = gauge("last_run_success", "1 if the newest audited run of this action "
                            "succeeded (or had nothing to do)", ("env", "action"))
            stamp = gauge("last_run_timestamp_seconds", "when the newest audited run of this "
                          "action started", ("env", "action"))
            for action, event in sorted(facts.last_runs.items()):
                success.labels(env, action).set(int(event.get("outcome") in FINE_OUTCOMES))
                at = event_time(event)
                if at is not None:
                    stamp.labels(env, action).set(at.timestamp())
    write_to_textfile(path, registry)


def _drill_gauges(gauge, env: str, facts: Facts, now: datetime | None) -> None:
    """The newest successful drill (0: none) and the RPO achieved over the report's default
    period (app/ops/commands/evidence.py), so a dashboard shows what `invoke report` judges."""
    if facts.drills is not None:
        newest = newest_successful(facts.drills)
        gauge("last_drill_timestamp_seconds", "when the newest successful restore drill started "
              "(0: none)").labels(env).set(newest.started.timestamp() if newest else 0)
        gauge("last_drill_seconds", "how long it took to bring the data back (0: none)").labels(
            env).set(newest.rto_seconds if newest else 0)
    if facts.backups is not None and now is not None:
        first = min([m.created for m in facts.backups]
                    + ([facts.first_event_at] if facts.first_event_at else []), default=None)
        gauge("rpo_achieved_seconds", "longest stretch of the report period (90 days) without "
              "a verified backup whose artifact is present").labels(env).set(
            longest_stretch(facts.backups, first, now).seconds)


def textfile_failed(report: HealthReport, path: str, exc: Exception) -> HealthReport:
    """The report once the textfile could not be written: the metrics the operator asked for
    are missing, so the check cannot vouch for them (UNKNOWN unless something is worse)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    check = Check("textfile", State.UNKNOWN, f"the metrics could not be written to {path}: "
                  f"{reason}")
    state = worst([report.state, State.UNKNOWN])
    summary = report.summary
    if state == State.UNKNOWN:
        summary = (f"{summary}; {check.detail}" if report.state == State.UNKNOWN
                   else f"env {report.env}: {check.detail}")
    return HealthReport(report.env, state, summary, report.checks + [check], report.perfdata,
                        report.facts, report.now)
