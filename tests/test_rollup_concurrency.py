"""Late commits, in-flight ids and concurrent ticks, with real connections and threads.

PostgreSQL and MariaDB (integration, through the `server` fixture):
- a log whose transaction is still open when a tick passes its id is counted once it
  commits -- and never twice -- whether it commits long after, or in the middle of the
  tick (between the tick's snapshot and its gap bookkeeping);
- a rolled-back id's gap is forgotten after a couple of ticks;
- a tick (and a re-aggregation) never waits for an open writer;
- two ticks at once, a tick beside a re-aggregation, writers beside ticks: exact totals.
SQLite (file database): a tick waits for an open writer and then counts it; threads of
writers and ticks end exact (marked integration for its length, not for a server).

No assertion is about speed: a thread that must "not block" is given a minute to finish
while the writer's transaction is provably still open.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import sqlalchemy as sa

from shared import aggregation as agg
from shared import models as m
from shared.answer_version import bump_generation
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade
from shared.rollup import LOCK_KEY, MYSQL_LOCK, MYSQL_UNLOCK, reaggregate, rollup, tick
from tests.logdata import (
    actual_tables,
    assert_exact,
    at,
    day_bounds,
    forget_gaps,
    gaps,
    insert,
    last_log_id,
    log,
    totals,
)

TZ = "America/New_York"
T = at(TZ, 2024, 11, 3, 1, 30)  # the 25-hour day
STUCK = 60  # seconds a thread gets before we call it stuck (a hang detector, not a speed test)

integration = pytest.mark.integration


def cfg(engine, **kw) -> Settings:
    return Settings(database_url=str(engine.url), stats_timezone=TZ, **kw)


def run_threads(*targets):
    """Run the callables in threads; re-raise the first exception any of them raised."""
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(STUCK * 3)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    if errors:
        raise errors[0]


def in_thread(fn):
    """Start fn in a thread; returns (thread, box) where box gets 'result' or 'error'."""
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request):
    """The rollup's engine on each database server (a fresh database per session)."""
    return request.getfixturevalue({"postgresql": "pg_engine", "mariadb": "mysql_engine"}[request.param])


@pytest.fixture
def writer(server):
    """A second engine for the gateway's writers, so that their connections are not the
    rollup's."""
    engine = make_engine(server.url.render_as_string(hide_password=False))
    yield engine
    engine.dispose()


@pytest.fixture
def pg_writer(pg_url):
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def take_lock(conn) -> int:
    """Take the rollup's lock on `conn` as a tick would; returns the session's id."""
    if conn.dialect.name == "mysql":
        assert conn.execute(MYSQL_LOCK, {"timeout": 0}).scalar() == 1
        session = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one()
    else:
        conn.execute(sa.select(sa.func.pg_advisory_lock(LOCK_KEY)))
        session = conn.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
    conn.commit()
    return session


def release_lock(conn) -> None:
    if conn.dialect.name == "mysql":
        conn.execute(MYSQL_UNLOCK)
    else:
        conn.execute(sa.select(sa.func.pg_advisory_unlock(LOCK_KEY)))
    conn.commit()


# --- two connections ------------------------------------------------------------------


@integration
def test_late_commit_is_counted_once_it_commits(server, writer):
    s = cfg(server)
    a = writer.connect()
    a_tx = a.begin()
    (a_id,) = insert(a, log(user_id=1, created_at=T, quota=1000))
    (b_id,) = insert(writer, log(user_id=2, created_at=T + 10, quota=7))
    assert a_id < b_id

    r = tick(server, s)
    assert (r.logs, r.last_log_id) == (1, b_id)  # only the committed one
    assert totals(server) == (1, 7)
    assert totals(server, "daily_model_usage") == (1, 7)
    assert [g[:2] for g in gaps(server)] == [(a_id, a_id)]
    for _ in range(3):  # while A is open, its gap stays and stays unsettled
        assert tick(server, s).logs == 0
        assert [(lo, hi, settled) for lo, hi, settled in gaps(server)] == [(a_id, a_id, None)]
    assert_exact(server, TZ, where="while A is still open")  # A is not committed: not in the truth either

    a_tx.commit()
    a.close()
    assert tick(server, s).logs == 1
    assert totals(server) == (2, 1007)
    assert_exact(server, TZ)
    forget_gaps(server, cfg(server))
    assert totals(server) == (2, 1007)  # counted once
    assert_exact(server, TZ)


