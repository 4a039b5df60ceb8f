"""The OpenAPI 3.1 document served at /api/openapi.json.

Written out by hand, since it is the contract; tests/test_api_openapi.py keeps it honest
by validating real responses against it and by checking that its parameters are the
ones api.params reads.
"""

from __future__ import annotations

from .config import ApiLimits
from .params import ADMIN_PARAMETERS, INT64_MAX, MAX_CALENDAR_TIMESTAMP, SELF_PARAMETERS

_INT = {"type": "integer", "minimum": 0, "maximum": INT64_MAX, "format": "int64"}


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _row(extra: dict | None = None) -> dict:
    props = {
        "model_name": {"type": "string", "description": "Model name"},
        "count": {**_INT, "description": "Requests (consume logs)"},
        "quota": {**_INT, "description": "Quota spent (500,000 = 1 USD)"},
        "token_used": {**_INT, "description": "prompt_tokens + completion_tokens"},
        "created_at": {
            **_INT,
            "description": (
                "Bucket start, unix seconds: the hour, or the local midnight starting the day, the week (Monday) "
                "or the month (the 1st) in the zone tz"
            ),
        },
        **(extra or {}),
        "prompt_tokens": {**_INT, "description": "Prompt tokens"},
        "completion_tokens": {**_INT, "description": "Completion tokens"},
    }
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _failure(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref("schemas", "Failure")}}}


def _errors(*, admin: bool) -> dict:
    return {
        "400": _failure(
            "Bad parameter: not a whole number, negative, beyond int64, start after end, span too long, "
            "unknown granularity, unknown time zone, a zone with offsets that are not whole hours (other than "
            "STATS_TIMEZONE, for days, weeks and months), realtime not true or false or turned off on the "
            "server, or a parameter given twice."
        ),
        "401": _failure("Missing or invalid access token; missing, malformed or mismatched New-Api-User."),
        "403": _failure("The user is disabled" + (", or is not an administrator (role < 10)." if admin else ".")),
        "500": _failure("Internal error (no details are given)."),
        "503": _failure("The database cannot be reached; retry later."),
        "default": _failure("Any other error, such as 404 for an unknown path or 405 for a method other than GET."),
    }


def _ok(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref("schemas", schema)}}}


