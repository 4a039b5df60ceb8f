"""The rollup's rules, one at a time, on SQLite (and, where the SQL differs, on
PostgreSQL too through the `engine` fixture).

Every test compares the four summary tables with a GROUP BY over the raw committed
consume logs computed in Python (tests/logdata.py), or with hand-computed numbers.

Several tests began as strict xfails documenting bugs found here (a time zone missing
from the SQL cache key, the second of two midnights on PostgreSQL, the hour straddling
a half-hour zone's day, usernames differing between ticks and re-aggregation, a log
without created_at stopping the rollup); they now guard the fixes.
"""

from __future__ import annotations

import random
import time
from datetime import UTC

import pytest
import sqlalchemy as sa

from shared import aggregation as agg
from shared import models as m
from shared.config import Settings
from shared.rollup import RollupError, reaggregate, rollup, tick
from tests.logdata import (
    DETAIL_TABLES,
    HOUR,
    SUMMARY_TABLES,
    actual_tables,
    assert_exact,
    at,
    day_bounds,
    day_of,
    diff,
    expected_tables,
    hour_of,
    insert,
    last_log_id,
    log,
    totals,
    utc,
)


def cfg(engine, tz="UTC", **kw) -> Settings:
    return Settings(database_url=str(engine.url), stats_timezone=tz, **kw)


def accepted_zones() -> list[str]:
    """Every zone of the zone database that STATS_TIMEZONE accepts."""
    import zoneinfo

    from shared.config import ConfigError

    accepted = []
    for name in sorted(zoneinfo.available_timezones()):
        try:
            accepted.append(Settings.from_env({"STATS_TIMEZONE": name}).stats_timezone)
        except ConfigError:
            pass
    return accepted


def keys(engine, table):
    return sorted(actual_tables(engine)[table])


def random_logs(rnd: random.Random, n: int, lo: int, hi: int, users=(1, 2, 3), models=("gpt-4o", "claude", "")):
    kinds = [m.LOG_CONSUME] * 4 + [m.LOG_TOPUP, m.LOG_MANAGE, m.LOG_ERROR, m.LOG_REFUND]
    return [
        log(
            user_id=rnd.choice(users),
            created_at=rnd.randrange(lo, hi),
            model=rnd.choice(models),
            kind=rnd.choice(kinds),
            quota=rnd.randrange(0, 5000),
        )
        for _ in range(n)
    ]


# --- what counts --------------------------------------------------------------------


def test_empty_database_tick_changes_nothing(engine):
    r = tick(engine, cfg(engine))
    assert (r.logs, r.last_log_id, r.skipped) == (0, 0, False)
    assert actual_tables(engine) == {t: {} for t in (*SUMMARY_TABLES, *DETAIL_TABLES)}


def test_only_consume_logs_count(engine):
    t = utc(2024, 5, 10, 12, 0)
    rows = [log(created_at=t + k, kind=kind, quota=1000 + kind) for k, kind in enumerate(range(0, 8))]
    insert(engine, rows)
    r = rollup(engine, cfg(engine))
    assert r.logs == 1
    assert r.last_log_id == 8  # the watermark passes the other types too
    assert totals(engine) == (1, 1000 + m.LOG_CONSUME)
    assert totals(engine, "daily_model_usage") == (1, 1000 + m.LOG_CONSUME)
    assert_exact(engine, "UTC")


def test_only_non_consume_logs_still_advance_the_watermark(engine):
    insert(engine, [log(kind=m.LOG_TOPUP), log(kind=m.LOG_ERROR)])
    r = tick(engine, cfg(engine))
    assert (r.logs, r.last_log_id) == (0, 2)
    assert last_log_id(engine) == 2
    assert totals(engine) == (0, 0)


def test_measures_and_nulls(engine):
    t = utc(2024, 5, 10, 12, 0)
    insert(
        engine,
        [
            log(user_id=7, created_at=t, quota=11, prompt=100, completion=20),
            log(user_id=7, created_at=t + 60, quota=22, prompt=1, completion=2),
            # NULL user, model and measures count as 0 / '' (new-api never writes them, but the
            # columns are nullable)
            log(user_id=None, created_at=t, model=None, quota=None, prompt=None, completion=None, username=None)
            | {"quota": None, "prompt_tokens": None, "completion_tokens": None, "username": None},
        ],
    )
    rollup(engine, cfg(engine))
    hourly = actual_tables(engine)["hourly_usage"]
    assert hourly[(7, t, "gpt-4o")] == (2, 33, 123, 101, 22, "u7")
    assert hourly[(0, t, "")] == (1, 0, 0, 0, 0, "")
    assert_exact(engine, "UTC")


# --- buckets -------------------------------------------------------------------------


def test_hour_bucket_is_created_at_minus_created_at_mod_3600(engine):
    base = utc(2024, 5, 10, 0, 0)
    stamps = [base, base + 1, base + HOUR - 1, base + HOUR, base + 5 * HOUR + 1234, base + 23 * HOUR + 3599]
    insert(engine, [log(created_at=s) for s in stamps])
    rollup(engine, cfg(engine))
    assert keys(engine, "hourly_model_usage") == [
        (h, "gpt-4o") for h in (base, base + HOUR, base + 5 * HOUR, base + 23 * HOUR)
    ]
    counts = {k[0]: v[0] for k, v in actual_tables(engine)["hourly_model_usage"].items()}
    assert counts == {base: 3, base + HOUR: 1, base + 5 * HOUR: 1, base + 23 * HOUR: 1}
    assert_exact(engine, "UTC")


