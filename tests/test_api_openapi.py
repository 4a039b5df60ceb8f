"""/api/openapi.json is the contract: it is valid OpenAPI 3.1, its paths are the routes the
app serves, its parameters are the ones the code reads, and real responses -- successes
(JSON and CSV) and every failure -- validate against the schema it gives for their path,
method, status and content type.

Needs `jsonschema` (and, for the document check, `openapi-spec-validator`).
"""

from __future__ import annotations

import csv
import io
import itertools
import re

import pytest
import sqlalchemy as sa
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import api.flow as flow_api
import api.logstat as logstat_api
import api.rankings as rankings_api
from api import create_app, openapi, params
from api.config import ApiLimits
from shared import aggregation as agg
from shared import models as m
from shared.config import Settings
from shared.db import make_engine
from shared.queries import GRANULARITIES
from shared.rankings import PERIODS
from shared.rollup import rollup
from tests.api_support import Api, add_rows, add_user, make_api, model_row, user_row
from tests.logdata import HOUR, insert, log

DOC_URI = "urn:usage-stats:openapi"
T0 = 1_699_920_000  # a UTC midnight
WINDOW = {"start_timestamp": T0, "end_timestamp": T0 + 86400}
SELF, ALL, USERS, FLOW, FLOW_SELF = (
    "/api/data/self",
    "/api/data/",
    "/api/data/users",
    "/api/data/flow",
    "/api/data/flow/self",
)
LOG_STAT, LOG_SELF_STAT, RANKINGS = "/api/log/stat", "/api/log/self/stat", "/api/rankings"
# Routes of the app that are not part of the API: the chart page's files.
NOT_DOCUMENTED = {"/static/<path:name>"}


def pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class Contract:
    def __init__(self, doc: dict):
        self.doc = doc
        # The whole document is one resource, so the schemas' "#/components/..." refs resolve.
        self.registry = Registry().with_resource(
            DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
        )

    def responses(self, path: str) -> dict:
        return self.doc["paths"][path]["get"]["responses"]

    def check(self, path: str, response, *, explicit: bool = True) -> None:
        """`response` (to GET `path`) is valid for its status and content type; with
        `explicit`, that status is listed for the operation, not only covered by
        `default`."""
        responses = self.responses(path)
        status = str(response.status_code)
        if explicit:
            assert status in responses, (path, response.status_code)
        key = status if status in responses else "default"
        content = responses[key]["content"]
        assert response.mimetype in content, (path, status, response.mimetype)
        if response.mimetype != "application/json":  # CSV, text: a string of the documented type
            assert content[response.mimetype]["schema"]["type"] == "string"
            return
        ref = f"{DOC_URI}#/" + pointer("paths", path, "get", "responses", key, "content", "application/json", "schema")
        validator = Draft202012Validator({"$ref": ref}, registry=self.registry)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(response.get_json())]
        assert not errors, (path, response.status_code, errors)

    def component(self, name: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{DOC_URI}#/components/schemas/{name}"}, registry=self.registry)

    def parameter(self, spec: dict) -> dict:
        if "$ref" in spec:
            return self.doc["components"]["parameters"][spec["$ref"].rsplit("/", 1)[1]]
        return spec

    def parameters(self, path: str, method: str = "get") -> list[dict]:
        return [self.parameter(p) for p in self.doc["paths"][path][method].get("parameters", [])]


def api_with(engine, limits: ApiLimits | None = None, **settings) -> Api:
    """The app as create_app makes it, with `settings` (STATS_TIMEZONE UTC by default)."""
    s = Settings(database_url=engine.url.render_as_string(hide_password=False), **{"stats_timezone": "UTC", **settings})
    return Api(create_app(s, engine=engine, limits=limits or ApiLimits()))


def contract_of(api: Api) -> Contract:
    return Contract(api.client.get("/api/openapi.json").get_json())


@pytest.fixture
def setup(engine):
    tokens = {
        "user": add_user(engine, 1, "alice"),
        "root": add_user(engine, 3, "root", role=m.ROLE_ROOT),
        "off": add_user(engine, 5, "carol", status=m.STATUS_DISABLED),
    }
    add_rows(engine, agg.hourly_usage, [user_row(1, T0, "gpt-4o", "alice"), user_row(1, T0 + 3600, "", "alice")])
    add_rows(engine, agg.daily_usage, [user_row(1, T0, "gpt-4o", "alice", count=2)])
    add_rows(engine, agg.hourly_model_usage, [model_row(T0, "gpt-4o", quota=2**62)])
    add_rows(engine, agg.daily_model_usage, [model_row(T0, "gpt-4o", count=3)])
    api = make_api(engine)
    contract = Contract(api.client.get("/api/openapi.json").get_json())
    return api, contract, tokens


# Users of the `world`: (id, name, role, status).
PEOPLE = {
    "alice": (1, "alice", m.ROLE_USER, m.STATUS_ENABLED),
    "bob": (2, "bob", m.ROLE_USER, m.STATUS_ENABLED),
    "admin": (3, "admin", m.ROLE_ADMIN, m.STATUS_ENABLED),
    "root": (4, "root", m.ROLE_ROOT, m.STATUS_ENABLED),
    "carol": (5, "carol", m.ROLE_USER, m.STATUS_DISABLED),
}
NOW = T0 + 20 * HOUR  # the clock of /api/rankings in the world


class World:
    def __init__(self, api: Api, tokens: dict):
        self.api, self.tokens = api, tokens
        self.contract = contract_of(api)

    def get(self, path: str, who: str | None, **params):
        if who is None:
            return self.api.get(path, **params)
        return self.api.get(path, self.tokens[who], PEOPLE[who][0], **params)


@pytest.fixture
def world(engine, monkeypatch):
    """Logs of two users over keys (one deleted, one unknown to `tokens`), channels (one
    gone), groups (one empty) and models, partly rolled up and partly in the tail."""
    monkeypatch.setattr(rankings_api, "now", lambda: NOW)
    tokens = {
        name: add_user(engine, uid, uname, role=role, status=status)
        for name, (uid, uname, role, status) in PEOPLE.items()
    }
    with engine.begin() as conn:
        conn.execute(sa.insert(m.tokens), [{"id": 10, "user_id": 1, "key": "k10", "name": "alice-laptop"}])
        conn.execute(sa.insert(m.channels), [{"id": 1, "name": "openai-main", "key": "secret"}])
    rows = [
        log(
            user_id=uid,
            username=PEOPLE[name][1],
            created_at=T0 + i * 2 * HOUR + uid * 60,
            model=("gpt-4o", "claude-3-opus", "=cmd")[i % 3],
            token_id=uid * 10 + i % 2,
            channel=1 + i % 2,
            group=("default", "vip", "")[i % 3],
        )
        for i in range(9)
        for name, uid in (("alice", 1), ("bob", 2))
    ]
    insert(engine, rows[:10])
    rollup(engine, Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone="UTC"))
    insert(engine, rows[10:])
    return World(api_with(engine), tokens)


# --- the document ------------------------------------------------------------------------


def test_document_is_valid_openapi_3_1(sqlite_engine):
    from openapi_spec_validator import validate

    doc = make_api(sqlite_engine).client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_document_lists_every_route_the_app_serves(sqlite_engine):
    api = api_with(sqlite_engine)
    served = {
        (re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule), method.lower())
        for rule in api.app.url_map.iter_rules()
        if rule.rule not in NOT_DOCUMENTED
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in contract_of(api).doc["paths"].items() for method in ops}
    assert documented == served


