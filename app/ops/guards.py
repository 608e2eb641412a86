"""Production guards that run before anything changes: the maintenance window and break-glass.

In production (PRODUCTION=true, or an env named prod/production) migrate and rollback run only
inside MAINTENANCE_WINDOW; a missing or malformed window refuses too (fail closed).
`--break-glass REASON` lifts the window guard; the caller records the reason in the audit trail.
"""
from __future__ import annotations

from datetime import datetime

from app.ops.errors import ConfigError, GuardRefused
from app.ops.report import Reporter


def load_window(settings):
    from app.ops.window import MaintenanceWindow, WindowError

    try:
        return MaintenanceWindow.parse(settings.get("MAINTENANCE_WINDOW", ""),
                                       settings.get("MAINTENANCE_TIMEZONE", "UTC"))
    except WindowError as exc:
        raise ConfigError(str(exc)) from None


def check_window(settings, *, action: str, now: datetime, break_glass: str | None,
                 reporter: Reporter) -> None:
    if break_glass is not None and not break_glass.strip():
        raise ConfigError("--break-glass needs a reason, e.g. --break-glass 'INC-1234 hotfix'")
    if not settings.production:
        return
    if break_glass:
        reporter.warn(f"BREAK GLASS: {action} on production env '{settings.env}' without the "
                      f"maintenance window check. Reason: {break_glass}. This is audited.")
        return
    if not settings.get("MAINTENANCE_WINDOW"):
        raise GuardRefused(f"{action} on production env '{settings.env}' is refused: no "
                           "MAINTENANCE_WINDOW is configured; set one, or use "
                           "--break-glass REASON in an emergency")
    from app.ops.window import describe

    window = load_window(settings)
    if window.is_open(now):
        close = window.current_close(now)
        reporter.info(f"maintenance window open until {describe(close)}" if close else
                      "maintenance window open")
        return
    next_open = window.next_open(now)
    when = describe(next_open) if next_open else "never (no future opening is configured)"
    raise GuardRefused(f"{action} on production env '{settings.env}' is refused outside the "
                       f"maintenance window: it next opens {when}; use --break-glass REASON "
                       "in an emergency")
