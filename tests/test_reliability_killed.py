"""Issue 6.1: a real Celery worker killed with SIGKILL in the middle of a tick, at every
point of it; once restarted, the summary tables equal a GROUP BY over the raw consume logs.

The worker is the project's own app run as `celery -A tests.faults.killer worker`: that
module adds only SQLAlchemy event listeners that SIGKILL the process at the n-th event
of a rollup task (before / after each statement, at each commit, after the task
returned and before Celery acknowledged it). The database (a throwaway PostgreSQL
database, then a throwaway MariaDB one: every test runs on both) and the broker (a
redis-server of our own) are real.

- prefork (the default pool): the process running the tick is the pool's child; the
  worker forks a new one and the tick is delivered again (acks_late). One kill between
  every two statements of a tick (found by recording one first, with the late-commit
  paths taken: 22 points on PostgreSQL, 40 on MariaDB, whose tick also copies the logs,
  reads innodb_trx and drops the copy), at every commit, and after the task returned;
  and five kills from outside while a statement of the tick is executing on the server
  (held there by a row lock the test holds: FOR UPDATE, on InnoDB as on PostgreSQL):
  during each INSERT ... ON CONFLICT (ON DUPLICATE KEY UPDATE) into four summary
  tables (on PostgreSQL the tick's one statement, held in each of those upserts), and during the UPDATE that saves the watermark. On MariaDB a sixth, during the
  tick's one read of the logs (a consistent read no row lock holds: LOCK TABLES does).
  The statement is seen waiting in pg_stat_activity, or in information_schema (innodb_trx
  in LOCK WAIT, or the processlist waiting for a metadata lock).
- solo: the whole worker process dies; the test starts a new worker, as a supervisor
  would. The points: the lock (pg_try_advisory_lock, GET_LOCK), the aggregation, the
  watermark, the commit, the unlock; on MariaDB also the copy of the logs.

Every round also commits a log whose id was taken a round earlier (a late commit, a
gap to fill), opens a new one (a gap to remember), and writes old timestamps.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade
from tests.conftest import throwaway_database
from tests.faults.gateway import FIXED_MODEL, FIXED_USER, Gateway
from tests.faults.servers import celery_worker, redis_server, running, service_env, wait_until

pytestmark = pytest.mark.integration

ROUND_TIMEOUT = 30  # seconds for one kill or one recovery: a hang detector, not a speed test


class Harness:
    def __init__(self, folder: Path, url: str, broker: str):
        from worker import make_celery
        from worker.app import ROLLUP_TASK

        self.folder = folder
        self.engine = make_engine(url)
        upgrade(self.engine)
        self.env = service_env(
            DATABASE_URL=url,
            CELERY_BROKER_URL=broker,
            KILLER_DIR=folder,
            ROLLUP_INTERVAL_SECONDS=3600,
            STATS_TIMEZONE="UTC",
        )
        self.client = make_celery(Settings.from_env(self.env))
        self.task = ROLLUP_TASK
        self.gateway = Gateway(self.engine, seed=6)
        self.kills = []  # (pool, what) of every kill that happened
        self.round = 0

    def tick(self) -> str:
        return self.client.send_task(self.task).id

    def done(self, task_id: str, timeout: float = ROUND_TIMEOUT) -> dict:
        path = self.folder / f"done-{task_id}.json"
        return json.loads(wait_until(lambda: path.exists() and path.read_text(), timeout, f"tick {task_id} to finish"))

    def plan(self, event: int) -> int:
        self.round += 1
        (self.folder / "plan.json").write_text(json.dumps({"id": self.round, "event": event}))
        return self.round

    def killed(self, round_id: int) -> dict:
        path = self.folder / f"killed-{round_id}.json"
        return json.loads(
            wait_until(lambda: path.exists() and path.read_text(), ROUND_TIMEOUT, f"the kill of round {round_id}")
        )

    def recover(self, where: str, redelivered: str | None = None) -> None:
        """Ticks, one at a time, until the tables are exact again: nothing lost, nothing
        counted twice. `redelivered`: the killed task, which the worker runs again first.
        Each tick is waited for, so no tick is left queued or running afterwards (the next
        round's plan must go to the tick the test sends for it)."""
        if redelivered is not None:
            self.done(redelivered)
            if not self.gateway.difference():
                return
        deadline = time.monotonic() + ROUND_TIMEOUT
        while time.monotonic() < deadline:
            self.done(self.tick())
            if not self.gateway.difference():
                return
            time.sleep(0.2)  # e.g. a killed backend still holds the lock: the tick skipped
        pytest.fail(f"not exact {ROUND_TIMEOUT}s after a kill {where}:\n{self.gateway.difference()}")

    def record_tick(self) -> list[str]:
        """The events of one ordinary tick over one round of gateway writes."""
        self.gateway.step()
        planned = self.plan(0)
        done = self.done(self.tick())
        assert done["plan"] == planned
        self.recover("(none: recording)")
        return done["events"]

    def close(self):
        self.gateway.close()
        self.engine.dispose()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# A session of this database whose statement starting so waits for a lock. (On PostgreSQL
# a tick's upserts are the CTEs of its one statement WITH rollup_delta AS ..., longer than
# pg_stat_activity shows: blocked by the row the test locked, it is in that table's.)
BLOCKED = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND (query LIKE :q OR (:q LIKE 'INSERT INTO %' AND query LIKE 'WITH rollup_delta %'))",
    # A row lock wait is innodb_trx's; a table (metadata) lock wait is the processlist's.
    "mysql": "SELECT count(*) FROM information_schema.PROCESSLIST p LEFT JOIN information_schema.INNODB_TRX t "
    "ON t.trx_mysql_thread_id = p.ID WHERE p.DB = DATABASE() AND p.INFO LIKE :q "
    "AND (t.trx_state = 'LOCK WAIT' OR p.STATE = 'Waiting for table metadata lock')",
}