def fresh_trx_cache(engine) -> None:
    """On MariaDB, let InnoDB's INNODB_TRX cache go 0.1 s unread, so that the next tick's
    read of it is fresh: a tick settles gaps only from a fresh read (shared.rollup)."""
    if engine.dialect.name == "mysql":
        time.sleep(0.15)


@integration
def test_rolled_back_id_gap_is_forgotten(server, writer):
    s = cfg(server)
    a = writer.connect()
    a_tx = a.begin()
    insert(a, [log(created_at=T), log(created_at=T + 1)])
    insert(writer, log(created_at=T + 2, quota=3))
    assert tick(server, s).logs == 1
    assert len(gaps(server)) == 1
    a_tx.rollback()
    a.close()
    for _ in range(2):
        fresh_trx_cache(server)
        tick(server, s)
    # "a couple of ticks": settled by the first, forgotten by the second
    assert gaps(server) == []
    assert totals(server) == (1, 3)
    assert_exact(server, TZ)


@integration
def test_a_stale_innodb_trx_cache_never_settles_an_open_writers_gap(mysql_engine):
    """InnoDB refreshes INNODB_TRX only after 0.1 s unread. A monitor polling it more often
    keeps serving the copy taken before writer A began, which does not list A. Ticks back
    to back beside it must keep A's gap until a fresh read, or A is lost when it commits."""
    server = mysql_engine
    writer = make_engine(server.url.render_as_string(hide_password=False))
    s = cfg(server)
    stop = threading.Event()

    def monitor():
        with writer.connect() as conn:
            while not stop.is_set():
                conn.execute(sa.text("SELECT COUNT(*) FROM information_schema.INNODB_TRX")).all()
                time.sleep(0.01)

    poller, box = in_thread(monitor)
    time.sleep(0.05)  # the monitor's first read fills the cache, before A begins
    a = writer.connect()
    a_tx = a.begin()
    try:
        insert(a, log(user_id=1, created_at=T, quota=1000))
        insert(writer, log(user_id=2, created_at=T + 10, quota=7))
        for _ in range(4):  # records A's gap, then three more ticks with only stale reads
            tick(server, s)
        assert [settled for _, _, settled in gaps(server)] == [None]
        stop.set()
        poller.join(STUCK)
        assert "error" not in box, box.get("error")
        a_tx.commit()
    finally:
        stop.set()
        if a_tx.is_active:
            a_tx.rollback()  # a failed test must not leave A's locks on the database
        a.close()
        writer.dispose()
    forget_gaps(server, s)
    assert totals(server) == (2, 1007)
    assert_exact(server, TZ)


@integration
def test_tick_and_reaggregation_do_not_wait_for_an_open_writer(server, writer):
    s = cfg(server)
    insert(writer, log(created_at=T - 3600))
    a = writer.connect()
    a_tx = a.begin()
    insert(a, log(created_at=T))
    insert(writer, log(created_at=T + 5))
    try:
        lo, hi = day_bounds(T, TZ)
        for job in (
            lambda: tick(server, s),
            lambda: rollup(server, s),
            lambda: reaggregate(server, s, lo, hi),
        ):
            thread, box = in_thread(job)
            thread.join(STUCK)
            assert not thread.is_alive(), "the rollup waited for a writer's open transaction"
            assert "error" not in box, box.get("error")
            assert a.in_transaction()  # A was open the whole time
        assert totals(server) == (2, totals(server)[1])
    finally:
        a_tx.commit()
        a.close()
    rollup(server, s)
    assert totals(server)[0] == 3
    assert_exact(server, TZ)


