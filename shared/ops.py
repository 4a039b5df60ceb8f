"""The operations the worker, the CLI and the API run, with their metrics: a rollup run,
a re-aggregation, retention. Thin wrappers over shared.rollup and shared.retention."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from . import chunks as _chunks
from . import metrics
from . import retention as _retention
from . import rollup as _rollup
from .buckets import first_split_hour
from .config import Settings
from .migrate import UpgradeResult


def run_rollup(
    engine: Engine, settings: Settings, *, max_seconds: float | None = None, wait: bool = False
) -> _rollup.TickResult:
    """shared.rollup.rollup (ticks until caught up, or for `max_seconds`), counted in the
    tick metrics, failures too."""
    try:
        result = _rollup.rollup(engine, settings, max_seconds=max_seconds, wait=wait)
    except Exception:
        metrics.tick_failed()
        raise
    metrics.observe_tick(result)
    return result


def run_reaggregate(
    engine: Engine,
    settings: Settings,
    start: int,
    end: int,
    user_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    check_every_table: bool = False,
    job: str | None = None,
    share: Callable[[str, int], None] | None = None,
) -> _rollup.ReaggregateResult:
    """shared.rollup.reaggregate, counted in the re-aggregation metrics; `progress(done,
    total)` is called after each chunk. With a `job` id (a worker's task), on a database
    server, its chunks are shared with other workers (shared.chunks): `share(job,
    chunks)` asks for them."""
    with metrics.reaggregation_running():
        if job is not None and engine.dialect.name != "sqlite":
            return _chunks.run_job(
                engine,
                settings,
                job,
                start,
                end,
                user_id,
                check_every_table=check_every_table,
                share=share,
                progress=progress,
            )
        return _rollup.reaggregate(
            engine, settings, start, end, user_id, progress=progress, check_every_table=check_every_table
        )


def help_reaggregate(engine: Engine, settings: Settings, job: str) -> int:
    """Run chunks of another worker's re-aggregation `job` until none is left to take."""
    with metrics.reaggregation_running():
        return _chunks.work(engine, settings, job)


def run_retention(engine: Engine, settings: Settings, now: int | None = None) -> _retention.RetentionResult:
    """shared.retention.run_retention, its deleted rows counted in the metrics."""
    result = _retention.run_retention(engine, settings, now=now if now is not None else int(time.time()))
    metrics.observe_retention(result.deleted)
    return result


def fill_added_summaries(
    engine: Engine,
    settings: Settings,
    upgraded: UpgradeResult,
    progress: Callable[[int, int], None] | None = None,
) -> _rollup.ReaggregateResult | None:
    """After an upgrade that added summary tables, or cut the hourly detail rows' hours at
    midnights that fall inside an hour in STATS_TIMEZONE: fill or rebuild them from the
    raw logs the rollup has counted, by a re-aggregation of the whole history (the tables
    that were right already compare equal and are not rewritten). None when there was
    nothing to do. With RETAIN_LOGS_DAYS set, history older than the raw logs kept is
    left as it is, as it must: its logs are gone."""
    if not (upgraded.added_summaries or upgraded.cut_detail_hours):
        return None
    bounds = rebuildable_history(engine, settings)
    if bounds is None or bounds[1] <= bounds[0]:
        return None
    if not upgraded.added_summaries and first_split_hour(settings.stats_timezone, *bounds) is None:
        return None  # every midnight falls on a UTC hour: the cut hours are the hours
    # New tables cannot agree with the finest one yet: compare each with the logs.
    return run_reaggregate(engine, settings, *bounds, progress=progress, check_every_table=upgraded.added_summaries)


def rebuildable_history(engine: Engine, settings: Settings) -> tuple[int, int] | None:
    """[start, end) of the history a re-aggregation can rebuild from raw logs: all of it,
    or with RETAIN_LOGS_DAYS from the day after the raw-log horizon (older logs may be
    gone: the rows built from them are kept). None when there are no logs."""
    bounds = _rollup.history_bounds(engine)
    if bounds is None:
        return None
    start, end = bounds
    horizon = _retention.logs_horizon(settings, int(time.time()))
    return (start if horizon is None else max(start, horizon + 86400)), end
