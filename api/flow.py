"""new-api's per-user and flow endpoints, over the summary rows and the real-time tail:

- GET /api/data/users (admin): usage per bucket and user, with the parameters of
  /api/data/ (start_timestamp, end_timestamp, granularity or its alias default_time, tz,
  realtime, username);
- GET /api/data/flow (admin) and GET /api/data/flow/self (any user): the flat rows
  new-api's dashboard draws its flow (Sankey) chart from, summed over the whole range,
  largest quota first. Administrators get user -> group -> model -> channel, root
  (role >= 100) also the API key; /flow/self is the caller's own keys -> group -> model.
  new-api's node_name is not in `logs`, so no row has it.

Parameters of the flow routes follow new-api: start_timestamp and end_timestamp are
required whole numbers above 0 with end >= start; /flow/self spans at most 30 days. The
rows are summed from hourly rows (hours starting in [start, end]) while the range spans
at most API_MAX_SPAN_HOURLY_DAYS, from daily rows (days of STATS_TIMEZONE starting in
[start, end]) up to API_MAX_SPAN_DAILY_DAYS, and refused beyond.

The SQL is shared.queries' (one answer statement over summary rows UNION ALL the tail),
names of keys and channels come from shared.names.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy.engine import Connection
from werkzeug.datastructures import MultiDict

from shared import models as m
from shared import names, queries
from shared.auth import live_user_id

from . import answer_cache, auth, csvexport, etag, params
from .auth import authenticate
from .config import DAY, ApiLimits
from .errors import ApiError
from .routes import app_state, csv_answer, request_window, success

bp = Blueprint("flow", __name__)

# --- /api/data/users --------------------------------------------------------------------

USERS_PARAMETERS = (
    "start_timestamp",
    "end_timestamp",
    "granularity",
    params.GRANULARITY_ALIAS,
    "tz",
    "realtime",
    "format",
    "username",
)
# Per bucket and user: created_at, user_id, username (the largest the user had in the
# bucket), the measures.
USERS_COLUMNS = queries.grouped_columns(("user_id",))
USERS = queries.Shape(USERS_COLUMNS)
USERS_BY_NAME = queries.Shape(USERS_COLUMNS, user=True)


@bp.get("/api/data/users")
def data_users() -> Response:
    state = app_state()
    with state.connections(deferred=etag.conditional()) as (conn, gateway):
        who = auth.asking(conn, gateway, m.ROLE_ADMIN)
        with who.refusing_first():
            window = request_window(state, USERS_PARAMETERS)
            username = params.parse_username(request.args)
            csv = params.parse_format(request.args, csvexport.prefers_csv(request))
            values: dict[str, Any] = {}
            shape = USERS
            if username is not None:
                who.now()  # checked before another user's id is looked up
                shape, values = USERS_BY_NAME, {"user_id": live_user_id(gateway, username)}
            queries.check_answerable(window.view, window.start, window.end)
        nobody = shape.user and values["user_id"] is None
        asked = etag.request_of(
            str(request.endpoint), who.id, shape, window.view, window.start, window.end, values, csv=csv, owner=None
        )
        tagged = etag.revalidate(state, conn, gateway, asked, reads=not nobody, claim=who.claim)
        if isinstance(tagged, Response):
            return tagged
        rows = []
        if not csv and tagged.version is not None:
            if state.answers is not None and answer_cache.keeps(shape, csv):
                body = state.answers.body(conn, asked, tagged)
                return etag.with_tag(Response(body, mimetype="application/json"), tagged.tag)
            progress = tagged.version.progress
            rows = queries.usage(conn, shape, window.view, window.start, window.end, values, progress)
    if csv:
        filename = f"usage-users-{window.granularity}-{window.start}-{window.end}.csv"
        return csv_answer(state, shape, window.view, window.start, window.end, values, filename, None, tagged.tag)
    return etag.with_tag(success(rows), tagged.tag)


# --- /api/data/flow and /api/data/flow/self ---------------------------------------------

# The rows of each role, in new-api's field order (FlowQuotaData, without node_name);
# shared.names inserts channel_name after channel_id and sets token_name to the key's
# live name.
FLOW_MEASURES = ("token_used", "count", "quota")
ROOT_FLOW = ("user_id", "username", "token_id", "token_name", "channel_id", "use_group", "model_name", *FLOW_MEASURES)
ADMIN_FLOW = ("user_id", "username", "channel_id", "use_group", "model_name", *FLOW_MEASURES)
SELF_FLOW = ("token_id", "token_name", "use_group", "model_name", *FLOW_MEASURES)
# new-api's limit on /flow/self (and /api/data/self): one month of 30 days.
SELF_FLOW_MAX_SPAN = 30 * DAY
# The parameters each flow route reads, in that order; others are ignored.
FLOW_SELF_PARAMETERS = ("start_timestamp", "end_timestamp", "realtime", "format")
FLOW_PARAMETERS = FLOW_SELF_PARAMETERS + ("username",)

_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def flow_timestamp(args: MultiDict, name: str) -> int:
    """start_timestamp or end_timestamp as new-api's flow routes take it: required, a
    whole number above 0 (and within BIGINT); its refusal keeps new-api's message."""
    raw = params.single(args, name)
    if raw is not None and _DIGITS.fullmatch(raw) and len(raw.lstrip("0")) <= 19:
        value = int(raw)
        if 0 < value <= params.INT64_MAX:
            return value
    raise ApiError(400, f"invalid {name}: required, a whole number of unix seconds greater than 0")


