"""Re-aggregation over HTTP: POST /api/data/reaggregate and GET /api/data/reaggregate/<id>.

- On SQLite without a worker: authentication (401/403) and parameters (400) are refused
  before anything reaches the broker; an unreachable broker is a 503.
- Integration: a real Celery worker on Redis and PostgreSQL; trigger over HTTP, poll the
  status until SUCCESS, and the summary tables equal the GROUP BY over raw logs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from api import create_app
from shared import aggregation as agg
from shared import jobs
from shared import models as m
from shared.config import Settings
from shared.ops import run_rollup
from tests.api_support import add_user
from tests.test_worker import ACTUAL, EXPECTED, _log, _rows, _stop, redis_url  # noqa: F401  (fixture)

POST = "/api/data/reaggregate"
DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused at once


def _conforms(client, method, path, response):
    """`response` validates against the OpenAPI schema for its path, method and status."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    from tests.test_api_openapi import DOC_URI, pointer

    doc = client.get("/api/openapi.json").get_json()
    registry = Registry().with_resource(DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012))
    responses = doc["paths"][path][method]["responses"]
    assert str(response.status_code) in responses, (method, path, response.status_code)
    ref = f"{DOC_URI}#/" + pointer(
        "paths", path, method, "responses", str(response.status_code), "content", "application/json", "schema"
    )
    errors = [
        e.message for e in Draft202012Validator({"$ref": ref}, registry=registry).iter_errors(response.get_json())
    ]
    assert not errors, errors


def _headers(token, user):
    return {"Authorization": f"Bearer {token}", "New-Api-User": str(user)}


@pytest.fixture
def sq(sqlite_engine):
    settings = Settings(database_url="sqlite://", celery_broker_url=DEAD_BROKER, celery_result_backend=DEAD_BROKER)
    app = create_app(settings, engine=sqlite_engine)
    people = {
        "admin": (1, add_user(sqlite_engine, 1, "admin", role=m.ROLE_ADMIN)),
        "alice": (2, add_user(sqlite_engine, 2, "alice")),
        "off": (3, add_user(sqlite_engine, 3, "off", role=m.ROLE_ADMIN, status=m.STATUS_DISABLED)),
    }
    return app.test_client(), people


def _failure(response, status, *fragments):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is False and set(body) == {"success", "message"}
    for f in fragments:
        assert f in body["message"], (f, body["message"])
    return body


GOOD = {"start_timestamp": 1_700_000_000, "end_timestamp": 1_700_086_400}


@pytest.mark.parametrize("method,path", [("post", POST), ("get", POST + "/abc")])
def test_needs_a_token_401(sq, method, path):
    client, people = sq
    r = getattr(client, method)(path, json=GOOD)
    _failure(r, 401, "access token")
    r = getattr(client, method)(path, json=GOOD, headers=_headers("0" * 32, 1))
    _failure(r, 401, "invalid access token")
    token = people["admin"][1]
    r = getattr(client, method)(path, json=GOOD, headers={"Authorization": f"Bearer {token}"})
    _failure(r, 401, "New-Api-User")


@pytest.mark.parametrize("method,path", [("post", POST), ("get", POST + "/abc")])
def test_needs_an_enabled_admin_403(sq, method, path):
    client, people = sq
    uid, token = people["alice"]
    _failure(getattr(client, method)(path, json=GOOD, headers=_headers(token, uid)), 403, "administrator")
    uid, token = people["off"]
    _failure(getattr(client, method)(path, json=GOOD, headers=_headers(token, uid)), 403, "disabled")