@integration
@pytest.mark.parametrize("when", ["_RECORD_GAPS", "_SETTLE_GAPS"])
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_writer_finishing_in_the_middle_of_a_tick(server, writer, when, outcome):
    """A finishes after the tick's snapshot but before (or while) the tick records and
    settles the gap: the tick settles the gap without having seen A, so the next tick
    must count A (if it committed) before forgetting the gap."""
    s = cfg(server)
    a = writer.connect()
    a_tx = a.begin()
    insert(a, log(user_id=1, created_at=T, quota=1000))
    insert(writer, log(user_id=2, created_at=T + 10, quota=7))
    # On MariaDB the tick settles by reading INNODB_TRX, whether or not it then updates.
    settling = "TABLE rollup_trx AS" if server.dialect.name == "mysql" else "UPDATE rollup_gap SET settled_at"
    marker = {"_RECORD_GAPS": "SELECT prev + 1, id - 1", "_SETTLE_GAPS": settling}[when]
    fired = []

    def finish_a(conn, cursor, statement, parameters, context, executemany):
        if not fired and marker in statement:
            fired.append(statement)
            (a_tx.commit if outcome == "commit" else a_tx.rollback)()
            a.close()

    sa.event.listen(server, "before_cursor_execute", finish_a)
    try:
        r = tick(server, s)
    finally:
        sa.event.remove(server, "before_cursor_execute", finish_a)
    assert fired, f"the tick never ran {when}"
    assert r.logs == 1  # A finished after the snapshot: not seen by this tick
    assert totals(server) == (1, 7)
    r = tick(server, s)
    assert r.logs == (1 if outcome == "commit" else 0)
    forget_gaps(server, s)
    assert totals(server) == ((2, 1007) if outcome == "commit" else (1, 7))
    assert_exact(server, TZ)


@integration
def test_reaggregation_does_not_count_a_committed_log_still_in_a_gap(server, writer):
    """A commits inside a gap; before the next tick counts it, a re-aggregation of its day
    runs. Re-aggregation must leave A to the tick, or A is counted twice."""
    s = cfg(server)
    a = writer.connect()
    a_tx = a.begin()
    insert(a, log(user_id=1, created_at=T, quota=1000))
    insert(writer, log(user_id=1, created_at=T + 10, quota=7))
    tick(server, s)
    a_tx.commit()
    a.close()
    lo, hi = day_bounds(T, TZ)
    r = reaggregate(server, s, lo, hi)
    assert r.logs == 1
    assert totals(server) == (1, 7)
    reaggregate(server, s, lo, hi, user_id=1)
    assert totals(server) == (1, 7)
    tick(server, s)
    assert totals(server) == (2, 1007)
    assert_exact(server, TZ)
    reaggregate(server, s, lo, hi)  # now counted: re-aggregation includes it
    assert_exact(server, TZ)


def reaggregate_between_phases(engine, s, lo, hi, act):
    """reaggregate(lo, hi), running `act()` once between a chunk's two phases: after it
    aggregated and compared (rollup_fresh exists), as it asks for the rollup's lock."""
    fired, fresh_made = [], []

    def watch(conn, cursor, statement, parameters, context, executemany):
        if "TABLE rollup_fresh AS" in statement:
            fresh_made.append(True)

    def between(conn, cursor, statement, parameters, context, executemany):
        if not fired and fresh_made and ("pg_advisory_lock(" in statement or "GET_LOCK(" in statement):
            fired.append(statement)
            act()

    sa.event.listen(engine, "after_cursor_execute", watch)
    sa.event.listen(engine, "before_cursor_execute", between)
    try:
        result = reaggregate(engine, s, lo, hi)
    finally:
        sa.event.remove(engine, "before_cursor_execute", between)
        sa.event.remove(engine, "after_cursor_execute", watch)
    assert fired, "nothing ran between the chunk's two phases"
    return result