def test_daily_bucket_utc(engine):
    d = utc(2024, 5, 10)
    insert(engine, [log(created_at=d), log(created_at=d + 86399), log(created_at=d + 86400), log(created_at=d - 1)])
    rollup(engine, cfg(engine))
    counts = {k[0]: v[0] for k, v in actual_tables(engine)["daily_model_usage"].items()}
    assert counts == {d - 86400: 1, d: 2, d + 86400: 1}
    assert_exact(engine, "UTC")


def test_daily_bucket_asia_shanghai(engine):
    tz = "Asia/Shanghai"  # UTC+8, no daylight saving
    day = utc(2024, 5, 9, 16, 0)  # 2024-05-10 00:00 CST
    assert at(tz, 2024, 5, 10) == day
    insert(
        engine,
        [
            log(created_at=day - 1),  # 2024-05-09 23:59:59 CST
            log(created_at=day),  # 2024-05-10 00:00 CST
            log(created_at=utc(2024, 5, 10, 15, 59, 59)),  # 23:59:59 CST, still May 10
            log(created_at=utc(2024, 5, 10, 16, 0)),  # May 11 CST
        ],
    )
    rollup(engine, cfg(engine, tz))
    counts = {k[0]: v[0] for k, v in actual_tables(engine)["daily_model_usage"].items()}
    assert counts == {day - 86400: 1, day: 2, day + 86400: 1}
    assert_exact(engine, tz)


@pytest.mark.parametrize("date, hours", [((2024, 3, 10), 23), ((2024, 11, 3), 25)])
def test_daily_bucket_new_york_across_dst_change(engine, date, hours):
    tz = "America/New_York"
    day = at(tz, *date)
    nxt = at(tz, *date[:2], date[2] + 1)
    assert nxt - day == hours * HOUR
    stamps = [day, day + 1, at(tz, *date, 1, 59, 59), at(tz, *date, 3, 0), at(tz, *date, 12, 0), nxt - 1]
    if hours == 25:
        stamps.append(at(tz, *date, 1, 30, fold=1))  # the repeated hour, second time
    insert(engine, [log(created_at=s) for s in stamps] + [log(created_at=day - 1), log(created_at=nxt)])
    rollup(engine, cfg(engine, tz))
    counts = {k[0]: v[0] for k, v in actual_tables(engine)["daily_model_usage"].items()}
    assert counts[day] == len(stamps)
    assert counts[nxt] == 1
    assert len(counts) == 3
    assert_exact(engine, tz)
    # and re-aggregating that day changes nothing
    reaggregate(engine, cfg(engine, tz), day + 5 * HOUR, day + 6 * HOUR)
    assert_exact(engine, tz)


def test_daily_bucket_america_havana_midnight_repeated_sqlite(sqlite_engine):
    """Cuba falls back at 01:00 CDT to 00:00 CST: midnight happens twice. The day starts at
    the first one (the first instant of the local date)."""
    _havana_fall_back(sqlite_engine)


@pytest.mark.integration
def test_daily_bucket_america_havana_midnight_repeated_postgres(pg_engine):
    _havana_fall_back(pg_engine)


def test_daily_bucket_america_nuuk_spring_forward_from_23h_sqlite(sqlite_engine):
    """Greenland (since 2024) springs forward from Saturday 23:00 -02 to Sunday 00:00 -01:
    23:00 is skipped, midnight exists once and starts the day."""
    _nuuk_spring_forward(sqlite_engine)


@pytest.mark.integration
def test_daily_bucket_america_nuuk_spring_forward_from_23h_postgres(pg_engine):
    _nuuk_spring_forward(pg_engine)


def _nuuk_spring_forward(engine):
    tz = "America/Nuuk"
    day = at(tz, 2024, 3, 31)  # 00:00 -01 = 01:00 UTC
    assert day == utc(2024, 3, 31, 1)
    insert(engine, [log(created_at=day + 600), log(created_at=day + 5 * HOUR), log(created_at=day - 600)])
    rollup(engine, cfg(engine, tz))
    assert keys(engine, "daily_model_usage") == [(at(tz, 2024, 3, 30), "gpt-4o"), (day, "gpt-4o")]
    assert_exact(engine, tz)


# Zones chosen for every kind of change: DST at 02:00 (New York, London), half-hour DST
# (Lord Howe), negative DST (Dublin), midnight skipped (Beirut, Santiago, Asuncion),
# midnight twice (Havana, Amman, Gaza), 23:00 skipped (Nuuk, Scoresbysund), Newfoundland's
# 00:01 changes, a whole day skipped (Apia), a half-hour fall-back at midnight
# (Pyongyang 2015), 23:00 DST start (Dhaka 2009), Ramadan DST (Casablanca). Each of the
# two midnight kinds was once wrong on PostgreSQL (BUG-3, then BUG-6), now fixed.
DAY_START_ZONES = [
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Europe/Dublin",
    "Asia/Beirut",
    "America/Santiago",
    "America/Asuncion",
    "America/Havana",
    "Asia/Amman",
    "Asia/Gaza",
    "America/St_Johns",
    "Africa/Casablanca",
    "Asia/Tehran",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/Nuuk",
    "America/Scoresbysund",
    "Pacific/Apia",
    "Asia/Pyongyang",
    "Asia/Dhaka",
    # a midnight repeated by two hours (Chita, Magadan 2014) or thirty minutes (Colombo 2006): BUG-10
    "Asia/Chita",
    "Asia/Magadan",
    "Asia/Colombo",
]


