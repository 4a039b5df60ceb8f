"""The OpenAPI 3.1 document served at /api/openapi.json.

Written out by hand, since it is the contract; tests/test_api_openapi.py keeps it honest
by validating real responses against it, by checking that its parameters are the ones
the code reads and that its paths are the routes the app serves; tests/test_fuzz.py runs
schemathesis over it against the running API.
"""

from __future__ import annotations

from typing import Any

from shared import rankings as r
from shared.queries import GRANULARITIES

from . import flow, logstat
from .config import DAY, ApiLimits
from .params import (
    ADMIN_PARAMETERS,
    FORMATS,
    GRANULARITY_ALIAS,
    GROUP_BY,
    INT64_MAX,
    MAX_CALENDAR_TIMESTAMP,
    SELF_GROUP_BY,
    SELF_PARAMETERS,
)

_INT = {"type": "integer", "minimum": 0, "maximum": INT64_MAX, "format": "int64"}
# No NUL anywhere in a text parameter: no log can hold one, and PostgreSQL refuses it.
NO_NUL = "^[^\\u0000]*$"
# The example range of the timestamps: a UTC day (2025-07-12).
EXAMPLE_START = 1_752_278_400
EXAMPLE_END = EXAMPLE_START + 86_399
FLOW_SELF_MAX_SPAN_DAYS = flow.SELF_FLOW_MAX_SPAN // DAY


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _object(props: dict, required: list[str] | None = None, **extra: Any) -> dict:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


# --- rows ---------------------------------------------------------------------------------

MEASURES = {
    "count": {**_INT, "description": "Requests (consume logs)"},
    "quota": {**_INT, "description": "Quota spent (500,000 = 1 USD)"},
    "token_used": {**_INT, "description": "prompt_tokens + completion_tokens"},
    "prompt_tokens": {**_INT, "description": "Prompt tokens"},
    "completion_tokens": {**_INT, "description": "Completion tokens"},
}
BUCKET = {
    **_INT,
    "description": (
        "Bucket start, unix seconds: the hour, or the local midnight starting the day, the week (Monday) "
        "or the month (the 1st) in the zone tz"
    ),
}
# The dimensions of a grouped row, each with the name it carries.
DIMENSIONS = {
    "model_name": {"type": "string", "description": "Model name"},
    "user_id": {**_INT, "description": "User id"},
    "username": {
        "type": "string",
        "description": "Username the user's logs recorded (the largest one, where it changed within a bucket)",
    },
    "token_id": {**_INT, "description": "API key id (logs.token_id; 0 for logs without a key)"},
    "token_name": {
        "type": "string",
        "description": (
            "The key's live name from new-api's tokens table; 'Deleted (<id>)' for a soft-deleted key; the name "
            "its logs recorded for a key the table does not know"
        ),
    },
    "channel_id": {**_INT, "description": "Channel id (logs.channel_id; 0 for logs without one)"},
    "channel_name": {
        "type": "string",
        "description": "channels.name; 'channel-<id>' for a channel the table does not know (or no table)",
    },
    "use_group": {"type": "string", "description": "The group the request used (logs.group)"},
}
# Each id comes with its name, and a name with its id.
PAIRS = {"user_id": "username", "token_id": "token_name", "channel_id": "channel_name"}


def _row(extra: dict | None = None) -> dict:
    """A row of the seed's shape (no group_by): model and bucket, and `extra`."""
    props = {
        "model_name": DIMENSIONS["model_name"],
        "count": MEASURES["count"],
        "quota": MEASURES["quota"],
        "token_used": MEASURES["token_used"],
        "created_at": BUCKET,
        **(extra or {}),
        "prompt_tokens": MEASURES["prompt_tokens"],
        "completion_tokens": MEASURES["completion_tokens"],
    }
    return _object(props)