@integration
@pytest.mark.parametrize("late", ["new_id", "inside_a_gap"])
def test_a_tick_between_a_chunks_aggregation_and_its_write(server, writer, late):
    """A re-aggregation aggregates its days without the lock, then takes it to write. A
    tick that counts logs of those days in between (a new id, or one that committed
    inside a gap the aggregation left out) must leave them counted exactly once."""
    s = cfg(server)
    lo, hi = day_bounds(T, TZ)
    same = {"token_id": 11, "channel": 1, "group": "default"}  # the late logs share a key
    held = writer.connect()
    held_tx = held.begin()
    insert(held, log(user_id=1, created_at=T + 5, quota=1000, **same))  # its id, still uncommitted
    insert(writer, [log(user_id=1, created_at=T, quota=7, **same), log(user_id=2, created_at=T + 60, quota=5)])
    tick(server, s)
    assert len(gaps(server)) == 1
    if late == "new_id":
        held_tx.rollback()
        held.close()
    with server.begin() as conn:  # history that the re-aggregation must repair
        finest = agg.SUMMARIES[0].table
        conn.execute(sa.delete(finest).where(finest.c.user_id == 2))
        conn.execute(sa.update(finest).values(quota=finest.c.quota + 1))

    def tick_in_between():
        if late == "new_id":
            insert(writer, log(user_id=1, created_at=T + 30, quota=300, **same))
            tick(server, s)
        else:
            held_tx.commit()
            held.close()
            forget_gaps(server, s)

    r = reaggregate_between_phases(server, s, lo, hi, tick_in_between)
    assert r.logs == 3  # the day's logs, the tick's included
    assert totals(server) == (3, 1012 if late == "inside_a_gap" else 312)
    assert_exact(server, TZ)
    forget_gaps(server, s)
    assert_exact(server, TZ)


@integration
def test_another_write_between_a_chunks_compare_and_its_write(server):
    """Between a chunk's compare (without the lock) and its write, something other than a
    tick changes its days' rows and moves the generation, as every such writer does (a
    re-aggregation, retention, an upgrade): the chunk must compare again under the lock,
    not write its stale change."""
    s = cfg(server)
    lo, hi = day_bounds(T, TZ)
    insert(server, [log(user_id=1, created_at=T, quota=7), log(user_id=2, created_at=T + 60, quota=5)])
    tick(server, s)
    finest = agg.SUMMARIES[0].table

    def another_write():
        with server.begin() as other:  # rows the chunk compared as equal, changed
            other.execute(sa.update(finest).where(finest.c.user_id == 2).values(quota=finest.c.quota + 50))
            bump_generation(other)

    reaggregate_between_phases(server, s, lo, hi, another_write)
    assert_exact(server, TZ)


@integration
def test_old_timestamp_late_commit_lands_in_its_old_bucket(server, writer):
    s = cfg(server)
    old = T - 30 * 86400
    insert(writer, log(created_at=old, quota=1))
    rollup(server, s)
    a = writer.connect()
    a_tx = a.begin()
    insert(a, log(created_at=old + 60, quota=2))
    insert(writer, log(created_at=T, quota=4))
    rollup(server, s)
    a_tx.commit()
    a.close()
    rollup(server, s)
    assert_exact(server, TZ)
    hourly = {k[1]: v[:2] for k, v in actual_tables(server)["hourly_usage"].items()}
    assert hourly[old - old % 3600] == (2, 3)


# --- the lock -------------------------------------------------------------------------


@integration
def test_tick_skips_while_the_lock_is_held(server, writer):
    s = cfg(server)
    insert(writer, [log(created_at=T), log(created_at=T + 1)])
    with writer.connect() as holder:
        take_lock(holder)
        r = tick(server, s)
        assert r.skipped and r.logs == 0
        assert rollup(server, s).skipped
        assert last_log_id(server) == 0 and totals(server) == (0, 0)
        release_lock(holder)
    r = tick(server, s)
    assert not r.skipped and r.logs == 2
    assert_exact(server, TZ)


