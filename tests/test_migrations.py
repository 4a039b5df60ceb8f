"""The migrations build exactly the schema shared.models describes, on both databases,
and 0002's covering key can be undone and redone without touching the rows.

The migrations spell their tables out (they import no models), so a change to the
models without a migration -- or a migration edited after the fact -- shows up here as
a difference between a migrated database and one built from the models."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine

from shared import aggregation  # noqa: F401  (declares the summary tables on models.metadata)
from shared import models as m
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import MIGRATIONS, VERSION_TABLE, upgrade
from shared.ops import fill_added_summaries
from shared.rollup import rollup
from tests.conftest import throwaway_database
from tests.logdata import actual_tables, insert, log


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


HEAD = _head()  # the newest revision


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


def schema(engine: Engine) -> dict[str, dict]:
    """Every table as the database reports it: columns (type, nullability, default),
    primary key, indexes, unique constraints; on PostgreSQL also each index's full
    definition, which shows INCLUDE columns that reflection leaves out."""
    inspector = sa.inspect(engine)
    tables: dict[str, dict] = {}
    for name in sorted(set(inspector.get_table_names()) - {VERSION_TABLE}):
        pk = inspector.get_pk_constraint(name)
        tables[name] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in inspector.get_columns(name)
            ],
            # SQLite has no use for a constraint's name (nothing can refer to it), and
            # 0001 leaves it unnamed there while the models name it.
            "primary_key": (
                pk.get("name") if engine.dialect.name != "sqlite" else None,
                tuple(pk["constrained_columns"]),
            ),
            "indexes": sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                    repr(sorted(i.get("dialect_options", {}).items())),
                )
                for i in inspector.get_indexes(name)
            ),
            "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)),
        }
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            for table, index, definition in conn.execute(
                sa.text("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
            ):
                if table in tables:
                    tables[table].setdefault("index_definitions", {})[index] = definition
    return tables


@contextmanager
def models_database(dialect: str) -> Iterator[Engine]:
    """An empty database of `dialect` with the models' tables, created by SQLAlchemy."""
    if dialect == "sqlite":
        engine = make_engine("sqlite://")
        m.metadata.create_all(engine)
        yield engine
        engine.dispose()
        return
    with throwaway_database("usage_stats_models", dialect) as url:
        engine = make_engine(url)
        m.metadata.create_all(engine)
        yield engine
        engine.dispose()


def test_migrated_tables_equal_the_models_tables(engine):
    """Columns, types, keys and indexes, table by table, as each database reports them."""
    migrated = schema(engine)
    with models_database(engine.dialect.name) as declared_engine:
        declared = schema(declared_engine)
    assert sorted(migrated) == sorted(declared) == sorted(m.metadata.tables)
    for name in declared:
        assert migrated[name] == declared[name], name


def test_the_migrations_import_no_models():
    """A migration that imported the live models would build next year's schema, not its own."""
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        tree = ast.parse(Path(path).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert imported <= {"sqlalchemy", "alembic"}, (path.name, imported)


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
    upgraded = upgrade(engine)
    assert "INCLUDE" in key_definition("hourly_usage")
    # Back across 0003, which adds the detail tables empty: the upgrade's fill rebuilds
    # them from the counted logs, and leaves the others as they were.
    assert upgraded.added_summaries and actual_tables(engine)["hourly_detail_usage"] == {}
    fill_added_summaries(engine, Settings(database_url=str(engine.url)), upgraded)
    assert actual_tables(engine) == before


def test_an_upgrade_that_adds_summaries_fills_them_from_the_counted_logs_only(pg_engine):
    engine = pg_engine
    settings = Settings(database_url=str(engine.url))
    insert(engine, [log(user_id=u, created_at=1_700_000_000 + 600 * u) for u in (1, 2, 3)])
    rollup(engine, settings)
    counted = actual_tables(engine)
    insert(engine, [log(user_id=4, created_at=1_700_000_000)])  # not rolled up yet
    from alembic import command
    from alembic.config import Config

    from shared.migrate import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0002")
    upgraded = upgrade(engine)
    assert str(upgraded) == f"upgraded from revision 0002 to {HEAD}"
    result = fill_added_summaries(engine, settings, upgraded)
    assert result is not None and result.logs == 3
    # The log the rollup has not counted is left to the next tick, in every table alike.
    assert actual_tables(engine) == counted
    assert fill_added_summaries(engine, settings, upgrade(engine)) is None  # already current


@pytest.mark.integration
def test_a_failed_mysql_upgrade_leaves_the_database_as_it_was_and_the_next_one_completes():
    """MySQL commits DDL at once: a revision failing half-way must not leave its tables
    behind (nor, on a gateway's database, our version table and a `users` or `logs` it
    had to create), and the next upgrade must complete."""
    from shared.migrate import MigrationFailed
    from tests.conftest import throwaway_database

    with throwaway_database("failed_upgrade", "mysql") as url:
        engine = make_engine(url)
        # A gateway's table of ours' name with another shape: revision 0001 creates
        # users, logs and the four summary tables, then fails on rollup_state.
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE rollup_state (something INT)")
        before = set(sa.inspect(engine).get_table_names())
        with pytest.raises(MigrationFailed, match=r"revision 0001 failed: .*as it was before"):
            upgrade(engine)
        assert set(sa.inspect(engine).get_table_names()) == before == {"rollup_state"}

        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE rollup_state")
        assert str(upgrade(engine, "0002")) == "created (revision 0002)"
        # Revision 0003 fails after creating tokens, channels and hourly_detail_usage.
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE daily_detail_usage (something INT)")
        at_0002 = set(sa.inspect(engine).get_table_names())
        with pytest.raises(MigrationFailed, match=r"revision 0003 failed: .*as revision 0002 left it"):
            upgrade(engine)
        assert set(sa.inspect(engine).get_table_names()) == at_0002
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE daily_detail_usage")
        done = upgrade(engine)
        assert done.before == "0002" and done.after is not None and done.after >= "0004"
        assert "hourly_detail_usage" in sa.inspect(engine).get_table_names()
        # 0004 half done (its steps ran, its version was not recorded): a second run
        # completes it.
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '0003'")
        again = upgrade(engine)
        assert (again.before, again.after) == ("0003", done.after)
        engine.dispose()


def test_0005_adds_the_generation_and_an_upgrade_moves_it(engine):
    """0005 adds rollup_state.generation (0 on existing rows), comes off again, and is
    re-runnable; an upgrade that ran revisions moves the generation (it may change how
    summary rows are read: shared.answer_version)."""
    from alembic import command
    from alembic.config import Config

    def columns() -> set[str]:
        return {c["name"] for c in sa.inspect(engine).get_columns("rollup_state")}

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
    assert "generation" not in columns()
    with engine.begin() as conn:  # the state row survives, its progress too
        conn.execute(sa.update(m.rollup_state).values(last_log_id=42))
    assert str(upgrade(engine)) == f"upgraded from revision 0004 to {HEAD}"
    assert "generation" in columns()
    with engine.connect() as conn:
        state = conn.execute(sa.select(m.rollup_state.c.last_log_id, m.rollup_state.c.generation)).one()
    assert tuple(state) == (42, 1)
    assert str(upgrade(engine)) == f"already current (revision {HEAD})"
    with engine.connect() as conn:
        assert conn.execute(sa.select(m.rollup_state.c.generation)).scalar_one() == 1
    # Half done (the column added, the revision not recorded): a second run completes it.
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '0004'")
    assert str(upgrade(engine)) == f"upgraded from revision 0004 to {HEAD}"
    assert _differences(engine) == []
