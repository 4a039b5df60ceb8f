"""The API's read queries, one function per query shape.

Every shape is the same statement:

    SELECT <key columns>, <folded values> ...   -- SUM of measures, MAX of attributes
    FROM <source>
    WHERE <key filter> AND created_at BETWEEN :start AND :end
    GROUP BY <key columns>
    ORDER BY created_at, model_name   -- model_name in code point order on every database

`source` (see `source`) is a summary table, UNION ALL the real-time tail:

- the summary rows: hourly_* for hours; daily_* for days, weeks and months in
  STATS_TIMEZONE (the zone the daily rows were built in); hourly_* again for days, weeks
  and months in another zone, which must then have whole-hour offsets so that every
  hour lies inside one local day. Answers by key, channel or group read
  hourly_detail_usage at every granularity: its hours are cut at STATS_TIMEZONE's
  midnights, so they sum to its days exactly (shared.aggregation). Rows whose bucket
  differs from the requested one (a day's row in a month view, a cut hour's) are
  re-bucketed by the bucket expression of shared.buckets, over a created_at range the
  table's index serves.
- the tail: the consume logs the rollup has not counted yet, one row each in the
  summary table's columns, made by shared.aggregation (which logs count, their values,
  their buckets) exactly as the rollup makes its rows. The rollup has counted exactly the logs with id <= rollup_state.last_log_id
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
fold together by shared.aggregation's rules, as the rollup would fold them.

A view the summary rows cannot answer exactly (days summed from hourly rows in a zone
whose midnight falls inside a UTC hour) is refused with `Unanswerable`.

A request costs a range scan over the summary rows of its range (at most a few
thousand for days, weeks and months, 366 days of them) plus the logs not yet rolled
up (about a tick's worth when the rollup keeps up; all of the backlog when it does not).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.expression import FromClause
from sqlalchemy.sql.functions import FunctionElement

from . import aggregation as agg
from . import models as m
from .aggregation import AnySelect
from .buckets import LONGEST, bucket_start, first_split_hour
from .rollup import Progress, read_progress

Granularity = Literal["hour", "day", "week", "month"]
GRANULARITIES: tuple[str, ...] = ("hour", "day", "week", "month")

Kind = Literal["user", "site", "detail"]
# The dimensions of each kind of source: per user and model (/api/data/self and the
# admin's username= view), per model (site-wide), and per every dimension.
KIND_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "user": ("user_id", "model_name"),
    "site": ("model_name",),
    "detail": tuple(f.name for f in agg.DIMENSIONS),
}


class Unanswerable(ValueError):
    """The summary rows cannot answer this view exactly; the message says why and what
    can be asked instead."""


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

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

    @property
    def from_daily(self) -> bool:
        """Days, weeks and months in STATS_TIMEZONE come from the daily rows; in any
        other zone from the hourly rows (hours come from the hourly rows anyway)."""
        return self.granularity != "hour" and same_zone(self.tz, self.stats_tz)

    @property
    def from_hourly(self) -> bool:
        """Days, weeks or months summed from hourly rows: exact only where every UTC hour
        lies inside one local day."""
        return self.granularity != "hour" and not self.from_daily

    @property
    def bucket_tz(self) -> str:
        return self.stats_tz if self.from_daily else self.tz


def _view(view: View | str) -> View:
    # A bare granularity: the summary rows alone, days in UTC (as before the tail).
    return view if isinstance(view, View) else View(granularity=view, realtime=False)


class code_point_order(FunctionElement[str]):
    """`expr` as a sort key in code point order, the same on every database: SQLite
    compares text bytewise already, PostgreSQL follows the database's locale (where
    "B" < "a" or "_z" < "a" depends on it) unless told COLLATE "C"."""

    inherit_cache = True
    name = "code_point_order"


@compiles(code_point_order)
def _code_point_order_default(element: code_point_order, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(code_point_order, "postgresql")
def _code_point_order_pg(element: code_point_order, compiler: SQLCompiler, **kw: Any) -> str:
    return f'({compiler.process(element.clauses, **kw)}) COLLATE "C"'


# The seed's two answers, in the contract's column order.
PER_USER_COLUMNS = (
    "model_name",
    "count",
    "quota",
    "token_used",
    agg.BUCKET,
    "user_id",
    "username",
    "prompt_tokens",
    "completion_tokens",
)
SITE_WIDE_COLUMNS = ("model_name", "count", "quota", "token_used", agg.BUCKET, "prompt_tokens", "completion_tokens")

# The dimensions an answer may be grouped by, and the name each carries along (folded
# as the rollup folds it: the largest where rows merge).
GROUP_KEYS: tuple[str, ...] = tuple(f.name for f in agg.DIMENSIONS if not f.describes)
CARRIED: dict[str, str] = {str(f.describes): f.name for f in agg.DESCRIBING}


@dataclass(frozen=True)
class Shape:
    """What an answer holds: its `columns` in order (the bucket, dimensions it is grouped
    by, the names they carry, measures), the dimensions it is `filtered` on (each equal
    to a value bound per request as f_<name>), and whether it is one user's (`user`: a
    user_id value is bound)."""

    columns: tuple[str, ...]
    filtered: tuple[str, ...] = ()
    user: bool = False
    # A measure to rank by, largest first (before the keys); None: by bucket and keys.
    rank_by: str | None = None
    # Dimensions whose empty value ('') is left out (new-api's flow skips an empty group).
    nonempty: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """The columns grouped by: the bucket and the dimensions."""
        return tuple(c for c in self.columns if c == agg.BUCKET or c in GROUP_KEYS)

    @property
    def sort_keys(self) -> tuple[str, ...]:
        """The keys in the order answers are sorted by (after rank_by): the bucket, then
        the dimensions; text in code point order, which is Python's order of str."""
        return tuple(k for k in self.keys if k == agg.BUCKET) + tuple(k for k in self.keys if k != agg.BUCKET)

    def summary(self, grain: str) -> agg.Summary:
        """The smallest summary table that answers this shape's buckets of `grain`
        exactly: every key and filter a dimension of it, every carried name a column."""
        dims = {*self.keys, *self.filtered, *self.nonempty, *(["user_id"] if self.user else [])} - {agg.BUCKET}
        return agg.answering(grain, dims, {c for c in self.columns if c in CARRIED.values()})