def flow_range(args: MultiDict, max_span: int | None = None) -> tuple[int, int]:
    """[start, end] of a flow request, checked in new-api's order: start, end, their
    order, then (self) the span."""
    start = flow_timestamp(args, "start_timestamp")
    end = flow_timestamp(args, "end_timestamp")
    if end < start:
        raise ApiError(400, "invalid time range: end_timestamp is before start_timestamp")
    if max_span is not None and end - start > max_span:
        raise ApiError(
            400,
            f"the range from start_timestamp to end_timestamp may span at most {max_span // DAY} days ({max_span} s)",
        )
    return start, end


def flow_view(start: int, end: int, limits: ApiLimits, stats_tz: str, realtime: bool) -> queries.View:
    """Hourly rows while the range spans at most the hourly limit, daily rows (days of
    STATS_TIMEZONE, the zone they were built in) up to the daily limit; longer is a 400,
    as on /api/data/."""
    span = end - start
    if span <= limits.max_span_hourly_days * DAY:
        return queries.View("hour", stats_tz, stats_tz, realtime)
    if span <= limits.max_span_daily_days * DAY:
        return queries.View("day", stats_tz, stats_tz, realtime)
    raise ApiError(
        400, f"the range from start_timestamp to end_timestamp may span at most {limits.max_span_daily_days} days"
    )


def flow_shape(columns: tuple[str, ...], *, user: bool = False) -> queries.Shape:
    """The flow rows of `columns`: summed over the whole range (no bucket column),
    largest quota first (then by the grouped keys), without the rows of an empty group
    (new-api excludes them, legacy rows included)."""
    return queries.Shape(columns, user=user, rank_by="quota", nonempty=("use_group",))


def _flow_answer(
    state: Any,
    conn: Connection,
    gateway: Connection,
    who: auth.Asking,
    shape: queries.Shape,
    view: queries.View,
    start: int,
    end: int,
    values: dict[str, Any],
    owner: int | None,
) -> Response:
    """The flow rows as JSON or (format=csv, Accept: text/csv) as CSV, asked by `who`,
    read on the request's connections (state.connections)."""
    with who.refusing_first():
        csv = params.parse_format(request.args, csvexport.prefers_csv(request))
        queries.check_answerable(view, start, end)
    asked = etag.request_of(str(request.endpoint), who.id, shape, view, start, end, values, csv=csv, owner=owner)
    reads = not (shape.user and values["user_id"] is None)
    tagged = etag.revalidate(state, conn, gateway, asked, reads=reads, claim=who.claim)
    if isinstance(tagged, Response):
        return tagged
    if csv:
        filename = f"usage-flow-{start}-{end}.csv"
        return csv_answer(state, shape, view, start, end, values, filename, owner, tagged.tag)
    rows = []  # username= of nobody
    if tagged.version is not None:
        progress = tagged.version.progress
        rows = names.name_rows(gateway, queries.usage(conn, shape, view, start, end, values, progress), owner=owner)
    return etag.with_tag(success(rows), tagged.tag)


def _realtime(args: MultiDict, enabled: bool) -> bool:
    return params.parse_realtime(params.single(args, "realtime"), enabled)


# One checkout per request (each costs a ping and a rollback): authentication, the
# username's lookup and the answer share the request's connections, as /api/data does.


@bp.get("/api/data/flow")
def data_flow() -> Response:
    state = app_state()
    with state.connections(deferred=etag.conditional()) as (conn, gateway):
        # The columns depend on the role: authenticated at once.
        user = authenticate(gateway, m.ROLE_ADMIN)
        who = auth.Asking(gateway, m.ROLE_ADMIN, user, None)
        params.check_once(request.args, FLOW_PARAMETERS)
        start, end = flow_range(request.args)
        realtime = _realtime(request.args, state.settings.api_realtime)
        username = params.parse_username(request.args)
        view = flow_view(start, end, state.limits, state.settings.stats_timezone, realtime)
        columns = ROOT_FLOW if user.role >= m.ROLE_ROOT else ADMIN_FLOW
        if username is None:
            return _flow_answer(state, conn, gateway, who, flow_shape(columns), view, start, end, {}, None)
        values = {"user_id": live_user_id(gateway, username)}
        return _flow_answer(state, conn, gateway, who, flow_shape(columns, user=True), view, start, end, values, None)


@bp.get("/api/data/flow/self")
def data_flow_self() -> Response:
    state = app_state()
    with state.connections(deferred=etag.conditional()) as (conn, gateway):
        who = auth.asking(conn, gateway, m.ROLE_USER)
        with who.refusing_first():
            params.check_once(request.args, FLOW_SELF_PARAMETERS)
            start, end = flow_range(request.args, SELF_FLOW_MAX_SPAN)
            realtime = _realtime(request.args, state.settings.api_realtime)
            view = flow_view(start, end, state.limits, state.settings.stats_timezone, realtime)
        # The caller's own rows only: keys of other users never appear, and username is
        # ignored, as new-api ignores it here.
        shape = flow_shape(SELF_FLOW, user=True)
        return _flow_answer(state, conn, gateway, who, shape, view, start, end, {"user_id": who.id}, who.id)
