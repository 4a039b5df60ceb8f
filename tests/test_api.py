"""The read API against a real database: authentication, parameters, who sees what,
and the error shapes. Summary rows are written directly; tests/test_api_e2e.py goes
through logs and the rollup instead.

Tests taking `engine` (or `api`) run on SQLite and, marked integration, on PostgreSQL.
"""

from __future__ import annotations

import logging
import time

import pytest
import sqlalchemy as sa

from api import create_app
from api.config import ApiLimits
from shared import aggregation as agg
from shared import models as m
from shared.config import ConfigError, Settings
from shared.db import make_engine
from tests.api_support import (
    add_rows,
    add_user,
    api,  # noqa: F401  (fixture)
    assert_failure,
    make_api,
    model_row,
    ok_data,
    user_row,
)

H = 3600
D = 86400
T0 = 1_700_000_000 - 1_700_000_000 % D  # a UTC midnight (2023-11-14)
INT64_MAX = 2**63 - 1

SELF = "/api/data/self"
ALL = "/api/data/"


@pytest.fixture
def people(engine):
    """alice (1) and bob (2) are common users, root (3) and admin (4) administrators,
    carol (5) is disabled, dave (6) soft-deleted, gus (7) a guest (role 0)."""
    return {
        "alice": (1, add_user(engine, 1, "alice")),
        "bob": (2, add_user(engine, 2, "bob")),
        "root": (3, add_user(engine, 3, "root", role=m.ROLE_ROOT)),
        "admin": (4, add_user(engine, 4, "admin", role=m.ROLE_ADMIN)),
        "carol": (5, add_user(engine, 5, "carol", status=m.STATUS_DISABLED)),
        "dave": (6, add_user(engine, 6, "dave", deleted=True)),
        "gus": (7, add_user(engine, 7, "gus", role=0)),
    }


def as_(people, name):
    """(token, user) keyword arguments for Api.get."""
    uid, token = people[name]
    return {"token": token, "user": uid}


WINDOW = {"start_timestamp": T0, "end_timestamp": T0 + 2 * D}


# --- authentication -------------------------------------------------------------------


@pytest.mark.parametrize("path", [SELF, ALL])
def test_missing_token_is_401(api, people, path):
    assert_failure(api.get(path, user=1), 401, "access token")
    assert_failure(api.get(path, headers={"Authorization": "Bearer "}, user=1), 401, "access token")
    assert_failure(api.get(path, headers={"Authorization": "   "}, user=1), 401)


@pytest.mark.parametrize("path", [SELF, ALL])
def test_invalid_token_is_401(api, people, path):
    _, token = people["root"]
    for bad in ("0" * 32, token[:-1], token + "0", token.upper(), token[1:] + token[0], "x", "y" * 300):
        body = assert_failure(api.get(path, bad, 3), 401, "invalid access token")
        assert token not in body["message"]


def test_bearer_and_bare_tokens_are_both_accepted(api, people):
    uid, token = people["alice"]
    assert ok_data(api.get(SELF, token, uid)) == []
    assert ok_data(api.get(SELF, token, uid, bearer=False)) == []
    assert ok_data(api.get(SELF, headers={"Authorization": f"bearer {token}"}, user=uid)) == []


def test_token_in_another_scheme_is_not_a_token(api, people):
    uid, token = people["alice"]
    assert_failure(api.get(SELF, headers={"Authorization": f"Basic {token}"}, user=uid), 401)


def test_tokens_that_cannot_be_sent_to_the_database_are_401_not_500(api, people):
    # NUL is refused by PostgreSQL in a parameter; non-ASCII cannot be a new-api token.
    for bad in ("abc\x00def", "tökén", "\t\x01"):
        assert_failure(api.get(SELF, headers={"Authorization": bad.encode("latin-1").decode("latin-1")}, user=1), 401)


def test_token_stored_shorter_than_the_column(engine, people):
    # access_token is char(32): PostgreSQL pads a shorter value with blanks and ignores
    # them when comparing; the final comparison must still be exact.
    add_user(engine, 20, "short", token="short-token")
    api = make_api(engine)
    assert ok_data(api.get(SELF, "short-token", 20)) == []
    assert_failure(api.get(SELF, "short-toke", 20), 401)
    assert_failure(api.get(SELF, "short-token0", 20), 401)