def test_documented_parameters_are_the_parsed_ones(sqlite_engine):
    contract = contract_of(api_with(sqlite_engine))

    def names(path):
        return [p["name"] for p in contract.parameters(path)]

    assert names(SELF) == list(params.SELF_PARAMETERS)
    assert names(ALL) == list(params.ADMIN_PARAMETERS)
    assert names(USERS) == list(flow_api.USERS_PARAMETERS)
    assert names(LOG_SELF_STAT) == list(logstat_api.SELF_PARAMETERS)
    assert names(LOG_STAT) == list(logstat_api.ADMIN_PARAMETERS)
    assert names(FLOW_SELF) == list(flow_api.FLOW_SELF_PARAMETERS)
    assert names(FLOW) == list(flow_api.FLOW_PARAMETERS)
    assert names(RANKINGS) == ["period"]
    assert contract.parameters(RANKINGS)[0]["schema"]["enum"] == list(PERIODS)
    by_name = {p["name"]: p for p in contract.parameters(ALL)}
    assert by_name["granularity"]["schema"]["enum"] == list(GRANULARITIES)
    assert by_name["default_time"]["schema"]["enum"] == list(GRANULARITIES)
    assert by_name["format"]["schema"]["enum"] == list(params.FORMATS)
    assert by_name["start_timestamp"]["schema"]["maximum"] == params.INT64_MAX
    for name, (_dimension, numeric) in params.FILTERS.items():
        assert by_name[name]["schema"]["type"] == ("integer" if numeric else "string"), name
    for path in (FLOW, FLOW_SELF):
        assert all(p["required"] for p in contract.parameters(path) if p["name"].endswith("_timestamp"))
    # Both headers are required by the security requirement of every operation that
    # authenticates; /api/rankings is public by default (the empty requirement) or not.
    secured = [{"accessToken": [], "newApiUser": []}]
    for path in (SELF, ALL, USERS, FLOW, FLOW_SELF, LOG_STAT, LOG_SELF_STAT):
        assert contract.doc["paths"][path]["get"]["security"] == secured
    assert contract.doc["paths"][RANKINGS]["get"]["security"] == [{}, *secured]
    assert contract.doc["components"]["securitySchemes"]["newApiUser"]["name"] == "New-Api-User"


# Each documented query parameter of each route, given twice, is refused naming it: the
# code reads every parameter the document lists. The base query makes the rest valid.
REPEATABLE = [
    (SELF, "alice", {}),
    (ALL, "root", {}),
    (USERS, "root", {}),
    (FLOW, "root", {"start_timestamp": "1", "end_timestamp": "2"}),
    (FLOW_SELF, "alice", {"start_timestamp": "1", "end_timestamp": "2"}),
    (LOG_STAT, "root", {}),
    (LOG_SELF_STAT, "alice", {}),
    (RANKINGS, None, {}),
]


@pytest.mark.parametrize(("path", "who", "base"), REPEATABLE, ids=[r[0] for r in REPEATABLE])
def test_every_documented_parameter_is_read(sqlite_engine, path, who, base):
    tokens = {
        "alice": add_user(sqlite_engine, 1, "alice"),
        "root": add_user(sqlite_engine, 4, "root", role=m.ROLE_ROOT),
    }
    api = api_with(sqlite_engine)
    contract = contract_of(api)
    headers = {} if who is None else {"token": tokens[who], "user": {"alice": 1, "root": 4}[who]}
    for p in contract.parameters(path):
        name = p["name"]
        value = base.get(name) or (p["schema"].get("enum") or ["1"])[0]
        query = [(k, v) for k, v in base.items() if k != name] + [(name, value), (name, value)]
        response = api.get(path, query=query, **headers)
        assert response.status_code == 400, (path, name, response.get_json())
        message = response.get_json()["message"]
        assert name in message and "once" in message, (path, name, message)


def test_group_by_pattern_is_what_the_code_accepts():
    """Every order of every subset of the dimensions matches the documented pattern and
    is accepted; user only on the admin route; anything else matches neither."""
    doc = openapi.document(ApiLimits())
    admin = re.compile(doc["components"]["parameters"]["group_by"]["schema"]["pattern"])
    self_ = re.compile(doc["components"]["parameters"]["group_by_self"]["schema"]["pattern"])
    names = ["model", "user", "token", "channel", "group"]
    for k in range(1, len(names) + 1):
        for subset in itertools.permutations(names, k):
            value = ",".join(subset)
            assert admin.search(value) and params.parse_group_by(value, tuple(params.GROUP_BY))
            if "user" in subset:
                assert not self_.search(value)
                with pytest.raises(params.ApiError):
                    params.parse_group_by(value, params.SELF_GROUP_BY)
            else:
                assert self_.search(value) and params.parse_group_by(value, params.SELF_GROUP_BY)
    for bad in ("", ",", "model,", "models", "Model", "model;token", "user_id", "model,,token", "node"):
        assert not admin.search(bad), bad
        if bad:
            with pytest.raises(params.ApiError):
                params.parse_group_by(bad, tuple(params.GROUP_BY))