PER_USER = Shape(PER_USER_COLUMNS, user=True)
SITE_WIDE = Shape(SITE_WIDE_COLUMNS)


def grouped_columns(by: Sequence[str]) -> tuple[str, ...]:
    """The columns of an answer grouped by the dimensions `by` (in GROUP_KEYS' order):
    the bucket, each dimension followed by the name it carries, the measures."""
    dims = [d for d in GROUP_KEYS if d in by]
    carried = [[d, CARRIED[d]] if d in CARRIED else [d] for d in dims]
    return (agg.BUCKET, *(c for pair in carried for c in pair), *agg.MEASURE_NAMES)


def answer_select(
    source: FromClause, shape: Shape, start: Any, end: Any, user: Any = None, filters: Mapping[str, Any] | None = None
) -> AnySelect:
    """The answer of `shape` in [start, end] from `source` (a summary table, or a union
    of it with tail rows of the same columns): grouped by its keys, names and measures
    folded as the rollup folds them, ordered by bucket then keys (text in code point
    order). `user` is the user_id to keep (a value or a scalar SQL expression) and
    `filters` the value of each filtered dimension."""
    c = source.c
    keys = shape.keys
    where = _answer_where(source, shape, start, end, user, filters)
    order: list[Any] = [sa.desc(agg.fold_column(source, shape.rank_by))] if shape.rank_by else []
    order += [
        code_point_order(c[k]) if k != agg.BUCKET and agg.FIELDS[k].type is sa.Text else c[k] for k in shape.sort_keys
    ]
    return (
        sa.select(*(c[n] if n in keys else agg.fold_column(source, n) for n in shape.columns))
        .where(*where)
        .group_by(*(c[k] for k in keys))
        .order_by(*order)
    )


def _answer_where(
    source: FromClause, shape: Shape, start: Any, end: Any, user: Any = None, filters: Mapping[str, Any] | None = None
) -> list[Any]:
    """The rows of `source` an answer of `shape` keeps (see answer_select)."""
    c = source.c
    where = [c.created_at.between(start, end), *(c[d] == v for d, v in (filters or {}).items())]
    where += [c[d] != "" for d in shape.nonempty]
    if user is not None:
        where.append(c.user_id == user)
    return where