@pytest.mark.parametrize("path", [SELF, ALL])
def test_new_api_user_missing_malformed_or_mismatched_is_401(api, people, path):
    _, token = people["root"]
    assert_failure(api.get(path, token), 401, "New-Api-User")
    assert_failure(api.get(path, token, ""), 401, "New-Api-User")
    for bad in ("abc", "3.0", "-3", "+3", "0x3", "3 3", "99999999999999999999999", "٣"):
        assert_failure(api.get(path, token, bad), 401, "New-Api-User")
    # Another user's id with root's token, even an administrator's, even a real one.
    for other in (1, 4, 5, 999):
        assert_failure(api.get(path, token, other), 401, "does not match")


def test_new_api_user_may_have_leading_zeros_and_blanks(api, people):
    # As new-api's strconv.Atoi reads it.
    _, token = people["alice"]
    assert ok_data(api.get(SELF, token, "001")) == []
    assert ok_data(api.get(SELF, token, " 1 ")) == []


@pytest.mark.parametrize("path", [SELF, ALL])
def test_disabled_user_is_403(api, people, path):
    assert_failure(api.get(path, **as_(people, "carol")), 403, "disabled")


def test_disabled_administrator_is_403(engine, people):
    token = add_user(engine, 30, "fallen", role=m.ROLE_ROOT, status=m.STATUS_DISABLED)
    api = make_api(engine)
    assert_failure(api.get(ALL, token, 30), 403, "disabled")


@pytest.mark.parametrize("path", [SELF, ALL])
def test_soft_deleted_user_is_absent(api, people, path):
    assert_failure(api.get(path, **as_(people, "dave")), 401, "invalid access token")


def test_common_user_is_refused_the_admin_route(api, people):
    assert_failure(api.get(ALL, **as_(people, "alice")), 403, "administrator")
    assert_failure(api.get(ALL, **as_(people, "alice"), username="alice"), 403, "administrator")
    assert_failure(api.get("/api/data", **as_(people, "alice")), 403, "administrator")


def test_admin_and_root_may_use_the_admin_route(api, people):
    assert ok_data(api.get(ALL, **as_(people, "admin"))) == []
    assert ok_data(api.get(ALL, **as_(people, "root"))) == []
    # Administrators are users too.
    assert ok_data(api.get(SELF, **as_(people, "admin"))) == []


def test_guest_role_is_refused_self(api, people):
    # new-api's user routes need role >= 1 (common user); a guest (0) is refused.
    assert_failure(api.get(SELF, **as_(people, "gus")), 403)


def test_authentication_comes_before_parameters(api, people):
    # Without a valid token, nothing about the parameters is revealed.
    assert_failure(api.get(SELF, start_timestamp="bad"), 401)
    assert_failure(api.get(ALL, "0" * 32, 3, granularity="week"), 401)
    assert_failure(api.get(ALL, **as_(people, "alice"), granularity="week"), 403)


def test_a_database_failure_before_the_version_is_not_followed_by_another_statement(sqlite_engine):
    """auth.Asking.refusing_first: a refusal (a parameter's) made while the credentials
    are only claimed gives way to authenticate's, which reads the database; a failure of
    the database itself is raised as it is (a 503), never replaced by what a second
    statement on the broken connection would raise (a 500). Here the connection is closed:
    any statement on it fails with ResourceClosedError."""
    from flask import Flask

    from api.auth import Asking, Claim
    from api.errors import ApiError

    conn = sqlite_engine.connect()
    conn.close()
    who = Asking(conn, m.ROLE_USER, None, Claim("a" * 32, 1, m.ROLE_USER))
    lost = sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    with Flask(__name__).test_request_context(headers={"Authorization": "Bearer " + "a" * 32, "New-Api-User": "1"}):
        with pytest.raises(sa.exc.OperationalError) as raised, who.refusing_first():
            raise lost
        assert raised.value is lost
        with pytest.raises(sa.exc.ResourceClosedError), who.refusing_first():  # authenticate ran first
            raise ApiError(400, "invalid granularity")


# --- who sees what --------------------------------------------------------------------


