"""rollup_state.generation: a counter every change of summary rows that the rollup's
progress does not show moves (re-aggregation, retention's compaction, a zone's adoption,
an upgrade), so that an answer's version (shared.answer_version) moves with its rows.

Existing rows start at 0; nothing else changes.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _has_generation() -> bool:
    return "generation" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("rollup_state")}


def upgrade() -> None:
    # Only if still to do: on MySQL, where DDL commits at once, a second run after a
    # failure half-way completes it (shared.migrate).
    if not _has_generation():
        with op.batch_alter_table("rollup_state") as batch:
            batch.add_column(sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    if _has_generation():
        with op.batch_alter_table("rollup_state") as batch:
            batch.drop_column("generation")