def per_user_select(source: FromClause, user_id: Any, start: Any, end: Any) -> AnySelect:
    """One user's rows in [start, end], in the seed's per-user shape."""
    return answer_select(source, PER_USER, start, end, user=user_id)


def site_wide_select(source: FromClause, start: Any, end: Any) -> AnySelect:
    """Site-wide rows in [start, end], in the seed's site-wide shape."""
    return answer_select(source, SITE_WIDE, start, end)


# --- the source: summary rows UNION ALL the tail ---------------------------------------


@contextmanager
def snapshot(engine: Engine, *, deferred: bool = False) -> Iterator[Connection]:
    """A connection whose statements all read one snapshot: REPEATABLE READ on
    PostgreSQL (read-only, so it never fails to serialize) and on MySQL (InnoDB's read
    view is taken by the first read and kept; the engine's level is READ COMMITTED); on
    SQLite the transaction SQLAlchemy begins is one snapshot already (WAL).

    `deferred`: the snapshot begins at `begin_snapshot(conn)`; until then each statement
    reads the newest commits on its own: for a conditional request, which mostly ends in
    a 304 decided by one statement (the version, with who asks beside it: api.auth's
    Claim) or two (who asks, the version) that need not agree with each other. On PostgreSQL outside any transaction: the driver's autocommit, set on
    psycopg2's connection itself (no BEGIN, no ROLLBACK; SQLAlchemy's AUTOCOMMIT level
    would cost a SET when reset on return). On MySQL in the engine's READ COMMITTED,
    where every statement reads its own view (pymysql's autocommit costs a round trip
    each way)."""
    with engine.connect() as conn:
        name = conn.dialect.name
        if not (deferred and name in _SNAPSHOT_DIALECTS):
            if name in _SNAPSHOT_DIALECTS:
                conn = _repeatable_read(conn)
            yield conn
            return
        conn = conn.execution_options(usage_stats_deferred=True)
        if name == "postgresql":
            _driver_autocommit(conn, True)
        try:
            yield conn
        finally:
            if name == "postgresql" and snapshot_pending(conn) and not conn.invalidated:
                # Out of SQLAlchemy's transaction first (in autocommit nothing is sent;
                # a rollback, as an error may have ended the request).
                conn.rollback()
                _driver_autocommit(conn, False)


_SNAPSHOT_DIALECTS = ("postgresql", "mysql")
_SNAPSHOT = "REPEATABLE READ"


def _repeatable_read(conn: Connection) -> Connection:
    """`conn`, outside any transaction, made to read its next one in REPEATABLE READ.
    On MySQL for that transaction only (SET TRANSACTION, which its commit or rollback
    ends, the pool's rollback on return included): SQLAlchemy's isolation_level option
    would SET the session's level, and SET it back when the connection returns to the
    pool, a round trip each. psycopg2 sends the level with its BEGIN."""
    if conn.dialect.name == "mysql":
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL " + _SNAPSHOT)
        return conn
    return conn.execution_options(isolation_level=_SNAPSHOT)


def _driver_autocommit(conn: Connection, on: bool) -> None:
    # psycopg2: flags of the client's, nothing is sent, as long as the session's isolation
    # level is the server's default: an explicit one (SQLAlchemy sets it back to READ
    # COMMITTED after a snapshot) would be applied with a SET in autocommit, and undone
    # with another when leaving it.
    driver = conn.connection.dbapi_connection
    if on:
        driver.isolation_level = None  # type: ignore[union-attr]  # the server's default
        driver.autocommit = True  # type: ignore[union-attr]
    else:
        driver.autocommit = False  # type: ignore[union-attr]


def snapshot_pending(conn: Connection) -> bool:
    """Whether `conn` is a `snapshot(deferred=True)` connection whose snapshot has not
    begun."""
    return bool(conn.get_execution_options().get("usage_stats_deferred"))