@pytest.fixture
def usage(engine, people):
    """Hourly rows of alice, bob and a user unknown to `users`, in the same buckets and
    models; site-wide rows that are deliberately NOT the sum of the per-user rows, so a
    test can tell which table an answer came from; daily rows unlike the hourly ones."""
    hourly = [
        user_row(1, T0, "gpt-4o", "alice", count=2, quota=200),
        user_row(1, T0 + H, "claude", "alice", count=1, quota=50),
        user_row(1, T0 + H, "gpt-4o", "alice", count=3, quota=300),
        user_row(2, T0, "gpt-4o", "bob", count=7, quota=700),
        user_row(2, T0 + H, "claude", "bob", count=8, quota=800),
        user_row(9, T0, "gpt-4o", "ghost", count=5, quota=500),
    ]
    daily = [
        user_row(1, T0, "claude", "alice", count=1, quota=50),
        user_row(1, T0, "gpt-4o", "alice", count=5, quota=500),
        user_row(2, T0, "claude", "bob", count=8, quota=800),
        user_row(2, T0, "gpt-4o", "bob", count=7, quota=700),
    ]
    hourly_site = [
        model_row(T0 + H, "gpt-4o", count=1000),
        model_row(T0, "gpt-4o", count=1001),
        model_row(T0 + H, "claude", count=1002),
    ]
    daily_site = [model_row(T0, "gpt-4o", count=2000), model_row(T0 + D, "claude", count=2001)]
    add_rows(engine, agg.hourly_usage, hourly)
    add_rows(engine, agg.daily_usage, daily)
    add_rows(engine, agg.hourly_model_usage, hourly_site)
    add_rows(engine, agg.daily_model_usage, daily_site)
    return {"hour": hourly, "day": daily, "hour_site": hourly_site, "day_site": daily_site}


def ordered(rows):
    return sorted(rows, key=lambda r: (r["created_at"], r["model_name"]))


USER_FIELDS = [
    "model_name",
    "count",
    "quota",
    "token_used",
    "created_at",
    "user_id",
    "username",
    "prompt_tokens",
    "completion_tokens",
]
SITE_FIELDS = ["model_name", "count", "quota", "token_used", "created_at", "prompt_tokens", "completion_tokens"]


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_self_returns_only_the_callers_rows(api, people, usage, granularity):
    for name, uid in (("alice", 1), ("bob", 2)):
        data = ok_data(api.get(SELF, **as_(people, name), granularity=granularity, **WINDOW))
        expected = ordered(r for r in usage[granularity] if r["user_id"] == uid)
        assert data == expected and data
        assert [list(row) for row in data] == [USER_FIELDS] * len(data)  # the contract's field order


def test_self_ignores_a_username_parameter(api, people, usage):
    data = ok_data(api.get(SELF, **as_(people, "alice"), username="bob", **WINDOW))
    assert {r["user_id"] for r in data} == {1}


def test_another_users_id_never_yields_their_rows(api, people, usage):
    # alice's token claiming to be bob: refused, and no row of bob's in the answer.
    response = api.get(SELF, people["alice"][1], 2, **WINDOW)
    assert_failure(response, 401)
    assert "bob" not in response.get_data(as_text=True)


def test_user_without_rows_sees_nothing(api, people, usage):
    assert api.get(SELF, **as_(people, "admin"), **WINDOW).get_json() == {"success": True, "message": "", "data": []}


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_admin_reads_the_site_wide_tables(api, people, usage, granularity):
    data = ok_data(api.get(ALL, **as_(people, "admin"), granularity=granularity, **WINDOW))
    assert data == ordered(usage[f"{granularity}_site"])
    assert [list(row) for row in data] == [SITE_FIELDS] * len(data)


def test_admin_route_without_trailing_slash_answers_without_redirect(api, people, usage):
    with_slash = api.get(ALL, **as_(people, "admin"), **WINDOW)
    without = api.get("/api/data", **as_(people, "admin"), **WINDOW)
    assert without.status_code == 200 and "Location" not in without.headers
    assert without.get_json() == with_slash.get_json()


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_admin_username_narrows_to_that_user(api, people, usage, granularity):
    data = ok_data(api.get(ALL, **as_(people, "root"), username="bob", granularity=granularity, **WINDOW))
    assert data == ordered(r for r in usage[granularity] if r["user_id"] == 2) and data
    assert [list(row) for row in data] == [USER_FIELDS] * len(data)