@pytest.mark.integration
@pytest.mark.parametrize("tz", DAY_START_ZONES)
def test_postgres_day_start_equals_python_around_every_offset_change(pg_engine, tz):
    """PostgreSQL's day_start (ticks) must agree with shared.buckets.local_midnight (the day
    ranges of re-aggregation, and SQLite's buckets) everywhere near an offset change,
    2000-2026; where they disagree, re-aggregation can drop logs (see the CET test)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from shared.buckets import day_start, local_midnight

    # three ordinary days (for zones that no longer change), and 30 h around every change
    zone, points, previous = ZoneInfo(tz), set(range(utc(2024, 6, 1), utc(2024, 6, 4), 900)), None
    for t in range(utc(2000, 1, 1), utc(2027, 1, 1), 3 * HOUR):
        offset = datetime.fromtimestamp(t, UTC).astimezone(zone).utcoffset()
        if previous is not None and offset != previous:
            points.update(range(t - 30 * HOUR, t + 30 * HOUR, 900))
        previous = offset
    stamps = sa.func.unnest(sa.cast(sa.literal(sorted(points), sa.ARRAY(sa.BigInteger)), sa.ARRAY(sa.BigInteger)))
    x = stamps.table_valued(sa.column("x", sa.BigInteger)).render_derived().c.x
    query = sa.select(x, day_start(x, tz))
    with pg_engine.connect() as conn:
        rows = conn.execute(query).all()
    assert len(rows) == len(points)
    wrong = [
        (ts, datetime.fromtimestamp(ts, zone).isoformat(), pg, local_midnight(ts, tz))
        for ts, pg in rows
        if pg != local_midnight(ts, tz)
    ]
    assert not wrong, f"{len(wrong)} instants differ (ts, local, postgres, python), e.g. {wrong[:3]}"


def _instants_around_every_offset_change(tz, start=None, end=None):
    """Three ordinary days (for zones that no longer change), and 30 h around every change
    of `tz`'s offset in [start, end) (2000-2027 by default), every 15 minutes."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    zone, points, previous = ZoneInfo(tz), set(range(utc(2024, 6, 1), utc(2024, 6, 4), 900)), None
    for t in range(start or utc(2000, 1, 1), end or utc(2027, 1, 1), 3 * HOUR):
        offset = datetime.fromtimestamp(t, UTC).astimezone(zone).utcoffset()
        if previous is not None and offset != previous:
            points.update(range(t - 30 * HOUR, t + 30 * HOUR, 900))
        previous = offset
    return sorted(points)


def _mysql_buckets(engine, stamps, tz):
    """(ts, day_start, period_start week, period_start month) of every instant, on MySQL."""
    from shared.buckets import day_start, period_start

    with engine.connect() as conn:
        conn.exec_driver_sql("DROP TEMPORARY TABLE IF EXISTS instants")
        conn.exec_driver_sql("CREATE TEMPORARY TABLE instants (x BIGINT PRIMARY KEY)")
        conn.execute(sa.text("INSERT INTO instants (x) VALUES (:x)"), [{"x": t} for t in stamps])
        x = sa.table("instants", sa.column("x", sa.BigInteger)).c.x
        return conn.execute(
            sa.select(x, day_start(x, tz), period_start(x, tz, "week"), period_start(x, tz, "month")).order_by(x)
        ).all()


