"""The WATCH_* settings, read once into a frozen `WatchConfig`, every value checked so that a
typo is exit 2 before a migrate starts, not a failed watch after it."""
from __future__ import annotations

from dataclasses import dataclass

from app.ops.errors import ConfigError
from app.settings import WATCH_DEFAULTS, parse_duration

# Seconds per unit of a watch duration: a bare number is seconds ("0" switches a watch off).
WATCH_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "": 1.0}
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
        def get(name):
            return settings.get(name, WATCH_DEFAULTS.get(name))

        after = get("WATCH_AFTER_MIGRATE")
        after_s = seconds(after, "WATCH_AFTER_MIGRATE", zero_ok=True) if after else None
        interval = seconds(get("WATCH_INTERVAL"), "WATCH_INTERVAL")
        baseline = seconds(get("WATCH_BASELINE"), "WATCH_BASELINE")
        if baseline < 2 * interval:
            raise ConfigError(f"WATCH_BASELINE ({get('WATCH_BASELINE')}) must be at least two "
                              f"WATCH_INTERVALs ({get('WATCH_INTERVAL')}) long: a baseline needs "
                              "samples to compare")
        url = get("WATCH_HEALTH_URL")
        if url and not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"WATCH_HEALTH_URL '{url}' is not an http:// or https:// URL")
        return cls(after_migrate=after_s or None, baseline=baseline, interval=interval,
                   health_url=url or None,
                   latency_factor=_number(get("WATCH_LATENCY_FACTOR"), "WATCH_LATENCY_FACTOR",
                                          minimum=1.0),
                   latency_min=seconds(get("WATCH_LATENCY_MIN"), "WATCH_LATENCY_MIN"),
                   health_failures=int(_number(get("WATCH_HEALTH_FAILURES"),
                                               "WATCH_HEALTH_FAILURES", minimum=1, whole=True)),
                   lock_wait=seconds(get("WATCH_LOCK_WAIT"), "WATCH_LOCK_WAIT"),
                   replica_lag=seconds(get("WATCH_REPLICA_LAG"), "WATCH_REPLICA_LAG"))

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


def _number(value: str, name: str, *, minimum: float, whole: bool = False) -> float:
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        number = None
    if number is None or number < minimum or number != number:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{name} '{value}' is not {kind} of at least {minimum:g}")
    return number
