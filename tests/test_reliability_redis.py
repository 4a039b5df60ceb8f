"""Issue 6.4: Redis (broker and result backend) killed while the worker and beat run and the
API serves reads; then started again on the same port.

A redis-server of our own (SIGKILLed: no clean shutdown), a Celery worker and a separate
beat process (ticks every second), the real PostgreSQL (throwaway database), a gateway
writing logs throughout, and the API (its reads need only the database):

- while Redis is down, API reads answer 200 with the same rows as a GROUP BY over the
  logs that were rolled up; enqueueing a re-aggregation is a quick JSON 503;
- after Redis is back, the worker and beat reconnect by themselves (neither restarted,
  neither exited): ticks resume, the summary tables equal the GROUP BY over all raw
  consume logs -- nothing lost, nothing counted twice -- and a re-aggregation goes
  through the broker and the result backend to SUCCESS.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from api import create_app
from shared import models as m
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade
from tests.api_support import add_user
from tests.conftest import throwaway_database
from tests.faults.gateway import Gateway
from tests.faults.servers import celery_beat, celery_worker, redis_server, running, service_env, wait_until

pytestmark = pytest.mark.integration

OUTAGE = 6.0


def last_tick_at(engine) -> float:
    with engine.connect() as conn:
        return conn.execute(sa.select(m.rollup_state.c.last_tick_at)).scalar() or 0.0


def test_redis_down_and_back(tmp_path: Path):
    with throwaway_database("usage_stats_redis") as url, redis_server() as redis:
        engine = make_engine(url)
        upgrade(engine)
        admin_token = add_user(engine, 2, "user2", role=m.ROLE_ADMIN)
        user_token = add_user(engine, 1, "user1")
        gateway = Gateway(engine, seed=5)
        env = service_env(
            DATABASE_URL=url, CELERY_BROKER_URL=redis.url, ROLLUP_INTERVAL_SECONDS=1, STATS_TIMEZONE="UTC"
        )
        settings = Settings.from_env(env)
        app = create_app(settings, engine=engine)
        client = app.test_client()
        admin = {"Authorization": f"Bearer {admin_token}", "New-Api-User": "2"}
        user = {"Authorization": f"Bearer {user_token}", "New-Api-User": "1"}
        worker = celery_worker(tmp_path, env, name="worker")
        beat = celery_beat(tmp_path, env)
        try:
            with running(worker, beat):
                gateway.step()
                wait_until(lambda: not gateway.difference(), 60, "the first ticks")

                redis.kill()
                down = time.monotonic()
                reads = 0
                while time.monotonic() - down < OUTAGE:
                    gateway.step()
                    for path, headers in (("/api/data/self", user), ("/api/data/?granularity=day", admin)):
                        r = client.get(path, headers=headers)
                        assert r.status_code == 200, r.get_data(as_text=True)
                        reads += 1
                    time.sleep(0.3)
                started = time.monotonic()
                r = client.post(
                    "/api/data/reaggregate",
                    headers=admin,
                    json={"start_timestamp": gateway.now - 86400, "end_timestamp": gateway.now},
                )
                assert r.status_code == 503 and r.get_json()["success"] is False, r.get_data(as_text=True)
                assert time.monotonic() - started < 15
                assert worker.alive() and beat.alive(), (worker.output()[-2000:], beat.output()[-2000:])

                redis.start()  # the same port
                back = time.monotonic()
                gateway.step()
                ticked = last_tick_at(engine)
                wait_until(lambda: not gateway.difference(), 90, "the ticks to resume after Redis came back")
                resumed = time.monotonic() - back
                # Ticks go on (not one catch-up tick): the watermark's tick time keeps moving.
                for _ in range(3):
                    ticked = wait_until(
                        lambda t=ticked: (last_tick_at(engine) > t) and last_tick_at(engine), 30, "another tick"
                    )
                gateway.step()
                gateway.close()
                wait_until(lambda: not gateway.difference(), 30, "the last logs to be rolled up")

                # The result backend and the broker work again for the API too.
                r = client.post(
                    "/api/data/reaggregate",
                    headers=admin,
                    json={"start_timestamp": gateway.now - 8 * 86400, "end_timestamp": gateway.now + 3600},
                )
                assert r.status_code == 202, r.get_data(as_text=True)
                status_url = r.get_json()["data"]["status_url"]
                final = wait_until(
                    lambda: (
                        (client.get(status_url, headers=admin).get_json()["data"]["state"] in ("SUCCESS", "FAILURE"))
                        and client.get(status_url, headers=admin).get_json()
                    ),
                    60,
                    "the re-aggregation to finish",
                )
                assert final["data"]["state"] == "SUCCESS", final
                assert not gateway.difference()
                assert worker.alive() and beat.alive()
            assert gateway.counted() == gateway.consume_logs() == gateway.committed
            print(
                f"\n[reliability] Redis down {OUTAGE:.0f}s: {reads} API reads answered 200 during the outage; ticks "
                f"exact {resumed:.1f}s after Redis came back; {gateway.committed} consume logs, counted "
                f"{gateway.counted()}, lost 0"
            )
        finally:
            engine.dispose()