@pytest.mark.integration
@pytest.mark.parametrize("tz", DAY_START_ZONES)
def test_mariadb_buckets_equal_python_around_every_offset_change(mysql_engine, tz):
    """MySQL's day, week and month starts, computed from the offsets written into the
    statement (no time zone tables on the server), equal zoneinfo's (SQLite's and the
    re-aggregation's) near every offset change from 1970 to 2100, and at random instants."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from shared.buckets import local_midnight, local_period_start

    rnd = random.Random(tz)
    stamps = set(_instants_around_every_offset_change(tz, utc(1970, 1, 2), utc(2100, 1, 1)))
    stamps.update(rnd.randrange(0, utc(2100, 1, 1)) for _ in range(2000))
    rows = _mysql_buckets(mysql_engine, sorted(stamps), tz)
    assert len(rows) == len(stamps)
    zone = ZoneInfo(tz)
    wrong = [
        (ts, datetime.fromtimestamp(ts, zone).isoformat(), got)
        for ts, *got in rows
        if got != [local_midnight(ts, tz), local_period_start(ts, tz, "week"), local_period_start(ts, tz, "month")]
    ]
    assert not wrong, f"{len(wrong)} instants differ (ts, local, mysql day/week/month), e.g. {wrong[:3]}"


@pytest.mark.integration
def test_mariadb_buckets_of_every_tenth_accepted_zone(mysql_engine):
    """Zones of every kind bucket alike on MySQL and in Python, in every season of 2024."""

    from shared.buckets import local_midnight, local_period_start

    accepted = accepted_zones()
    stamps = [utc(2024, month, d, h) for month in (1, 3, 4, 7, 10, 11) for d in (1, 15, 28) for h in (0, 12)]
    wrong = []
    for name in accepted[::10]:
        for ts, *got in _mysql_buckets(mysql_engine, stamps, name):
            want = [
                local_midnight(ts, name),
                local_period_start(ts, name, "week"),
                local_period_start(ts, name, "month"),
            ]
            if got != want:
                wrong.append((name, ts, got, want))
    assert not wrong, f"{len(wrong)} differ: {wrong[:5]}"


@pytest.mark.parametrize("tz", ["CET", "EET", "MET", "WET"])
def test_zone_names_postgres_reads_as_abbreviations_are_refused(tz):
    """BUG-7 (fixed in configuration): PostgreSQL reads AT TIME ZONE 'CET' as the
    fixed-offset abbreviation, zoneinfo as a zone with daylight saving; on PostgreSQL
    re-aggregation then dropped the logs of 00:00-01:00 CEST from the daily tables."""
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="Region/City"):
        Settings.from_env({"STATS_TIMEZONE": tz})
    assert Settings.from_env({"STATS_TIMEZONE": "Europe/Paris"}).stats_timezone == "Europe/Paris"


@pytest.mark.integration
def test_every_accepted_zone_name_gets_the_same_days_on_postgres(pg_engine):
    """Any STATS_TIMEZONE that configuration accepts is bucketed alike by PostgreSQL and by
    Python (SQLite, re-aggregation's day ranges), in every season of 2024."""

    from shared.buckets import day_start, local_midnight

    accepted = accepted_zones()
    assert "America/New_York" in accepted and "CET" not in accepted
    stamps = [utc(2024, month, 15, 12) for month in (1, 4, 7, 10)]
    wrong = []
    with pg_engine.connect() as conn:
        for name in accepted:
            try:
                got = conn.execute(sa.select(*(day_start(sa.literal(t, sa.BigInteger), name) for t in stamps))).one()
            except sa.exc.DBAPIError as exc:  # a name PostgreSQL does not know at all
                conn.rollback()
                wrong.append((name, str(exc.orig).splitlines()[0]))
                continue
            if list(got) != [local_midnight(t, name) for t in stamps]:
                wrong.append((name, list(got)))
    assert not wrong, f"{len(wrong)} accepted zone names bucket differently on PostgreSQL: {wrong[:10]}"


def _havana_fall_back(engine):
    tz = "America/Havana"
    first = at(tz, 2024, 11, 3, 0, 0, fold=0)  # 00:00 CDT = 04:00 UTC
    assert first == utc(2024, 11, 3, 4)
    insert(engine, [log(created_at=first + 600), log(created_at=first + HOUR + 600), log(created_at=first + 5 * HOUR)])
    rollup(engine, cfg(engine, tz))
    assert keys(engine, "daily_model_usage") == [(first, "gpt-4o")]
    assert_exact(engine, tz)


# --- late timestamps and batching --------------------------------------------------------


def test_old_timestamps_land_in_long_rolled_up_buckets(engine):
    tz = "America/New_York"
    s = cfg(engine, tz)
    old = at(tz, 2024, 1, 15, 10, 20)
    recent = at(tz, 2024, 6, 1, 9, 0)
    insert(engine, [log(user_id=1, created_at=old, quota=5), log(user_id=1, created_at=recent, quota=6)])
    rollup(engine, s)
    for _ in range(3):  # many ticks later
        insert(engine, [log(user_id=2, created_at=recent + 3600)])
        rollup(engine, s)
    before = actual_tables(engine)["hourly_usage"][(1, old - old % HOUR, "gpt-4o")]
    # a log written now with a five-month-old created_at (same hour, same user, same model)
    insert(engine, [log(user_id=1, created_at=old + 100, quota=1000), log(user_id=3, created_at=old - 86400 * 40)])
    r = rollup(engine, s)
    assert r.logs == 2
    after = actual_tables(engine)["hourly_usage"][(1, old - old % HOUR, "gpt-4o")]
    assert after[0] == before[0] + 1 and after[1] == before[1] + 1000
    assert_exact(engine, tz)


def test_small_batches_give_the_same_totals(engine):
    rnd = random.Random(7)
    rows = random_logs(rnd, 230, utc(2024, 3, 1), utc(2024, 3, 20))
    insert(engine, rows)
    s = cfg(engine, "America/New_York", rollup_batch_size=7)
    one = tick(engine, s)
    assert one.more and one.last_log_id == 7
    assert one.logs == sum(1 for r in rows[:7] if r["type"] == m.LOG_CONSUME)
    r = rollup(engine, s)
    assert r.batches >= (230 - 7) // 7
    assert r.last_log_id == 230 and not tick(engine, s).more
    assert_exact(engine, "America/New_York")


def test_batch_size_one(engine):
    rnd = random.Random(8)
    insert(engine, random_logs(rnd, 25, utc(2024, 3, 9), utc(2024, 3, 12)))
    s = cfg(engine, "America/New_York", rollup_batch_size=1)
    r = rollup(engine, s)
    assert r.batches == 26  # 25 full batches, then an empty one
    assert_exact(engine, "America/New_York")


def test_rollup_stops_after_max_seconds_and_reports_the_backlog(engine):
    import time as _time

    s = cfg(engine, rollup_batch_size=2)
    old = int(_time.time()) - 7200
    insert(engine, [log(created_at=old + k) for k in range(7)])
    r = rollup(engine, s, max_seconds=0)  # one batch, then out of time
    assert (r.batches, r.logs, r.last_log_id, r.logs_behind) == (1, 2, 2, 5)
    assert r.lag_seconds >= 7200 - 2 - 60  # the oldest waiting log is two hours old
    r = rollup(engine, s)
    assert (r.logs, r.logs_behind, r.lag_seconds) == (5, 0, 0)
    assert_exact(engine, "UTC")


# --- re-aggregation ---------------------------------------------------------------------


def _corrupt(engine, factor=3, *, finest=True):
    """Wrong sums in every summary table (or, not `finest`, in all but the finest)."""
    with engine.begin() as conn:
        for t in (s.table for s in agg.SUMMARIES[0 if finest else 1 :]):
            conn.execute(sa.update(t).values(quota=t.c.quota * factor + 1, count=t.c.count + 1))


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Shanghai"])
def test_reaggregate_is_idempotent_and_equals_group_by(engine, tz):
    rnd = random.Random(tz)
    lo, hi = at(tz, 2024, 3, 5), at(tz, 2024, 3, 15)
    insert(engine, random_logs(rnd, 300, lo, hi))
    s = cfg(engine, tz, reaggregate_chunk_days=rnd.choice([1, 3]))
    rollup(engine, s)
    truth = assert_exact(engine, tz)
    r = reaggregate(engine, s, lo, hi)
    assert r.logs == sum(v[0] for v in truth["daily_model_usage"].values())
    assert_exact(engine, tz, where="after one re-aggregation")
    reaggregate(engine, s, lo, hi)
    assert_exact(engine, tz, where="after two re-aggregations")
    # start/end in the middle of days: still whole local days, rows rebuilt from scratch
    _corrupt(engine)
    reaggregate(engine, s, lo + 7 * HOUR, hi - 5 * HOUR)
    assert_exact(engine, tz, where="after re-aggregating corrupted rows")
    # Only the tables summed from the finest one corrupted (by hand: the rollup writes
    # them all in one transaction): a re-aggregation compares the finest with the logs
    # and finds nothing to change; checking every table repairs them.
    _corrupt(engine, finest=False)
    reaggregate(engine, s, lo, hi)
    assert diff(expected_tables(engine, tz), actual_tables(engine)) != ""
    reaggregate(engine, s, lo, hi, check_every_table=True)
    assert_exact(engine, tz, where="after checking every table")
    for user in (1, 2, 3):
        reaggregate(engine, s, lo, hi, user_id=user)
        assert_exact(engine, tz, where=f"after re-aggregating user {user}")


def test_reaggregate_one_user_leaves_other_users_alone(engine):
    tz = "Asia/Shanghai"
    s = cfg(engine, tz)
    t = at(tz, 2024, 5, 10, 9)
    ids = insert(
        engine,
        [
            log(user_id=1, created_at=t, quota=10),
            log(user_id=2, created_at=t, quota=20),
            log(user_id=2, created_at=t + 60, quota=40, model="claude"),
        ],
    )
    rollup(engine, s)
    with engine.begin() as conn:
        conn.execute(sa.update(m.logs).where(m.logs.c.id.in_(ids)).values(quota=m.logs.c.quota + 1))
    lo, hi = day_bounds(t, tz)
    reaggregate(engine, s, lo, hi, user_id=1)
    tables = actual_tables(engine)
    h = t - t % HOUR
    assert tables["hourly_usage"][(1, h, "gpt-4o")][1] == 11  # refreshed
    assert tables["hourly_usage"][(2, h, "gpt-4o")][1] == 20  # not this user's: untouched
    assert tables["daily_usage"][(2, lo, "claude")][1] == 40
    # the site-wide rows are the sum of the per-user rows as they now are
    assert tables["hourly_model_usage"][(h, "gpt-4o")][1] == 31
    assert tables["daily_model_usage"][(lo, "claude")][1] == 40
    reaggregate(engine, s, lo, hi, user_id=2)
    assert_exact(engine, tz)


def test_reaggregate_reflects_edited_and_deleted_raw_logs(engine):
    tz = "America/New_York"
    s = cfg(engine, tz)
    rnd = random.Random(11)
    lo, hi = at(tz, 2024, 11, 1), at(tz, 2024, 11, 6)  # spans the 25-hour day
    insert(engine, random_logs(rnd, 200, lo, hi))
    rollup(engine, s)
    assert_exact(engine, tz)
    with engine.begin() as conn:
        lg = m.logs.c
        ids = [r.id for r in conn.execute(sa.select(lg.id).where(lg.type == m.LOG_CONSUME).order_by(lg.id))]
        conn.execute(sa.delete(m.logs).where(lg.id.in_(ids[:20])))
        conn.execute(sa.update(m.logs).where(lg.id.in_(ids[20:40])).values(quota=lg.quota + 7, prompt_tokens=1))
        conn.execute(sa.update(m.logs).where(lg.id.in_(ids[40:50])).values(type=m.LOG_ERROR))
        conn.execute(sa.update(m.logs).where(lg.id.in_(ids[50:60])).values(model_name="renamed"))
        conn.execute(sa.update(m.logs).where(lg.type == m.LOG_TOPUP).values(type=m.LOG_CONSUME))
        # moved to another day inside the range
        conn.execute(sa.update(m.logs).where(lg.id.in_(ids[60:70])).values(created_at=lg.created_at + 86400))
    assert diff(expected_tables(engine, tz), actual_tables(engine))  # stale now
    # moved logs may land one day past `hi`: re-aggregate the days of both old and new places
    reaggregate(engine, s, lo, hi + 86400)
    assert_exact(engine, tz, where="after re-aggregating the edited range")
    # and the ticks that follow add only new logs
    insert(engine, random_logs(rnd, 30, lo, hi))
    rollup(engine, s)
    assert_exact(engine, tz, where="after more ticks")


def test_reaggregate_only_touches_its_range(engine):
    s = cfg(engine)
    d1, d2 = utc(2024, 5, 10), utc(2024, 5, 11)
    ids = insert(engine, [log(created_at=d1 + 100, quota=1), log(created_at=d2 + 100, quota=2)])
    rollup(engine, s)
    with engine.begin() as conn:
        conn.execute(sa.update(m.logs).values(quota=50))
    reaggregate(engine, s, d2, d2 + 1)
    tables = actual_tables(engine)
    assert tables["daily_usage"][(1, d1, "gpt-4o")][1] == 1  # outside: stale, untouched
    assert tables["daily_usage"][(1, d2, "gpt-4o")][1] == 50
    assert tables["hourly_model_usage"][(d1, "gpt-4o")][1] == 1
    assert tables["hourly_model_usage"][(d2, "gpt-4o")][1] == 50
    assert ids == [1, 2]


def test_reaggregate_does_not_count_logs_the_ticks_have_not_reached(engine):
    """Logs above the watermark belong to the next tick: a re-aggregation that counted them
    would make that tick count them twice."""
    s = cfg(engine, "Asia/Shanghai")
    t = at("Asia/Shanghai", 2024, 5, 10, 9)
    insert(engine, [log(created_at=t)])
    rollup(engine, s)
    insert(engine, [log(created_at=t + 10), log(created_at=t + 20, user_id=5)])
    lo, hi = day_bounds(t, "Asia/Shanghai")
    r = reaggregate(engine, s, lo, hi)
    assert r.logs == 1
    assert totals(engine) == (1, actual_tables(engine)["hourly_usage"][(1, t - t % HOUR, "gpt-4o")][1])
    rollup(engine, s)
    assert_exact(engine, "Asia/Shanghai")


def test_reaggregate_rejects_an_empty_range(sqlite_engine):
    with pytest.raises(ValueError):
        reaggregate(sqlite_engine, cfg(sqlite_engine), 100, 100)


def test_reaggregate_before_any_tick(engine):
    insert(engine, [log(created_at=utc(2024, 5, 10, 3))])
    reaggregate(engine, cfg(engine), utc(2024, 5, 10), utc(2024, 5, 11))
    assert totals(engine) == (0, 0)  # nothing counted yet
    rollup(engine, cfg(engine))
    assert_exact(engine, "UTC")


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns"])
def test_reaggregate_rebuilds_the_straddling_last_hour_of_a_half_hour_zone(engine, tz):
    s = cfg(engine, tz)
    late = at(tz, 2024, 5, 10, 23, 50)  # the day's last minutes; its UTC hour runs into May 11
    assert (late - late % HOUR) + HOUR > day_bounds(late, tz)[1]
    ids = insert(engine, [log(created_at=late, quota=100), log(created_at=at(tz, 2024, 5, 10, 12), quota=7)])
    rollup(engine, s)
    with engine.begin() as conn:
        conn.execute(sa.update(m.logs).where(m.logs.c.id == ids[0]).values(quota=5))
    lo, hi = day_bounds(late, tz)
    reaggregate(engine, s, lo, hi)  # the day holding the edited log
    assert_exact(engine, tz, where="after re-aggregating the edited log's day")


def test_reaggregate_half_hour_zone_whole_range(engine):
    """Whole-range re-aggregation is right in a half-hour zone (the straddling hours are
    rebuilt by the following day's chunk)."""
    tz = "Asia/Kolkata"
    s = cfg(engine, tz)
    rnd = random.Random(3)
    lo, hi = at(tz, 2024, 5, 1), at(tz, 2024, 5, 6)
    insert(engine, random_logs(rnd, 150, lo, hi))
    rollup(engine, s)
    assert_exact(engine, tz)
    with engine.begin() as conn:
        conn.execute(sa.update(m.logs).values(quota=m.logs.c.quota + 1))
    reaggregate(engine, s, lo, hi + 1)  # one more day: the last hour straddles into it
    assert_exact(engine, tz)


def test_reaggregate_of_an_unchanged_range_changes_nothing_after_a_rename(sqlite_engine):
    engine = sqlite_engine
    s = cfg(engine)
    t = utc(2024, 1, 1, 1)
    insert(engine, log(created_at=t, username="bob"))
    tick(engine, s)
    insert(engine, log(created_at=t + 300, username="alice"))  # the user was renamed
    tick(engine, s)
    before = actual_tables(engine)
    # A bucket's username is the largest over its logs, however it was built.
    assert before["hourly_usage"][(1, t, "gpt-4o")][5] == "bob"
    reaggregate(engine, s, t, t + 1)
    assert actual_tables(engine) == before


@pytest.mark.integration
def test_reaggregate_rewrites_only_the_rows_that_differ(pg_engine):
    """An unchanged range is compared, not rewritten (no new row versions: same xmin),
    and an edited log rewrites just its own buckets."""
    engine, tz = pg_engine, "Asia/Shanghai"
    s = cfg(engine, tz)
    rnd = random.Random(5)
    lo, hi = at(tz, 2024, 6, 1), at(tz, 2024, 6, 4)
    insert(engine, random_logs(rnd, 200, lo, hi))
    rollup(engine, s)

    def versions():
        # xmin: the transaction that wrote the row version; unchanged means not rewritten.
        with engine.connect() as conn:
            return {
                t.name: {
                    tuple(r[:-1]): r[-1]
                    for r in conn.execute(
                        sa.select(*t.primary_key.columns, sa.literal_column("xmin::text")).select_from(t)
                    )
                }
                for t in (agg.hourly_usage, agg.daily_usage, agg.hourly_model_usage, agg.daily_model_usage)
            }

    before = versions()
    reaggregate(engine, s, lo, hi)
    assert versions() == before
    with engine.begin() as conn:
        lg = m.logs.c
        one = conn.execute(
            sa.select(lg.id, lg.user_id, lg.created_at, lg.model_name)
            .where(lg.type == m.LOG_CONSUME)
            .order_by(lg.id)
            .limit(1)
        ).one()
        conn.execute(sa.update(m.logs).where(lg.id == one.id).values(quota=lg.quota + 1))
    reaggregate(engine, s, lo, hi)
    assert_exact(engine, tz)
    after = versions()
    hour, day = hour_of(one.created_at), day_of(one.created_at, tz)
    assert {k for k in after["hourly_usage"] if after["hourly_usage"][k] != before["hourly_usage"][k]} == {
        (one.user_id, hour, one.model_name)
    }
    assert {k for k in after["daily_usage"] if after["daily_usage"][k] != before["daily_usage"][k]} == {
        (one.user_id, day, one.model_name)
    }
    assert {
        k for k in after["hourly_model_usage"] if after["hourly_model_usage"][k] != before["hourly_model_usage"][k]
    } == {(hour, one.model_name)}


# --- time zone ----------------------------------------------------------------------------


def test_timezone_mismatch_raises_a_clear_rollup_error(engine):
    t = utc(2024, 5, 10, 20)
    insert(engine, [log(created_at=t)])
    rollup(engine, cfg(engine, "UTC"))
    before = actual_tables(engine)
    insert(engine, [log(created_at=t + 1)])
    shanghai = cfg(engine, "Asia/Shanghai")
    for call in (
        lambda: tick(engine, shanghai),
        lambda: rollup(engine, shanghai),
        lambda: reaggregate(engine, shanghai, t, t + 1),
    ):
        with pytest.raises(RollupError) as err:
            call()
        message = str(err.value)
        assert "UTC" in message and "Asia/Shanghai" in message and "reaggregate" in message
    # nothing moved
    assert actual_tables(engine) == before
    assert last_log_id(engine) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(m.rollup_state.c.timezone)).scalar_one() == "UTC"
    # the right zone goes on as before
    rollup(engine, cfg(engine, "UTC"))
    assert_exact(engine, "UTC")


