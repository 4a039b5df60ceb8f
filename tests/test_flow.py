"""GET /api/data/users, /api/data/flow and /api/data/flow/self against the raw logs.

The truth is computed here in Python from the committed rows of `logs` (read below with
the key, channel and group columns), independently of shared.aggregation, shared.queries,
shared.rollup and shared.names: consume logs with a time; hour = created_at -
created_at % 3600 and days of the stats zone from tests/api_support.bucket_of; a bucket
counts when its start lies in [start, end]; the flow drops logs whose group is empty or
NULL; names of keys and channels come from the TOKENS and CHANNELS tables written out
below (live name, "Deleted (<id>)" for a soft-deleted key, the recorded name for a key
the table lacks; "channel-<id>" for a channel it lacks); flow rows are ordered by quota
descending, then by their keys in code point order.

Part of the logs is rolled up and the rest left to the real-time tail. Tests taking
`engine` run on SQLite and, marked integration, on PostgreSQL.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

import api.flow as flow_api
from api.config import ApiLimits
from shared import models as m
from shared.config import Settings
from shared.rollup import tick
from tests.api_support import Api, add_user, assert_failure, bucket_of, committed_logs, make_api, ok_data
from tests.logdata import HOUR, at, insert, last_log_id, log

DAY = 86400
TZ = "Asia/Shanghai"  # STATS_TIMEZONE of these tests: its days start at 16:00 UTC
LO = at(TZ, 2025, 3, 3)  # a Monday, local midnight
HI = LO + 12 * DAY

ALICE, BOB, ADMIN, ROOT, CAROL, STRANGER = 1, 2, 3, 4, 5, 9
NAMES = {ALICE: "alice", BOB: "bob", ADMIN: "admin", ROOT: "root", CAROL: "carol"}
# The names logs recorded: alice was "alice0" before a rename; carol is soft-deleted since.
RECORDED_NAMES = {ALICE: ("alice", "alice0"), BOB: ("bob",), ROOT: ("root",), CAROL: ("carol",), STRANGER: ("x",)}
# Each user's keys as logs recorded them: (token_id, token_name). Key 11 was renamed since
# ("alice-main" now), 12 is soft-deleted, 13 is unknown to `tokens`; 0 is a channel test.
KEYS = {
    ALICE: ((11, "alice-first"), (12, "alice-tmp"), (13, "legacy"), (0, "")),
    BOB: ((21, "bob-key"), (22, "bob-two")),
    ROOT: ((41, "root-key"),),
    CAROL: ((51, "carol-key"),),
    STRANGER: ((91, "x-key"),),
}
# `tokens`: id -> (user_id, live name, soft-deleted); `channels`: id -> name. Channel 3
# and channel 0 (a log without one) are unknown.
TOKENS = {
    11: (ALICE, "alice-main", False),
    12: (ALICE, "alice-tmp", True),
    21: (BOB, "bob-key", False),
    22: (BOB, "bob-two", False),
    41: (ROOT, "root-key", False),
    51: (CAROL, "carol-key", False),
    91: (STRANGER, "x-key", False),
}
CHANNELS = {1: "openai-main", 2: "azure-east"}
SECRET = "sk-do-not-show-"
MODELS = ("gpt-4o", "claude-3", "Gpt-4o", "")
GROUPS = ("default", "vip", "", None)  # empty and NULL groups are outside the flow

USERS = "/api/data/users"
FLOW = "/api/data/flow"
FLOW_SELF = "/api/data/flow/self"

ADMIN_COLUMNS = ["user_id", "username", "channel_id", "channel_name", "use_group", "model_name"]
ROOT_COLUMNS = [
    "user_id",
    "username",
    "token_id",
    "token_name",
    "channel_id",
    "channel_name",
    "use_group",
    "model_name",
]
SELF_COLUMNS = ["token_id", "token_name", "use_group", "model_name"]
FLOW_MEASURES = ["token_used", "count", "quota"]


# --- the data -----------------------------------------------------------------------------


def random_logs(rnd: random.Random, n: int, lo: int = LO, hi: int = HI) -> list[dict]:
    rows = []
    for _ in range(n):
        uid = rnd.choice((ALICE, ALICE, ALICE, BOB, BOB, ROOT, CAROL, STRANGER))
        token_id, token_name = rnd.choice(KEYS[uid])
        group = rnd.choice(GROUPS)
        kind = m.LOG_CONSUME if rnd.random() < 0.85 else rnd.choice((m.LOG_TOPUP, m.LOG_ERROR, m.LOG_REFUND))
        rows.append(
            log(
                user_id=uid,
                username=rnd.choice(RECORDED_NAMES[uid]),
                created_at=rnd.randrange(lo, hi),
                model=rnd.choice(MODELS),
                kind=kind,
                quota=rnd.randrange(0, 50_000),
                prompt=rnd.randrange(0, 3000),
                completion=rnd.randrange(0, 900),
                token_id=token_id,
                token_name=token_name,
                channel=rnd.choice((1, 2, 3)),
                group=group,
            )
        )
        rows[-1]["group"] = group  # log() would give a NULL group a default
    # A log without a channel, and one without a time (no bucket: never counted).
    rows.append(log(user_id=BOB, username="bob", created_at=lo + 5, token_id=21, token_name="bob-key", group="vip"))
    rows[-1]["channel_id"] = None
    rows.append(log(user_id=ALICE, username="alice", created_at=None, token_id=11, group="vip"))
    return rows


def add_gateway_tables(engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(m.tokens),
            [
                {
                    "id": tid,
                    "user_id": uid,
                    "name": name,
                    "key": f"{SECRET}{tid}",
                    "deleted_at": datetime(2025, 3, 5, tzinfo=UTC) if deleted else None,
                }
                for tid, (uid, name, deleted) in TOKENS.items()
            ],
        )
        conn.execute(
            sa.insert(m.channels),
            [{"id": cid, "name": name, "key": f"{SECRET}ch{cid}"} for cid, name in CHANNELS.items()],
        )


def settings_for(engine) -> Settings:
    return Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=TZ)


def with_flow(api: Api) -> Api:
    if "flow" not in api.app.blueprints:
        api.app.register_blueprint(flow_api.bp)
    return api


def people(engine) -> dict[int, str]:
    tokens = {
        ALICE: add_user(engine, ALICE, "alice"),
        BOB: add_user(engine, BOB, "bob"),
        ADMIN: add_user(engine, ADMIN, "admin", role=m.ROLE_ADMIN),
        ROOT: add_user(engine, ROOT, "root", role=m.ROLE_ROOT),
    }
    add_user(engine, CAROL, "carol", deleted=True)
    return tokens


@pytest.fixture
def seeded(engine):
    """People, keys and channels; logs of which the first part is rolled up and the rest
    left to the real-time tail. Returns (engine, api, tokens, watermark)."""
    tokens = people(engine)
    add_gateway_tables(engine)
    rnd = random.Random(20250303)
    insert(engine, random_logs(rnd, 300))
    tick(engine, settings_for(engine))
    watermark = last_log_id(engine)
    insert(engine, random_logs(rnd, 120))
    assert watermark > 0
    return engine, with_flow(make_api(engine, tz=TZ)), tokens, watermark


def as_(tokens, uid) -> dict:
    return {"token": tokens[uid], "user": uid}


# --- the truth ----------------------------------------------------------------------------


def counted(logs, granularity: str, start: int, end: int):
    """The consume logs with a time whose bucket starts in [start, end]."""
    for lg in logs:
        if lg["type"] != m.LOG_CONSUME or lg["created_at"] is None:
            continue
        if start <= bucket_of(lg["created_at"], granularity, TZ) <= end:
            yield lg


def expected_users(logs, granularity: str, start: int, end: int, user_id: int | None = None) -> list[dict]:
    groups: dict = defaultdict(lambda: {"username": "", "count": 0, "quota": 0, "prompt": 0, "completion": 0})
    for lg in counted(logs, granularity, start, end):
        uid = lg["user_id"] or 0
        if user_id is not None and uid != user_id:
            continue
        g = groups[bucket_of(lg["created_at"], granularity, TZ), uid]
        g["username"] = max(g["username"], lg["username"] or "")
        g["count"] += 1
        g["quota"] += lg["quota"] or 0
        g["prompt"] += lg["prompt_tokens"] or 0
        g["completion"] += lg["completion_tokens"] or 0
    return [
        {
            "created_at": bucket,
            "user_id": uid,
            "username": g["username"],
            "count": g["count"],
            "quota": g["quota"],
            "token_used": g["prompt"] + g["completion"],
            "prompt_tokens": g["prompt"],
            "completion_tokens": g["completion"],
        }
        for (bucket, uid), g in sorted(groups.items())
    ]


def token_name(token_id: int, recorded: str) -> str:
    if token_id not in TOKENS:
        return recorded
    _, name, deleted = TOKENS[token_id]
    return f"Deleted ({token_id})" if deleted else name


def expected_flow(logs, columns: list[str], granularity: str, start: int, end: int, user_id=None) -> list[dict]:
    """Rows of `columns` (names included) summed over the logs of the range with a group."""
    keys = [c for c in columns if c in ("user_id", "token_id", "channel_id", "use_group", "model_name")]
    groups: dict = defaultdict(lambda: {"username": "", "token_name": "", "count": 0, "quota": 0, "token_used": 0})
    for lg in counted(logs, granularity, start, end):
        group = lg["group"] or ""
        uid = lg["user_id"] or 0
        if group == "" or (user_id is not None and uid != user_id):
            continue
        values = {
            "user_id": uid,
            "token_id": lg["token_id"] or 0,
            "channel_id": lg["channel_id"] or 0,
            "use_group": group,
            "model_name": lg["model_name"] or "",
        }
        g = groups[tuple(values[k] for k in keys)]
        g["username"] = max(g["username"], lg["username"] or "")
        g["token_name"] = max(g["token_name"], lg["token_name"] or "")
        g["count"] += 1
        g["quota"] += lg["quota"] or 0
        g["token_used"] += (lg["prompt_tokens"] or 0) + (lg["completion_tokens"] or 0)
    rows = []
    for key, g in sorted(groups.items(), key=lambda kv: (-kv[1]["quota"], kv[0])):
        values = dict(zip(keys, key))
        row = {}
        for c in columns:
            if c == "username":
                row[c] = g["username"]
            elif c == "token_name":
                row[c] = token_name(values["token_id"], g["token_name"])
            elif c == "channel_name":
                row[c] = CHANNELS.get(values["channel_id"], f"channel-{values['channel_id']}")
            else:
                row[c] = values[c]
        row.update(token_used=g["token_used"], count=g["count"], quota=g["quota"])
        rows.append(row)
    return rows


# --- /api/data/users ------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["hour", "day", "week", "month"])
def test_users_equals_the_raw_logs(seeded, granularity):
    engine, api, tokens, watermark = seeded
    start, end = (LO + 2 * DAY + 7 * HOUR, LO + 5 * DAY) if granularity == "hour" else (LO - 40 * DAY, HI)
    q = {"granularity": granularity, "start_timestamp": start, "end_timestamp": end}
    everything = ok_data(api.get(USERS, **as_(tokens, ADMIN), **q))
    assert everything == expected_users(committed_logs(engine), granularity, start, end)
    assert {r["user_id"] for r in everything} == {ALICE, BOB, ROOT, CAROL, STRANGER}
    rolled_up = ok_data(api.get(USERS, **as_(tokens, ROOT), **q, realtime="false"))
    assert rolled_up == expected_users(committed_logs(engine, watermark), granularity, start, end)
    assert rolled_up != everything


def test_users_keys_users_by_id_and_keeps_deleted_users(seeded):
    _, api, tokens, _ = seeded
    rows = ok_data(
        api.get(USERS, **as_(tokens, ADMIN), granularity="month", start_timestamp=LO - 40 * DAY, end_timestamp=HI)
    )
    per_user = defaultdict(list)
    for r in rows:
        per_user[r["user_id"]].append(r)
    # alice logged as "alice" and "alice0": one row per bucket, under the largest name.
    assert [r["username"] for r in per_user[ALICE]] == ["alice0"] * len(per_user[ALICE])
    assert per_user[CAROL] and per_user[CAROL][0]["username"] == "carol"
    assert list(rows[0]) == [
        "created_at",
        "user_id",
        "username",
        "count",
        "quota",
        "token_used",
        "prompt_tokens",
        "completion_tokens",
    ]


def test_users_username_is_the_live_user(seeded):
    engine, api, tokens, _ = seeded
    q = {"granularity": "day", "start_timestamp": LO - DAY, "end_timestamp": HI}
    alice = ok_data(api.get(USERS, **as_(tokens, ADMIN), **q, username="alice"))
    assert alice == expected_users(committed_logs(engine), "day", q["start_timestamp"], HI, user_id=ALICE)
    assert alice
    # A recorded name that is no user's now, a deleted user, nobody: no rows.
    for name in ("alice0", "carol", "nobody"):
        assert ok_data(api.get(USERS, **as_(tokens, ADMIN), **q, username=name)) == []


def test_users_default_time_is_an_alias_of_granularity(seeded):
    _, api, tokens, _ = seeded
    q = {"start_timestamp": LO, "end_timestamp": HI}
    by_day = ok_data(api.get(USERS, **as_(tokens, ADMIN), granularity="day", **q))
    assert ok_data(api.get(USERS, **as_(tokens, ADMIN), default_time="day", **q)) == by_day
    assert by_day != ok_data(api.get(USERS, **as_(tokens, ADMIN), granularity="hour", **q))


def test_users_is_for_administrators(seeded):
    _, api, tokens, _ = seeded
    assert_failure(api.get(USERS), 401)
    assert_failure(api.get(USERS, token="not-a-token", user=ALICE), 401)
    assert_failure(api.get(USERS, **as_(tokens, ALICE)), 403, "administrator")
    ok_data(api.get(USERS, **as_(tokens, ADMIN)))


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"granularity": "year"}, "granularity"),
        ({"start_timestamp": "abc"}, "start_timestamp"),
        ({"start_timestamp": 10, "end_timestamp": 5}, "start_timestamp"),
        ({"start_timestamp": 0, "end_timestamp": 40 * DAY}, "at most 31 days"),
        ({"realtime": "maybe"}, "realtime"),
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"username": "a\x00b"}, "NUL"),
    ],
)
def test_users_bad_input_is_400(sqlite_engine, query, fragment):
    token = add_user(sqlite_engine, ADMIN, "admin", role=m.ROLE_ADMIN)
    api = with_flow(make_api(sqlite_engine))
    assert_failure(api.get(USERS, token, ADMIN, **query), 400, fragment)
    assert_failure(api.get(USERS, token, ADMIN, query=[("username", "a"), ("username", "b")]), 400, "once")


# --- /api/data/flow and /api/data/flow/self ---------------------------------------------------


def test_flow_by_role_equals_the_raw_logs(seeded):
    engine, api, tokens, _ = seeded
    start, end = LO + 3 * HOUR, HI  # under 31 days: hours starting in [start, end]
    q = {"start_timestamp": start, "end_timestamp": end}
    logs = committed_logs(engine)
    admin = ok_data(api.get(FLOW, **as_(tokens, ADMIN), **q))
    assert admin == expected_flow(logs, ADMIN_COLUMNS, "hour", start, end)
    root = ok_data(api.get(FLOW, **as_(tokens, ROOT), **q))
    assert root == expected_flow(logs, ROOT_COLUMNS, "hour", start, end)
    alice = ok_data(api.get(FLOW_SELF, **as_(tokens, ALICE), **q))
    assert alice == expected_flow(logs, SELF_COLUMNS, "hour", start, end, user_id=ALICE)
    # The role's fields, in new-api's order, and never node_name.
    assert list(admin[0]) == ADMIN_COLUMNS + FLOW_MEASURES
    assert list(root[0]) == ROOT_COLUMNS + FLOW_MEASURES
    assert list(alice[0]) == SELF_COLUMNS + FLOW_MEASURES
    # An administrator's rows are keyed finer by root, and sum to the same totals.
    assert len(root) > len(admin)
    for measure in FLOW_MEASURES:
        assert sum(r[measure] for r in root) == sum(r[measure] for r in admin)
    assert [r["quota"] for r in root] == sorted((r["quota"] for r in root), reverse=True)


def test_flow_names_keys_and_channels(seeded):
    _, api, tokens, _ = seeded
    root = ok_data(api.get(FLOW, **as_(tokens, ROOT), start_timestamp=LO - DAY, end_timestamp=HI))
    names = {(r["token_id"], r["token_name"]) for r in root}
    assert (11, "alice-main") in names  # the live name, not the recorded "alice-first"
    assert (12, "Deleted (12)") in names  # soft-deleted
    assert (13, "legacy") in names  # unknown to `tokens`: as the logs recorded it
    channels = {(r["channel_id"], r["channel_name"]) for r in root}
    assert channels == {(1, "openai-main"), (2, "azure-east"), (3, "channel-3"), (0, "channel-0")}
    # Only id and name are read from `tokens` and `channels`: their keys never show.
    for path, uid in ((FLOW, ROOT), (FLOW, ADMIN), (FLOW_SELF, ALICE), (USERS, ADMIN)):
        body = api.get(path, **as_(tokens, uid), start_timestamp=LO, end_timestamp=HI).get_data(as_text=True)
        assert SECRET not in body


def test_flow_excludes_empty_groups(seeded):
    engine, api, tokens, _ = seeded
    q = {"start_timestamp": LO - DAY, "end_timestamp": HI}
    for path, uid in ((FLOW, ROOT), (FLOW, ADMIN), (FLOW_SELF, ALICE), (FLOW_SELF, BOB)):
        rows = ok_data(api.get(path, **as_(tokens, uid), **q))
        assert rows and all(r["use_group"] in ("default", "vip") for r in rows)
    # Logs with an empty or NULL group exist, and count elsewhere.
    logs = [lg for lg in counted(committed_logs(engine), "hour", LO - DAY, HI) if lg["user_id"] == ALICE]
    assert {lg["group"] for lg in logs} >= {"", None}
    users = ok_data(api.get(USERS, **as_(tokens, ADMIN), granularity="hour", **q))
    flow = ok_data(api.get(FLOW_SELF, **as_(tokens, ALICE), **q))
    assert sum(r["count"] for r in users if r["user_id"] == ALICE) > sum(r["count"] for r in flow)


def test_flow_self_never_shows_another_users_keys(seeded):
    _, api, tokens, _ = seeded
    q = {"start_timestamp": LO - DAY, "end_timestamp": HI}
    own = {ALICE: {0, 11, 12, 13}, BOB: {21, 22}}
    for uid, keys in own.items():
        rows = ok_data(api.get(FLOW_SELF, **as_(tokens, uid), **q))
        assert rows and {r["token_id"] for r in rows} <= keys
        # username is ignored here, as new-api ignores it.
        other = "bob" if uid == ALICE else "alice"
        assert ok_data(api.get(FLOW_SELF, **as_(tokens, uid), **q, username=other)) == rows
    body = api.get(FLOW_SELF, **as_(tokens, ALICE), **q).get_data(as_text=True)
    assert "bob-key" not in body and "root-key" not in body


def test_flow_username_is_the_live_user(seeded):
    engine, api, tokens, _ = seeded
    q = {"start_timestamp": LO - DAY, "end_timestamp": HI}
    logs = committed_logs(engine)
    for uid in (ADMIN, ROOT):
        columns = ROOT_COLUMNS if uid == ROOT else ADMIN_COLUMNS
        alice = ok_data(api.get(FLOW, **as_(tokens, uid), **q, username="alice"))
        assert alice == expected_flow(logs, columns, "hour", LO - DAY, HI, user_id=ALICE)
        # rows logged as "alice0" are alice's too, under the largest recorded name
        assert alice and {r["username"] for r in alice} <= {"alice", "alice0"}
        for name in ("alice0", "carol", "nobody"):
            assert ok_data(api.get(FLOW, **as_(tokens, uid), **q, username=name)) == []


def test_flow_realtime_and_rolled_up(seeded):
    engine, api, tokens, watermark = seeded
    start, end = LO, HI
    q = {"start_timestamp": start, "end_timestamp": end}
    rolled_up = expected_flow(committed_logs(engine, watermark), ROOT_COLUMNS, "hour", start, end)
    everything = expected_flow(committed_logs(engine), ROOT_COLUMNS, "hour", start, end)
    assert rolled_up != everything
    assert ok_data(api.get(FLOW, **as_(tokens, ROOT), **q)) == everything
    assert ok_data(api.get(FLOW, **as_(tokens, ROOT), **q, realtime="true")) == everything
    assert ok_data(api.get(FLOW, **as_(tokens, ROOT), **q, realtime="false")) == rolled_up
    alice_rolled = expected_flow(committed_logs(engine, watermark), SELF_COLUMNS, "hour", start, end, user_id=ALICE)
    assert ok_data(api.get(FLOW_SELF, **as_(tokens, ALICE), **q, realtime="0")) == alice_rolled


def test_flow_reads_days_beyond_the_hourly_span_limit(engine):
    """Up to API_MAX_SPAN_HOURLY_DAYS: hours starting in [start, end]; beyond: days of
    STATS_TIMEZONE starting in [start, end] (the day holding `end` whole, the day holding a
    `start` after its midnight not at all)."""
    tokens = people(engine)
    add_gateway_tables(engine)
    rnd = random.Random(7)
    insert(engine, random_logs(rnd, 200, LO - 2 * DAY, LO + 6 * DAY))
    tick(engine, settings_for(engine))
    insert(engine, random_logs(rnd, 60, LO - 2 * DAY, LO + 6 * DAY))
    api = with_flow(make_api(engine, tz=TZ, limits=ApiLimits(max_span_hourly_days=2, max_span_daily_days=4)))
    logs = committed_logs(engine)
    start = LO + 10 * HOUR + 30 * 60  # mid-day, mid-hour
    for end, granularity in ((start + 2 * DAY, "hour"), (start + 2 * DAY + 1, "day"), (start + 4 * DAY, "day")):
        q = {"start_timestamp": start, "end_timestamp": end}
        for path, uid, columns, user_id in (
            (FLOW, ROOT, ROOT_COLUMNS, None),
            (FLOW, ADMIN, ADMIN_COLUMNS, None),
            (FLOW_SELF, ALICE, SELF_COLUMNS, ALICE),
        ):
            rows = ok_data(api.get(path, **as_(tokens, uid), **q))
            assert rows == expected_flow(logs, columns, granularity, start, end, user_id=user_id), (path, end)
    # The two readings differ on this range: the switch is real.
    hours = expected_flow(logs, ROOT_COLUMNS, "hour", start, start + 2 * DAY + 1)
    assert hours != expected_flow(logs, ROOT_COLUMNS, "day", start, start + 2 * DAY + 1)
    too_long = {"start_timestamp": start, "end_timestamp": start + 4 * DAY + 1}
    assert_failure(api.get(FLOW, **as_(tokens, ROOT), **too_long), 400, "at most 4 days")


def test_flow_answers_empty(engine):
    tokens = people(engine)
    api = with_flow(make_api(engine, tz=TZ))
    q = {"start_timestamp": LO, "end_timestamp": HI}
    assert ok_data(api.get(FLOW, **as_(tokens, ROOT), **q)) == []
    assert ok_data(api.get(FLOW_SELF, **as_(tokens, ALICE), **q)) == []
    # Only logs without a group: still nothing.
    insert(
        engine,
        [log(user_id=ALICE, created_at=LO + 10, group=""), {**log(user_id=ALICE, created_at=LO + 10), "group": None}],
    )
    assert ok_data(api.get(FLOW, **as_(tokens, ROOT), **q)) == []
    assert ok_data(api.get(FLOW_SELF, **as_(tokens, ALICE), **q)) == []
    assert ok_data(api.get(USERS, **as_(tokens, ROOT), **q))[0]["count"] == 2


def test_flow_bounds_are_inclusive_hours(sqlite_engine):
    tokens = people(sqlite_engine)
    api = with_flow(make_api(sqlite_engine, tz=TZ))
    t = LO + 5 * HOUR
    insert(sqlite_engine, [log(user_id=ALICE, created_at=t + 59 * 60, quota=5, group="vip", token_id=11)])
    one = ok_data(api.get(FLOW_SELF, **as_(tokens, ALICE), start_timestamp=t, end_timestamp=t))
    assert [(r["token_id"], r["count"], r["quota"]) for r in one] == [(11, 1, 5)]
    # The log's hour starts before start: outside, as in new-api's hour rows.
    assert ok_data(api.get(FLOW_SELF, **as_(tokens, ALICE), start_timestamp=t + 1, end_timestamp=t + HOUR)) == []


def test_flow_roles(seeded):
    _, api, tokens, _ = seeded
    q = {"start_timestamp": LO, "end_timestamp": HI}
    assert_failure(api.get(FLOW, **q), 401)
    assert_failure(api.get(FLOW_SELF, **q), 401)
    assert_failure(api.get(FLOW, tokens[ALICE], BOB, **q), 401)  # New-Api-User of someone else
    assert_failure(api.get(FLOW, **as_(tokens, ALICE), **q), 403, "administrator")
    for uid in (ALICE, ADMIN, ROOT):
        ok_data(api.get(FLOW_SELF, **as_(tokens, uid), **q))


def test_flow_disabled_user_is_403(engine):
    token = add_user(engine, 8, "dora", status=m.STATUS_DISABLED, role=m.ROLE_ROOT)
    api = with_flow(make_api(engine))
    for path in (FLOW, FLOW_SELF, USERS):
        assert_failure(api.get(path, token, 8, start_timestamp=1, end_timestamp=2), 403, "disabled")


BAD_RANGES = [
    ({}, "invalid start_timestamp"),
    ({"end_timestamp": 100}, "invalid start_timestamp"),
    ({"start_timestamp": "", "end_timestamp": 100}, "invalid start_timestamp"),
    ({"start_timestamp": 0, "end_timestamp": 100}, "invalid start_timestamp"),
    ({"start_timestamp": "000", "end_timestamp": 100}, "invalid start_timestamp"),
    ({"start_timestamp": -5, "end_timestamp": 100}, "invalid start_timestamp"),
    ({"start_timestamp": "1.5", "end_timestamp": 100}, "invalid start_timestamp"),
    ({"start_timestamp": "abc", "end_timestamp": "abc"}, "invalid start_timestamp"),
    ({"start_timestamp": " 5", "end_timestamp": 100}, "invalid start_timestamp"),
    ({"start_timestamp": 2**63, "end_timestamp": 2**63}, "invalid start_timestamp"),
    ({"start_timestamp": "9" * 400, "end_timestamp": 100}, "invalid start_timestamp"),
    ({"start_timestamp": 100}, "invalid end_timestamp"),
    ({"start_timestamp": 100, "end_timestamp": 0}, "invalid end_timestamp"),
    ({"start_timestamp": 100, "end_timestamp": "0x10"}, "invalid end_timestamp"),
    ({"start_timestamp": 100, "end_timestamp": 99}, "invalid time range"),
    ({"start_timestamp": LO, "end_timestamp": HI, "realtime": "yes"}, "realtime"),
]


@pytest.mark.parametrize("path", [FLOW, FLOW_SELF])
@pytest.mark.parametrize(("query", "message"), BAD_RANGES)
def test_flow_bad_input_is_400(sqlite_engine, path, query, message):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = with_flow(make_api(sqlite_engine))
    body = assert_failure(api.get(path, token, ROOT, **query), 400, message)
    if message.startswith("invalid"):
        assert body["message"].startswith(message)  # new-api's message, then why


@pytest.mark.parametrize("path", [FLOW, FLOW_SELF])
def test_flow_repeated_parameters_are_400(sqlite_engine, path):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = with_flow(make_api(sqlite_engine))
    query = [("start_timestamp", "10"), ("start_timestamp", "20"), ("end_timestamp", "30")]
    assert_failure(api.get(path, token, ROOT, query=query), 400, "only once")
    query = [("start_timestamp", "10"), ("end_timestamp", "30"), ("realtime", "true"), ("realtime", "false")]
    assert_failure(api.get(path, token, ROOT, query=query), 400, "only once")
    # Before the other checks: a repeated parameter is named even when start is missing.
    assert_failure(api.get(path, token, ROOT, query=[("realtime", "1"), ("realtime", "1")]), 400, "realtime")


def test_flow_username_bad_input(sqlite_engine):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = with_flow(make_api(sqlite_engine))
    q = {"start_timestamp": 10, "end_timestamp": 20}
    assert_failure(api.get(FLOW, token, ROOT, **q, username="a\x00"), 400, "NUL")
    assert_failure(api.get(FLOW, token, ROOT, query=[("username", "a"), ("username", "b")], **q), 400, "once")
    assert ok_data(api.get(FLOW, token, ROOT, **q, username="")) == []  # empty: no filter


def test_flow_self_spans_at_most_30_days_and_flow_the_daily_limit(sqlite_engine):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = with_flow(make_api(sqlite_engine))
    start = LO
    ok_data(api.get(FLOW_SELF, token, ROOT, start_timestamp=start, end_timestamp=start + 2_592_000))
    assert_failure(
        api.get(FLOW_SELF, token, ROOT, start_timestamp=start, end_timestamp=start + 2_592_001), 400, "30 days"
    )
    # The admin route has new-api's no limit up to API_MAX_SPAN_DAILY_DAYS (366 by default).
    ok_data(api.get(FLOW, token, ROOT, start_timestamp=start, end_timestamp=start + 366 * DAY))
    assert_failure(api.get(FLOW, token, ROOT, start_timestamp=start, end_timestamp=start + 366 * DAY + 1), 400, "366")
    # The largest timestamps are answered (as days: nothing there).
    big = 2**63 - 1
    assert ok_data(api.get(FLOW, token, ROOT, start_timestamp=big - DAY, end_timestamp=big)) == []
    assert ok_data(api.get(FLOW_SELF, token, ROOT, start_timestamp=big, end_timestamp=big)) == []


def test_flow_realtime_refused_when_the_server_turns_it_off(sqlite_engine):
    from api import create_app

    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    settings = Settings(database_url="sqlite://", stats_timezone="UTC", api_realtime=False)
    api = with_flow(Api(create_app(settings, engine=sqlite_engine, limits=ApiLimits())))
    insert(sqlite_engine, log(user_id=ROOT, created_at=LO + 10, group="vip"))
    q = {"start_timestamp": LO, "end_timestamp": HI}
    assert ok_data(api.get(FLOW, token, ROOT, **q)) == []  # not rolled up yet: summary rows only
    assert_failure(api.get(FLOW, token, ROOT, **q, realtime="true"), 400, "API_REALTIME")
