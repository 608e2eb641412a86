"""app.ops.errors: every user-facing error carries the contract's exit code."""
from __future__ import annotations

import pytest

from app.ops.errors import (BackupFailed, ConfigError, DatabaseUnreachable, ExitCode,
                            GuardRefused, MigrationFailed, OpsError, WatchRegression)


@pytest.mark.parametrize("cls,code", [(ConfigError, 2), (GuardRefused, 3), (BackupFailed, 4),
                                      (MigrationFailed, 5), (DatabaseUnreachable, 2),
                                      (WatchRegression, 6)])
def test_exit_codes_are_pinned(cls, code):
    assert cls.exit_code == code
    assert cls("message").exit_code == code
    assert int(cls("message").exit_code) == code
    assert issubclass(cls, OpsError)


def test_exit_code_values():
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("OK", 0), ("BUG", 1), ("BAD_INPUT", 2), ("REFUSED", 3), ("BACKUP_FAILED", 4),
        ("MIGRATION_FAILED", 5), ("WATCH_REGRESSION", 6)]


def test_database_unreachable_is_a_config_error():
    assert issubclass(DatabaseUnreachable, ConfigError)
    with pytest.raises(ConfigError):
        raise DatabaseUnreachable("cannot connect")


def test_message_is_kept():
    assert str(GuardRefused("window closed")) == "window closed"
