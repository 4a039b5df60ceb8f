"""GET /api/log/stat (admin) and GET /api/log/self/stat: new-api's {quota, rpm, tpm}.

The truth is computed here in Python from every committed log (read straight from
`logs`), independently of shared.logstat, shared.queries and shared.rollup: quota is the
sum over the consume logs with created_at in [start, end] (an end of 0 or absent is
open) matching every filter; rpm and tpm count the matching consume logs created at or
after now - 60. A LIKE pattern is translated to a regular expression here (% -> .*, _ ->
one character, everything else itself, case-sensitively).
Tests taking `engine` run on SQLite and, marked integration, on PostgreSQL.
"""

from __future__ import annotations

import itertools
import random
import re

import pytest
import sqlalchemy as sa

import api.logstat as logstat_api
from api import create_app
from shared import logstat
from shared import models as m
from shared.buckets import local_midnight
from shared.config import Settings
from shared.retention import run_retention
from shared.rollup import tick
from tests.api_support import Api, add_user, assert_failure
from tests.logdata import insert, log, utc

HOUR, DAY = 3600, 86400
LO = utc(2025, 3, 4, 0, 0)  # the logs of the test lie in [LO, HI)
HI = LO + 4 * DAY
NOW = utc(2025, 3, 10, 10, 30, 15)  # the API's clock: rpm and tpm look back from here
ALICE, BOB, CAROL, ROOT = 1, 2, 3, 4
NAMES = {ALICE: "alice", BOB: "bob", CAROL: "al_ce", ROOT: "root"}
MODELS = ("gpt-4o", "GPT-4o", "gpt-4o-mini", "claude-3", "a_b", "axb", "a*b", "a[b]c", "中文模型", "back\\slash", "")
GROUPS = ("default", "vip", "")
TOKENS = ("key-a", "key-b", "Key-A")
CHANNELS = (1, 2, 3)


# --- the truth ------------------------------------------------------------------------


