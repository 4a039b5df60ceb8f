"""Days, weeks and months by key, channel or group come from hourly_detail_usage, whose
hours are cut at STATS_TIMEZONE's local midnights (issue 12, migration 0004).

Checked against a Python GROUP BY over the raw logs, on SQLite and PostgreSQL:
- in zones whose midnight falls inside a UTC hour (India; Lord Howe, whose offset
  moves by half an hour), at every granularity;
- after retention compacted the old hours into whole days: days stay exact, hours before
  the horizon are answered by nobody (as the hourly tables, which retention drops), a
  late log into a compacted day is counted, a second retention run goes on from where
  the first stopped, and a re-aggregation over compacted days leaves them exact;
- across migration 0004, whose upgrade cuts the existing rows of a half-hour zone.
"""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from shared import aggregation as agg
from shared import models as m
from shared.config import Settings
from shared.migrate import MIGRATIONS, upgrade
from shared.ops import fill_added_summaries
from shared.retention import run_retention
from shared.rollup import reaggregate, rollup
from tests.api_support import add_user, bucket_of, committed_logs, make_api, ok_data
from tests.logdata import DETAIL_KEY, HOUR, actual_tables, at, diff, expected_tables, insert, log

DAY = 86400
ROOT = 1
BY = ("token_id", "channel_id", "use_group")


def settings(engine, tz: str, **kw) -> Settings:
    return Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=tz, **kw)


def random_logs(rnd: random.Random, n: int, lo: int, hi: int) -> list[dict]:
    return [
        log(
            user_id=rnd.choice((2, 3)),
            created_at=rnd.randrange(lo, hi),
            model=rnd.choice(("gpt-4o", "claude")),
            quota=rnd.randrange(1, 5000),
            token_id=rnd.choice((20, 21, 30)),
            channel=rnd.choice((1, 2)),
            group=rnd.choice(("default", "vip")),
        )
        for _ in range(n)
    ]


def truth(engine, granularity: str, tz: str, start: int, end: int, hours_from: int | None = None) -> dict:
    """{(bucket, key, channel, group): (count, quota)} over the committed consume logs
    whose bucket starts in [start, end] (and, for hours, whose log is at or after
    `hours_from`)."""
    out: dict = {}
    for lg in committed_logs(engine):
        if lg["type"] != m.LOG_CONSUME:
            continue
        if hours_from is not None and lg["created_at"] < hours_from:
            continue
        bucket = bucket_of(lg["created_at"], granularity, tz)
        if not start <= bucket <= end:
            continue
        key = (bucket, lg["token_id"], lg["channel_id"], lg["group"])
        count, quota = out.get(key, (0, 0))
        out[key] = (count + 1, quota + lg["quota"])
    return out


