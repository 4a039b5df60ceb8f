"""Who is asking, from the headers, in new-api's order of checks:

1. Authorization: `Bearer <access_token>` or the bare token -> a live user, else 401;
2. New-Api-User: present, a user id, and that user's id, else 401;
3. the user is enabled (status 1), else 403;
4. the user's role reaches the route's minimum, else 403.

The token is kept in flask.g only so that error logging can cut it out of messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import g, request
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from shared import models as m
from shared.auth import User, plausible_token, user_by_access_token, user_of

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
    return admit(user_by_access_token(conn, token), min_role)


def admit(user: User | None, min_role: int) -> User:
    """Checks 1 (`user`: whom the token belongs to, None for nobody) to 4."""
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


@dataclass(frozen=True)
class Claim:
    """Credentials as sent, well-formed, not yet checked: the token, and the user id
    New-Api-User claims (which the token's user must have). A route reads the user in
    the statement that reads its answer's version (etag.revalidate), one round trip
    instead of two, and `admit`s them before anything is answered."""

    token: str
    user_id: int
    min_role: int

    def admit(self, row: Any) -> User:
        """The user, from BY_TOKEN's row (None: no row), checked as `authenticate` does."""
        return admit(user_of(row, self.token), self.min_role)


@dataclass
class Asking:
    """Who asks a data route: a user authenticated already, or (where the gateway's users
    are in the answer's database) a Claim that etag.revalidate checks in the statement
    that reads the answer's version: one round trip instead of two."""

    gateway: Connection
    min_role: int
    user: User | None
    claim: Claim | None

    @property
    def id(self) -> int:
        """The asker's user id: authenticated, or claimed (and admitted before any answer)."""
        if self.claim is not None:
            return self.claim.user_id
        assert self.user is not None
        return self.user.id

    def now(self) -> User:
        """Authenticated now, for a route that needs more than the id before its answer
        (the role, or another user's id looked up by name)."""
        if self.user is None:
            self.claim = None  # (refused here: nothing left to check again)
            self.user = authenticate(self.gateway, self.min_role)
        return self.user

    @contextmanager
    def refusing_first(self) -> Iterator[None]:
        """Around what the route checks before the version is read (parameters, spans): a
        refusal there gives way to authenticate's, so that a caller without valid
        credentials learns nothing about what the route accepts (new-api's order)."""
        try:
            yield
        except SQLAlchemyError:
            raise  # the database failed (a 503): not a refusal, and nothing to check with
        except Exception:
            if self.claim is not None:
                authenticate(self.gateway, self.min_role)
            raise


def asking(conn: Connection, gateway: Connection, min_role: int) -> Asking:
    """Who asks, on a data route's connections (AppState.connections): a claim when `conn`
    is the gateway's database and the credentials are well-formed, else authenticated."""
    found = claim(min_role) if conn is gateway else None
    return Asking(gateway, min_role, None if found is not None else authenticate(gateway, min_role), found)


def claim(min_role: int) -> Claim | None:
    """The request's credentials, when they are well-formed enough to be checked later
    (a plausible token, a user id): None otherwise, and then `authenticate` must come
    first, so that its refusal is the one given."""
    token = _token()
    claimed = request.headers.get("New-Api-User", "").strip()
    if token is None or not plausible_token(token) or not _USER_ID.fullmatch(claimed) or int(claimed) >= 2**63:
        return None  # (an id past BIGINT is no user's: bound as a value, SQLite would refuse it)
    g.access_token = token
    return Claim(token, int(claimed), min_role)
