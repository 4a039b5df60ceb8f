"""The three tasks; each is a thin call into shared.ops (rollup, re-aggregation,
retention, with their metrics)."""

from __future__ import annotations

import time
from dataclasses import asdict

from celery import current_app, shared_task

from shared import ops
from shared.config import Settings
from shared.db import get_engine

from .app import REAGGREGATE_TASK, RETENTION_TASK, ROLLUP_TASK


def _settings() -> Settings:
    return current_app.conf.usage_stats_settings


@shared_task(name=ROLLUP_TASK, ignore_result=True, soft_time_limit=600, time_limit=660)
def rollup() -> dict:
    """One scheduled tick: catch up, batch by batch, for at most one interval, so that a
    long backlog yields to the next tick instead of running into the time limit. A tick
    that finds another one running skips (the lock lives in the database)."""
    settings = _settings()
    result = ops.run_rollup(
        get_engine(settings.database_url), settings, max_seconds=max(1.0, settings.rollup_interval_seconds * 0.8)
    )
    return asdict(result)


@shared_task(name=REAGGREGATE_TASK, bind=True, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 60)
def reaggregate(self, start: int, end: int, user_id: int | None = None) -> dict:
    """Progress goes to the result backend as state PROGRESS, meta {done, total, started}
    (GET /api/data/reaggregate/<id> reads it); the result adds `finished`."""
    settings = _settings()
    started = time.time()
    self.update_state(state="PROGRESS", meta={"done": 0, "total": None, "started": started})

    def progress(done: int, total: int) -> None:
        self.update_state(state="PROGRESS", meta={"done": done, "total": total, "started": started})

    result = ops.run_reaggregate(
        get_engine(settings.database_url), settings, int(start), int(end), user_id, progress=progress
    )
    return {
        "start": result.start,
        "end": result.end,
        "chunks": result.chunks,
        "logs": result.logs,
        "seconds": result.seconds,
        "done": result.chunks,
        "total": result.chunks,
        "started": started,
        "finished": time.time(),
    }


@shared_task(name=RETENTION_TASK, ignore_result=True, soft_time_limit=3 * 3600, time_limit=3 * 3600 + 60)
def retention() -> dict:
    settings = _settings()
    result = ops.retention(get_engine(settings.database_url), settings)
    return {"deleted": result.deleted, "seconds": result.seconds}
