"""Bucket starts as SQL expressions: the hour and the local day a log belongs to.

An hour bucket starts at `created_at - created_at % 3600` (new-api's rule). A day
bucket starts at local midnight in STATS_TIMEZONE, so its length follows the zone's
daylight-saving changes (23 or 25 hours). PostgreSQL computes local midnight with
AT TIME ZONE; SQLite has no time zone data, so the engine registers
`usage_day_start(ts, tz)` (Python's zoneinfo) on every SQLite connection. MySQL and
MariaDB have time zone data only where an administrator loaded it into the `mysql`
schema, so the zone's offsets are written into the statement instead: Python's zoneinfo
gives the instants where the offset changes, and INTERVAL() (a binary search) with ELT()
looks an instant up among them (see `_mysql_local_start`). All three give the same
answer, also where midnight is skipped or happens twice (the day then starts at its
first instant).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal

HOUR = 3600
DAY = 86400
# Calendar units a bucket can span beyond the day: weeks start on Monday.
PERIODS = ("week", "month")
# The longest bucket of each granularity, with room for a 25-hour day: a row whose
# bucket starts at `end` lies before `end + LONGEST[granularity]`.
LONGEST = {"hour": HOUR, "day": DAY + 2 * HOUR, "week": 7 * DAY + 2 * HOUR, "month": 31 * DAY + 2 * HOUR}


def hour_start(created_at: Any) -> Any:
    # A literal, not a bind parameter, so the expression reads the same wherever it is used.
    return created_at - created_at % literal_column(str(HOUR))


def _utc_day_start(created_at: Any) -> Any:
    return created_at - created_at % literal_column(str(DAY))


class day_start(FunctionElement[int]):
    """Unix seconds of local midnight of the day holding `created_at` in zone `tz`."""

    type = BigInteger()
    inherit_cache = True
    name = "usage_day_start"
    # The zone is part of the compiled SQL, so it must be part of the statement cache key.
    _traverse_internals = FunctionElement._traverse_internals + [("tz", InternalTraversal.dp_string)]

    def __init__(self, created_at: Any, tz: str):
        self.tz = tz
        super().__init__(created_at)


def _compile_day_start(
    element: day_start, compiler: SQLCompiler, local_midnight_sql: Callable[[str, str], str], **kw: Any
) -> str:
    (created_at,) = element.clauses
    if _is_utc(element.tz):
        return compiler.process(_utc_day_start(created_at), **kw)
    return local_midnight_sql(compiler.process(created_at, **kw), _quoted(element.tz))


@compiles(day_start)
def _day_start_default(element: day_start, compiler: SQLCompiler, **kw: Any) -> str:
    return _compile_day_start(element, compiler, lambda ts, tz: f"usage_day_start({ts}, {tz})", **kw)


@compiles(day_start, "mysql")
def _day_start_mysql(element: day_start, compiler: SQLCompiler, **kw: Any) -> str:
    return _compile_day_start(element, compiler, lambda ts, tz: _mysql_local_start(ts, element.tz, "day"), **kw)


@compiles(day_start, "postgresql")
def _day_start_pg(element: day_start, compiler: SQLCompiler, **kw: Any) -> str:
    return _compile_day_start(element, compiler, lambda ts, tz: _pg_local_start(ts, tz, "day"), **kw)


def _pg_local_start(ts: str, tz: str, unit: str) -> str:
    """PostgreSQL: unix seconds of the first instant of the local day (or of the Monday
    starting the week, or of the 1st of the month: `unit` as date_trunc names it) that
    holds unix time `ts` in zone `tz` (a quoted literal)."""
    # AT TIME ZONE reads an ambiguous local time as the later instant, so where midnight
    # happens twice (clocks set back to 00:00) it gives the second one. The first one is
    # local midnight at the offset in force a few hours earlier: take it when it is
    # earlier and really is that same local midnight. (A skipped midnight comes out as
    # the day's first instant, as in zoneinfo.)
    midnight = f"date_trunc('{unit}', to_timestamp({ts}) AT TIME ZONE {tz})"
    later = f"({midnight} AT TIME ZONE {tz})"
    before = f"({later} - INTERVAL '3 hours')"
    offset_before = f"(({before} AT TIME ZONE {tz}) - ({before} AT TIME ZONE 'UTC'))"
    first = f"(({midnight} - {offset_before}) AT TIME ZONE 'UTC')"
    return (
        f"CAST(EXTRACT(EPOCH FROM CASE WHEN {first} < {later} AND ({first} AT TIME ZONE {tz}) = {midnight} "
        f"THEN {first} ELSE {later} END) AS BIGINT)"
    )


class period_start(FunctionElement[int]):
    """Unix seconds of the first instant of the local week (from Monday) or month
    holding `created_at` in zone `tz`: the day_start of that Monday or that 1st."""

    type = BigInteger()
    inherit_cache = True
    name = "usage_period_start"
    _traverse_internals = FunctionElement._traverse_internals + [
        ("tz", InternalTraversal.dp_string),
        ("unit", InternalTraversal.dp_string),
    ]

    def __init__(self, created_at: Any, tz: str, unit: str):
        if unit not in PERIODS:
            raise ValueError(f"unit must be one of {PERIODS}, got {unit!r}")
        self.tz = tz
        self.unit = unit
        super().__init__(created_at)


@compiles(period_start)
def _period_start_default(element: period_start, compiler: SQLCompiler, **kw: Any) -> str:
    (created_at,) = element.clauses
    return f"usage_period_start({compiler.process(created_at, **kw)}, {_quoted(element.tz)}, '{element.unit}')"


@compiles(period_start, "postgresql")
def _period_start_pg(element: period_start, compiler: SQLCompiler, **kw: Any) -> str:
    (created_at,) = element.clauses
    return _pg_local_start(compiler.process(created_at, **kw), _quoted(element.tz), element.unit)


@compiles(period_start, "mysql")
def _period_start_mysql(element: period_start, compiler: SQLCompiler, **kw: Any) -> str:
    (created_at,) = element.clauses
    return _mysql_local_start(compiler.process(created_at, **kw), element.tz, element.unit)


# --- MySQL: the zone's offsets in the statement ------------------------------------------

# The instants between which MySQL's buckets follow every offset change of the zone
# exactly: 1970-01-01 to 2100-01-01 UTC. Before, the offset of 1970 holds; after, that of
# 2100 (Python's zoneinfo would go on with the zone's rules).
MYSQL_EXACT_FROM, MYSQL_EXACT_UNTIL = 0, 4102444800
# Floor division by a day or a week with DIV, which truncates toward zero: shifted by a
# whole number of weeks first, so that it never divides a negative number.
_SHIFT = 7 * DAY * 150_000
# TO_DAYS('1970-01-01'): day numbers to MySQL's dates and back.
_EPOCH_DAYS = 719528


@lru_cache(maxsize=256)
def zone_changes(tz: str) -> tuple[int, tuple[tuple[int, int], ...]]:
    """`tz`'s UTC offset at MYSQL_EXACT_FROM, and every (instant, offset from then on)
    where it changes until MYSQL_EXACT_UNTIL: sampled daily (the zone database has no two
    changes within a day that cancel out), each change found to the second by bisection."""
    zone = ZoneInfo(tz)
    first = previous = _offset(zone, MYSQL_EXACT_FROM)
    changes = []
    t = MYSQL_EXACT_FROM
    while t < MYSQL_EXACT_UNTIL:
        n = min(t + DAY, MYSQL_EXACT_UNTIL)
        if _offset(zone, n) == previous:
            t = n
            continue
        lo, hi = t, n  # the offset is `previous` at lo, not at hi: find the first instant it is not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if _offset(zone, mid) == previous else (lo, mid)
        previous = _offset(zone, hi)
        changes.append((hi, previous))
        t = hi
    return first, tuple(changes)


def _mysql_lookup(x: str, bounds: list[int], values: list[int]) -> str:
    """values[k] where k bounds are <= x (bounds increasing, one value more than bounds)."""
    if not bounds:
        return str(values[0])
    if any(b >= c for b, c in pairwise(bounds)):
        raise ValueError("bounds must increase")
    return f"CAST(ELT(INTERVAL({x}, {', '.join(map(str, bounds))}) + 1, {', '.join(map(str, values))}) AS SIGNED)"


def _mysql_local_start(ts: str, tz: str, unit: str) -> str:
    """MySQL: unix seconds of the first instant of the local day (or week from Monday, or
    month) holding unix time `ts` in zone `tz`, as Python's zoneinfo computes it.

    Local time is ts + the offset in force at ts. Its day (week, month) starts at local
    wall time W, a multiple of a day; the instant of W is W - the offset zoneinfo gives
    W with fold=0: that of the last change whose wall time, read with the larger of the
    offsets before and after it, is <= W. So a skipped midnight gives the first instant
    after the skip, and a midnight that happens twice its first time."""
    first, changes = zone_changes(tz)
    instants = [u for u, _ in changes]
    offsets = [first, *(o for _, o in changes)]
    walls = [u + max(offsets[k], offsets[k + 1]) for k, u in enumerate(instants)]
    local = f"({ts} + {_mysql_lookup(ts, instants, offsets)} + {_SHIFT})"
    if unit == "day":
        wall = f"({local} DIV {DAY} * {DAY} - {_SHIFT})"
    elif unit == "week":
        # 1970-01-01 was a Thursday: weeks counted from Monday 1969-12-29 (-3 days).
        wall = f"(({local} + {3 * DAY}) DIV {7 * DAY} * {7 * DAY} - {_SHIFT + 3 * DAY})"
    elif unit == "month":
        date = f"FROM_DAYS({local} DIV {DAY} - {_SHIFT // DAY - _EPOCH_DAYS})"
        first_day = f"(LAST_DAY({date}) + INTERVAL 1 DAY - INTERVAL 1 MONTH)"
        wall = f"((TO_DAYS({first_day}) - {_EPOCH_DAYS}) * {DAY})"
    else:
        raise ValueError(f"unit must be day or one of {PERIODS}, got {unit!r}")
    return f"({wall} - {_mysql_lookup(wall, walls, offsets)})"


def bucket_start(created_at: Any, granularity: str, tz: str) -> Any:
    """The bucket of `created_at` at `granularity` (hour, day, week, month), days, weeks
    and months in zone `tz`: the same expressions the rollup uses for hours and days."""
    if granularity == "hour":
        return hour_start(created_at)
    if granularity == "day":
        return day_start(created_at, tz)
    return period_start(created_at, tz, granularity)


def _quoted(tz: str) -> str:
    # Inlined rather than bound, so that GROUP BY sees the same expression as SELECT.
    # Zone names are checked against the zone database first; quotes are doubled anyway.
    ZoneInfo(tz)
    return "'" + tz.replace("'", "''") + "'"


def _is_utc(tz: str) -> bool:
    return tz in ("UTC", "Etc/UTC", "Etc/UCT", "UCT", "Universal", "Zulu", "Etc/Zulu", "GMT", "Etc/GMT")


def local_midnight(ts: int, tz: str) -> int:
    """Python twin of day_start, registered as SQLite's usage_day_start and used to
    align ranges to whole days."""
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(ts, tz=UTC).astimezone(zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
    return int(midnight.timestamp())


def next_local_midnight(ts: int, tz: str) -> int:
    """Start of the day after the one holding ts (days may last 23 or 25 hours)."""
    day = local_midnight(ts, tz)
    # 26 hours always lands inside the next day, whatever the daylight-saving change.
    return local_midnight(day + 26 * HOUR, tz)


def _first_instant(d: date, zone: ZoneInfo) -> int:
    # As local_midnight: 00:00 of that date, the first one where it happens twice.
    return int(datetime(d.year, d.month, d.day, tzinfo=zone, fold=0).timestamp())


def local_period_start(ts: int, tz: str, unit: str) -> int:
    """Python twin of period_start (registered as SQLite's usage_period_start): the start
    of the local week (Monday) or month holding ts."""
    zone = ZoneInfo(tz)
    d = datetime.fromtimestamp(ts, tz=UTC).astimezone(zone).date()
    if unit == "week":
        d -= timedelta(days=d.weekday())
    elif unit == "month":
        d = d.replace(day=1)
    else:
        raise ValueError(f"unit must be one of {PERIODS}, got {unit!r}")
    return _first_instant(d, zone)


def _offset(zone: ZoneInfo, ts: int) -> int:
    offset = datetime.fromtimestamp(ts, tz=UTC).astimezone(zone).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


@lru_cache(maxsize=4096)
def _split_hours(tz: str, day: int) -> tuple[tuple[int, int], ...]:
    """The UTC hours of UTC day number `day` that some local midnight of `tz` may cut:
    (hour start, offset there) where the offset is not whole hours or changes within the
    hour. A fact of the zone database, so computed once per zone and day."""
    zone = ZoneInfo(tz)
    split = []
    for h in range(day * DAY, (day + 1) * DAY, HOUR):
        offset = _offset(zone, h)
        if offset % HOUR or _offset(zone, h + HOUR - 1) != offset:
            split.append((h, offset))
    return tuple(split)


def first_split_hour(tz: str, lo: int, hi: int) -> tuple[int, int] | None:
    """The first UTC hour touching [lo, hi) that a local midnight of `tz` may cut, with
    `tz`'s offset there, or None: then every such hour lies inside one local day, and
    days summed from hourly rows are exact."""
    first = lo - lo % HOUR
    for day in range(first // DAY, (hi - 1) // DAY + 1):
        for h, offset in _split_hours(tz, day):
            if first <= h < hi:
                return h, offset
    return None
