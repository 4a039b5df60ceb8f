"""Every Prometheus metric of usage-stats, defined once, and the helpers that move them.

The API and the worker import this module; each serves what it has:
- the API at /metrics (api/ops.py);
- the worker on WORKER_METRICS_PORT (worker/app.py, started when the worker is ready).

Several processes (gunicorn workers, Celery's prefork children) each hold their own
values. Set PROMETHEUS_MULTIPROC_DIR to an empty, writable directory before the
processes start and prometheus_client keeps the values in files there; `registry()`
then collects all processes' files (prometheus_client's multiprocess mode). Without it,
each process serves its own values, which is right for one process (`--pool solo`,
`gunicorn --workers 1`, tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = [
    "CONTENT_TYPE_LATEST",
    "multiprocess_enabled",
    "observe_request",
    "observe_retention",
    "observe_tick",
    "reaggregation_running",
    "registry",
    "render",
    "tick_failed",
]

ROLLUP_LAG_SECONDS = Gauge(
    "usage_stats_rollup_lag_seconds",
    "Seconds since the oldest log not yet rolled up was created (0 when caught up), as of the last tick",
    multiprocess_mode="mostrecent",
)
ROLLUP_LAG_LOGS = Gauge(
    "usage_stats_rollup_lag_logs",
    "Logs not yet rolled up (capped at one million), as of the last tick",
    multiprocess_mode="mostrecent",
)
ROLLUP_LAST_LOG_ID = Gauge(
    "usage_stats_rollup_last_log_id",
    "The rollup's watermark: every log id up to it is counted (except open gaps)",
    multiprocess_mode="mostrecent",
)
LOGS_PROCESSED = Counter("usage_stats_rollup_logs_processed", "Consume logs counted by rollup ticks")
TICK_DURATION = Histogram(
    "usage_stats_rollup_tick_duration_seconds",
    "Wall time of one rollup run (all its batches)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
TICKS = Counter("usage_stats_rollup_ticks", "Rollup runs, by outcome", ["outcome"])  # ran | skipped
TICK_FAILURES = Counter("usage_stats_rollup_tick_failures", "Rollup runs that raised an error")
REAGGREGATIONS_RUNNING = Gauge(
    "usage_stats_reaggregations_running", "Re-aggregations in progress", multiprocess_mode="livesum"
)
REAGGREGATIONS = Counter("usage_stats_reaggregations", "Re-aggregations finished, by outcome", ["outcome"])
RETENTION_DELETED = Counter("usage_stats_retention_deleted_rows", "Rows deleted by retention, by table", ["table"])
API_LATENCY = Histogram(
    "usage_stats_api_request_duration_seconds",
    "API request latency, by route (the URL rule, not the raw path), method and status",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class TickOutcome(Protocol):
    """What `observe_tick` reads of a rollup run (shared.rollup.TickResult)."""

    skipped: bool
    seconds: float
    logs: int
    lag_seconds: int
    logs_behind: int
    last_log_id: int


def multiprocess_enabled() -> bool:
    # prometheus_client still honours the older lower-case name.
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir"))  # noqa: SIM112


def registry() -> CollectorRegistry:
    """What to expose: every process's values in multiprocess mode, else this process's."""
    if not multiprocess_enabled():
        return REGISTRY
    from prometheus_client import multiprocess

    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg)  # type: ignore[no-untyped-call]
    return reg


def render() -> bytes:
    return generate_latest(registry())


def observe_tick(result: TickOutcome) -> None:
    """Record one rollup run."""
    TICKS.labels("skipped" if result.skipped else "ran").inc()
    if result.skipped:
        return
    TICK_DURATION.observe(result.seconds)
    LOGS_PROCESSED.inc(result.logs)
    ROLLUP_LAG_SECONDS.set(result.lag_seconds)
    ROLLUP_LAG_LOGS.set(result.logs_behind)
    ROLLUP_LAST_LOG_ID.set(result.last_log_id)


def tick_failed() -> None:
    TICK_FAILURES.inc()


@contextmanager
def reaggregation_running() -> Iterator[None]:
    REAGGREGATIONS_RUNNING.inc()
    try:
        yield
    except BaseException:
        REAGGREGATIONS.labels("failure").inc()
        raise
    else:
        REAGGREGATIONS.labels("success").inc()
    finally:
        REAGGREGATIONS_RUNNING.dec()


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    API_LATENCY.labels(route, method, str(status)).observe(seconds)


def observe_retention(deleted: dict[str, int]) -> None:
    for table, n in deleted.items():
        RETENTION_DELETED.labels(table).inc(n)
