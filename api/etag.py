"""Conditional answers: every data answer carries an ETag, and a request whose
If-None-Match holds it gets 304 without a body, having read the answer's version and
nothing else.

The tag is a digest of everything the answer depends on (shared.answer_version argues
that the version moves whenever the rows can):

- the data version: the summary version (the rollup's progress and generation) and the
  signature of the tail rows the answer reads, read in the answer's snapshot;
- who asks (the authenticated user's id), the route, the normalized request (shape,
  view, range, the values bound: the user whose rows are read, the filters) and the
  format (CSV and JSON of one answer differ);
- the names the answer carries from the gateway's tables (a key renamed or deleted, a
  channel renamed), where its rows have keys or channels: those rows are read whole,
  they are few;
- the settings that shape answers and the code's version.

Errors never carry a tag: it is set on successful answers only. Answers are private
(per user) and must be revalidated each time: `Cache-Control: private, no-cache`, and
they vary with the credentials and with Accept (which can ask for CSV).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import Response, request
from sqlalchemy.engine import Connection

from shared import models as m
from shared import names, queries
from shared.answer_version import code_version
from shared.auth import BY_TOKEN
from shared.rollup import Progress

from . import AppState
from .auth import Claim

CACHE_CONTROL = "private, no-cache"
VARY = "Authorization, New-Api-User, Accept"


@dataclass(frozen=True)
class Request:
    """A data answer as asked: what it is made of, apart from the data."""

    route: str
    user_id: int  # the authenticated user
    shape: queries.Shape
    view: queries.View
    start: int
    end: int
    values: tuple[tuple[str, Any], ...]  # the values bound (user_id, filters)
    csv: bool
    owner: int | None  # whose key names the answer shows (shared.names)


def request_of(
    route: str,
    user_id: int,
    shape: queries.Shape,
    view: queries.View,
    start: int,
    end: int,
    values: dict[str, Any],
    *,
    csv: bool,
    owner: int | None,
) -> Request:
    return Request(route, user_id, shape, view, start, end, tuple(sorted(values.items())), csv, owner)


def _digest(*parts: Any) -> str:
    # repr of ints, strings, tuples and frozen dataclasses of them: the same in every
    # process and release of Python that runs this code (code_version is in the parts).
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


# settings_digest per app state: neither the settings nor the code change in a process.
# By id, with a weak reference checked on each hit (an app dropped frees its entry, and
# an id reused by another state never matches it).
_settings_digests: dict[int, tuple[weakref.ref[AppState], str]] = {}


def settings_digest(state: AppState) -> str:
    """The settings that shape answers: the zone of the daily rows, real-time answers,
    the span limits (they decide defaults and refusals), and which database is read."""
    kept = _settings_digests.get(id(state))
    if kept is not None and kept[0]() is state:
        return kept[1]
    digest = _settings_digest(state)
    key = id(state)
    _settings_digests[key] = (weakref.ref(state, lambda _: _settings_digests.pop(key, None)), digest)
    return digest


def _settings_digest(state: AppState) -> str:
    s = state.settings
    return _digest(
        s.stats_timezone,
        s.api_realtime,
        state.limits,
        state.engine.url.render_as_string(hide_password=True),
        state.gateway.url.render_as_string(hide_password=True),
        code_version(),
    )


def names_signature(gateway: Connection, columns: Sequence[str], owner: int | None) -> tuple[Any, ...]:
    """The gateway rows the answer's names come from (shared.names): the keys' (the
    owner's only, with an owner) where it has key columns, the channels' where it has
    channel ids. Empty for answers without either, which is most."""
    parts: list[Any] = []
    if "token_id" in columns and "token_name" in columns and names._has_table(gateway, "tokens"):
        t = m.tokens.c
        query = sa.select(t.id, t.name, t.deleted_at).order_by(t.id)
        if owner is not None:
            query = query.where(t.user_id == owner)
        parts.append(_digest(*map(tuple, gateway.execute(query))))
    if "channel_id" in columns and names._has_table(gateway, "channels"):
        c = m.channels.c
        parts.append(_digest(*map(tuple, gateway.execute(sa.select(c.id, c.name).order_by(c.id)))))
    return tuple(parts)


# The rollup's progress the last answer read (in any app of this process): the guess
# under which the next one reads its version and tail signature in one statement
# (queries.read_version_and_signature). Only a guess: a wrong one (a tick since, another
# database) costs a second statement, never a wrong signature.
_progress_seen: Progress | None = None


@dataclass(frozen=True)
class Tagged:
    """An answer's tag, and what it was made of: the version as read in the answer's
    snapshot (None for an answer that reads no rows: nobody's), the signature of its
    tail (None without one) and the settings' digest."""

    tag: str
    version: queries.Version | None
    tail: tuple[int, int, int] | None
    settings: str


def tag_answer(
    state: AppState,
    conn: Connection,
    gateway: Connection,
    asked: Request,
    *,
    reads: bool = True,
    claim: Claim | None = None,
) -> Tagged:
    """Read the answer's version on `conn` (the snapshot the answer is then read in) and
    make its tag. `reads`: False for an answer of nobody's rows (always empty).
    `claim`: credentials not yet checked, when `conn` is the gateway's database too: the
    user is read in the version's statement and admitted (api.auth.admit) before the
    tag is made, or the request is refused."""
    global _progress_seen
    settings = settings_digest(state)
    if not reads:
        assert claim is None, "nothing is read to check the claim beside"
        return Tagged(_digest(asked, settings), None, None, settings)
    also = (BY_TOKEN, {"token": claim.token}) if claim is not None else None
    version, tail, credentials = queries.read_version_and_signature(
        conn, asked.shape, asked.view, asked.start, asked.end, dict(asked.values), _progress_seen, also
    )
    if claim is not None:
        claim.admit(credentials)
    _progress_seen = version.progress
    named = names_signature(gateway, asked.shape.columns, asked.owner)
    return Tagged(_digest(asked, version.summary, tail, named, settings), version, tail, settings)


def conditional() -> bool:
    """Whether the request can be answered 304 (it carries If-None-Match): its
    connections may then be opened deferred (AppState.connections), for `revalidate`."""
    return bool(request.if_none_match)


def revalidate(
    state: AppState,
    conn: Connection,
    gateway: Connection,
    asked: Request,
    *,
    reads: bool = True,
    claim: Claim | None = None,
) -> Tagged | Response:
    """The 304 that ends the request, or the answer's tag read in the snapshot the
    answer is then read in. On a deferred connection the version is read first outside
    any transaction: if the client's copy is current, that is all the request costs;
    if not, the snapshot begins and the version is read again in it, so that the
    answer's rows and its tag come from one snapshot. Either read is at least as new as
    every commit made before the request arrived: never a stale 304. `claim`: see
    tag_answer; checked by the first read, before any answer."""
    if queries.snapshot_pending(conn):
        first = tag_answer(state, conn, gateway, asked, reads=reads, claim=claim)
        claim = None
        if (unchanged := not_modified(first.tag)) is not None:
            return unchanged
        queries.begin_snapshot(conn)
    tagged = tag_answer(state, conn, gateway, asked, reads=reads, claim=claim)
    if (unchanged := not_modified(tagged.tag)) is not None:
        return unchanged
    return tagged


def not_modified(tag: str) -> Response | None:
    """304 when the request's If-None-Match holds `tag` (weak comparison, as RFC 9110
    asks for If-None-Match; `*` matches any answer)."""
    if not request.if_none_match.contains_weak(tag):
        return None
    response = Response(status=304)
    return with_tag(response, tag)


def with_tag(response: Response, tag: str) -> Response:
    response.set_etag(tag)
    response.headers["Cache-Control"] = CACHE_CONTROL
    response.headers["Vary"] = VARY
    return response
