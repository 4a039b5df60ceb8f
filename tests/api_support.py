"""Helpers shared by the API tests (tests/test_api*.py and others).

Users are written into new-api's `users` table and summary rows straight into the
rollup tables (or, end to end, logs through shared.rollup): the app reads a real
database, SQLite or PostgreSQL, never a mock.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from api import create_app
from api.config import ApiLimits
from shared import models as m
from shared.config import Settings
from tests.logdata import log_select

MEASURES = ("count", "quota", "token_used", "prompt_tokens", "completion_tokens")


def add_user(
    engine,
    user_id: int,
    username: str,
    *,
    role: int = m.ROLE_USER,
    status: int = m.STATUS_ENABLED,
    token: str | None = None,
    deleted: bool = False,
) -> str:
    """A new-api user; returns their access token."""
    token = secrets.token_hex(16) if token is None else token
    with engine.begin() as conn:
        conn.execute(
            sa.insert(m.users).values(
                id=user_id,
                username=username,
                role=role,
                status=status,
                access_token=token,
                password="",
                aff_code=f"aff{user_id}",
                deleted_at=datetime(2024, 1, 1, tzinfo=UTC) if deleted else None,
            )
        )
    return token


def user_row(user_id, created_at, model, username=None, count=1, quota=100, prompt=10, completion=5) -> dict:
    return {
        "user_id": user_id,
        "created_at": created_at,
        "model_name": model,
        "username": f"u{user_id}" if username is None else username,
        "count": count,
        "quota": quota,
        "token_used": prompt + completion,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
    }


def model_row(created_at, model, count=1, quota=100, prompt=10, completion=5) -> dict:
    return {
        "created_at": created_at,
        "model_name": model,
        "count": count,
        "quota": quota,
        "token_used": prompt + completion,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
    }


def add_rows(engine, table: sa.Table, rows: list[dict]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(table), rows)


class Api:
    """A test client that speaks new-api's headers."""

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()

    def get(
        self, path: str, token: str | None = None, user=None, *, bearer: bool = True, headers=None, query=None, **params
    ):
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}" if bearer else token
        if user is not None:
            h["New-Api-User"] = str(user)
        # `query` (a list of pairs) can repeat a name; keyword params cannot.
        qs = list(query or []) + [(k, str(v)) for k, v in params.items()]
        return self.client.get(path, headers=h, query_string=qs)


def make_api(engine, tz: str = "UTC", limits: ApiLimits | None = None) -> Api:
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=tz)
    return Api(create_app(settings, engine=engine, limits=limits or ApiLimits()))


def assert_failure(response, status: int, *fragments: str) -> dict:
    """A failure in the one shape: JSON, success false, a non-empty message."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"success", "message"} and body["success"] is False and body["message"], body
    for fragment in fragments:
        assert fragment in body["message"], (fragment, body["message"])
    return body


def ok_data(response) -> list[dict]:
    assert response.status_code == 200, (response.status_code, response.get_data(as_text=True))
    body = response.get_json()
    assert body["success"] is True and body["message"] == "" and set(body) == {"success", "message", "data"}
    return body["data"]


@pytest.fixture
def api(engine) -> Api:
    return make_api(engine)


# --- the truth for the real-time, time zone and period tests ---------------------------
# Computed in Python from the raw logs, independently of shared.buckets/queries/rollup:
# hours are created_at - created_at % 3600; days, weeks (from Monday) and months start at
# the first instant of the local date (tests/logdata._first_instant searches for it).


def bucket_of(ts: int, granularity: str, tz: str) -> int:
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from tests.logdata import _first_instant, hour_of

    if granularity == "hour":
        return hour_of(ts)
    d = datetime.fromtimestamp(ts, tz=UTC).astimezone(ZoneInfo(tz)).date()
    if granularity == "week":
        d -= timedelta(days=d.weekday())
    elif granularity == "month":
        d = d.replace(day=1)
    return _first_instant(d, tz)


def committed_logs(engine, max_id: int | None = None) -> list[dict]:
    """Every committed log (all types), read through a fresh connection."""
    q = log_select()
    if max_id is not None:
        q = q.where(m.logs.c.id <= max_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def expected(
    logs: list[dict], granularity: str, tz: str, start: int, end: int, *, user_id=None, site_wide: bool = False
) -> list[dict]:
    """The API's answer over `logs`: consume logs by (bucket, model[, user]) whose bucket
    starts in [start, end], in the API's order and field names."""
    groups: dict = {}
    for lg in logs:
        if lg["type"] != m.LOG_CONSUME or lg["created_at"] is None:
            continue
        uid = lg["user_id"] or 0
        if user_id is not None and uid != user_id:
            continue
        bucket = bucket_of(lg["created_at"], granularity, tz)
        if not start <= bucket <= end:
            continue
        model = lg["model_name"] or ""
        key = (bucket, model) if site_wide else (bucket, model, uid)
        g = groups.setdefault(key, {"count": 0, "quota": 0, "prompt_tokens": 0, "completion_tokens": 0, "username": ""})
        g["count"] += 1
        g["quota"] += lg["quota"] or 0
        g["prompt_tokens"] += lg["prompt_tokens"] or 0
        g["completion_tokens"] += lg["completion_tokens"] or 0
        g["username"] = max(g["username"], lg["username"] or "")
    rows = []
    for key, g in groups.items():
        row = {
            "model_name": key[1],
            "count": g["count"],
            "quota": g["quota"],
            "token_used": g["prompt_tokens"] + g["completion_tokens"],
            "created_at": key[0],
        }
        if not site_wide:
            row.update(user_id=key[2], username=g["username"])
        row.update(prompt_tokens=g["prompt_tokens"], completion_tokens=g["completion_tokens"])
        rows.append(row)
    return sorted(rows, key=lambda r: (r["created_at"], r["model_name"]))