def like_regex(pattern: str) -> re.Pattern:
    parts = [".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts), re.DOTALL)


def matches(value: str, wanted: str) -> bool:
    return like_regex(wanted).fullmatch(value) is not None if "%" in wanted else value == wanted


def all_logs(engine) -> list[dict]:
    lg = m.logs.c
    q = sa.select(
        lg.type,
        lg.user_id,
        lg.username,
        lg.created_at,
        lg.model_name,
        lg.token_name,
        lg.channel_id,
        lg.group,
        lg.quota,
        lg.prompt_tokens,
        lg.completion_tokens,
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def selected(logs, f: dict) -> list[dict]:
    """The consume logs matching the filters in `f` (API parameter names)."""
    out = []
    for lg in logs:
        if lg["type"] != m.LOG_CONSUME or lg["created_at"] is None:
            continue
        if "user_id" in f and (lg["user_id"] or 0) != f["user_id"]:
            continue
        if "username" in f and not matches(lg["username"] or "", f["username"]):
            continue
        if "model_name" in f and not matches(lg["model_name"] or "", f["model_name"]):
            continue
        if "token_name" in f and (lg["token_name"] or "") != f["token_name"]:
            continue
        if f.get("channel") and (lg["channel_id"] or 0) != f["channel"]:
            continue
        if "group" in f and (lg["group"] or "") != f["group"]:
            continue
        out.append(lg)
    return out


def truth(logs, f: dict, now: int = NOW) -> dict:
    start, end = f.get("start_timestamp") or None, f.get("end_timestamp") or None
    rows = selected(logs, f)
    in_range = [
        r for r in rows if (start is None or r["created_at"] >= start) and (end is None or r["created_at"] <= end)
    ]
    recent = [r for r in rows if r["created_at"] >= now - 60]
    return {
        "quota": sum(r["quota"] or 0 for r in in_range),
        "rpm": len(recent),
        "tpm": sum((r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0) for r in recent),
    }


# --- the setup ------------------------------------------------------------------------


def make_app(engine, tz: str = "UTC", **settings) -> Api:
    app = create_app(
        Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=tz, **settings),
        engine=engine,
    )
    if logstat_api.bp.name not in app.blueprints:
        app.register_blueprint(logstat_api.bp)
    return Api(app)


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    monkeypatch.setattr(logstat_api, "now", lambda: NOW)


def people(engine) -> dict[int, str]:
    return {
        uid: add_user(engine, uid, NAMES[uid], role=m.ROLE_ROOT if uid == ROOT else m.ROLE_USER)
        for uid in (ALICE, BOB, CAROL, ROOT)
    }


def random_logs(rnd: random.Random, n: int, lo: int = LO, hi: int = HI) -> list[dict]:
    rows = []
    for _ in range(n):
        uid = rnd.choice((ALICE, ALICE, BOB, CAROL, ROOT))
        # Bob once went by "alice": his logs carry that name (the admin's username filter
        # matches them, Alice's own statistics never include them).
        name = "alice" if uid == BOB and rnd.random() < 0.2 else NAMES[uid]
        kind = m.LOG_CONSUME if rnd.random() < 0.85 else rnd.choice((m.LOG_TOPUP, m.LOG_ERROR, m.LOG_REFUND))
        rows.append(
            log(
                user_id=uid,
                username=name,
                created_at=rnd.randrange(lo, hi),
                model=rnd.choice(MODELS),
                kind=kind,
                quota=rnd.randrange(0, 10_000),
                prompt=rnd.randrange(0, 3000),
                completion=rnd.randrange(0, 900),
                token_name=rnd.choice(TOKENS),
                channel=rnd.choice(CHANNELS),
                group=rnd.choice(GROUPS),
            )
        )
    return rows


def edge_logs(rnd: random.Random) -> list[dict]:
    """Logs on the seconds where parts meet: every hour's first second and the one before
    it, and either side of Asia/Kolkata's midnight (18:30 UTC)."""
    rows = []
    for h in range(LO, HI, HOUR):
        for t in (h - 1, h) + ((h + 1800 - 1, h + 1800) if h % DAY == 18 * HOUR else ()):
            rows += random_logs(rnd, 1, t, t + 1)
    return rows


def some_time(rnd: random.Random) -> int:
    """A second in the logs' span, mostly mid-hour, sometimes on an hour or a local
    midnight's either side."""
    t = rnd.randrange(LO - HOUR, HI + HOUR)
    return rnd.choice((t, t - t % HOUR, t - t % HOUR - 1, t - t % DAY, t - t % DAY - 1, t))


def random_query(rnd: random.Random, admin: bool) -> dict:
    q: dict = {}
    shape = rnd.random()
    if shape < 0.75:
        a, b = sorted((some_time(rnd), some_time(rnd)))
        q["start_timestamp"], q["end_timestamp"] = a, b
    elif shape < 0.85:
        q["start_timestamp"] = some_time(rnd)
    elif shape < 0.95:
        q["end_timestamp"] = some_time(rnd)
    for name, values, p in (
        (
            "model_name",
            ("gpt-4o", "gpt%", "%4o", "GPT%", "%-4o%", "a_b", "a_b%", "a*%", "a[%", "中_%", "back\\%", ""),
            0.4,
        ),
        ("token_name", TOKENS, 0.2),
        ("channel", (*CHANNELS, 0), 0.2),
        ("group", GROUPS[:2], 0.2),
        ("username", ("alice", "al%", "%ce", "AL%", "bob", "al_ce"), 0.3 if admin else 0),
    ):
        if rnd.random() < p:
            q[name] = rnd.choice(values)
    if rnd.random() < 0.2:
        q["type"] = rnd.choice((0, 2, 5))
    return {k: v for k, v in q.items() if v != ""}


def answer(api: Api, path: str, token: str, uid: int, q: dict) -> dict:
    r = api.get(path, token, uid, **q)
    assert r.status_code == 200, (q, r.get_data(as_text=True))
    body = r.get_json()
    assert list(body) == ["success", "message", "data"] and body["success"] is True and body["message"] == ""
    assert list(body["data"]) == ["quota", "rpm", "tpm"]
    return body["data"]


def check_queries(engine, api: Api, tokens: dict, seed: int, n: int) -> int:
    """`n` random admin queries and `n` self queries per user, each against the truth;
    returns how many had a non-zero quota (so that the check checks something)."""
    logs = all_logs(engine)
    rnd = random.Random(seed)
    nonzero = 0
    for _ in range(n):
        q = random_query(rnd, admin=True)
        want = truth(logs, q)
        assert answer(api, "/api/log/stat", tokens[ROOT], ROOT, q) == want, q
        nonzero += want["quota"] > 0
        for uid in (ALICE, BOB):
            q = random_query(rnd, admin=False)
            want = truth(logs, {**q, "user_id": uid})
            assert answer(api, "/api/log/self/stat", tokens[uid], uid, q) == want, (uid, q)
            nonzero += want["quota"] > 0
    return nonzero


# --- cover: the parts of a range ------------------------------------------------------


def _intervals(parts: logstat.Cover) -> list[tuple[float, float, str]]:
    inf = float("inf")
    out = []
    for kind, intervals in (("day", [parts.days] if parts.days else []), ("hour", parts.hours), ("raw", parts.raw)):
        for lo, hi in intervals:
            out.append((-inf if lo is None else lo, inf if hi is None else hi, kind))
    return sorted(out)


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "America/New_York", "Australia/Lord_Howe"])
def test_cover_splits_a_range_into_disjoint_days_hours_and_seconds(tz):
    rnd = random.Random(tz)
    for _ in range(400):
        start = rnd.choice((None, rnd.randrange(LO - 40 * DAY, HI)))
        end = rnd.choice((None, rnd.randrange(start or LO, HI + 40 * DAY)))
        hourly_from = rnd.choice((None, None, LO - LO % HOUR + rnd.randrange(-30, 30) * HOUR))
        parts = logstat.cover(start, end, tz, hourly_from)
        pieces = _intervals(parts)
        lo = float("-inf") if start is None else start
        hi = float("inf") if end is None else end + 1
        # Together exactly [start, end]: contiguous, no overlap, nothing missed.
        assert pieces[0][0] == lo and pieces[-1][1] == hi, (start, end, pieces)
        for (_, a_hi, _), (b_lo, _, _) in itertools.pairwise(pieces):
            assert a_hi == b_lo, (start, end, pieces)
        for a, b, kind in pieces:
            assert a < b, (start, end, pieces)
            if kind == "day":
                for t in (a, b):
                    assert t in (lo, hi) or local_midnight(int(t), tz) == t
            if kind == "hour":
                assert all(t in (float("-inf"), float("inf")) or t % HOUR == 0 for t in (a, b))
                assert hourly_from is None or a >= hourly_from
            if kind == "raw" and hourly_from is None:
                assert b - a < HOUR  # only the partial hours come from the logs
        # Whole days come from the daily rows: at most two days' worth of hours besides.
        hours = sum(b - a for a, b, kind in pieces if kind == "hour")
        assert hours <= 2 * 25 * HOUR