def test_admin_username_unknown_or_deleted_is_empty(api, people, usage, engine):
    # dave is soft-deleted (treated as absent) even though he has rows; "ghost" has rows
    # but is no user; names match exactly.
    add_rows(engine, agg.hourly_usage, [user_row(6, T0, "gpt-4o", "dave")])
    for name in ("nobody", "ghost", "dave", "ALICE", "alice "):
        assert ok_data(api.get(ALL, **as_(people, "root"), username=name, **WINDOW)) == [], name
    # An empty username is no filter, like every empty parameter.
    site = ok_data(api.get(ALL, **as_(people, "root"), username="", **WINDOW))
    assert site == ordered(usage["hour_site"])


def test_admin_username_follows_the_user_not_the_recorded_name(engine, people):
    # alice was called "al" when some rows were written; a later user took the name "al2"
    # and has rows recorded under "alice" by a gateway glitch: username=alice means
    # user 1, all of user 1's rows, and nobody else's.
    add_rows(
        engine,
        agg.hourly_usage,
        [
            user_row(1, T0, "gpt-4o", "al"),
            user_row(1, T0 + H, "gpt-4o", "alice"),
            user_row(2, T0 + H, "claude", "alice"),
        ],
    )
    data = ok_data(make_api(engine).get(ALL, **as_(people, "root"), username="alice", **WINDOW))
    assert [(r["user_id"], r["created_at"], r["username"]) for r in data] == [(1, T0, "al"), (1, T0 + H, "alice")]


def test_username_with_nul_is_400(api, people):
    assert_failure(api.get(ALL, **as_(people, "root"), username="a\x00b"), 400, "username")


# --- parameters -----------------------------------------------------------------------


@pytest.fixture
def sq_api(sqlite_engine):
    return make_api(sqlite_engine)


@pytest.fixture
def root(sqlite_engine):
    return {"token": add_user(sqlite_engine, 3, "root", role=m.ROLE_ROOT), "user": 3}


BAD_NUMBERS = ["abc", "1e9", "1.5", "1.0", "0x10", "+5", " 5", "5 ", "1_000", "٣٤", "NaN", "--5"]


@pytest.mark.parametrize("name", ["start_timestamp", "end_timestamp"])
@pytest.mark.parametrize("raw", BAD_NUMBERS)
def test_non_numeric_and_float_timestamps_are_400(sq_api, root, name, raw):
    for path in (SELF, ALL):
        assert_failure(sq_api.get(path, **root, **{name: raw}), 400, name, "whole number")


@pytest.mark.parametrize("name", ["start_timestamp", "end_timestamp"])
def test_negative_timestamps_are_400(sq_api, root, name):
    assert_failure(sq_api.get(SELF, **root, **{name: "-1"}), 400, name, "negative")
    assert_failure(sq_api.get(ALL, **root, **{name: "-1700000000"}), 400, name, "negative")


@pytest.mark.parametrize("name", ["start_timestamp", "end_timestamp"])
def test_timestamps_beyond_int64_are_400(sq_api, root, name):
    for raw in (str(INT64_MAX + 1), "99999999999999999999", "1" * 5000):
        assert_failure(sq_api.get(SELF, **root, **{name: raw}), 400, name, "too large")


def test_largest_int64_timestamps_are_accepted(engine):
    # At the edge of BIGINT on both databases.
    token = add_user(engine, 3, "root", role=m.ROLE_ROOT)
    add_rows(engine, agg.hourly_model_usage, [model_row(INT64_MAX - 10, "edge")])
    data = ok_data(make_api(engine).get(ALL, token, 3, start_timestamp=INT64_MAX - 100, end_timestamp=INT64_MAX))
    assert [r["created_at"] for r in data] == [INT64_MAX - 10]
    # Leading zeros do not make a number large.
    ok_data(make_api(engine).get(ALL, token, 3, start_timestamp="0" * 30 + "5", end_timestamp="00010"))


def test_start_after_end_is_400(sq_api, root):
    assert_failure(sq_api.get(SELF, **root, start_timestamp=T0 + 1, end_timestamp=T0), 400, "after")
    # With end defaulting to now, a start in the future is after it too.
    assert_failure(sq_api.get(SELF, **root, start_timestamp=int(time.time()) + 10 * D), 400, "after")


def test_start_equal_to_end_is_one_instant(sq_api, root, sqlite_engine):
    add_rows(sqlite_engine, agg.hourly_model_usage, [model_row(T0, "a"), model_row(T0 + H, "b")])
    data = ok_data(sq_api.get(ALL, **root, start_timestamp=T0 + H, end_timestamp=T0 + H))
    assert [r["model_name"] for r in data] == ["b"]


