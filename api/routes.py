"""The endpoints. Thin: authenticate, parse, call one query in shared.queries, wrap."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, abort, current_app, jsonify, request, send_from_directory, stream_with_context
from markupsafe import escape

from shared import models as m
from shared import names, queries
from shared.auth import live_user_id

from . import AppState, answer_cache, auth, csvexport, etag, params
from .errors import failure, is_unavailable, log

bp = Blueprint("usage_stats", __name__)


def app_state() -> AppState:
    state: AppState = current_app.extensions["usage_stats"]
    return state


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


def _shape(selection: params.Selection, *, per_user: bool) -> queries.Shape:
    """The answer's shape: without group_by the seed's (per user, or site-wide), with it
    the bucket, the grouped dimensions and their names, the measures."""
    columns: tuple[str, ...]
    if selection.by is None:
        columns = queries.PER_USER_COLUMNS if per_user else queries.SITE_WIDE_COLUMNS
    else:
        columns = queries.grouped_columns(selection.by)
    filtered = tuple(d for d in queries.GROUP_KEYS + tuple(queries.CARRIED.values()) if d in selection.filters)
    return queries.Shape(columns, filtered=filtered, user=per_user)


def _answer(*, admin: bool) -> Response:
    state = app_state()
    with state.connections(deferred=etag.conditional()) as (conn, gateway):
        # Authentication before parameters, as new-api's middleware does: a caller
        # without a valid token learns nothing about what the endpoint accepts
        # (auth.Asking: its credentials may be read with the answer's version).
        who = auth.asking(conn, gateway, m.ROLE_ADMIN if admin else m.ROLE_USER)
        with who.refusing_first():
            window = request_window(state, params.ADMIN_PARAMETERS if admin else params.SELF_PARAMETERS)
            selection = params.parse_selection(request.args, admin=admin, prefers_csv=csvexport.prefers_csv(request))
            if selection.username is not None:
                who.now()  # an administrator asking for a user by name: checked first
            # /self is one user's own rows, whatever the filters say: another user's key
            # id or name matches nothing of theirs.
            per_user = not admin or selection.username is not None
            shape = _shape(selection, per_user=per_user)
            values: dict[str, Any] = {d: selection.filters[d] for d in shape.filtered}
            if shape.user:
                # username=: the live user of that name; none (or a deleted one) has no rows.
                values["user_id"] = who.id if selection.username is None else live_user_id(gateway, selection.username)
            nobody = shape.user and values["user_id"] is None
            owner = None if admin else who.id
            queries.check_answerable(window.view, window.start, window.end)
        asked = etag.request_of(
            str(request.endpoint),
            who.id,
            shape,
            window.view,
            window.start,
            window.end,
            values,
            csv=selection.csv,
            owner=owner,
        )
        tagged = etag.revalidate(state, conn, gateway, asked, reads=not nobody, claim=who.claim)
        if isinstance(tagged, Response):
            return tagged
        rows = []
        if not (selection.csv or nobody):
            assert tagged.version is not None
            if state.answers is not None and answer_cache.keeps(shape, selection.csv):
                body = state.answers.body(conn, asked, tagged)
                return etag.with_tag(Response(body, mimetype="application/json"), tagged.tag)
            progress = tagged.version.progress
            answer = queries.usage(conn, shape, window.view, window.start, window.end, values, progress)
            rows = names.name_rows(gateway, answer, owner=owner)
    if selection.csv:
        filename = f"usage-{'site' if admin else 'self'}-{window.granularity}-{window.start}-{window.end}.csv"
        return csv_answer(state, shape, window.view, window.start, window.end, values, filename, owner, tagged.tag)
    return etag.with_tag(success(rows), tagged.tag)


def csv_answer(
    state: AppState,
    shape: queries.Shape,
    view: queries.View,
    start: int,
    end: int,
    values: dict[str, Any],
    filename: str,
    owner: int | None,
    tag: str,
) -> Response:
    """The answer as CSV, streamed from its own snapshot: rows are read, named and
    written a chunk at a time, so a long export holds one chunk in memory. The caller
    has checked everything that can be refused (queries.check_answerable included):
    once streaming, a failure can only cut the stream short. `owner`: see
    names.name_rows. A user_id of None in `values`: nobody's answer, the header alone.
    `tag`: its ETag, from a version the caller read before this snapshot began, so
    older than or equal to the rows sent, never newer (see shared.answer_version)."""
    header = names.named_columns(shape.columns)

    def chunks() -> Iterator[list[dict[str, Any]]]:
        if shape.user and values.get("user_id") is None:
            return
        with state.connections() as (conn, gateway):
            statement, bound = queries.prepare(conn, shape, view, start, end, values)
            for chunk in queries.stream_rows(conn, statement, bound):
                yield names.name_rows(gateway, chunk, owner=owner)

    response = Response(
        stream_with_context(csvexport.lines(header, chunks())),
        mimetype=csvexport.MIMETYPE,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
    return etag.with_tag(response, tag)


@bp.get("/api/data/self")
def data_self() -> Response:
    """/self is for any user in new-api's sense of "User": role common (1) or above."""
    return _answer(admin=False)


# strict_slashes=False: /api/data answers too, without a redirect (a redirect would drop
# the Authorization header in some clients, and its body would be HTML).
@bp.get("/api/data/", strict_slashes=False)
def data_all() -> Response:
    return _answer(admin=True)


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
