"""GET /api/rankings?period=today|week|month|year: site-wide model and vendor rankings
by tokens (shared.rankings), in new-api's shape.

Who may ask is the RANKINGS setting: `public` (default; no headers needed, and any sent
are ignored), `auth` (an enabled user's access token and New-Api-User, as for
/api/data/self) or `off` (403 "rankings is disabled", before anything else is looked at).
As on the data endpoints, unknown parameters are ignored and a repeated one is a 400.
"""

from __future__ import annotations

import time

from flask import Blueprint, request

from shared import models as m
from shared import rankings as r
from shared.vendors import vendor_table

from .auth import authenticate
from .errors import ApiError
from .params import single
from .routes import app_state, success

bp = Blueprint("rankings", __name__)

# The longest period value echoed back in the 400's message.
MAX_ECHO = 64


def now() -> int:
    return int(time.time())


def _period() -> r.Period:
    raw = single(request.args, "period")  # "" counts as absent: the default, as new-api
    try:
        return r.period(raw)
    except r.InvalidPeriod:
        shown = raw if raw is not None and len(raw) <= MAX_ECHO else f"{(raw or '')[:MAX_ECHO]}..."
        raise ApiError(400, f"invalid ranking period: {shown}") from None


@bp.get("/api/rankings")
def rankings():
    state = app_state()
    settings = state.settings
    if settings.rankings == "off":
        raise ApiError(403, "rankings is disabled")
    with state.connections() as (conn, gateway):
        if settings.rankings == "auth":
            # Authentication before parameters, as on the data endpoints.
            authenticate(gateway, m.ROLE_USER)
        which = _period()
        data = r.rankings(
            conn,
            which,
            now(),
            vendors=vendor_table(settings.rankings_vendors),
            stats_tz=settings.stats_timezone,
            realtime=settings.api_realtime,
        )
    return success(data)