def blocked_backend(engine, statement_prefix: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.text(BLOCKED[engine.dialect.name]), {"q": statement_prefix + "%"}).scalar())


# Statements held mid-execution by a row lock the test takes first: (statement, lock).
DURING = [
    (
        "INSERT INTO hourly_usage",
        "SELECT 1 FROM hourly_usage WHERE user_id = :u AND model_name = :m AND created_at = :h FOR UPDATE",
    ),
    (
        "INSERT INTO hourly_model_usage",
        "SELECT 1 FROM hourly_model_usage WHERE model_name = :m AND created_at = :h FOR UPDATE",
    ),
    (
        "INSERT INTO daily_usage",
        "SELECT 1 FROM daily_usage WHERE user_id = :u AND model_name = :m AND created_at = :d FOR UPDATE",
    ),
    (
        "INSERT INTO daily_model_usage",
        "SELECT 1 FROM daily_model_usage WHERE model_name = :m AND created_at = :d FOR UPDATE",
    ),
    ("UPDATE rollup_state", "SELECT 1 FROM rollup_state FOR UPDATE"),
]
# MariaDB: the tick reads the logs once, into its copy of them (shared.rollup), with a
# consistent read that no row lock holds; a table lock does (a metadata lock wait).
DURING_READ = {"mysql": [("CREATE TEMPORARY TABLE rollup_logs", "LOCK TABLES logs WRITE")]}


def kill_during(h: Harness, statement: str, lock_sql: str, worker_pid=None) -> str:
    """SIGKILL the process running the tick while `statement` executes on the server."""
    h.gateway.step()
    table_lock = lock_sql.startswith("LOCK TABLES")
    if table_lock:
        h.gateway.close()  # its open transaction holds a metadata lock on logs: LOCK TABLES would wait
    fixed = h.gateway.fixed_at
    locker = h.engine.connect()
    tx = locker.begin()
    try:
        if table_lock:
            locker.exec_driver_sql(lock_sql)
        else:
            held = locker.execute(
                sa.text(lock_sql),
                {"u": FIXED_USER, "m": FIXED_MODEL, "h": fixed - fixed % 3600, "d": fixed - fixed % 86400},
            ).all()
            assert held, f"nothing to lock for {statement}"
        (h.folder / "tick-pid").unlink(missing_ok=True)
        task_id = h.tick()
        wait_until(lambda: blocked_backend(h.engine, statement), ROUND_TIMEOUT, f"the tick to block in {statement}")
        pid = worker_pid or int((h.folder / "tick-pid").read_text())
        os.kill(pid, signal.SIGKILL)
        if worker_pid is None:  # a prefork child, reaped by the worker (the caller waits for its own child)
            wait_until(lambda: not pid_alive(pid), ROUND_TIMEOUT, f"pid {pid} to die")
    finally:
        if table_lock:
            locker.exec_driver_sql("UNLOCK TABLES")
        tx.rollback()
        locker.close()
    h.kills.append(("during", statement))
    return task_id


# tests.conftest.throwaway_database's dialect of each database the tests run on.
DATABASES = {"postgresql": "postgresql", "mariadb": "mysql"}


@pytest.fixture(params=list(DATABASES))
def harness(request, tmp_path):
    with throwaway_database("usage_stats_kill", DATABASES[request.param]) as url, redis_server() as redis:
        h = Harness(tmp_path, url, redis.url)
        assert h.engine.dialect.name == DATABASES[request.param]
        try:
            yield h
        finally:
            h.close()


