"""The API's own settings, read from the environment.

They live here rather than in shared.config.Settings until that grows the fields;
the names and defaults are the ones Settings should adopt.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from shared.config import ConfigError

DAY = 86400


def _days(environ, name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number of days, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class ApiLimits:
    # Longest [start, end] a request may ask for, in days, per granularity: they bound the
    # rows one answer can hold (31 days = 745 hourly buckets per model).
    max_span_hourly_days: int = 31
    max_span_daily_days: int = 366

    @classmethod
    def from_env(cls, environ=None) -> "ApiLimits":
        environ = os.environ if environ is None else environ
        return cls(
            max_span_hourly_days=_days(environ, "API_MAX_SPAN_HOURLY_DAYS", cls.max_span_hourly_days),
            max_span_daily_days=_days(environ, "API_MAX_SPAN_DAILY_DAYS", cls.max_span_daily_days),
        )

    def max_span_days(self, granularity: str) -> int:
        return self.max_span_hourly_days if granularity == "hour" else self.max_span_daily_days