def begin_snapshot(conn: Connection) -> None:
    """From here on, `conn` (a `snapshot(deferred=True)` connection; any other is left
    as it is) reads one snapshot, taken by its next statement."""
    if snapshot_pending(conn):
        # The isolation level may change only outside a transaction (on PostgreSQL, in
        # autocommit, the commit ends SQLAlchemy's bookkeeping only: nothing is sent).
        conn.commit()
        if conn.dialect.name == "postgresql":
            _driver_autocommit(conn, False)
        _repeatable_read(conn.execution_options(usage_stats_deferred=False))


INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def created_before(view: View, end: int) -> int:
    """A row lies in its bucket, so the rows of buckets starting at or before `end`
    were created at or before this (`end` + the longest bucket, kept within BIGINT)."""
    return min(end + LONGEST[view.granularity] - 1, INT64_MAX)


def _grain(view: View) -> str:
    return "day" if view.from_daily else "hour"


def _summary_rows(
    summary: agg.Summary, view: View, start: Any, end: Any, bound: Any, hours_from: Any = None
) -> AnySelect:
    table = summary.table
    if view.granularity == summary.grain and not summary.cut_at_midnight:
        # Already one row per bucket: the table as it is, so the outer range filter
        # reaches its index.
        return sa.select(*table.c).where(table.c.created_at.between(start, end))
    t = table.c
    cols = [
        bucket_start(t.created_at, view.granularity, view.bucket_tz).label(c.name) if c.name == agg.BUCKET else c
        for c in table.c
    ]
    # A bucket starting in [start, end] holds rows from start on.
    where = [t.created_at >= start, t.created_at <= bound]
    if _hours_only_from(summary, view):
        where.append(t.created_at >= hours_from)
    return sa.select(*cols).where(*where)


def _hours_only_from(summary: agg.Summary, view: View) -> bool:
    """Whether the view reads `summary`'s rows as hours, which they are only from
    hours_from on: before it, retention compacted the hours cut at midnight into whole
    days of STATS_TIMEZONE, which answer its days, weeks and months only."""
    return summary.cut_at_midnight and not view.from_daily


def _tail_rows(
    summary: agg.Summary,
    view: View,
    w: Any,
    gaps: Sequence[tuple[Any, Any]],
    start: Any,
    bound: Any,
    hours_from: Any = None,
    *,
    log_id: bool = False,
) -> list[AnySelect]:
    """The consume logs not counted yet, one row each in the summary's columns, bucketed
    as the rollup buckets them: ids above the watermark `w`, and ids inside the `gaps`
    ([lo, hi] ranges, all below `w`); from `hours_from` on where the summary rows are
    (see _summary_rows), so that a log answers the same before and after its tick.
    `log_id`: each row also carries its log's id as LOG_ID (for tail_signature)."""
    lg = m.logs.c
    columns = [c.name for c in summary.table.c]

    def bucket(created_at: Any) -> Any:
        return bucket_start(created_at, view.granularity, view.bucket_tz)

    # Only the id may pick an index: the tail is a short primary-key range (or a few gap
    # ranges), whereas an index on created_at or type would read every log of the range
    # (SQLite, without statistics, would otherwise choose idx_created_at_type).
    created_at = agg.unindexed(lg.created_at)
    in_range = sa.and_(created_at >= start, created_at <= bound)
    if _hours_only_from(summary, view):
        in_range = sa.and_(in_range, created_at >= hours_from)
    parts = [agg.summary_log_rows(columns, sa.and_(lg.id > w, in_range), bucket, indexable=False)]
    if gaps:
        in_gaps = sa.or_(*(lg.id.between(lo, hi) for lo, hi in gaps))
        parts.append(agg.summary_log_rows(columns, sa.and_(in_gaps, in_range), bucket, indexable=False))
    if log_id:
        parts = [part.add_columns(lg.id.label(LOG_ID)) for part in parts]
    return parts


LOG_ID = "log_id"


def _source(
    summary: agg.Summary,
    view: View,
    start: Any,
    end: Any,
    bound: Any,
    w: Any = None,
    gaps: Sequence[tuple[Any, Any]] = (),
    hours_from: Any = None,
) -> sa.Subquery:
    parts = [_summary_rows(summary, view, start, end, bound, hours_from)]
    if w is not None:
        parts += _tail_rows(summary, view, w, gaps, start, bound, hours_from)
    return sa.union_all(*parts).subquery("usage") if len(parts) > 1 else parts[0].subquery("usage")