def _grouped_row(*, admin: bool) -> dict:
    """A row of an answer with group_by: the bucket, the measures, and the dimensions
    asked for (at least one) with their names; nothing else."""
    dims = {k: v for k, v in DIMENSIONS.items() if admin or k not in ("user_id", "username")}
    pairs = {k: v for k, v in PAIRS.items() if k in dims}
    required = ["created_at", *MEASURES]
    return _object(
        {"created_at": BUCKET, **dims, **MEASURES},
        required,
        minProperties=len(required) + 1,
        dependentRequired={**{i: [n] for i, n in pairs.items()}, **{n: [i] for i, n in pairs.items()}},
        description=(
            "created_at, then each dimension of group_by in the order model_name, user_id, username, token_id, "
            "token_name, channel_id, channel_name, use_group, then the measures. Only the grouped dimensions "
            "(and their names) are present."
        ),
    )


def _flow_row(fields: tuple[str, ...], description: str) -> dict:
    props = {f: DIMENSIONS[f] for f in fields}
    props.update((m, MEASURES[m]) for m in ("token_used", "count", "quota"))
    return _object(props, description=description)


# --- responses ----------------------------------------------------------------------------


def _failure(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref("schemas", "Failure")}}}


AUTH_401 = "Missing or invalid access token; missing, malformed or mismatched New-Api-User."


def _errors(*, admin: bool, bad_request: str) -> dict:
    return {
        "400": _failure(bad_request),
        "401": _failure(AUTH_401),
        "403": _failure("The user is disabled" + (", or is not an administrator (role < 10)." if admin else ".")),
        "500": _failure("Internal error (no details are given)."),
        "503": _failure("The database cannot be reached; retry later."),
        "default": _failure("Any other error, such as 404 for an unknown path or 405 for a method other than GET."),
    }


def _ok(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref("schemas", schema)}}}


WINDOW_400 = (
    "a timestamp not a whole number, negative or beyond int64, start after end, a span too long, an unknown "
    "granularity or default_time, granularity and default_time that disagree, an unknown time zone, a zone with "
    "offsets that are not whole hours (other than STATS_TIMEZONE, for days, weeks and months), realtime not true "
    "or false or turned off on the server, or a parameter given twice"
)
DATA_400 = (
    "Bad parameter: "
    + WINDOW_400
    + "; group_by with an unknown or empty name (user on /api/data/self), token_id or channel not a whole number "
    "from 0 to int64, NUL in model_name, token_name, group or username, or format neither json nor csv."
)


DATA_CSV = "usage-{}-<granularity>-<start_timestamp>-<end_timestamp>.csv"
FLOW_CSV = "usage-flow-<start_timestamp>-<end_timestamp>.csv"


def _data_ok(schema: str, description: str, filename: str) -> dict:
    """200 of a data endpoint: JSON, or CSV with format=csv or an Accept header ranking
    text/csv first, as the attachment `filename`."""
    return {
        "description": description,
        "headers": {
            "Content-Disposition": {
                "description": f'CSV answers only: attachment; filename="{filename}"',
                "schema": {"type": "string"},
            }
        },
        "content": {
            "application/json": {"schema": _ref("schemas", schema)},
            "text/csv": {
                "schema": {
                    "type": "string",
                    "description": (
                        "RFC 4180 with CRLF line ends, streamed: a header row of the JSON rows' keys in their order, "
                        "then one line per row, the same rows as the JSON answer. A text cell starting with =, +, "
                        "-, @, a tab or a carriage return gets a leading apostrophe (spreadsheet formula injection)."
                    ),
                },
            },
        },
    }


# --- the document -------------------------------------------------------------------------


