"""rollup_chunk: the chunks of a re-aggregation shared by several workers (shared.chunks).

One row per chunk of days of a job: its range, and when it was written (done_at, in the
same transaction as the chunk's rows) with how many logs it counted and, if it changed
rows, the rollup_state.generation its write moved to. Rows of a finished
job are deleted by the job; nothing else reads them.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only if still to do: on MySQL, where DDL commits at once, a second run after a
    # failure half-way completes it (shared.migrate).
    if "rollup_chunk" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "rollup_chunk",
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("lo", sa.BigInteger, nullable=False),
        sa.Column("hi", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=True),
        sa.Column("check_every_table", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("done_at", sa.BigInteger, nullable=True),
        sa.Column("logs", sa.BigInteger, nullable=True),
        sa.Column("generation", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("job", "lo", name="rollup_chunk_pkey"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )


def downgrade() -> None:
    op.drop_table("rollup_chunk")
