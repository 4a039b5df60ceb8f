"""`usage-stats db upgrade`: Alembic migrations, run from the installed package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

# Our own version table, so that we never collide with anything in a gateway's database.
VERSION_TABLE = "usage_stats_alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`; running it again changes nothing."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
