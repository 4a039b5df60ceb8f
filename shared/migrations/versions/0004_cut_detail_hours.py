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
# Text in the key, and its width on MySQL (as revision 0003 made it).
MYSQL_WIDTH = {"model_name": 191, "use_group": 191, "username": 187, "token_name": 187}


def _key_text(bind: sa.engine.Connection, width: int) -> sa.types.TypeEngine[str]:
    if bind.dialect.name != "mysql":
        return sa.Text()
    return sa.String(
        width, collation="utf8mb4_nopad_bin" if getattr(bind.dialect, "is_mariadb", False) else "utf8mb4_0900_bin"
    )


def upgrade() -> None:
    # Each step only if still to do: on MySQL, where DDL commits at once, a second run
    # after a failure half-way completes it (shared.migrate).
    inspector = sa.inspect(op.get_bind())
    if "daily_detail_usage" in inspector.get_table_names():
        op.drop_table("daily_detail_usage")
    if "hours_kept_from" not in {c["name"] for c in inspector.get_columns("rollup_state")}:
        with op.batch_alter_table("rollup_state") as batch:
            batch.add_column(sa.Column("hours_kept_from", sa.BigInteger, nullable=True))


def downgrade() -> None:
    # daily_detail_usage comes back empty: a re-aggregation of the whole history fills it.
    with op.batch_alter_table("rollup_state") as batch:
        batch.drop_column("hours_kept_from")
    name = "daily_detail_usage"
    bind = op.get_bind()
    op.create_table(
        name,
        *(
            sa.Column(k, _key_text(bind, MYSQL_WIDTH[k]) if k in MYSQL_WIDTH else sa.BigInteger, nullable=False)
            for k in KEY
        ),
        *(sa.Column(v, sa.BigInteger, nullable=False, server_default="0") for v in MEASURES),
        sa.PrimaryKeyConstraint(*KEY, name=f"{name}_pkey"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index(f"ix_{name}_created_at", name, ["created_at"])
