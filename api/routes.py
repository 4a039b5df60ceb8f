"""The endpoints. Thin: authenticate, parse, call one query in shared.queries, wrap."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa
from flask import Blueprint, Response, abort, current_app, jsonify, request, send_from_directory
from markupsafe import escape

from shared import models as m
from shared import queries

from . import params
from .auth import authenticate
from .errors import failure, is_unavailable, log

bp = Blueprint("usage_stats", __name__)


def app_state():
    return current_app.extensions["usage_stats"]


def success(data):
    return jsonify(success=True, message="", data=data)


def request_window(state, names=params.SELF_PARAMETERS) -> params.Window:
    return params.parse_window(
        request.args,
        state.limits,
        int(time.time()),
        names,
        stats_tz=state.settings.stats_timezone,
        realtime_enabled=state.settings.api_realtime,
    )


# Every statement of a data request reads one snapshot (queries.snapshot), so that the
# summary rows and the real-time tail agree on what the rollup has counted.


@bp.get("/api/data/self")
def data_self():
    state = app_state()
    with queries.snapshot(state.engine) as conn:
        # Authentication before parameters, as new-api's middleware does: a caller
        # without a valid token learns nothing about what the endpoint accepts.
        # /self is for any user in new-api's sense of "User": role common (1) or above.
        user = authenticate(conn, m.ROLE_USER)
        window = request_window(state)
        rows = queries.user_usage(conn, user.id, window.view, window.start, window.end)
    return success(rows)


# strict_slashes=False: /api/data answers too, without a redirect (a redirect would drop
# the Authorization header in some clients, and its body would be HTML).
@bp.get("/api/data/", strict_slashes=False)
def data_all():
    state = app_state()
    with queries.snapshot(state.engine) as conn:
        authenticate(conn, m.ROLE_ADMIN)
        window = request_window(state, params.ADMIN_PARAMETERS)
        username = params.parse_username(request.args)
        if username is None:
            rows = queries.site_usage(conn, window.view, window.start, window.end)
        else:
            rows = queries.user_usage_by_name(conn, username, window.view, window.start, window.end)
    return success(rows)


@bp.get("/healthz")
def healthz():
    # The process answers; says nothing about the database (that is /readyz).
    return jsonify(success=True, message="ok")


@bp.get("/readyz")
def readyz():
    try:
        with app_state().engine.connect() as conn:
            # Reading rollup_state checks the schema too, not just the connection.
            conn.execute(sa.select(m.rollup_state.c.last_log_id).limit(1)).all()
    except sa.exc.SQLAlchemyError as e:
        if is_unavailable(e):
            log.warning("readyz: database unreachable: %s", type(getattr(e, "orig", None) or e).__name__)
        else:
            log.warning("readyz: database schema not ready: %s", type(getattr(e, "orig", None) or e).__name__)
        return failure(503, "database not ready")
    return jsonify(success=True, message="ready")


@bp.get("/api/openapi.json")
def openapi_json():
    from .openapi import document

    return jsonify(document(app_state().limits))


# --- the chart page -------------------------------------------------------------------

STATIC = Path(__file__).parent / "static"
# Only these files are served; package.json and the lock file are build inputs.
PAGE_FILES = frozenset(
    {
        "app.js",
        "style.css",
        "vendor/chart.umd.min.js",
        "vendor/chart.js.LICENSE.md",
        "vendor/kurkle-color.LICENSE.md",
        "vendor/VERSION",
    }
)
# The page loads its own scripts and styles only, and talks only to this API.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@bp.get("/")
def page():
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    html = html.replace("__STATS_TIMEZONE__", str(escape(app_state().settings.stats_timezone)))
    return Response(html, mimetype="text/html", headers=PAGE_HEADERS)


@bp.get("/static/<path:name>")
def page_file(name: str):
    if name not in PAGE_FILES:
        abort(404)
    response = send_from_directory(STATIC, name, max_age=300)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
