"""End to end: gateway logs -> shared.rollup.rollup -> the API, on SQLite and
(integration) PostgreSQL, at both granularities.

The truth each answer must equal is a SQL GROUP BY over the raw consume logs, written
here independently of shared.rollup, shared.buckets and shared.queries: hour buckets
are `created_at - created_at % 3600`, day buckets come from a derived table of local
day ranges computed with Python's zoneinfo (tests/logdata.day_bounds), joined to the logs.

The stats time zone is America/New_York and the logs straddle the end of daylight
saving time (2024-11-03 is a 25-hour day), so day buckets are not 86,400 s apart.
"""

from __future__ import annotations

import random

import sqlalchemy as sa

from shared import models as m
from shared.config import Settings
from shared.rollup import rollup
from tests.api_support import add_user, make_api, ok_data
from tests.logdata import at, day_bounds, insert, log

TZ = "America/New_York"
H = 3600
LO = at(TZ, 2024, 10, 29)  # local midnight
HI = at(TZ, 2024, 11, 8)  # local midnight, ten days (and one hour) later

ALICE, BOB, ROOT, CAROL, STRANGER = 1, 2, 3, 5, 9  # STRANGER has logs but no user row
NAMES = {ALICE: "alice", BOB: "bob", ROOT: "root", CAROL: "carol", STRANGER: "stranger"}
MODELS = ("gpt-4o", "claude-3-5-sonnet", "deepseek-chat", "")
OTHER_TYPES = (m.LOG_TOPUP, m.LOG_MANAGE, m.LOG_SYSTEM, m.LOG_ERROR, m.LOG_REFUND, 0, 7)


def gateway_logs(rnd: random.Random, n: int, lo: int, hi: int) -> list[dict]:
    """Consume logs and, among them, every other log type (which must not count)."""
    rows = []
    for _ in range(n):
        uid = rnd.choice((ALICE, ALICE, BOB, ROOT, CAROL, STRANGER))
        kind = m.LOG_CONSUME if rnd.random() < 0.8 else rnd.choice(OTHER_TYPES)
        rows.append(
            log(
                user_id=uid,
                username=NAMES[uid],
                created_at=rnd.randrange(lo, hi),
                model=rnd.choice(MODELS),
                kind=kind,
                quota=rnd.randrange(0, 100_000),
                prompt=rnd.randrange(0, 5000),
                completion=rnd.randrange(0, 2000),
            )
        )
    # On the edges: the first and last second of a local day and of an hour, and the
    # repeated 01:00-02:00 of the 25-hour day.
    for ts in (
        LO,
        LO + H - 1,
        at(TZ, 2024, 11, 3, 23, 59, 59),
        at(TZ, 2024, 11, 3, 1, 30, fold=0),
        at(TZ, 2024, 11, 3, 1, 30, fold=1),
        HI - 1,
    ):
        rows.append(log(user_id=ALICE, username="alice", created_at=ts, model="gpt-4o"))
    return rows


def day_ranges(lo: int, hi: int) -> sa.Subquery:
    """(lo, hi) of every local day from the one holding `lo` to the one holding `hi`."""
    selects = []
    start, _ = day_bounds(lo, TZ)
    while start <= hi:
        _, end = day_bounds(start, TZ)
        selects.append(
            sa.select(sa.literal(start, sa.BigInteger).label("lo"), sa.literal(end, sa.BigInteger).label("hi"))
        )
        start = end
    return sa.union_all(*selects).subquery("days")


def truth(engine, granularity: str, start: int, end: int, *, user_id=None, site_wide=False) -> list[dict]:
    """The API's answer, as a GROUP BY over the raw consume logs: buckets starting in
    [start, end], for one user (rows with user_id and username) or site-wide."""
    lg = m.logs.c
    if granularity == "hour":
        bucket = (lg.created_at - lg.created_at % sa.literal_column("3600")).label("bucket")
        source = m.logs
    else:
        days = day_ranges(start - 2 * 86400, end + 2 * 86400)
        bucket = days.c.lo.label("bucket")
        source = m.logs.join(days, sa.and_(lg.created_at >= days.c.lo, lg.created_at < days.c.hi))

    def total(expr, name):
        return sa.cast(sa.func.sum(expr), sa.BigInteger).label(name)

    cols = [
        lg.model_name,
        sa.func.count().label("count"),
        total(lg.quota, "quota"),
        total(lg.prompt_tokens + lg.completion_tokens, "token_used"),
        bucket,
    ]
    keys = [bucket, lg.model_name]
    if not site_wide:
        cols += [lg.user_id, sa.func.max(lg.username).label("username")]
        keys.append(lg.user_id)
    cols += [total(lg.prompt_tokens, "prompt_tokens"), total(lg.completion_tokens, "completion_tokens")]
    q = sa.select(*cols).select_from(source).where(lg.type == m.LOG_CONSUME)
    if user_id is not None:
        q = q.where(lg.user_id == user_id)
    grouped = q.group_by(*keys).subquery()
    q = sa.select(grouped).where(grouped.c.bucket.between(start, end))
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    for r in rows:  # the API's field name for the bucket start
        r["created_at"] = r.pop("bucket")
    # The API's order: created_at, then model_name in code point order (Python's string
    # order), whatever the database's locale.
    return sorted(rows, key=lambda r: (r["created_at"], r["model_name"]))