def answered(api, token: str, granularity: str, start: int, end: int, tz: str | None = None) -> dict:
    params = {
        "group_by": "token,channel,group",
        "granularity": granularity,
        "start_timestamp": start,
        "end_timestamp": end,
    }
    if tz is not None:
        params["tz"] = tz
    rows = ok_data(api.get("/api/data/", token, ROOT, **params))
    return {(r["created_at"], *(r[d] for d in BY)): (r["count"], r["quota"]) for r in rows}


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "Australia/Lord_Howe"])
def test_days_by_key_in_a_zone_cut_inside_the_hour_equal_the_logs(engine, tz):
    token = add_user(engine, ROOT, "root", role=m.ROLE_ROOT)
    lo, hi = at(tz, 2024, 3, 28), at(tz, 2024, 4, 12)  # Lord Howe leaves daylight time on April 7
    rnd = random.Random(5)
    logs = random_logs(rnd, 500, lo, hi)
    # Minutes either side of local midnights, which fall inside UTC hours there.
    logs += [log(created_at=at(tz, 2024, 4, d, 0, 0) + s, token_id=20) for d in range(1, 11) for s in (-61, 0, 59)]
    insert(engine, logs[:400])
    rollup(engine, settings(engine, tz), wait=True)
    insert(engine, logs[400:])  # the rest only in the real-time tail
    api = make_api(engine, tz=tz)
    for granularity in ("hour", "day", "week", "month"):
        want = truth(engine, granularity, tz, lo - 40 * DAY, hi)
        assert sum(c for c, _ in want.values()) == len(logs)
        assert answered(api, token, granularity, lo - 40 * DAY if granularity != "hour" else lo, hi) == (
            want if granularity != "hour" else truth(engine, "hour", tz, lo, hi)
        ), granularity
    rollup(engine, settings(engine, tz), wait=True)
    assert diff(expected_tables(engine, tz), actual_tables(engine)) == ""


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "UTC"])
def test_retention_compacts_old_detail_hours_into_exact_days(engine, tz):
    token = add_user(engine, ROOT, "root", role=m.ROLE_ROOT)
    now = at(tz, 2024, 6, 20, 15, 10)
    lo = now - 14 * DAY
    rnd = random.Random(8)
    insert(engine, random_logs(rnd, 600, lo, now))
    s = settings(engine, tz)
    kept = settings(engine, tz, retain_hourly_days=5)
    rollup(engine, s, wait=True)
    api = make_api(engine, tz=tz)
    before = {g: answered(api, token, g, lo - 40 * DAY, now) for g in ("day", "week", "month")}

    first = run_retention(engine, kept, now=now)
    assert first.compacted["hourly_detail_usage"] > 0 and "hourly_detail_usage" not in first.deleted
    horizon = first.hourly_before
    assert horizon is not None
    with engine.connect() as conn:
        detail = agg.hourly_detail_usage.c
        old = conn.execute(sa.select(detail.created_at).where(detail.created_at < horizon)).scalars().all()
    # Before the horizon's local day the rows are whole days; from it on, cut hours.
    horizon_day = bucket_of(horizon, "day", tz)
    assert old and all(bucket_of(t, "day", tz) == t for t in old if t < horizon_day)
    assert any(t % HOUR == 0 and bucket_of(t, "day", tz) != t for t in old if t >= horizon_day)

    def check(where: str) -> None:
        for g in ("day", "week", "month"):
            assert answered(api, token, g, lo - 40 * DAY, now) == truth(engine, g, tz, lo - 40 * DAY, now), (where, g)
        # Hours only from the horizon on, in the rows and in the tail alike.
        assert answered(api, token, "hour", lo, now) == truth(engine, "hour", tz, lo, now, hours_from=horizon), where
        # Days in another zone are summed from hours: none before the horizon either.
        other = answered(api, token, "day", lo, now, tz="Asia/Shanghai")
        assert other == truth(engine, "day", "Asia/Shanghai", lo, now, hours_from=horizon), where

    assert {g: answered(api, token, g, lo - 40 * DAY, now) for g in before} == before
    check("after compaction")

    late = [log(created_at=lo + 2 * DAY + 3 * HOUR + 7, token_id=30, quota=777, user_id=3)]
    insert(engine, late)
    check("a late log in a compacted day, in the tail")
    rollup(engine, s, wait=True)
    check("a late log in a compacted day, rolled up")

    second = run_retention(engine, kept, now=now + 2 * DAY)
    assert second.compacted["hourly_detail_usage"] > 0
    horizon = second.hourly_before
    assert horizon is not None
    check("after a second retention run")

    reaggregate(engine, s, lo, now)
    check("after re-aggregating compacted days")


def test_upgrading_across_0004_cuts_the_hours_of_a_half_hour_zone(engine):
    tz = "Asia/Kolkata"
    s = settings(engine, tz)
    rnd = random.Random(13)
    logs = random_logs(rnd, 300, at(tz, 2024, 5, 1), at(tz, 2024, 5, 6))
    logs += [log(created_at=at(tz, 2024, 5, d) + sec) for d in (2, 3, 4) for sec in (-30, 30)]
    insert(engine, logs)
    rollup(engine, s, wait=True)
    want = expected_tables(engine, tz)
    hourly = expected_tables(engine, "UTC")["hourly_detail_usage"]  # as revision 0003 built them
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
        detail = agg.hourly_detail_usage
        conn.execute(sa.delete(detail))
        conn.execute(
            sa.insert(detail),
            [
                {**dict(zip(DETAIL_KEY, key, strict=True)), **dict(zip(agg.MEASURE_NAMES, v, strict=True))}
                for key, v in hourly.items()
            ],
        )
    assert diff({"hourly_detail_usage": want["hourly_detail_usage"]}, actual_tables(engine)) != ""
    upgraded = upgrade(engine)
    assert upgraded.cut_detail_hours and not upgraded.added_summaries
    assert fill_added_summaries(engine, s, upgraded) is not None
    assert diff(want, actual_tables(engine)) == ""
    # In a zone whose midnights are on the hour there is nothing to cut, and nothing runs.
    assert fill_added_summaries(engine, settings(engine, "Asia/Shanghai"), upgraded) is None