def test_prefork_child_killed_at_every_event_of_a_tick(harness):
    h = harness
    worker = celery_worker(h.folder, h.env, app="tests.faults.killer", pool="prefork", name="prefork")
    with running(worker):
        h.gateway.step()  # a first tick: state initialised, one gap remembered
        h.recover("(none: warm-up)")
        events = h.record_tick()
        assert len(events) >= 20 and events[-1] == "postrun", events
        # Between every two statements, at each commit, and after the task returned. (The
        # "after" of a statement and the "before" of the next are one point for the
        # database: only the "before"s are taken, and the "after" of the last statement.)
        points = [
            (n, what) for n, what in enumerate(events, 1) if not what.startswith("after ") or events[n] == "postrun"
        ]
        for n, what in points:
            h.gateway.step()
            planned = h.plan(n)
            task_id = h.tick()
            got = h.killed(planned)
            assert got["what"] == what, f"round {h.round}: killed at {got['what']!r}, meant {what!r}"
            wait_until(lambda: not pid_alive(got["pid"]), ROUND_TIMEOUT, "the killed child to be gone")
            h.kills.append(("prefork", what))
            # The worker forks a new child and runs the killed tick again (acks_late).
            h.recover(f"at event {n} ({what})", redelivered=task_id)
        during = DURING + DURING_READ.get(h.engine.dialect.name, [])
        for statement, lock_sql in during:
            task_id = kill_during(h, statement, lock_sql)
            h.recover(f"during {statement}", redelivered=task_id)
        assert worker.alive(), worker.output()[-3000:]
        h.gateway.close()
        h.recover("after the last late writer committed")
    assert h.gateway.counted() == h.gateway.consume_logs() == h.gateway.committed
    print(
        f"\n[reliability] {h.engine.dialect.name} prefork kills: {len(h.kills)} ({len(points)} points of a tick + {len(during)} during statements); "
        f"consume logs {h.gateway.committed}, counted {h.gateway.counted()}, lost 0"
    )
    assert len(h.kills) >= 20


# Points at which the whole (solo) worker dies: the first statement (the lock), the
# aggregation, the watermark before and after it is saved, the commit (right after the
# watermark, added by the test), after the commit (the unlock), after the task. On
# MariaDB also the one read of the logs (the tick's copy of them).
SOLO_POINTS = {
    "postgresql": (
        "before SELECT pg_try_advisory_lock",
        "before WITH rollup_delta",  # the aggregation and every upsert, one statement
        "before UPDATE rollup_state",
        "after UPDATE rollup_state",
        "before SELECT pg_advisory_unlock",
        "postrun",
    ),
    "mysql": (
        "before SELECT GET_LOCK",
        "before CREATE TEMPORARY TABLE rollup_logs",
        "before INSERT INTO rollup_delta",
        "before INSERT INTO hourly_usage",
        "before UPDATE rollup_state",
        "after UPDATE rollup_state",
        "before SELECT RELEASE_LOCK",
        "postrun",
    ),
}


def test_solo_worker_killed_mid_tick_and_restarted(harness):
    h = harness
    start = celery_worker(h.folder, h.env, app="tests.faults.killer", pool="solo", name="solo-0")
    workers = [start]
    try:
        start.start()
        h.gateway.step()
        h.recover("(none: warm-up)")
        events = h.record_tick()
        solo_points = SOLO_POINTS[h.engine.dialect.name]
        points = [events.index(next(e for e in events if e.startswith(p))) + 1 for p in solo_points]
        saved = solo_points.index("after UPDATE rollup_state")
        commit_index = points[saved] + 1  # the commit right after the watermark was saved
        assert events[commit_index - 1] == "commit", events
        points.insert(saved + 1, commit_index)
        for i, n in enumerate(points, 1):
            current = workers[-1]
            h.gateway.step()
            planned = h.plan(n)
            h.tick()
            got = h.killed(planned)
            assert got["what"] == events[n - 1]
            assert got["pid"] == current.pid
            current.proc.wait(timeout=ROUND_TIMEOUT)
            assert current.proc.returncode == -signal.SIGKILL
            h.kills.append(("solo", events[n - 1]))
            restarted = celery_worker(h.folder, h.env, app="tests.faults.killer", pool="solo", name=f"solo-{i}")
            workers.append(restarted.start())
            h.recover(f"after a restart (killed at {events[n - 1]})")
        # And from outside, while the tick's INSERT into daily_usage runs on the server.
        current = workers[-1]
        kill_during(h, *DURING[2], worker_pid=current.pid)
        current.proc.wait(timeout=ROUND_TIMEOUT)
        workers.append(celery_worker(h.folder, h.env, app="tests.faults.killer", pool="solo", name="solo-last").start())
        h.recover("after a restart (killed during INSERT INTO daily_usage)")
        h.gateway.close()
        h.recover("after the last late writer committed")
    finally:
        for w in workers:
            w.stop(timeout=10)
    assert h.gateway.counted() == h.gateway.consume_logs() == h.gateway.committed
    print(
        f"\n[reliability] {h.engine.dialect.name} solo worker kills: {len(h.kills)}; "
        f"consume logs {h.gateway.committed}, lost 0"
    )
    assert len(h.kills) == len(solo_points) + 2