def document(limits: ApiLimits) -> dict:
    range_note = (
        "A bucket is returned when its start lies in [start_timestamp, end_timestamp], both ends included. "
        "Rows are ordered by created_at, then model_name. With realtime (the default), the answer includes "
        "every consume log committed before the request, also those the rollup has not reached yet."
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "usage-stats data statistics API",
            "version": "1.0.0",
            "description": (
                "new-api's data statistics endpoints, answered from hourly and daily rollups of the "
                'gateway\'s consume logs. Every failure is {"success": false, "message": ...}.'
            ),
        },
        "paths": {
            "/api/data/self": {
                "get": {
                    "operationId": "getSelfData",
                    "summary": "My usage statistics by date",
                    "description": "The caller's own rows, one per (bucket, model). " + range_note,
                    "security": [{"accessToken": [], "newApiUser": []}],
                    "parameters": [_ref("parameters", n) for n in SELF_PARAMETERS],
                    "responses": {
                        "200": _ok("SelfResponse", "The caller's rows (possibly none)."),
                        **_errors(admin=False),
                    },
                }
            },
            "/api/data/": {
                "get": {
                    "operationId": "getAllData",
                    "summary": "Site-wide usage statistics by date (administrators)",
                    "description": (
                        "Rows by (bucket, model) across all users; with username, that user's rows, which "
                        "also carry user_id and username (none for an unknown or deleted user). "
                        "Also answered at /api/data, without a redirect. " + range_note
                    ),
                    "security": [{"accessToken": [], "newApiUser": []}],
                    "parameters": [_ref("parameters", n) for n in ADMIN_PARAMETERS],
                    "responses": {"200": _ok("AllResponse", "The rows (possibly none)."), **_errors(admin=True)},
                }
            },
            "/api/data/reaggregate": {
                "post": {
                    "operationId": "enqueueReaggregate",
                    "summary": "Re-aggregate a range from the raw logs (administrators)",
                    "description": (
                        "Hands a re-aggregation to the worker and answers at once with its task id. The worker "
                        "recomputes every local day touching [start_timestamp, end_timestamp) from the raw logs, "
                        "for one user when user_id is given. Poll /api/data/reaggregate/{task_id} for its progress. "
                        "With RETAIN_LOGS_DAYS set, a range reaching back before the raw-log horizon is refused."
                    ),
                    "security": [{"accessToken": [], "newApiUser": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("schemas", "ReaggregateRequest")}},
                    },
                    "responses": {
                        "202": _ok("ReaggregateAccepted", "Enqueued; the Location header is the status URL."),
                        **{k: v for k, v in _errors(admin=True).items() if k not in ("400", "503")},
                        "400": _failure(
                            "The body is not a JSON object of the documented fields, a timestamp or user_id is not a "
                            "whole number in range, end_timestamp is not after start_timestamp, or the range starts "
                            "before the raw-log retention horizon."
                        ),
                        "503": _failure("The database or the task queue (broker) cannot be reached; retry later."),
                    },
                }
            },
            "/api/data/reaggregate/{task_id}": {
                "get": {
                    "operationId": "getReaggregate",
                    "summary": "State and progress of a re-aggregation (administrators)",
                    "description": (
                        "From the Celery result backend. An id that was never enqueued here, or whose result "
                        "expired (after a day), is a 404."
                    ),
                    "security": [{"accessToken": [], "newApiUser": []}],
                    "parameters": [
                        {
                            "name": "task_id",
                            "in": "path",
                            "required": True,
                            # api.ops._TASK_ID: anything else is a 400 before any lookup.
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,155}$"},
                        }
                    ],
                    "responses": {
                        "200": _ok("ReaggregateStatusResponse", "The task's state."),
                        **{k: v for k, v in _errors(admin=True).items() if k not in ("400", "503")},
                        "400": _failure("Not a task id."),
                        "404": _failure("No such re-aggregation: never enqueued, or its result expired."),
                        "503": _failure("The database or the result backend cannot be reached; retry later."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (text exposition format)",
                    "security": [],
                    "responses": {
                        "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/": {
                "get": {
                    "operationId": "chartPage",
                    "summary": "The chart page (HTML): quota by model over time and request share by model",
                    "description": (
                        "Reads /api/data/self or /api/data/ in the browser with the token entered in the page "
                        "(or given in the URL fragment: #token=...&user=...); serves no data itself."
                    ),
                    "security": [],
                    "responses": {
                        "200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is up (does not touch the database)",
                    "security": [],
                    "responses": {"200": _ok("Status", "Up.")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "The database is reachable and migrated",
                    "security": [],
                    "responses": {
                        "200": _ok("Status", "Ready."),
                        "503": _failure("The database is not reachable or not migrated."),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "accessToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The user's access token (users.access_token). A bare token without 'Bearer ' is accepted too.",
                },
                "newApiUser": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "New-Api-User",
                    "description": "The id of the user the access token belongs to; required.",
                },
            },
            "parameters": {
                "start_timestamp": {
                    "name": "start_timestamp",
                    "in": "query",
                    "required": False,
                    "description": (
                        "Range start, unix seconds (included). Default: end_timestamp minus 24 hours "
                        "(granularity=hour), 7 days (day), 84 days (week) or 365 days (month), never more than "
                        "the span limit. An empty value counts as absent."
                    ),
                    "schema": _INT,
                },
                "end_timestamp": {
                    "name": "end_timestamp",
                    "in": "query",
                    "required": False,
                    "description": (
                        "Range end, unix seconds (included). Default: now. end_timestamp - start_timestamp may be "
                        f"at most {limits.max_span_hourly_days} days for granularity=hour and "
                        f"{limits.max_span_daily_days} days for granularity=day, week and month; days, weeks and "
                        f"months in a tz other than the server's STATS_TIMEZONE are summed from hourly rows and "
                        f"may span at most {limits.max_span_hourly_days} days. For weeks and months (and days in "
                        f"another tz), at most {MAX_CALENDAR_TIMESTAMP}."
                    ),
                    "schema": _INT,
                },
                "granularity": {
                    "name": "granularity",
                    "in": "query",
                    "required": False,
                    "description": (
                        "hour: buckets start on the hour (UTC); day: at local midnight in tz; week: at local "
                        "midnight starting Monday; month: at local midnight starting the 1st."
                    ),
                    "schema": {"type": "string", "enum": ["hour", "day", "week", "month"], "default": "hour"},
                },
                "tz": {
                    "name": "tz",
                    "in": "query",
                    "required": False,
                    "description": (
                        "IANA time zone of day, week and month buckets (23- and 25-hour days included), such as "
                        "Asia/Shanghai or America/New_York. Default: the server's STATS_TIMEZONE, whose days come "
                        "from the daily rows. Another zone is summed from hourly rows and must have whole-hour "
                        "offsets over the range (Asia/Kolkata is refused unless it is STATS_TIMEZONE). "
                        "Unknown zones and legacy names such as CET or EST5EDT are refused. No effect on hours."
                    ),
                    "schema": {"type": "string", "examples": ["Asia/Shanghai"]},
                },
                "realtime": {
                    "name": "realtime",
                    "in": "query",
                    "required": False,
                    "description": (
                        "true (default, unless the server sets API_REALTIME=false): add the consume logs the rollup "
                        "has not counted yet, so that a log counts as soon as it is committed. false: the summary "
                        "rows only. true on a server with API_REALTIME=false is refused."
                    ),
                    "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
                },
                "username": {
                    "name": "username",
                    "in": "query",
                    "required": False,
                    "description": "Only this user's rows (rows then carry user_id and username).",
                    "schema": {"type": "string"},
                },
            },
            "schemas": {
                "SiteRow": _row(),
                "UserRow": _row(
                    {
                        "user_id": {**_INT, "description": "User id"},
                        "username": {"type": "string", "description": "Username at the time of the requests"},
                    }
                ),
                "SelfResponse": _success_schema({"type": "array", "items": _ref("schemas", "UserRow")}),
                "AllResponse": _success_schema(
                    {
                        "type": "array",
                        # Site-wide rows, or a user's rows when username is given; the two
                        # differ in user_id/username, so exactly one of them matches a row.
                        "items": {"oneOf": [_ref("schemas", "SiteRow"), _ref("schemas", "UserRow")]},
                    }
                ),
                "ReaggregateRequest": {
                    "type": "object",
                    "properties": {
                        "start_timestamp": {
                            **_INT,
                            "description": "Range start, unix seconds (widened to local midnight)",
                        },
                        "end_timestamp": {
                            **_INT,
                            "description": "Range end, unix seconds, exclusive; after start_timestamp",
                        },
                        "user_id": {
                            "type": ["integer", "null"],
                            "minimum": 1,
                            "maximum": INT64_MAX,
                            "description": "Only this user's rows (site-wide rows are rebuilt from per-user rows)",
                        },
                    },
                    "required": ["start_timestamp", "end_timestamp"],
                    "additionalProperties": False,
                },
                "ReaggregateAccepted": _success_schema(
                    {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string", "description": "The task id"},
                            "state": {"const": "PENDING"},
                            "status_url": {"type": "string"},
                        },
                        "required": ["id", "state", "status_url"],
                        "additionalProperties": False,
                    }
                ),
                "ReaggregateStatusResponse": _success_schema(
                    {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "state": {
                                "type": "string",
                                "description": "PENDING, PROGRESS, SUCCESS, FAILURE (or another Celery state)",
                            },
                            "done": {"type": "integer", "description": "Chunks of days done"},
                            "total": {"type": ["integer", "null"], "description": "Chunks in all (null until known)"},
                            "started": {
                                "type": ["number", "null"],
                                "description": "Unix seconds the worker started it",
                            },
                            "finished": {
                                "type": ["number", "null"],
                                "description": "Unix seconds it finished (success or failure)",
                            },
                            "error": {
                                "type": ["string", "null"],
                                "description": "On FAILURE: the error's type and first line",
                            },
                            "result": {
                                "type": ["object", "null"],
                                "description": "On SUCCESS: the local-day range done [start, end), chunks, consume logs counted, seconds",
                            },
                        },
                        "required": ["id", "state", "done", "total", "started", "finished", "error", "result"],
                        "additionalProperties": False,
                    }
                ),
                "Status": {
                    "type": "object",
                    "properties": {"success": {"const": True}, "message": {"type": "string"}},
                    "required": ["success", "message"],
                    "additionalProperties": False,
                },
                "Failure": {
                    "type": "object",
                    "properties": {"success": {"const": False}, "message": {"type": "string", "minLength": 1}},
                    "required": ["success", "message"],
                    "additionalProperties": False,
                },
            },
        },
    }


def _success_schema(data: dict) -> dict:
    return {
        "type": "object",
        "properties": {"success": {"const": True}, "message": {"type": "string"}, "data": data},
        "required": ["success", "message", "data"],
        "additionalProperties": False,
    }
