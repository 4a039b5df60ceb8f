"""The query parameters of the data endpoints, checked strictly.

new-api ignores a timestamp it cannot parse (it becomes 0); we refuse it with a 400
instead, so that a client bug is seen rather than answered with the wrong range.
An empty value ("?start_timestamp=") counts as absent, as form-built URLs send them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from werkzeug.datastructures import MultiDict

from shared.queries import GRANULARITIES

from .config import DAY, ApiLimits
from .errors import ApiError

INT64_MAX = 2**63 - 1
SELF_PARAMETERS = ("start_timestamp", "end_timestamp", "granularity")
ADMIN_PARAMETERS = SELF_PARAMETERS + ("username",)
# When the range is not given: the last day of hours, the last week of days.
DEFAULT_SPAN_DAYS = {"hour": 1, "day": 7}

_DIGITS = re.compile(r"[0-9]+", re.ASCII)


@dataclass(frozen=True)
class Window:
    granularity: str
    start: int
    end: int


def _single(args: MultiDict, name: str) -> str | None:
    values = args.getlist(name)
    if len(values) > 1:
        raise ApiError(400, f"{name} may be given only once")
    if not values or values[0] == "":
        return None
    return values[0]


def _timestamp(name: str, raw: str) -> int:
    if _DIGITS.fullmatch(raw):
        # Length first: int() of a 5,000-digit string is refused by Python itself.
        if len(raw.lstrip("0")) > 19 or int(raw) > INT64_MAX:
            raise ApiError(400, f"{name} is too large: at most {INT64_MAX}")
        return int(raw)
    if raw.startswith("-") and _DIGITS.fullmatch(raw[1:]):
        raise ApiError(400, f"{name} must not be negative")
    raise ApiError(400, f"{name} must be a whole number of unix seconds")


def parse_window(args: MultiDict, limits: ApiLimits, now: int, names=SELF_PARAMETERS) -> Window:
    """granularity, start and end from the query string; raises ApiError(400)."""
    for name in names:
        _single(args, name)  # repeated parameters, before anything else
    granularity = _single(args, "granularity") or "hour"
    if granularity not in GRANULARITIES:
        raise ApiError(400, "granularity must be hour or day")
    raw_start, raw_end = _single(args, "start_timestamp"), _single(args, "end_timestamp")
    start = _timestamp("start_timestamp", raw_start) if raw_start is not None else None
    end = _timestamp("end_timestamp", raw_end) if raw_end is not None else None

    limit_days = limits.max_span_days(granularity)
    if end is None:
        end = now
    if start is None:
        # Never a default longer than the configured limit.
        start = max(0, end - min(DEFAULT_SPAN_DAYS[granularity], limit_days) * DAY)
    if start > end:
        raise ApiError(400, "start_timestamp must not be after end_timestamp")
    if end - start > limit_days * DAY:
        raise ApiError(
            400,
            f"the range from start_timestamp to end_timestamp may span at most {limit_days} days "
            f"for granularity={granularity}",
        )
    return Window(granularity, start, end)


def parse_username(args: MultiDict) -> str | None:
    username = _single(args, "username")
    if username is not None and "\x00" in username:
        # No user can have it, and PostgreSQL refuses NUL in a text parameter.
        raise ApiError(400, "username must not contain NUL characters")
    return username
