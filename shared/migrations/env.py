"""Alembic environment: run by `usage-stats db upgrade` (shared.migrate) with a connection."""

from alembic import context

from shared.migrate import VERSION_TABLE

config = context.config
connection = config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
