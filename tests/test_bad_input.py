"""Issue 6.5: a catalogue of bad requests against the running API (gunicorn, the real
PostgreSQL, then the real MariaDB: the whole catalogue on each): methods; headers missing, duplicated, oversized, non-ASCII; tokens empty,
wrong, another user's, a disabled or deleted user's, SQL-looking; every invalid form of
every parameter of every route (the data endpoints' group_by, filters, format and
default_time, /api/data/users, the flow, the log statistics, the rankings' period; and
one bad value and a repetition of every parameter the OpenAPI document lists); odd
paths; bad re-aggregation bodies. Each has its expected status, and each answer is the
failure shape: JSON {"success": false, "message": "..."} -- never HTML (nor CSV), never
a traceback, never the token sent.

Requests go over a real socket (http.client, or raw bytes where http.client would refuse
to send them), so gunicorn's own refusals (header fields too large, request line too
long, malformed headers) are part of the catalogue too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa

from tests.faults.http import Answer, get, raw
from tests.faults.live import PEOPLE, T0, live_api

pytestmark = pytest.mark.integration

SELF, ALL, USERS = "/api/data/self", "/api/data/", "/api/data/users"
FLOW, FLOW_SELF = "/api/data/flow", "/api/data/flow/self"
LOG_STAT, LOG_SELF_STAT, RANKINGS = "/api/log/stat", "/api/log/self/stat", "/api/rankings"
FLOW_RANGE = {"start_timestamp": T0, "end_timestamp": T0 + 3600}


@dataclass
class Case:
    name: str
    status: int
    path: str = SELF
    who: str | None = "alice"  # whose valid headers to start from (None: none)
    headers: list = field(default_factory=list)  # (name, value) added; value None drops the name
    method: str = "GET"
    body: bytes | None = None
    fragment: str = ""  # expected in the message


def q(path: str, **params) -> str:
    from urllib.parse import urlencode

    return path + "?" + urlencode(params)


SQL = "' OR '1'='1"
CATALOGUE = [
    # --- methods
    Case("POST on a GET route", 405, method="POST", fragment="method not allowed"),
    Case("PUT on the admin route", 405, ALL, who="admin", method="PUT"),
    Case("DELETE", 405, method="DELETE"),
    Case("PATCH on /healthz", 405, "/healthz", method="PATCH"),
    Case("TRACE", 405, method="TRACE"),
    Case("an invented method", 405, method="BREW"),
    Case("GET on the enqueue route", 405, "/api/data/reaggregate", who="admin"),
    Case("POST with a body on /api/data/self", 405, method="POST", body=b'{"a": 1}'),
    # --- headers
    Case("no Authorization", 401, who=None, headers=[("New-Api-User", "1")], fragment="access token required"),
    Case(
        "empty Authorization",
        401,
        headers=[("Authorization", None), ("Authorization", "")],
        fragment="access token required",
    ),
    Case("Bearer and nothing", 401, headers=[("Authorization", None), ("Authorization", "Bearer ")]),
    Case(
        "Basic credentials",
        401,
        headers=[("Authorization", None), ("Authorization", "Basic YWxpY2U6c2VjcmV0")],
        fragment="invalid access token",
    ),
    Case("Authorization twice", 401, headers=[("Authorization", "Bearer " + "0" * 32)]),
    Case("New-Api-User twice", 401, headers=[("New-Api-User", "2")], fragment="New-Api-User"),
    Case("no New-Api-User", 401, headers=[("New-Api-User", None)], fragment="New-Api-User header required"),
    Case("empty New-Api-User", 401, headers=[("New-Api-User", None), ("New-Api-User", "")], fragment="New-Api-User"),
    Case(
        "New-Api-User not a number",
        401,
        headers=[("New-Api-User", None), ("New-Api-User", "alice")],
        fragment="user id",
    ),
    Case("New-Api-User negative", 401, headers=[("New-Api-User", None), ("New-Api-User", "-1")], fragment="user id"),
    Case(
        "New-Api-User beyond int64",
        401,
        headers=[("New-Api-User", None), ("New-Api-User", "9" * 30)],
        fragment="user id",
    ),
    Case("New-Api-User SQL", 401, headers=[("New-Api-User", None), ("New-Api-User", "1 OR 1=1")], fragment="user id"),
    Case(
        "New-Api-User of another user",
        401,
        headers=[("New-Api-User", None), ("New-Api-User", "2")],
        fragment="does not match",
    ),
    Case(
        "Authorization of 4 KB",
        401,
        headers=[("Authorization", None), ("Authorization", "Bearer " + "a" * 4096)],
        fragment="invalid access token",
    ),
    Case(
        "Authorization of 10 KB (gunicorn's field limit)",
        431,
        headers=[("Authorization", None), ("Authorization", "Bearer " + "a" * 10240)],
    ),
    Case(
        "New-Api-User of 5,000 digits",
        401,
        headers=[("New-Api-User", None), ("New-Api-User", "1" * 5000)],
        fragment="user id",
    ),
    Case("120 extra headers (gunicorn's count limit)", 431, headers=[(f"X-Extra-{i}", "1") for i in range(120)]),
    # --- tokens
    Case(
        "a wrong token",
        401,
        headers=[("Authorization", None), ("Authorization", "Bearer " + "f" * 32)],
        fragment="invalid access token",
    ),
    Case(
        "another user's token",
        401,
        headers=[("Authorization", None), ("Authorization", "@bob")],
        fragment="does not match",
    ),
    # MariaDB's (and MySQL's) default collations compare without case: the token found
    # by the lookup must still be refused when it is not the same bytes.
    Case(
        "the user's own token in upper case",
        401,
        headers=[("Authorization", None), ("Authorization", "@ALICE")],
        fragment="invalid access token",
    ),
    Case("another user's token and id, on the admin route", 403, ALL, who="bob", fragment="administrator"),
    Case("a disabled user's token", 403, who="carol", fragment="disabled"),
    Case("a disabled administrator's token", 403, ALL, who="fallen", fragment="disabled"),
    Case("a deleted user's token", 401, who="ghost", fragment="invalid access token"),
    Case(
        "SQL-looking token with blanks",
        401,
        headers=[("Authorization", None), ("Authorization", f"Bearer {SQL}")],
        fragment="invalid access token",
    ),
    Case(
        "SQL-looking token without blanks",
        401,
        headers=[("Authorization", None), ("Authorization", "Bearer '||(SELECT'x')||'--")],
        fragment="invalid access token",
    ),
    Case(
        "SQL-looking token: a statement",
        401,
        headers=[("Authorization", None), ("Authorization", "x';DROP/**/TABLE/**/users;--")],
        fragment="invalid access token",
    ),
    Case(
        "a token with a tab in it",
        401,
        headers=[("Authorization", None), ("Authorization", "Bearer abc\tdef")],
        fragment="invalid access token",
    ),
    Case("a user on the admin route", 403, ALL, fragment="administrator"),
    Case("a user on the re-aggregation status route", 403, "/api/data/reaggregate/abc", fragment="administrator"),
    Case(
        "a user enqueueing a re-aggregation",
        403,
        "/api/data/reaggregate",
        method="POST",
        headers=[("Content-Type", "application/json")],
        body=b'{"start_timestamp": 1, "end_timestamp": 2}',
        fragment="administrator",
    ),
    # --- parameters
    *[
        Case(f"{name}={value!r}", 400, q(SELF, **{name: value}), fragment=name)
        for name in ("start_timestamp", "end_timestamp")
        for value in (
            "abc",
            "1.5",
            "1e9",
            "0x10",
            "-1",
            "+5",
            " 5",
            "5 ",
            "١٢٣",
            "99999999999999999999",
            "9223372036854775808",
            "1_000",
            SQL,
            "\x00",
        )
    ],
    Case("start after end", 400, q(SELF, start_timestamp=2000, end_timestamp=1000), fragment="after"),
    Case("41 days of hours", 400, q(SELF, start_timestamp=0, end_timestamp=41 * 86400), fragment="at most"),
    Case(
        "400 days of days",
        400,
        q(SELF, granularity="day", start_timestamp=0, end_timestamp=400 * 86400),
        fragment="at most",
    ),
    *[
        Case(f"granularity={value!r}", 400, q(SELF, granularity=value), fragment="granularity")
        for value in ("decade", "second", SQL, "hour;day", "\x00")
    ],
    Case("start_timestamp twice", 400, SELF + "?start_timestamp=1&start_timestamp=2", fragment="only once"),
    Case("end_timestamp twice", 400, SELF + "?end_timestamp=1&end_timestamp=2", fragment="only once"),
    Case("granularity twice", 400, SELF + "?granularity=hour&granularity=day", fragment="only once"),
    Case("username twice", 400, ALL + "?username=alice&username=bob", who="admin", fragment="only once"),
    Case("username with NUL", 400, q(ALL, username="alice\x00"), who="admin", fragment="NUL"),
    # --- group_by, filters, format, default_time (issue 12)
    *[
        Case(f"group_by={value!r}", 400, q(path, group_by=value), who=who, fragment="group_by")
        for path, who in ((SELF, "alice"), (ALL, "admin"))
        for value in ("nope", "model,nope", ",", "model,", "MODEL", "user_id", "model;token", " ", SQL, "\x00")
    ],
    Case("group_by=user on /self", 400, q(SELF, group_by="user"), fragment="'user'"),
    Case("group_by=model,user on /self", 400, q(SELF, group_by="model,user"), fragment="'user'"),
    Case("group_by twice", 400, SELF + "?group_by=model&group_by=token", fragment="only once"),
    *[
        Case(f"{name}={value!r}", 400, q(path, **{name: value}), who=who, fragment=name)
        for name in ("token_id", "channel")
        for path, who in ((SELF, "alice"), (ALL, "admin"))
        for value in (
            "abc",
            "-1",
            "-9223372036854775808",
            "1.5",
            "1e3",
            "0x10",
            "+5",
            " 5",
            "١٢٣",
            "9223372036854775808",
            "9" * 30,
            SQL,
            "\x00",
        )
    ],
    *[
        Case(f"{name} with NUL", 400, q(path, **{name: "a\x00b"}), who=who, fragment="NUL")
        for name in ("model_name", "token_name", "group")
        for path, who in ((SELF, "alice"), (ALL, "admin"))
    ],
    *[
        Case(f"{name} twice", 400, f"{SELF}?{name}=1&{name}=1", fragment="only once")
        for name in ("model_name", "token_id", "token_name", "channel", "group", "format", "default_time", "tz")
    ],
    *[
        Case(f"format={value!r}", 400, q(SELF, format=value), fragment="format")
        for value in ("xml", "CSV", "json,csv", "text/csv", SQL, "\x00")
    ],
    *[
        Case(f"default_time={value!r}", 400, q(SELF, default_time=value), fragment="granularity")
        for value in ("decade", "Hour", SQL, "\x00")
    ],
    Case(
        "granularity and default_time disagree",
        400,
        q(SELF, granularity="day", default_time="hour"),
        fragment="disagree",
    ),
    Case(
        "default_time=day over 400 days",
        400,
        q(ALL, default_time="day", start_timestamp=0, end_timestamp=400 * 86400),
        who="admin",
        fragment="at most",
    ),
    # Failures stay JSON when CSV is asked for; authentication still comes first.
    Case("format=csv with a bad parameter", 400, q(SELF, format="csv", granularity="x"), fragment="granularity"),
    Case(
        "Accept: text/csv with a bad parameter",
        400,
        q(SELF, token_id="x"),
        headers=[("Accept", "text/csv")],
        fragment="token_id",
    ),
    Case(
        "format=csv of days in a half-hour zone",
        400,
        q(SELF, format="csv", granularity="day", tz="Asia/Kolkata"),
        fragment="Asia/Kolkata",
    ),
    Case("format=csv without a token", 401, q(SELF, format="csv"), who=None, fragment="access token required"),
    Case("Accept: text/csv without a token", 401, SELF, who=None, headers=[("Accept", "text/csv")]),
    Case("a bad group_by without a token", 401, q(SELF, group_by="nope"), who=None),
    Case("a bad filter from a user on the admin route", 403, q(ALL, channel="x"), fragment="administrator"),
    # --- /api/data/users (administrators)
    Case("a user on /api/data/users", 403, USERS, fragment="administrator"),
    Case("no token on /api/data/users", 401, USERS, who=None),
    *[
        Case(f"/api/data/users {name}={value!r}", 400, q(USERS, **{name: value}), who="admin", fragment=frag)
        for name, value, frag in (
            ("start_timestamp", "abc", "start_timestamp"),
            ("end_timestamp", "-1", "end_timestamp"),
            ("granularity", "decade", "granularity"),
            ("default_time", "decade", "granularity"),
            ("tz", "Mars/Olympus", "tz"),
            ("realtime", "maybe", "realtime"),
            ("username", "a\x00", "NUL"),
            ("format", "xml", "format"),
        )
    ],
    Case("/api/data/users username twice", 400, USERS + "?username=a&username=b", who="admin", fragment="only once"),
    Case(
        "/api/data/users granularity and default_time disagree",
        400,
        q(USERS, granularity="hour", default_time="week"),
        who="admin",
        fragment="disagree",
    ),
    # --- /api/data/flow (administrators) and /api/data/flow/self
    Case("a user on /api/data/flow", 403, q(FLOW, **FLOW_RANGE), fragment="administrator"),
    Case("no token on /api/data/flow/self", 401, FLOW_SELF, who=None),
    *[
        Case(f"{path} {label}", 400, q(path, **query), who=who, fragment=frag)
        for path, who in ((FLOW, "admin"), (FLOW_SELF, "alice"))
        for label, query, frag in (
            ("without a range", {}, "invalid start_timestamp"),
            ("without end_timestamp", {"start_timestamp": T0}, "invalid end_timestamp"),
            ("start_timestamp=0", {**FLOW_RANGE, "start_timestamp": 0}, "invalid start_timestamp"),
            ("start_timestamp=-1", {**FLOW_RANGE, "start_timestamp": -1}, "invalid start_timestamp"),
            ("end_timestamp=abc", {**FLOW_RANGE, "end_timestamp": "abc"}, "invalid end_timestamp"),
            ("end_timestamp beyond int64", {**FLOW_RANGE, "end_timestamp": "9" * 25}, "invalid end_timestamp"),
            ("end before start", {"start_timestamp": T0, "end_timestamp": T0 - 1}, "invalid time range"),
            ("realtime=maybe", {**FLOW_RANGE, "realtime": "maybe"}, "realtime"),
            ("span of 400 days", {"start_timestamp": 1, "end_timestamp": 400 * 86400}, "at most"),
            ("format=xml", {**FLOW_RANGE, "format": "xml"}, "format"),
            ("format=csv without a range", {"format": "csv"}, "invalid start_timestamp"),
        )
    ],
    Case(
        "/api/data/flow/self over 30 days",
        400,
        q(FLOW_SELF, start_timestamp=1, end_timestamp=31 * 86400),
        fragment="30 days",
    ),
    Case("/api/data/flow username with NUL", 400, q(FLOW, username="a\x00", **FLOW_RANGE), who="admin", fragment="NUL"),
    Case(
        "/api/data/flow start_timestamp twice",
        400,
        f"{FLOW_SELF}?start_timestamp=1&start_timestamp=2&end_timestamp=3",
        fragment="only once",
    ),
    # --- /api/log/stat (administrators) and /api/log/self/stat
    Case("a user on /api/log/stat", 403, LOG_STAT, fragment="administrator"),
    Case("no token on /api/log/self/stat", 401, q(LOG_SELF_STAT, model_name="%%"), who=None),
    *[
        Case(f"{path} {name}={value!r}", 400, q(path, **{name: value}), who=who, fragment=frag)
        for path, who in ((LOG_STAT, "admin"), (LOG_SELF_STAT, "alice"))
        for name, value, frag in (
            ("type", "abc", "type"),
            ("type", "-2", "type"),
            ("channel", "x", "channel"),
            ("channel", "-1", "channel"),
            ("channel", "9" * 30, "too large"),
            ("start_timestamp", "1.5", "start_timestamp"),
            ("end_timestamp", SQL, "end_timestamp"),
            ("model_name", "gpt%%", "consecutive"),
            ("model_name", "%g%p%", "at most 2"),
            ("model_name", "g%", "at least 2"),
            ("model_name", "\x00", "NUL"),
            ("token_name", "a\x00", "NUL"),
            ("group", "\x00", "NUL"),
        )
    ],
    Case(
        "/api/log/stat start after end",
        400,
        q(LOG_STAT, start_timestamp=2, end_timestamp=1),
        who="admin",
        fragment="after",
    ),
    Case("/api/log/stat username %%", 400, q(LOG_STAT, username="%%al"), who="admin", fragment="consecutive"),
    Case("/api/log/stat username %a", 400, q(LOG_STAT, username="%a"), who="admin", fragment="at least 2"),
    Case("/api/log/self/stat type twice", 400, LOG_SELF_STAT + "?type=2&type=2", fragment="only once"),
    # --- /api/rankings (public: no headers)
    *[
        Case(f"period={value!r}", 400, q(RANKINGS, period=value), who=None, fragment="invalid ranking period")
        for value in ("day", "Week", "all", " week", "1", SQL, "\x00", "x" * 3000)
    ],
    Case("period twice", 400, RANKINGS + "?period=week&period=week", who=None, fragment="only once"),
    Case("POST on /api/rankings", 405, RANKINGS, who=None, method="POST"),
    Case("DELETE on /api/log/stat", 405, LOG_STAT, who="admin", method="DELETE"),
    Case("trailing slash on /api/rankings", 404, RANKINGS + "/", who=None),
    Case("trailing slash on /api/data/flow/self", 404, FLOW_SELF + "/"),
    Case("a request line of 5,000 bytes (gunicorn's limit)", 414, q(SELF, username="x" * 5000)),
    # --- odd paths
    Case("unknown path", 404, "/api/data/others", fragment="not found"),
    Case("trailing slash on /self", 404, "/api/data/self/"),
    # gunicorn hands these to the app as /api/data/self: the route, still behind its token.
    Case("double slash, no token", 401, "//api/data/self", who=None),
    Case("dot segments", 404, "/api/data/../data/self"),
    Case("upper case", 404, "/API/DATA/SELF"),
    Case("encoded NUL", 404, "/api/data/self%00"),
    Case("path parameter", 404, "/api/data/self;jsessionid=1"),
    Case("encoded slash, no token", 401, "/api/data%2Fself", who=None),
    Case("encoded slash to the admin route, as a user", 403, "/api/data%2F", fragment="administrator"),
    Case("a task id that is not one", 400, "/api/data/reaggregate/%20%27OR%201=1", who="admin", fragment="task id"),
    Case("a task id never enqueued", 404, "/api/data/reaggregate/00000000-0000-0000-0000-000000000000", who="admin"),
    # --- re-aggregation bodies (administrator)
    *[
        Case(
            f"enqueue body {body!r}",
            400,
            "/api/data/reaggregate",
            who="admin",
            method="POST",
            headers=[("Content-Type", "application/json")],
            body=body,
        )
        for body in (
            b"",
            b"not json",
            b"[1, 2]",
            b"null",
            b'"x"',
            b'{"start_timestamp": 1}',
            b'{"start_timestamp": "1", "end_timestamp": "2"}',
            b'{"start_timestamp": 2, "end_timestamp": 1}',
            b'{"start_timestamp": true, "end_timestamp": 2}',
            b'{"start_timestamp": 1.5, "end_timestamp": 2}',
            b'{"start_timestamp": -1, "end_timestamp": 2}',
            b'{"start_timestamp": 1, "end_timestamp": 99999999999999999999}',
            b'{"start_timestamp": 1, "end_timestamp": 2, "user_id": 0}',
            b'{"start_timestamp": 1, "end_timestamp": 2, "x": 1}',
        )
    ],
]

# One bad value of every parameter the OpenAPI document lists, and the parameter given
# twice, on every route that documents it: a new parameter without an entry here fails
# test_every_documented_parameter_has_bad_forms. The message names the parameter.
BAD_VALUE = {
    "start_timestamp": "abc",
    "end_timestamp": "-1",
    "granularity": "decade",
    "default_time": "decade",
    "tz": "Mars/Olympus",
    "realtime": "maybe",
    "group_by": "nope",
    "format": "xml",
    "model_name": "a\x00",
    "token_id": "x",
    "token_name": "a\x00",
    "channel": "x",
    "group": "a\x00",
    "username": "a\x00",
    "type": "x",
    "period": "x",
}
NAMED_IN_MESSAGE_AS = {"default_time": "granularity"}  # its refusal is granularity's
ADMIN_ROUTES = {ALL, USERS, FLOW, LOG_STAT}
BASE_QUERY = {FLOW: FLOW_RANGE, FLOW_SELF: FLOW_RANGE}  # their range is required


def documented_parameters() -> list[tuple[str, str]]:
    """(path, name) of every query parameter of every GET operation of the document."""
    from api.config import ApiLimits
    from api.openapi import document

    doc = document(ApiLimits())
    found = []
    for path, operations in doc["paths"].items():
        for spec in operations.get("get", {}).get("parameters", []):
            if "$ref" in spec:
                spec = doc["components"]["parameters"][spec["$ref"].rsplit("/", 1)[1]]
            if spec["in"] == "query":
                found.append((path, spec["name"]))
    return found


def who_on(path: str) -> str | None:
    return None if path == RANKINGS else "admin" if path in ADMIN_ROUTES else "alice"


CATALOGUE += [
    case
    for path, name in documented_parameters()
    if name in BAD_VALUE
    for case in (
        Case(
            f"{path} {name}={BAD_VALUE[name]!r} (every documented parameter)",
            400,
            q(path, **{**BASE_QUERY.get(path, {}), name: BAD_VALUE[name]}),
            who=who_on(path),
            fragment=NAMED_IN_MESSAGE_AS.get(name, name),
        ),
        Case(
            f"{path} {name} twice (every documented parameter)",
            400,
            q(path, **{k: v for k, v in BASE_QUERY.get(path, {}).items() if k != name}) + f"&{name}=1&{name}=1",
            who=who_on(path),
            fragment="only once",
        ),
    )
]


# Bytes http.client will not send: non-ASCII and malformed header lines.
RAW = [
    ("a UTF-8 token", 401, "Authorization: Bearer \xd1\x82\xd0\xbe\xd0\xba\xd0\xb5\xd0\xbd", "invalid access token"),
    ("a Latin-1 byte in the token", 401, "Authorization: Bearer {token}\xe9", "invalid access token"),
    (
        "an Arabic-Indic digit as New-Api-User",
        401,
        "Authorization: Bearer {token}\r\nNew-Api-User: \xd9\xa1",
        "user id",
    ),
    ("a header line without a colon", 400, "Authorization: Bearer {token}\r\nAuthorization", ""),
    ("a header name with a space", 400, "Authorization: Bearer {token}\r\nNew Api User: 1", ""),
    ("an obsolete folded header", 400, "Authorization: Bearer {token}\r\n continued", ""),
]


# The API on each database family (tests.conftest.throwaway_database's dialect).
DATABASES = {"postgresql": "postgresql", "mariadb": "mysql"}


@pytest.fixture(scope="module", params=list(DATABASES))
def live(request):
    # Module scope: pytest runs every test of one database before starting the next API,
    # so test_sql_looking_input_changed_nothing still comes after that database's catalogue.
    with live_api("usage_stats_badinput", dialect=DATABASES[request.param]) as api:
        assert api.engine.dialect.name == DATABASES[request.param]
        assert any(c.isalpha() for c in api.tokens["alice"]), "an all-digit token has no upper case"
        yield api


def build_headers(live, case: Case) -> list:
    headers = dict(live.headers(case.who)) if case.who else {}
    out = [(k, v) for k, v in headers.items()]
    for name, value in case.headers:
        if value is None:
            out = [(k, v) for k, v in out if k.lower() != name.lower()]
        else:
            if value.startswith("@"):  # a user's token ("@ALICE": alice's, upper-cased)
                who = value[1:]
                token = live.tokens[who.lower()]
                value = "Bearer " + (token.upper() if who.isupper() else token)
            out.append((name, value))
    return out


def check_failure(answer: Answer, status: int, fragment: str, secrets=()) -> None:
    assert not answer.error, answer.error
    assert answer.status == status, (answer.status, answer.text[:300])
    assert answer.content_type.startswith("application/json"), (answer.content_type, answer.text[:300])
    assert answer.is_failure_shape(), answer.text[:300]
    assert fragment in answer.json()["message"], (fragment, answer.json()["message"])
    for secret in secrets:
        assert secret not in answer.text
    assert "Traceback" not in answer.text and "<html" not in answer.text.lower()


def test_catalogue_has_forty_or_more_requests():
    assert len(CATALOGUE) + len(RAW) >= 40


def test_every_documented_parameter_has_bad_forms():
    documented = documented_parameters()
    assert {name for _, name in documented} <= set(BAD_VALUE), "a new parameter: add its bad value to BAD_VALUE"
    assert len(documented) > 50 and all(any(path == p for p, _ in documented) for path in (SELF, FLOW, RANKINGS))


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_bad_request(live, case: Case):
    headers = build_headers(live, case)
    answer = get(live.port, case.path, headers, method=case.method, body=case.body)
    check_failure(answer, case.status, case.fragment, secrets=list(live.tokens.values()))


@pytest.mark.parametrize("name,status,header_lines,fragment", RAW, ids=[r[0] for r in RAW])
def test_bad_bytes(live, name, status, header_lines, fragment):
    lines = header_lines.replace("{token}", live.tokens["alice"])
    if "New-Api-User" not in lines:
        lines += "\r\nNew-Api-User: 1"
    request = f"GET {SELF} HTTP/1.1\r\nHost: localhost\r\n{lines}\r\nConnection: close\r\n\r\n".encode("latin-1")
    got_status, headers, body = raw(live.port, request)
    answer = Answer(SELF, got_status, headers.get("content-type", ""), body)
    check_failure(answer, status, fragment, secrets=list(live.tokens.values()))


def test_head_and_options_answer_without_html(live):
    head = get(live.port, SELF, live.headers("alice"), method="HEAD")
    assert head.status == 200 and head.content_type.startswith("application/json") and head.body == b""
    head = get(live.port, SELF, method="HEAD")
    assert head.status == 401 and head.content_type.startswith("application/json")
    options = get(live.port, SELF, method="OPTIONS")
    assert options.status == 200 and options.content_type.startswith("application/json"), options.text
    assert json.loads(options.body)["success"] is True


def test_sql_looking_input_changed_nothing(live):
    """After the whole catalogue (module order): every table is still there, every user too."""
    with live.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM users")).scalar() == len(PEOPLE)
        assert conn.execute(sa.text("SELECT count(*) FROM hourly_usage")).scalar() > 0
    assert "Traceback" not in live.server.output()
