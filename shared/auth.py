"""Who an access token belongs to: new-api's `users.access_token`.

The lookup is by equality in SQL (an index hit on the unique access_token column), and
the token of the row found is then compared once more with hmac.compare_digest: the
database's comparison may be looser than byte equality (PostgreSQL's char(32) ignores
trailing blanks, MySQL's default collation ignores case), and the final say should be a
constant-time comparison of the exact bytes.

Soft-deleted users (deleted_at set) are treated as absent, as new-api does.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import models as m

# new-api's tokens are 32 characters; anything far longer is not a token, and is not
# worth a round trip to the database.
MAX_TOKEN_LENGTH = 256


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: int
    status: int

    @property
    def enabled(self) -> bool:
        return self.status == m.STATUS_ENABLED


def plausible_token(token: str) -> bool:
    """Printable ASCII without blanks, of a sane length. Anything else cannot be a
    new-api token, and some of it (NUL) PostgreSQL would refuse as a parameter."""
    return 0 < len(token) <= MAX_TOKEN_LENGTH and token.isascii() and token.isprintable() and " " not in token


_u = m.users.c
# Built once: every request runs it, and building a select costs more than running it
# from SQLAlchemy's compiled cache. Run alone (`user_by_access_token`) or beside an
# answer's version (queries.read_version_and_signature): its row, or None, then goes to
# `user_of` with the token.
BY_TOKEN = (
    sa.select(_u.id, _u.username, _u.role, _u.status, _u.access_token)
    .where(_u.access_token == sa.bindparam("token", type_=_u.access_token.type), _u.deleted_at.is_(None))
    .limit(1)
)


def user_by_access_token(conn: Connection, token: str) -> User | None:
    """The live user whose access token is exactly `token`, or None."""
    if not plausible_token(token):
        return None
    return user_of(conn.execute(BY_TOKEN, {"token": token}).first(), token)


def user_of(row: Any, token: str) -> User | None:
    """The user of a row of BY_TOKEN (None: no row) if its token is exactly `token`."""
    if row is None or row.access_token is None:
        return None
    # char(32) comes back blank-padded from PostgreSQL when the stored token is shorter.
    stored = row.access_token.rstrip(" ")
    if not hmac.compare_digest(stored.encode(), token.encode()):
        return None
    return User(
        id=int(row.id),
        username=row.username or "",
        # NULLs (possible in a hand-edited table) mean "no rights" and "not enabled".
        role=int(row.role) if row.role is not None else 0,
        status=int(row.status) if row.status is not None else 0,
    )


def live_user_id(conn: Connection, username: str) -> int | None:
    """The id of the live (not soft-deleted) user called `username`, or None.
    users.username is unique. Read on the gateway's database, then used as a value, so
    that nothing joins `users` with the rollup's tables (which may live beside `logs` in
    another database), and the summary's primary key (user_id first) serves the range."""
    u = m.users.c
    # exactly: a gateway's MySQL collation would take "Alice" for "alice".
    found = conn.execute(
        sa.select(u.id).where(m.exactly(u.username, username), u.deleted_at.is_(None)).limit(1)
    ).scalar()
    return None if found is None else int(found)