@pytest.mark.parametrize("granularity,days", [("hour", 31), ("day", 366)])
def test_span_limits(sq_api, root, granularity, days):
    end = T0 + 400 * D
    ok_data(sq_api.get(SELF, **root, granularity=granularity, start_timestamp=end - days * D, end_timestamp=end))
    assert_failure(
        sq_api.get(SELF, **root, granularity=granularity, start_timestamp=end - days * D - 1, end_timestamp=end),
        400,
        f"{days} days",
        f"granularity={granularity}",
    )
    # A start alone, far back, with end = now: the same limit.
    assert_failure(sq_api.get(ALL, **root, granularity=granularity, start_timestamp=0), 400, f"{days} days")


def test_span_limits_come_from_the_environment(sqlite_engine, root):
    settings = Settings.from_env({"API_MAX_SPAN_HOURLY_DAYS": "2", "API_MAX_SPAN_DAILY_DAYS": "3"})
    api = make_api(sqlite_engine, limits=ApiLimits.from_settings(settings))
    ok_data(api.get(SELF, **root, start_timestamp=T0, end_timestamp=T0 + 2 * D))
    assert_failure(api.get(SELF, **root, start_timestamp=T0, end_timestamp=T0 + 2 * D + 1), 400, "2 days")
    assert_failure(
        api.get(SELF, **root, granularity="day", start_timestamp=T0, end_timestamp=T0 + 4 * D), 400, "3 days"
    )
    # The default week of days is cut to the configured 3 days rather than refused.
    ok_data(api.get(SELF, **root, granularity="day"))
    assert ApiLimits.from_settings(Settings.from_env({})) == ApiLimits(31, 366)
    for bad in ("0", "-1", "x", "1.5"):
        with pytest.raises(ConfigError, match="API_MAX_SPAN_HOURLY_DAYS"):
            Settings.from_env({"API_MAX_SPAN_HOURLY_DAYS": bad})


@pytest.mark.parametrize("raw", ["year", "HOUR", "Day", "Week", "hours", "months", "minute", "hour ", "0"])
def test_unknown_granularity_is_400(sq_api, root, raw):
    assert_failure(sq_api.get(SELF, **root, granularity=raw), 400, "granularity")
    assert_failure(sq_api.get(ALL, **root, granularity=raw), 400, "granularity")


@pytest.mark.parametrize(
    "name,values",
    [
        ("start_timestamp", [T0, T0]),
        ("end_timestamp", [T0, T0 + 1]),
        ("granularity", ["hour", "day"]),
        ("granularity", ["hour", "hour"]),
    ],
)
def test_repeated_parameters_are_400(sq_api, root, name, values):
    for path in (SELF, ALL):
        assert_failure(sq_api.get(path, **root, query=[(name, str(v)) for v in values]), 400, name, "once")


def test_repeated_username_is_400(sq_api, root):
    assert_failure(sq_api.get(ALL, **root, query=[("username", "a"), ("username", "b")]), 400, "username", "once")


def test_empty_values_count_as_absent(sq_api, root, sqlite_engine):
    now = int(time.time())
    add_rows(sqlite_engine, agg.hourly_model_usage, [model_row(now - now % H - 2 * H, "recent")])
    data = ok_data(sq_api.get(ALL, **root, start_timestamp="", end_timestamp="", granularity=""))
    assert [r["model_name"] for r in data] == ["recent"]


def test_bounds_are_inclusive(sq_api, root, sqlite_engine):
    add_rows(sqlite_engine, agg.hourly_model_usage, [model_row(T0 + i * H, f"m{i}") for i in range(4)])

    def names(start, end):
        return [r["model_name"] for r in ok_data(sq_api.get(ALL, **root, start_timestamp=start, end_timestamp=end))]

    assert names(T0, T0 + 3 * H) == ["m0", "m1", "m2", "m3"]
    assert names(T0 + 1, T0 + 3 * H) == ["m1", "m2", "m3"]  # a bucket counts by its start
    assert names(T0, T0 + 3 * H - 1) == ["m0", "m1", "m2"]
    assert names(T0 + H, T0 + 2 * H) == ["m1", "m2"]


