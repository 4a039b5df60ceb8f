"""The benchmark's baseline: the API's two answers computed on the fly from raw logs, as
one-api does, served beside the real ones by the same gunicorn.

    gunicorn 'bench.raw_api:create_app()'   # /api/data/... and /raw/data/...

/raw/data/self and /raw/data/ authenticate and parse exactly like /api/data/self and
/api/data/, and sum with the very same query shapes (shared.queries.per_user_select and
site_wide_select) over the very same per-log rows (shared.aggregation.summary_log_rows:
which logs count, their values, their buckets); only the source differs: every consume
log of the range instead of the summary rows. The range filter is on the raw created_at
(and user_id), so the gateway's indexes serve it, as they would serve one-api. Not part
of the product: it exists to be measured against.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask

from api import create_app as create_api
from api.auth import authenticate
from api.routes import app_state, request_window, success
from shared import aggregation as agg
from shared import models as m
from shared import queries
from shared.buckets import LONGEST, bucket_start

raw = Blueprint("raw_logs", __name__)


def _raw_source(view: queries.View, start: int, end: int, user_id: int | None = None) -> sa.Subquery:
    lg = m.logs.c
    kind = "site" if user_id is None else "user"
    columns = [c.name for c in agg.summary("hour", queries.KIND_DIMENSIONS[kind]).table.c]
    where = sa.and_(lg.created_at >= start, lg.created_at < end + LONGEST[view.granularity])
    if user_id is not None:
        where = sa.and_(where, lg.user_id == user_id)

    def bucket(created_at: Any) -> Any:
        return bucket_start(created_at, view.granularity, view.tz)

    return agg.summary_log_rows(columns, where, bucket).subquery("raw")


@raw.get("/raw/data/self")
def raw_self() -> Any:
    state = app_state()
    with state.engine.connect() as conn:
        user = authenticate(conn, m.ROLE_USER)
        w = request_window(state)
        query = queries.per_user_select(_raw_source(w.view, w.start, w.end, user.id), user.id, w.start, w.end)
        return success(queries.rows(conn, query))


@raw.get("/raw/data/", strict_slashes=False)
def raw_all() -> Any:
    state = app_state()
    with state.engine.connect() as conn:
        authenticate(conn, m.ROLE_ADMIN)
        w = request_window(state)
        query = queries.site_wide_select(_raw_source(w.view, w.start, w.end), w.start, w.end)
        return success(queries.rows(conn, query))


def create_app(*args: Any, **kwargs: Any) -> Flask:
    """The API (arguments as api.create_app's) with the raw-log routes beside it."""
    app = create_api(*args, **kwargs)
    app.register_blueprint(raw)
    return app
