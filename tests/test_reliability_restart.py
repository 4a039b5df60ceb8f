"""Issue 6.3: PostgreSQL restarted while the API serves requests and the worker ticks.

A PostgreSQL of our own (initdb in a temporary folder, a free port), a redis-server of our
own, the API under gunicorn (2 workers), a Celery worker and beat (ticks every second),
a gateway writing logs, and two threads polling the API without pause. PostgreSQL is then
stopped (pg_ctl -m fast: sessions are terminated), left down for 3 s, started again:

- every answer is JSON, never HTML, never a traceback, never a connection reset;
- during the outage, every answer of a route that needs the database is 503 in the
  failure shape {"success": false, "message": ...}; /healthz stays 200;
- from 5 s after PostgreSQL is back, every answer is the normal one (200);
- the worker's ticks resume: the summary tables equal the GROUP BY over the raw consume
  logs written before, during (refused) and after the outage.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared import models as m
from shared.db import make_engine
from shared.migrate import upgrade
from tests.api_support import add_user
from tests.faults.gateway import Gateway
from tests.faults.http import Poller
from tests.faults.servers import (
    celery_worker,
    free_port,
    gunicorn,
    pg_server,
    redis_server,
    running,
    service_env,
    wait_http,
    wait_until,
)

pytestmark = pytest.mark.integration

OUTAGE = 3.0
RECOVERY = 5.0  # the issue's bound: normal answers within 5 s after PostgreSQL is back
NEEDS_DB = ("/api/data/self", "/api/data/", "/readyz")


class Writer(threading.Thread):
    """The gateway keeps writing; while PostgreSQL is down its writes fail (and are not logs)."""

    def __init__(self, gateway: Gateway):
        super().__init__(daemon=True)
        self.gateway = gateway
        self.stop = threading.Event()
        self.failures = 0

    def run(self):
        while not self.stop.is_set():
            try:
                self.gateway.step(3)
            except sa.exc.DBAPIError:
                self.failures += 1
                if self.gateway.late is not None:  # its session died with the server: never committed
                    self.gateway.late[0].invalidate()
                    self.gateway.late = None
            time.sleep(0.1)


def test_postgres_restart_under_load(tmp_path: Path):
    with pg_server() as pg, redis_server() as redis:
        url = pg.create_database("usage")
        engine = make_engine(url)
        upgrade(engine)
        user_token = add_user(engine, 1, "user1")
        admin_token = add_user(engine, 2, "user2", role=m.ROLE_ADMIN)
        gateway = Gateway(engine, seed=3)
        for _ in range(5):
            gateway.step()
        env = service_env(
            DATABASE_URL=url, CELERY_BROKER_URL=redis.url, ROLLUP_INTERVAL_SECONDS=1, STATS_TIMEZONE="UTC"
        )
        port = free_port()
        api = gunicorn(tmp_path, env, port, workers=2)
        worker = celery_worker(tmp_path, env, beat=True)
        requests = [
            ("/api/data/self", {"Authorization": f"Bearer {user_token}", "New-Api-User": "1"}),
            ("/api/data/?granularity=day", {"Authorization": f"Bearer {admin_token}", "New-Api-User": "2"}),
            ("/api/data/?username=user1", {"Authorization": f"Bearer {admin_token}", "New-Api-User": "2"}),
            ("/readyz", {}),
            ("/healthz", {}),
        ]
        writer = Writer(Gateway(make_engine(url), seed=4))
        try:
            with running(api, worker):
                wait_http(port)
                gateway.close()  # its late writer commits now: the writer thread keeps one open from here
                wait_until(lambda: not gateway.difference(), 60, "the first ticks")
                writer.start()
                with Poller(port, requests, threads=2) as poller:
                    time.sleep(2)
                    pg.stop("fast")
                    down = time.monotonic()
                    time.sleep(OUTAGE)
                    up_begin = time.monotonic()
                    pg.start()
                    up = time.monotonic()
                    time.sleep(RECOVERY + 3)
                writer.stop.set()
                writer.join(30)
                writer.gateway.close()  # the late writer opened after the restart commits
                answers = list(poller.answers)

                # Every answer: JSON, one of the two shapes, no HTML, no traceback.
                for a in answers:
                    assert not a.error, f"{a.path}: no HTTP answer: {a.error}"
                    assert a.content_type.startswith("application/json"), (
                        a.path,
                        a.status,
                        a.content_type,
                        a.text[:300],
                    )
                    assert "<html" not in a.text.lower() and "Traceback" not in a.text, (a.path, a.text[:300])
                    assert a.status in (200, 503), (a.path, a.status, a.text[:300])
                    if a.status == 503:
                        assert a.is_failure_shape(), a.text
                    if a.path == "/healthz":
                        assert a.status == 200
                during = [a for a in answers if a.started >= down and a.finished <= up_begin]
                db_during = [a for a in during if a.path.startswith(NEEDS_DB)]
                assert len(db_during) >= 10, f"too few answers during the outage: {len(db_during)}"
                bad = [
                    (a.path, a.status, a.text[:200]) for a in db_during if a.status != 503 or not a.is_failure_shape()
                ]
                assert not bad, f"answers during the outage that are not a JSON 503: {bad[:5]}"
                after = [a for a in answers if a.started >= up + RECOVERY]
                assert len(after) >= 10, f"too few answers after the recovery bound: {len(after)}"
                bad = [(a.path, a.status, a.text[:200]) for a in after if a.status != 200]
                assert not bad, f"not normal {RECOVERY}s after PostgreSQL came back: {bad[:5]}"
                first_ok = min(
                    (
                        a.finished - up
                        for a in answers
                        if a.started >= up and a.status == 200 and a.path.startswith(NEEDS_DB)
                    ),
                    default=None,
                )

                # The worker's ticks resume, and nothing written before or after is lost.
                wait_until(lambda: not gateway.difference(), 60, "the ticks to catch up after the restart")
                assert worker.alive() and api.alive()
            assert "Traceback" not in api.output(), api.output()[-3000:]
            assert writer.failures > 0  # the gateway did see the outage
            print(
                f"\n[reliability] PostgreSQL restart: {len(answers)} answers, {len(db_during)} JSON 503 during "
                f"the outage, first normal answer {first_ok:.2f}s after PostgreSQL was back; "
                f"{gateway.consume_logs()} consume logs, counted {gateway.counted()}, lost 0"
            )
            assert gateway.counted() == gateway.consume_logs()
        finally:
            writer.stop.set()
            engine.dispose()
