"""The tasks, registered under the names of the job protocol (shared.jobs); each is a thin
call into shared.ops (rollup, re-aggregation and its helpers, retention, with their
metrics)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from celery import current_app, shared_task

from shared import jobs, ops
from shared.config import Settings
from shared.db import get_engine


def _settings() -> Settings:
    settings: Settings = current_app.conf.usage_stats_settings
    return settings


@shared_task(name=jobs.ROLLUP_TASK, ignore_result=True, soft_time_limit=600, time_limit=660)
def rollup() -> dict[str, Any]:
    """One scheduled run: catch up, batch by batch, for at most one interval, so that a
    long backlog yields to the next run instead of running into the time limit. A run
    that finds another one running skips (the lock lives in the database)."""
    settings = _settings()
    result = ops.run_rollup(
        get_engine(settings.stats_database_url), settings, max_seconds=max(1.0, settings.rollup_interval_seconds * 0.8)
    )
    return asdict(result)


@shared_task(name=jobs.REAGGREGATE_TASK, bind=True, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 60)
def reaggregate(
    self: Any, start: int, end: int, user_id: int | None = None, check_every_table: bool = False
) -> dict[str, Any]:
    """Its record (shared.jobs): PROGRESS with done / total / started while it runs,
    then the result record; GET /api/data/reaggregate/<id> reads it."""
    settings = _settings()
    started = time.time()
    jobs.report_progress(self, 0, None, started)

    def progress(done: int, total: int) -> None:
        jobs.report_progress(self, done, total, started)

    def share(job: str, chunks: int) -> None:
        jobs.ask_for_helpers(current_app, job, min(settings.reaggregate_workers, chunks) - 1)

    result = ops.run_reaggregate(
        get_engine(settings.stats_database_url),
        settings,
        int(start),
        int(end),
        user_id,
        progress=progress,
        check_every_table=bool(check_every_table),
        job=self.request.id,
        share=share,
    )
    return jobs.result_record(result, started, time.time())


@shared_task(name=jobs.REAGGREGATE_HELP_TASK, ignore_result=True, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 60)
def reaggregate_help(job: str) -> int:
    """Chunks of another worker's re-aggregation (shared.chunks)."""
    settings = _settings()
    return ops.help_reaggregate(get_engine(settings.stats_database_url), settings, str(job))


@shared_task(name=jobs.RETENTION_TASK, ignore_result=True, soft_time_limit=3 * 3600, time_limit=3 * 3600 + 60)
def retention() -> dict[str, Any]:
    settings = _settings()
    result = ops.run_retention(get_engine(settings.stats_database_url), settings)
    return {"deleted": result.deleted, "compacted": result.compacted, "seconds": result.seconds}