def test_cover_of_a_range_inside_one_hour_is_seconds_only():
    t = utc(2025, 3, 5, 10, 15)
    assert logstat.cover(t, t + 60, "UTC") == logstat.Cover(None, (), ((t, t + 61),))
    assert logstat.cover(t, t, "UTC") == logstat.Cover(None, (), ((t, t + 1),))
    h = t - t % HOUR
    assert logstat.cover(h, h + HOUR - 1, "UTC") == logstat.Cover(None, ((h, h + HOUR),), ())
    assert logstat.cover(None, None, "UTC") == logstat.Cover((None, None), (), ())


# --- patterns -------------------------------------------------------------------------


def test_like_patterns_are_checked_as_new_api_checks_them():
    for ok in ("gpt-4o", "%", "x", "ab%", "%ab", "%ab%", "a%b", "中文%", "a_%"):
        if "%" not in ok or len(ok.replace("%", "")) >= 2:
            logstat.check_pattern("model_name", ok)
    for bad, why in (
        ("gpt%%", "consecutive"),
        ("%%ab", "consecutive"),
        ("%a%b%", "at most 2"),
        ("a%b%c%d", "at most 2"),
        ("%", "at least 2"),
        ("a%", "at least 2"),
        ("%中%", "at least 2"),
    ):
        with pytest.raises(logstat.InvalidPattern, match=why):
            logstat.check_pattern("model_name", bad)
    # Exact values are never patterns, whatever they hold.
    logstat.LogFilter(model_name="a", username="_")


def test_glob_translation_keeps_globs_own_wildcards_literal():
    assert logstat.glob_pattern("a*%") == "a[*]*"
    assert logstat.glob_pattern("[x]?_%") == "[[]x][?]?*"
    assert logstat.glob_pattern("back\\%") == "back\\*"


# --- the endpoints against the truth --------------------------------------------------


