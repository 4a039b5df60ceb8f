"""The Celery app, built from the same Settings as everything else."""
from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from shared.config import Settings
from shared.db import dispose_engines

ROLLUP_TASK = "usage_stats.rollup"
REAGGREGATE_TASK = "usage_stats.reaggregate"


def make_celery(settings: Settings) -> Celery:
    app = Celery("usage_stats", broker=settings.celery_broker_url, backend=settings.celery_result_backend)
    app.conf.update(
        usage_stats_settings=settings,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        broker_connection_retry_on_startup=True,
        # One task at a time per process: a tick should not sit prefetched behind a
        # long re-aggregation.
        worker_prefetch_multiplier=1,
        # Both tasks are idempotent (the rollup's state lives in the database), so a
        # task whose worker died is delivered again rather than lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        result_extended=True,
        beat_schedule={
            "rollup": {
                "task": ROLLUP_TASK,
                "schedule": float(settings.rollup_interval_seconds),
                # A tick that could not start within one interval is superseded by the
                # next: drop it rather than let ticks pile up behind a busy worker.
                "options": {"expires": float(settings.rollup_interval_seconds)},
            }
        },
    )
    return app


@worker_process_init.connect
def _fresh_engines_after_fork(**_):
    # Connections must never be shared across a fork.
    dispose_engines()
