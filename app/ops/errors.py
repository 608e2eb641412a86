"""One exception family for everything a user can meet, each class carrying its exit code.

`tasks.py` catches `OpsError` in exactly one place and turns it into a one-line message and the
contract's exit code. Anything else is a bug (exit 1) and keeps its traceback.
"""
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    BUG = 1
    BAD_INPUT = 2
    REFUSED = 3
    BACKUP_FAILED = 4
    MIGRATION_FAILED = 5
    WATCH_REGRESSION = 6


class OpsError(Exception):
    exit_code = ExitCode.BUG


class ConfigError(OpsError):
    """Bad input or configuration: unknown env, revision or backup, a bad setting."""
    exit_code = ExitCode.BAD_INPUT


class DatabaseUnreachable(ConfigError):
    """The database cannot be reached with the configured settings."""


class GuardRefused(OpsError):
    """A guard said no: window closed, lock held, confirmation missing."""
    exit_code = ExitCode.REFUSED


class LockLost(GuardRefused):
    """The one-at-a-time lock was taken away while the run held it."""


class BackupFailed(OpsError):
    """Taking, reading back, verifying or restoring a backup failed."""
    exit_code = ExitCode.BACKUP_FAILED


class TransferFailed(BackupFailed):
    """The backup store stopped answering mid-transfer: says nothing about the backup itself."""


class MigrationFailed(OpsError):
    """Alembic's own upgrade or downgrade failed, or left the database off target."""
    exit_code = ExitCode.MIGRATION_FAILED


class NoRoom(BackupFailed):
    """A folder has no room for a backup, its manifest or a scratch copy (ENOSPC, a full quota,
    or too little free space found before starting). Says nothing about the backup itself, so
    verify never records it as damage."""


class WatchRegression(OpsError):
    """The change is in, but the watch after it found a regression (the undo is printed)."""
    exit_code = ExitCode.WATCH_REGRESSION
