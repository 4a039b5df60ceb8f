"""`usage-stats db upgrade`: Alembic migrations, run from the installed package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

# Our own version table, so that we never collide with anything in a gateway's database.
VERSION_TABLE = "usage_stats_alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"
# The migration option (alembic Config.attributes) that says whether new-api's users,
# tokens and channels belong in this database (revisions 0001, 0003).
GATEWAY_TABLES = "gateway_tables"
# Revisions that add summary tables: they start empty, and an upgrade across one fills
# them from the raw logs the rollup has counted (shared.ops.fill_added_summaries).
ADDS_SUMMARIES = ("0003",)
# Revisions that cut hourly_detail_usage's hours at local midnights: where STATS_TIMEZONE's
# midnight falls inside a UTC hour, its rows are rebuilt the same way.
CUTS_DETAIL_HOURS = ("0004",)


@dataclass(frozen=True)
class UpgradeResult:
    """The schema's revision before and after an upgrade (None: no schema of ours)."""

    before: str | None
    after: str | None

    @property
    def added_summaries(self) -> bool:
        """True when this upgrade ran a revision that added summary tables to a schema
        that existed before (on a new schema the rollup fills every table from scratch)."""
        if self.before is None or self.after is None:
            return False
        return self._crossed(ADDS_SUMMARIES)

    @property
    def cut_detail_hours(self) -> bool:
        """True when this upgrade cut the existing hourly detail rows' hours at midnight."""
        return self._crossed(CUTS_DETAIL_HOURS)

    def _crossed(self, revisions: tuple[str, ...]) -> bool:
        if self.before is None or self.after is None:
            return False
        return any(self.before < revision <= self.after for revision in revisions)

    def __str__(self) -> str:
        if self.before == self.after:
            return f"already current (revision {self.after})"
        if self.before is None:
            return f"created (revision {self.after})"
        return f"upgraded from revision {self.before} to {self.after}"


def current_revision(conn: Connection) -> str | None:
    """The revision recorded in VERSION_TABLE; None when there is none (no table yet)."""
    revision = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    return str(revision) if revision is not None else None


def upgrade(engine: Engine, revision: str = "head", *, gateway_tables: bool = True) -> UpgradeResult:
    """Bring the schema to `revision` and say what that did; running it again changes
    nothing ("already current"). `gateway_tables`: create new-api's `users`, `tokens`
    and `channels` where absent, as for a standalone install; not where they live in
    another database than `logs` (LOG_SQL_DSN: see `ensure_gateway_tables`)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes[GATEWAY_TABLES] = gateway_tables
    if engine.dialect.name == "mysql":
        return _upgrade_stepwise(engine, config, revision)
    with engine.begin() as conn:
        before = current_revision(conn)
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        after = current_revision(conn)
        if before is not None and after != before:
            _changed_summaries(conn)
    return UpgradeResult(before, after)


def _changed_summaries(conn: Connection) -> None:
    """An upgrade may change summary rows (or how they are read): move answers' version
    (shared.answer_version), from the revision that has rollup_state.generation on."""
    from .answer_version import bump_generation

    if "generation" in {c["name"] for c in sa.inspect(conn).get_columns("rollup_state")}:
        bump_generation(conn)


class MigrationFailed(RuntimeError):
    """A revision failed; the message says which, why, and the state it left."""


def _upgrade_stepwise(engine: Engine, config: Config, revision: str) -> UpgradeResult:
    """MySQL commits each DDL statement at once, so a failed revision cannot be rolled
    back: run the revisions one at a time, and when one fails drop the tables it had
    created (never one that was there before it), so the database is as the previous
    revision left it -- as found, when that was the first -- and the next upgrade runs
    the failed revision again from its start. (A revision that drops or alters what was
    there does so in a form that a second run completes: 0004.)"""
    script = ScriptDirectory.from_config(config)
    with engine.connect() as conn:
        first = current_revision(conn)
    target = script.get_revision(revision)
    if target is None:
        return UpgradeResult(first, first)
    # The revisions to run, oldest first.
    todo = [r.revision for r in script.iterate_revisions(target.revision, first)][::-1]
    for step in todo:
        with engine.connect() as conn:
            tables_before = set(sa.inspect(conn).get_table_names())
        try:
            with engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, step)
        except Exception as exc:
            with engine.begin() as conn:
                created = set(sa.inspect(conn).get_table_names()) - tables_before
                for name in sorted(created):
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{name}`")
                now = current_revision(conn) if VERSION_TABLE not in created else None
            orig = getattr(exc, "orig", None) or exc
            reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
            state = f"as revision {now} left it" if now else "as it was before (no schema of ours)"
            raise MigrationFailed(
                f"revision {step} failed: {reason}; its new tables were dropped and the database is {state}: "
                f"fix the cause and run `usage-stats db upgrade` again"
            ) from exc
    with engine.begin() as conn:
        after = current_revision(conn)
        if first is not None and after != first:
            _changed_summaries(conn)
        return UpgradeResult(first, after)


def ensure_gateway_tables(engine: Engine) -> list[str]:
    """new-api's `users`, `tokens` and `channels`, created in the main database where
    absent (a standalone install with its logs apart), in new-api's shape; returns the
    names created. A gateway's own tables are left exactly as they are."""
    from . import models as m

    with engine.begin() as conn:
        existing = set(sa.inspect(conn).get_table_names())
        missing = [t for t in (m.users, m.tokens, m.channels) if t.name not in existing]
        for table in missing:
            table.create(conn)
    return [t.name for t in missing]
