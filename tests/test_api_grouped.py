"""group_by, filters and CSV on /api/data/self and /api/data/ (issue 12).

The truth is a Python GROUP BY over the committed raw logs (key, channel and group
included) with names from the tokens and channels rows the test wrote: independent of
shared.aggregation and shared.queries. Logs are partly rolled up and partly only in the
real-time tail, so both halves of every answer are checked.
"""

from __future__ import annotations

import csv
import io
import itertools
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from shared import models as m
from shared.config import Settings
from shared.rollup import rollup
from tests.api_support import add_user, assert_failure, bucket_of, committed_logs, make_api, ok_data
from tests.logdata import HOUR, insert, log, utc

SELF, ALL = "/api/data/self", "/api/data/"
T0 = utc(2024, 6, 3)
WINDOW = {"start_timestamp": T0 - 86400, "end_timestamp": T0 + 6 * 86400}
MEASURES = ("count", "quota", "token_used", "prompt_tokens", "completion_tokens")
# parameter value -> (the answer's column, the log's column)
DIMS = {
    "model": ("model_name", "model_name"),
    "user": ("user_id", "user_id"),
    "token": ("token_id", "token_id"),
    "channel": ("channel_id", "channel_id"),
    "group": ("use_group", "group"),
}
CARRIED = {"user_id": ("username", "username"), "token_id": ("token_name", "token_name")}
LIVE_TOKEN_NAMES = {20: "alice-laptop", 31: "bob-ci"}
DELETED_TOKEN = 21
CHANNEL_NAMES = {1: "openai-main", 2: "azure-east"}  # channel 3 is gone: "channel-3"


