"""Which summary tables the rollup writes, for measuring what issue 12's tables cost.

The product folds every tick into all of shared.aggregation.SUMMARIES (six tables: the
four of the first design, and the hourly and daily tables keyed by every dimension).
Issue 12's constraints compare that with the same code writing only the four original
tables ("today's"). shared.rollup and shared.queries read `agg.SUMMARIES` at call time,
so a benchmark process can swap it: a measure for the benchmark only, never a setting
of the product.

The four-table variant keeps the rest of the code as it is: in particular a tick still
groups its new logs by every dimension (shared.rollup's rollup_delta) before folding
them into the four tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared import aggregation as agg
from shared import queries

ORIGINAL_TABLES = ("hourly_usage", "hourly_model_usage", "daily_usage", "daily_model_usage")

# "six": every summary table (the product); "four": the original ones only.
VARIANTS: dict[str, tuple[agg.Summary, ...]] = {
    "six": agg.SUMMARIES,
    "four": tuple(s for s in agg.SUMMARIES if s.table.name in ORIGINAL_TABLES),
}
assert len(VARIANTS["four"]) == len(ORIGINAL_TABLES), "an original summary table is missing"


def use(variant: str) -> None:
    """Make the rollup and the queries of this process write and read `variant`'s tables."""
    agg.SUMMARIES = VARIANTS[variant]
    # Answers' statements are cached per shape; each names the table it was built for.
    queries._statement.cache_clear()


@contextmanager
def summaries(variant: str) -> Iterator[None]:
    """`variant`'s tables for the duration of the block, then the product's again."""
    use(variant)
    try:
        yield
    finally:
        use("six")
