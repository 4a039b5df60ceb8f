"""granularity=week (from Monday) and granularity=month, summed from the daily rows in
STATS_TIMEZONE: bucket starts are the unix time of the local midnight starting the week
or month; ranges up to 366 days are served (the daily span limit).

The truth is a Python bucketing of the raw logs with zoneinfo (tests/api_support).
"""

from __future__ import annotations

import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from api.config import ApiLimits
from shared import aggregation as agg
from shared import models as m
from shared.config import Settings
from shared.rollup import rollup
from tests.api_support import add_rows, add_user, assert_failure, committed_logs, expected, make_api, ok_data, user_row
from tests.logdata import at, insert, log, utc

ROOT, ALICE, BOB = 3, 1, 2
D = 86400


@pytest.fixture(params=["UTC", "America/New_York", "Australia/Sydney"])
def year_of_logs(request, engine):
    """About 14 months of logs (two DST changes each way, a year boundary), rolled up
    in STATS_TIMEZONE, plus a few logs more that are not (the tail)."""
    tz = request.param
    tokens = {
        ROOT: add_user(engine, ROOT, "root", role=m.ROLE_ROOT),
        ALICE: add_user(engine, ALICE, "alice"),
        BOB: add_user(engine, BOB, "bob"),
    }
    names = {ROOT: "root", ALICE: "alice", BOB: "bob"}
    rnd = random.Random(2024)
    lo, hi = at(tz, 2024, 1, 1), at(tz, 2025, 3, 1)

    def some(n):
        out = []
        for _ in range(n):
            uid = rnd.choice((ALICE, ALICE, BOB, ROOT))
            out.append(
                log(
                    user_id=uid,
                    username=names[uid],
                    created_at=rnd.randrange(lo, hi),
                    model=rnd.choice(("gpt-4o", "claude", "deepseek")),
                    quota=rnd.randrange(0, 5000),
                    kind=m.LOG_CONSUME if rnd.random() < 0.9 else m.LOG_ERROR,
                )
            )
        return out

    insert(engine, some(1500))
    rollup(engine, Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=tz))
    insert(engine, some(40))
    return tz, make_api(engine, tz=tz), tokens


@pytest.mark.parametrize("granularity", ["week", "month"])
def test_weeks_and_months_equal_the_logs(engine, year_of_logs, granularity):
    tz, api, tokens = year_of_logs
    logs = committed_logs(engine)
    for start, end in (
        (at(tz, 2024, 1, 1), at(tz, 2024, 12, 31)),  # 366 days: the leap year
        (at(tz, 2024, 3, 15, 12), at(tz, 2024, 11, 20, 7)),  # cut inside buckets
        (at(tz, 2024, 12, 1), at(tz, 2025, 3, 1)),
    ):
        q = {"granularity": granularity, "start_timestamp": start, "end_timestamp": end}
        site = ok_data(api.get("/api/data/", tokens[ROOT], ROOT, **q))
        assert site == expected(logs, granularity, tz, start, end, site_wide=True) and site
        for uid, name in ((ALICE, "alice"), (BOB, "bob")):
            mine = ok_data(api.get("/api/data/self", tokens[uid], uid, **q))
            assert mine == expected(logs, granularity, tz, start, end, user_id=uid) and mine
            assert ok_data(api.get("/api/data/", tokens[ROOT], ROOT, username=name, **q)) == mine
        # Every bucket starts at local midnight of a Monday or of a 1st.
        zone = ZoneInfo(tz)
        for row in site:
            local = datetime.fromtimestamp(row["created_at"], zone)
            assert (local.hour, local.minute) == (0, 0)
            assert local.weekday() == 0 if granularity == "week" else local.day == 1
            assert start <= row["created_at"] <= end


