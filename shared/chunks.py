"""A re-aggregation's chunks, shared by several workers through the database.

In one sentence: the job writes one `rollup_chunk` row per chunk of days, asks other
workers to help, and then every one of them -- the job included -- takes a chunk nobody
holds, runs it (shared.rollup: the aggregation without the rollup's lock, the write
under it, `done_at` set in the write's transaction), and takes the next, until none is
left; the job then waits for the chunks others hold and deletes its rows.

Why it is safe:
- Holding a chunk is a lock of the database tied to the holder's connection
  (PostgreSQL's advisory lock, MySQL's GET_LOCK): a worker killed mid-chunk (kill -9, a
  lost machine) releases it when its connection drops, and the chunk is run again by
  whoever takes it next. Running a chunk twice is harmless: its write makes the days'
  rows equal their counted logs, and commits with its done_at or not at all.
- Chunks beside ticks and beside each other: a chunk compares its days without the lock
  and writes under it, adding what ticks counted since (shared.rollup's docstring). Its
  comparison still holds only if nothing but ticks wrote its days meanwhile: every other
  write moves rollup_state.generation by one, and a chunk records the generation its
  write moved to, so the write phase counts the moves made by the job's chunks whose
  hours do not meet its own (in a half-hour zone neighbours share an hour); any other
  move, and the chunk compares again under the lock.
- The job is delivered again if its worker dies (Celery's late acknowledgement): it
  finds its rows, and only the chunks not done yet are run.
SQLite has one writer at a time: there the job runs its chunks alone (shared.ops).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import models as m
from .buckets import HOUR
from .config import Settings
from .rollup import ReaggregateResult, _reaggregate_days, day_chunks

log = logging.getLogger("usage_stats.chunks")

# pg_try_advisory_lock(CHUNK_LOCK_CLASS, key): the two-key space, apart from the rollup's
# one-key lock ("usac").
CHUNK_LOCK_CLASS = 0x75736163
# A job's rows left behind by a job that never came back are deleted after this long.
FORGET_AFTER = 2 * 86400
# How often the job looks again at chunks others hold.
POLL_SECONDS = 0.5

c = m.rollup_chunk.c


def plan(
    engine: Engine, settings: Settings, job: str, start: int, end: int, user_id: int | None, check_every_table: bool
) -> int:
    """The job's chunks as rows (those not there yet: a job delivered again keeps what it
    did). Returns how many chunks the job has."""
    _, bounds = day_chunks(start, end, settings)
    now = int(time.time())
    with engine.begin() as conn:
        conn.execute(sa.delete(m.rollup_chunk).where(c.created_at < now - FORGET_AFTER))
        have = set(conn.execute(sa.select(c.lo).where(c.job == job)).scalars())
        rows = [
            {
                "job": job,
                "lo": lo,
                "hi": hi,
                "user_id": user_id,
                "check_every_table": check_every_table,
                "created_at": now,
            }
            for lo, hi in bounds
            if lo not in have
        ]
        if rows:
            conn.execute(sa.insert(m.rollup_chunk), rows)
    return len(bounds)


def work(
    engine: Engine,
    settings: Settings,
    job: str,
    *,
    until_done: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Run the job's chunks that nobody holds, one after another; returns how many this
    worker ran. A helper stops when every chunk left is held by someone; the job
    (`until_done`) keeps looking until every chunk is done, taking over the chunks of
    workers that died."""
    ran = 0
    while True:
        with engine.connect() as conn:
            pending = conn.execute(
                sa.select(c.lo, c.hi, c.user_id, c.check_every_table)
                .where(c.job == job, c.done_at.is_(None))
                .order_by(c.lo)
            ).all()
            if progress:
                total = conn.execute(sa.select(sa.func.count()).where(c.job == job)).scalar_one()
                progress(total - len(pending), total)
        if not pending:
            return ran
        took = False
        for lo, hi, user_id, check_every_table in pending:
            with holding(engine, job, lo) as held:
                if not held or _is_done(engine, job, lo):
                    continue
                _run(engine, settings, job, lo, hi, user_id, bool(check_every_table))
                ran += 1
                took = True
        if not took:
            if not until_done:
                return ran
            time.sleep(POLL_SECONDS)


