"""Issue 6.6: schemathesis against /api/openapi.json of the running API (gunicorn, the real
PostgreSQL, users and rolled-up logs): every operation of the document, valid and invalid
inputs (positive and negative generation), as an administrator and as a common user (and
as root on the flow, whose rows differ for root). Every response must be no server error
and conform to the document: its status listed, its content type (JSON, or CSV on the
data endpoints), its body's schema, its headers; no auth must not pass; no answer may
hold an access token. Bounded: FUZZ_EXAMPLES per operation (default 100), each sent once
per identity.

The data: the live API's logs of 2023 (tests/faults/live.py) and, added here, usage of
the last days and of the document's example day over API keys (one soft-deleted, one
unknown to `tokens`), channels (one gone), groups (one empty) and models (one named like
a spreadsheet formula), partly rolled up and partly in the real-time tail, so that the
default ranges, the rankings and the example ranges have rows to answer with.

Two of schemathesis' checks are left out, for rules of this API that JSON Schema cannot
say (tests/test_bad_input.py checks refusals one by one instead):
- positive_data_acceptance (every schema-valid request accepted): some limits span two
  fields (start <= end, the span limits, end > start for a re-aggregation, granularity
  equal to default_time when both are given), so valid-looking requests are rightly
  refused with a 400 the document lists. (It also found that the document gave
  `task_id` no pattern; it now states the one the code enforces.)
- negative_data_rejection (every schema-violating request refused): as new-api does,
  unknown query parameters are ignored and an empty value counts as absent.
"""

from __future__ import annotations

import csv
import io
import os
import time
from datetime import UTC, datetime

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from api.openapi import EXAMPLE_START
from shared import models as m
from shared.config import Settings
from shared.rollup import rollup
from tests.faults.http import get
from tests.faults.live import PEOPLE, live_api
from tests.logdata import insert, log

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
REQUESTS: dict = {"n": 0, "by_status": {}, "rows": {}, "csv": {}}
HOUR, DAY = 3600, 86400
MODELS = ("gpt-4o", "claude-3-opus", "deepseek-chat", "=HYPERLINK(1)", "my-finetune")
# `tokens`: id -> (user, name, soft-deleted); key 22 is not in it. `channels`: channel 3 is not.
TOKENS = {11: ("alice", "alice-laptop", False), 12: ("alice", "alice-old", True), 21: ("bob", "+bob-ci", False)}
CHANNELS = {1: "openai-main", 2: "-azure"}


def add_usage(live) -> None:
    """Usage of the last 40 days (most of it in the last two) and of the document's
    example day, the keys and channels tables with their secret columns filled, half
    rolled up and half in the tail."""
    engine = live.engine
    m.tokens.create(engine, checkfirst=True)
    m.channels.create(engine, checkfirst=True)
    gone = datetime(2024, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(m.tokens),
            [
                {
                    "id": i,
                    "user_id": PEOPLE[who][0],
                    "key": f"sk-secret-{i}",
                    "name": name,
                    "deleted_at": gone if deleted else None,
                }
                for i, (who, name, deleted) in TOKENS.items()
            ],
        )
        conn.execute(
            sa.insert(m.channels), [{"id": i, "name": n, "key": f"ch-secret-{i}"} for i, n in CHANNELS.items()]
        )
    now = int(time.time())
    keys = {"alice": (11, 12), "bob": (21, 22), "root": (41,)}
    times = [now - k * 1800 for k in range(1, 80)] + [now - k * DAY - 600 for k in (3, 9, 15, 32, 39)]
    # The flow routes require both ends of their range, which generated timestamps seldom
    # put around now: the examples of the document (schemathesis' explicit examples) do.
    times += [EXAMPLE_START + 60 + k * 1800 for k in range(48)]
    rows = [
        log(
            user_id=PEOPLE[who][0],
            username=PEOPLE[who][1],
            created_at=created_at,
            model=MODELS[(i + n) % len(MODELS)],
            token_id=keys[who][i % len(keys[who])],
            token_name=f"key-as-logged-{keys[who][i % len(keys[who])]}",
            channel=1 + (i + n) % 3,
            group=("default", "vip", "")[i % 3],
        )
        for i, created_at in enumerate(times)
        for n, who in enumerate(keys)
    ]
    half = len(rows) // 2
    insert(engine, rows[:half])
    rollup(engine, Settings(database_url=live.url, stats_timezone="UTC"))
    insert(engine, rows[half:])


