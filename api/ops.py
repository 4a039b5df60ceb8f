"""Operations endpoints and per-request instrumentation.

- POST /api/data/reaggregate (admin): enqueue a re-aggregation on the worker, 202 + id;
- GET /api/data/reaggregate/<id> (admin): its state and progress, from the result backend;
- GET /metrics: Prometheus metrics (all gunicorn workers' with PROMETHEUS_MULTIPROC_DIR);
- every request: its latency in usage_stats_api_request_duration_seconds and one log line
  (logger usage_stats.access; path without the query string, never a header).

The Celery client is built from Settings (worker.make_celery) on first use, so that each
gunicorn worker makes its own after the fork.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, current_app, g, has_request_context, jsonify, request, url_for

from shared import metrics
from shared import models as m
from shared.logging_setup import add_secret_source
from shared.retention import check_reaggregate_range

from .auth import authenticate
from .errors import ApiError, failure
from .errors import log as error_log
from .params import INT64_MAX

bp = Blueprint("usage_stats_ops", __name__)
access_log = logging.getLogger("usage_stats.access")

REAGGREGATE_FIELDS = ("start_timestamp", "end_timestamp", "user_id")
_TASK_ID = re.compile(r"[A-Za-z0-9_.\-]{1,155}", re.ASCII)
_client_lock = threading.Lock()


# --- instrumentation -----------------------------------------------------------------


def _current_token():
    return g.get("access_token") if has_request_context() else None


def _start_timer():
    g.request_started = time.perf_counter()


def _finish(response):
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
def metrics_endpoint():
    return Response(
        metrics.render(),
        mimetype=metrics.CONTENT_TYPE_LATEST.split(";")[0],
        headers={"Content-Type": metrics.CONTENT_TYPE_LATEST},
    )


# --- re-aggregation over HTTP ----------------------------------------------------------


def _celery():
    ext = current_app.extensions
    if "usage_stats_celery" not in ext:
        with _client_lock:
            if "usage_stats_celery" not in ext:
                from worker.app import make_celery

                client = make_celery(current_app.extensions["usage_stats"].settings)
                # An API request must not hang on a dead broker: fail fast, answer 503.
                client.conf.update(
                    broker_connection_timeout=3,
                    broker_connection_retry=False,
                    # kombu's own reconnect loop (seconds on a refused connection): one retry.
                    broker_transport_options={
                        **(client.conf.broker_transport_options or {}),
                        "max_retries": 1,
                        "interval_start": 0,
                        "interval_step": 0.2,
                        "interval_max": 0.5,
                    },
                    redis_socket_connect_timeout=3,
                    redis_socket_timeout=10,
                    redis_retry_on_timeout=False,
                    result_backend_transport_options={
                        **(client.conf.result_backend_transport_options or {}),
                        "retry_policy": {
                            "max_retries": 1,
                            "interval_start": 0,
                            "interval_step": 0.2,
                            "interval_max": 0.5,
                        },
                    },
                )
                # The API polls task state (GET .../<id>) and never waits on a result, so it
                # needs no result subscription on send; that subscription would retry a dead
                # Redis for a long while instead of failing fast.
                client.backend.on_task_call = lambda *args, **kwargs: None
                ext["usage_stats_celery"] = client
    return ext["usage_stats_celery"]


def _broker_errors() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError as KombuOperationalError

    errors: list[type[BaseException]] = [KombuOperationalError, OSError, TimeoutError]
    try:
        import redis

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:
        pass
    try:
        from celery.exceptions import BackendError

        errors.append(BackendError)
    except ImportError:
        pass
    return tuple(errors)


def _unavailable(what: str, exc: BaseException):
    error_log.warning("%s unreachable on %s %s: %s", what, request.method, request.path, type(exc).__name__)
    return failure(503, f"task queue unavailable ({what} unreachable), try again later", {"Retry-After": "5"})


def _int_field(body: dict, name: str, *, required: bool, minimum: int = 0) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"{name} is required")
        return None
    # bool is an int in Python; "true" is not a timestamp.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be a whole number")
    if value < minimum:
        raise ApiError(400, f"{name} must be at least {minimum}")
    if value > INT64_MAX:
        raise ApiError(400, f"{name} is too large: at most {INT64_MAX}")
    return value


def parse_reaggregate_body() -> tuple[int, int, int | None]:
    """The JSON body {start_timestamp, end_timestamp, user_id?}; raises ApiError(400)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(
            400, 'the body must be a JSON object: {"start_timestamp": ..., "end_timestamp": ..., "user_id": ...}'
        )
    unknown = sorted(set(body) - set(REAGGREGATE_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(REAGGREGATE_FIELDS)}")
    start = _int_field(body, "start_timestamp", required=True)
    end = _int_field(body, "end_timestamp", required=True)
    user_id = _int_field(body, "user_id", required=False, minimum=1)
    if end <= start:
        raise ApiError(400, "end_timestamp must be after start_timestamp")
    try:
        check_reaggregate_range(current_app.extensions["usage_stats"].settings, start)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    return start, end, user_id


@bp.post("/api/data/reaggregate")
def reaggregate_enqueue():
    from worker.app import REAGGREGATE_TASK

    with current_app.extensions["usage_stats"].engine.connect() as conn:
        authenticate(conn, m.ROLE_ADMIN)
    start, end, user_id = parse_reaggregate_body()
    client = _celery()
    task_id = str(uuid.uuid4())
    # A PENDING result carrying `enqueued` before the task exists: the status endpoint
    # then tells a queued task (this marker) from an id nobody enqueued (no result at
    # all, 404). Written first, so that it can never overwrite the worker's own states.
    try:
        client.backend.store_result(task_id, {"done": 0, "total": None, "enqueued": time.time()}, "PENDING")
    except _broker_errors() as e:
        return _unavailable("result backend", e)
    try:
        task = client.send_task(REAGGREGATE_TASK, args=[start, end, user_id], task_id=task_id, retry=False)
    except _broker_errors() as e:
        try:
            client.backend.forget(task_id)
        except Exception:  # the marker expires with the result anyway
            pass
        return _unavailable("broker", e)
    error_log.info("re-aggregation %s enqueued: [%d, %d) user=%s", task.id, start, end, user_id)
    status_url = url_for("usage_stats_ops.reaggregate_status", task_id=task.id)
    response = jsonify(success=True, message="", data={"id": task.id, "state": "PENDING", "status_url": status_url})
    response.status_code = 202
    response.headers["Location"] = status_url
    return response


def _timestamp(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):  # date_done as the backend stores it (ISO 8601, UTC)
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
    if hasattr(value, "timestamp"):
        return value.timestamp()
    return float(value) if isinstance(value, (int, float)) else None


def _error_text(exc) -> str:
    if isinstance(exc, BaseException):
        lines = str(exc).strip().splitlines()
        return type(exc).__name__ + (f": {lines[0][:300]}" if lines else "")
    return str(exc)[:300]


@bp.get("/api/data/reaggregate/<task_id>")
def reaggregate_status(task_id: str):
    with current_app.extensions["usage_stats"].engine.connect() as conn:
        authenticate(conn, m.ROLE_ADMIN)
    if not _TASK_ID.fullmatch(task_id):
        raise ApiError(400, "not a task id")
    try:
        # One read of the task's record: AsyncResult.state and .info would be two, and a
        # worker moving the task from the enqueued marker to PROGRESS in between made a
        # live re-aggregation look unknown (a 404).
        meta = _celery().backend.get_task_meta(task_id)
    except _broker_errors() as e:
        return _unavailable("result backend", e)
    state, info = meta.get("status", "PENDING"), meta.get("result")
    finished = _timestamp(meta.get("date_done")) if state in ("SUCCESS", "FAILURE", "REVOKED") else None
    if state == "PENDING" and not (isinstance(info, dict) and "enqueued" in info):
        raise ApiError(404, "no such re-aggregation (never enqueued, or its result expired)")
    data = {
        "id": task_id,
        "state": state,
        "done": 0,
        "total": None,
        "started": None,
        "finished": finished,
        "error": None,
        "result": None,
    }
    if isinstance(info, dict):
        data["done"] = info.get("done", 0)
        data["total"] = info.get("total")
        data["started"] = info.get("started")
        if state == "SUCCESS":
            data["finished"] = info.get("finished", finished)
            data["result"] = {k: info.get(k) for k in ("start", "end", "chunks", "logs", "seconds")}
    elif state in ("FAILURE", "REVOKED") and info is not None:
        data["error"] = _error_text(info)
    return jsonify(success=True, message="", data=data)