def test_defaults_are_the_last_day_of_hours_and_the_last_week_of_days(sqlite_engine, root):
    now = int(time.time())
    hour = now - now % H
    day = now - now % D
    add_rows(
        sqlite_engine,
        agg.hourly_model_usage,
        [
            model_row(hour - 2 * H, "2h-ago"),
            model_row(hour - 30 * H, "30h-ago"),
            model_row(hour + 5 * H, "future"),
        ],
    )
    add_rows(
        sqlite_engine,
        agg.daily_model_usage,
        [
            model_row(day - 3 * D, "3d-ago"),
            model_row(day - 10 * D, "10d-ago"),
            model_row(day + 2 * D, "future"),
        ],
    )
    api = make_api(sqlite_engine)
    assert [r["model_name"] for r in ok_data(api.get(ALL, **root))] == ["2h-ago"]
    assert [r["model_name"] for r in ok_data(api.get(ALL, **root, granularity="day"))] == ["3d-ago"]
    # An end alone: the day (or week) before it.
    assert [r["model_name"] for r in ok_data(api.get(ALL, **root, end_timestamp=hour - 7 * H))] == ["30h-ago"]
    assert [r["model_name"] for r in ok_data(api.get(ALL, **root, granularity="day", end_timestamp=day - 5 * D))] == [
        "10d-ago"
    ]


def test_rows_are_ordered_by_created_at_then_model(sq_api, root, sqlite_engine):
    rows = [
        model_row(T0 + H, "b"),
        model_row(T0, "z"),
        model_row(T0 + H, "a"),
        model_row(T0, "a"),
        model_row(T0 + 2 * H, ""),
    ]
    add_rows(sqlite_engine, agg.hourly_model_usage, rows)
    data = ok_data(sq_api.get(ALL, **root, **WINDOW))
    assert [(r["created_at"] - T0, r["model_name"]) for r in data] == [
        (0, "a"),
        (0, "z"),
        (H, "a"),
        (H, "b"),
        (2 * H, ""),
    ]


@pytest.mark.integration
def test_model_order_does_not_follow_the_database_locale(pg_engine):
    # Under a linguistic collation "_z" < "a" < "B"; in code point order "B" < "_z" < "a".
    # The answer must not depend on how the PostgreSQL database was created.
    with pg_engine.connect() as conn:
        available = set(conn.execute(sa.text("SELECT collname FROM pg_collation")).scalars())
    # Not a skip when none is installed: CI fails skipped integration tests, and a server
    # without linguistic collations sorts bytewise anyway (the check below still runs).
    collation = next((c for c in ("und-x-icu", "en-x-icu", "en_US.utf8", "en_US.UTF-8") if c in available), None)
    token = add_user(pg_engine, 3, "root", role=m.ROLE_ROOT)
    names = ["a", "B", "_z", "gpt4", "gpt-4o", ""]
    add_rows(pg_engine, agg.hourly_model_usage, [model_row(T0, n) for n in names])
    add_rows(pg_engine, agg.hourly_usage, [user_row(3, T0, n, "root") for n in names])
    tables = ("hourly_model_usage", "hourly_usage")
    try:
        if collation:
            with pg_engine.begin() as conn:
                for table in tables:
                    conn.exec_driver_sql(f'ALTER TABLE {table} ALTER COLUMN model_name TYPE text COLLATE "{collation}"')
                # The premise: under this column collation, plain ORDER BY is not code point order.
                plain = (
                    conn.exec_driver_sql("SELECT model_name FROM hourly_model_usage ORDER BY model_name")
                    .scalars()
                    .all()
                )
                assert plain != sorted(names)
        api = make_api(pg_engine)
        for path in (ALL, SELF):
            assert [r["model_name"] for r in ok_data(api.get(path, token, 3, **WINDOW))] == sorted(names)
    finally:
        if collation:
            with pg_engine.begin() as conn:
                for table in tables:
                    conn.exec_driver_sql(f'ALTER TABLE {table} ALTER COLUMN model_name TYPE text COLLATE "default"')


def test_no_data_is_the_empty_success(sq_api, root):
    for path in (SELF, ALL):
        response = sq_api.get(path, **root, **WINDOW)
        assert response.status_code == 200
        assert response.get_json() == {"success": True, "message": "", "data": []}