def same(api_rows: list[dict], expected: list[dict]) -> None:
    # Field order aside (checked in test_api.py), equal rows in equal order.
    assert [sorted(r.items()) for r in api_rows] == [sorted(r.items()) for r in expected], (
        f"{len(api_rows)} rows from the API, {len(expected)} expected; first difference: "
        + next((f"{a} != {e}" for a, e in zip(api_rows, expected) if a != e), "(lengths)")
    )


def windows(granularity: str) -> list[tuple[int, int]]:
    """Exactly the first to the last bucket (both ends included), and a window cut
    mid-bucket on both sides."""
    if granularity == "hour":
        first, last = LO - LO % H, (HI - 1) - (HI - 1) % H
    else:
        first, last = day_bounds(LO, TZ)[0], day_bounds(HI - 1, TZ)[0]
    return [(first, last), (first + 3 * 86400 + 1234, last - 2 * 86400 - 17)]


def check_everything(engine, api, tokens) -> int:
    """Both endpoints, both granularities, whole and partial windows; returns how many
    rows were compared (so the caller can see the test was not vacuous)."""
    compared = 0
    root_token = tokens[ROOT]
    for granularity in ("hour", "day"):
        for start, end in windows(granularity):
            q = {"granularity": granularity, "start_timestamp": start, "end_timestamp": end}
            for uid in (ALICE, BOB, ROOT):
                expected = truth(engine, granularity, start, end, user_id=uid)
                same(ok_data(api.get("/api/data/self", tokens[uid], uid, **q)), expected)
                compared += len(expected)
            expected = truth(engine, granularity, start, end, site_wide=True)
            same(ok_data(api.get("/api/data/", root_token, ROOT, **q)), expected)
            compared += len(expected)
            # The admin's view of one user, disabled users included.
            for uid in (ALICE, CAROL):
                expected = truth(engine, granularity, start, end, user_id=uid)
                same(ok_data(api.get("/api/data/", root_token, ROOT, username=NAMES[uid], **q)), expected)
                compared += len(expected)
            # Logs without a user row are in the site-wide answer, but no username finds them.
            assert ok_data(api.get("/api/data/", root_token, ROOT, username="stranger", **q)) == []
    return compared


def test_logs_rollup_api_equal_group_by_over_raw_logs(engine):
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=TZ)
    tokens = {
        ALICE: add_user(engine, ALICE, "alice"),
        BOB: add_user(engine, BOB, "bob"),
        ROOT: add_user(engine, ROOT, "root", role=m.ROLE_ROOT),
        CAROL: add_user(engine, CAROL, "carol", status=m.STATUS_DISABLED),
    }
    api = make_api(engine, tz=TZ)
    rnd = random.Random(20241103)

    insert(engine, gateway_logs(rnd, 600, LO, HI))
    result = rollup(engine, settings)
    assert result.logs > 400
    first = check_everything(engine, api, tokens)
    assert first > 500

    # More traffic, much of it with old timestamps landing in buckets already rolled up.
    insert(engine, gateway_logs(rnd, 300, LO, HI))
    rollup(engine, settings)
    assert check_everything(engine, api, tokens) > first


def test_sums_are_the_logs_not_a_copy_of_one(engine):
    # A small hand-checked case beside the generated one: two consume logs in one hour
    # bucket and one refund next to them.
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=TZ)
    token = add_user(engine, ROOT, "root", role=m.ROLE_ROOT)
    t = at(TZ, 2024, 11, 3, 1, 10, fold=1)  # the second 01:10 of the 25-hour day
    insert(
        engine,
        [
            log(user_id=ROOT, username="root", created_at=t, model="m", quota=7, prompt=100, completion=20),
            log(user_id=ROOT, username="root", created_at=t + 100, model="m", quota=5, prompt=1, completion=2),
            log(user_id=ROOT, username="root", created_at=t + 200, model="m", quota=1000, kind=m.LOG_REFUND),
        ],
    )
    rollup(engine, settings)
    api = make_api(engine, tz=TZ)
    hour = t - t % H
    day = at(TZ, 2024, 11, 3)
    expected = {
        "model_name": "m",
        "count": 2,
        "quota": 12,
        "token_used": 123,
        "prompt_tokens": 101,
        "completion_tokens": 22,
    }
    for granularity, bucket in (("hour", hour), ("day", day)):
        q = {"granularity": granularity, "start_timestamp": day, "end_timestamp": day + 86400}
        assert ok_data(api.get("/api/data/", token, ROOT, **q)) == [{**expected, "created_at": bucket}]
        assert ok_data(api.get("/api/data/self", token, ROOT, **q)) == [
            {**expected, "created_at": bucket, "user_id": ROOT, "username": "root"}
        ]