@pytest.mark.parametrize(
    "body,fragment",
    [
        (None, "JSON object"),
        ([1, 2], "JSON object"),
        ({}, "start_timestamp is required"),
        ({"start_timestamp": 1}, "end_timestamp is required"),
        ({"start_timestamp": "1", "end_timestamp": 5}, "start_timestamp must be a whole number"),
        ({"start_timestamp": 1.5, "end_timestamp": 5}, "start_timestamp must be a whole number"),
        ({"start_timestamp": True, "end_timestamp": 5}, "start_timestamp must be a whole number"),
        ({"start_timestamp": -1, "end_timestamp": 5}, "start_timestamp must be at least 0"),
        ({"start_timestamp": 1, "end_timestamp": 2**63}, "end_timestamp is too large"),
        ({"start_timestamp": 5, "end_timestamp": 5}, "end_timestamp must be after start_timestamp"),
        ({"start_timestamp": 9, "end_timestamp": 5}, "end_timestamp must be after start_timestamp"),
        ({**GOOD, "user_id": 0}, "user_id must be at least 1"),
        ({**GOOD, "user_id": "7"}, "user_id must be a whole number"),
        ({**GOOD, "granularity": "day"}, "unknown field(s): granularity"),
    ],
)
def test_bad_parameters_400(sq, body, fragment):
    client, people = sq
    uid, token = people["admin"]
    if body is None:
        r = client.post(POST, data="start_timestamp=1", headers=_headers(token, uid))
    else:
        r = client.post(POST, json=body, headers=_headers(token, uid))
    _failure(r, 400, fragment)
    _conforms(client, "post", POST, r)


def test_range_before_the_raw_log_horizon_400(sqlite_engine):
    settings = Settings(database_url="sqlite://", celery_broker_url=DEAD_BROKER, retain_logs_days=30)
    client = create_app(settings, engine=sqlite_engine).test_client()
    token = add_user(sqlite_engine, 1, "admin", role=m.ROLE_ADMIN)
    now = int(time.time())
    r = client.post(POST, json={"start_timestamp": now - 40 * 86400, "end_timestamp": now}, headers=_headers(token, 1))
    _failure(r, 400, "RETAIN_LOGS_DAYS")


def test_bad_task_id_400(sq):
    client, people = sq
    uid, token = people["admin"]
    _failure(client.get(POST + "/not%20an%20id", headers=_headers(token, uid)), 400, "not a task id")


def test_unreachable_broker_503(sq):
    client, people = sq
    uid, token = people["admin"]
    r = client.post(POST, json=GOOD, headers=_headers(token, uid))
    body = _failure(r, 503, "unavailable")
    _conforms(client, "post", POST, r)
    assert r.headers.get("Retry-After") == "5"
    assert token not in body["message"]
    r = client.get(POST + "/0b7c3a6e-1111-4222-8333-944455556666", headers=_headers(token, uid))
    _failure(r, 503, "unavailable")


def test_get_is_not_allowed_on_the_collection(sq):
    client, people = sq
    uid, token = people["admin"]
    _failure(client.get(POST, headers=_headers(token, uid)), 405)


@pytest.mark.integration
def test_status_is_one_read_of_the_task_record(pg_engine, pg_url, redis_url, monkeypatch):
    """A worker moving a task from the enqueued marker to PROGRESS between two reads of
    its record made a live re-aggregation answer 404 (state read as PENDING, info read
    as PROGRESS without the marker). Here the move happens right after the first read."""
    settings = Settings.from_env({"DATABASE_URL": pg_url, "CELERY_BROKER_URL": redis_url})
    token = add_user(pg_engine, 1, "admin", role=m.ROLE_ADMIN)
    client = create_app(settings, engine=pg_engine).test_client()
    assert client.get(f"{POST}/warm-up", headers=_headers(token, 1)).status_code == 404  # builds the client
    backend = client.application.extensions["usage_stats_celery"].backend
    task_id, now = "reaggregate-race", time.time()
    backend.store_result(task_id, {"done": 0, "total": None, "enqueued": now}, "PENDING")
    read = backend.get_task_meta

    def read_then_the_worker_moves(tid, *args, **kwargs):
        meta = read(tid, *args, **kwargs)
        backend.store_result(tid, {"done": 0, "total": 3, "started": now}, "PROGRESS")
        return meta

    monkeypatch.setattr(backend, "get_task_meta", read_then_the_worker_moves)
    first = client.get(f"{POST}/{task_id}", headers=_headers(token, 1))
    assert first.status_code == 200, first.get_data(as_text=True)
    assert first.get_json()["data"]["state"] == "PENDING"
    second = client.get(f"{POST}/{task_id}", headers=_headers(token, 1))
    assert second.status_code == 200 and second.get_json()["data"]["state"] == "PROGRESS"
    assert second.get_json()["data"]["total"] == 3


