"""The one definition of usage: which logs count, what each adds, the buckets and the summary tables.

Like the view definition behind a continuous aggregate, this module states once

    SELECT <bucket>, <dimensions>, MAX(<attributes>), SUM(<measures>)
    FROM logs WHERE <a consume log with a time>
    GROUP BY <bucket>, <dimensions>

and everything that turns logs into usage is composed from it:
- the tick (shared.rollup) folds the new logs' rows into every summary table (`fold`);
- the re-aggregation (shared.rollup) recomputes a range's rows from the raw logs and makes
  the tables equal them;
- the real-time tail (shared.queries) reads the logs not yet folded as rows of a summary
  table's columns (`summary_rows`), so that an answer sums them like stored rows;
- the benchmark's raw comparator (bench/raw_api.py) runs the same rows over every log.

Adding a dimension or a measure is an entry here (and a migration for its columns);
nothing else on the write path names them.

The fold rules, the same wherever rows merge (a tick adding to a stored row, a
re-aggregation, an answer summing several rows): measures add up, as BIGINT (PostgreSQL's
SUM(bigint) is numeric, slow to compare and to hash); attributes take the largest value,
as a GROUP BY over the bucket's logs gives, so a row is the same whether ticks or a
re-aggregation built it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement, Label
from sqlalchemy.sql.expression import FromClause

from . import models as m
from .buckets import day_start, hour_start

Grain = Literal["hour", "day"]
# A SELECT of any columns (SQLAlchemy 2.1 types a Select by its column types).
AnySelect: TypeAlias = "sa.Select[*tuple[Any, ...]]"
SqlType = type[sa.BigInteger] | type[sa.Text]
Expr = ColumnElement[Any]


@dataclass(frozen=True)
class Field:
    """A column of the usage rows: its name, its SQL type and its value for one log
    (a missing value counts as 0 or ''). A field that `describes` another dimension (a
    user's name, a key's name) is a dimension of the tables that hold both, so a rename
    splits their rows exactly; in a table without it, but with the dimension it
    describes, it is an attribute folded by MAX (where a user was renamed within a
    bucket, the largest name)."""

    name: str
    type: SqlType
    value: Callable[[Any], Expr]  # logs.c -> the log's value
    describes: str | None = None


def _coalesce(column: str, default: object) -> Callable[[Any], Expr]:
    if isinstance(default, str):
        # Grouped by code point on every database (on MySQL the gateway's collation may
        # be case-blind).
        return lambda lg: m.code_points(sa.func.coalesce(lg[column], default))
    return lambda lg: sa.func.coalesce(lg[column], default)


# What a usage row is keyed by, besides its bucket (in the order grouped answers show
# them): which model, who (the user and their name at the time), through which API key (its id, and its name as the log recorded
# it), over which channel, in which group (the one actually used: new-api's use_group).
DIMENSIONS: tuple[Field, ...] = (
    Field("model_name", sa.Text, _coalesce("model_name", "")),
    Field("user_id", sa.BigInteger, _coalesce("user_id", 0)),
    Field("username", sa.Text, _coalesce("username", ""), describes="user_id"),
    Field("token_id", sa.BigInteger, _coalesce("token_id", 0)),
    Field("token_name", sa.Text, _coalesce("token_name", ""), describes="token_id"),
    Field("channel_id", sa.BigInteger, _coalesce("channel_id", 0)),
    Field("use_group", sa.Text, _coalesce("group", "")),
)
DIMENSION_NAMES: tuple[str, ...] = tuple(f.name for f in DIMENSIONS)
DESCRIBING: tuple[Field, ...] = tuple(f for f in DIMENSIONS if f.describes)


def attributes_of(dimensions: Iterable[str]) -> tuple[str, ...]:
    """The describing fields a table keyed by `dimensions` holds as attributes."""
    dims = set(dimensions)
    return tuple(f.name for f in DESCRIBING if f.describes in dims and f.name not in dims)


# What a usage row adds up. `count` is one per log; token_used is new-api's sum of the two.
MEASURES: tuple[Field, ...] = (
    Field("count", sa.BigInteger, lambda lg: sa.literal_column("1")),
    Field("quota", sa.BigInteger, _coalesce("quota", 0)),
    Field(
        "token_used",
        sa.BigInteger,
        lambda lg: sa.func.coalesce(lg.prompt_tokens, 0) + sa.func.coalesce(lg.completion_tokens, 0),
    ),
    Field("prompt_tokens", sa.BigInteger, _coalesce("prompt_tokens", 0)),
    Field("completion_tokens", sa.BigInteger, _coalesce("completion_tokens", 0)),
)
MEASURE_NAMES: tuple[str, ...] = tuple(f.name for f in MEASURES)
# The measure that counts logs: a row whose count is 0 holds no usage.
LOG_COUNT = "count"
FIELDS: dict[str, Field] = {f.name: f for f in (*DIMENSIONS, *MEASURES)}

# The bucket column of every summary table (the API's name for a bucket's start).
BUCKET = "created_at"


def grain_buckets(tz: str) -> dict[str, Callable[[Expr], Expr]]:
    """The bucket expression of each grain the summaries are stored at: hours as new-api
    cuts them, days at local midnight in STATS_TIMEZONE `tz`."""
    return {"hour": hour_start, "day": lambda created_at: day_start(created_at, tz)}


# --- the summary tables ----------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """A summary table: the usage rows at one grain, keyed by the bucket and some of the
    dimensions; its other columns are the attributes those dimensions carry, then the
    measures."""

    table: sa.Table
    grain: Grain
    # Hours cut at STATS_TIMEZONE's local midnights: a row's bucket is the later of its
    # hour's start and its local day's (they differ only in a zone whose midnight falls
    # inside a UTC hour), so every row lies inside one hour and one local day, and days,
    # weeks and months in STATS_TIMEZONE are summed from these rows exactly.
    cut_at_midnight: bool = False

    def bucket(self, hour: Expr, day: Expr) -> Expr:
        """A row's bucket from its log's hour and local day (expressions)."""
        if self.grain == "day":
            return day
        if self.cut_at_midnight:
            return sa.case((day > hour, day), else_=hour)
        return hour

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.table.primary_key.columns)

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(k for k in self.key if k != BUCKET)

    @property
    def attributes(self) -> tuple[str, ...]:
        return attributes_of(self.dimensions)

    @property
    def values(self) -> tuple[str, ...]:
        """Every column outside the key: attributes, then measures."""
        return (*self.attributes, *MEASURE_NAMES)


def _include(columns: Sequence[str]) -> dict[str, Any]:
    return {"postgresql_include": list(columns)} if columns else {}


# The width of each text column on MySQL (m.KeyText): new-api's varchar(191), except
# that the key of every dimension must fit InnoDB's 3,072 bytes (4 x 8 + 4 x 4 x width):
# user and key names, which new-api caps at 20 and 30 characters, get 187.
MYSQL_TEXT_WIDTH = {"model_name": 191, "use_group": 191, "username": 187, "token_name": 187}


def column_type(name: str) -> Any:
    """The SQL type of usage field `name` in a table: text as m.KeyText (a key on MySQL)."""
    return m.KeyText(MYSQL_TEXT_WIDTH[name]) if FIELDS[name].type is sa.Text else FIELDS[name].type


def _summary_table(name: str, key: Sequence[str], *, covering: bool = False, time_index: bool = False) -> sa.Table:
    attributes = attributes_of(k for k in key if k != BUCKET)
    return sa.Table(
        name,
        m.metadata,
        *(sa.Column(k, sa.BigInteger if k == BUCKET else column_type(k), nullable=False) for k in key),
        *(sa.Column(a, column_type(a), nullable=False, server_default="") for a in attributes),
        *(sa.Column(f.name, f.type, nullable=False, server_default="0") for f in MEASURES),
        sa.PrimaryKeyConstraint(
            *key, name=f"{name}_pkey", **_include([*attributes, *MEASURE_NAMES] if covering else [])
        ),
        *([sa.Index(f"ix_{name}_created_at", BUCKET)] if time_index else []),
    )


# Per user and model: keyed by user_id first, so /api/data/self reads one user's range of
# buckets. hourly_usage carries its values in the key's leaves (PostgreSQL's INCLUDE,
# migration 0002): its rows are written in time order, all users mixed, so one user's month
# of hours lies on as many heap pages as it has rows; with the values in the key the read
# is an index-only scan of a few adjacent pages. Not daily_usage: ticks update today's rows
# all day long, and with the values in the key no such update could stay on its heap page
# (HOT).
hourly_usage = _summary_table("hourly_usage", ("user_id", BUCKET, "model_name"), covering=True, time_index=True)
daily_usage = _summary_table("daily_usage", ("user_id", BUCKET, "model_name"), time_index=True)
# Per model: the site-wide answer never sums thousands of user rows.
hourly_model_usage = _summary_table("hourly_model_usage", (BUCKET, "model_name"))
daily_model_usage = _summary_table("daily_model_usage", (BUCKET, "model_name"))
# Per every dimension (migrations 0003, 0004): answers by API key, channel or group, and
# with their filters, are summed from this one table, at every granularity; the tables
# above keep serving the answers that need none of them, reading no more rows than
# before. Keyed by user first, like hourly_usage, with an index on the bucket for
# site-wide ranges. No daily twin: a tick upserts about as many rows into each detail
# table as into hourly_usage and daily_usage together, and a second one would nearly
# double its cost; its hours are cut at local midnights instead, so that they sum to
# days exactly. Retention compacts its rows older than RETAIN_HOURLY_DAYS into whole
# local days (shared.retention).
DETAIL_KEY = ("user_id", BUCKET, "model_name", "token_id", "channel_id", "use_group", "username", "token_name")
hourly_detail_usage = _summary_table("hourly_detail_usage", DETAIL_KEY, time_index=True)
HOURLY_DETAIL = Summary(hourly_detail_usage, "hour", cut_at_midnight=True)

# Every summary, the finest of each grain first (a per-user re-aggregation moves the
# tables without users by the finest one's change).
SUMMARIES: tuple[Summary, ...] = (
    HOURLY_DETAIL,
    Summary(hourly_usage, "hour"),
    Summary(hourly_model_usage, "hour"),
    Summary(daily_usage, "day"),
    Summary(daily_model_usage, "day"),
)


def summary(grain: str, dimensions: Iterable[str]) -> Summary:
    """The summary table at `grain` keyed by exactly `dimensions`."""
    wanted = tuple(dimensions)
    for s in SUMMARIES:
        if s.grain == grain and set(s.dimensions) == set(wanted):
            return s
    raise LookupError(f"no summary table at grain {grain!r} keyed by {wanted}")


def answering(grain: str, dimensions: Iterable[str], names: Iterable[str] = ()) -> Summary:
    """The smallest summary table that answers buckets of `grain` ("hour", or "day" for
    days, weeks and months in STATS_TIMEZONE) keyed or filtered by `dimensions`,
    carrying the describing fields `names`: one of that grain, else an hourly one cut at
    local midnights (its rows sum to local days exactly)."""
    dims, carried = set(dimensions), set(names)
    fits = [
        s
        for s in SUMMARIES
        if (s.grain == grain or (grain == "day" and s.cut_at_midnight))
        and dims <= set(s.dimensions)
        and carried <= {*s.dimensions, *s.attributes}
    ]
    if not fits:
        raise LookupError(f"no summary table answers {sorted(dims | carried)} by {grain}")
    # Of the same grain first, then the fewest columns.
    return min(fits, key=lambda s: (s.grain != grain, len(s.table.columns)))


# --- the query shapes ------------------------------------------------------------------


def unindexed(column: Expr) -> Expr:
    # `column + 0`: the same value, which no index can serve.
    return column + sa.literal_column("0")


def counts(*, indexable: bool = True) -> Expr:
    """Which logs count as usage: consume logs. A log without a time has no bucket
    (new-api always sets it); skipping it keeps one corrupt row from stopping every tick.
    Not `indexable`: the same test in a form no index can serve, for a reader that must
    reach logs by id alone (the real-time tail)."""
    lg = m.logs.c
    type_, created_at = (unindexed(lg.type), unindexed(lg.created_at)) if not indexable else (lg.type, lg.created_at)
    return sa.and_(type_ == m.LOG_CONSUME, created_at.is_not(None))


def log_values(buckets: Mapping[str, Callable[[Expr], Expr]]) -> dict[str, Expr]:
    """A counted log's columns: one per bucket expression in `buckets` (name ->
    f(created_at)), then every dimension, attribute and measure."""
    lg = m.logs.c
    values = {name: bucket(lg.created_at) for name, bucket in buckets.items()}
    values.update((f.name, f.value(lg)) for f in (*DIMENSIONS, *MEASURES))
    return values


def log_rows(where: Expr, buckets: Mapping[str, Callable[[Expr], Expr]], from_: FromClause | None = None) -> AnySelect:
    """One row per counted log matching `where`, with the columns of `log_values`.
    `from_` defaults to logs (a join with it, for gaps)."""
    return (
        sa.select(*(value.label(name) for name, value in log_values(buckets).items()))
        .select_from(m.logs if from_ is None else from_)
        .where(counts(), where)
    )


def summary_log_rows(
    columns: Sequence[str], where: Expr, bucket: Callable[[Expr], Expr], *, indexable: bool = True
) -> AnySelect:
    """One row per counted log matching `where` as a row of a summary table: `columns`
    in that order (BUCKET from `bucket(created_at)`), each of its column's type, so that
    a UNION ALL with the summary table passes outer filters into both halves. Not
    `indexable`: the logs are reached by whatever `where` says of their ids alone."""
    values = log_values({BUCKET: bucket})
    return sa.select(
        *(sa.cast(values[c], sa.BigInteger if c == BUCKET else FIELDS[c].type).label(c) for c in columns)
    ).where(counts(indexable=indexable), where)


def fold_column(source: FromClause, name: str) -> Expr:
    """The aggregate that folds column `name` of `source` over a group: SUM for a
    measure, MAX for an attribute."""
    if name in MEASURE_NAMES:
        return sa.cast(sa.func.sum(source.c[name]), sa.BigInteger).label(name)
    if any(f.name == name for f in DESCRIBING):
        return sa.func.max(source.c[name]).label(name)
    raise KeyError(f"{name} is neither a measure nor an attribute")


def unlabel(column: Any) -> Any:
    """The expression under a label (`x AS name`), for GROUP BY and ORDER BY."""
    return column.element if isinstance(column, Label) else column


def aggregate(source: FromClause, by: Sequence[Expr | str], values: Iterable[str]) -> AnySelect:
    """SELECT by..., folded values... FROM source GROUP BY by: the one GROUP BY of usage."""
    keys = [source.c[k] if isinstance(k, str) else k for k in by]
    return sa.select(*keys, *(fold_column(source, v) for v in values)).group_by(*map(unlabel, keys))


def merge_into(summary: Summary, incoming: Any) -> dict[str, Expr]:
    """SET clauses that merge an incoming row (`excluded`) into a stored row of the
    summary's table with the same key: measures add, attributes keep the larger."""
    t = summary.table.c
    sets: dict[str, Expr] = {name: t[name] + incoming[name] for name in MEASURE_NAMES}
    for a in summary.attributes:
        sets[a] = sa.case((incoming[a] > t[a], incoming[a]), else_=t[a])
    return sets