@integration
@pytest.mark.parametrize("wait", [False, True])
def test_two_ticks_at_once(server, writer, wait):
    s = cfg(server, rollup_batch_size=400)
    rnd = random.Random(1)
    counted = 0
    for round_ in range(8):
        n = rnd.randrange(200, 900)
        rows = [
            log(
                user_id=rnd.randrange(1, 5),
                created_at=T + rnd.randrange(-86400, 86400),
                kind=rnd.choice([m.LOG_CONSUME, m.LOG_CONSUME, m.LOG_ERROR]),
            )
            for _ in range(n)
        ]
        insert(writer, rows)
        counted += sum(r["type"] == m.LOG_CONSUME for r in rows)
        barrier = threading.Barrier(2)
        results = []

        def one():
            barrier.wait()
            results.append(tick(server, s, wait=wait))

        run_threads(one, one)
        ran = [r for r in results if not r.skipped]
        assert ran, "both ticks skipped"
        if wait:
            assert len(ran) == 2  # they queue instead of skipping
        rollup(server, s)
        assert totals(server)[0] == counted, f"round {round_}"
    assert_exact(server, TZ)


@integration
def test_tick_beside_reaggregation_and_writers(server, writer):
    s = cfg(server, rollup_batch_size=50, reaggregate_chunk_days=1)
    stop = threading.Event()
    lo, hi = T - 3 * 86400, T + 3 * 86400

    def write(seed):
        def run():
            rnd = random.Random(seed)
            for _ in range(60):
                with writer.connect() as conn:
                    tx = conn.begin()
                    insert(
                        conn,
                        [
                            log(
                                user_id=rnd.randrange(1, 4),
                                created_at=rnd.randrange(lo, hi),
                                kind=rnd.choice([m.LOG_CONSUME, m.LOG_CONSUME, m.LOG_TOPUP]),
                            )
                            for _ in range(rnd.randrange(1, 4))
                        ],
                    )
                    time.sleep(rnd.random() * 0.01)  # an id in flight for a while
                    (tx.rollback if rnd.random() < 0.15 else tx.commit)()

        return run

    def ticks():
        while not stop.is_set():
            tick(server, s)

    def reaggregations():
        rnd = random.Random(9)
        while not stop.is_set():
            start = rnd.randrange(lo, hi)
            reaggregate(server, s, start, start + rnd.randrange(1, 2 * 86400), user_id=rnd.choice([None, 1, 2]))

    def writers():
        try:
            run_threads(write(1), write(2), write(3))
        finally:
            stop.set()

    run_threads(writers, ticks, ticks, reaggregations)
    rollup(server, s)
    assert_exact(server, TZ, where="after writers, ticks and re-aggregations")
    forget_gaps(server, s)
    reaggregate(server, s, lo, hi)
    assert_exact(server, TZ, where="after a final re-aggregation")


@integration
def test_writers_holding_transactions_while_ticks_run(server, writer):
    """Many writers, some holding their transaction across several ticks, some rolling
    back; ticks in two threads the whole time, with a small batch size."""
    s = cfg(server, rollup_batch_size=7)
    stop = threading.Event()

    def write(seed):
        def run():
            rnd = random.Random(seed)
            for _ in range(40):
                with writer.connect() as conn:
                    tx = conn.begin()
                    insert(
                        conn,
                        [
                            log(
                                user_id=rnd.randrange(1, 6),
                                created_at=T + rnd.randrange(-5 * 86400, 3600),
                                model=rnd.choice(["a", "b"]),
                                kind=rnd.choice([m.LOG_CONSUME, m.LOG_SYSTEM]),
                            )
                            for _ in range(rnd.randrange(1, 3))
                        ],
                    )
                    if rnd.random() < 0.2:
                        time.sleep(0.05 + rnd.random() * 0.1)  # across several ticks
                    (tx.rollback if rnd.random() < 0.2 else tx.commit)()

        return run

    def ticks():
        while not stop.is_set():
            tick(server, s)

    def writers():
        try:
            run_threads(*(write(k) for k in range(5)))
        finally:
            stop.set()

    run_threads(writers, ticks, ticks)
    rollup(server, s)
    assert_exact(server, TZ)
    forget_gaps(server, s)
    assert_exact(server, TZ)


# --- SQLite -------------------------------------------------------------------------------