def _check_answerable(view: View, start: int, bound: int) -> None:
    """Days, weeks and months summed from hourly rows need every UTC hour of the range
    inside one local day: the zone's offset must be a whole number of hours there and
    may change only on the hour."""
    if not view.from_hourly:
        return
    split = first_split_hour(view.tz, start, bound + 1)
    if split is None:
        return
    offset = split[1]
    sign = "-" if offset < 0 else "+"
    hours, rest = divmod(abs(offset), 3600)
    raise Unanswerable(
        f"tz {view.tz} is at UTC{sign}{hours:02d}:{rest // 60:02d}, not a whole number of hours, in the requested "
        f"range: days, weeks and months in such a zone are served only when it is the server's "
        f"STATS_TIMEZONE ({view.stats_tz}); use granularity=hour, or a zone with whole-hour offsets"
    )


def check_answerable(view: View, start: int, end: int) -> None:
    """Raise Unanswerable when buckets starting in [start, end] of `view` cannot be
    answered exactly (what every answer checks first; a streamed answer checks it before
    it starts)."""
    _check_answerable(view, start, created_before(view, end))


def source(
    conn: Connection, kind: Kind, view: View, start: int, end: int, progress: Progress | None = None
) -> sa.Subquery:
    """The rows an answer is summed from, for buckets starting in [start, end]: the
    summary rows, re-bucketed where the view asks for coarser buckets, plus (realtime)
    the tail. A subquery with the columns of the summary table of that kind (per user
    and model, or per model). `progress`: the rollup's, when the caller has read it on
    `conn` already (an answer built from several sources reads it once)."""
    bound = created_before(view, end)
    _check_answerable(view, start, bound)
    summary = agg.answering(_grain(view), KIND_DIMENSIONS[kind])
    if progress is None:
        progress = read_progress(conn)
    hours_from = _hours_from(progress)
    if not view.realtime:
        return _source(summary, view, start, end, bound, hours_from=hours_from)
    return _source(summary, view, start, end, bound, progress.last_log_id, progress.gaps, hours_from)


def _hours_from(progress: Progress) -> int:
    return INT64_MIN if progress.hours_kept_from is None else progress.hours_kept_from


def _param(name: str, type_: Any = sa.BigInteger) -> BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


@lru_cache(maxsize=512)
def _statement(shape: Shape, view: View, n_gaps: int) -> AnySelect:
    """The statement of an answer, built once per shape with its values as bound
    parameters: building the expression and its cache key costs more than executing
    it on a small answer, so each request only binds values."""
    start, end = _param("start"), _param("end")
    w = _param("w") if view.realtime else None
    gaps = [(_param(f"gap_lo_{i}"), _param(f"gap_hi_{i}")) for i in range(n_gaps)]
    src = _source(shape.summary(_grain(view)), view, start, end, _param("bound"), w, gaps, _param("hours_from"))
    user = _param("user_id") if shape.user else None
    filters = {d: _param(f"f_{d}", agg.FIELDS[d].type) for d in shape.filtered}
    return answer_select(src, shape, start, end, user=user, filters=filters)


def _parameters(
    shape: Shape, view: View, start: int, end: int, values: Mapping[str, Any] | None, progress: Progress
) -> tuple[dict[str, Any], int]:
    """The bound values of an answer's statements (and of its tail signature), and the
    number of gaps they name."""
    bound = created_before(view, end)
    _check_answerable(view, start, bound)
    values = dict(values or {})
    params: dict[str, Any] = {"start": start, "end": end, "bound": bound}
    if shape.user:
        params["user_id"] = values.pop("user_id")
    for d in shape.filtered:
        params[f"f_{d}"] = values.pop(d)
    if values:
        raise TypeError(f"values not in the shape: {sorted(values)}")
    gaps: list[tuple[int, int]] = []
    params["hours_from"] = _hours_from(progress)
    if view.realtime:
        params["w"], gaps = progress.last_log_id, progress.gaps
        for i, (lo, hi) in enumerate(gaps):
            params[f"gap_lo_{i}"], params[f"gap_hi_{i}"] = lo, hi
    return params, len(gaps)