@pytest.mark.integration  # long: random ranges over two zones; CI runs it, the fast default does not
@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_quota_rpm_tpm_equal_the_raw_logs_rolled_up_or_not(engine, tz):
    tokens = people(engine)
    api = make_app(engine, tz)
    settings = Settings(database_url=str(engine.url), stats_timezone=tz)
    rnd = random.Random(12)
    # Logs of the last minute (and of just before it) for rpm and tpm.
    recent = [*random_logs(rnd, 40, NOW - 75, NOW + 5), log(user_id=ALICE, username="alice", created_at=NOW - 60)]
    insert(engine, random_logs(rnd, 500) + edge_logs(rnd) + recent)
    # Nothing rolled up yet: everything is the real-time tail or the raw edges.
    assert check_queries(engine, api, tokens, seed=1, n=15) > 10
    tick(engine, settings)
    # All rolled up; then late logs into the same hours and days, and new ones.
    assert check_queries(engine, api, tokens, seed=2, n=15) > 10
    insert(engine, random_logs(rnd, 150) + random_logs(rnd, 20, NOW - 70, NOW))
    assert check_queries(engine, api, tokens, seed=3, n=25) > 20
    tick(engine, settings)
    assert check_queries(engine, api, tokens, seed=4, n=10) > 5


def test_every_filter_alone_and_the_like_rules(engine):
    tokens = people(engine)
    api = make_app(engine)
    rnd = random.Random(5)
    insert(engine, random_logs(rnd, 400) + edge_logs(rnd))
    tick(engine, Settings(database_url=str(engine.url)))
    insert(engine, random_logs(rnd, 100) + random_logs(rnd, 30, NOW - 90, NOW))
    logs = all_logs(engine)
    window = {"start_timestamp": LO + 3 * HOUR + 1234, "end_timestamp": HI - 2 * DAY - 77}
    cases = [
        {"model_name": v}
        for v in ("gpt-4o", "GPT-4o", "gpt%", "GPT%", "%4o", "a_b", "a_b%", "a*%", "a[%", "中_%", "back\\%")
    ]
    cases += [{"token_name": v} for v in TOKENS]
    cases += [{"channel": c} for c in CHANNELS]
    cases += [{"group": g} for g in GROUPS[:2]]
    cases += [{"username": v} for v in ("alice", "al%", "AL%", "%ce", "al_ce")]
    for case in cases:
        for q in (case, {**case, **window}):
            want = truth(logs, q)
            assert want["quota"] > 0 or "AL%" in q.values() or "GPT%" in q.values(), q
            assert answer(api, "/api/log/stat", tokens[ROOT], ROOT, q) == want, q
    # Case matters, on both databases; `_` is one character; `[`, `*` and `\` are themselves.
    assert truth(logs, {"model_name": "GPT%"})["quota"] == truth(logs, {"model_name": "GPT-4o"})["quota"] > 0
    assert truth(logs, {"username": "AL%"})["quota"] == 0
    assert truth(logs, {"model_name": "a_b%"})["quota"] == sum(
        truth(logs, {"model_name": v})["quota"] for v in ("a_b", "axb", "a*b", "a[b]c")
    )


def test_a_user_sees_only_their_own_logs(engine):
    tokens = people(engine)
    api = make_app(engine)
    rnd = random.Random(9)
    insert(engine, random_logs(rnd, 300) + random_logs(rnd, 30, NOW - 50, NOW))
    tick(engine, Settings(database_url=str(engine.url)))
    insert(engine, random_logs(rnd, 60))
    logs = all_logs(engine)
    for uid in (ALICE, BOB, CAROL):
        mine = answer(api, "/api/log/self/stat", tokens[uid], uid, {})
        assert mine == truth(logs, {"user_id": uid}) and mine["quota"] > 0
        # A username parameter does not widen (or narrow) it, nor does any other filter.
        assert answer(api, "/api/log/self/stat", tokens[uid], uid, {"username": "bob"}) == mine
        assert answer(api, "/api/log/self/stat", tokens[uid], uid, {"username": "%%"}) == mine
    # Bob's logs recorded as "alice" are Alice's by name on the admin route, not on hers.
    by_name = answer(api, "/api/log/stat", tokens[ROOT], ROOT, {"username": "alice"})
    hers = answer(api, "/api/log/self/stat", tokens[ALICE], ALICE, {})
    assert by_name == truth(logs, {"username": "alice"})
    bob_as_alice = sum(r["quota"] for r in selected(logs, {"user_id": BOB, "username": "alice"}))
    assert bob_as_alice > 0 and by_name["quota"] == hers["quota"] + bob_as_alice
    # The admin's own statistics on the self route are theirs alone.
    assert answer(api, "/api/log/self/stat", tokens[ROOT], ROOT, {}) == truth(logs, {"user_id": ROOT})


