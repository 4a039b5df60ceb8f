"""Initial schema: new-api's users and logs when absent, and the rollup's tables.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from shared import models

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _measures():
    return [
        sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
        for name in ("count", "quota", "token_used", "prompt_tokens", "completion_tokens")
    ]


def upgrade():
    bind = op.get_bind()
    # The gateway's tables are new-api's, not ours: an existing new-api database keeps
    # them exactly as they are; a standalone install gets them in new-api's shape.
    existing = set(sa.inspect(bind).get_table_names())
    for table in (models.users, models.logs):
        if table.name not in existing:
            table.create(bind)

    for name in ("hourly_usage", "daily_usage"):
        op.create_table(
            name,
            sa.Column("user_id", sa.BigInteger, primary_key=True),
            sa.Column("created_at", sa.BigInteger, primary_key=True),
            sa.Column("model_name", sa.Text, primary_key=True),
            sa.Column("username", sa.Text, nullable=False, server_default=""),
            *_measures(),
        )
        op.create_index(f"ix_{name}_created_at", name, ["created_at"])
    for name in ("hourly_model_usage", "daily_model_usage"):
        op.create_table(
            name,
            sa.Column("created_at", sa.BigInteger, primary_key=True),
            sa.Column("model_name", sa.Text, primary_key=True),
            *_measures(),
        )
    op.create_table(
        "rollup_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("last_log_id", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("timezone", sa.Text, nullable=True),
        sa.Column("last_tick_at", sa.Float, nullable=True),
        sa.Column("last_tick_seconds", sa.Float, nullable=True),
        sa.Column("last_tick_logs", sa.BigInteger, nullable=True),
    )
    op.execute("INSERT INTO rollup_state (id, last_log_id) VALUES (1, 0)")
    op.create_table(
        "rollup_gap",
        sa.Column("lo", sa.BigInteger, primary_key=True),
        sa.Column("hi", sa.BigInteger, nullable=False),
        sa.Column("discovered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade():
    # Only ours: the gateway's tables and their rows are never dropped.
    for name in (
        "rollup_gap",
        "rollup_state",
        "daily_model_usage",
        "hourly_model_usage",
        "daily_usage",
        "hourly_usage",
    ):
        op.drop_table(name)