def test_row_schemas_are_strict(sqlite_engine):
    contract = contract_of(api_with(sqlite_engine))
    measures = {"count": 1, "quota": 2, "token_used": 3, "prompt_tokens": 2, "completion_tokens": 1}
    grouped = contract.component("GroupedRow")
    self_grouped = contract.component("SelfGroupedRow")
    row = {"created_at": T0, "token_id": 10, "token_name": "k", "channel_id": 1, "channel_name": "c", **measures}
    assert grouped.is_valid(row) and self_grouped.is_valid(row)
    assert grouped.is_valid({**row, "user_id": 1, "username": "a"})
    assert not self_grouped.is_valid({**row, "user_id": 1, "username": "a"})  # never on /self
    assert not grouped.is_valid({**row, "node_name": ""})  # no other keys
    assert not grouped.is_valid({k: v for k, v in row.items() if k != "token_name"})  # an id with its name
    assert not grouped.is_valid({k: v for k, v in row.items() if k != "channel_id"})  # a name with its id
    assert not grouped.is_valid({"created_at": T0, **measures})  # grouped by something
    assert not grouped.is_valid({**row, "quota": -1})
    assert not contract.component("SiteRow").is_valid({**row, "model_name": "m"})


def test_document_states_the_configured_span_limits(sqlite_engine):
    doc = make_api(sqlite_engine, limits=ApiLimits(7, 90)).client.get("/api/openapi.json").get_json()
    text = doc["components"]["parameters"]["end_timestamp"]["description"]
    assert "at most 7 days for granularity=hour" in text and "90 days for granularity=day" in text
    text = doc["paths"][FLOW]["get"]["description"]
    assert "at most 7 days" in text and "up to 90 days" in text


# --- the seed's answers ------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_successful_responses_match_the_document(setup, granularity):
    api, contract, tokens = setup
    q = {**WINDOW, "granularity": granularity}

    response = api.get("/api/data/self", tokens["user"], 1, **q)
    contract.check("/api/data/self", response)
    assert response.get_json()["data"], "a vacuous check: no rows"

    site = api.get("/api/data/", tokens["root"], 3, **q)
    contract.check("/api/data/", site)
    # Site-wide rows are SiteRow precisely (the anyOf alone would also admit UserRow).
    rows = site.get_json()["data"]
    assert rows and all(contract.component("SiteRow").is_valid(r) for r in rows)

    one = api.get("/api/data/", tokens["root"], 3, username="alice", **q)
    contract.check("/api/data/", one)
    rows = one.get_json()["data"]
    assert rows and all(contract.component("UserRow").is_valid(r) for r in rows)

    contract.check("/api/data/self", api.get("/api/data/self", tokens["root"], 3, **q))  # no rows


def test_failures_match_the_document(setup):
    api, contract, tokens = setup
    cases = [
        ("/api/data/self", api.get("/api/data/self", tokens["user"], 1, start_timestamp="x"), 400),
        ("/api/data/", api.get("/api/data/", tokens["root"], 3, granularity="fortnight"), 400),
        ("/api/data/self", api.get("/api/data/self", "0" * 32, 1), 401),
        ("/api/data/", api.get("/api/data/", tokens["root"], 1), 401),
        ("/api/data/self", api.get("/api/data/self", tokens["off"], 5), 403),
        ("/api/data/", api.get("/api/data/", tokens["user"], 1), 403),
    ]
    for path, response, status in cases:
        assert response.status_code == status
        contract.check(path, response)
    # 404 and 405 are covered by each operation's `default` response.
    contract.check("/api/data/self", api.client.get("/api/data/nope"), explicit=False)
    response = api.client.post("/api/data/self")
    assert response.status_code == 405
    contract.check("/api/data/self", response, explicit=False)


def test_server_side_failures_match_the_document(sqlite_engine):
    contract = Contract(make_api(sqlite_engine).client.get("/api/openapi.json").get_json())
    url = "postgresql://postgres@127.0.0.1:1/none"  # nothing listens there
    down = create_app(Settings(database_url=url), engine=make_engine(url), limits=ApiLimits()).test_client()
    headers = {"Authorization": "Bearer " + "a" * 32, "New-Api-User": "1"}
    for path in (SELF, ALL, USERS, FLOW, FLOW_SELF, LOG_STAT, LOG_SELF_STAT, RANKINGS):
        response = down.get(path, headers=headers)
        assert response.status_code == 503, path
        contract.check(path, response)
    response = down.get("/readyz")
    assert response.status_code == 503
    contract.check("/readyz", response)
    contract.check("/healthz", down.get("/healthz"))

    api = make_api(sqlite_engine)
    api.app.add_url_rule("/api/data/boom", view_func=lambda: 1 / 0)
    response = api.client.get("/api/data/boom")
    assert response.status_code == 500
    contract.check("/api/data/self", response)  # the 500 every operation documents
    contract.check("/readyz", api.client.get("/readyz"))


