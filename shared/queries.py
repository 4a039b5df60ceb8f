"""The API's read queries, one function per query shape.

Every shape is the same statement:

    SELECT <key columns>, CAST(SUM(<measure>) AS BIGINT) ...
    FROM <source>
    WHERE <key filter> AND created_at BETWEEN :start AND :end
    GROUP BY <key columns>
    ORDER BY created_at, model_name   -- model_name in code point order on every database

`source` (see `source`) is a summary table, UNION ALL the real-time tail:

- the summary rows: hourly_* for hours; daily_* for days, weeks and months in
  STATS_TIMEZONE (the zone the daily rows were built in); hourly_* again for days, weeks
  and months in another zone, which must then have whole-hour offsets so that every
  hour lies inside one local day. Rows whose bucket is coarser than the requested one
  (a day's row in a month view) are re-bucketed by the bucket expression of
  shared.buckets, over a created_at range the table's index serves.
- the tail: the consume logs the rollup has not counted yet, one row each, bucketed by
  the very expressions the rollup uses (hour_start, day_start) or their week and month
  twins. The rollup has counted exactly the logs with id <= rollup_state.last_log_id
  that lie in no rollup_gap range (a tick that counts a log inside a gap cuts it out of
  the gap in the same transaction; see shared.rollup). So the tail is the logs with
  id > last_log_id, plus the logs inside rollup_gap ranges: nothing twice, nothing
  missed -- provided the watermark, the gaps, the summary rows and the logs are all read
  in one snapshot. `snapshot` gives such a connection (REPEATABLE READ on PostgreSQL; a
  SQLite transaction is one snapshot already), so a tick committing meanwhile is either
  wholly seen or not at all. The watermark and the gaps are read first and bound as
  values, so the planner sees narrow primary-key ranges (a subquery or a join would be
  estimated at a third of the table, or at whatever rollup_gap's statistics say).

The GROUP BY merges the two halves: a summary row and the tail's rows of the same key
add up. The CAST keeps PostgreSQL's SUM(bigint) (numeric, a Decimal in Python) a plain
integer.

A request costs a range scan over the summary rows of its range (at most a few
thousand for days, weeks and months, 366 days of them) plus the logs not yet rolled
up (about a tick's worth when the rollup keeps up; all of the backlog when it does not).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from . import models as m
from .buckets import LONGEST, bucket_start
from .rollup import consume_log_values

Granularity = Literal["hour", "day", "week", "month"]
GRANULARITIES: tuple[str, ...] = ("hour", "day", "week", "month")

# One row per (bucket, user, model): /api/data/self and the admin's username= view.
PER_USER: dict[str, sa.Table] = {"hour": m.hourly_usage, "day": m.daily_usage}
# One row per (bucket, model): the admin's site-wide view.
SITE_WIDE: dict[str, sa.Table] = {"hour": m.hourly_model_usage, "day": m.daily_model_usage}

UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Universal", "Zulu", "Etc/Zulu", "GMT", "Etc/GMT"})


def same_zone(a: str, b: str) -> bool:
    return a == b or (a in UTC_NAMES and b in UTC_NAMES)


@dataclass(frozen=True)
class View:
    """What an answer is made of: bucket size, the zone of day/week/month buckets, the
    zone the daily rows were built in (STATS_TIMEZONE), and whether the logs not yet
    rolled up are added."""

    granularity: str = "hour"
    tz: str = "UTC"
    stats_tz: str = "UTC"
    realtime: bool = True

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

    @property
    def from_daily(self) -> bool:
        """Days, weeks and months in STATS_TIMEZONE come from the daily rows; in any
        other zone from the hourly rows (hours come from the hourly rows anyway)."""
        return self.granularity != "hour" and same_zone(self.tz, self.stats_tz)

    @property
    def bucket_tz(self) -> str:
        return self.stats_tz if self.from_daily else self.tz


def _view(view) -> View:
    # A bare granularity: the summary rows alone, days in UTC (as before the tail).
    return view if isinstance(view, View) else View(granularity=view, realtime=False)


class code_point_order(FunctionElement):
    """`expr` as a sort key in code point order, the same on every database: SQLite
    compares text bytewise already, PostgreSQL follows the database's locale (where
    "B" < "a" or "_z" < "a" depends on it) unless told COLLATE "C"."""

    inherit_cache = True
    name = "code_point_order"


@compiles(code_point_order)
def _code_point_order_default(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)


@compiles(code_point_order, "postgresql")
def _code_point_order_pg(element, compiler, **kw):
    return f'({compiler.process(element.clauses, **kw)}) COLLATE "C"'


def _sum(source, name: str):
    return sa.cast(sa.func.sum(source.c[name]), sa.BigInteger).label(name)


def per_user_select(source, user_id, start: int, end: int) -> sa.Select:
    """One user's rows in [start, end] from `source` (a per-user table, or a union of it
    with tail rows of the same columns). `user_id` is a value or a scalar SQL expression.
    Columns in the contract's order: model_name, count, quota, token_used, created_at,
    user_id, username, then the two token splits."""
    c = source.c
    return (
        sa.select(
            c.model_name,
            _sum(source, "count"),
            _sum(source, "quota"),
            _sum(source, "token_used"),
            c.created_at,
            c.user_id,
            # The name at the time of the requests (as in new-api's quota_data); one per
            # key in a table, MAX chooses as the rollup does where rows merge (re-bucketed
            # rows, tail rows after a rename).
            sa.func.max(c.username).label("username"),
            _sum(source, "prompt_tokens"),
            _sum(source, "completion_tokens"),
        )
        .where(c.user_id == user_id, c.created_at.between(start, end))
        .group_by(c.created_at, c.model_name, c.user_id)
        .order_by(c.created_at, code_point_order(c.model_name))
    )


def site_wide_select(source, start: int, end: int) -> sa.Select:
    """Site-wide rows in [start, end] from `source` (a per-model table, or a union of it
    with tail rows of the same columns)."""
    c = source.c
    return (
        sa.select(
            c.model_name,
            _sum(source, "count"),
            _sum(source, "quota"),
            _sum(source, "token_used"),
            c.created_at,
            _sum(source, "prompt_tokens"),
            _sum(source, "completion_tokens"),
        )
        .where(c.created_at.between(start, end))
        .group_by(c.created_at, c.model_name)
        .order_by(c.created_at, code_point_order(c.model_name))
    )


def active_user_id(username: str):
    """The id of the live (not soft-deleted) user called `username`, as a scalar
    subquery: NULL, and so no rows, when there is none. users.username is unique."""
    u = m.users.c
    return sa.select(u.id).where(u.username == username, u.deleted_at.is_(None)).scalar_subquery()


# --- the source: summary rows UNION ALL the tail ---------------------------------------

# The columns of each kind of source, in the summary tables' order.
_KEYS = {"user": ("user_id", "created_at", "model_name", "username"), "site": ("created_at", "model_name")}
_TEXT = ("model_name", "username")


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection whose statements all read one snapshot: REPEATABLE READ on
    PostgreSQL (read-only, so it never fails to serialize); on SQLite the transaction
    SQLAlchemy begins is one snapshot already (WAL)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        yield conn


def progress(conn: Connection) -> tuple[int, list[tuple[int, int]]]:
    """How far the rollup has got: rollup_state.last_log_id and the rollup_gap ranges.
    Every log at or below the watermark is counted, except those inside a gap."""
    w = conn.execute(sa.select(m.rollup_state.c.last_log_id).where(m.rollup_state.c.id == 1)).scalar()
    g = m.rollup_gap.c
    gaps = [(lo, hi) for lo, hi in conn.execute(sa.select(g.lo, g.hi).order_by(g.lo))]
    return w or 0, gaps


INT64_MAX = 2**63 - 1


def created_before(view: View, end: int) -> int:
    """A row lies in its bucket, so the rows of buckets starting at or before `end`
    were created at or before this (`end` + the longest bucket, kept within BIGINT)."""
    return min(end + LONGEST[view.granularity] - 1, INT64_MAX)


def _summary_rows(kind: str, view: View, start, end, bound):
    table = (PER_USER if kind == "user" else SITE_WIDE)["day" if view.from_daily else "hour"]
    stored = "day" if view.from_daily else "hour"
    if view.granularity == stored:
        # Already one row per bucket: the table as it is, so the outer range filter
        # reaches its index.
        return sa.select(*table.c).where(table.c.created_at.between(start, end))
    t = table.c
    cols = [
        bucket_start(t.created_at, view.granularity, view.bucket_tz).label(name) if name == "created_at" else t[name]
        for name in _KEYS[kind] + m.MEASURES
    ]
    # A bucket starting in [start, end] holds rows from start on.
    return sa.select(*cols).where(t.created_at >= start, t.created_at <= bound)


def _unindexed(column):
    # `column + 0`: the same value, which no index can serve.
    return column + sa.literal_column("0")


def _tail_rows(kind: str, view: View, w, gaps: list[tuple], start, bound) -> list[sa.Select]:
    """The consume logs not counted yet, one row each in the summary's columns, bucketed
    as the rollup buckets them: ids above the watermark `w`, and ids inside the `gaps`
    ([lo, hi] ranges, all below `w`)."""
    lg = m.logs.c
    values = consume_log_values()
    values.update(
        created_at=bucket_start(lg.created_at, view.granularity, view.bucket_tz),
        count=sa.literal_column("1"),
        token_used=values["prompt_tokens"] + values["completion_tokens"],
    )
    # The same types as the summary columns, so that PostgreSQL pushes the outer filters
    # into both halves of the UNION ALL.
    cols = [sa.cast(values[n], sa.Text if n in _TEXT else sa.BigInteger).label(n) for n in _KEYS[kind] + m.MEASURES]
    # Only the id may pick an index: the tail is a short primary-key range (or a few gap
    # ranges), whereas an index on created_at or type would read every log of the range
    # (SQLite, without statistics, would otherwise choose idx_created_at_type).
    created_at = _unindexed(lg.created_at)
    consume = sa.and_(
        _unindexed(lg.type) == m.LOG_CONSUME,
        lg.created_at.is_not(None),  # no bucket; the rollup skips it too
        created_at >= start,
        created_at <= bound,
    )
    parts = [sa.select(*cols).where(lg.id > w, consume)]
    if gaps:
        parts.append(sa.select(*cols).where(sa.or_(*(lg.id.between(lo, hi) for lo, hi in gaps)), consume))
    return parts


def _source(kind: str, view: View, start, end, bound, w=None, gaps=()):
    parts = [_summary_rows(kind, view, start, end, bound)]
    if w is not None:
        parts += _tail_rows(kind, view, w, list(gaps), start, bound)
    return sa.union_all(*parts).subquery("usage") if len(parts) > 1 else parts[0].subquery("usage")


def source(conn: Connection, kind: Literal["user", "site"], view: View, start: int, end: int):
    """The rows an answer is summed from, for buckets starting in [start, end]: the
    summary rows, re-bucketed where the view asks for coarser buckets, plus (realtime)
    the tail. A subquery with the columns of the summary table of that kind."""
    w, gaps = progress(conn) if view.realtime else (None, [])
    return _source(kind, view, start, end, created_before(view, end), w, gaps)


def _param(name: str):
    return sa.bindparam(name, type_=sa.BigInteger)


@lru_cache(maxsize=256)
def _statement(kind: str, view: View, n_gaps: int, by_name: bool) -> sa.Select:
    """The statement of an answer, built once per shape with its values as bound
    parameters: building the expression and its cache key cost more than executing
    it on a small answer (3 of 6 ms), so each request now only binds values."""
    start, end = _param("start"), _param("end")
    w = _param("w") if view.realtime else None
    gaps = [(_param(f"gap_lo_{i}"), _param(f"gap_hi_{i}")) for i in range(n_gaps)]
    src = _source(kind, view, start, end, _param("bound"), w, gaps)
    if kind == "site":
        return site_wide_select(src, start, end)
    user = active_user_id(sa.bindparam("username", type_=sa.Text)) if by_name else _param("user_id")
    return per_user_select(src, user, start, end)


def _answer(conn: Connection, kind: str, view: View, start: int, end: int, **who) -> list[dict]:
    params = {"start": start, "end": end, "bound": created_before(view, end), **who}
    gaps: list = []
    if view.realtime:
        params["w"], gaps = progress(conn)
        for i, (lo, hi) in enumerate(gaps):
            params[f"gap_lo_{i}"], params[f"gap_hi_{i}"] = lo, hi
    return _rows(conn, _statement(kind, view, len(gaps), "username" in who), params)


def _rows(conn: Connection, query: sa.Select, params: dict | None = None) -> list[dict]:
    # Plain tuples zipped with the column names: a third of the cost of .mappings() on
    # a 2,000-row answer.
    result = conn.execute(query, params or {})
    names = [str(name) for name in result.keys()]
    return [dict(zip(names, row)) for row in result.all()]


def user_usage(conn: Connection, user_id: int, view: View | Granularity, start: int, end: int) -> list[dict]:
    """/api/data/self: the rows of user `user_id` whose bucket starts in [start, end]."""
    return _answer(conn, "user", _view(view), start, end, user_id=user_id)


def user_usage_by_name(conn: Connection, username: str, view: View | Granularity, start: int, end: int) -> list[dict]:
    """/api/data/?username=: the rows of the live user named `username` (none for an
    unknown or deleted name). Resolved to the user's id rather than matched against the
    summary's username column, so that the primary key (user_id, created_at, ...) serves
    the range, and a user's rows from before a rename are still theirs."""
    return _answer(conn, "user", _view(view), start, end, username=username)


def site_usage(conn: Connection, view: View | Granularity, start: int, end: int) -> list[dict]:
    """/api/data/: site-wide rows by (bucket, model) whose bucket starts in [start, end]."""
    return _answer(conn, "site", _view(view), start, end)
