"""hourly_usage's primary key carries the row's values (PostgreSQL INCLUDE).

/api/data/self reads one user's buckets by (user_id, created_at, model_name). The
rollup writes rows in time order for all users at once, so a user's month of hours lies
on about as many heap pages as it has rows. With the values in the key's leaf pages the
same read is an index-only scan of a few adjacent pages (figures in BENCHMARKS.md).
daily_usage keeps its plain key: ticks update today's rows all day, and values in the
key would make every such update leave its heap page (no HOT), for reads of a few
hundred rows. SQLite has no INCLUDE and needs none at its scale: nothing changes there.

Rebuilding a primary key locks its table while the index is built: on a big
installation, run `usage-stats db upgrade` with the worker stopped, in a quiet hour.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("hourly_usage",)
KEY = "user_id, created_at, model_name"
# The row's values, stored in the key's leaves (spelled out: the models may change later).
PER_USER_VALUES = ("username", "count", "quota", "token_used", "prompt_tokens", "completion_tokens")


def _set_key(include: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey, "
            f"ADD CONSTRAINT {table}_pkey PRIMARY KEY ({KEY}){include}"
        )


def upgrade() -> None:
    _set_key(f" INCLUDE ({', '.join(PER_USER_VALUES)})")


def downgrade() -> None:
    _set_key("")
