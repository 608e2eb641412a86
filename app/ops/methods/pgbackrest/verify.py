"""Verifying a pgBackRest restore point: is it still reachable, and is what it needs intact?

Two questions to pgBackRest, in order: `pgbackrest info` (the backup it rests on is still in the
repository, and the archive's range covers every WAL segment from that backup's start to the
restore point's), then `pgbackrest verify`, which reads every file of the repository back. verify
exits 0 whatever it finds (a corrupt WAL file is `status: error` in its output, exit 0), so its
output is read here: the files it names as invalid, each backup's status and the archive's
continuous WAL ranges. Only what this restore point needs fails its verification: the backup it
rests on (and the backups that one references) and the WAL from that backup's start to the
restore point. An error verify does not tie to a file fails it too (fail closed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from app.ops.errors import BackupFailed, ConfigError, TransferFailed
from app.ops.methods.pgbackrest.command import PgBackRest, last_line

# What verify reports per file: "invalid checksum '15-1/0000000100000000/0000000100...-sha1.lz4'",
# "invalid size ...", "file missing ...", "invalid result ...: [29] ..." (a file it could not
# read), for WAL (ARCHIVE_ID/TIMELINE+LOG/SEGMENT-SHA1) and backup files (LABEL/pg_data/...).
INVALID_RE = re.compile(r"(invalid checksum|invalid size|file missing|invalid result) '?([^'\s:]+)")
WAL_FILE_RE = re.compile(r"(?:^|/)[0-9]+-[0-9]+/[0-9A-F]{16}/([0-9A-F]{24})-[0-9a-f]{40}")
BACKUP_FILE_RE = re.compile(r"(?:^|/)([0-9]{8}-[0-9]{6}F(?:_[0-9]{8}-[0-9]{6}[DI])?)/")
STATUS_RE = re.compile(r"^\s*status: (\S+)", re.MULTILINE)
BACKUP_STATUS_RE = re.compile(r"backup: (\S+), status: ([^,]+),")
WAL_RANGE_RE = re.compile(r"wal start: ([0-9A-F]{24}), wal stop: ([0-9A-F]{24})")
PROBLEM_RE = re.compile(r"\b(?:ERROR|WARN): (.*)")


def verify_timeout(settings) -> float:
    """PGBACKREST_VERIFY_TIMEOUT (seconds): verify reads the whole repository back."""
    return settings.PGBACKREST_VERIFY_TIMEOUT


@dataclass
class VerifyReport:
    """What one `pgbackrest verify --output=text --verbose` run said."""
    status: str | None = None
    invalid_wal: dict = field(default_factory=dict)       # segment -> verify's line
    invalid_backups: dict = field(default_factory=dict)   # label -> verify's first line
    backup_status: dict = field(default_factory=dict)     # label -> valid, invalid, ...
    wal_ranges: list = field(default_factory=list)        # (start, stop) of continuous WAL
    problems: list = field(default_factory=list)          # its ERROR and WARN lines


def read_verify_output(text: str) -> VerifyReport:
    report = VerifyReport()
    status = STATUS_RE.search(text)
    report.status = status.group(1) if status else None
    for line in text.splitlines():
        invalid = INVALID_RE.search(line)
        if invalid:
            path, said = invalid.group(2), line[invalid.start():].strip()
            wal, backup = WAL_FILE_RE.search(path), BACKUP_FILE_RE.search(path)
            if wal:
                report.invalid_wal.setdefault(wal.group(1), said)
            elif backup:
                report.invalid_backups.setdefault(backup.group(1), said)
        problem = PROBLEM_RE.search(line)
        if problem:
            report.problems.append(problem.group(1).strip())
    report.backup_status.update(BACKUP_STATUS_RE.findall(text))
    report.wal_ranges = WAL_RANGE_RE.findall(text)
    return report


def problems_for(report: VerifyReport, labels: list[str], first: str, last: str) -> list[str]:
    """What in `report` breaks a restore point that needs the backups `labels` and the WAL
    segments `first`..`last` (one timeline); empty when it is reachable."""
    found = [f"WAL segment {segment}: {said}" for segment, said in sorted(report.invalid_wal.items())
             if segment[:8] == first[:8] and first <= segment <= last]
    for label in labels:
        status = report.backup_status.get(label)
        if label in report.invalid_backups or status not in (None, "valid"):
            found.append(f"backup {label}: {report.invalid_backups.get(label) or status}")
        elif status is None and report.backup_status:
            found.append(f"backup {label}: not among the backups verify checked")
    if report.wal_ranges and not any(start[:8] == first[:8] and start <= first and last <= stop
                                     for start, stop in report.wal_ranges):
        found.append(f"the archive has no continuous WAL from {first} to {last} "
                     f"(ranges: {', '.join(f'{a}..{b}' for a, b in report.wal_ranges)})")
    attributed = report.invalid_wal or report.invalid_backups or any(
        status != "valid" for status in report.backup_status.values())
    if report.status != "ok" and not found and not attributed:
        found.append(f"verify says status {report.status} without naming a file: "
                     f"{'; '.join(report.problems) or 'no message'}")
    return found


def verify_restore_point(settings, manifest) -> None:
    """The restore point is still reachable (`check_reachable`), and `pgbackrest verify` finds
    all it needs intact. A damaged repository is BackupFailed; a verify that does not finish in
    time says nothing about the backup (TransferFailed)."""
    record = manifest.pgbackrest or {}
    pgbackrest = PgBackRest.from_settings(settings)
    timeout = verify_timeout(settings)
    backup = check_reachable(pgbackrest, manifest)
    start, segment = (backup.get("archive") or {}).get("start", ""), record.get("segment", "")
    report = _run_verify(pgbackrest, timeout)
    needed = [record.get("backup_label"), *(backup.get("reference") or [])]
    found = problems_for(report, needed, start, segment)
    if found:
        raise BackupFailed(f"pgbackrest verify finds what restore point "
                           f"{record.get('restore_point')} needs damaged: {'; '.join(found)}")


def check_reachable(pgbackrest: PgBackRest, manifest) -> dict:
    """From `pgbackrest info` alone (quick at any size): the backup the restore point rests on
    is in the repository, and the archive's ranges hold every WAL segment from that backup's
    start to the restore point's. Returns that backup's record."""
    record = manifest.pgbackrest or {}
    pgbackrest.check_version()  # `verify` needs 2.39: an older one is configuration, not damage
    # A repository that cannot be reached says nothing about the restore point: not recorded.
    stanza = pgbackrest.info(unreachable=TransferFailed)
    label = record.get("backup_label")
    backups = {b.get("label"): b for b in stanza.get("backup") or []}
    backup = backups.get(label)
    if backup is None:
        raise BackupFailed(f"pgBackRest backup {label}, which restore point "
                           f"{record.get('restore_point')} rests on, is no longer in the "
                           "repository (expired by pgBackRest's retention?)")
    start, segment = (backup.get("archive") or {}).get("start", ""), record.get("segment", "")
    ranges = [(a.get("min") or "", a.get("max") or "") for a in stanza.get("archive") or []]
    if not any(low <= start and segment <= high for low, high in ranges
               if low[:8] <= start[:8] and high[:8] >= segment[:8]):
        raise BackupFailed(f"the WAL archive of stanza '{stanza.get('name')}' does not hold every "
                           f"segment from {start} to {segment}: restore point "
                           f"{record.get('restore_point')} cannot be reached")
    return backup


def _run_verify(pgbackrest: PgBackRest, timeout: float) -> VerifyReport:
    # --log-level-console=detail: the invalid files (info) and the WAL ranges (detail) are
    # only in the log; the text output has the counts and each backup's status.
    result = pgbackrest.call(pgbackrest.argv("--output=text", "--verbose",
                                             "--log-level-console=detail", "verify"),
                             "pgbackrest verify", "a slow or large repository needs a longer "
                             "PGBACKREST_VERIFY_TIMEOUT", timeout, timed_out=TransferFailed,
                             timeout_setting="PGBACKREST_VERIFY_TIMEOUT")
    output = f"{result.stdout}\n{result.stderr}"
    if result.returncode != 0:
        pgbackrest.refuse_wrong_user(output, last_line(output))
        raise BackupFailed(f"pgbackrest verify failed (exit {result.returncode}): "
                           f"{last_line(result.stderr or result.stdout)}")
    report = read_verify_output(output)
    if report.status is None:
        raise ConfigError(f"pgbackrest verify printed no status line ({last_line(output)}): "
                          "check that PGBACKREST_COMMAND runs pgBackRest 2.39 or newer")
    return report