@pytest.fixture
def sqlite_file(sqlite_file_url):
    engine = make_engine(sqlite_file_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_sqlite_tick_waits_for_an_open_writer_then_counts_it(sqlite_file):
    s = cfg(sqlite_file)
    insert(sqlite_file, log(created_at=T, quota=1))
    a = sqlite_file.connect()
    a_tx = a.begin()
    insert(a, log(created_at=T + 1, quota=2))  # holds SQLite's write lock
    thread, box = in_thread(lambda: tick(sqlite_file, s))
    time.sleep(0.3)  # let the tick reach BEGIN IMMEDIATE (the assertions hold either way)
    assert thread.is_alive() or "error" in box or box["result"].logs == 2
    a_tx.commit()
    a.close()
    thread.join(STUCK)
    assert not thread.is_alive()
    assert "error" not in box, box.get("error")
    # its snapshot was taken once it had the lock: it saw A's commit
    assert box["result"].logs == 2
    assert totals(sqlite_file) == (2, 3)
    assert_exact(sqlite_file, TZ)


@integration  # no server needed, but too long for the fast default
def test_sqlite_writers_and_ticks_in_threads(sqlite_file):
    s = cfg(sqlite_file, rollup_batch_size=5)
    stop = threading.Event()
    lo, hi = T - 2 * 86400, T + 2 * 86400

    def write(seed):
        def run():
            rnd = random.Random(seed)
            for _ in range(40):
                with sqlite_file.connect() as conn:
                    tx = conn.begin()
                    insert(
                        conn,
                        [
                            log(
                                user_id=rnd.randrange(1, 4),
                                created_at=rnd.randrange(lo, hi),
                                kind=rnd.choice([m.LOG_CONSUME, m.LOG_ERROR]),
                            )
                            for _ in range(rnd.randrange(1, 3))
                        ],
                    )
                    (tx.rollback if rnd.random() < 0.2 else tx.commit)()

        return run

    def ticks():
        while not stop.is_set():
            tick(sqlite_file, s)

    def reaggregations():
        rnd = random.Random(4)
        while not stop.is_set():
            start = rnd.randrange(lo, hi)
            reaggregate(sqlite_file, s, start, start + 86400, user_id=rnd.choice([None, 2]))

    def writers():
        try:
            run_threads(write(1), write(2), write(3))
        finally:
            stop.set()

    run_threads(writers, ticks, ticks, reaggregations)
    rollup(sqlite_file, s)
    assert_exact(sqlite_file, TZ)


@integration
# BUG-9 (found here, fixed since): this test now guards the fix.
def test_sequence_cache_above_one_is_counted_or_refused(pg_engine, pg_writer):
    from shared.rollup import RollupError

    s = cfg(pg_engine)
    with pg_engine.begin() as conn:
        seq = conn.execute(sa.text("SELECT pg_get_serial_sequence('logs', 'id')")).scalar_one()
        conn.exec_driver_sql(f"ALTER SEQUENCE {seq} CACHE 20")
    try:
        a = pg_writer.connect()  # a gateway session: its first insert caches ids 1..20
        b = pg_writer.connect()  # another: caches 21..40
        insert(a, log(created_at=T, quota=1))
        a.commit()
        insert(b, log(created_at=T, quota=2))
        b.commit()
        try:
            for _ in range(3):  # the gap 2..20 is recorded, settled (no pg_writer), forgotten
                tick(pg_engine, s)
            insert(a, log(created_at=T, quota=4))  # id 2, from session A's cache
            a.commit()
            for _ in range(3):
                tick(pg_engine, s)
        except RollupError as exc:  # refusing to run on such a sequence is fine too
            assert "CACHE" in str(exc).upper()
            return
        finally:
            a.close()
            b.close()
        assert totals(pg_engine) == (3, 7)
    finally:
        with pg_engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER SEQUENCE {seq} CACHE 1")


# --- crashes ------------------------------------------------------------------------------


class Crash(Exception):
    pass


def _crash_on(engine, marker: str):
    """Make the next statement containing `marker` on `engine` raise, as if the process died
    right there (client-side fault injection; the database is real)."""
    fired = []

    def boom(conn, cursor, statement, parameters, context, executemany):
        if not fired and marker in statement:
            fired.append(statement)
            raise Crash(marker)

    sa.event.listen(engine, "before_cursor_execute", boom)
    return fired, lambda: sa.event.remove(engine, "before_cursor_execute", boom)


def _snapshot(engine):
    from tests.logdata import actual_tables

    return actual_tables(engine), last_log_id(engine), [g[:2] for g in gaps(engine)]


@pytest.mark.parametrize("marker", ["UPDATE rollup_state", "INSERT INTO daily_model_usage"])
def test_a_tick_that_dies_midway_leaves_nothing_behind(engine, marker):
    """The aggregation, the gap bookkeeping and the watermark commit together or not at all."""
    _die_midway(engine, marker)


@integration
def test_a_tick_that_dies_recording_a_gap_leaves_nothing_behind(server):
    _die_midway(server, "INSERT INTO rollup_gap")


def _die_midway(engine, marker):
    s = cfg(engine, rollup_batch_size=3)
    insert(engine, [log(user_id=1, created_at=T + k * 600) for k in range(4)])
    rollup(engine, s)
    if engine.dialect.name == "postgresql" and marker == "INSERT INTO rollup_gap":
        with engine.begin() as conn:  # an id that will be missing: the tick records a gap
            conn.exec_driver_sql("SELECT nextval(pg_get_serial_sequence('logs', 'id'))")
    elif engine.dialect.name == "mysql" and marker == "INSERT INTO rollup_gap":
        with engine.connect() as conn:  # InnoDB does not give back an id rolled back
            tx = conn.begin()
            insert(conn, log(user_id=3, created_at=T))
            tx.rollback()
    insert(engine, [log(user_id=2, created_at=T + k * 600) for k in range(2)])
    before = _snapshot(engine)
    fired, undo = _crash_on(engine, marker)
    try:
        with pytest.raises(Crash):
            tick(engine, s)
    finally:
        undo()
    assert fired
    assert _snapshot(engine) == before
    r = tick(engine, s)  # and the lock was released: the next tick runs, and counts once
    assert not r.skipped and r.logs == 2
    assert_exact(engine, TZ)


def test_a_reaggregation_that_dies_between_chunks_leaves_consistent_days(engine):
    s = cfg(engine, reaggregate_chunk_days=1)
    lo = at(TZ, 2024, 11, 1)
    ids = insert(engine, [log(created_at=lo + k * 86400 + 3600, quota=10) for k in range(4)])
    rollup(engine, s)
    with engine.begin() as conn:
        conn.execute(sa.update(m.logs).values(quota=20))
    calls = []

    def boom(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("DELETE FROM hourly_usage"):
            calls.append(statement)
            if len(calls) == 3:
                raise Crash("third chunk")

    sa.event.listen(engine, "before_cursor_execute", boom)
    try:
        with pytest.raises(Crash):
            reaggregate(engine, s, lo, lo + 4 * 86400 - 1)
    finally:
        sa.event.remove(engine, "before_cursor_execute", boom)
    from tests.logdata import actual_tables

    daily = {k[1]: v[1] for k, v in actual_tables(engine)["daily_usage"].items()}
    # chunks 1-2 rebuilt (new quota), chunks 3-4 untouched (old quota): never a mix in a day
    assert sorted(daily.values()) == [10, 10, 20, 20]
    assert ids == [1, 2, 3, 4]
    reaggregate(engine, s, lo, lo + 4 * 86400 - 1)  # running it again finishes the job
    assert_exact(engine, TZ)


@integration
def test_a_killed_lock_holder_does_not_stop_the_rollup(server, writer):
    s = cfg(server)
    insert(writer, log(created_at=T))
    holder = writer.connect()
    pid = take_lock(holder)
    assert tick(server, s).skipped
    with writer.connect() as admin:
        if server.dialect.name == "mysql":
            admin.exec_driver_sql(f"KILL {int(pid)}")
        else:
            assert admin.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar_one()
    holder.invalidate()
    holder.close()
    for _ in range(50):  # the backend exits asynchronously
        r = tick(server, s)
        if not r.skipped:
            break
        time.sleep(0.1)
    assert not r.skipped and r.logs == 1
    assert_exact(server, TZ)
