"""The two tasks; each is a thin call into shared.rollup."""
from __future__ import annotations

from dataclasses import asdict

from celery import current_app, shared_task

from shared import rollup as engine_rollup
from shared.config import Settings
from shared.db import get_engine

from .app import REAGGREGATE_TASK, ROLLUP_TASK


def _settings() -> Settings:
    return current_app.conf.usage_stats_settings


@shared_task(name=ROLLUP_TASK, ignore_result=True, soft_time_limit=600, time_limit=660)
def rollup() -> dict:
    """One scheduled tick: catch up, batch by batch, for at most one interval, so that a
    long backlog yields to the next tick instead of running into the time limit. A tick
    that finds another one running skips (the lock lives in the database)."""
    settings = _settings()
    result = engine_rollup.rollup(
        get_engine(settings.database_url), settings, max_seconds=max(1.0, settings.rollup_interval_seconds * 0.8)
    )
    return asdict(result)


@shared_task(name=REAGGREGATE_TASK, bind=True, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 60)
def reaggregate(self, start: int, end: int, user_id: int | None = None) -> dict:
    settings = _settings()

    def progress(done: int, total: int) -> None:
        self.update_state(state="PROGRESS", meta={"done": done, "total": total})

    result = engine_rollup.reaggregate(
        get_engine(settings.database_url), settings, int(start), int(end), user_id, progress=progress
    )
    return {"start": result.start, "end": result.end, "chunks": result.chunks, "logs": result.logs, "seconds": result.seconds}
