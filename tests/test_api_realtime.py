"""The real-time tail: an answer is the summary rows plus the consume logs the rollup has
not counted yet, so a log counts as soon as it commits, and exactly once however far the
rollup has got -- before any tick, between ticks, across late commits inside id gaps, and
while a tick commits.

The truth is computed in Python from the raw committed logs (tests/api_support.
expected), independently of shared.buckets, shared.queries and shared.rollup.
Tests taking `engine` run on SQLite and, marked integration, on PostgreSQL.
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from api.config import ApiLimits
from shared import models as m
from shared import queries
from shared.config import ConfigError, Settings
from shared.db import make_engine
from shared.migrate import upgrade
from shared.rollup import tick
from tests.api_support import Api, add_user, assert_failure, committed_logs, expected, make_api, ok_data
from tests.logdata import at, insert, log

TZ = "America/New_York"
LO = at(TZ, 2024, 10, 28)  # a Monday, local midnight
HI = at(TZ, 2024, 11, 8)  # across the 25-hour 2024-11-03
ALICE, BOB, ROOT = 1, 2, 3
NAMES = {ALICE: "alice", BOB: "bob", ROOT: "root", 9: "stranger"}
MODELS = ("gpt-4o", "claude", "")
GRANULARITIES = ("hour", "day", "week", "month")


def random_logs(rnd: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        uid = rnd.choice((ALICE, ALICE, BOB, ROOT, 9))
        kind = m.LOG_CONSUME if rnd.random() < 0.85 else rnd.choice((m.LOG_TOPUP, m.LOG_ERROR, m.LOG_REFUND))
        rows.append(
            log(
                user_id=uid,
                username=NAMES[uid],
                created_at=rnd.randrange(LO, HI),
                model=rnd.choice(MODELS),
                kind=kind,
                quota=rnd.randrange(0, 10_000),
                prompt=rnd.randrange(0, 3000),
                completion=rnd.randrange(0, 900),
            )
        )
    return rows


def window(granularity: str) -> dict:
    # Hours: a 3-day slice across the repeated hour; otherwise every bucket the logs touch.
    if granularity == "hour":
        lo = at(TZ, 2024, 11, 2)
        return {"granularity": granularity, "start_timestamp": lo, "end_timestamp": lo + 3 * 86400}
    return {"granularity": granularity, "start_timestamp": at(TZ, 2024, 10, 1), "end_timestamp": HI}


def people(engine):
    """Alice, Bob and root with their tokens, the settings and an API over `engine`."""
    tokens = {
        uid: add_user(engine, uid, NAMES[uid], role=m.ROLE_ROOT if uid == ROOT else m.ROLE_USER)
        for uid in (ALICE, BOB, ROOT)
    }
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=TZ)
    return settings, make_api(engine, tz=TZ), tokens


@pytest.fixture
def setup(engine):
    return engine, *people(engine)


def check_exact(engine, api: Api, tokens, *, logs=None, realtime=None, granularities=GRANULARITIES) -> int:
    """Every endpoint at every granularity equals the truth over `logs` (default: all
    committed logs); returns the rows compared."""
    logs = committed_logs(engine) if logs is None else logs
    extra = {} if realtime is None else {"realtime": realtime}
    compared = 0
    for granularity in granularities:
        q = {**window(granularity), **extra}
        start, end = q["start_timestamp"], q["end_timestamp"]
        for uid in (ALICE, BOB):
            want = expected(logs, granularity, TZ, start, end, user_id=uid)
            assert ok_data(api.get("/api/data/self", tokens[uid], uid, **q)) == want, (granularity, uid)
            compared += len(want)
        want = expected(logs, granularity, TZ, start, end, site_wide=True)
        assert ok_data(api.get("/api/data/", tokens[ROOT], ROOT, **q)) == want, granularity
        compared += len(want)
        want = expected(logs, granularity, TZ, start, end, user_id=ALICE)
        assert ok_data(api.get("/api/data/", tokens[ROOT], ROOT, username="alice", **q)) == want, granularity
    return compared


def watermark(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(m.rollup_state.c.last_log_id)).scalar()


def test_a_log_counts_before_any_tick(setup):
    engine, _, api, tokens = setup
    insert(engine, random_logs(random.Random(7), 300))
    assert watermark(engine) == 0
    assert check_exact(engine, api, tokens) > 200
    # The summary alone has nothing yet.
    for granularity in GRANULARITIES:
        assert ok_data(api.get("/api/data/", tokens[ROOT], ROOT, realtime="false", **window(granularity))) == []
    # One more log is there at once, in every view.
    insert(engine, log(user_id=ALICE, username="alice", created_at=LO + 5, model="new-model", quota=77))
    data = ok_data(
        api.get(
            "/api/data/self",
            tokens[ALICE],
            ALICE,
            granularity="month",
            **{k: v for k, v in window("month").items() if k != "granularity"},
        )
    )
    assert [(r["model_name"], r["quota"]) for r in data if r["model_name"] == "new-model"] == [("new-model", 77)]


def test_exact_at_every_step_of_the_rollup(setup):
    engine, settings, api, tokens = setup
    rnd = random.Random(11)
    insert(engine, random_logs(rnd, 250))
    small = Settings(database_url=settings.database_url, stats_timezone=TZ, rollup_batch_size=60)
    steps = 0
    while True:
        result = tick(engine, small)
        steps += 1
        w = watermark(engine)
        # With the tail: all of it. Without: exactly what the ticks have counted.
        check_exact(engine, api, tokens)
        check_exact(
            engine,
            api,
            tokens,
            logs=committed_logs(engine, max_id=w),
            realtime="false",
            granularities=("hour", "month"),
        )
        if steps == 2:
            # New traffic, much of it in buckets already rolled up.
            insert(engine, random_logs(rnd, 120))
        if not result.more and steps > 2:
            break
    assert steps >= 5
    assert watermark(engine) == max(r["id"] for r in committed_logs(engine))
    assert check_exact(engine, api, tokens, realtime="false") > 200


def test_the_setting_turns_it_off(engine):
    token = add_user(engine, ROOT, "root", role=m.ROLE_ROOT)
    insert(engine, log(user_id=ROOT, username="root", created_at=LO + 10, quota=5))
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), api_realtime=False)
    from api import create_app

    api = Api(create_app(settings, engine=engine, limits=ApiLimits()))
    q = {"start_timestamp": LO, "end_timestamp": LO + 86400}
    assert ok_data(api.get("/api/data/", token, ROOT, **q)) == []
    assert ok_data(api.get("/api/data/", token, ROOT, realtime="false", **q)) == []
    assert_failure(api.get("/api/data/", token, ROOT, realtime="true", **q), 400, "API_REALTIME")
    # On by default, and the same log is there.
    assert [r["quota"] for r in ok_data(make_api(engine).get("/api/data/", token, ROOT, **q))] == [5]
    assert [r["quota"] for r in ok_data(make_api(engine).get("/api/data/", token, ROOT, realtime="1", **q))] == [5]


def test_api_realtime_setting_from_the_environment():
    assert Settings.from_env({}).api_realtime is True
    for raw, value in (("false", False), ("0", False), ("off", False), ("TRUE", True), ("1", True), ("", True)):
        assert Settings.from_env({"API_REALTIME": raw}).api_realtime is value, raw
    with pytest.raises(ConfigError, match="API_REALTIME"):
        Settings.from_env({"API_REALTIME": "sometimes"})


def test_realtime_parameter_is_checked(sqlite_engine):
    token = add_user(sqlite_engine, ROOT, "root", role=m.ROLE_ROOT)
    api = make_api(sqlite_engine)
    for bad in ("yes", "TRUE", "2", "true "):
        assert_failure(api.get("/api/data/self", token, ROOT, realtime=bad), 400, "realtime")
    assert_failure(
        api.get("/api/data/", token, ROOT, query=[("realtime", "true"), ("realtime", "false")]), 400, "realtime", "once"
    )


def test_tail_reads_logs_by_primary_key_only(sqlite_engine):
    # The tail must cost what the rollup has not reached, not every log of the range: on
    # SQLite (no statistics) the planner would otherwise pick idx_created_at_type. (The
    # rollup keeps no gaps on SQLite; one is written here so that both halves are planned.)
    add_gaps(sqlite_engine, [(3, 5), (9, 9)])
    view = queries.View("month", tz="UTC", stats_tz="UTC")
    with queries.snapshot(sqlite_engine) as conn:
        for kind in ("user", "site"):
            src = queries.source(conn, kind, view, LO, LO + 366 * 86400)
            stmt = (
                queries.per_user_select(src, 1, LO, LO + 366 * 86400)
                if kind == "user"
                else queries.site_wide_select(src, LO, LO + 366 * 86400)
            )
            sql = str(stmt.compile(sqlite_engine, compile_kwargs={"literal_binds": True}))
            plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
            logs_steps = [p for p in plan if " logs " in f" {p} "]
            assert len(logs_steps) >= 2 and all("INTEGER PRIMARY KEY" in p for p in logs_steps), plan
            assert any("daily" in p and "INDEX" in p for p in plan), plan


@pytest.mark.integration
def test_tail_reads_logs_by_primary_key_only_on_postgresql(pg_engine):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO logs (user_id, created_at, type, model_name, quota, prompt_tokens, completion_tokens) "
            f"SELECT g %% 20, {LO} + g * 60, 2, 'm', 1, 1, 1 FROM generate_series(1, 30000) g"
        )
        conn.exec_driver_sql("UPDATE rollup_state SET last_log_id = 29990")
        conn.exec_driver_sql("ANALYZE logs")
    add_gaps(pg_engine, [(100, 120), (2000, 2000)])
    view = queries.View("month", tz="UTC", stats_tz="UTC")
    with queries.snapshot(pg_engine) as conn:
        src = queries.source(conn, "site", view, LO, LO + 366 * 86400)
        sql = str(
            queries.site_wide_select(src, LO, LO + 366 * 86400).compile(
                pg_engine, compile_kwargs={"literal_binds": True}
            )
        )
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
    assert "Seq Scan on logs" not in plan and "logs_pkey" in plan, plan
    assert plan.count("logs_pkey") >= 3, plan  # above the watermark, and each gap


def add_gaps(engine, ranges):
    with engine.begin() as conn:
        conn.execute(
            sa.insert(m.rollup_gap), [{"lo": lo, "hi": hi, "discovered_at": datetime.now(UTC)} for lo, hi in ranges]
        )


# --- PostgreSQL and MariaDB: late commits and concurrent ticks -------------------------------------


@pytest.fixture(params=["postgresql", "mariadb"])
def realtime_server(request):
    """The same test on each database server."""
    return request.getfixturevalue({"postgresql": "pg_engine", "mariadb": "mysql_engine"}[request.param])


@pytest.mark.integration
def test_a_late_commit_inside_a_gap_counts_once(realtime_server):
    engine = realtime_server
    settings, api, tokens = people(engine)
    rnd = random.Random(3)
    with engine.connect() as late:
        late_tx = late.begin()
        late_ids = insert(late, random_logs(rnd, 5))  # ids taken, not committed
        insert(engine, random_logs(rnd, 40))
        tick(engine, settings)
        with engine.connect() as conn:
            gaps = conn.execute(sa.select(m.rollup_gap.c.lo, m.rollup_gap.c.hi)).all()
        assert [(lo, hi) for lo, hi in gaps] == [(min(late_ids), max(late_ids))]
        check_exact(engine, api, tokens)  # without the uncommitted ones
        late_tx.commit()
    # Committed inside the gap, below the watermark, not counted by any tick yet: the
    # tail finds them through rollup_gap.
    assert max(late_ids) < watermark(engine)
    logs = committed_logs(engine)
    assert {r["id"] for r in logs} >= set(late_ids)
    check_exact(engine, api, tokens, logs=logs)
    # The next ticks count them, cut them out of the gap and forget it: still exact.
    for _ in range(3):
        tick(engine, settings)
        check_exact(engine, api, tokens)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(m.rollup_gap)).scalar() == 0
    assert check_exact(engine, api, tokens, realtime="false") > 20


@pytest.mark.integration
def test_a_reader_sees_a_committing_tick_entirely_or_not_at_all(realtime_server):
    engine = realtime_server
    settings, api, tokens = people(engine)
    insert(engine, random_logs(random.Random(5), 150))
    # A separate engine for the tick, so that only its commits are held back.
    tick_engine = make_engine(settings.database_url)
    at_commit, release = threading.Event(), threading.Event()

    @sa.event.listens_for(tick_engine, "after_cursor_execute")
    def _seen(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE ROLLUP_STATE"):
            conn.info["moved"] = True

    @sa.event.listens_for(tick_engine, "commit")
    def _hold(conn):
        if conn.info.pop("moved", False):
            at_commit.set()
            release.wait(60)

    errors = []

    def run():
        try:
            tick(tick_engine, settings)
        except Exception as e:  # reported below
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert at_commit.wait(60), "the tick never reached its commit"
        # Summary rows and watermark written but not committed: the answer is still exact.
        assert watermark(engine) == 0
        check_exact(engine, api, tokens)
    finally:
        release.set()
        worker.join(60)
        tick_engine.dispose()
    assert not errors and watermark(engine) > 0
    check_exact(engine, api, tokens)


@pytest.mark.integration
@pytest.mark.parametrize("deferred", [False, True])
def test_a_snapshot_reads_one_view_and_leaves_its_connection_reading_each_commit(realtime_server, deferred):
    """queries.snapshot: a log committed between two of its statements is seen by
    neither (one snapshot, begun at once or by begin_snapshot); the connection, back in
    the pool, then reads each commit again (the engine's READ COMMITTED: on MySQL the
    snapshot's level was the one transaction's, not the session's)."""
    engine = make_engine(realtime_server.url.render_as_string(hide_password=False))  # a pool of one, in use
    lg = m.logs.c

    def count(conn) -> int:
        return conn.execute(sa.select(sa.func.count()).select_from(m.logs).where(lg.user_id == 77)).scalar_one()

    try:
        with queries.snapshot(engine, deferred=deferred) as conn:
            if deferred:
                assert count(conn) == 0
                insert(realtime_server, [log(user_id=77)])
                assert count(conn) == 1  # not begun: each statement reads the newest commits
                queries.begin_snapshot(conn)
            before = count(conn)
            insert(realtime_server, [log(user_id=77)])
            assert count(conn) == before
        with engine.connect() as conn:  # the same connection, back from the pool
            before = count(conn)
            insert(realtime_server, [log(user_id=77)])
            assert count(conn) == before + 1
        assert engine.pool.checkedin() == 1
    finally:
        engine.dispose()


def concurrent_ticks_and_reads(engine, settings, api, tokens, n_logs: int) -> int:
    """Ticks of a few logs each in a thread while the API answers; every answer must be
    the whole truth. Returns how many answers were checked while ticks were running."""
    insert(engine, random_logs(random.Random(13), n_logs))
    logs = committed_logs(engine)
    small = Settings(database_url=settings.database_url, stats_timezone=TZ, rollup_batch_size=4)
    tick_engine = make_engine(settings.database_url)
    done, read_once, failures = threading.Event(), threading.Event(), []

    def run():
        try:
            first = True
            while tick(tick_engine, small, wait=True).more:
                if first:  # so that reads overlap the ticks however fast they are
                    read_once.wait(60)
                    first = False
        except Exception as e:  # reported below
            failures.append(e)
        finally:
            done.set()

    worker = threading.Thread(target=run)
    worker.start()
    checked = 0
    q = {**window("day")}
    want_site = expected(logs, "day", TZ, q["start_timestamp"], q["end_timestamp"], site_wide=True)
    want_alice = expected(logs, "day", TZ, q["start_timestamp"], q["end_timestamp"], user_id=ALICE)
    try:
        while not done.is_set():
            assert ok_data(api.get("/api/data/", tokens[ROOT], ROOT, **q)) == want_site
            assert ok_data(api.get("/api/data/self", tokens[ALICE], ALICE, **q)) == want_alice
            checked += 1
            read_once.set()
    finally:
        worker.join(120)
        tick_engine.dispose()
    assert not failures, failures
    assert watermark(engine) == max(r["id"] for r in logs)
    check_exact(engine, api, tokens, logs=logs)
    return checked


@pytest.mark.integration
def test_concurrent_ticks_never_make_a_log_count_twice_or_not_at_all(realtime_server):
    assert concurrent_ticks_and_reads(realtime_server, *people(realtime_server), 400) > 0


def test_concurrent_ticks_on_a_sqlite_file(sqlite_file_url):
    engine = make_engine(sqlite_file_url)
    upgrade(engine)
    try:
        assert concurrent_ticks_and_reads(engine, *people(engine), 200) > 0
    finally:
        engine.dispose()
