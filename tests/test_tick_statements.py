"""What a tick sends (issue 14: ticks under 50 ms), and that it still counts exactly.

On PostgreSQL a tick aggregates its logs and upserts every summary table in one
statement (WITH rollup_delta AS ..., shared.rollup._fold_statement), creates no
temporary table, and commits without waiting for its WAL flush. On every database a
tick that saw every id of its batch records no gap, and with no gap at all it writes none
(PostgreSQL: and settles none). No timing here: bench/tick_speed.py measures.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from shared import models as m
from shared.config import Settings
from shared.rollup import tick
from tests.logdata import assert_exact, gaps, insert, log, utc


def cfg(engine, tz: str = "UTC") -> Settings:
    return Settings(database_url=str(engine.url), stats_timezone=tz)


@contextmanager
def statements(engine):
    """The statements the engine sends in the block, whitespace squeezed."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def some_logs(t0: int, n: int = 12) -> list[dict]:
    return [log(user_id=1 + i % 3, created_at=t0 + 600 * i, model=("gpt-4o", "o3")[i % 2]) for i in range(n)]


def matching(sent: list[str], pattern: str) -> list[str]:
    return [s for s in sent if re.match(pattern, s, re.I)]


def test_a_tick_without_gaps_records_none(engine):
    """Every id of the batch seen and no gap remembered: nothing to record, nor to settle
    on PostgreSQL (MariaDB settles as before: its settling statements are the points
    tests/test_rollup_concurrency.py finishes a writer at). Then a rolled-back insert
    leaves an id missing: the next tick records its gap."""
    insert(engine, some_logs(utc(2026, 3, 1, 10)))
    with statements(engine) as sent:
        result = tick(engine, cfg(engine), wait=True)
    assert result.logs == 12
    assert not matching(sent, r"(INSERT INTO|DELETE FROM) rollup_gap")
    if engine.dialect.name == "postgresql":
        assert not matching(sent, r"UPDATE rollup_gap")
    assert_exact(engine, "UTC")

    with engine.connect() as conn, conn.begin() as tx:
        insert(conn, log(created_at=utc(2026, 3, 1, 11)))
        tx.rollback()
    insert(engine, some_logs(utc(2026, 3, 1, 12), 3))
    with statements(engine) as sent:
        result = tick(engine, cfg(engine), wait=True)
    assert result.logs == 3
    assert_exact(engine, "UTC")
    if engine.dialect.name == "sqlite":
        # One writer at a time: a missing id is a rolled-back one, never a gap.
        assert not matching(sent, r"INSERT INTO rollup_gap") and not gaps(engine)
    else:
        assert matching(sent, r"INSERT INTO rollup_gap")
        assert len(gaps(engine)) == 1


@pytest.mark.integration
def test_postgresql_folds_in_one_statement(pg_engine):
    """The delta and the five upserts are one statement; no temporary table is created;
    the commit does not wait for the flush (SET LOCAL, this transaction only). The
    result's counts are the statement's: consume logs, and rows of the finest table."""
    engine = pg_engine
    rows = some_logs(utc(2026, 3, 2, 0), 30)
    rows.append(log(kind=m.LOG_CONSUME + 1, created_at=utc(2026, 3, 2, 1)))  # not a consume log
    insert(engine, rows)
    with statements(engine) as sent:
        result = tick(engine, cfg(engine, "Asia/Kolkata"), wait=True)
    assert len(matching(sent, r"WITH rollup_delta AS")) == 1
    assert not matching(sent, r"(CREATE|DROP) .*TABLE")
    assert not matching(sent, r"INSERT INTO (hourly|daily)_")
    assert matching(sent, r"SET LOCAL synchronous_commit = off")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        detail = conn.execute(sa.select(sa.func.count()).select_from(sa.table("hourly_detail_usage"))).scalar()
    assert result.logs == 30
    assert result.buckets == detail
    assert_exact(engine, "Asia/Kolkata")

    # The statement is built once per zone and case: another zone gets its own days, and
    # a late commit inside a gap goes through the same one statement with its union.
    with engine.connect() as conn:
        conn.execute(sa.update(m.rollup_state).values(timezone="America/New_York"))
        for t in ("hourly_usage", "daily_usage", "hourly_model_usage", "daily_model_usage", "hourly_detail_usage"):
            conn.execute(sa.delete(sa.table(t)))
        conn.execute(sa.update(m.rollup_state).values(last_log_id=0))
        conn.commit()
    late = engine.connect()
    tx = late.begin()
    insert(late, log(user_id=7, created_at=utc(2026, 3, 2, 5)))  # an id taken, not committed
    insert(engine, some_logs(utc(2026, 3, 2, 6), 4))
    tick(engine, cfg(engine, "America/New_York"), wait=True)
    assert len(gaps(engine)) == 1
    tx.commit()
    late.close()
    insert(engine, some_logs(utc(2026, 3, 2, 7), 2))
    with statements(engine) as sent:
        result = tick(engine, cfg(engine, "America/New_York"), wait=True)
    assert result.logs == 3  # the late one and the two new
    assert len(matching(sent, r"WITH rollup_delta AS .* UNION ALL ")) == 1
    assert_exact(engine, "America/New_York")