def test_large_measures_are_exact_json_integers(engine):
    # PostgreSQL's SUM(bigint) is numeric; the answer must still be a plain integer,
    # exact beyond 2**53.
    token = add_user(engine, 3, "root", role=m.ROLE_ROOT)
    big = 2**62 + 1
    add_rows(engine, agg.hourly_model_usage, [model_row(T0, "big", quota=big, count=big)])
    add_rows(engine, agg.hourly_usage, [user_row(3, T0, "big", "root", quota=big)])
    api = make_api(engine)
    raw = api.get(ALL, token, 3, **WINDOW).get_data(as_text=True)
    assert f'"quota":{big}' in raw and f'"count":{big}' in raw
    row = ok_data(api.get(SELF, token, 3, **WINDOW))[0]
    assert row["quota"] == big and all(
        type(row[k]) is int for k in ("count", "quota", "token_used", "created_at", "user_id")
    )


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/nothing",
        "/api/data/self/x",
        "/api/data/self/",
        "/index.html",
        "/static/nope.js",
        "/static/package.json",
        "/static/../routes.py",
        "/static/vendor/",
        "//api/data",
    ],
)
def test_unknown_paths_are_json_404(sq_api, path):
    response = sq_api.client.get(path)
    assert_failure(response, 404, "not found")
    assert "<" not in response.get_data(as_text=True)


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch"])
@pytest.mark.parametrize("path", [SELF, ALL, "/healthz"])
def test_other_methods_are_json_405(sq_api, method, path):
    response = getattr(sq_api.client, method)(path)
    assert_failure(response, 405, "method not allowed")
    assert "GET" in response.headers["Allow"]


def unreachable_app(url: str):
    # A real engine to a database that is not there: nothing is mocked.
    return create_app(Settings(database_url=url), engine=make_engine(url), limits=ApiLimits())


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:1/none",  # nothing listens on port 1
        "sqlite:////nonexistent-directory/usage.db",
    ],
)
def test_database_unreachable_is_503(url, caplog):
    client = unreachable_app(url).test_client()
    token = "f" * 32
    for path in (SELF, ALL):
        response = client.get(path, headers={"Authorization": f"Bearer {token}", "New-Api-User": "1"})
        assert_failure(response, 503, "database unavailable")
    assert_failure(client.get("/readyz"), 503)
    assert client.get("/healthz").get_json() == {"success": True, "message": "ok"}
    assert token not in caplog.text


def test_readyz_on_a_migrated_database(sq_api):
    assert sq_api.client.get("/readyz").get_json() == {"success": True, "message": "ready"}


def test_readyz_on_a_database_without_our_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert_failure(unreachable_app(url).test_client().get("/readyz"), 503, "not ready")


def test_unexpected_errors_are_a_bare_500(sq_api, caplog):
    def boom():
        raise RuntimeError("secret internals /etc/passwd")

    sq_api.app.add_url_rule("/api/boom", view_func=boom)
    with caplog.at_level(logging.ERROR, logger="usage_stats.api"):
        response = sq_api.client.get("/api/boom")
    body = assert_failure(response, 500)
    assert body["message"] == "internal server error"
    assert "secret" not in response.get_data(as_text=True) and "Traceback" not in response.get_data(as_text=True)
    # The operator does get to know what happened, and where.
    assert "RuntimeError" in caplog.text and "boom" in caplog.text


@pytest.mark.integration
def test_database_error_is_500_and_keeps_the_token_out_of_logs(pg_url, caplog):
    # Our tables are missing from this search_path: PostgreSQL raises ProgrammingError
    # (not a connection problem) on the token lookup, whose SQL psycopg2 reports with
    # the token interpolated into it.
    engine = make_engine(pg_url)
    engine = sa.create_engine(engine.url, connect_args={"options": "-csearch_path=no_such_schema"})
    app = create_app(Settings(database_url=pg_url), engine=engine, limits=ApiLimits())
    token = "0123456789abcdef0123456789abcdef"
    with caplog.at_level(logging.DEBUG):
        response = app.test_client().get(SELF, headers={"Authorization": f"Bearer {token}", "New-Api-User": "1"})
    body = assert_failure(response, 500)
    assert body["message"] == "internal server error"
    assert "ProgrammingError" in caplog.text  # logged, for the operator...
    assert token not in caplog.text  # ...without the token
    assert token not in response.get_data(as_text=True)
    engine.dispose()


def test_create_app_reads_settings_from_the_environment(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("API_MAX_SPAN_HOURLY_DAYS", "5")
    app = create_app()
    state = app.extensions["usage_stats"]
    assert state.settings.database_url == url and str(state.engine.url) == url
    assert state.limits.max_span_hourly_days == 5
    state.engine.dispose()