@pytest.fixture
def world(engine):
    tokens = {
        "root": add_user(engine, 1, "root", role=m.ROLE_ROOT),
        "alice": add_user(engine, 2, "alice"),
        "bob": add_user(engine, 3, "bob"),
    }
    with engine.begin() as conn:
        for token_id, name in LIVE_TOKEN_NAMES.items():
            conn.execute(sa.insert(m.tokens).values(id=token_id, user_id=token_id // 10, key=f"k{token_id}", name=name))
        conn.execute(
            sa.insert(m.tokens).values(
                id=DELETED_TOKEN, user_id=2, key="gone", name="old", deleted_at=datetime(2024, 1, 1, tzinfo=UTC)
            )
        )
        conn.execute(sa.insert(m.channels), [{"id": i, "name": n, "key": "secret"} for i, n in CHANNEL_NAMES.items()])
    models = ("gpt-4o", "claude", "=HYPERLINK(1)", "-neg")
    rows = [
        log(
            user_id=uid,
            created_at=T0 + i * 5 * HOUR + uid * 60,
            model=models[(i + uid) % 4],
            token_id=uid * 10 + (i // 2) % 2,
            channel=1 + i % 3,
            group=("default", "vip")[(i // 3) % 2],
        )
        for i in range(30)
        for uid in (2, 3)
    ]
    rows.append(log(user_id=2, created_at=T0 + 7200, model="gpt-4o", kind=m.LOG_ERROR))
    rows.append(log(user_id=2, created_at=T0 + 7300, model="gpt-4o", username="alice-renamed"))
    insert(engine, rows[:40])
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone="UTC")
    rollup(engine, settings, wait=True)
    insert(engine, rows[40:])  # the rest only in the real-time tail
    return make_api(engine), tokens


def raw_logs(engine) -> list[dict]:
    return [lg for lg in committed_logs(engine) if lg["type"] == m.LOG_CONSUME]


def _token_name(token_id: int, recorded: str) -> str:
    if token_id == DELETED_TOKEN:
        return f"Deleted ({token_id})"
    return LIVE_TOKEN_NAMES.get(token_id, recorded)


def oracle(logs, granularity, by, *, user_id=None, filters=None, seed=None) -> list[dict]:
    """The answer as a GROUP BY over `logs`: `by` parameter values (None: the seed's
    shape, `seed` 'user' or 'site'), `filters` {log column: value}."""
    dims = [DIMS[b] for b in DIMS if b in (by or ())] if by is not None else []
    if by is None:
        dims = [DIMS["model"]] + ([DIMS["user"]] if seed == "user" else [])
    groups: dict = {}
    for lg in logs:
        values = {
            "user_id": lg["user_id"] or 0,
            "username": lg["username"] or "",
            "model_name": lg["model_name"] or "",
            "token_id": lg["token_id"] or 0,
            "token_name": lg["token_name"] or "",
            "channel_id": lg["channel_id"] or 0,
            "group": lg["group"] or "",
        }
        if user_id is not None and values["user_id"] != user_id:
            continue
        if any(values[col] != v for col, v in (filters or {}).items()):
            continue
        bucket = bucket_of(lg["created_at"], granularity, "UTC")
        if not WINDOW["start_timestamp"] <= bucket <= WINDOW["end_timestamp"]:
            continue
        key = (bucket, *(values[src] for _, src in dims))
        acc = groups.setdefault(key, {"m": [0] * 5, "names": {}})
        p, c = lg["prompt_tokens"] or 0, lg["completion_tokens"] or 0
        for i, v in enumerate((1, lg["quota"] or 0, p + c, p, c)):
            acc["m"][i] += v
        for out, _ in dims:
            if out in CARRIED:
                name_out, name_src = CARRIED[out]
                acc["names"][name_out] = max(acc["names"].get(name_out, ""), values[name_src])
    answer = []
    for key in sorted(groups, key=lambda k: tuple(x.encode() if isinstance(x, str) else x for x in k)):
        acc = groups[key]
        measures = dict(zip(MEASURES, acc["m"], strict=True))
        if by is None:
            row = {"model_name": key[1], **{k: measures[k] for k in ("count", "quota", "token_used")}}
            row["created_at"] = key[0]
            if seed == "user":
                row["user_id"], row["username"] = key[2], acc["names"]["username"]
            row.update(prompt_tokens=measures["prompt_tokens"], completion_tokens=measures["completion_tokens"])
        else:
            row = {"created_at": key[0]}
            for (out, _), value in zip(dims, key[1:], strict=True):
                row[out] = value
                if out == "token_id":
                    row["token_name"] = _token_name(value, acc["names"]["token_name"])
                elif out in CARRIED:
                    row[CARRIED[out][0]] = acc["names"][CARRIED[out][0]]
                if out == "channel_id":
                    row["channel_name"] = CHANNEL_NAMES.get(value, f"channel-{value}")
            row.update(measures)
        answer.append(row)
    return answer


def subsets(items):
    return [list(c) for n in range(1, len(items) + 1) for c in itertools.combinations(items, n)]


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_self_grouped_by_every_subset_equals_the_logs(engine, world, granularity):
    api, tokens = world
    logs = raw_logs(engine)
    for by in subsets(["model", "token", "channel", "group"]):
        got = ok_data(api.get(SELF, tokens["alice"], 2, granularity=granularity, group_by=",".join(by), **WINDOW))
        assert got == oracle(logs, granularity, by, user_id=2), by
        assert got


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_site_wide_grouped_by_every_subset_equals_the_logs(engine, world, granularity):
    api, tokens = world
    logs = raw_logs(engine)
    for by in subsets(["model", "user", "token", "channel", "group"]):
        got = ok_data(api.get(ALL, tokens["root"], 1, granularity=granularity, group_by=",".join(by), **WINDOW))
        assert got == oracle(logs, granularity, by), by
        assert got


def test_grouped_rows_name_keys_and_channels(engine, world):
    api, tokens = world
    got = ok_data(api.get(ALL, tokens["root"], 1, group_by="token,channel", granularity="day", **WINDOW))
    names = {(r["token_id"], r["token_name"]) for r in got}
    assert (20, "alice-laptop") in names and (21, "Deleted (21)") in names and (31, "bob-ci") in names
    assert (30, "key30") in names  # unknown to tokens: the name its logs recorded
    channels = {(r["channel_id"], r["channel_name"]) for r in got}
    assert channels == {(1, "openai-main"), (2, "azure-east"), (3, "channel-3")}
    assert all("key" not in r and "secret" not in str(r) for r in got)


@pytest.mark.parametrize(
    ("params", "filters"),
    [
        ({"token_id": "20"}, {"token_id": 20}),
        ({"token_name": "key21"}, {"token_name": "key21"}),
        ({"channel": "2"}, {"channel_id": 2}),
        ({"group": "vip"}, {"group": "vip"}),
        ({"model_name": "claude"}, {"model_name": "claude"}),
        (
            {"model_name": "claude", "channel": "1", "group": "default"},
            {"model_name": "claude", "channel_id": 1, "group": "default"},
        ),
    ],
)
def test_filters_keep_the_seed_shape_or_the_grouping(engine, world, params, filters):
    api, tokens = world
    logs = raw_logs(engine)
    self_seed = ok_data(api.get(SELF, tokens["alice"], 2, granularity="day", **params, **WINDOW))
    assert self_seed == oracle(logs, "day", None, user_id=2, filters=filters, seed="user")
    site_seed = ok_data(api.get(ALL, tokens["root"], 1, granularity="hour", **params, **WINDOW))
    assert site_seed == oracle(logs, "hour", None, filters=filters, seed="site")
    grouped = ok_data(api.get(ALL, tokens["root"], 1, group_by="user,channel", **params, **WINDOW))
    assert grouped == oracle(logs, "hour", ["user", "channel"], filters=filters)
    by_name = ok_data(api.get(ALL, tokens["root"], 1, username="bob", granularity="day", **params, **WINDOW))
    assert by_name == oracle(logs, "day", None, user_id=3, filters=filters, seed="user")
    assert self_seed or site_seed


def test_another_users_key_yields_nothing_of_theirs(engine, world):
    api, tokens = world
    for params in ({"token_id": "30"}, {"token_name": "key31"}, {"token_id": "31", "group_by": "token"}):
        assert ok_data(api.get(SELF, tokens["alice"], 2, **params, **WINDOW)) == []
    # ... while bob sees his own.
    assert ok_data(api.get(SELF, tokens["bob"], 3, token_id="30", **WINDOW))


def test_without_group_by_or_filters_the_answers_are_the_seeds(engine, world):
    api, tokens = world
    logs = raw_logs(engine)
    assert ok_data(api.get(SELF, tokens["alice"], 2, **WINDOW)) == oracle(logs, "hour", None, user_id=2, seed="user")
    assert ok_data(api.get(ALL, tokens["root"], 1, **WINDOW)) == oracle(logs, "hour", None, seed="site")


def test_default_time_is_an_alias_of_granularity(engine, world):
    api, tokens = world
    day = ok_data(api.get(SELF, tokens["alice"], 2, granularity="day", **WINDOW))
    assert ok_data(api.get(SELF, tokens["alice"], 2, default_time="day", **WINDOW)) == day
    assert ok_data(api.get(SELF, tokens["alice"], 2, default_time="day", granularity="day", **WINDOW)) == day
    assert_failure(api.get(SELF, tokens["alice"], 2, default_time="day", granularity="hour"), 400, "default_time")


@pytest.mark.parametrize(
    ("path", "who", "params", "fragment"),
    [
        (SELF, "alice", {"group_by": "user"}, "group_by"),
        (SELF, "alice", {"group_by": "model,nope"}, "'nope'"),
        (ALL, "root", {"group_by": ","}, "group_by"),
        (ALL, "root", {"token_id": "x"}, "token_id"),
        (ALL, "root", {"channel": "-1"}, "channel"),
        (ALL, "root", {"token_id": "99999999999999999999"}, "token_id"),
        (ALL, "root", {"token_name": "a\x00b"}, "NUL"),
        (ALL, "root", {"format": "xml"}, "format"),
        (ALL, "root", {"query": [("group_by", "model"), ("group_by", "token")]}, "only once"),
    ],
)
def test_bad_grouping_filter_or_format_is_400(world, path, who, params, fragment):
    api, tokens = world
    uid = {"alice": 2, "root": 1}[who]
    assert_failure(api.get(path, tokens[who], uid, **params), 400, fragment)


def _csv(response) -> list[list[str]]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    text = response.get_data(as_text=True)
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    return list(csv.reader(io.StringIO(text, newline="")))


def _as_text(value) -> str:
    text = str(value)
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


@pytest.mark.parametrize(
    ("path", "who", "params"),
    [
        (SELF, "alice", {}),
        (SELF, "alice", {"group_by": "token,channel", "granularity": "day"}),
        (ALL, "root", {"group_by": "model,user,channel,group"}),
        (ALL, "root", {"username": "bob", "channel": "1"}),
        (ALL, "root", {"granularity": "week"}),
    ],
)
def test_csv_holds_the_same_rows_as_the_json(world, path, who, params):
    api, tokens = world
    uid = {"alice": 2, "root": 1}[who]
    rows = ok_data(api.get(path, tokens[who], uid, **params, **WINDOW))
    table = _csv(api.get(path, tokens[who], uid, format="csv", **params, **WINDOW))
    assert rows and table[0] == list(rows[0])
    assert table[1:] == [[_as_text(v) for v in r.values()] for r in rows]
    # The Accept header asks for the same thing.
    negotiated = _csv(api.get(path, tokens[who], uid, headers={"Accept": "text/csv"}, **params, **WINDOW))
    assert negotiated == table


def test_csv_neutralises_formulas(world):
    api, tokens = world
    table = _csv(api.get(ALL, tokens["root"], 1, format="csv", granularity="day", **WINDOW))
    models = {row[0] for row in table[1:]}
    assert "'=HYPERLINK(1)" in models and "'-neg" in models and "gpt-4o" in models
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in table for cell in row)


def test_csv_of_an_empty_answer_is_its_header(world):
    api, tokens = world
    table = _csv(api.get(SELF, tokens["alice"], 2, format="csv", start_timestamp=1, end_timestamp=2))
    assert table == [
        [
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
    ]


def test_errors_stay_json_when_csv_is_asked(world):
    api, tokens = world
    assert_failure(api.get(SELF, "0" * 32, 2, format="csv"), 401)
    assert_failure(api.get(SELF, tokens["alice"], 2, headers={"Accept": "text/csv"}, granularity="x"), 400)
    # Days in a half-hour zone are refused before the stream starts.
    assert_failure(api.get(SELF, tokens["alice"], 2, format="csv", granularity="day", tz="Asia/Kolkata"), 400)


@pytest.mark.parametrize(
    ("path", "who", "params"),
    [
        ("/api/data/users", "root", {"granularity": "day"}),
        ("/api/data/flow", "root", {}),
        ("/api/data/flow/self", "alice", {}),
    ],
)
def test_users_and_flow_answer_csv_too(world, path, who, params):
    api, tokens = world
    uid = {"alice": 2, "root": 1}[who]
    rows = ok_data(api.get(path, tokens[who], uid, **params, **WINDOW))
    table = _csv(api.get(path, tokens[who], uid, format="csv", **params, **WINDOW))
    assert rows and table[0] == list(rows[0])
    assert table[1:] == [[_as_text(v) for v in r.values()] for r in rows]


def test_a_users_answer_never_names_another_users_key(engine, world):
    # Should a key id ever come back under another owner, a user's answer keeps the name
    # its own logs recorded rather than showing the other user's key name.
    api, tokens = world
    with engine.begin() as conn:
        conn.execute(sa.update(m.tokens).where(m.tokens.c.id == 20).values(user_id=3))
    mine = ok_data(api.get(SELF, tokens["alice"], 2, group_by="token", granularity="day", **WINDOW))
    assert {r["token_name"] for r in mine if r["token_id"] == 20} == {"key20"}
    site = ok_data(api.get(ALL, tokens["root"], 1, group_by="token", granularity="day", **WINDOW))
    assert {r["token_name"] for r in site if r["token_id"] == 20} == {"alice-laptop"}
