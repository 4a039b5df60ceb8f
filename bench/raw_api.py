"""The benchmark's baseline: the API's two answers computed on the fly from raw logs, as
one-api does, served beside the real ones by the same gunicorn.

    gunicorn 'bench.raw_api:create_app()'   # /api/data/... and /raw/data/...

/raw/data/self and /raw/data/ authenticate and parse exactly like /api/data/self and
/api/data/, and sum with the very same query shapes (shared.queries.per_user_select and
site_wide_select); only the source differs: every consume log of the range, bucketed by
the rollup's own bucket expressions, instead of the summary rows. The range filter is on
the raw created_at (and user_id), so the gateway's indexes serve it, as they would serve
one-api. Not part of the product: it exists to be measured against.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint

from api import create_app as create_api
from api.auth import authenticate
from api.routes import _state, _success, _window
from shared import models as m
from shared import queries
from shared.buckets import LONGEST, bucket_start

raw = Blueprint("raw_logs", __name__)


def _raw_source(view: queries.View, start: int, end: int, user_id=None):
    lg = m.logs.c
    cols = [
        lg.model_name,
        sa.literal_column("1").label("count"),
        lg.quota,
        (lg.prompt_tokens + lg.completion_tokens).label("token_used"),
        bucket_start(lg.created_at, view.granularity, view.tz).label("created_at"),
        lg.user_id,
        lg.username,
        lg.prompt_tokens,
        lg.completion_tokens,
    ]
    where = [lg.type == m.LOG_CONSUME, lg.created_at >= start, lg.created_at < end + LONGEST[view.granularity]]
    if user_id is not None:
        where.append(lg.user_id == user_id)
    return sa.select(*cols).where(*where).subquery("raw")


@raw.get("/raw/data/self")
def raw_self():
    state = _state()
    with state.engine.connect() as conn:
        user = authenticate(conn, m.ROLE_USER)
        w = _window(state)
        query = queries.per_user_select(_raw_source(w.view, w.start, w.end, user.id), user.id, w.start, w.end)
        rows = queries._rows(conn, query)
    return _success(rows)


@raw.get("/raw/data/", strict_slashes=False)
def raw_all():
    state = _state()
    with state.engine.connect() as conn:
        authenticate(conn, m.ROLE_ADMIN)
        w = _window(state)
        query = queries.site_wide_select(_raw_source(w.view, w.start, w.end), w.start, w.end)
        rows = queries._rows(conn, query)
    return _success(rows)


def create_app():
    app = create_api()
    app.register_blueprint(raw)
    return app