@pytest.mark.integration
def test_trigger_and_poll_through_a_real_worker(pg_engine, pg_url, redis_url, tmp_path):
    settings = Settings.from_env(
        {"DATABASE_URL": pg_url, "CELERY_BROKER_URL": redis_url, "REAGGREGATE_CHUNK_DAYS": "1"}
    )
    token = add_user(pg_engine, 1, "admin", role=m.ROLE_ADMIN)
    now = int(time.time())
    with pg_engine.begin() as conn:
        conn.execute(sa.insert(m.logs), [_log(u, now - 3 * 3600 * h, quota=10 + h) for u in (2, 3) for h in range(30)])
        conn.execute(sa.insert(m.logs), [_log(2, now, kind=m.LOG_ERROR)])
    run_rollup(pg_engine, settings, wait=True)
    # Damage the summaries, as a bug or a manual edit would; re-aggregation repairs them.
    with pg_engine.begin() as conn:
        conn.execute(sa.update(agg.hourly_usage).values(count=999, quota=0))
        conn.execute(sa.delete(agg.daily_usage).where(agg.daily_usage.c.user_id == 3))
    assert _rows(pg_engine, ACTUAL) != _rows(pg_engine, EXPECTED)

    env = dict(os.environ, DATABASE_URL=pg_url, CELERY_BROKER_URL=redis_url, ROLLUP_INTERVAL_SECONDS="3600")
    env.pop("CELERY_RESULT_BACKEND", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "solo", "--loglevel", "INFO"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = create_app(settings, engine=pg_engine).test_client()
        start, end = now - 5 * 86400, now + 3600
        body = {"start_timestamp": start, "end_timestamp": end, "check_every_table": True}
        r = client.post(POST, json=body, headers=_headers(token, 1))
        assert r.status_code == 202, r.get_data(as_text=True)
        _conforms(client, "post", POST, r)
        body = r.get_json()
        assert body["success"] is True
        task_id = body["data"]["id"]
        assert r.headers["Location"].endswith(f"/api/data/reaggregate/{task_id}")

        seen = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"worker exited early with code {proc.returncode}")
            s = client.get(f"{POST}/{task_id}", headers=_headers(token, 1))
            assert s.status_code == 200, s.get_data(as_text=True)
            data = s.get_json()["data"]
            seen.add(data["state"])
            if data["state"] in ("SUCCESS", "FAILURE"):
                break
            time.sleep(0.2)
        assert data["state"] == "SUCCESS", data
        _conforms(client, "get", POST + "/{task_id}", s)
        assert data["error"] is None
        assert data["done"] == data["total"] == data["result"]["chunks"] >= 6
        assert data["started"] is not None and data["finished"] >= data["started"]
        assert data["result"]["logs"] == 60
        assert seen <= {"PENDING", "PROGRESS", "SUCCESS"}

        assert _rows(pg_engine, ACTUAL) == _rows(pg_engine, EXPECTED)
        daily = sa.text("SELECT user_id, sum(count), sum(quota) FROM daily_usage GROUP BY user_id ORDER BY 1")
        raw = sa.text("SELECT user_id, count(*), sum(quota) FROM logs WHERE type = 2 GROUP BY user_id ORDER BY 1")
        assert _rows(pg_engine, daily) == _rows(pg_engine, raw)
        site = sa.text("SELECT sum(count), sum(quota) FROM daily_model_usage")
        assert _rows(pg_engine, site) == [(60, sum(10 + h for h in range(30)) * 2)]

        # An id nobody enqueued is a 404, not an eternal PENDING.
        unknown = client.get(f"{POST}/0b7c3a6e-1111-4222-8333-944455556666", headers=_headers(token, 1))
        _failure(unknown, 404, "no such re-aggregation")
        _conforms(client, "get", POST + "/{task_id}", unknown)

        # A failing task reports FAILURE with an error, in the same shape. (Enqueued
        # through the job protocol directly, since the endpoint refuses such a range.)
        celery_client = client.application.extensions["usage_stats_celery"]
        bad_id = jobs.enqueue_reaggregate(celery_client, 10, 5, None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            data = client.get(f"{POST}/{bad_id}", headers=_headers(token, 1)).get_json()["data"]
            if data["state"] in ("SUCCESS", "FAILURE"):
                break
            time.sleep(0.2)
        assert data["state"] == "FAILURE" and "ValueError" in data["error"] and data["finished"] is not None
    finally:
        _stop(proc)
    output = proc.stdout.read()
    assert token not in output