def test_first_tick_records_the_timezone(engine):
    tick(engine, cfg(engine, "America/New_York"))
    with engine.connect() as conn:
        assert conn.execute(sa.select(m.rollup_state.c.timezone)).scalar_one() == "America/New_York"


# --- site-wide tables -----------------------------------------------------------------------


def test_site_wide_tables_are_group_by_bucket_and_model(engine):
    tz = "Asia/Shanghai"
    t = at(tz, 2024, 5, 10, 9, 15)
    insert(
        engine,
        [
            log(user_id=1, created_at=t, quota=1, prompt=10, completion=1),
            log(user_id=2, created_at=t + 60, quota=2, prompt=20, completion=2),
            log(user_id=3, created_at=t + 120, quota=4, prompt=30, completion=3, model="claude"),
            log(user_id=1, created_at=t + 4 * HOUR, quota=8, prompt=40, completion=4),
            log(user_id=2, created_at=t + 4 * HOUR, quota=16, kind=m.LOG_REFUND),
        ],
    )
    s = cfg(engine, tz, rollup_batch_size=2)
    rollup(engine, s)
    tables = actual_tables(engine)
    h, day = t - t % HOUR, at(tz, 2024, 5, 10)
    assert tables["hourly_model_usage"] == {
        (h, "gpt-4o"): (2, 3, 33, 30, 3),
        (h, "claude"): (1, 4, 33, 30, 3),
        (h + 4 * HOUR, "gpt-4o"): (1, 8, 44, 40, 4),
    }
    assert tables["daily_model_usage"] == {(day, "gpt-4o"): (3, 11, 77, 70, 7), (day, "claude"): (1, 4, 33, 30, 3)}
    reaggregate(engine, s, day, day + 1)
    assert actual_tables(engine) == tables
    assert_exact(engine, tz)