def test_months_summed_from_the_daily_rows(engine):
    # Daily rows written directly, no logs: a month is the sum of its days' rows, the
    # largest username wins (as in the rollup), and a day of the next month stays out.
    tz = "America/New_York"
    token = add_user(engine, ROOT, "root", role=m.ROLE_ROOT)
    add_rows(
        engine,
        agg.daily_usage,
        [
            user_row(ROOT, at(tz, 2024, 11, 1), "a", "root", count=1, quota=10),
            user_row(ROOT, at(tz, 2024, 11, 3), "a", "root2", count=2, quota=20),  # the 25-hour day
            user_row(ROOT, at(tz, 2024, 11, 30), "a", "root", count=4, quota=40),
            user_row(ROOT, at(tz, 2024, 12, 1), "a", "root", count=8, quota=80),
        ],
    )
    add_rows(
        engine,
        agg.daily_model_usage,
        [
            {
                "created_at": at(tz, 2024, 11, 4),
                "model_name": "a",
                "count": 5,
                "quota": 1,
                "token_used": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
        ],
    )
    api = make_api(engine, tz=tz)
    q = {"granularity": "month", "start_timestamp": at(tz, 2024, 11, 1), "end_timestamp": at(tz, 2024, 11, 30)}
    assert [
        (r["created_at"], r["count"], r["quota"], r["username"])
        for r in ok_data(api.get("/api/data/self", token, ROOT, **q))
    ] == [(at(tz, 2024, 11, 1), 7, 70, "root2")]
    assert [(r["created_at"], r["count"]) for r in ok_data(api.get("/api/data/", token, ROOT, **q))] == [
        (at(tz, 2024, 11, 1), 5)
    ]
    # Weeks: Monday 2024-10-28 holds Nov 1 and 3; Monday Nov 25 holds Nov 30 and Dec 1.
    q = {"granularity": "week", "start_timestamp": at(tz, 2024, 10, 28), "end_timestamp": at(tz, 2024, 12, 1)}
    assert [(r["created_at"], r["count"]) for r in ok_data(api.get("/api/data/self", token, ROOT, **q))] == [
        (at(tz, 2024, 10, 28), 3),
        (at(tz, 2024, 11, 25), 12),
    ]


@pytest.mark.parametrize("granularity", ["week", "month"])
def test_span_limit_is_the_daily_one(sqlite_engine, granularity):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = make_api(sqlite_engine, limits=ApiLimits(31, 366))
    end = utc(2025, 6, 1)
    ok_data(
        api.get("/api/data/", token, ROOT, granularity=granularity, start_timestamp=end - 366 * D, end_timestamp=end)
    )
    assert_failure(
        api.get(
            "/api/data/", token, ROOT, granularity=granularity, start_timestamp=end - 366 * D - 1, end_timestamp=end
        ),
        400,
        "366 days",
        f"granularity={granularity}",
    )


def test_default_ranges(sqlite_engine):
    # No start: 12 weeks of weeks, a year of months, ending now.
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = make_api(sqlite_engine)
    import time

    now = int(time.time())
    week = now - (now - 4 * D) % (7 * D)  # this UTC week's Monday (1970-01-05 was one)
    month = int(datetime.fromtimestamp(now, ZoneInfo("UTC")).replace(day=1, hour=0, minute=0, second=0).timestamp())
    add_rows(
        sqlite_engine,
        agg.daily_model_usage,
        [
            {
                "created_at": t,
                "model_name": name,
                "count": 1,
                "quota": 1,
                "token_used": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
            for t, name in (
                (week - 7 * D, "last-week"),
                (week - 100 * D, "100-days-ago"),
                (month - 400 * D, "400-days-ago"),
            )
        ],
    )
    weeks = ok_data(api.get("/api/data/", token, ROOT, granularity="week"))
    assert [r["model_name"] for r in weeks] == ["last-week"]
    months = ok_data(api.get("/api/data/", token, ROOT, granularity="month"))
    assert {r["model_name"] for r in months} == {"last-week", "100-days-ago"}


def test_week_and_month_timestamps_beyond_the_calendar_are_400(sqlite_engine):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = make_api(sqlite_engine)
    far = 2**63 - 1
    for granularity in ("week", "month"):
        assert_failure(
            api.get(
                "/api/data/", token, ROOT, granularity=granularity, start_timestamp=far - 10 * D, end_timestamp=far
            ),
            400,
            "end_timestamp",
        )
    # Hours and STATS_TIMEZONE days need no calendar: still served.
    ok_data(api.get("/api/data/", token, ROOT, granularity="day", start_timestamp=far - 10 * D, end_timestamp=far))
