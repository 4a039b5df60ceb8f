"""The API's read queries, one function per query shape, over the summary tables only.

Every shape is the same statement:

    SELECT <key columns>, CAST(SUM(<measure>) AS BIGINT) ...
    FROM <source>
    WHERE <key filter> AND created_at BETWEEN :start AND :end
    GROUP BY <key columns>
    ORDER BY created_at, model_name   -- model_name in code point order on every database

`source` is the summary table the granularity names (hourly_* or daily_*). The summary
tables already hold one row per key, so today the GROUP BY folds nothing; it is there so
that a real-time tail -- the logs the rollup has not reached yet, aggregated to the same
columns -- can be passed in as `UNION ALL` with the table and merged by this very SQL.
The CAST keeps PostgreSQL's SUM(bigint) (numeric, a Decimal in Python) a plain integer.

No function here reads `logs`: a request costs a range scan over at most a few thousand
summary rows, whatever the size of the gateway's history.
"""
from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from . import models as m

Granularity = Literal["hour", "day"]
GRANULARITIES: tuple[str, ...] = ("hour", "day")

# One row per (bucket, user, model): /api/data/self and the admin's username= view.
PER_USER: dict[str, sa.Table] = {"hour": m.hourly_usage, "day": m.daily_usage}
# One row per (bucket, model): the admin's site-wide view.
SITE_WIDE: dict[str, sa.Table] = {"hour": m.hourly_model_usage, "day": m.daily_model_usage}


class code_point_order(FunctionElement):
    """`expr` as a sort key in code point order, the same on every database: SQLite
    compares text bytewise already, PostgreSQL follows the database's locale (where
    "B" < "a" or "_z" < "a" depends on it) unless told COLLATE "C"."""

    inherit_cache = True
    name = "code_point_order"


@compiles(code_point_order)
def _code_point_order_default(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)


@compiles(code_point_order, "postgresql")
def _code_point_order_pg(element, compiler, **kw):
    return f'({compiler.process(element.clauses, **kw)}) COLLATE "C"'


def _sum(source, name: str):
    return sa.cast(sa.func.sum(source.c[name]), sa.BigInteger).label(name)


def per_user_select(source, user_id, start: int, end: int) -> sa.Select:
    """One user's rows in [start, end] from `source` (a per-user table, or a union of it
    with tail rows of the same columns). `user_id` is a value or a scalar SQL expression.
    Columns in the contract's order: model_name, count, quota, token_used, created_at,
    user_id, username, then the two token splits."""
    c = source.c
    return (
        sa.select(
            c.model_name,
            _sum(source, "count"),
            _sum(source, "quota"),
            _sum(source, "token_used"),
            c.created_at,
            c.user_id,
            # The name at the time of the requests (as in new-api's quota_data); one per
            # key in the table, MAX only chooses among tail rows after a rename.
            sa.func.max(c.username).label("username"),
            _sum(source, "prompt_tokens"),
            _sum(source, "completion_tokens"),
        )
        .where(c.user_id == user_id, c.created_at.between(start, end))
        .group_by(c.created_at, c.model_name, c.user_id)
        .order_by(c.created_at, code_point_order(c.model_name))
    )


def site_wide_select(source, start: int, end: int) -> sa.Select:
    """Site-wide rows in [start, end] from `source` (a per-model table, or a union of it
    with tail rows of the same columns)."""
    c = source.c
    return (
        sa.select(
            c.model_name,
            _sum(source, "count"),
            _sum(source, "quota"),
            _sum(source, "token_used"),
            c.created_at,
            _sum(source, "prompt_tokens"),
            _sum(source, "completion_tokens"),
        )
        .where(c.created_at.between(start, end))
        .group_by(c.created_at, c.model_name)
        .order_by(c.created_at, code_point_order(c.model_name))
    )


def active_user_id(username: str):
    """The id of the live (not soft-deleted) user called `username`, as a scalar
    subquery: NULL, and so no rows, when there is none. users.username is unique."""
    u = m.users.c
    return sa.select(u.id).where(u.username == username, u.deleted_at.is_(None)).scalar_subquery()


def _rows(conn: Connection, query: sa.Select) -> list[dict]:
    return [dict(row) for row in conn.execute(query).mappings()]


def user_usage(conn: Connection, user_id: int, granularity: Granularity, start: int, end: int) -> list[dict]:
    """/api/data/self: the rows of user `user_id` whose bucket starts in [start, end]."""
    return _rows(conn, per_user_select(PER_USER[granularity], user_id, start, end))


def user_usage_by_name(conn: Connection, username: str, granularity: Granularity, start: int, end: int) -> list[dict]:
    """/api/data/?username=: the rows of the live user named `username` (none for an
    unknown or deleted name). Resolved to the user's id rather than matched against the
    summary's username column, so that the primary key (user_id, created_at, ...) serves
    the range, and a user's rows from before a rename are still theirs."""
    return _rows(conn, per_user_select(PER_USER[granularity], active_user_id(username), start, end))


def site_usage(conn: Connection, granularity: Granularity, start: int, end: int) -> list[dict]:
    """/api/data/: site-wide rows by (bucket, model) whose bucket starts in [start, end]."""
    return _rows(conn, site_wide_select(SITE_WIDE[granularity], start, end))