# --- robustness -----------------------------------------------------------------------------


def test_a_log_without_created_at_does_not_stop_the_rollup(sqlite_engine):
    engine = sqlite_engine
    s = cfg(engine)
    insert(engine, [log(created_at=None, quota=1000), log(created_at=utc(2024, 5, 10, 3), quota=5)])
    r = rollup(engine, s)
    assert (r.logs, r.last_log_id) == (1, 2)  # the log without a time is passed, not counted
    insert(engine, [log(created_at=utc(2024, 5, 10, 4), quota=6)])
    rollup(engine, s)  # and the rollup goes on
    assert totals(engine) == totals(engine, "daily_model_usage") == (2, 11)
    reaggregate(engine, s, utc(2024, 5, 10), utc(2024, 5, 11))  # re-aggregation agrees
    assert totals(engine) == (2, 11)
    assert_exact(engine, "UTC")


def test_one_engine_serves_two_time_zones(sqlite_engine):
    """A process that uses one engine with two time zones (tests, a future per-request
    zone in the API, adopting a new STATS_TIMEZONE in a running worker) must bucket days
    in the zone it asks for."""
    engine = sqlite_engine
    t = utc(2024, 5, 10, 20)  # May 10 in UTC, May 11 in Shanghai
    insert(engine, [log(created_at=t)])
    rollup(engine, cfg(engine, "UTC"))
    assert keys(engine, "daily_model_usage") == [(utc(2024, 5, 10), "gpt-4o")]
    with engine.begin() as conn:  # start again, as `reaggregate --all` in a new zone would
        for table in (agg.hourly_usage, agg.daily_usage, agg.hourly_model_usage, agg.daily_model_usage):
            conn.execute(sa.delete(table))
        conn.execute(sa.update(m.rollup_state).values(last_log_id=0, timezone=None))
    rollup(engine, cfg(engine, "Asia/Shanghai"))
    assert keys(engine, "daily_model_usage") == [(at("Asia/Shanghai", 2024, 5, 11), "gpt-4o")]


