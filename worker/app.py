"""The worker's Celery app: the shared app (shared.jobs.celery_app) plus what only the
worker needs -- reconnecting forever, late acknowledgement, beat's schedule -- and the
signals: engines after a fork, logging, metrics, the heartbeat `usage-stats status` reads."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.schedules import crontab
from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from shared import jobs
from shared.config import Settings
from shared.db import dispose_engines

# The task names live with the job protocol (shared.jobs); here for the worker's modules.
ROLLUP_TASK = jobs.ROLLUP_TASK
REAGGREGATE_TASK = jobs.REAGGREGATE_TASK
RETENTION_TASK = jobs.RETENTION_TASK

log = logging.getLogger("usage_stats.worker")


def make_celery(settings: Settings) -> Celery:
    app = jobs.celery_app(settings)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        # Keep reconnecting for as long as the broker is down (Celery's default gives up
        # after 100 attempts and the worker exits); ticks resume when it is back.
        broker_connection_max_retries=None,
        # One task at a time per process: a tick should not sit prefetched behind a
        # long re-aggregation.
        worker_prefetch_multiplier=1,
        # Both tasks are idempotent (the rollup's state lives in the database), so a
        # task whose worker died is delivered again rather than lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        beat_schedule={
            "rollup": {
                "task": ROLLUP_TASK,
                "schedule": float(settings.rollup_interval_seconds),
                # A tick that could not start within one interval is superseded by the
                # next: drop it rather than let ticks pile up behind a busy worker.
                "options": {"expires": float(settings.rollup_interval_seconds)},
            },
            # Daily, at a quiet hour (UTC); a no-op unless RETAIN_* is set (shared.retention).
            "retention": {
                "task": RETENTION_TASK,
                "schedule": crontab(minute=17, hour=3),
                "options": {"expires": 3600.0},
            },
        },
    )
    return app


def _fresh_engines_after_fork(**_: Any) -> None:
    # Connections must never be shared across a fork.
    dispose_engines()


def _logging(loglevel: Any = None, **_: Any) -> None:
    # Connected, so Celery leaves the root logger to us: LOG_FORMAT applies to the
    # worker's and beat's lines as to the API's (shared.logging_setup); --loglevel holds.
    from shared.logging_setup import configure

    level = loglevel if isinstance(loglevel, int) else logging.getLevelName(str(loglevel or "INFO").upper())
    configure(Settings.from_env().log_format, level=level if isinstance(level, int) else logging.INFO)


def _serve_metrics(sender: Any = None, **_: Any) -> None:
    """WORKER_METRICS_PORT set: serve the worker's metrics there (from the main process).
    With a prefork pool the tasks run in child processes: set PROMETHEUS_MULTIPROC_DIR so
    their values are collected from files (shared.metrics)."""
    settings = sender.app.conf.get("usage_stats_settings") if sender is not None else None
    port = settings.worker_metrics_port if settings is not None else 0
    if not port:
        return
    from prometheus_client import start_http_server

    from shared import metrics

    # The sender is the worker's Consumer; its pool tells whether tasks run in children.
    pool = type(getattr(sender, "pool", None)).__module__
    if not metrics.multiprocess_enabled() and "prefork" in pool:
        log.warning("prefork pool without PROMETHEUS_MULTIPROC_DIR: task metrics of child processes are not served")
    start_http_server(port, registry=metrics.registry())
    log.info("worker metrics on :%d/metrics", port)


_heartbeat: jobs.Heartbeat | None = None


def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """The worker's record for `usage-stats status` (shared.jobs.Heartbeat), written from
    the main process, which knows the tasks running in every pool process."""
    global _heartbeat
    settings = sender.app.conf.get("usage_stats_settings") if sender is not None else None
    if settings is None:
        return
    _heartbeat = jobs.Heartbeat(settings, sender.hostname)
    _heartbeat.start()


def _stop_heartbeat(**_: Any) -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None


def _metrics_process_dead(pid: int | None = None, **_: Any) -> None:
    from shared import metrics

    if metrics.multiprocess_enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


# Connected by call rather than as decorators, which would leave the handlers untyped.
worker_process_init.connect(_fresh_engines_after_fork)
setup_logging.connect(_logging)
worker_ready.connect(_serve_metrics)
worker_ready.connect(_start_heartbeat)
worker_shutdown.connect(_stop_heartbeat)
worker_process_shutdown.connect(_metrics_process_dead)