@pytest.fixture(scope="module")
def live():
    with live_api("usage_stats_fuzz", workers=2) as api:
        add_usage(api)
        yield api
    print(
        f"\n[reliability] fuzzing: {REQUESTS['n']} requests, by status {dict(sorted(REQUESTS['by_status'].items()))}; "
        f"rows answered (JSON and CSV) by path {REQUESTS['rows']}; CSV answers by path {REQUESTS['csv']}"
    )


@pytest.fixture(scope="module")
def fuzz_schema(live):
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{live.port}/api/openapi.json")
    from schemathesis import GenerationMode

    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema


schema = schemathesis.pytest.from_fixture("fuzz_schema")


def check_csv(text: str) -> int:
    """A CSV answer: a header row, rows as wide as it, no cell a spreadsheet would run.
    Returns the number of rows."""
    table = list(csv.reader(io.StringIO(text, newline="")))
    assert table and table[0] and all(len(row) == len(table[0]) for row in table), text[:300]
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in table[1:] for cell in row), text[:300]
    return len(table) - 1


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_document(case, live):
    # Root's flow rows carry the API key; everywhere else root answers as an administrator.
    identities = ("root", "admin", "alice") if case.path.startswith("/api/data/flow") else ("admin", "alice")
    for who in identities:
        headers = dict(live.headers(who))
        response = case.call(headers=headers, timeout=30)
        REQUESTS["n"] += 1
        REQUESTS["by_status"][response.status_code] = REQUESTS["by_status"].get(response.status_code, 0) + 1
        assert response.status_code < 500 or (response.status_code == 503 and "reaggregate" in case.path), (
            response.status_code,
            response.text[:300],
        )
        case.validate_response(response, excluded_checks=[positive_data_acceptance, negative_data_rejection])
        assert "Traceback" not in response.text
        assert not any(token in response.text for token in live.tokens.values())
        assert "sk-secret-" not in response.text and "ch-secret-" not in response.text  # tokens.key, channels.key
        if response.status_code != 200:
            continue
        path = case.operation.path
        content_type = (response.headers.get("content-type") or [""])[0]  # lower-case names, lists of values
        if content_type.startswith("text/csv"):
            rows = check_csv(response.text)
            REQUESTS["csv"][path] = REQUESTS["csv"].get(path, 0) + 1
        elif content_type.startswith("application/json"):
            data = response.json().get("data")
            rows = len(data) if isinstance(data, list) else len((data or {}).get("models", []))
        else:
            continue
        REQUESTS["rows"][path] = REQUESTS["rows"].get(path, 0) + rows


def test_every_documented_route_is_served(live):
    """Every path of the document answers from its own route: a 404 would pass
    schemathesis (the `default` response) while the route is missing."""
    doc = get(live.port, "/api/openapi.json").json()
    for path, operations in doc["paths"].items():
        if "get" not in operations:
            continue
        url = path.replace("{task_id}", "00000000-0000-0000-0000-000000000000")
        answer = get(live.port, url, live.headers("admin"))
        if "{" in path:
            assert answer.json()["message"] != "not found", path  # the task's own 404
        else:
            assert answer.status != 404, (path, answer.status, answer.text[:200])


def test_fuzzing_reached_the_data(live):
    """Not vacuous: the generated requests got rows (JSON or CSV) from every data route
    (rankings: ranked models) and CSV answers from every CSV route."""
    if not REQUESTS["n"]:
        pytest.skip("run with test_api_conforms_to_its_document")
    routes = ("/api/data/self", "/api/data/", "/api/data/users", "/api/data/flow", "/api/data/flow/self")
    assert all(REQUESTS["rows"].get(path) for path in (*routes, "/api/rankings")), REQUESTS["rows"]
    assert all(REQUESTS["csv"].get(path) for path in routes), REQUESTS["csv"]
