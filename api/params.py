"""The query parameters of the data endpoints, checked strictly.

new-api ignores a timestamp it cannot parse (it becomes 0); we refuse it with a 400
instead, so that a client bug is seen rather than answered with the wrong range.
An empty value ("?start_timestamp=") counts as absent, as form-built URLs send them.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from functools import lru_cache

from werkzeug.datastructures import MultiDict

from shared.config import AMBIGUOUS_ZONE_NAMES
from shared.queries import GRANULARITIES, View

from .config import DAY, ApiLimits
from .errors import ApiError

INT64_MAX = 2**63 - 1
# group_by: the dimensions an answer may be grouped by (their names in the answer).
GROUP_BY = {
    "model": "model_name",
    "user": "user_id",
    "token": "token_id",
    "channel": "channel_id",
    "group": "use_group",
}
SELF_GROUP_BY = tuple(g for g in GROUP_BY if g != "user")
# Filters: parameter -> (dimension, whether its value is an integer). `channel` is an id,
# as in new-api's log filters; `group` is the group the request used (use_group).
FILTERS = {
    "model_name": ("model_name", False),
    "token_id": ("token_id", True),
    "token_name": ("token_name", False),
    "channel": ("channel_id", True),
    "group": ("use_group", False),
}
FORMATS = ("json", "csv")
# Sent by new-api's dashboards, which no code of new-api reads: here an alias of granularity.
GRANULARITY_ALIAS = "default_time"
SELF_PARAMETERS = (
    "start_timestamp",
    "end_timestamp",
    "granularity",
    GRANULARITY_ALIAS,
    "tz",
    "realtime",
    "group_by",
    "format",
    *FILTERS,
)
ADMIN_PARAMETERS = SELF_PARAMETERS + ("username",)
# When the range is not given: the last day of hours, week of days, 12 weeks, year of months.
DEFAULT_SPAN_DAYS = {"hour": 1, "day": 7, "week": 84, "month": 365}
REALTIME_VALUES = {"true": True, "1": True, "false": False, "0": False}
# Names in the zone database that are no place: the machine's own zone, a placeholder.
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})
# Weeks, months, and days outside STATS_TIMEZONE need calendar dates: the range must end
# a month before the end of the year 9999 (the zone database's and Python's last year).
MAX_CALENDAR_TIMESTAMP = 253_402_300_799 - 32 * DAY

_DIGITS = re.compile(r"[0-9]+", re.ASCII)


@dataclass(frozen=True)
class Window:
    granularity: str
    start: int
    end: int
    view: View


def single(args: MultiDict, name: str) -> str | None:
    values = args.getlist(name)
    if len(values) > 1:
        raise ApiError(400, f"{name} may be given only once")
    if not values or values[0] == "":
        return None
    return values[0]


def check_once(args: MultiDict, names: tuple[str, ...]) -> None:
    """A repeated parameter among `names` is a 400, before anything else is read."""
    for name in names:
        single(args, name)


def whole_number(name: str, raw: str, what: str = "a whole number") -> int:
    """`raw` as a whole number from 0 to INT64_MAX; raises ApiError(400) saying why not."""
    if _DIGITS.fullmatch(raw):
        # Length first: int() of a 5,000-digit string is refused by Python itself.
        if len(raw.lstrip("0")) > 19 or int(raw) > INT64_MAX:
            raise ApiError(400, f"{name} is too large: at most {INT64_MAX}")
        return int(raw)
    if raw.startswith("-") and _DIGITS.fullmatch(raw[1:]):
        raise ApiError(400, f"{name} must not be negative")
    raise ApiError(400, f"{name} must be {what}")


def timestamp(name: str, raw: str) -> int:
    return whole_number(name, raw, "a whole number of unix seconds")


def text(args: MultiDict, name: str) -> str | None:
    """A text parameter (None when absent); NUL is refused: nothing can match it, and
    PostgreSQL refuses NUL in a text parameter."""
    value = single(args, name)
    if value is not None and "\x00" in value:
        raise ApiError(400, f"{name} must not contain NUL characters")
    return value


def parse_window(
    args: MultiDict,
    limits: ApiLimits,
    now: int,
    names=SELF_PARAMETERS,
    *,
    stats_tz: str = "UTC",
    realtime_enabled: bool = True,
) -> Window:
    """granularity, tz, realtime, start and end from the query string; raises
    ApiError(400). `stats_tz` is the server's STATS_TIMEZONE, the zone of the daily rows;
    `realtime_enabled` is API_REALTIME."""
    check_once(args, names)
    granularity, alias = single(args, "granularity"), single(args, GRANULARITY_ALIAS)
    if granularity is not None and alias is not None and granularity != alias:
        raise ApiError(400, f"granularity and {GRANULARITY_ALIAS} (its alias) disagree: give one of them")
    granularity = granularity or alias or "hour"
    if granularity not in GRANULARITIES:
        raise ApiError(400, "granularity must be hour, day, week or month")
    tz = parse_tz(single(args, "tz"), stats_tz)
    realtime = parse_realtime(single(args, "realtime"), realtime_enabled)
    view = View(granularity=granularity, tz=tz, stats_tz=stats_tz, realtime=realtime)
    raw_start, raw_end = single(args, "start_timestamp"), single(args, "end_timestamp")
    start = timestamp("start_timestamp", raw_start) if raw_start is not None else None
    end = timestamp("end_timestamp", raw_end) if raw_end is not None else None

    from_hourly = view.from_hourly
    limit_days = limits.max_span_days(granularity, from_hourly)
    if end is None:
        end = now
    if start is None:
        # Never a default longer than the configured limit.
        start = max(0, end - min(DEFAULT_SPAN_DAYS[granularity], limit_days) * DAY)
    if start > end:
        raise ApiError(400, "start_timestamp must not be after end_timestamp")
    if end - start > limit_days * DAY:
        why = (
            f" in tz={tz} (a zone other than the server's STATS_TIMEZONE {stats_tz}: summed from hourly rows)"
            if from_hourly
            else ""
        )
        raise ApiError(
            400,
            f"the range from start_timestamp to end_timestamp may span at most {limit_days} days "
            f"for granularity={granularity}{why}",
        )
    if (granularity in ("week", "month") or from_hourly) and end > MAX_CALENDAR_TIMESTAMP:
        raise ApiError(400, f"end_timestamp may be at most {MAX_CALENDAR_TIMESTAMP} for granularity={granularity}")
    return Window(granularity, start, end, view)


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


def parse_tz(raw: str | None, stats_tz: str) -> str:
    """An IANA zone name (default: STATS_TIMEZONE). Legacy names that PostgreSQL reads
    as fixed offsets or POSIX rules (CET, EST5EDT, ...) are refused, as for STATS_TIMEZONE."""
    if raw is None:
        return stats_tz
    if raw == stats_tz:
        return raw
    if raw not in _zone_names():
        raise ApiError(400, "tz must be an IANA time zone name such as Asia/Shanghai or America/New_York")
    if raw.upper() in AMBIGUOUS_ZONE_NAMES:
        raise ApiError(400, f"tz {raw} is ambiguous (PostgreSQL reads it as a fixed offset); use a Region/City name")
    return raw


def parse_realtime(raw: str | None, enabled: bool) -> bool:
    if raw is None:
        return enabled
    if raw not in REALTIME_VALUES:
        raise ApiError(400, "realtime must be true or false")
    if REALTIME_VALUES[raw] and not enabled:
        raise ApiError(400, "realtime answers are turned off on this server (API_REALTIME=false)")
    return REALTIME_VALUES[raw]


def parse_username(args: MultiDict) -> str | None:
    return text(args, "username")


@dataclass(frozen=True)
class Selection:
    """Which rows and in what form: `by` the dimensions to group by (None: not asked,
    the seed's shape), `filters` a value per filtered dimension, `username` (admin) and
    whether the answer is CSV."""

    by: tuple[str, ...] | None
    filters: dict[str, int | str]
    username: str | None
    csv: bool


def parse_group_by(raw: str | None, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    """`group_by=model,channel`: the dimensions, in GROUP_BY's order, once each."""
    if raw is None:
        return None
    asked = [part.strip() for part in raw.split(",")]
    unknown = [part for part in asked if part not in allowed]
    if unknown or not asked:
        what = ", ".join(repr(u) for u in unknown) or "nothing"
        raise ApiError(400, f"group_by takes a comma-separated list of {', '.join(allowed)}; got {what}")
    return tuple(GROUP_BY[g] for g in GROUP_BY if g in asked)


def parse_selection(args: MultiDict, *, admin: bool, prefers_csv: bool) -> Selection:
    """group_by, the filters, username (admin) and the format; raises ApiError(400).
    `prefers_csv`: the request's Accept header ranks text/csv above JSON."""
    by = parse_group_by(single(args, "group_by"), tuple(GROUP_BY) if admin else SELF_GROUP_BY)
    filters: dict[str, int | str] = {}
    for name, (dimension, numeric) in FILTERS.items():
        if not numeric:
            value = text(args, name)
            if value is not None:
                filters[dimension] = value
        elif (raw := single(args, name)) is not None:
            filters[dimension] = whole_number(name, raw)
    return Selection(by, filters, parse_username(args) if admin else None, parse_format(args, prefers_csv))


def parse_format(args: MultiDict, prefers_csv: bool) -> bool:
    """True for CSV: format=csv, or no format and an Accept header that prefers it."""
    fmt = single(args, "format")
    if fmt is not None and fmt not in FORMATS:
        raise ApiError(400, "format must be json or csv")
    return fmt == "csv" if fmt is not None else prefers_csv
