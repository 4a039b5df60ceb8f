"""GET /api/log/stat and /api/log/self/stat: new-api's usage-logs statistics.

    quota  SUM(quota) of the consume logs matching every filter with created_at in
           [start, end] (either end open when not given)
    rpm    COUNT(*)            } of the consume logs matching every filter but the range,
    tpm    SUM(token_used)     } with created_at >= now - 60: a last-minute snapshot

new-api sums the raw logs for all three. Here `quota` is the same sum, exact to the
second, read from what is cheapest to read exactly (`cover`):

- the local days (in STATS_TIMEZONE) lying wholly inside the range, and the whole hours
  before and after them, from hourly_detail_usage -- keyed by every dimension a filter
  names, so every filter applies to its rows as to a log; its hours are cut at local
  midnights, so they sum to those days exactly, and where retention compacted them
  they are whole days already;
- the partial hours at both ends (and, where STATS_TIMEZONE's midnight falls inside an
  hour, the pieces of hours beside it) from the raw logs, counted by shared.aggregation's
  rules;

so a year's range reads a year of hourly detail rows (whole days where retention
compacted them) and under an hour of logs at either end (plus the half hours beside a
midnight at :30 or :45), where new-api reads a year of logs. Each rollup part is shared.queries.source,
which adds the logs not rolled up yet (the real-time tail); every statement runs on the
caller's queries.snapshot connection, so the parts and the tail agree on what the
rollup has counted, and no log is missed or counted twice. Hours the retention dropped
(RETAIN_HOURLY_DAYS: `hourly_from`) are read from the raw logs instead.

`rpm` and `tpm` read the raw logs of the last minute (a short range of the created_at
index), as new-api does.

Filters (`LogFilter`), the same on the rollup rows and on the logs, since the detail
rows keep each log's values (its username and token_name as the log recorded them):
user_id, username (exact or LIKE), token_name, model_name (exact or LIKE), channel_id,
group (logs."group", the rollup's use_group). A username or model_name containing `%`
is a LIKE pattern under new-api's rules (`check_pattern`): `%` and `_` are its
wildcards and every other character is itself (no escape character), matched
case-sensitively on both databases (`case_sensitive_like`): new-api's behaviour on
PostgreSQL, where SQLite's own LIKE would ignore ASCII case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FromClause
from sqlalchemy.sql.functions import FunctionElement

from . import aggregation as agg
from . import models as m
from . import queries
from .buckets import DAY, HOUR, local_midnight, next_local_midnight
from .queries import View
from .rollup import Progress, read_progress

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# rpm and tpm count the logs created at or after now - RATE_WINDOW.
RATE_WINDOW = 60
# Local midnights are computed with Python's datetime, which ends with the year 9999 (and
# begins with the year 1): whole days are looked for within these, a day's margin inside.
CALENDAR_FIRST = -62_135_596_800 + 2 * DAY
CALENDAR_LAST = 253_402_300_799 - 2 * DAY

# new-api's limits on a LIKE pattern.
MAX_WILDCARDS = 2
MIN_PATTERN_CHARACTERS = 2


# --- filters ----------------------------------------------------------------------------


class InvalidPattern(ValueError):
    """A LIKE pattern new-api refuses; the message says why, in English."""


def is_pattern(value: str) -> bool:
    """new-api matches a value containing `%` with LIKE, any other exactly."""
    return "%" in value


def check_pattern(name: str, value: str) -> None:
    """new-api's rules for a LIKE pattern (a value containing `%`): no `%%`, at most two
    `%`, and at least two characters (code points) besides them. `name` is the
    parameter's, for the message."""
    if not is_pattern(value):
        return
    if "%%" in value:
        raise InvalidPattern(f"{name} must not contain consecutive % wildcards")
    if value.count("%") > MAX_WILDCARDS:
        raise InvalidPattern(f"{name} may contain at most {MAX_WILDCARDS} % wildcards")
    if len(value.replace("%", "")) < MIN_PATTERN_CHARACTERS:
        raise InvalidPattern(
            f"{name} must have at least {MIN_PATTERN_CHARACTERS} characters besides the % wildcards "
            "when it is a pattern"
        )


@dataclass(frozen=True)
class LogFilter:
    """What the logs counted must match; None: anything. `username` and `model_name` are
    exact, or LIKE patterns when they contain `%` (checked here: InvalidPattern)."""

    user_id: int | None = None
    username: str | None = None
    token_name: str | None = None
    model_name: str | None = None
    channel_id: int | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        for name in ("username", "model_name"):
            value = getattr(self, name)
            if value is not None:
                check_pattern(name, value)


class case_sensitive_like(FunctionElement[bool]):
    """`column` LIKE `pattern` with `%` and `_` as wildcards, every other character
    itself, case-sensitively: PostgreSQL's LIKE with no escape character; on SQLite (whose
    LIKE ignores ASCII case) GLOB, with the pattern translated (`glob_pattern`)."""

    type = sa.Boolean()
    inherit_cache = True
    name = "case_sensitive_like"

    def __init__(self, column: Any, pattern: str):
        super().__init__(
            column,
            sa.bindparam(None, pattern, type_=sa.Text),
            sa.bindparam(None, glob_pattern(pattern), type_=sa.Text),
        )