def test_rpm_and_tpm_are_the_last_60_seconds_whatever_the_range(engine):
    tokens = people(engine)
    api = make_app(engine)
    rows = [
        log(user_id=ALICE, username="alice", created_at=NOW - 61, prompt=1000, completion=1000, model="m1"),
        log(user_id=ALICE, username="alice", created_at=NOW - 60, prompt=7, completion=3, model="m1"),
        log(user_id=ALICE, username="alice", created_at=NOW, prompt=20, completion=2, model="m2"),
        log(user_id=ALICE, username="alice", created_at=NOW + 30, prompt=100, completion=0, model="m1"),
        log(user_id=BOB, username="bob", created_at=NOW - 10, prompt=5, completion=5, model="m1"),
        log(user_id=ALICE, username="alice", created_at=NOW - 5, prompt=900, completion=9, kind=m.LOG_ERROR),
        log(user_id=ALICE, username="alice", created_at=LO, quota=5, prompt=1, completion=1, model="m1"),
    ]
    insert(engine, rows)
    alice = answer(api, "/api/log/self/stat", tokens[ALICE], ALICE, {"start_timestamp": LO, "end_timestamp": LO})
    assert alice == {"quota": 5, "rpm": 3, "tpm": 10 + 22 + 100}
    m1 = answer(api, "/api/log/stat", tokens[ROOT], ROOT, {"model_name": "m1", "end_timestamp": LO + 1})
    assert m1 == {"quota": 5, "rpm": 3, "tpm": 10 + 100 + 10}
    tick(engine, Settings(database_url=str(engine.url)))
    assert (
        answer(api, "/api/log/self/stat", tokens[ALICE], ALICE, {"start_timestamp": LO, "end_timestamp": LO}) == alice
    )
    assert answer(api, "/api/log/stat", tokens[ROOT], ROOT, {"username": "bob"})["rpm"] == 1
    assert answer(api, "/api/log/stat", tokens[ROOT], ROOT, {"username": "nobody"}) == {"quota": 0, "rpm": 0, "tpm": 0}


def test_hours_past_the_hourly_retention_come_from_the_logs(engine):
    """With RETAIN_HOURLY_DAYS the hourly rows of old hours are gone, the daily rows and
    (without RETAIN_LOGS_DAYS) the logs stay: an old range's partial days are summed
    from the logs, still exactly."""
    tokens = people(engine)
    settings = {"retain_hourly_days": 3}
    api = make_app(engine, **settings)
    rnd = random.Random(21)
    insert(engine, random_logs(rnd, 400))
    tick(engine, Settings(database_url=str(engine.url)))
    run = run_retention(engine, Settings(database_url=str(engine.url), **settings), now=NOW)
    assert run.compacted["hourly_detail_usage"] > 0 and "hourly_detail_usage" not in run.deleted
    logs = all_logs(engine)
    for q in (
        {"start_timestamp": LO + 5 * HOUR + 17, "end_timestamp": HI - 7 * HOUR - 5},
        {"start_timestamp": LO + 30 * HOUR + 1, "end_timestamp": LO + 33 * HOUR},
        {"start_timestamp": LO + 1, "model_name": "gpt%"},
    ):
        want = truth(logs, q)
        assert want["quota"] > 0
        assert answer(api, "/api/log/stat", tokens[ROOT], ROOT, q) == want, q


def test_whole_days_come_from_the_daily_rows(engine):
    """Documented behaviour with RETAIN_LOGS_DAYS: a whole day inside the range is summed
    from its daily rows, so its usage still counts after its logs are gone (new-api, summing
    the logs, would say less)."""
    tokens = people(engine)
    api = make_app(engine)
    rnd = random.Random(33)
    insert(engine, random_logs(rnd, 300))
    tick(engine, Settings(database_url=str(engine.url)))
    q = {"start_timestamp": LO + 7 * HOUR + 99, "end_timestamp": HI - 5 * HOUR - 1}
    before = answer(api, "/api/log/stat", tokens[ROOT], ROOT, q)
    assert before == truth(all_logs(engine), q)
    day = LO + DAY
    with engine.begin() as conn:
        conn.execute(sa.delete(m.logs).where(m.logs.c.created_at.between(day, day + DAY - 1)))
    assert answer(api, "/api/log/stat", tokens[ROOT], ROOT, q) == before


# --- who may ask, and what ------------------------------------------------------------


