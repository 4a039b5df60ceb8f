"""tz=<IANA zone>: day, week and month buckets start at local midnight in that zone.

In STATS_TIMEZONE they come from the daily rows; in another zone with whole-hour offsets
from the hourly rows; zones whose offset is not a whole number of hours over the range
(Asia/Kolkata, Australia/Lord_Howe, Shanghai's 1900 local mean time) are served only when
they are STATS_TIMEZONE. The truth is a Python bucketing of the raw logs with zoneinfo
(tests/api_support.expected).
"""

from __future__ import annotations

import itertools
import random

import pytest

from api.config import ApiLimits
from shared import aggregation as agg
from shared import models as m
from shared.config import Settings
from shared.rollup import rollup
from tests.api_support import add_rows, add_user, assert_failure, committed_logs, expected, make_api, ok_data, user_row
from tests.logdata import at, insert, log, utc

ROOT, ALICE = 3, 1
H, D = 3600, 86400
NY = "America/New_York"
GRANULARITIES = ("day", "week", "month")


def logs_around(rnd: random.Random, lo: int, hi: int, n: int) -> list[dict]:
    uids = [rnd.choice((ALICE, ROOT)) for _ in range(n)]
    return [
        log(
            user_id=uid,
            username=f"u{uid}",
            created_at=rnd.randrange(lo, hi),
            model=rnd.choice(("a", "b")),
            quota=rnd.randrange(1, 1000),
        )
        for uid in uids
    ]


def seeded(engine, stats_tz: str, spans, n=300, seed=1, roll=True):
    """Users, logs over `spans` ([lo, hi) pairs), all rolled up (or not); returns the api."""
    tokens = {ROOT: add_user(engine, ROOT, "u3", role=m.ROLE_ROOT), ALICE: add_user(engine, ALICE, "u1")}
    rnd = random.Random(seed)
    for lo, hi in spans:
        insert(engine, logs_around(rnd, lo, hi, n))
    if roll:
        rollup(engine, Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=stats_tz))
    return make_api(engine, tz=stats_tz), tokens


def compare(engine, api, tokens, tz, granularity, start, end, *, realtime="true", send_tz=True) -> list[dict]:
    q = {"granularity": granularity, "start_timestamp": start, "end_timestamp": end, "realtime": realtime}
    if send_tz:
        q["tz"] = tz
    logs = committed_logs(engine)
    site = ok_data(api.get("/api/data/", tokens[ROOT], ROOT, **q))
    assert site == expected(logs, granularity, tz, start, end, site_wide=True), (tz, granularity)
    mine = ok_data(api.get("/api/data/self", tokens[ALICE], ALICE, **q))
    assert mine == expected(logs, granularity, tz, start, end, user_id=ALICE), (tz, granularity)
    assert ok_data(api.get("/api/data/", tokens[ROOT], ROOT, username="u1", **q)) == mine
    return site


# Around both 2024 clock changes in New York: 2024-03-10 has 23 hours, 2024-11-03 has 25.
SPRING = (at(NY, 2024, 3, 8), at(NY, 2024, 3, 13))
FALL = (at(NY, 2024, 10, 31), at(NY, 2024, 11, 6))


@pytest.mark.parametrize("tz", [NY, "Asia/Shanghai", "Europe/London", "Pacific/Kiritimati"])
def test_other_whole_hour_zones_from_hourly_rows(engine, tz):
    # STATS_TIMEZONE is UTC: the daily rows are UTC days, useless here; hourly rows serve.
    api, tokens = seeded(engine, "UTC", [SPRING, FALL])
    for granularity in GRANULARITIES:
        for lo, hi in (SPRING, FALL):
            # From the last days of the month before: every zone's 1st of the month is inside.
            start, end = lo - 8 * D, hi + D
            # realtime=false: the summary rows alone, everything being rolled up.
            site = compare(engine, api, tokens, tz, granularity, start, end, realtime="false")
            assert site
            compare(engine, api, tokens, tz, granularity, start, end)


def test_23_and_25_hour_days(engine):
    api, tokens = seeded(engine, "UTC", [SPRING, FALL], n=600)
    for (lo, hi), hours in ((SPRING, 23), (FALL, 25)):
        site = compare(engine, api, tokens, NY, "day", lo, hi)
        starts = sorted({r["created_at"] for r in site})
        lengths = {b - a for a, b in itertools.pairwise(starts)}
        assert lengths == {24 * H, hours * H}, lengths  # every day has logs, one of them is short or long


def test_stats_timezone_days_come_from_the_daily_rows(engine):
    # Rows written directly, no logs: what the API folds is visibly the daily table.
    tokens = {ROOT: add_user(engine, ROOT, "u3", role=m.ROLE_ROOT)}
    day1, day2 = at(NY, 2024, 11, 3), at(NY, 2024, 11, 4)  # 25 hours apart
    add_rows(engine, agg.daily_usage, [user_row(ROOT, day1, "a", count=2), user_row(ROOT, day2, "a", count=3)])
    api = make_api(engine, tz=NY)
    q = {"granularity": "day", "start_timestamp": day1, "end_timestamp": day2}
    for extra in ({}, {"tz": NY}):
        assert [
            (r["created_at"], r["count"]) for r in ok_data(api.get("/api/data/self", tokens[ROOT], ROOT, **q, **extra))
        ] == [(day1, 2), (day2, 3)]
    # Another zone does not read them (its days differ), but the hourly rows.
    assert ok_data(api.get("/api/data/self", tokens[ROOT], ROOT, tz="Asia/Shanghai", **q)) == []
    add_rows(engine, agg.hourly_usage, [user_row(ROOT, day1 + 5 * H, "a", count=7)])  # 05:00 NY = 18:00 Shanghai
    shanghai_day = at("Asia/Shanghai", 2024, 11, 3)
    data = ok_data(
        api.get(
            "/api/data/self",
            tokens[ROOT],
            ROOT,
            tz="Asia/Shanghai",
            granularity="day",
            start_timestamp=shanghai_day,
            end_timestamp=day2,
        )
    )
    assert [(r["created_at"], r["count"]) for r in data] == [(shanghai_day, 7)]


