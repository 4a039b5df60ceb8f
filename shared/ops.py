"""The operations the worker, the CLI and the API run, with their metrics: a rollup run,
a re-aggregation, retention. Thin wrappers over shared.rollup and shared.retention."""

from __future__ import annotations

import time

from sqlalchemy.engine import Engine

from . import metrics
from . import rollup as _rollup
from .config import Settings
from .retention import RetentionResult, run_retention


def run_rollup(engine: Engine, settings: Settings, *, max_seconds: float | None = None, wait: bool = False):
    """shared.rollup.rollup, counted in the tick metrics (failures too)."""
    try:
        result = _rollup.rollup(engine, settings, max_seconds=max_seconds, wait=wait)
    except Exception:
        metrics.tick_failed()
        raise
    metrics.observe_tick(result)
    return result


def run_reaggregate(
    engine: Engine, settings: Settings, start: int, end: int, user_id: int | None = None, progress=None
):
    with metrics.reaggregation_running():
        return _rollup.reaggregate(engine, settings, start, end, user_id, progress=progress)


def retention(engine: Engine, settings: Settings, now: int | None = None) -> RetentionResult:
    result = run_retention(engine, settings, now=now if now is not None else int(time.time()))
    metrics.observe_retention(result.deleted)
    return result