def prepare(
    conn: Connection,
    shape: Shape,
    view: View,
    start: int,
    end: int,
    values: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> tuple[AnySelect, dict[str, Any]]:
    """The statement of an answer and its parameters, read on `conn` (whose snapshot the
    caller then executes it in): `values` holds user_id when `shape.user` asks for it,
    and one value per filtered dimension. Refuses a view it cannot answer exactly.
    `progress`: the rollup's, when the caller has read it on `conn` already."""
    params, n_gaps = _parameters(shape, view, start, end, values, read_progress(conn) if progress is None else progress)
    return _statement(shape, view, n_gaps), params


def usage(
    conn: Connection,
    shape: Shape,
    view: View,
    start: int,
    end: int,
    values: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """The rows of an answer of `shape` whose bucket starts in [start, end]."""
    return rows(conn, *prepare(conn, shape, view, start, end, values, progress))


# --- an answer as its summary half and a patch (api.answer_cache) -----------------------


def cacheable(shape: Shape) -> bool:
    """Whether an answer of `shape` can be kept as its summary half and patched by the
    tail (`patch_rows`): ordered by its keys alone (not ranked), with the bucket among
    them, so that a patched row takes its key's place."""
    return shape.rank_by is None and agg.BUCKET in shape.keys


def summary_half(
    conn: Connection, shape: Shape, view: View, start: int, end: int, values: Mapping[str, Any], progress: Progress
) -> list[dict[str, Any]]:
    """The answer without the tail: the summary rows alone, as the answer reads them
    under `progress` (a function of the summary version and the request)."""
    quiet = replace(view, realtime=False)
    params, _ = _parameters(shape, quiet, start, end, values, progress)
    return rows(conn, _statement(shape, quiet, 0), params)


@lru_cache(maxsize=512)
def _patch_statement(shape: Shape, view: View, n_gaps: int) -> AnySelect:
    """_statement at the keys the tail touches only: the summary rows of those keys
    UNION ALL the tail, grouped and ordered as the answer."""
    start, end, bound, hours_from = _param("start"), _param("end"), _param("bound"), _param("hours_from")
    gaps = [(_param(f"gap_lo_{i}"), _param(f"gap_hi_{i}")) for i in range(n_gaps)]
    summary = shape.summary(_grain(view))
    user = _param("user_id") if shape.user else None
    filters = {d: _param(f"f_{d}", agg.FIELDS[d].type) for d in shape.filtered}

    def tail() -> list[AnySelect]:
        return _tail_rows(summary, view, _param("w"), gaps, start, bound, hours_from)

    parts = tail()
    logs = (sa.union_all(*parts) if len(parts) > 1 else parts[0]).subquery("tail")
    touched = (
        sa.select(*(logs.c[k] for k in shape.keys))
        .where(*_answer_where(logs, shape, start, end, user=user, filters=filters))
        .distinct()
        .subquery("touched")
    )
    stored = _summary_rows(summary, view, start, end, bound, hours_from).subquery("stored")
    # Joined with the distinct keys, not `(keys) IN (SELECT ...)`: MariaDB runs that IN
    # as a first-match semi-join comparing every stored row with every tail log (745 ms
    # for 2,134 rows and 1,105 logs); joined, each key is one primary-key lookup.
    at_touched = sa.select(*stored.c).join_from(
        stored, touched, sa.and_(*(stored.c[k] == touched.c[k] for k in shape.keys))
    )
    src = sa.union_all(at_touched, *tail()).subquery("usage")
    return answer_select(src, shape, start, end, user=user, filters=filters)


def patch_rows(
    conn: Connection, shape: Shape, view: View, start: int, end: int, values: Mapping[str, Any], progress: Progress
) -> list[dict[str, Any]]:
    """The answer's rows at the keys its tail touches (whole: their summary rows and
    tail rows folded in SQL, as the answer folds them), in the answer's order. With
    `summary_half` under the same `progress`, the answer is the summary half with
    these rows in their keys' places (api.answer_cache)."""
    params, n_gaps = _parameters(shape, view, start, end, values, progress)
    return rows(conn, _patch_statement(shape, view, n_gaps), params)


# --- the version of an answer (shared.answer_version) ----------------------------------


@dataclass(frozen=True)
class Version:
    """What the rollup has counted (`progress`) and rollup_state.generation, read in one
    snapshot: together the version of the summary rows (`summary`)."""

    progress: Progress
    generation: int

    @property
    def summary(self) -> tuple[Any, ...]:
        p = self.progress
        return (p.last_log_id, p.hours_kept_from, self.generation, tuple(p.gaps))


def _version_select(*also: Any) -> AnySelect:
    """rollup_state and the rollup_gap ranges, one row per gap (one without any), with
    the columns `also` after theirs."""
    s, g = m.rollup_state, m.rollup_gap
    return (
        sa.select(s.c.last_log_id, s.c.hours_kept_from, s.c.generation, g.c.lo, g.c.hi, *also)
        .select_from(s.outerjoin(g, sa.true()))
        .where(s.c.id == 1)
    )


def _version_of(found: Sequence[Any]) -> Version:
    if not found:
        return Version(Progress(0, []), 0)
    first = found[0]
    gaps = sorted((int(r[3]), int(r[4])) for r in found if r[3] is not None)
    return Version(Progress(int(first[0] or 0), gaps, first[1]), int(first[2] or 0))


@lru_cache(maxsize=1)
def _version_statement() -> AnySelect:
    return _version_select()


def read_version(conn: Connection) -> Version:
    """rollup_state and the rollup_gap ranges in one statement, on `conn` (in its
    snapshot): a conditional request reads this and a tail signature, nothing more."""
    return _version_of(conn.execute(_version_statement()).all())


@lru_cache(maxsize=512)
def _beside(statement: Any, also: AnySelect) -> AnySelect:
    """`statement`'s rows, each with the columns of `also`'s one row (NULLs without one)
    after its own: two reads in one round trip and one statement."""
    main, extra = statement.subquery("main"), also.subquery("also")
    return sa.select(*main.c, *extra.c).select_from(main.outerjoin(extra, sa.true()))


def _read_beside(
    conn: Connection, statement: Any, params: Mapping[str, Any], also: tuple[AnySelect, Mapping[str, Any]] | None
) -> tuple[Sequence[Any], Any]:
    """`statement`'s rows and, read in the same statement (`_beside`), `also`'s one row
    (a select and its parameters) with attributes named as its columns, or None."""
    if also is None:
        return conn.execute(statement, dict(params)).all(), None
    extra, extra_params = also
    found = conn.execute(_beside(statement, extra), {**params, **extra_params}).all()
    width = len(statement.selected_columns)
    rows = [tuple(r[:width]) for r in found]
    if not found or all(v is None for v in found[0][width:]):
        return rows, None
    names = [c.name for c in extra.selected_columns]
    return rows, SimpleNamespace(**dict(zip(names, found[0][width:], strict=True)))


@lru_cache(maxsize=512)
def _signature_statement(shape: Shape, view: View, n_gaps: int) -> AnySelect:
    """(rows, largest id, sum of ids) of the tail rows an answer of `shape` reads: the
    tail of _statement, under the same WHERE as the answer."""
    start, end = _param("start"), _param("end")
    gaps = [(_param(f"gap_lo_{i}"), _param(f"gap_hi_{i}")) for i in range(n_gaps)]
    summary = shape.summary(_grain(view))
    parts = _tail_rows(summary, view, _param("w"), gaps, start, _param("bound"), _param("hours_from"), log_id=True)
    tail = (sa.union_all(*parts) if len(parts) > 1 else parts[0]).subquery("tail")
    user = _param("user_id") if shape.user else None
    filters = {d: _param(f"f_{d}", agg.FIELDS[d].type) for d in shape.filtered}
    ids = tail.c[LOG_ID]
    return sa.select(
        sa.func.count(), sa.func.coalesce(sa.func.max(ids), 0), sa.func.coalesce(sa.func.sum(ids), 0)
    ).where(*_answer_where(tail, shape, start, end, user=user, filters=filters))


def tail_signature(
    conn: Connection,
    shape: Shape,
    view: View,
    start: int,
    end: int,
    values: Mapping[str, Any] | None,
    progress: Progress,
) -> tuple[int, int, int] | None:
    """A signature of the tail rows the answer of these arguments reads, on `conn` (in
    the snapshot `progress` was read in): it changes when a log of the answer commits
    into the tail, above the watermark or late inside a gap (the tail only grows between
    ticks, and a tick moves `progress`). None for an answer without a tail."""
    if not view.realtime:
        return None
    params, n_gaps = _parameters(shape, view, start, end, values, progress)
    n, top, total = conn.execute(_signature_statement(shape, view, n_gaps), params).one()
    return int(n), int(top), int(total)


@lru_cache(maxsize=512)
def _versioned_signature_statement(shape: Shape, view: View, n_gaps: int) -> sa.CompoundSelect[Any]:
    """read_version's rows (NULLs for the signature) UNION ALL _signature_statement's one
    row (NULLs for the version): both in one round trip, and one statement, so one
    snapshot on every database."""
    signature = _signature_statement(shape, view, n_gaps).subquery("signature")
    # Named: as a subquery (`_beside`) each column needs a name of its own.
    nothing = [sa.null().label(f"signature_{i}") for i in range(len(signature.c))]
    version = _version_select(*nothing)
    return sa.union_all(
        version, sa.select(*([sa.null()] * (len(version.selected_columns) - len(nothing))), *signature.c)
    )


def read_version_and_signature(
    conn: Connection,
    shape: Shape,
    view: View,
    start: int,
    end: int,
    values: Mapping[str, Any] | None,
    guess: Progress | None,
    also: tuple[AnySelect, Mapping[str, Any]] | None = None,
) -> tuple[Version, tuple[int, int, int] | None, Any]:
    """read_version and the tail_signature under the progress read, on `conn`, in one
    statement when `guess` (the progress a previous request read: it moves once a tick)
    is the progress read: the tail's bounds are bound as values (see `source`), so the
    signature is computed under `guess` beside the version, and kept only if the
    version's progress is that same one, read in the same statement; otherwise (a tick
    since, or no guess) the signature is read again under the progress read.

    `also`: a select of at most one row and its parameters (names apart from the
    answer's), read in the first of these statements (`_beside`): its row, with
    attributes named as its columns, is returned third (None for no row)."""
    if guess is None or not view.realtime:
        found, row = _read_beside(conn, _version_statement(), {}, also)
        version = _version_of(found)
        return version, tail_signature(conn, shape, view, start, end, values, version.progress), row
    params, n_gaps = _parameters(shape, view, start, end, values, guess)
    found, row = _read_beside(conn, _versioned_signature_statement(shape, view, n_gaps), params, also)
    # The signature's row is the one whose count is not NULL.
    version = _version_of([r for r in found if r[-3] is None])
    if version.progress != guess:
        return version, tail_signature(conn, shape, view, start, end, values, version.progress), row
    n, top, total = next(r[-3:] for r in found if r[-3] is not None)
    return version, (int(n), int(top), int(total)), row


def rows(conn: Connection, query: AnySelect, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of `query` as dicts, in the order of its columns."""
    # Plain tuples zipped with the column names: cheaper than .mappings() per row.
    result = conn.execute(query, params or {})
    names = list(map(str, result.keys()))
    return [dict(zip(names, row)) for row in result.all()]


def stream_rows(
    conn: Connection, query: AnySelect, params: dict[str, Any] | None = None, chunk: int = 1000
) -> Iterator[list[dict[str, Any]]]:
    """The rows of `query` as dicts, `chunk` at a time, fetched as they are consumed (a
    server-side cursor on PostgreSQL): memory stays bounded however long the answer."""
    result = conn.execution_options(stream_results=True, yield_per=chunk).execute(query, params or {})
    names = list(map(str, result.keys()))
    for part in result.partitions():
        yield [dict(zip(names, row)) for row in part]


def user_usage(conn: Connection, user_id: int, view: View | Granularity, start: int, end: int) -> list[dict[str, Any]]:
    """/api/data/self: the rows of user `user_id` whose bucket starts in [start, end]."""
    return usage(conn, PER_USER, _view(view), start, end, {"user_id": user_id})


def site_usage(conn: Connection, view: View | Granularity, start: int, end: int) -> list[dict[str, Any]]:
    """/api/data/: site-wide rows by (bucket, model) whose bucket starts in [start, end]."""
    return usage(conn, SITE_WIDE, _view(view), start, end)