def document(limits: ApiLimits) -> dict:
    range_note = (
        "A bucket is returned when its start lies in [start_timestamp, end_timestamp], both ends included. "
        "Without group_by, rows are ordered by created_at, then model_name; with it, by created_at, then the "
        "grouped dimensions (text in code point order). With realtime (the default), the answer includes every "
        "consume log committed before the request, also those the rollup has not reached yet. "
        "format=csv (or an Accept header that ranks text/csv above application/json) gives the same rows as CSV; "
        "failures stay JSON."
    )
    grouping_note = (
        "With group_by, one row per bucket and combination of the grouped dimensions, carrying their names "
        "(user_id with username, token_id with token_name, channel_id with channel_name); without it, filtered "
        "or not, the seed's shape. "
    )
    secured: list[dict[str, list[str]]] = [{"accessToken": [], "newApiUser": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "usage-stats data statistics API",
            "version": "1.1.0",
            "description": (
                "new-api's data statistics endpoints, answered from hourly and daily rollups of the "
                'gateway\'s consume logs. Every failure is {"success": false, "message": ...} with a '
                "proper HTTP status (new-api answers most of them with 200). Unknown query parameters "
                "are ignored; an empty value counts as absent."
            ),
        },
        "paths": {
            "/api/data/self": {
                "get": {
                    "operationId": "getSelfData",
                    "summary": "My usage statistics by date",
                    "description": (
                        "The caller's own rows, one per (bucket, model). "
                        + grouping_note
                        + "Filters apply to the caller's own logs only: another user's key id or name matches "
                        "nothing. " + range_note
                    ),
                    "security": secured,
                    "parameters": [
                        _ref("parameters", "group_by_self" if n == "group_by" else n) for n in SELF_PARAMETERS
                    ],
                    "responses": {
                        "200": _data_ok("SelfResponse", "The caller's rows (possibly none).", DATA_CSV.format("self")),
                        **_errors(admin=False, bad_request=DATA_400),
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
                        + grouping_note
                        + "Also answered at /api/data, without a redirect. "
                        + range_note
                    ),
                    "security": secured,
                    "parameters": [_ref("parameters", n) for n in ADMIN_PARAMETERS],
                    "responses": {
                        "200": _data_ok("AllResponse", "The rows (possibly none).", DATA_CSV.format("site")),
                        **_errors(admin=True, bad_request=DATA_400),
                    },
                }
            },
            "/api/data/users": {
                "get": {
                    "operationId": "getUsersData",
                    "summary": "Usage by user and date (administrators)",
                    "description": (
                        "One row per (bucket, user): created_at, user_id, username, the measures; with username, "
                        "that live user's rows only. Users are keyed by id (new-api keys them by the username "
                        "string, merging users who held the same name); deleted users' rows remain. "
                        "Ordered by created_at, then user_id. format=csv (or Accept: text/csv) as on /api/data/; "
                        "no group_by or filters."
                    ),
                    "security": secured,
                    "parameters": [_ref("parameters", n) for n in flow.USERS_PARAMETERS],
                    "responses": {
                        "200": _data_ok("UsersResponse", "The rows (possibly none).", DATA_CSV.format("users")),
                        **_errors(
                            admin=True,
                            bad_request="Bad parameter: " + WINDOW_400 + ", NUL in username, or format neither json "
                            "nor csv.",
                        ),
                    },
                }
            },
            "/api/data/flow": {
                "get": {
                    "operationId": "getFlowData",
                    "summary": "Usage flow for new-api's Sankey chart (administrators)",
                    "description": (
                        "Flat rows summed over the whole range, largest quota first: for root (role >= 100) by "
                        "user, API key, channel, group and model; for administrators by user, channel, group and "
                        "model. Rows of an empty group are left out, as in new-api. new-api's node_name is not "
                        "in the gateway's logs and is never given. Hours starting in [start_timestamp, "
                        f"end_timestamp] are read while the range spans at most {limits.max_span_hourly_days} "
                        "days, days of STATS_TIMEZONE starting in it up to "
                        f"{limits.max_span_daily_days} days; longer is refused."
                    ),
                    "security": secured,
                    "parameters": [_flow_parameter(n) for n in flow.FLOW_PARAMETERS],
                    "responses": {
                        "200": _data_ok("FlowResponse", "The rows (possibly none).", FLOW_CSV),
                        **_errors(
                            admin=True,
                            bad_request=(
                                "Bad parameter: start_timestamp or end_timestamp missing, not a whole number, 0 "
                                "or beyond int64, end before start, a span too long, realtime not true or false "
                                "or turned off on the server, NUL in username, format neither json nor csv, or a "
                                "parameter given twice."
                            ),
                        ),
                    },
                }
            },
            "/api/data/flow/self": {
                "get": {
                    "operationId": "getSelfFlowData",
                    "summary": "My usage flow: my API keys -> groups -> models",
                    "description": (
                        "The caller's own flat rows by API key, group and model, summed over the whole range, "
                        "largest quota first; rows of an empty group are left out. The range may span at most "
                        f"{FLOW_SELF_MAX_SPAN_DAYS} days, as in new-api. username is ignored, as in new-api."
                    ),
                    "security": secured,
                    "parameters": [_flow_parameter(n) for n in flow.FLOW_SELF_PARAMETERS],
                    "responses": {
                        "200": _data_ok("SelfFlowResponse", "The caller's rows (possibly none).", FLOW_CSV),
                        **_errors(
                            admin=False,
                            bad_request=(
                                "Bad parameter: start_timestamp or end_timestamp missing, not a whole number, 0 "
                                f"or beyond int64, end before start, a span over {FLOW_SELF_MAX_SPAN_DAYS} days, "
                                "realtime not true or false or turned off on the server, format neither json nor "
                                "csv, or a parameter given twice."
                            ),
                        ),
                    },
                }
            },
            "/api/log/stat": {
                "get": {
                    "operationId": "getLogStat",
                    "summary": "Quota, requests and tokens per minute of the consume logs (administrators)",
                    "description": LOG_STAT_NOTE,
                    "security": secured,
                    "parameters": [_ref("parameters", f"log_{n}") for n in logstat.ADMIN_PARAMETERS],
                    "responses": {
                        "200": _ok("LogStatResponse", "The statistics."),
                        **_errors(admin=True, bad_request=LOG_STAT_400),
                    },
                }
            },
            "/api/log/self/stat": {
                "get": {
                    "operationId": "getSelfLogStat",
                    "summary": "Quota, requests and tokens per minute of my consume logs",
                    "description": LOG_STAT_NOTE + " Only the caller's logs (by user id); username is ignored.",
                    "security": secured,
                    "parameters": [_ref("parameters", f"log_{n}") for n in logstat.SELF_PARAMETERS],
                    "responses": {
                        "200": _ok("LogStatResponse", "The statistics."),
                        **_errors(admin=False, bad_request=LOG_STAT_400),
                    },
                }
            },
            "/api/rankings": {
                "get": {
                    "operationId": "getRankings",
                    "summary": "Site-wide model and vendor rankings by tokens",
                    "description": (
                        "Models and vendors ranked by tokens (prompt + completion) over the rolling window "
                        "[now - duration, now] of the period, with growth and previous ranks from the window "
                        "before it and per-bucket history (buckets aligned to the Unix epoch, labels in "
                        "STATS_TIMEZONE). Exact and current: read from the rollups plus the logs not rolled up "
                        "yet (new-api caches it for 5 minutes). The vendor of a model comes from a prefix table "
                        "the operator can extend or override (RANKINGS_VENDORS). Who may ask is the server's "
                        "RANKINGS setting: public (the default: no headers needed, any sent are ignored), auth "
                        "(an enabled user's access token and New-Api-User) or off (403 for every request)."
                    ),
                    # Public by default; with RANKINGS=auth, the headers of the data endpoints.
                    "security": [{}, *secured],
                    "parameters": [
                        {
                            "name": "period",
                            "in": "query",
                            "required": False,
                            "description": (
                                "today: 24 hours in buckets of an hour; week: 7 days, month: 30 days, in buckets "
                                "of a UTC day; year: 365 days in buckets of 7 days. Absent or empty: week."
                            ),
                            "schema": {"type": "string", "enum": list(r.PERIODS), "default": r.DEFAULT_PERIOD},
                        }
                    ],
                    "responses": {
                        "200": _ok("RankingsResponse", "The rankings (empty lists when nothing was used)."),
                        "400": _failure(
                            "period is not today, week, month or year ('invalid ranking period: <period>'), "
                            "or is given twice."
                        ),
                        "401": _failure("RANKINGS=auth only: " + AUTH_401),
                        "403": _failure(
                            "RANKINGS=off: 'rankings is disabled', before anything else is looked at; "
                            "RANKINGS=auth: the user is disabled."
                        ),
                        "500": _failure("Internal error (no details are given)."),
                        "503": _failure("The database cannot be reached; retry later."),
                        "default": _failure("Any other error, such as 405 for a method other than GET."),
                    },
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
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("schemas", "ReaggregateRequest")}},
                    },
                    "responses": {
                        "202": _ok("ReaggregateAccepted", "Enqueued; the Location header is the status URL."),
                        **{k: v for k, v in _errors(admin=True, bad_request="").items() if k not in ("400", "503")},
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
                    "security": secured,
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
                        **{k: v for k, v in _errors(admin=True, bad_request="").items() if k not in ("400", "503")},
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
                    "summary": "The chart page (HTML): usage over time, by model, key, channel and group",
                    "description": (
                        "Reads the endpoints above in the browser with the token entered in the page "
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
            "parameters": {**_data_parameters(limits), **_flow_parameters(), **_log_stat_parameters()},
            "schemas": _schemas(),
        },
    }


def _query(name: str, schema: dict, description: str, *, required: bool = False, example: Any = None) -> dict:
    spec = {"name": name, "in": "query", "required": required, "description": description, "schema": schema}
    if example is not None:
        spec["example"] = example
    return spec


def _group_by_pattern(names: tuple[str, ...]) -> str:
    one = "(" + "|".join(names) + ")"
    return f"^{one}(,{one})*$"


def _data_parameters(limits: ApiLimits) -> dict:
    """The parameters of /api/data/self, /api/data/ and /api/data/users (api.params)."""
    granularity = {"type": "string", "enum": list(GRANULARITIES)}
    text = {"type": "string", "pattern": NO_NUL}

    def group_by(names: tuple[str, ...]) -> dict:
        return _query(
            "group_by",
            {"type": "string", "pattern": _group_by_pattern(names), "examples": ["model,channel"]},
            (
                f"Group the rows by any of {', '.join(names)}, comma-separated, in any order (a name given twice "
                "counts once; blanks around a name are ignored). Rows then hold created_at, the grouped dimensions "
                "(model_name; user_id and username; token_id and token_name; channel_id and channel_name; "
                "use_group) and the measures. Absent: the seed's rows."
            ),
        )

    return {
        "start_timestamp": _query(
            "start_timestamp",
            _INT,
            (
                "Range start, unix seconds (included). Default: end_timestamp minus 24 hours "
                "(granularity=hour), 7 days (day), 84 days (week) or 365 days (month), never more than "
                "the span limit. An empty value counts as absent."
            ),
            example=EXAMPLE_START,
        ),
        "end_timestamp": _query(
            "end_timestamp",
            _INT,
            (
                "Range end, unix seconds (included). Default: now. end_timestamp - start_timestamp may be "
                f"at most {limits.max_span_hourly_days} days for granularity=hour and "
                f"{limits.max_span_daily_days} days for granularity=day, week and month; days, weeks and "
                f"months in a tz other than the server's STATS_TIMEZONE are summed from hourly rows and "
                f"may span at most {limits.max_span_hourly_days} days. For weeks and months (and days in "
                f"another tz), at most {MAX_CALENDAR_TIMESTAMP}."
            ),
            example=EXAMPLE_END,
        ),
        "granularity": _query(
            "granularity",
            {**granularity, "default": "hour"},
            (
                "hour: buckets start on the hour (UTC); day: at local midnight in tz; week: at local "
                "midnight starting Monday; month: at local midnight starting the 1st."
            ),
        ),
        GRANULARITY_ALIAS: _query(
            GRANULARITY_ALIAS,
            granularity,
            (
                "An alias of granularity, which new-api's dashboards send (and new-api ignores). Given with "
                "granularity, the two must be equal."
            ),
        ),
        "tz": _query(
            "tz",
            {"type": "string", "examples": ["Asia/Shanghai"]},
            (
                "IANA time zone of day, week and month buckets (23- and 25-hour days included), such as "
                "Asia/Shanghai or America/New_York. Default: the server's STATS_TIMEZONE, whose days come "
                "from the daily rows. Another zone is summed from hourly rows and must have whole-hour "
                "offsets over the range (Asia/Kolkata is refused unless it is STATS_TIMEZONE). "
                "Unknown zones and legacy names such as CET or EST5EDT are refused. No effect on hours."
            ),
        ),
        "realtime": _query(
            "realtime",
            {"type": "string", "enum": ["true", "false", "1", "0"]},
            (
                "true (default, unless the server sets API_REALTIME=false): add the consume logs the rollup "
                "has not counted yet, so that a log counts as soon as it is committed. false: the summary "
                "rows only. true on a server with API_REALTIME=false is refused."
            ),
        ),
        "group_by": group_by(tuple(GROUP_BY)),
        "group_by_self": group_by(SELF_GROUP_BY),
        "format": _query(
            "format",
            {"type": "string", "enum": list(FORMATS)},
            (
                "json, or csv: the same rows as text/csv (RFC 4180, a header row), streamed, as an attachment. "
                "Absent: CSV when the Accept header ranks text/csv above application/json, else JSON."
            ),
        ),
        "model_name": _query("model_name", text, "Only rows of this model (exact)."),
        "token_id": _query("token_id", _INT, "Only rows of this API key id (on /api/data/self: of the caller's own)."),
        "token_name": _query(
            "token_name", text, "Only rows of keys whose logs recorded this name (exact; the name at the time)."
        ),
        "channel": _query("channel", _INT, "Only rows of this channel id, as in new-api's log filters."),
        "group": _query("group", text, "Only rows of requests that used this group (logs.group, use_group; exact)."),
        "username": _query(
            "username", text, "Only this live user's rows (rows without group_by then carry user_id and username)."
        ),
    }


def _flow_parameter(name: str) -> dict:
    """The flow routes' own timestamps, realtime and username; format as on /api/data/."""
    return _ref("parameters", name if name == "format" else f"flow_{name}")


def _flow_parameters() -> dict:
    stamp = {"type": "integer", "minimum": 1, "maximum": INT64_MAX, "format": "int64"}
    return {
        "flow_start_timestamp": _query(
            "start_timestamp",
            stamp,
            "Range start, unix seconds, required and above 0 (included).",
            required=True,
            example=EXAMPLE_START,
        ),
        "flow_end_timestamp": _query(
            "end_timestamp",
            stamp,
            "Range end, unix seconds, required, above 0 and not before start_timestamp (included).",
            required=True,
            example=EXAMPLE_END,
        ),
        "flow_realtime": _query(
            "realtime",
            {"type": "string", "enum": ["true", "false", "1", "0"]},
            "As on /api/data/: add the consume logs the rollup has not counted yet (default true).",
        ),
        "flow_username": _query(
            "username", {"type": "string", "pattern": NO_NUL}, "Only this live user's rows (exact)."
        ),
    }


LIKE_NOTE = (
    "Exact, or a LIKE pattern when it contains %: % and _ are wildcards, matched case-sensitively; a pattern "
    "may hold at most 2 %, never two in a row, and at least 2 other characters (new-api's rules)."
)
LOG_STAT_NOTE = (
    "{quota, rpm, tpm} of the consume logs, as new-api's logs page shows them: quota is the sum over every "
    "filter and [start_timestamp, end_timestamp], exact to the second (whole days and hours from the rollups, "
    "the seconds at both ends from the logs); rpm (requests) and tpm (tokens) are of the last 60 seconds of "
    "logs matching the filters, whatever the range."
)
LOG_STAT_400 = (
    "Bad parameter: type, channel or a timestamp not a whole number from 0 to int64, start after end, NUL in a "
    "text filter, a LIKE pattern new-api refuses (%% in it, more than 2 %, fewer than 2 other characters), or a "
    "parameter given twice."
)


def _log_stat_parameters() -> dict:
    text = {"type": "string", "pattern": NO_NUL}
    return {
        "log_type": _query("type", _INT, "Checked and ignored: only consume logs (type 2) count, as in new-api."),
        "log_start_timestamp": _query(
            "start_timestamp",
            _INT,
            "Range start, unix seconds (included). Absent or 0: no lower bound.",
            example=EXAMPLE_START,
        ),
        "log_end_timestamp": _query(
            "end_timestamp",
            _INT,
            "Range end, unix seconds (included). Absent or 0: no upper bound.",
            example=EXAMPLE_END,
        ),
        "log_token_name": _query("token_name", text, "Only logs of keys with this name (exact)."),
        "log_model_name": _query("model_name", text, "Only logs of this model. " + LIKE_NOTE),
        "log_channel": _query("channel", _INT, "Only logs of this channel id. Absent or 0: any channel."),
        "log_group": _query("group", text, "Only logs of requests that used this group (exact)."),
        "log_username": _query("username", text, "Only logs of this username. " + LIKE_NOTE),
    }


def _schemas() -> dict:
    share = {"type": "number", "minimum": 0, "maximum": 1, "description": "Fraction of the total, 4 decimals"}
    growth = {
        "type": "number",
        "minimum": -100,
        "description": "Percent change from the previous window, 4 decimals; 100 when the previous was 0",
    }
    rank = {"type": "integer", "minimum": 1}
    tokens = {**_INT, "description": "Tokens (prompt + completion)"}
    vendor = {"type": "string", "description": "The vendor of the model ('Unknown' when the table has none)"}
    ts = {"type": "string", "format": "date-time", "description": "Bucket start, UTC RFC 3339"}
    label = {"type": "string", "description": "HH:MM in STATS_TIMEZONE for hours, 'Jan 2' for days and weeks"}
    bucket = _object({"ts": ts, "label": label})
    mover = _object(
        {
            "model_name": {"type": "string"},
            "vendor": vendor,
            "rank_delta": {"type": "integer", "description": "Places gained (negative: lost)"},
            "current_rank": rank,
            "growth_pct": growth,
        }
    )
    rankings = _object(
        {
            "models": {
                "type": "array",
                "maxItems": r.MODELS_LIMIT,
                "description": f"The top {r.MODELS_LIMIT} models",
                "items": _object(
                    {
                        "rank": rank,
                        "previous_rank": {**rank, "description": "Absent for a model new in this period"},
                        "model_name": {"type": "string"},
                        "vendor": vendor,
                        "category": {"const": r.CATEGORY},
                        "total_tokens": tokens,
                        "share": share,
                        "growth_pct": growth,
                    },
                    ["rank", "model_name", "vendor", "category", "total_tokens", "share", "growth_pct"],
                ),
            },
            "vendors": {
                "type": "array",
                "items": _object(
                    {
                        "rank": rank,
                        "vendor": vendor,
                        "total_tokens": tokens,
                        "share": share,
                        "growth_pct": growth,
                        "models_count": {"type": "integer", "minimum": 1},
                        "top_model": {"type": "string"},
                    }
                ),
            },
            "top_movers": {"type": "array", "maxItems": r.MOVERS_LIMIT, "items": mover},
            "top_droppers": {"type": "array", "maxItems": r.MOVERS_LIMIT, "items": mover},
            "models_history": _object(
                {
                    "points": {
                        "type": "array",
                        "items": _object(
                            {"ts": ts, "label": label, "model": {"type": "string"}, "vendor": vendor, "tokens": tokens}
                        ),
                    },
                    "models": {
                        "type": "array",
                        "maxItems": r.HISTORY_MODELS + 1,
                        "description": f"The top {r.HISTORY_MODELS} models and '{r.OTHERS}' (vendor '{r.OTHERS_VENDOR}')",
                        "items": _object({"name": {"type": "string"}, "vendor": vendor, "total": tokens}),
                    },
                    "buckets": {"type": "array", "items": bucket},
                }
            ),
            "vendor_share_history": _object(
                {
                    "points": {
                        "type": "array",
                        "items": _object(
                            {
                                "ts": ts,
                                "label": label,
                                "vendor": vendor,
                                "share": {**share, "description": "Fraction of the bucket's tokens"},
                                "tokens": tokens,
                            }
                        ),
                    },
                    "vendors": {
                        "type": "array",
                        "maxItems": r.HISTORY_VENDORS + 1,
                        "description": f"The top {r.HISTORY_VENDORS} vendors and '{r.OTHERS}'",
                        "items": _object({"name": {"type": "string"}, "total": tokens, "share": share}),
                    },
                    "buckets": {"type": "array", "items": bucket},
                }
            ),
        }
    )
    return {
        "SiteRow": _row(),
        "UserRow": _row({"user_id": DIMENSIONS["user_id"], "username": DIMENSIONS["username"]}),
        "GroupedRow": _grouped_row(admin=True),
        "SelfGroupedRow": _grouped_row(admin=False),
        "UsersRow": _object(
            {
                "created_at": BUCKET,
                "user_id": DIMENSIONS["user_id"],
                "username": DIMENSIONS["username"],
                **MEASURES,
            }
        ),
        "RootFlowRow": _flow_row(
            ("user_id", "username", "token_id", "token_name", "channel_id", "channel_name", "use_group", "model_name"),
            "A root's flow row: user -> API key -> group -> model -> channel.",
        ),
        "AdminFlowRow": _flow_row(
            ("user_id", "username", "channel_id", "channel_name", "use_group", "model_name"),
            "An administrator's flow row: user -> group -> model -> channel.",
        ),
        "SelfFlowRow": _flow_row(
            ("token_id", "token_name", "use_group", "model_name"), "The caller's flow row: API key -> group -> model."
        ),
        # The caller's rows: the seed's, or grouped (which never carry user_id).
        "SelfResponse": _success_schema(
            {"type": "array", "items": {"oneOf": [_ref("schemas", "UserRow"), _ref("schemas", "SelfGroupedRow")]}}
        ),
        "AllResponse": _success_schema(
            {
                "type": "array",
                # Site-wide rows, a user's rows when username is given, or grouped rows. A
                # row grouped by model (and user) has the keys of a site-wide (user's) row,
                # so more than one may match: anyOf.
                "items": {
                    "anyOf": [
                        _ref("schemas", "SiteRow"),
                        _ref("schemas", "UserRow"),
                        _ref("schemas", "GroupedRow"),
                    ]
                },
            }
        ),
        "UsersResponse": _success_schema({"type": "array", "items": _ref("schemas", "UsersRow")}),
        # Root and administrator rows differ in token_id/token_name: exactly one matches.
        "FlowResponse": _success_schema(
            {"type": "array", "items": {"oneOf": [_ref("schemas", "RootFlowRow"), _ref("schemas", "AdminFlowRow")]}}
        ),
        "SelfFlowResponse": _success_schema({"type": "array", "items": _ref("schemas", "SelfFlowRow")}),
        "LogStatResponse": _success_schema(
            _object(
                {
                    "quota": {**_INT, "description": "Quota of the consume logs matching every filter and the range"},
                    "rpm": {**_INT, "description": "Consume logs matching the filters in the last 60 seconds"},
                    "tpm": {**_INT, "description": "Their tokens (prompt + completion)"},
                }
            )
        ),
        "RankingsResponse": _success_schema(rankings),
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
                    "description": "Only this user's rows (site-wide rows are summed again where they changed)",
                },
                "check_every_table": {
                    "type": ["boolean", "null"],
                    "description": "Compare every summary table with the logs, not only the finest one: a repair of "
                    "tables edited by hand (slower). Default false.",
                },
            },
            "required": ["start_timestamp", "end_timestamp"],
            "additionalProperties": False,
        },
        "ReaggregateAccepted": _success_schema(
            _object(
                {
                    "id": {"type": "string", "description": "The task id"},
                    "state": {"const": "PENDING"},
                    "status_url": {"type": "string"},
                }
            )
        ),
        "ReaggregateStatusResponse": _success_schema(
            _object(
                {
                    "id": {"type": "string"},
                    "state": {
                        "type": "string",
                        "description": "PENDING, PROGRESS, SUCCESS, FAILURE (or another Celery state)",
                    },
                    "done": {"type": "integer", "description": "Chunks of days done"},
                    "total": {"type": ["integer", "null"], "description": "Chunks in all (null until known)"},
                    "started": {"type": ["number", "null"], "description": "Unix seconds the worker started it"},
                    "finished": {
                        "type": ["number", "null"],
                        "description": "Unix seconds it finished (success or failure)",
                    },
                    "error": {"type": ["string", "null"], "description": "On FAILURE: the error's type and first line"},
                    "result": {
                        "type": ["object", "null"],
                        "description": "On SUCCESS: the local-day range done [start, end), chunks, consume logs counted, seconds",
                    },
                }
            )
        ),
        "Status": _object({"success": {"const": True}, "message": {"type": "string"}}),
        "Failure": _object({"success": {"const": False}, "message": {"type": "string", "minLength": 1}}),
    }


def _success_schema(data: dict) -> dict:
    return _object({"success": {"const": True}, "message": {"type": "string"}, "data": data})
