"""The migrations build exactly the schema shared.models describes, on both databases,
and 0002's covering key can be undone and redone without touching the rows."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shared import models as m
from shared.config import Settings
from shared.migrate import VERSION_TABLE, upgrade
from shared.rollup import rollup
from tests.logdata import actual_tables, insert, log


def _differences(engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diffs = compare_metadata(ctx, m.metadata)
    # Reflection does not report INCLUDE columns; that part is checked by name below.
    return [
        d for d in diffs if not (d[0] in ("add_index", "remove_index") and getattr(d[1], "name", "") == VERSION_TABLE)
    ]


def test_migrated_schema_is_the_models_schema(engine):
    assert _differences(engine) == []


@pytest.mark.integration
def test_hourly_key_carries_the_values_and_survives_a_downgrade(pg_engine):
    engine = pg_engine
    insert(engine, [log(user_id=u, created_at=1_700_000_000 + 600 * u) for u in (1, 2, 3)])
    rollup(engine, Settings(database_url=str(engine.url)))
    before = actual_tables(engine)

    def key_definition(table: str) -> str:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT pg_get_indexdef(CAST(:name AS regclass))"), {"name": f"{table}_pkey"}
            ).scalar()

    assert "INCLUDE (username, count, quota, token_used, prompt_tokens, completion_tokens)" in key_definition(
        "hourly_usage"
    )
    assert "INCLUDE" not in key_definition("daily_usage")  # kept HOT-updatable for ticks
    from alembic import command
    from alembic.config import Config

    from shared.migrate import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    assert "INCLUDE" not in key_definition("hourly_usage")
    upgrade(engine)
    assert "INCLUDE" in key_definition("hourly_usage")
    assert actual_tables(engine) == before
