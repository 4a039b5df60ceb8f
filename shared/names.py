"""Names of API keys and channels for answers grouped by them, from new-api's `tokens`
and `channels` tables when those exist.

Only `id`, `name` (and tokens' `deleted_at`) are ever read: both tables hold secrets
(`key`). A key's name is its live name; a soft-deleted key is "Deleted (<id>)", as
new-api's dashboard labels it; a key the table does not know keeps the name its logs
recorded (the rows' token_name). A channel's name is channels.name, or "channel-<id>" for
one that is gone (new-api's label). Without the tables, keys keep their recorded names
and channels are "channel-<id>".

A lookup is one query per answer (or per chunk of a streamed one) over the ids in it, so
that the answer's own SQL never joins the gateway's tables: with new-api's LOG_SQL_DSN
those live in another database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from weakref import WeakKeyDictionary

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import models as m

# The tables each engine's database is known to have: a gateway does not drop them, so
# each is looked up once per engine rather than on every answer.
_existing: WeakKeyDictionary[Engine, set[str]] = WeakKeyDictionary()


def _has_table(conn: Connection, name: str) -> bool:
    known = _existing.setdefault(conn.engine, set())
    if name not in known and sa.inspect(conn).has_table(name):
        known.add(name)
    return name in known


def deleted_token_name(token_id: int) -> str:
    return f"Deleted ({token_id})"


def missing_channel_name(channel_id: int) -> str:
    return f"channel-{channel_id}"


def token_names(conn: Connection, ids: Iterable[int], owner: int | None = None) -> dict[int, str]:
    """Live or "Deleted (<id>)" names of the keys among `ids` that `tokens` knows; with
    `owner`, only of keys that user owns (a user's answer never shows another user's
    key name, should new-api ever hand an id out again)."""
    wanted = sorted({int(i) for i in ids})
    if not wanted or not _has_table(conn, "tokens"):
        return {}
    t = m.tokens.c
    query = sa.select(t.id, t.name, t.deleted_at).where(t.id.in_(wanted))
    if owner is not None:
        query = query.where(t.user_id == owner)
    found = conn.execute(query)
    return {int(i): deleted_token_name(int(i)) if deleted is not None else (name or "") for i, name, deleted in found}


def channel_names(conn: Connection, ids: Iterable[int]) -> dict[int, str]:
    """channels.name of every id in `ids`, "channel-<id>" where it is unknown."""
    wanted = sorted({int(i) for i in ids})
    names = {i: missing_channel_name(i) for i in wanted}
    if wanted and _has_table(conn, "channels"):
        c = m.channels.c
        names.update((int(i), name or "") for i, name in conn.execute(sa.select(c.id, c.name).where(c.id.in_(wanted))))
    return names


def named_columns(columns: Sequence[str]) -> list[str]:
    """The columns of rows `name_rows` has named: channel_name follows channel_id."""
    out = list(columns)
    if "channel_id" in out:
        out.insert(out.index("channel_id") + 1, "channel_name")
    return out


def name_rows(conn: Connection, rows: Sequence[dict[str, Any]], owner: int | None = None) -> list[dict[str, Any]]:
    """`rows` with token_name set from `tokens` where a row has token_id (with `owner`:
    from that user's keys only), and a channel_name inserted after channel_id where a
    row has channel_id."""
    if not rows:
        return list(rows)
    has_token = "token_id" in rows[0] and "token_name" in rows[0]
    has_channel = "channel_id" in rows[0]
    tokens = token_names(conn, (r["token_id"] for r in rows), owner) if has_token else {}
    channels = channel_names(conn, (r["channel_id"] for r in rows)) if has_channel else {}
    if not tokens and not channels:
        return list(rows)
    named = []
    for row in rows:
        out: dict[str, Any] = {}
        for key, value in row.items():
            out[key] = tokens.get(row["token_id"], value) if key == "token_name" and has_token else value
            if key == "channel_id":
                out["channel_name"] = channels[int(value)]
        named.append(out)
    return named
