"""The processes of the concurrency test (tests/test_reliability_concurrency.py): gateway
writers, a ticker and re-aggregators, each in its own process (spawned, so that no
connection is ever shared across a fork), each reporting to a queue:
("done", name, stats) or ("error", name, traceback)."""

from __future__ import annotations

import random
import time
import traceback

MODELS = ("gpt-4o", "claude-3-5-sonnet", "deepseek-chat", "")


def _settings(url: str, tz: str, **kw):
    from shared.config import Settings

    return Settings(database_url=url, stats_timezone=tz, **kw)


def _report(queue, name, fn):
    try:
        queue.put(("done", name, fn()))
    except BaseException:
        queue.put(("error", name, traceback.format_exc()))


def writer(queue, name: str, url: str, seed: int, seconds: float, lo: int, hi: int, max_hold: float) -> None:
    """Insert 1-5 logs per transaction; half the transactions stay open for a random time
    up to `max_hold` seconds before they end; one in twenty rolls back. Reports what it
    committed: consume logs and their quota."""

    def run():
        import sqlalchemy as sa

        from shared import models as m
        from shared.db import make_engine
        from tests.logdata import insert, log

        rnd = random.Random(seed)
        engine = make_engine(url)
        stats = {"transactions": 0, "rolled_back": 0, "count": 0, "quota": 0, "logs": 0}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rows = []
            for _ in range(rnd.randint(1, 5)):
                uid = rnd.randint(1, 6)
                kind = m.LOG_CONSUME if rnd.random() < 0.85 else rnd.choice((m.LOG_TOPUP, m.LOG_ERROR, m.LOG_SYSTEM))
                rows.append(
                    log(
                        user_id=uid,
                        username=f"user{uid}",
                        created_at=rnd.randrange(lo, hi),
                        model=rnd.choice(MODELS),
                        quota=rnd.randrange(0, 10_000),
                        kind=kind,
                        prompt=rnd.randrange(0, 3000),
                        completion=rnd.randrange(0, 1000),
                    )
                )
            with engine.connect() as conn:
                tx = conn.begin()
                insert(conn, rows)
                if rnd.random() < 0.5:
                    time.sleep(rnd.uniform(0, max_hold))
                if rnd.random() < 0.05:
                    tx.rollback()
                    stats["rolled_back"] += 1
                else:
                    tx.commit()
                    consume = [r for r in rows if r["type"] == m.LOG_CONSUME]
                    stats["count"] += len(consume)
                    stats["quota"] += sum(r["quota"] for r in consume)
                    stats["logs"] += len(rows)
            stats["transactions"] += 1
            time.sleep(rnd.uniform(0, 0.01))
        engine.dispose()
        del sa
        return stats

    _report(queue, name, run)


def ticker(queue, name: str, url: str, tz: str, seconds: float, interval: float, batch: int) -> None:
    """A tick every `interval` seconds (skipped ones included, as beat would send them)."""

    def run():
        from shared.db import make_engine
        from shared.rollup import tick

        engine = make_engine(url)
        s = _settings(url, tz, rollup_batch_size=batch)
        stats = {"ran": 0, "skipped": 0, "logs": 0}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            r = tick(engine, s)
            stats["skipped" if r.skipped else "ran"] += 1
            stats["logs"] += r.logs
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
        engine.dispose()
        return stats

    _report(queue, name, run)


def reaggregator(queue, name: str, url: str, tz: str, seed: int, seconds: float, lo: int, hi: int) -> None:
    """Re-aggregations of random ranges (an hour to 3 days, sometimes of one user)."""

    def run():
        from shared.db import make_engine
        from shared.rollup import reaggregate

        rnd = random.Random(seed)
        engine = make_engine(url)
        s = _settings(url, tz)
        stats = {"runs": 0, "chunks": 0}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = rnd.randrange(lo, hi)
            end = start + rnd.randrange(3600, 3 * 86400)
            r = reaggregate(engine, s, start, end, user_id=rnd.choice([None, None, rnd.randint(1, 6)]))
            stats["runs"] += 1
            stats["chunks"] += r.chunks
            time.sleep(rnd.uniform(0.2, 1.0))  # leave the ticks some room
        engine.dispose()
        return stats

    _report(queue, name, run)
