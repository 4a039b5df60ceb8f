"""Conditional answers (api.etag, shared.answer_version): every data answer carries an
ETag that changes whenever its rows can, and If-None-Match with it gets 304 and no body.

Never stale: a log committed into the tail (above the watermark, or late inside a gap)
is in the very next response under a new tag; a re-aggregation that changes summary
rows changes the tag, one that changes nothing does not; so do retention's compaction
and a zone's adoption. Tests taking `engine` run on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from shared import models as m
from shared import queries
from shared.auth import BY_TOKEN
from shared.config import Settings
from shared.retention import run_retention
from shared.rollup import adopt_timezone, reaggregate, tick
from tests.api_support import add_user, assert_failure, make_api, ok_data
from tests.logdata import insert, log

ALICE, BOB, ADMIN = 1, 2, 3
T0 = 1_717_200_000  # 2024-06-01 00:00 UTC
RANGE = {"start_timestamp": T0, "end_timestamp": T0 + 2 * 86400 - 1, "granularity": "hour"}


def setup(engine, tz: str = "UTC"):
    tokens = {
        uid: add_user(engine, uid, name, role=m.ROLE_ROOT if uid == ADMIN else m.ROLE_USER)
        for uid, name in ((ALICE, "alice"), (BOB, "bob"), (ADMIN, "root"))
    }
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=tz)
    return settings, make_api(engine, tz=tz), tokens


def logs_at(user_id: int, *hours: int, **kw) -> list[dict]:
    return [log(user_id=user_id, username=f"u{user_id}", created_at=T0 + h * 3600 + 60, **kw) for h in hours]


def get(api, tokens, uid=ALICE, path="/api/data/self", tag=None, **params):
    headers = {"If-None-Match": tag} if tag is not None else {}
    return api.get(path, tokens[uid], uid, headers=headers, **{**RANGE, **params})


def tag_of(response) -> str:
    assert response.status_code == 200, response.get_data(as_text=True)
    tag = response.headers.get("ETag")
    assert tag and tag.startswith('"') and tag.endswith('"'), tag
    return tag


def quotas(response) -> int:
    return sum(r["quota"] for r in ok_data(response))


def generation(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(m.rollup_state.c.generation)).scalar_one())


def assert_not_modified(response, tag: str) -> None:
    assert response.status_code == 304, (response.status_code, response.get_data(as_text=True)[:200])
    assert response.get_data() == b""
    assert response.headers["ETag"] == tag
    assert "private" in response.headers["Cache-Control"] and "no-cache" in response.headers["Cache-Control"]


def test_a_matching_if_none_match_gets_304_without_a_body(engine):
    settings, api, tokens = setup(engine)
    insert(engine, logs_at(ALICE, 1, 2, 30))
    tick(engine, settings)
    first = get(api, tokens)
    tag = tag_of(first)
    assert first.headers["Vary"] == "Authorization, New-Api-User, Accept"
    assert quotas(first) > 0
    assert_not_modified(get(api, tokens, tag=tag), tag)
    assert_not_modified(get(api, tokens, tag=f'"other", W/{tag}'), tag)  # weak comparison, a list
    assert_not_modified(get(api, tokens, tag="*"), tag)
    again = get(api, tokens, tag='"something else"')
    assert tag_of(again) == tag and again.get_json() == first.get_json()
    # Another range, granularity or zone is another answer.
    assert tag_of(get(api, tokens, granularity="day")) != tag
    assert tag_of(get(api, tokens, end_timestamp=T0 + 86400)) != tag
    assert tag_of(get(api, tokens, tz="Asia/Shanghai")) != tag
    # Another user's answer (the same parameters) has its own tag.
    assert tag_of(get(api, tokens, BOB)) != tag


def test_a_committed_log_is_in_the_next_response_under_a_new_tag(engine):
    settings, api, tokens = setup(engine)
    insert(engine, logs_at(ALICE, 1, 2) + logs_at(BOB, 1))
    tick(engine, settings)
    tag = tag_of(get(api, tokens))
    before = quotas(get(api, tokens))
    # Into the tail, not rolled up yet: in the very next response.
    insert(engine, logs_at(ALICE, 5, quota=1000))
    fresh = get(api, tokens, tag=tag)
    assert quotas(fresh) == before + 1000
    tail_tag = tag_of(fresh)
    assert tail_tag != tag
    assert_not_modified(get(api, tokens, tag=tail_tag), tail_tag)
    # Another user's logs do not move alice's /self answer, nor its tag.
    insert(engine, logs_at(BOB, 5, 6))
    assert_not_modified(get(api, tokens, tag=tail_tag), tail_tag)
    # A non-consume log of hers is not in her answer either.
    insert(engine, logs_at(ALICE, 5, kind=m.LOG_TOPUP))
    assert_not_modified(get(api, tokens, tag=tail_tag), tail_tag)
    # The site-wide answer has bob's.
    site = tag_of(get(api, tokens, ADMIN, path="/api/data/"))
    insert(engine, logs_at(BOB, 7))
    assert tag_of(get(api, tokens, ADMIN, path="/api/data/", tag=site)) != site
    # A tick moves the rollup's progress: a new tag, the same rows.
    tick(engine, settings)
    ticked = get(api, tokens, tag=tail_tag)
    assert tag_of(ticked) != tail_tag and quotas(ticked) == before + 1000


def test_a_conditional_request_decides_without_a_transaction_and_leaves_none_behind(engine):
    """A conditional request reads who asks and the version outside any transaction
    (queries.snapshot's deferred) and begins the answer's snapshot only when the
    client's copy is out of date; afterwards its pooled connection is as every other:
    the engine's isolation level, statements inside a transaction."""
    settings, api, tokens = setup(engine)
    insert(engine, logs_at(ALICE, 1, 2))
    tick(engine, settings)
    tag = tag_of(get(api, tokens))
    assert_not_modified(get(api, tokens, tag=tag), tag)
    insert(engine, logs_at(ALICE, 3, quota=77))
    fresh = get(api, tokens, tag=tag)  # out of date: the snapshot begins, the rows follow
    assert tag_of(fresh) != tag and quotas(fresh) == quotas(get(api, tokens))
    assert_not_modified(get(api, tokens, tag=tag_of(fresh)), tag_of(fresh))
    # Refused after the credentials were read on the deferred connection.
    assert_failure(get(api, tokens, tag=tag, granularity="fortnight"), 400, "granularity")
    if engine.dialect.name == "sqlite":
        return  # one snapshot per transaction already; nothing is deferred
    level = {"postgresql": "SHOW transaction_isolation", "mysql": "SELECT @@tx_isolation"}[engine.dialect.name]
    in_transaction = {
        "postgresql": "SELECT txid_current()",  # the same id twice only inside one transaction
        "mysql": "SELECT @@autocommit",
    }[engine.dialect.name]
    for _ in range(engine.pool.size() + 1):
        with engine.connect() as conn:
            assert conn.exec_driver_sql(level).scalar_one().replace("-", " ").lower() == "read committed"
            first = conn.exec_driver_sql(in_transaction).scalar_one()
            if engine.dialect.name == "postgresql":
                assert conn.exec_driver_sql(in_transaction).scalar_one() == first
            else:
                assert first == 0


FLOW_SELF = ("/api/data/flow/self", ALICE)


def test_a_304_is_one_statement_that_also_checks_who_asks(engine):
    """With the users in the answer's database, a conditional request's credentials are
    read in the statement that reads its version (api.auth.Claim): an unchanged answer
    costs that one statement, on every route whose answer does not depend on the role.
    The claim is checked before any answer: a wrong token, a user id that is not the
    token's, a disabled user or a guest gets its refusal, never the 304 (nor the rows)."""
    settings, api, tokens = setup(engine)
    insert(engine, logs_at(ALICE, 1, 2))
    tick(engine, settings)
    sent: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        sent.append(statement)

    for path, uid in (("/api/data/self", ALICE), ("/api/data/", ADMIN), ("/api/data/users", ADMIN), FLOW_SELF):
        polled = get(api, tokens, uid, path=path)
        sent.clear()
        sa.event.listen(engine, "before_cursor_execute", seen)
        try:
            assert_not_modified(get(api, tokens, uid, path=path, tag=tag_of(polled)), tag_of(polled))
        finally:
            sa.event.remove(engine, "before_cursor_execute", seen)
        reads = [s for s in sent if s.lstrip().upper().startswith(("SELECT", "WITH"))]
        assert "users" in reads[0] and "rollup_state" in reads[0], (path, sent)
        # Besides: the keys' names an answer by key carries (etag.names_signature).
        names = [r for r in reads[1:] if "FROM tokens" in r]
        assert len(reads) == 1 + len(names) and len(names) == (path == FLOW_SELF[0]), (path, sent)
    tag = tag_of(get(api, tokens))

    assert_failure(api.get("/api/data/self", "0" * 32, ALICE, headers={"If-None-Match": tag}, **RANGE), 401, "invalid")
    assert_failure(
        api.get("/api/data/self", tokens[ALICE], BOB, headers={"If-None-Match": tag}, **RANGE), 401, "does not match"
    )
    with engine.begin() as conn:
        conn.execute(sa.update(m.users).where(m.users.c.id == ALICE).values(status=2))
    assert_failure(get(api, tokens, tag=tag), 403, "disabled")
    with engine.begin() as conn:
        conn.execute(sa.update(m.users).where(m.users.c.id == ALICE).values(status=1, role=0))
    assert_failure(get(api, tokens, tag=tag), 403)
    # Refused for its credentials before its parameters, as without the claim.
    assert_failure(api.get("/api/data/self", "0" * 32, ALICE, granularity="fortnight"), 401, "invalid")


def test_a_late_commit_inside_a_gap_is_in_the_next_response_under_a_new_tag(engine):
    settings, api, tokens = setup(engine)
    rows = logs_at(ALICE, 1, 2, 3, 4, 5)
    for i, row in enumerate(rows):
        row["id"] = 10 + i if i < 2 else 20 + i  # 10, 11, 22, 23, 24: 12..21 not seen
    insert(engine, rows)
    tick(engine, settings)
    with engine.begin() as conn:
        # PostgreSQL and MariaDB record the gap themselves; SQLite keeps none (its ticks
        # hold the one write lock), so it is written here.
        if not conn.execute(sa.select(m.rollup_gap)).first():
            conn.execute(sa.insert(m.rollup_gap).values(lo=12, hi=21, discovered_at=datetime.now(UTC)))
        assert conn.execute(sa.select(m.rollup_state.c.last_log_id)).scalar_one() == 24
    tag = tag_of(get(api, tokens))
    before = quotas(get(api, tokens))
    late = logs_at(ALICE, 3, quota=777)[0]
    late["id"] = 15  # below the watermark, inside the gap
    insert(engine, late)
    fresh = get(api, tokens, tag=tag)
    assert quotas(fresh) == before + 777 and tag_of(fresh) != tag


def test_version_and_signature_in_one_statement_equal_them_read_apart(engine):
    """queries.read_version_and_signature under a right guess of the progress (one
    statement), a stale one and none (read again under the progress read): always
    read_version and tail_signature as read apart, in one snapshot."""
    settings, _, tokens = setup(engine)
    view = queries.View("hour")
    start, end = RANGE["start_timestamp"], RANGE["end_timestamp"]

    def apart() -> tuple[queries.Version, tuple[int, int, int] | None]:
        with queries.snapshot(engine) as conn:
            version = queries.read_version(conn)
            return version, queries.tail_signature(
                conn, queries.PER_USER, view, start, end, {"user_id": ALICE}, version.progress
            )

    def together(guess) -> tuple[queries.Version, tuple[int, int, int] | None]:
        # With and without the credentials' select beside them: the same, and its row
        # (alice's, or none for a token nobody has).
        found = []
        for token, user in ((None, None), (tokens[ALICE], ALICE), ("0" * 32, None)):
            also = (BY_TOKEN, {"token": token}) if token is not None else None
            with queries.snapshot(engine) as conn:
                version, signature, row = queries.read_version_and_signature(
                    conn, queries.PER_USER, view, start, end, {"user_id": ALICE}, guess, also
                )
            assert (row.id if row is not None else None) == user
            found.append((version, signature))
        assert found[0] == found[1] == found[2]
        return found[0]

    empty = apart()
    assert together(None) == empty == together(empty[0].progress)
    insert(engine, logs_at(ALICE, 1, 2) + logs_at(BOB, 1))
    tick(engine, settings)
    insert(engine, logs_at(ALICE, 3, 4))
    stale = empty[0].progress
    now = apart()
    assert now[0].progress != stale and now[1] is not None and now[1][0] == 2  # alice's two logs in the tail
    assert together(stale) == now == together(now[0].progress) == together(None)
    with engine.begin() as conn:  # a gap (as PostgreSQL and MariaDB record them) over a counted log of alice's
        first = conn.execute(sa.select(sa.func.min(m.logs.c.id)).where(m.logs.c.user_id == ALICE)).scalar_one()
        conn.execute(sa.insert(m.rollup_gap).values(lo=first, hi=first, discovered_at=datetime.now(UTC)))
    gapped = apart()
    assert gapped[0].progress.gaps == [(first, first)] and gapped[1] is not None and gapped[1][0] == 3
    assert together(now[0].progress) == gapped == together(gapped[0].progress)


def test_a_reaggregation_moves_the_tag_only_when_it_changes_rows(engine):
    settings, api, tokens = setup(engine)
    insert(engine, logs_at(ALICE, 1, 2, 3, quota=100) + logs_at(BOB, 1, quota=5))
    tick(engine, settings)
    tag = tag_of(get(api, tokens))
    site = tag_of(get(api, tokens, ADMIN, path="/api/data/"))
    # Nothing to change: the same tag, also when every table is compared with the logs.
    reaggregate(engine, settings, T0, T0 + 86400)
    reaggregate(engine, settings, T0, T0 + 86400, check_every_table=True)
    reaggregate(engine, settings, T0, T0 + 86400, user_id=ALICE)
    assert_not_modified(get(api, tokens, tag=tag), tag)
    # A counted log deleted from the raw logs: the summary rows still hold it (and so
    # does the answer, under the same tag) until a re-aggregation rebuilds them.
    with engine.begin() as conn:
        lg = m.logs.c
        first = conn.execute(sa.select(sa.func.min(lg.id)).where(lg.user_id == ALICE)).scalar_one()
        conn.execute(sa.delete(m.logs).where(lg.id == first))
    assert_not_modified(get(api, tokens, tag=tag), tag)
    reaggregate(engine, settings, T0, T0 + 86400)
    rebuilt = get(api, tokens, tag=tag)
    assert quotas(rebuilt) == 200 and tag_of(rebuilt) != tag
    assert tag_of(get(api, tokens, ADMIN, path="/api/data/", tag=site)) != site
    # One user's re-aggregation that changes rows, on the per-grain path.
    tag = tag_of(rebuilt)
    with engine.begin() as conn:
        conn.execute(sa.update(m.logs).where(m.logs.c.user_id == ALICE).values(quota=50))
    reaggregate(engine, settings, T0, T0 + 86400, user_id=ALICE, check_every_table=True)
    moved = get(api, tokens, tag=tag)
    assert quotas(moved) == 100 and tag_of(moved) != tag


def test_retention_and_a_new_zone_move_the_generation(engine):
    settings, api, tokens = setup(engine)
    insert(engine, logs_at(ALICE, 1, 30))
    tick(engine, settings)
    tag = tag_of(get(api, tokens, granularity="day"))
    g = generation(engine)
    hourly = Settings(database_url=settings.database_url, retain_hourly_days=1)
    run_retention(engine, hourly, now=T0 + 5 * 86400)  # compacts both days' hours
    assert generation(engine) == g + 1
    run_retention(engine, hourly, now=T0 + 5 * 86400)  # nothing left to do
    assert generation(engine) == g + 1
    assert tag_of(get(api, tokens, granularity="day", tag=tag)) != tag
    shanghai = Settings(database_url=settings.database_url, stats_timezone="Asia/Shanghai")
    assert adopt_timezone(engine, shanghai)
    assert generation(engine) == g + 2
    assert not adopt_timezone(engine, shanghai)
    assert generation(engine) == g + 2


def test_csv_and_json_of_one_answer_have_different_tags(engine):
    settings, api, tokens = setup(engine)
    insert(engine, logs_at(ALICE, 1, 2))
    tick(engine, settings)
    as_json = tag_of(get(api, tokens))
    as_csv = get(api, tokens, format="csv")
    csv_tag = tag_of(as_csv)
    assert as_csv.mimetype == "text/csv" and csv_tag != as_json
    by_accept = api.get("/api/data/self", tokens[ALICE], ALICE, headers={"Accept": "text/csv"}, **RANGE)
    assert tag_of(by_accept) == csv_tag and by_accept.get_data() == as_csv.get_data()
    assert_not_modified(get(api, tokens, format="csv", tag=csv_tag), csv_tag)
    assert get(api, tokens, format="csv", tag=as_json).status_code == 200
    insert(engine, logs_at(ALICE, 3))
    changed = get(api, tokens, format="csv", tag=csv_tag)
    assert tag_of(changed) != csv_tag and changed.get_data().count(b"\r\n") == 4  # header and 3 hours


def test_errors_carry_no_tag(engine):
    _, api, tokens = setup(engine)
    tag = tag_of(get(api, tokens))
    for response in (
        api.get("/api/data/self", headers={"If-None-Match": tag}, **RANGE),  # no credentials
        get(api, tokens, tag=tag, granularity="fortnight"),
        get(api, tokens, tag=tag, start_timestamp=T0 + 86400, end_timestamp=T0),
        get(api, tokens, ALICE, path="/api/data/", tag=tag),  # not an admin
        get(api, tokens, tag=tag, tz="Asia/Kolkata", granularity="day"),  # unanswerable
    ):
        assert "ETag" not in response.headers
        assert_failure(response, response.status_code)
        assert response.status_code in (400, 401, 403)


def test_every_data_route_answers_conditionally(engine):
    settings, api, tokens = setup(engine)
    insert(engine, logs_at(ALICE, 1, 2) + logs_at(BOB, 3))
    tick(engine, settings)
    flow = {"start_timestamp": T0, "end_timestamp": T0 + 86400}
    for uid, path, params in (
        (ADMIN, "/api/data/users", {}),
        (ADMIN, "/api/data/users", {"username": "alice"}),
        (ADMIN, "/api/data/users", {"username": "nobody"}),
        (ADMIN, "/api/data/", {"username": "alice", "group_by": "model,channel"}),
        (ADMIN, "/api/data/flow", flow),
        (ALICE, "/api/data/flow/self", flow),
        (ALICE, "/api/data/self", {"group_by": "token"}),
    ):
        tag = tag_of(get(api, tokens, uid, path, **params))
        assert_not_modified(get(api, tokens, uid, path, tag=tag, **params), tag)
        assert tag_of(get(api, tokens, uid, path, format="csv", **params)) != tag


def test_a_renamed_key_changes_the_tag_of_answers_by_key(engine):
    settings, api, tokens = setup(engine)
    insert(engine, logs_at(ALICE, 1, token_id=7, token_name="old"))
    tick(engine, settings)
    with engine.begin() as conn:
        conn.execute(sa.insert(m.tokens).values(id=7, user_id=ALICE, key="k" * 48, name="old"))
    by_key = get(api, tokens, group_by="token")
    tag = tag_of(by_key)
    plain = tag_of(get(api, tokens))
    with engine.begin() as conn:
        conn.execute(sa.update(m.tokens).where(m.tokens.c.id == 7).values(name="new"))
    renamed = get(api, tokens, group_by="token", tag=tag)
    assert tag_of(renamed) != tag and {r["token_name"] for r in ok_data(renamed)} == {"new"}
    assert_not_modified(get(api, tokens, tag=plain), plain)  # no key names in it


def test_cached_answers_are_the_uncached_answers_byte_for_byte(engine):
    """The answer cache (api.answer_cache) keeps summary halves and patches in the tail:
    its bodies equal those of an app without it, at every step of a history of commits
    into the tail (existing keys, new hours, new models, another user's), ticks and a
    re-aggregation that changes rows."""
    import random

    from api import create_app

    settings, cached, tokens = setup(engine)
    plain = make_api(engine)
    plain.app = create_app(settings, engine=engine, answer_cache=False)
    plain.client = plain.app.test_client()
    state = cached.app.extensions["usage_stats"]
    assert state.answers is not None and plain.app.extensions["usage_stats"].answers is None
    rnd = random.Random(11)
    models = ("gpt-4o", "claude", "Z-model", "")

    def batch(n: int) -> list[dict]:
        return [
            log(
                user_id=rnd.choice((ALICE, ALICE, BOB)),
                created_at=T0 + rnd.randrange(0, 2 * 86400),
                model=rnd.choice(models),
                quota=rnd.randrange(0, 1000),
                kind=m.LOG_CONSUME if rnd.random() < 0.9 else m.LOG_ERROR,
            )
            for _ in range(n)
        ]

    cases = (
        (ALICE, "/api/data/self", {}),
        (ALICE, "/api/data/self", {"granularity": "day"}),
        (ALICE, "/api/data/self", {"group_by": "model", "model_name": "claude"}),
        (ADMIN, "/api/data/", {}),
        (ADMIN, "/api/data/", {"tz": "Asia/Shanghai", "granularity": "day"}),
        (ADMIN, "/api/data/users", {}),
    )

    def compare() -> None:
        answers = state.answers
        answers.clear()
        hits = answers.hits
        for uid, path, params in cases:
            want = get(plain, tokens, uid, path, **params)
            for _ in range(2):  # a miss, then a hit
                got = get(cached, tokens, uid, path, **params)
                assert got.status_code == 200 and got.get_data() == want.get_data(), (path, params)
                assert got.headers["ETag"] == want.headers["ETag"]
        # Each answer was kept once, and the second request of each was served from it.
        assert len(answers) == len(cases) and answers.hits - hits == len(cases)

    same_key = [log(user_id=ALICE, created_at=T0 + 60, model="claude", quota=5)]
    insert(engine, batch(30) + same_key)
    compare()  # everything in the tail, nothing rolled up
    tick(engine, settings)
    compare()
    for step in range(4):
        # Into the tail: kept keys patched (one of each kind), new keys inserted.
        insert(engine, batch(5 + step) + same_key)
        compare()
    tick(engine, settings)
    compare()
    with engine.begin() as conn:
        conn.execute(sa.update(m.logs).where(m.logs.c.user_id == ALICE).values(quota=m.logs.c.quota + 1))
    reaggregate(engine, settings, T0, T0 + 2 * 86400)
    insert(engine, batch(3))
    compare()


def test_the_answer_cache_is_bounded_by_bytes():
    from api.answer_cache import AnswerCache, Half, Key

    cache = AnswerCache(max_bytes=1000)

    def half(size: int) -> Half:
        return Half([(1,)], [b"x"], {(1,): 0}, size)

    for i in range(10):
        cache._put(Key(i, (i,), ""), half(200))  # type: ignore[arg-type]
        assert cache._bytes <= 1000
    assert len(cache._entries) == 5
    cache._put(Key("big", (), ""), half(300))  # type: ignore[arg-type]  # over a quarter: not kept
    assert Key("big", (), "") not in cache._entries  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 2160])
def test_a_kept_body_is_the_envelope_orjson_writes(n):
    """The kept rows joined into a body (answer_cache._body, from a list or any
    iterable) are byte for byte the answer `success` would serialize."""
    import orjson

    from api.answer_cache import _body
    from api.jsonprovider import dumps_bytes

    rows = [{"model_name": f"m{i}", "count": i, "quota": -i, "created_at": 3600 * i} for i in range(n)]
    whole = orjson.dumps({"success": True, "message": "", "data": rows})
    assert _body([dumps_bytes(r) for r in rows]) == whole
    assert _body(dumps_bytes(r) for r in rows) == whole
