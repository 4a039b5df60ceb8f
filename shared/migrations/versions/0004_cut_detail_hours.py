"""One detail table: hourly_detail_usage's hours cut at local midnights; daily_detail_usage
dropped; rollup_state.hours_kept_from.

A tick upserts about as many rows into a detail table as into hourly_usage and
daily_usage together; two of them nearly doubled its cost (BENCHMARKS.md, issue 12).
Days, weeks and months by key, channel or group are now summed from the hourly detail
rows, whose hours are cut at STATS_TIMEZONE's midnights so that each lies inside one
local day. In a zone whose midnights fall on whole UTC hours the cut hours are the
hours, and the existing rows stay as they are; in one whose midnight falls inside an
hour (India, Nepal, parts of Australia...), `usage-stats db upgrade` rebuilds them from
the raw logs the rollup has counted, by a re-aggregation of the whole history, once this
revision has run (shared.ops.fill_added_summaries).

rollup_state.hours_kept_from: retention's horizon, before which the hourly rows are gone
and the detail rows are whole days (NULL: every hour is kept).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

KEY = ("user_id", "created_at", "model_name", "token_id", "channel_id", "use_group", "username", "token_name")
MEASURES = ("count", "quota", "token_used", "prompt_tokens", "completion_tokens")
TEXT_COLUMNS = {"model_name", "use_group", "username", "token_name"}


def upgrade() -> None:
    op.drop_table("daily_detail_usage")
    with op.batch_alter_table("rollup_state") as batch:
        batch.add_column(sa.Column("hours_kept_from", sa.BigInteger, nullable=True))


def downgrade() -> None:
    # daily_detail_usage comes back empty: a re-aggregation of the whole history fills it.
    with op.batch_alter_table("rollup_state") as batch:
        batch.drop_column("hours_kept_from")
    name = "daily_detail_usage"
    op.create_table(
        name,
        *(sa.Column(k, sa.Text if k in TEXT_COLUMNS else sa.BigInteger, nullable=False) for k in KEY),
        *(sa.Column(v, sa.BigInteger, nullable=False, server_default="0") for v in MEASURES),
        sa.PrimaryKeyConstraint(*KEY, name=f"{name}_pkey"),
    )
    op.create_index(f"ix_{name}_created_at", name, ["created_at"])
