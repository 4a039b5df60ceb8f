"""GET /api/log/stat (admin) and GET /api/log/self/stat (any user): new-api's
usage-logs statistics {quota, rpm, tpm}, computed by shared.logstat.

Parameters, as new-api reads them, checked as strictly as the data endpoints'
(api.params): a repeated parameter, a malformed number or a LIKE pattern new-api
refuses is a 400 (new-api: HTTP 200 with success false, or a silent 0); an empty value
counts as absent.

    type             an integer, parsed and ignored (only consume logs count, as in new-api)
    start_timestamp  unix seconds; absent or 0: no lower bound
    end_timestamp    unix seconds, inclusive; absent or 0: no upper bound
    token_name       exact
    model_name       exact, or a LIKE pattern when it contains %
    username         admin route only: exact, or a LIKE pattern when it contains %
    channel          a channel id; absent or 0: any channel (also on the self route)
    group            exact (the group the request used: logs."group")

On the self route the logs are the session user's by user id; its `username` parameter
is ignored, as in new-api.
"""

from __future__ import annotations

import time

from flask import Blueprint, request
from werkzeug.datastructures import MultiDict

from shared import logstat
from shared import models as m
from shared.retention import hourly_horizon

from .auth import authenticate
from .errors import ApiError
from .params import check_once, single, text, timestamp, whole_number
from .routes import app_state, success

bp = Blueprint("log_stat", __name__)

SELF_PARAMETERS = ("type", "start_timestamp", "end_timestamp", "token_name", "model_name", "channel", "group")
ADMIN_PARAMETERS = SELF_PARAMETERS + ("username",)


def now() -> int:
    return int(time.time())


def _bound(args: MultiDict, name: str) -> int | None:
    raw = single(args, name)
    value = None if raw is None else timestamp(name, raw)
    return value or None  # 0 is no bound, as in new-api


def parse(
    args: MultiDict, names: tuple[str, ...], user_id: int | None
) -> tuple[int | None, int | None, logstat.LogFilter]:
    """(start, end, filter) from the query string; raises ApiError(400). `user_id`: the
    session user on the self route (None on the admin route)."""
    check_once(args, names)
    raw_type = single(args, "type")
    if raw_type is not None:
        whole_number("type", raw_type)  # checked, then ignored: only consume logs count
    start, end = _bound(args, "start_timestamp"), _bound(args, "end_timestamp")
    if start is not None and end is not None and start > end:
        raise ApiError(400, "start_timestamp must not be after end_timestamp")
    raw_channel = single(args, "channel")
    channel = None if raw_channel is None else whole_number("channel", raw_channel) or None
    try:
        f = logstat.LogFilter(
            user_id=user_id,
            username=text(args, "username") if "username" in names else None,
            token_name=text(args, "token_name"),
            model_name=text(args, "model_name"),
            channel_id=channel,
            group=text(args, "group"),
        )
    except logstat.InvalidPattern as e:
        raise ApiError(400, str(e)) from None
    return start, end, f


def _answer(min_role: int, names: tuple[str, ...], own: bool):
    state = app_state()
    settings = state.settings
    t = now()
    with state.connections() as (conn, gateway):
        # Authentication before parameters, as on the data endpoints.
        user = authenticate(gateway, min_role)
        start, end, f = parse(request.args, names, user.id if own else None)
        data = logstat.log_stat(
            conn,
            f,
            start,
            end,
            t,
            stats_tz=settings.stats_timezone,
            hourly_from=hourly_horizon(settings, t),
        )
    return success(data)


@bp.get("/api/log/stat")
def log_stat():
    return _answer(m.ROLE_ADMIN, ADMIN_PARAMETERS, own=False)


@bp.get("/api/log/self/stat")
def log_self_stat():
    return _answer(m.ROLE_USER, SELF_PARAMETERS, own=True)
