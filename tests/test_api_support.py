"""Helpers shared by the API tests (tests/test_api*.py); holds no tests itself.

Users are written into new-api's `users` table and summary rows straight into the
rollup tables (or, end to end, logs through shared.rollup): the app reads a real
database, SQLite or PostgreSQL, never a mock.
"""
from __future__ import annotations

import secrets
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from api import create_app
from api.config import ApiLimits
from shared import models as m
from shared.config import Settings

MEASURES = ("count", "quota", "token_used", "prompt_tokens", "completion_tokens")


def add_user(engine, user_id: int, username: str, *, role: int = m.ROLE_USER, status: int = m.STATUS_ENABLED,
             token: str | None = None, deleted: bool = False) -> str:
    """A new-api user; returns their access token."""
    token = secrets.token_hex(16) if token is None else token
    with engine.begin() as conn:
        conn.execute(sa.insert(m.users).values(
            id=user_id, username=username, role=role, status=status, access_token=token, password="",
            aff_code=f"aff{user_id}", deleted_at=datetime(2024, 1, 1, tzinfo=timezone.utc) if deleted else None,
        ))
    return token


def user_row(user_id, created_at, model, username=None, count=1, quota=100, prompt=10, completion=5) -> dict:
    return {"user_id": user_id, "created_at": created_at, "model_name": model,
            "username": f"u{user_id}" if username is None else username, "count": count, "quota": quota,
            "token_used": prompt + completion, "prompt_tokens": prompt, "completion_tokens": completion}


def model_row(created_at, model, count=1, quota=100, prompt=10, completion=5) -> dict:
    return {"created_at": created_at, "model_name": model, "count": count, "quota": quota,
            "token_used": prompt + completion, "prompt_tokens": prompt, "completion_tokens": completion}


def add_rows(engine, table: sa.Table, rows: list[dict]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(table), rows)


class Api:
    """A test client that speaks new-api's headers."""

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()

    def get(self, path: str, token: str | None = None, user=None, *, bearer: bool = True, headers=None,
            query=None, **params):
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