def finish(engine: Engine, job: str, result: ReaggregateResult) -> ReaggregateResult:
    """The job's totals from its rows, then its rows deleted."""
    with engine.begin() as conn:
        chunks, logs = conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(c.logs), 0)).where(c.job == job)
        ).one()
        conn.execute(sa.delete(m.rollup_chunk).where(c.job == job))
    result.chunks, result.logs = int(chunks), int(logs)
    return result


def run_job(
    engine: Engine,
    settings: Settings,
    job: str,
    start: int,
    end: int,
    user_id: int | None = None,
    *,
    check_every_table: bool = False,
    share: Callable[[str, int], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReaggregateResult:
    """shared.rollup.reaggregate's work, shared: plan the chunks, `share(job, chunks)`
    (ask for helpers), work until every chunk is done."""
    started = time.perf_counter()
    days, _ = day_chunks(start, end, settings)
    total = plan(engine, settings, job, start, end, user_id, check_every_table)
    if share is not None:
        share(job, total)
    ran = work(engine, settings, job, until_done=True, progress=progress)
    result = finish(engine, job, ReaggregateResult(start=days[0], end=days[-1], days=days))
    result.seconds = time.perf_counter() - started
    log.info(
        "reaggregate [%d, %d) user=%s: chunks=%d (%d here) logs=%d duration=%.3fs",
        result.start,
        result.end,
        user_id,
        result.chunks,
        ran,
        result.logs,
        result.seconds,
    )
    return result


def _is_done(engine: Engine, job: str, lo: int) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(c.done_at).where(c.job == job, c.lo == lo)).scalar() is not None


def _run(
    engine: Engine, settings: Settings, job: str, lo: int, hi: int, user_id: int | None, check_every_table: bool
) -> None:
    chunk = sa.and_(c.job == job, c.lo == lo)

    def mark_done(conn: Connection, logs: int, wrote: bool) -> None:
        generation = sa.select(m.rollup_state.c.generation).where(m.rollup_state.c.id == 1).scalar_subquery()
        conn.execute(
            sa.update(m.rollup_chunk)
            .where(chunk)
            .values(done_at=int(time.time()), logs=logs, generation=generation if wrote else None)
        )

    def bumps_elsewhere(conn: Connection, g0: int, g1: int) -> int:
        """The job's other chunks that wrote in (g0, g1], and whose hours do not meet
        this chunk's (in a half-hour zone neighbouring chunks share an hour)."""
        h_lo, h_hi = lo - lo % HOUR, -(-hi // HOUR) * HOUR
        their_lo = c.lo - c.lo % HOUR
        their_hi = c.hi + (HOUR - c.hi % HOUR) % HOUR
        apart = sa.or_(their_hi <= h_lo, their_lo >= h_hi)
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(c.job == job, c.lo != lo, c.generation > g0, c.generation <= g1, apart)
            ).scalar_one()
        )

    _reaggregate_days(
        engine, settings, lo, hi, user_id, check_every_table, on_write=mark_done, concurrent_bumps=bumps_elsewhere
    )


def _lock_key(job: str, lo: int) -> int:
    return zlib.crc32(f"{job}:{lo}".encode()) & 0x7FFFFFFF


@contextmanager
def holding(engine: Engine, job: str, lo: int) -> Iterator[bool]:
    """Try to hold the chunk (without waiting): True while held, on a connection of its
    own that stays open until the chunk is done."""
    if engine.dialect.name == "sqlite":
        yield True  # one writer: nobody else runs chunks
        return
    key = _lock_key(job, lo)
    mysql_ = engine.dialect.name == "mysql"
    name = sa.func.left(sa.func.concat("usage-stats-chunk:", key, ":", sa.func.database()), 64)
    with engine.connect() as conn:
        if mysql_:
            held = conn.execute(sa.select(sa.func.get_lock(name, 0))).scalar() == 1
        else:
            held = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(CHUNK_LOCK_CLASS, key))).scalar())
        conn.commit()
        try:
            yield held
        finally:
            if held:
                try:
                    if mysql_:
                        conn.execute(sa.select(sa.func.release_lock(name)))
                    else:
                        conn.execute(sa.select(sa.func.pg_advisory_unlock(CHUNK_LOCK_CLASS, key)))
                    conn.commit()
                except sa.exc.DBAPIError:
                    conn.invalidate()  # a dead connection holds no lock
