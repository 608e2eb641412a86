"""app.ops.guards.preflight.check_window: the production maintenance-window guard and break-glass."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.ops.errors import ConfigError, ExitCode, GuardRefused
from app.ops.commands.run_facts import RunFacts
from app.ops.guards.preflight import check_window
from app.ops.report import Reporter
from app.ops.target import open_target
from app.settings import load_settings

MONDAY_MORNING = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)   # 2026-03-02 is a Monday
MONDAY_NIGHT = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)
WINDOW = "Mon-Fri 22:00-23:00"


class RecordingReporter(Reporter):
    def __init__(self):
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def info(self, message: str) -> None:
        self.infos.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def settings_for(tmp_path, env: str, **values: str):
    (tmp_path / f".env.{env}").write_text("USE_SQLITE=True\n")
    return load_settings(env, environ=values, root=tmp_path)


def check(settings, now, break_glass=None, action="migrate"):
    reporter = RecordingReporter()
    result = check_window(settings, RunFacts(open_target(settings)), action=action, now=now,
                          break_glass=break_glass,
                          reporter=reporter)
    assert result is None
    return reporter


# -- non-production ----------------------------------------------------------------------------
@pytest.mark.parametrize("values", [{}, {"MAINTENANCE_WINDOW": WINDOW},
                                    {"MAINTENANCE_WINDOW": "whenever"}])
def test_non_production_always_passes(tmp_path, values):
    settings = settings_for(tmp_path, "staging", **values)
    assert settings.production is False
    reporter = check(settings, MONDAY_MORNING)
    assert reporter.warnings == []


def test_dev_passes_at_any_time(tmp_path):
    settings = load_settings("dev", environ={}, root=tmp_path)
    for hour in (0, 10, 22):
        reporter = check(settings, MONDAY_MORNING.replace(hour=hour))
        assert reporter.warnings == []


# -- production refusals -----------------------------------------------------------------------
@pytest.mark.parametrize("env,values", [("prod", {}), ("production", {}),
                                        ("staging", {"PRODUCTION": "true"})])
def test_production_without_window_is_refused(tmp_path, env, values):
    settings = settings_for(tmp_path, env, **values)
    assert settings.production is True
    with pytest.raises(GuardRefused) as caught:
        check(settings, MONDAY_NIGHT)
    assert caught.value.exit_code == ExitCode.REFUSED
    assert "MAINTENANCE_WINDOW" in str(caught.value)
    assert "--break-glass" in str(caught.value)


def test_production_with_closed_window_is_refused_saying_when_it_opens(tmp_path):
    settings = settings_for(tmp_path, "prod", MAINTENANCE_WINDOW=WINDOW)
    with pytest.raises(GuardRefused) as caught:
        check(settings, MONDAY_MORNING, action="rollback")
    message = str(caught.value)
    assert message.startswith("rollback on production env 'prod'")
    assert "next opens" in message
    assert "2026-03-02 22:00" in message


def test_closed_window_next_opening_is_the_next_day_in_range(tmp_path):
    settings = settings_for(tmp_path, "prod", MAINTENANCE_WINDOW=WINDOW)
    friday_late = datetime(2026, 3, 6, 23, 30, tzinfo=UTC)
    with pytest.raises(GuardRefused, match="next opens Mon 2026-03-09 22:00"):
        check(settings, friday_late)


def test_window_with_no_future_opening_is_refused(tmp_path):
    settings = settings_for(tmp_path, "prod", MAINTENANCE_WINDOW="2026-01-05 22:00-23:00")
    with pytest.raises(GuardRefused, match="never"):
        check(settings, MONDAY_NIGHT)


def test_production_with_open_window_passes(tmp_path):
    settings = settings_for(tmp_path, "prod", MAINTENANCE_WINDOW=WINDOW)
    reporter = check(settings, MONDAY_NIGHT)
    assert reporter.warnings == []
    assert any("open until" in m and "23:00" in m for m in reporter.infos)


def test_window_uses_maintenance_timezone(tmp_path):
    settings = settings_for(tmp_path, "prod", MAINTENANCE_WINDOW="Mon 22:00-23:00",
                            MAINTENANCE_TIMEZONE="Europe/Berlin")
    check(settings, datetime(2026, 3, 2, 21, 30, tzinfo=UTC))  # 22:30 CET: open
    with pytest.raises(GuardRefused):
        check(settings, MONDAY_NIGHT)  # 23:30 CET: closed


@pytest.mark.parametrize("values", [{"MAINTENANCE_WINDOW": "Mon 25:00-26:00"},
                                    {"MAINTENANCE_WINDOW": "Someday 22:00-23:00"},
                                    {"MAINTENANCE_WINDOW": "Mon 22:00-23:00,"},
                                    {"MAINTENANCE_WINDOW": WINDOW,
                                     "MAINTENANCE_TIMEZONE": "Mars/Olympus"}])
def test_malformed_window_in_production_is_config_error(tmp_path, values):
    settings = settings_for(tmp_path, "prod", **values)
    with pytest.raises(ConfigError) as caught:
        check(settings, MONDAY_NIGHT)
    assert caught.value.exit_code == ExitCode.BAD_INPUT


# -- break-glass -------------------------------------------------------------------------------
@pytest.mark.parametrize("reason", ["", "   "])
def test_break_glass_without_reason_is_config_error(tmp_path, reason):
    for settings in (settings_for(tmp_path, "prod", MAINTENANCE_WINDOW=WINDOW),
                     load_settings("dev", environ={}, root=tmp_path)):
        with pytest.raises(ConfigError, match="reason"):
            check(settings, MONDAY_MORNING, break_glass=reason)


@pytest.mark.parametrize("values", [{"MAINTENANCE_WINDOW": WINDOW}, {},
                                    {"MAINTENANCE_WINDOW": "garbage"}])
def test_break_glass_passes_and_warns(tmp_path, values):
    settings = settings_for(tmp_path, "prod", **values)
    reporter = check(settings, MONDAY_MORNING, break_glass="INC-1234 hotfix")
    assert len(reporter.warnings) == 1
    warning = reporter.warnings[0]
    assert "BREAK GLASS" in warning
    assert "INC-1234 hotfix" in warning
    assert "prod" in warning