@pytest.mark.parametrize("stats_tz", [NY, "Asia/Kolkata"])
def test_stats_timezone_days_weeks_and_months(engine, stats_tz):
    api, tokens = seeded(engine, stats_tz, [SPRING, FALL], roll=False)
    # Half rolled up, so both the summary rows and the tail take part.
    logs = committed_logs(engine)
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        stats_timezone=stats_tz,
        rollup_batch_size=len(logs) // 2,
    )
    from shared.rollup import tick

    tick(engine, settings)
    for granularity in GRANULARITIES:
        start, end = at(stats_tz, 2024, 2, 1), at(stats_tz, 2024, 11, 30)
        assert compare(engine, api, tokens, stats_tz, granularity, start, end, send_tz=False)
        compare(engine, api, tokens, stats_tz, granularity, start, end)


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "Australia/Lord_Howe", "America/St_Johns", "Asia/Kathmandu"])
def test_half_hour_zones_other_than_stats_timezone_are_400(sqlite_engine, tz):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = make_api(sqlite_engine)
    q = {"start_timestamp": utc(2024, 5, 1), "end_timestamp": utc(2024, 5, 20)}
    for granularity in GRANULARITIES:
        assert_failure(
            api.get("/api/data/", token, ROOT, tz=tz, granularity=granularity, **q),
            400,
            f"tz {tz}",
            "not a whole number of hours",
            "STATS_TIMEZONE",
        )
    # Hours start on the UTC hour whatever the zone: tz changes nothing there.
    ok_data(api.get("/api/data/", token, ROOT, tz=tz, granularity="hour", **{**q, "end_timestamp": utc(2024, 5, 2)}))


def test_whole_hours_are_checked_over_the_range_only(sqlite_engine):
    # Liberia kept UTC-00:44:30 until 1972: whole hours now, not then.
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = make_api(sqlite_engine)
    ok_data(
        api.get(
            "/api/data/",
            token,
            ROOT,
            tz="Africa/Monrovia",
            granularity="day",
            start_timestamp=utc(2024, 1, 1),
            end_timestamp=utc(2024, 1, 20),
        )
    )
    assert_failure(
        api.get(
            "/api/data/",
            token,
            ROOT,
            tz="Africa/Monrovia",
            granularity="day",
            start_timestamp=utc(1971, 6, 1),
            end_timestamp=utc(1971, 6, 10),
        ),
        400,
        "UTC-00:44",
    )


@pytest.mark.parametrize(
    "raw",
    [
        "Mars/Olympus",
        "america/new_york",
        "UTC+5",
        "+08:00",
        "../../etc/passwd",
        "Asia/Shanghai ",
        "localtime",
        "Factory",
        "a\x00b",
        "x" * 300,
    ],
)
def test_unknown_zones_are_400(sqlite_engine, raw):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = make_api(sqlite_engine)
    for path in ("/api/data/", "/api/data/self"):
        assert_failure(api.get(path, token, ROOT, tz=raw, granularity="day"), 400, "tz", "IANA")


@pytest.mark.parametrize("raw", ["CET", "EST5EDT", "EST", "MST"])
def test_zone_names_postgresql_reads_as_fixed_offsets_are_400(sqlite_engine, raw):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    assert_failure(make_api(sqlite_engine).get("/api/data/", token, ROOT, tz=raw, granularity="day"), 400, "tz", raw)


def test_tz_given_twice_is_400(sqlite_engine):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    assert_failure(
        make_api(sqlite_engine).get("/api/data/", token, ROOT, query=[("tz", "UTC"), ("tz", NY)]), 400, "tz", "once"
    )


def test_spans_from_hourly_rows_keep_the_hourly_limit(sqlite_engine):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = make_api(sqlite_engine, tz="UTC", limits=ApiLimits(31, 366))
    end = utc(2024, 12, 31)
    for granularity in GRANULARITIES:
        ok_data(
            api.get(
                "/api/data/",
                token,
                ROOT,
                tz=NY,
                granularity=granularity,
                start_timestamp=end - 31 * D,
                end_timestamp=end,
            )
        )
        assert_failure(
            api.get(
                "/api/data/",
                token,
                ROOT,
                tz=NY,
                granularity=granularity,
                start_timestamp=end - 31 * D - 1,
                end_timestamp=end,
            ),
            400,
            "31 days",
            "hourly rows",
        )
        # In STATS_TIMEZONE (and its UTC aliases) the daily rows serve a year.
        for tz in ("UTC", "Etc/UTC"):
            ok_data(
                api.get(
                    "/api/data/",
                    token,
                    ROOT,
                    tz=tz,
                    granularity=granularity,
                    start_timestamp=end - 366 * D,
                    end_timestamp=end,
                )
            )
    # Without a start the default range is cut to the limit rather than refused.
    ok_data(api.get("/api/data/", token, ROOT, tz=NY, granularity="month"))
