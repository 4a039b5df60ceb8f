"""`usage-stats db upgrade`: Alembic migrations, run from the installed package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
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
    with engine.begin() as conn:
        before = current_revision(conn)
        config.attributes["connection"] = conn
        config.attributes[GATEWAY_TABLES] = gateway_tables
        command.upgrade(config, revision)
        after = current_revision(conn)
    return UpgradeResult(before, after)


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
