"""The WATCH_* settings, read once into a frozen `WatchConfig`, every value checked so that a
typo is exit 2 before a migrate starts, not a failed watch after it."""
from __future__ import annotations

from dataclasses import dataclass

from app.ops.errors import ConfigError
from app.settings import WATCH_UNITS, parse_duration  # a bare number is seconds

DEFAULT_WATCH_FOR = "10m"   # `invoke watch` without --for and without WATCH_AFTER_MIGRATE


def seconds(value: str, name: str, *, zero_ok: bool = False) -> float:
    """A watch duration in seconds, or one clear sentence naming the setting or option."""
    parsed = parse_duration(value, WATCH_UNITS)
    if parsed is None or (parsed == 0 and not zero_ok):
        raise ConfigError(f"{name} '{value}' is not a duration: use e.g. 30s, 10m or 1h"
                          + (" (0: no watch)" if zero_ok else ""))
    return parsed


@dataclass(frozen=True)
class WatchConfig:
    after_migrate: float | None   # seconds; None: migrate and rollback do not watch
    baseline: float
    interval: float
    health_url: str | None
    latency_factor: float
    latency_min: float            # seconds
    health_failures: int
    lock_wait: float
    replica_lag: float

    @classmethod
    def from_settings(cls, settings) -> "WatchConfig":
        # Read in this order, so the first bad value is the one reported, as it always was.
        after_s = settings.WATCH_AFTER_MIGRATE
        interval = settings.WATCH_INTERVAL
        baseline = settings.WATCH_BASELINE
        if baseline < 2 * interval:
            raise ConfigError(f"WATCH_BASELINE ({baseline.text}) must be at least two "
                              f"WATCH_INTERVALs ({interval.text}) long: a baseline needs "
                              "samples to compare")
        url = settings.WATCH_HEALTH_URL
        return cls(after_migrate=float(after_s) if after_s else None, baseline=float(baseline),
                   interval=float(interval), health_url=url or None,
                   latency_factor=settings.WATCH_LATENCY_FACTOR,
                   latency_min=float(settings.WATCH_LATENCY_MIN),
                   health_failures=settings.WATCH_HEALTH_FAILURES,
                   lock_wait=float(settings.WATCH_LOCK_WAIT),
                   replica_lag=float(settings.WATCH_REPLICA_LAG))

    def watch_for(self, option: str | None) -> float | None:
        """How long a migrate or rollback watches: `--watch` wins (0: not at all), else
        WATCH_AFTER_MIGRATE, else no watch."""
        if option is not None:
            return seconds(option, "--watch", zero_ok=True) or None
        return self.after_migrate

    def duration(self, option: str | None) -> float:
        """How long `invoke watch` watches: --for, else WATCH_AFTER_MIGRATE, else 10m."""
        if option is not None:
            return seconds(option, "--for")
        return self.after_migrate or seconds(DEFAULT_WATCH_FOR, "--for")

