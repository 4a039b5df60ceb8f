"""/api/openapi.json is the contract: it is valid OpenAPI 3.1, its parameters are the ones
the code reads, and real responses -- successes and every failure -- validate against
the schema it gives for their path, method and status.

Needs `jsonschema` (and, for the document check, `openapi-spec-validator`).
"""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from api import create_app, params
from api.config import ApiLimits
from shared import aggregation as agg
from shared import models as m
from shared.config import Settings
from shared.db import make_engine
from shared.queries import GRANULARITIES
from tests.api_support import add_rows, add_user, make_api, model_row, user_row

DOC_URI = "urn:usage-stats:openapi"
T0 = 1_699_920_000  # a UTC midnight
WINDOW = {"start_timestamp": T0, "end_timestamp": T0 + 86400}


def pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class Contract:
    def __init__(self, doc: dict):
        self.doc = doc
        # The whole document is one resource, so the schemas' "#/components/..." refs resolve.
        self.registry = Registry().with_resource(
            DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
        )

    def schema_ref(self, path: str, status: int) -> str:
        responses = self.doc["paths"][path]["get"]["responses"]
        key = str(status) if str(status) in responses else "default"
        assert key in responses, f"GET {path} -> {status} is not documented"
        return f"{DOC_URI}#/" + pointer("paths", path, "get", "responses", key, "content", "application/json", "schema")

    def check(self, path: str, response, *, explicit: bool = True) -> None:
        """`response` (to GET `path`) is valid for its status; with `explicit`, that
        status is listed for the operation, not only covered by `default`."""
        if explicit:
            assert str(response.status_code) in self.doc["paths"][path]["get"]["responses"], (
                path,
                response.status_code,
            )
        assert response.mimetype == "application/json"
        validator = Draft202012Validator({"$ref": self.schema_ref(path, response.status_code)}, registry=self.registry)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(response.get_json())]
        assert not errors, (path, response.status_code, errors)

    def component(self, name: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{DOC_URI}#/components/schemas/{name}"}, registry=self.registry)


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


def test_document_is_valid_openapi_3_1(sqlite_engine):
    from openapi_spec_validator import validate

    doc = make_api(sqlite_engine).client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_documented_parameters_are_the_parsed_ones(sqlite_engine):
    doc = make_api(sqlite_engine).client.get("/api/openapi.json").get_json()

    def names(path):
        refs = doc["paths"][path]["get"]["parameters"]
        return [doc["components"]["parameters"][r["$ref"].rsplit("/", 1)[1]]["name"] for r in refs]

    assert names("/api/data/self") == list(params.SELF_PARAMETERS)
    assert names("/api/data/") == list(params.ADMIN_PARAMETERS)
    assert doc["components"]["parameters"]["granularity"]["schema"]["enum"] == list(GRANULARITIES)
    assert doc["components"]["parameters"]["start_timestamp"]["schema"]["maximum"] == params.INT64_MAX
    # Both headers are required by the security requirement of both data operations.
    for path in ("/api/data/self", "/api/data/"):
        assert doc["paths"][path]["get"]["security"] == [{"accessToken": [], "newApiUser": []}]
    assert doc["components"]["securitySchemes"]["newApiUser"]["name"] == "New-Api-User"


def test_document_states_the_configured_span_limits(sqlite_engine):
    doc = make_api(sqlite_engine, limits=ApiLimits(7, 90)).client.get("/api/openapi.json").get_json()
    text = doc["components"]["parameters"]["end_timestamp"]["description"]
    assert "at most 7 days for granularity=hour" in text and "90 days for granularity=day" in text


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_successful_responses_match_the_document(setup, granularity):
    api, contract, tokens = setup
    q = {**WINDOW, "granularity": granularity}

    response = api.get("/api/data/self", tokens["user"], 1, **q)
    contract.check("/api/data/self", response)
    assert response.get_json()["data"], "a vacuous check: no rows"

    site = api.get("/api/data/", tokens["root"], 3, **q)
    contract.check("/api/data/", site)
    # Site-wide rows are SiteRow precisely (the oneOf alone would also admit UserRow).
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
    for path in ("/api/data/self", "/api/data/"):
        response = down.get(path, headers=headers)
        assert response.status_code == 503
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
