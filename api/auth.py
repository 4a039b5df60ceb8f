"""Who is asking, from the headers, in new-api's order of checks:

1. Authorization: `Bearer <access_token>` or the bare token -> a live user, else 401;
2. New-Api-User: present, a user id, and that user's id, else 401;
3. the user is enabled (status 1), else 403;
4. the user's role reaches the route's minimum, else 403.

The token is kept in flask.g only so that error logging can cut it out of messages.
"""

from __future__ import annotations

import re

from flask import g, request
from sqlalchemy.engine import Connection

from shared import models as m
from shared.auth import User, user_by_access_token

from .errors import ApiError

_USER_ID = re.compile(r"[0-9]{1,19}", re.ASCII)


def _token() -> str | None:
    value = request.headers.get("Authorization", "").strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value or None


def authenticate(conn: Connection, min_role: int) -> User:
    token = _token()
    if token is None:
        raise ApiError(401, "access token required: send Authorization: Bearer <access_token>")
    g.access_token = token
    user = user_by_access_token(conn, token)
    if user is None:
        raise ApiError(401, "invalid access token")

    claimed = request.headers.get("New-Api-User", "").strip()
    if not claimed:
        raise ApiError(401, "New-Api-User header required: send your user id")
    if not _USER_ID.fullmatch(claimed):
        raise ApiError(401, "New-Api-User header must be a user id")
    if int(claimed) != user.id:
        raise ApiError(401, "New-Api-User does not match the access token's user")

    if not user.enabled:
        raise ApiError(403, "user is disabled")
    if user.role < min_role:
        raise ApiError(403, "administrator role required" if min_role >= m.ROLE_ADMIN else "insufficient role")
    return user