@compiles(case_sensitive_like)
def _case_sensitive_like_sqlite(element: case_sensitive_like, compiler: SQLCompiler, **kw: Any) -> str:
    column, _, glob = element.clauses
    return f"({compiler.process(column, **kw)} GLOB {compiler.process(glob, **kw)})"


@compiles(case_sensitive_like, "postgresql")
def _case_sensitive_like_pg(element: case_sensitive_like, compiler: SQLCompiler, **kw: Any) -> str:
    column, like, _ = element.clauses
    return f"({compiler.process(column, **kw)} LIKE {compiler.process(like, **kw)} ESCAPE '')"


@compiles(case_sensitive_like, "mysql")
def _case_sensitive_like_mysql(element: case_sensitive_like, compiler: SQLCompiler, **kw: Any) -> str:
    # MySQL ignores ESCAPE '' and escapes with a backslash: the pattern's backslashes are
    # doubled to stand for themselves. The log rows' text is in a binary collation
    # (shared.aggregation), so the match is case-sensitive.
    column, like, _ = element.clauses
    pattern = f"REPLACE({compiler.process(like, **kw)}, '\\\\', '\\\\\\\\')"
    return f"({compiler.process(column, **kw)} LIKE {pattern} ESCAPE '\\\\')"


# GLOB's own wildcards, matched as themselves inside brackets.
_GLOB_LITERAL = {"*": "[*]", "?": "[?]", "[": "[[]"}
_GLOB_WILDCARD = {"%": "*", "_": "?"}


def glob_pattern(like: str) -> str:
    """The GLOB pattern matching what LIKE pattern `like` matches (no escape character)."""
    return "".join(_GLOB_WILDCARD.get(ch) or _GLOB_LITERAL.get(ch) or ch for ch in like)


def matches(column: Any, value: str) -> agg.Expr:
    """new-api's exact-or-LIKE match of `column` against `value`."""
    return case_sensitive_like(column, value) if is_pattern(value) else column == value


def filter_clauses(source: FromClause, f: LogFilter) -> list[agg.Expr]:
    """`f` on `source`, any FROM with the dimension columns of shared.aggregation (a
    detail summary, the real-time tail, agg.log_rows)."""
    c = source.c
    where: list[agg.Expr] = []
    if f.user_id is not None:
        where.append(c.user_id == f.user_id)
    if f.username is not None:
        where.append(matches(c.username, f.username))
    if f.token_name is not None:
        where.append(c.token_name == f.token_name)
    if f.model_name is not None:
        where.append(matches(c.model_name, f.model_name))
    if f.channel_id is not None:
        where.append(c.channel_id == f.channel_id)
    if f.group is not None:
        where.append(c.use_group == f.group)
    return where


# --- the range: days, hours and seconds -------------------------------------------------

# A half-open interval [lo, hi) of unix seconds; None: open on that side.
Interval = tuple[int | None, int | None]


@dataclass(frozen=True)
class Cover:
    """A range of seconds as the disjoint parts it is read from, each half-open: `days`,
    the local days lying wholly inside (their rows' buckets start in it); `hours`, the
    whole UTC hours outside them; `raw`, the seconds left, from the logs."""

    days: Interval | None
    hours: tuple[Interval, ...]
    raw: tuple[Interval, ...]


