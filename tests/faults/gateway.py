"""A gateway that writes logs the way new-api does, for fault tests: committed logs with
current and old timestamps, non-consume rows, and one late writer whose transaction took
its id before later logs committed (so every tick has a gap to remember and one to fill).

The truth is tests.logdata.expected_tables: a GROUP BY over the committed raw logs."""

from __future__ import annotations

import random
import time

import sqlalchemy as sa

from shared import aggregation as agg
from shared import models as m
from tests.logdata import actual_tables, diff, expected_tables, insert, log

TZ = "UTC"
MODELS = ("gpt-4o", "claude-3-5-sonnet", "deepseek-chat")
# A bucket every round writes into, so that every tick updates existing rows (and a test
# can lock one of them to hold a statement of the tick in the middle of its work).
FIXED_USER, FIXED_MODEL = 1, "gpt-4o"


class Gateway:
    def __init__(self, engine, seed: int = 0, now: int | None = None):
        self.engine = engine
        self.rnd = random.Random(seed)
        self.now = now if now is not None else int(time.time())
        self.fixed_at = self.now - self.now % 3600 - 7200  # inside one hour, one UTC day
        self.late = None  # (connection, transaction) of the writer still open
        self.committed = 0  # consume logs committed

    def _row(self, **kw):
        r = self.rnd
        defaults = dict(
            user_id=r.randint(1, 4),
            created_at=self.now - r.randrange(0, 3 * 86400),
            model=r.choice(MODELS),
            quota=r.randrange(0, 5000),
            prompt=r.randrange(0, 900),
            completion=r.randrange(0, 300),
        )
        defaults.update(kw)
        defaults["username"] = f"user{defaults['user_id']}"
        return log(**defaults)

    def step(self, n: int = 5) -> None:
        """Commit the previous late writer; open a new one (its id is taken now, its commit
        comes next step); commit `n` logs, one of them in the fixed bucket and one with
        a week-old timestamp, plus a non-consume row."""
        self.close()
        # Held in `late` from the moment it is open, so that whoever sees a failure here
        # (the server gone) finds this connection, not the one committed just before.
        conn = self.engine.connect()
        self.late = (conn, conn.begin())
        insert(conn, self._row())
        rows = [self._row() for _ in range(n - 2)]
        rows.append(self._row(user_id=FIXED_USER, model=FIXED_MODEL, created_at=self.fixed_at))
        rows.append(self._row(created_at=self.now - 7 * 86400 - self.rnd.randrange(0, 86400)))
        rows.append(self._row(kind=m.LOG_ERROR))
        insert(self.engine, rows)
        self.committed += n

    def close(self) -> None:
        if self.late is not None:
            conn, tx = self.late
            tx.commit()
            conn.close()
            self.committed += 1
            self.late = None

    # --- the truth ---------------------------------------------------------------------

    def difference(self) -> str:
        """'' when the summary tables equal the GROUP BY over the committed raw logs."""
        return diff(expected_tables(self.engine, TZ), actual_tables(self.engine))

    def counted(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(agg.hourly_usage.c.count), 0))).scalar())

    def consume_logs(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(m.logs).where(m.logs.c.type == m.LOG_CONSUME)
                ).scalar()
            )