# BUG-8 (found here, fixed since): this test now guards the fix.
def test_the_remedy_the_timezone_error_names_works(sqlite_file_url, monkeypatch, capsys):
    from shared import cli
    from shared.db import dispose_engines, make_engine
    from shared.migrate import upgrade

    engine = make_engine(sqlite_file_url)
    upgrade(engine)
    t = utc(2024, 5, 10, 20)  # May 10 in UTC, May 11 in Shanghai
    insert(engine, [log(created_at=t), log(created_at=t + 86400 * 3), log(created_at=t - 86400 * 40)])
    rollup(engine, cfg(engine, "UTC"))
    with pytest.raises(RollupError, match="reaggregate --all"):
        tick(engine, cfg(engine, "Asia/Shanghai"))
    monkeypatch.setenv("DATABASE_URL", sqlite_file_url)
    monkeypatch.setenv("STATS_TIMEZONE", "Asia/Shanghai")
    try:
        code = cli.main(["reaggregate", "--all", "--quiet"])
    finally:
        dispose_engines()
    assert code == 0, capsys.readouterr().err
    rollup(engine, cfg(engine, "Asia/Shanghai"))  # ticks go on in the new zone
    assert_exact(engine, "Asia/Shanghai")  # and no UTC-midnight daily row is left
    engine.dispose()


