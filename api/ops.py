"""Operations endpoints and per-request instrumentation.

- POST /api/data/reaggregate (admin): enqueue a re-aggregation on the worker, 202 + id;
- GET /api/data/reaggregate/<id> (admin): its state and progress, from the result backend;
- GET /metrics: Prometheus metrics (all gunicorn workers' with PROMETHEUS_MULTIPROC_DIR);
- every request: its latency in usage_stats_api_request_duration_seconds and one log line
  (logger usage_stats.access; path without the query string, never a header).

The job protocol (task names, the enqueued marker, reading a job's record) is
shared.jobs; the Celery client is built from Settings on first use, so that each gunicorn
worker makes its own after the fork.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from celery import Celery
from flask import Blueprint, Flask, Response, current_app, g, has_request_context, jsonify, request, url_for

from shared import jobs, metrics
from shared import models as m
from shared.logging_setup import add_secret_source
from shared.retention import check_reaggregate_range

from .auth import authenticate
from .errors import ApiError, failure
from .errors import log as error_log
from .params import INT64_MAX

bp = Blueprint("usage_stats_ops", __name__)
access_log = logging.getLogger("usage_stats.access")

REAGGREGATE_FIELDS = ("start_timestamp", "end_timestamp", "user_id", "check_every_table")
_TASK_ID = re.compile(r"[A-Za-z0-9_.\-]{1,155}", re.ASCII)
_client_lock = threading.Lock()


# --- instrumentation -----------------------------------------------------------------


def _current_token() -> str | None:
    return g.get("access_token") if has_request_context() else None


def _start_timer() -> None:
    g.request_started = time.perf_counter()


def _finish(response: Response) -> Response:
    started = g.pop("request_started", None)
    seconds = time.perf_counter() - started if started is not None else 0.0
    # The URL rule, not the path: /api/data/reaggregate/<task_id> is one series, and an
    # unknown path is "unmatched" rather than a new series per path.
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.observe_request(route, request.method, response.status_code, seconds)
    access_log.info(
        "%s %s %d %.1fms",
        request.method,
        request.path,
        response.status_code,
        seconds * 1000,
        extra={
            "event": "request",
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 3),
            "remote_addr": request.remote_addr or "",
        },
    )
    return response


def register(app: Flask) -> None:
    add_secret_source(_current_token)
    app.before_request(_start_timer)
    app.after_request(_finish)
    app.register_blueprint(bp)


# --- /metrics ------------------------------------------------------------------------


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    return Response(
        metrics.render(),
        mimetype=metrics.CONTENT_TYPE_LATEST.split(";")[0],
        headers={"Content-Type": metrics.CONTENT_TYPE_LATEST},
    )


# --- re-aggregation over HTTP ----------------------------------------------------------


def _jobs_client() -> Celery:
    """The Celery client (shared.jobs.client: fails fast on a dead broker), made on first
    use in each process, so that each gunicorn worker makes its own after the fork."""
    ext = current_app.extensions
    if "usage_stats_celery" not in ext:
        with _client_lock:
            if "usage_stats_celery" not in ext:
                ext["usage_stats_celery"] = jobs.client(current_app.extensions["usage_stats"].settings)
    client: Celery = ext["usage_stats_celery"]
    return client


def _unavailable(exc: jobs.QueueUnavailable) -> Response:
    error_log.warning("%s unreachable on %s %s: %s", exc.what, request.method, request.path, type(exc.cause).__name__)
    response: Response = failure(
        503, f"task queue unavailable ({exc.what} unreachable), try again later", {"Retry-After": "5"}
    )
    return response


def _int_field(body: dict[str, Any], name: str, *, minimum: int = 0) -> int | None:
    """The whole number `name` of the body, None when absent; raises ApiError(400)."""
    value = body.get(name)
    if value is None:
        return None
    # bool is an int in Python; "true" is not a timestamp.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be a whole number")
    if value < minimum:
        raise ApiError(400, f"{name} must be at least {minimum}")
    if value > INT64_MAX:
        raise ApiError(400, f"{name} is too large: at most {INT64_MAX}")
    return value


def _required_int_field(body: dict[str, Any], name: str) -> int:
    value = _int_field(body, name)
    if value is None:
        raise ApiError(400, f"{name} is required")
    return value


def parse_reaggregate_body() -> tuple[int, int, int | None, bool]:
    """The JSON body {start_timestamp, end_timestamp, user_id?, check_every_table?};
    raises ApiError(400)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(
            400, 'the body must be a JSON object: {"start_timestamp": ..., "end_timestamp": ..., "user_id": ...}'
        )
    unknown = sorted(set(body) - set(REAGGREGATE_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(REAGGREGATE_FIELDS)}")
    start = _required_int_field(body, "start_timestamp")
    end = _required_int_field(body, "end_timestamp")
    user_id = _int_field(body, "user_id", minimum=1)
    check_every_table = body.get("check_every_table")
    if check_every_table is not None and not isinstance(check_every_table, bool):
        raise ApiError(400, "check_every_table must be true or false")
    if end <= start:
        raise ApiError(400, "end_timestamp must be after start_timestamp")
    try:
        check_reaggregate_range(current_app.extensions["usage_stats"].settings, start)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    return start, end, user_id, bool(check_every_table)


@bp.post("/api/data/reaggregate")
def reaggregate_enqueue() -> Response:
    with current_app.extensions["usage_stats"].gateway.connect() as conn:
        authenticate(conn, m.ROLE_ADMIN)
    start, end, user_id, check_every_table = parse_reaggregate_body()
    try:
        task_id = jobs.enqueue_reaggregate(_jobs_client(), start, end, user_id, check_every_table=check_every_table)
    except jobs.QueueUnavailable as e:
        return _unavailable(e)
    error_log.info("re-aggregation %s enqueued: [%d, %d) user=%s", task_id, start, end, user_id)
    status_url = url_for("usage_stats_ops.reaggregate_status", task_id=task_id)
    response = jsonify(success=True, message="", data={"id": task_id, "state": jobs.PENDING, "status_url": status_url})
    response.status_code = 202
    response.headers["Location"] = status_url
    return response


@bp.get("/api/data/reaggregate/<task_id>")
def reaggregate_status(task_id: str) -> Response:
    with current_app.extensions["usage_stats"].gateway.connect() as conn:
        authenticate(conn, m.ROLE_ADMIN)
    if not _TASK_ID.fullmatch(task_id):
        raise ApiError(400, "not a task id")
    try:
        status = jobs.job_status(_jobs_client(), task_id)
    except jobs.QueueUnavailable as e:
        return _unavailable(e)
    if status is None:
        raise ApiError(404, "no such re-aggregation (never enqueued, or its result expired)")
    return jsonify(success=True, message="", data=status.as_dict())
