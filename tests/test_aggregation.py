"""shared.aggregation is the one definition of usage; the rest composes from it.

These tests pin the structure: the summary tables are made of the definition's fields,
the write path names no field of its own, and the query layer refuses a view it cannot
answer exactly (not only the API in front of it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared import aggregation as agg
from shared import queries
from tests.logdata import utc

ROOT = Path(__file__).resolve().parent.parent


def test_every_summary_table_is_its_key_attributes_and_measures():
    assert agg.SUMMARIES
    for s in agg.SUMMARIES:
        columns = [c.name for c in s.table.columns]
        assert set(s.key) == {agg.BUCKET, *s.dimensions}, s
        assert columns == [*s.key, *s.attributes, *agg.MEASURE_NAMES], s
        assert all(not c.nullable for c in s.table.columns), s


def test_the_finest_table_of_each_grain_comes_first_and_holds_the_most_dimensions():
    every = {d.name for d in agg.DIMENSIONS}
    for grain in ("hour", "day"):
        ours = [s for s in agg.SUMMARIES if s.grain == grain]
        assert all(set(s.dimensions) <= set(ours[0].dimensions) <= every for s in ours)
    # Every dimension has an hourly table whose hours sum to local days exactly.
    assert set(agg.SUMMARIES[0].dimensions) == every and agg.SUMMARIES[0].cut_at_midnight


def test_summary_lookup_by_grain_and_dimensions():
    assert agg.summary("hour", ["model_name", "user_id"]).table is agg.hourly_usage
    assert agg.summary("day", ["model_name"]).table is agg.daily_model_usage
    with pytest.raises(LookupError):
        agg.summary("week", ["model_name"])


@pytest.mark.parametrize("module", ["shared/rollup.py", "bench/raw_api.py"])
def test_the_write_path_and_the_raw_comparator_name_no_measure_or_attribute(module):
    # They take every field from shared.aggregation, so that a new measure or attribute
    # is one entry there, not an edit here.
    source = (ROOT / module).read_text(encoding="utf-8")
    names = [*agg.MEASURE_NAMES, *(f.name for f in agg.DESCRIBING)]
    # As a column (`.c.quota`, `f.quota`, `c["quota"]`), not as a word or a function (count()).
    named = [n for n in names if re.search(rf"""\.{n}\b(?!\()|\[["']{n}["']\]|["']{n}["']""", source)]
    assert named == [], f"{module} names {named}: take them from shared.aggregation"


def test_the_query_layer_refuses_days_it_cannot_sum_exactly(sqlite_engine):
    # Asia/Kolkata's midnight falls inside a UTC hour: days there cannot be summed from
    # hourly rows. The refusal is the query layer's own, whoever calls it.
    view = queries.View(granularity="day", tz="Asia/Kolkata", stats_tz="UTC")
    start = utc(2024, 5, 1)
    with sqlite_engine.connect() as conn:
        for call in (
            lambda: queries.user_usage(conn, 1, view, start, start + 86400),
            lambda: queries.site_usage(conn, view, start, start + 86400),
            lambda: queries.source(conn, "site", view, start, start + 86400),
        ):
            with pytest.raises(queries.Unanswerable, match="Asia/Kolkata is at UTC\\+05:30"):
                call()
        # Hours in that zone, and days in a whole-hour zone, are answered.
        assert queries.site_usage(conn, queries.View("hour", "Asia/Kolkata", "UTC"), start, start + 86400) == []
        assert queries.site_usage(conn, queries.View("day", "Asia/Shanghai", "UTC"), start, start + 86400) == []


def test_answers_without_new_dimensions_read_the_tables_they_read_before():
    # The detail tables serve only what needs a key, channel or group: the seed's answers
    # keep reading the narrower tables, so they read no more rows than before.
    assert queries.PER_USER.summary("hour").table is agg.hourly_usage
    assert queries.PER_USER.summary("day").table is agg.daily_usage
    assert queries.SITE_WIDE.summary("hour").table is agg.hourly_model_usage
    assert queries.SITE_WIDE.summary("day").table is agg.daily_model_usage
    grouped = queries.Shape(queries.grouped_columns(["model_name", "user_id"]))
    assert grouped.summary("hour").table is agg.hourly_usage
    for dims in (["token_id"], ["channel_id"], ["use_group"], ["model_name", "token_id"]):
        # Days by key: the hourly detail rows, whose hours are cut at local midnights.
        assert queries.Shape(queries.grouped_columns(dims)).summary("day").table is agg.hourly_detail_usage
    filtered = queries.Shape(queries.PER_USER_COLUMNS, filtered=("token_name",), user=True)
    assert filtered.summary("hour").table is agg.hourly_detail_usage