# BUG-11 (found here, fixed since): this test now guards the fix.
def test_ids_starting_again_below_the_watermark_are_counted_or_refused(engine):
    s = cfg(engine)
    insert(engine, [log(created_at=utc(2024, 5, 10, k)) for k in range(5)])
    rollup(engine, s)
    with engine.begin() as conn:  # the gateway's logs start afresh
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("TRUNCATE logs RESTART IDENTITY")
        elif engine.dialect.name == "mysql":
            conn.exec_driver_sql("TRUNCATE TABLE logs")  # AUTO_INCREMENT starts again at 1
        else:
            conn.exec_driver_sql("DELETE FROM logs")
            conn.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = 'logs'")
    ids = insert(engine, [log(created_at=utc(2024, 6, 1, k), quota=1) for k in range(3)])
    assert max(ids) < last_log_id(engine)
    try:
        rollup(engine, s)
    except RollupError as exc:  # refusing with a clear message is fine too
        assert "last_log_id" in str(exc) or "watermark" in str(exc) or "sequence" in str(exc)
        return
    tables = actual_tables(engine)["daily_model_usage"]
    assert tables.get((utc(2024, 6, 1), "gpt-4o"), (0,))[0] == 3


def test_deleting_the_newest_logs_is_not_a_restart(engine):
    s = cfg(engine)
    ids = insert(engine, [log(created_at=utc(2024, 5, 10, k)) for k in range(5)])
    rollup(engine, s)
    with engine.begin() as conn:  # e.g. one user's logs erased, the newest among them
        conn.execute(sa.delete(m.logs).where(m.logs.c.id == ids[-1]))
    r = tick(engine, s)  # nothing to count, nothing wrong
    assert (r.logs, r.last_log_id) == (0, ids[-1])
    reaggregate(engine, s, utc(2024, 5, 10), utc(2024, 5, 11))
    assert_exact(engine, "UTC")


def test_with_log_retention_a_zone_change_names_the_way_out_and_it_works(sqlite_file_url, monkeypatch, capsys):
    """BUG-13: with RETAIN_LOGS_DAYS set, `reaggregate --all` keeps the daily rows older
    than the log horizon (their logs may be gone), so it cannot adopt a new zone; the
    error used to send the operator back to that very command. It now names the two
    ways out, and the second (once, with RETAIN_LOGS_DAYS unset) rebuilds exactly."""
    import time as _time

    from shared import cli
    from shared.db import dispose_engines, make_engine
    from shared.migrate import upgrade

    engine = make_engine(sqlite_file_url)
    upgrade(engine)
    now = int(_time.time())
    insert(engine, [log(created_at=now - 86400 * k) for k in range(1, 4)])  # all well inside 30 days
    rollup(engine, cfg(engine, "UTC"))
    monkeypatch.setenv("DATABASE_URL", sqlite_file_url)
    monkeypatch.setenv("STATS_TIMEZONE", "Asia/Shanghai")
    monkeypatch.setenv("RETAIN_LOGS_DAYS", "30")
    try:
        code = cli.main(["reaggregate", "--all", "--quiet"])
        err = capsys.readouterr().err
        assert code != 0
        assert "set STATS_TIMEZONE back to UTC" in err and "RETAIN_LOGS_DAYS unset" in err, err
        monkeypatch.delenv("RETAIN_LOGS_DAYS")
        assert cli.main(["reaggregate", "--all", "--quiet"]) == 0
    finally:
        dispose_engines()
    rollup(engine, cfg(engine, "Asia/Shanghai"))
    assert_exact(engine, "Asia/Shanghai")
    engine.dispose()


def test_the_tick_time_is_kept_to_the_second(engine):
    # MySQL's FLOAT (4 bytes) would round a unix time by up to a minute.
    insert(engine, [log(created_at=utc(2024, 1, 1))])
    before = time.time()
    rollup(engine, cfg(engine))
    after = time.time()
    with engine.connect() as conn:
        at_ = conn.execute(sa.select(m.rollup_state.c.last_tick_at)).scalar()
    assert isinstance(at_, float) and before - 0.001 <= at_ <= after + 0.001
