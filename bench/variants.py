"""Which summary tables the rollup writes, for measuring what issue 12's tables cost.

The product folds every tick into all of shared.aggregation.SUMMARIES (five tables: the
four of the first design, and hourly_detail_usage, keyed by every dimension, its hours
cut at STATS_TIMEZONE's midnights so that days, weeks and months by key, channel or group
are summed from it). Issue 12's constraints compare that with the same code writing only
the four original tables ("today's"). shared.rollup and shared.queries read
`agg.SUMMARIES` at call time, so a benchmark process can swap it: a measure for the
benchmark only, never a setting of the product.

The four-table variant keeps the rest of the code as it is: in particular a tick still
groups its new logs by every dimension (shared.rollup's rollup_delta) before folding
them into the four tables.

"six" is the design measured and dropped before (migration 0004): the five tables and a
daily detail table beside them. Its daily table is a scratch table of the benchmark
(`daily_detail`), filled from hourly_detail_usage for the duration of a measurement.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from shared import aggregation as agg
from shared import queries
from shared.buckets import day_start

ORIGINAL_TABLES = ("hourly_usage", "hourly_model_usage", "daily_usage", "daily_model_usage")
PRODUCT = "five"

# Tables of designs that are not the product's, created by the benchmark and dropped after.
SCRATCH = sa.MetaData()


def scratch_table(
    name: str,
    key: tuple[str, ...] = agg.DETAIL_KEY,
    *,
    fillfactor: int | None = None,
    time_index: bool = True,
) -> sa.Table:
    """A summary table like shared.aggregation's (its columns, primary key and bucket
    index), outside the product's metadata."""
    attributes = agg.attributes_of(k for k in key if k != agg.BUCKET)
    options: dict[str, Any] = {"postgresql_with": {"fillfactor": fillfactor}} if fillfactor else {}
    return sa.Table(
        name,
        SCRATCH,
        *(sa.Column(k, sa.BigInteger if k == agg.BUCKET else agg.FIELDS[k].type, nullable=False) for k in key),
        *(sa.Column(a, agg.FIELDS[a].type, nullable=False, server_default="") for a in attributes),
        *(sa.Column(f.name, f.type, nullable=False, server_default="0") for f in agg.MEASURES),
        sa.PrimaryKeyConstraint(*key, name=f"{name}_pkey"),
        *([sa.Index(f"ix_{name}_created_at", agg.BUCKET)] if time_index else []),
        **options,
    )


# The previous product's daily_detail_usage, under a name of the benchmark's.
DAILY_DETAIL = agg.Summary(scratch_table("bench_daily_detail_usage"), "day")

_FIVE = agg.SUMMARIES
_FOUR = tuple(s for s in _FIVE if s.table.name in ORIGINAL_TABLES)
assert len(_FOUR) == len(ORIGINAL_TABLES), "an original summary table is missing"
assert len(_FIVE) == 5 and _FIVE[0] is agg.HOURLY_DETAIL, "the product is not the five tables measured here"

# The finest table of each grain first, as in shared.aggregation.SUMMARIES.
VARIANTS: dict[str, tuple[agg.Summary, ...]] = {
    "five": _FIVE,
    "four": _FOUR,
    "six": (
        *(s for s in _FIVE if s.grain == "hour"),
        DAILY_DETAIL,
        *(s for s in _FIVE if s.grain == "day"),
    ),
}
# Every summary table any variant writes (to name statements by the table they write).
ALL_TABLES: tuple[str, ...] = tuple(dict.fromkeys(s.table.name for v in VARIANTS.values() for s in v))


def use(variant: str | tuple[agg.Summary, ...]) -> None:
    """Make the rollup and the queries of this process write and read `variant`'s tables
    (a name of VARIANTS, or the summaries themselves)."""
    agg.SUMMARIES = VARIANTS[variant] if isinstance(variant, str) else variant
    # Answers' statements are cached per shape; each names the table it was built for.
    queries._statement.cache_clear()


@contextmanager
def summaries(variant: str | tuple[agg.Summary, ...]) -> Iterator[None]:
    """`variant`'s tables for the duration of the block, then the product's again."""
    use(variant)
    try:
        yield
    finally:
        use(PRODUCT)


def fill_days(conn: sa.Connection, target: agg.Summary, source: sa.Table, tz: str = "UTC") -> None:
    """target (a daily table) := the rows of `source` (hours cut at `tz`'s midnights, or
    days) summed by target's key, their buckets the local days of `tz`."""
    key = [day_start(source.c[agg.BUCKET], tz).label(agg.BUCKET) if k == agg.BUCKET else k for k in target.key]
    rows = agg.aggregate(source, key, target.values)
    conn.execute(sa.insert(target.table).from_select([*target.key, *target.values], rows))


@contextmanager
def daily_detail(engine: Any) -> Iterator[None]:
    """The six-table design's daily detail table, created and filled from
    hourly_detail_usage (the benchmark's STATS_TIMEZONE is UTC), VACUUM ANALYZEd; dropped
    when the block ends."""
    table = DAILY_DETAIL.table
    with engine.begin() as conn:
        table.drop(conn, checkfirst=True)
        table.create(conn)
        fill_days(conn, DAILY_DETAIL, agg.hourly_detail_usage)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"VACUUM ANALYZE {table.name}")
    try:
        yield
    finally:
        with engine.begin() as conn:
            table.drop(conn, checkfirst=True)
