"""MariaDB plans of the re-aggregation and of an answer's patch (the rows its tail
touches): every join onto a temporary table or a summary table is a lookup by key,
never a scan of one side per row of the other.

MariaDB has no hash join by default and runs no semi-join in a single-table DELETE, so a
statement that lost its key lookup costs the product of both sides (a day's re-check took
minutes instead of seconds). These tests run a real re-aggregation of a changed day,
EXPLAIN the statements that join, on the same connection (the same temporary tables),
and assert the access path. They assert plans, not timings.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from shared import models as m
from shared.config import Settings
from shared.rollup import reaggregate, rollup
from tests.logdata import log, utc

pytestmark = pytest.mark.integration

DAY = utc(2024, 5, 6)
USERS, MODELS, HOURS = 40, 4, 12


def _explain(cursor: Any, statement: str, params: Any) -> list[dict[str, Any]]:
    c = cursor.connection.cursor()
    c.execute("EXPLAIN " + statement, params)
    names = [d[0] for d in c.description]
    return [dict(zip(names, row)) for row in c.fetchall()]


def _plans_of(engine: sa.Engine, patterns: dict[str, str], run: Any) -> dict[str, list[dict[str, Any]]]:
    """EXPLAIN of the first statement matching each regex in `patterns` while `run()` runs."""
    plans: dict[str, list[dict[str, Any]]] = {}

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        for name, pattern in patterns.items():
            if name not in plans and re.search(pattern, statement, re.S):
                plans[name] = _explain(cursor, statement, params)

    event.listen(engine, "before_cursor_execute", before)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", before)
    return plans


def _access(plan: list[dict[str, Any]], table: str) -> tuple[str, str | None]:
    rows = [r for r in plan if r["table"] == table]
    assert rows, f"{table} not in plan {plan}"
    return rows[0]["type"], rows[0]["key"]


def _rolled_up_day(engine: sa.Engine) -> tuple[Settings, list[dict[str, Any]]]:
    """A day of USERS x MODELS x HOURS logs, rolled up: its settings and its logs."""
    settings = Settings(database_url=str(engine.url))
    rows = [
        log(user_id=u, created_at=DAY + h * 3600 + u, model=f"model-{k}")
        for u in range(1, USERS + 1)
        for k in range(MODELS)
        for h in range(HOURS)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(m.logs), rows)
    rollup(engine, settings, wait=True)
    return settings, rows


def _add_rows_without_logs(conn: sa.Connection, model: str) -> None:
    """Stored detail rows that no log makes: user 1's rows of model-0, under `model`."""
    detail = m.metadata.tables["hourly_detail_usage"]
    conn.execute(
        sa.insert(detail).from_select(
            [c.name for c in detail.columns if c.name != "model_name"] + ["model_name"],
            sa.select(
                *(detail.c[c.name] for c in detail.columns if c.name != "model_name"),
                sa.literal(model),
            ).where(detail.c.user_id == 1, detail.c.model_name == "model-0"),
        )
    )


def test_changed_day_is_reaggregated_by_key_lookups(mysql_engine):
    settings, rows = _rolled_up_day(mysql_engine)
    detail = m.metadata.tables["hourly_detail_usage"]
    with mysql_engine.begin() as conn:
        # A stored row without logs (gone) and rows missing (present again): both sides of
        # the comparison, and every derived table, have something to do.
        _add_rows_without_logs(conn, "bogus")
        conn.execute(sa.delete(detail).where(detail.c.user_id == 2))
    plans = _plans_of(
        mysql_engine,
        {
            "absent": r"^INSERT INTO rollup_change .*LEFT OUTER JOIN rollup_new",
            "gone": r"^DELETE FROM hourly_detail_usage USING",
            "rederive": r"^DELETE FROM hourly_usage USING",
        },
        lambda: reaggregate(mysql_engine, settings, DAY, DAY + 86400),
    )
    assert set(plans) == {"absent", "gone", "rederive"}, plans.keys()
    # The stored rows without a fresh one: each looked up in the fresh rows by their key.
    assert _access(plans["absent"], "rollup_new") == ("eq_ref", "PRIMARY")
    # The rows gone, and the derived tables' rows at the keys touched: deleted by key.
    assert _access(plans["gone"], "hourly_detail_usage") == ("eq_ref", "PRIMARY")
    assert _access(plans["rederive"], "hourly_usage") == ("eq_ref", "PRIMARY")

    # And the day is exact again.
    with mysql_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(detail.c.model_name == "bogus")).scalar_one() == 0
        total = conn.execute(sa.select(sa.func.sum(detail.c["count"]))).scalar_one()
    assert total == len(rows)


def test_an_answers_patch_looks_up_the_touched_keys(mysql_engine):
    """The rows an answer's tail touches (shared.queries.patch_rows, which the answer
    cache reads on every request while logs arrive): each stored row found by its key,
    not a semi-join that compares every stored row of the range with every tail log
    (MariaDB's first-match strategy for `(keys) IN (SELECT ...)`: 745 ms for 2,134 rows
    and 1,105 logs)."""
    from shared import queries

    _rolled_up_day(mysql_engine)
    tail = [log(user_id=1, created_at=DAY + h * 3600 + 7, model=f"model-{h % MODELS}") for h in range(HOURS)] * 20
    with mysql_engine.begin() as conn:
        conn.execute(sa.insert(m.logs), tail)
    view = queries.View(granularity="hour")

    def patch() -> None:
        with queries.snapshot(mysql_engine) as conn:
            progress = queries.read_version(conn).progress
            found = queries.patch_rows(conn, queries.PER_USER, view, DAY, DAY + 86399, {"user_id": 1}, progress)
        assert len(found) == HOURS

    plans = _plans_of(mysql_engine, {"patch": r"^SELECT .*FROM \(SELECT .*FROM logs"}, patch)
    assert set(plans) == {"patch"}, plans.keys()
    plan = plans["patch"]
    # Each stored row meets the touched keys through an index, never a join buffer
    # (a block nested loop: every row of one side against every row of the other).
    extras = [str(r["Extra"] or "") for r in plan]
    assert not any("join buffer" in e or "FirstMatch" in e for e in extras), plan
    assert _access(plan, "hourly_usage")[1] == "PRIMARY"


def test_an_unchanged_day_skips_the_search_for_gone_rows_and_a_damaged_one_does_not(mysql_engine):
    """The stored rows without a fresh one are searched for only when the counts say one
    may exist (shared.rollup._may_lack_fresh_rows): not on an unchanged day, and still
    whenever a row is gone, including beside a row hand-edited to a count of 0 (which the
    count takes for unmatched: it errs towards searching)."""
    settings, rows = _rolled_up_day(mysql_engine)
    searched = r"^INSERT INTO rollup_change .*LEFT OUTER JOIN rollup_new"
    plans = _plans_of(mysql_engine, {"absent": searched}, lambda: reaggregate(mysql_engine, settings, DAY, DAY + 86400))
    assert plans == {}
    detail = m.metadata.tables["hourly_detail_usage"]
    with mysql_engine.begin() as conn:
        conn.execute(sa.update(detail).where(detail.c.user_id == 3).values({"count": 0}))
        _add_rows_without_logs(conn, "gone")
    plans = _plans_of(mysql_engine, {"absent": searched}, lambda: reaggregate(mysql_engine, settings, DAY, DAY + 86400))
    assert set(plans) == {"absent"}
    with mysql_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(detail.c.model_name == "gone")).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.min(detail.c["count"]))).scalar_one() > 0
        assert conn.execute(sa.select(sa.func.sum(detail.c["count"]))).scalar_one() == len(rows)
