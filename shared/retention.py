"""Retention, off by default: forget what is old enough not to be needed.

- RETAIN_HOURLY_DAYS=N drops hourly rows (hourly_usage, hourly_model_usage) whose hour
  started more than N days ago; an hour that straddles the horizon stays. Daily rows keep
  all history. hourly_detail_usage, the only rows by key, channel and group, is
  compacted instead: its rows of the local days wholly before the horizon become one row
  per day and key (rollup.compact_to_days), so days, weeks and months by key stay
  exact; rollup_state.hours_kept_from records the horizon, before which answers by the
  hour (or in another zone than STATS_TIMEZONE) read no hourly detail rows.
- RETAIN_LOGS_DAYS=N deletes raw logs created more than N days ago, but only logs the
  rollup has counted: id <= rollup_state.last_log_id and in no rollup_gap range (a log in
  a gap may still be counted later; a log above the watermark is not counted yet).

Everything runs under the rollup's lock (shared.rollup.locked, waiting for it), so it
never interleaves with a tick or a re-aggregation chunk; raw logs go in batches of
ROLLUP_BATCH_SIZE ids, one transaction each, so that ticks run in between.

Re-aggregation rebuilds days from raw logs, so with RETAIN_LOGS_DAYS set it must not
touch days whose logs are gone: `check_reaggregate_range` refuses such a range.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from . import aggregation as agg
from . import models as m
from . import rollup
from .answer_version import bump_generation
from .buckets import HOUR, local_midnight
from .config import Settings
from .rollup import locked

DAY = 86400
log = logging.getLogger("usage_stats.retention")


@dataclass
class RetentionResult:
    deleted: dict[str, int] = field(default_factory=dict)
    compacted: dict[str, int] = field(default_factory=dict)  # hour rows made into whole days
    hourly_before: int | None = None  # hour rows starting before this were dropped
    logs_before: int | None = None  # counted logs created before this were deleted
    seconds: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.hourly_before is not None or self.logs_before is not None


def hourly_horizon(settings: Settings, now: int) -> int | None:
    if not settings.retain_hourly_days:
        return None
    t = now - settings.retain_hourly_days * DAY
    return t - t % HOUR


def logs_horizon(settings: Settings, now: int) -> int | None:
    return now - settings.retain_logs_days * DAY if settings.retain_logs_days else None


def check_reaggregate_range(settings: Settings, start: int, now: int | None = None) -> None:
    """ValueError when [start, ...) reaches back before the raw-log horizon (a re-aggregation
    there would replace good daily rows with sums over deleted logs)."""
    horizon = logs_horizon(settings, int(time.time()) if now is None else now)
    if horizon is not None and start < horizon + DAY:
        # + a day: re-aggregation widens the range to whole local days.
        raise ValueError(
            f"start_timestamp {start} is too old: raw logs older than {settings.retain_logs_days} days "
            f"(RETAIN_LOGS_DAYS) are deleted, so re-aggregation must start after {horizon + DAY}"
        )


def run_retention(engine: Engine, settings: Settings, now: int | None = None) -> RetentionResult:
    now = int(time.time()) if now is None else now
    started = time.perf_counter()
    result = RetentionResult(hourly_before=hourly_horizon(settings, now), logs_before=logs_horizon(settings, now))
    if not result.enabled:
        log.info("retention: off (RETAIN_HOURLY_DAYS and RETAIN_LOGS_DAYS are unset)")
        return result
    if result.hourly_before is not None:
        horizon, tz = result.hourly_before, settings.stats_timezone
        with locked(engine) as conn:
            state = m.rollup_state.c
            kept_from = conn.execute(sa.select(state.hours_kept_from).where(state.id == 1)).scalar()
            for summary in (s for s in agg.SUMMARIES if s.grain == "hour"):
                table = summary.table
                if summary.cut_at_midnight:
                    # Its rows are the only ones by key, channel and group: the local days
                    # wholly before the horizon are compacted, not dropped (from where the
                    # last run stopped: later rows there, of late logs, just stay hours).
                    lo = None if kept_from is None else local_midnight(kept_from, tz)
                    n = rollup.compact_to_days(conn, summary, lo, local_midnight(horizon, tz), tz)
                    result.compacted[table.name] = n
                else:
                    n = conn.execute(sa.delete(table).where(table.c.created_at < horizon)).rowcount
                    result.deleted[table.name] = n
            if kept_from is None or kept_from < horizon:
                conn.execute(sa.update(m.rollup_state).where(state.id == 1).values(hours_kept_from=horizon))
            if any(result.compacted.values()) or any(result.deleted.values()):
                # Rows changed (late hours behind an unchanged horizon included): answers'
                # version moves with them (shared.answer_version).
                bump_generation(conn)
    if result.logs_before is not None:
        result.deleted["logs"] = _delete_counted_logs(engine, settings, result.logs_before)
    result.seconds = time.perf_counter() - started
    log.info(
        "retention: %s in %.3fs",
        ", ".join(
            [
                *(f"{k}={v}" for k, v in result.deleted.items()),
                *(f"{k}={v} compacted" for k, v in result.compacted.items()),
            ]
        ),
        result.seconds,
        extra={
            "event": "retention",
            "deleted": result.deleted,
            "compacted": result.compacted,
            "duration_s": round(result.seconds, 3),
        },
    )
    return result


def _delete_counted_logs(engine: Engine, settings: Settings, before: int) -> int:
    lg, g = m.logs.c, m.rollup_gap.c
    total = 0
    while True:
        with locked(engine) as conn:
            w = conn.execute(sa.select(m.rollup_state.c.last_log_id).where(m.rollup_state.c.id == 1)).scalar() or 0
            counted = sa.and_(
                lg.created_at < before,
                lg.id <= w,
                ~sa.exists().where(lg.id.between(g.lo, g.hi)),
            )
            ids: Any = sa.select(lg.id).where(counted).order_by(lg.id).limit(settings.rollup_batch_size)
            if conn.dialect.name == "mysql":
                # MySQL takes no LIMIT in an IN subquery, nor the target table there:
                # a derived table is read first.
                batch = ids.subquery("batch")
                ids = sa.select(batch.c.id)
            n = conn.execute(sa.delete(m.logs).where(lg.id.in_(ids.scalar_subquery()))).rowcount
        total += n
        if n < settings.rollup_batch_size:
            return total