def _ceil(t: int, step: int) -> int:
    return -(-t // step) * step


def _floor(t: int, step: int) -> int:
    return t // step * step


def _whole_days(lo: int | None, hi: int | None, tz: str) -> Interval | None:
    """[first, last) bounding the local days of `tz` inside [lo, hi), or None if there is
    no such day. Only days within Python's calendar; open where the range is."""
    first: int | None = None
    if lo is not None:
        if lo > CALENDAR_LAST:
            return None
        t = max(lo, CALENDAR_FIRST)
        first = t if local_midnight(t, tz) == t else next_local_midnight(t, tz)
    last: int | None = None
    if hi is not None:
        if hi < CALENDAR_FIRST:
            return None
        last = local_midnight(min(hi, CALENDAR_LAST), tz)
    if first is not None and last is not None and first >= last:
        return None
    return first, last


def cover(start: int | None, end: int | None, tz: str, hourly_from: int | None = None) -> Cover:
    """The parts of the seconds [start, end] (inclusive, as new-api; None: open): the
    whole local days of `tz` (STATS_TIMEZONE, the daily rows' zone), the whole hours
    outside them -- none before `hourly_from`, where the hourly rows may be gone -- and
    the seconds left over. Assumes created_at >= 0 or an open start, as new-api writes
    (a log before 1970 would lie in a bucket other than its hour's)."""
    lo, hi = start, None if end is None else end + 1
    days = _whole_days(lo, hi, tz)
    if days is None:
        rest: list[Interval] = [(lo, hi)]
    else:
        rest = []
        if lo is not None and days[0] is not None and lo < days[0]:
            rest.append((lo, days[0]))
        if days[1] is not None and (hi is None or days[1] < hi):
            rest.append((days[1], hi))
    hours: list[Interval] = []
    raw: list[Interval] = []
    for x, y in rest:
        hx = None if x is None else _ceil(x, HOUR)
        if hourly_from is not None and (hx is None or hx < hourly_from):
            hx = hourly_from
        hy = None if y is None else _floor(y, HOUR)
        if hx is not None and hy is not None and hx > hy:  # inside one hour
            raw.append((x, y))
            continue
        if hx is None or hy is None or hx < hy:
            hours.append((hx, hy))
        if hx is not None and (x is None or x < hx):
            raw.append((x, hx))
        if y is not None and hy is not None and hy < y:
            raw.append((hy, y))
    return Cover(days, tuple(hours), tuple(raw))


# --- the queries ------------------------------------------------------------------------


def _closed(interval: Interval) -> tuple[int, int]:
    """A half-open interval as [first, last] within BIGINT: an open side, or one beyond
    BIGINT (a range up to the largest timestamp), as BIGINT's end."""
    lo, hi = interval
    first = INT64_MIN if lo is None else max(lo, INT64_MIN)
    last = INT64_MAX if hi is None else min(hi - 1, INT64_MAX)
    return min(first, INT64_MAX), max(last, INT64_MIN)


def _rollup_part(conn: Connection, view: View, interval: Interval, f: LogFilter, progress: Progress) -> agg.AnySelect:
    """SUM(quota) of the detail rows (plus the real-time tail) of the buckets starting in
    `interval` that match `f`."""
    first, last = _closed(interval)
    src = queries.source(conn, "detail", view, first, last, progress)
    # source() may hold tail rows of later buckets (it bounds them by created_at); the
    # bucket decides, as in shared.queries.
    return sa.select(agg.fold_column(src, "quota")).where(
        src.c.created_at.between(first, last), *filter_clauses(src, f)
    )


def _in_seconds(interval: Interval) -> agg.Expr:
    first, last = _closed(interval)
    return m.logs.c.created_at.between(first, last)


def _log_part(where: agg.Expr, f: LogFilter, *measures: str) -> agg.AnySelect:
    """The sums of `measures` (columns of agg.log_rows: quota, count, token_used, ...) over
    the counted logs matching `where` and `f`, each log's values as shared.aggregation
    gives them."""
    rows = agg.log_rows(where, {}).subquery("log_rows")
    sums = [agg.fold_column(rows, name) for name in measures]
    return sa.select(*sums).where(*filter_clauses(rows, f))


def quota(conn: Connection, f: LogFilter, parts: Cover, stats_tz: str) -> int:
    """SUM(quota) over the parts of `parts`, in one statement on `conn`'s snapshot."""
    selects: list[agg.AnySelect] = []
    progress = read_progress(conn)  # once for every rollup part
    if parts.days is not None:
        daily = View(granularity="day", tz=stats_tz, stats_tz=stats_tz, realtime=True)
        selects.append(_rollup_part(conn, daily, parts.days, f, progress))
    hourly = View(granularity="hour", tz="UTC", stats_tz=stats_tz, realtime=True)
    selects += [_rollup_part(conn, hourly, interval, f, progress) for interval in parts.hours]
    selects += [_log_part(_in_seconds(interval), f, "quota") for interval in parts.raw]
    if not selects:
        return 0
    sums = (selects[0] if len(selects) == 1 else sa.union_all(*selects)).subquery("parts")
    total = sa.func.coalesce(sa.cast(sa.func.sum(sums.c.quota), sa.BigInteger), 0)
    return int(conn.execute(sa.select(total)).scalar_one())


def rates(conn: Connection, f: LogFilter, now: int) -> tuple[int, int]:
    """(requests, tokens) of the counted logs created at or after now - RATE_WINDOW that
    match `f` (whose user and names apply; ranges do not)."""
    since = m.logs.c.created_at >= now - RATE_WINDOW
    part = _log_part(since, f, agg.LOG_COUNT, "token_used").subquery("rate")
    requests = sa.func.coalesce(sa.cast(part.c[agg.LOG_COUNT], sa.BigInteger), 0)
    tokens = sa.func.coalesce(sa.cast(part.c.token_used, sa.BigInteger), 0)
    n, t = conn.execute(sa.select(requests, tokens)).one()
    return int(n), int(t)


def log_stat(
    conn: Connection,
    f: LogFilter,
    start: int | None,
    end: int | None,
    now: int,
    *,
    stats_tz: str,
    hourly_from: int | None = None,
) -> dict[str, int]:
    """new-api's {quota, rpm, tpm} for the logs matching `f`: quota over created_at in
    [start, end] (None: open), rpm and tpm over the minute before `now`. `conn` should
    be a queries.snapshot connection; `hourly_from` is the first hour whose hourly rows
    the retention keeps (None: all)."""
    if start is not None and end is not None and start > end:
        raise ValueError("start must not be after end")
    total = quota(conn, f, cover(start, end, stats_tz, hourly_from), stats_tz)
    rpm, tpm = rates(conn, f, now)
    return {"quota": total, "rpm": rpm, "tpm": tpm}