# --- group_by, filters, CSV ----------------------------------------------------------------

WORLD_WINDOW = {"start_timestamp": T0 - 86400, "end_timestamp": T0 + 2 * 86400}


def _subsets(names):
    return [",".join(c) for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_grouped_answers_match_the_document(world, granularity):
    q = {**WORLD_WINDOW, "granularity": granularity}
    grouped, self_grouped = world.contract.component("GroupedRow"), world.contract.component("SelfGroupedRow")
    for by in _subsets(list(params.GROUP_BY)):
        response = world.get(ALL, "root", group_by=by, **q)
        world.contract.check(ALL, response)
        rows = response.get_json()["data"]
        assert rows and all(grouped.is_valid(r) for r in rows), by
        if "user" not in by:
            response = world.get(SELF, "alice", group_by=by, **q)
            world.contract.check(SELF, response)
            rows = response.get_json()["data"]
            assert rows and all(self_grouped.is_valid(r) for r in rows), by
    # Filters, with and without group_by, alone and together.
    for filters in (
        {"model_name": "gpt-4o"},
        {"token_id": 10, "channel": 1},
        {"token_name": "key11", "group": "vip", "group_by": "token,group"},
        {"group": "", "model_name": "=cmd"},
        {"channel": 2, "username": "bob", "group_by": "model,user,channel"},
        {"token_id": 20},  # bob's key: nothing on alice's /self
    ):
        response = world.get(ALL, "root", **filters, **q)
        world.contract.check(ALL, response)
        if "username" not in filters:
            world.contract.check(SELF, world.get(SELF, "alice", **filters, **q))
    assert world.get(SELF, "alice", token_id=20, **q).get_json()["data"] == []


def test_csv_answers_are_documented(world):
    for path, who, extra in (
        (SELF, "alice", {}),
        (SELF, "alice", {"group_by": "token,channel"}),
        (ALL, "root", {"group_by": "model,user,token,channel,group"}),
        (ALL, "root", {"username": "alice"}),
        (USERS, "admin", {"granularity": "day"}),
        (FLOW, "root", {}),
        (FLOW, "admin", {"username": "bob"}),
        (FLOW_SELF, "alice", {}),
    ):
        response = world.get(path, who, format="csv", **extra, **WORLD_WINDOW)
        assert response.status_code == 200 and response.mimetype == "text/csv", response.get_data(as_text=True)
        world.contract.check(path, response)
        documented = world.contract.responses(path)["200"]["headers"]["Content-Disposition"]["description"]
        pattern = re.sub(r"<[a-z_]+>", "[a-z0-9]+", re.escape(documented.split(": ", 1)[1]))
        assert re.fullmatch(pattern, response.headers["Content-Disposition"]), (documented, response.headers)
        header = next(csv.reader(io.StringIO(response.get_data(as_text=True), newline="")))
        json_rows = world.get(path, who, **extra, **WORLD_WINDOW).get_json()["data"]
        assert json_rows and header == list(json_rows[0])
        response.close()
        negotiated = world.get(path, who, headers={"Accept": "text/csv"}, **extra, **WORLD_WINDOW)
        world.contract.check(path, negotiated)
        assert negotiated.mimetype == "text/csv" and negotiated.get_data(as_text=True).startswith(",".join(header))
        negotiated.close()


def test_bad_grouping_filters_and_format_match_the_document(world):
    for path, who, bad in (
        (SELF, "alice", {"group_by": "user"}),
        (SELF, "alice", {"group_by": "model,nope"}),
        (ALL, "root", {"group_by": ","}),
        (ALL, "root", {"token_id": "-1"}),
        (ALL, "root", {"channel": "9" * 20}),
        (ALL, "root", {"model_name": "a\x00"}),
        (ALL, "root", {"format": "xml"}),
        (ALL, "root", {"granularity": "day", "default_time": "hour"}),
        (SELF, "alice", {"format": "csv", "default_time": "year"}),
        (USERS, "admin", {"format": "xml"}),
        (FLOW, "admin", {"format": "xml", **WORLD_WINDOW}),
        (FLOW_SELF, "alice", {"format": "csv"}),  # no range
    ):
        response = world.get(path, who, **bad)
        assert response.status_code == 400, bad
        world.contract.check(path, response)


# --- the other routes ------------------------------------------------------------------------


def test_users_flow_and_log_stat_match_the_document(world):
    contract = world.contract
    for granularity in ("hour", "day"):
        response = world.get(USERS, "admin", granularity=granularity, **WORLD_WINDOW)
        contract.check(USERS, response)
        assert response.get_json()["data"]
    contract.check(USERS, world.get(USERS, "admin", username="bob", default_time="day", **WORLD_WINDOW))

    for who, schema in (("root", "RootFlowRow"), ("admin", "AdminFlowRow")):
        response = world.get(FLOW, who, **WORLD_WINDOW)
        contract.check(FLOW, response)
        rows = response.get_json()["data"]
        assert rows and all(contract.component(schema).is_valid(r) for r in rows), who
    contract.check(FLOW, world.get(FLOW, "root", username="alice", **WORLD_WINDOW))
    response = world.get(FLOW_SELF, "alice", **WORLD_WINDOW)
    contract.check(FLOW_SELF, response)
    assert response.get_json()["data"]

    for path, who in ((LOG_STAT, "admin"), (LOG_SELF_STAT, "alice")):
        for q in ({}, {"model_name": "gpt%", "channel": 1, "group": "vip", "type": 2}, WORLD_WINDOW):
            response = world.get(path, who, **q)
            contract.check(path, response)
        assert response.get_json()["data"]["quota"] > 0


def test_rankings_match_the_document(world):
    contract = world.contract
    for period in ("today", "week", "month", "year"):
        response = world.get(RANKINGS, None, period=period)
        contract.check(RANKINGS, response)
        data = response.get_json()["data"]
        assert data["models"] and data["vendors"] and data["models_history"]["points"], period
    # Headers are ignored on the public route: the same answer, with or without them.
    assert (
        world.get(RANKINGS, "alice", period="today").get_json() == world.get(RANKINGS, None, period="today").get_json()
    )
    for bad in ({"period": "day"}, {"query": [("period", "week"), ("period", "week")]}):
        response = world.get(RANKINGS, None, **bad)
        assert response.status_code == 400
        contract.check(RANKINGS, response)


def test_failures_of_the_other_routes_match_the_document(world, engine):
    contract = world.contract
    cases = [
        (USERS, world.get(USERS, "alice"), 403),
        (USERS, world.get(USERS, None), 401),
        (USERS, world.get(USERS, "admin", default_time="fortnight"), 400),
        (FLOW, world.get(FLOW, "admin"), 400),  # no range
        (FLOW, world.get(FLOW, "alice", **WORLD_WINDOW), 403),
        (FLOW_SELF, world.get(FLOW_SELF, "carol", **WORLD_WINDOW), 403),
        (FLOW_SELF, world.get(FLOW_SELF, "alice", start_timestamp=1, end_timestamp=40 * 86400), 400),
        (LOG_STAT, world.get(LOG_STAT, "alice"), 403),
        (LOG_SELF_STAT, world.get(LOG_SELF_STAT, "alice", model_name="%%"), 400),
        (LOG_SELF_STAT, world.get(LOG_SELF_STAT, None), 401),
    ]
    for path, response, status in cases:
        assert response.status_code == status, (path, response.get_json())
        contract.check(path, response)
    auth = api_with(engine, rankings="auth")
    response = auth.get(RANKINGS)
    assert response.status_code == 401
    contract.check(RANKINGS, response)
    response = auth.get(RANKINGS, world.tokens["carol"], 5)
    assert response.status_code == 403
    contract.check(RANKINGS, response)
    response = api_with(engine, rankings="off").get(RANKINGS)
    assert response.status_code == 403
    contract.check(RANKINGS, response)
