"""The API's limits, taken from Settings (shared.config reads the environment)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Settings

DAY = 86400


@dataclass(frozen=True)
class ApiLimits:
    # Longest [start, end] a request may ask for, in days, per granularity.
    max_span_hourly_days: int = Settings.api_max_span_hourly_days
    max_span_daily_days: int = Settings.api_max_span_daily_days

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiLimits:
        return cls(settings.api_max_span_hourly_days, settings.api_max_span_daily_days)

    def max_span_days(self, granularity: str, from_hourly: bool = False) -> int:
        """Hours, and days, weeks or months summed from hourly rows (in a zone other than
        STATS_TIMEZONE), cost what hours cost: the hourly limit. Otherwise the daily one."""
        return self.max_span_hourly_days if granularity == "hour" or from_hourly else self.max_span_daily_days