def test_auth(engine):
    tokens = people(engine)
    api = make_app(engine)
    for path in ("/api/log/stat", "/api/log/self/stat"):
        assert_failure(api.get(path), 401, "access token")
        assert_failure(api.get(path, "0" * 32, ALICE), 401, "invalid access token")
        assert_failure(api.get(path, tokens[ALICE]), 401, "New-Api-User")
        assert_failure(api.get(path, tokens[ALICE], BOB), 401, "does not match")
    assert_failure(api.get("/api/log/stat", tokens[ALICE], ALICE), 403, "administrator")
    disabled = add_user(engine, 9, "gone", status=2)
    assert_failure(api.get("/api/log/self/stat", disabled, 9), 403, "disabled")
    # Authentication comes before the parameters.
    assert_failure(api.get("/api/log/stat", tokens[ALICE], ALICE, model_name="%%"), 403)
    assert_failure(api.get("/api/log/self/stat", model_name="%%"), 401)


@pytest.mark.parametrize("path", ["/api/log/stat", "/api/log/self/stat"])
def test_bad_parameters_are_400(engine, path):
    tokens = people(engine)
    api = make_app(engine)

    def bad(*fragments, query=None, **params):
        return assert_failure(api.get(path, tokens[ROOT], ROOT, query=query, **params), 400, *fragments)

    for name in ("type", "start_timestamp", "end_timestamp", "token_name", "model_name", "channel", "group"):
        bad("only once", query=[(name, "1"), (name, "2")])
    for name in ("type", "channel", "start_timestamp", "end_timestamp"):
        bad(name, **{name: "abc"})
        bad(name, **{name: "-1"})
        bad(name, **{name: "1.5"})
        bad("too large", **{name: "9" * 30})
    bad("after", start_timestamp=LO + 1, end_timestamp=LO)
    bad("consecutive", model_name="gpt%%")
    bad("at most 2", model_name="%g%p%")
    bad("at least 2", model_name="g%")
    bad("NUL", token_name="a\x00b")
    bad("NUL", group="\x00")
    if path == "/api/log/stat":
        bad("only once", query=[("username", "a"), ("username", "b")])
        bad("consecutive", username="%%al")
        bad("at most 2", username="%a%l%")
        bad("at least 2", username="%a")


def test_empty_and_zero_values_are_absent(engine):
    tokens = people(engine)
    api = make_app(engine)
    rnd = random.Random(2)
    insert(engine, random_logs(rnd, 200) + random_logs(rnd, 10, NOW - 30, NOW))
    logs = all_logs(engine)
    everything = truth(logs, {})
    assert everything["quota"] > 0 and everything["rpm"] > 0
    for q in (
        {},
        {"start_timestamp": 0, "end_timestamp": 0},
        {"channel": 0},
        {"type": 0},
        {"type": 99},
        {"start_timestamp": "", "end_timestamp": "", "model_name": "", "token_name": "", "group": "", "channel": ""},
        {"username": "", "type": ""},
        {"unknown": "ignored"},
    ):
        assert answer(api, "/api/log/stat", tokens[ROOT], ROOT, q) == everything, q
    assert answer(api, "/api/log/stat", tokens[ROOT], ROOT, {"end_timestamp": NOW - 3600}) == truth(
        logs, {"end_timestamp": NOW - 3600}
    )


def test_the_largest_timestamps(engine):
    """Ranges reaching BIGINT's end (beyond Python's calendar): no whole days there, and
    no bound outside BIGINT reaches the database."""
    tokens = people(engine)
    api = make_app(engine)
    top = 2**63 - 1
    insert(
        engine,
        [
            log(created_at=LO + 5, quota=3),
            log(created_at=10**15, quota=50),
            log(created_at=top - 1, quota=700),
            log(created_at=top, quota=9000),
        ],
    )
    for q, want in (
        ({"start_timestamp": 1, "end_timestamp": top}, 9753),
        ({"start_timestamp": top, "end_timestamp": top}, 9000),
        ({"start_timestamp": top - 1}, 9700),
        ({"start_timestamp": 10**15 - 1, "end_timestamp": top - 1}, 750),
        ({"end_timestamp": 10**15}, 53),
    ):
        assert answer(api, "/api/log/stat", tokens[ROOT], ROOT, q)["quota"] == want, q
    tick(engine, Settings(database_url=str(engine.url)))
    assert answer(api, "/api/log/stat", tokens[ROOT], ROOT, {"start_timestamp": top - 1})["quota"] == 9700
    assert answer(api, "/api/log/stat", tokens[ROOT], ROOT, {})["quota"] == 9753
