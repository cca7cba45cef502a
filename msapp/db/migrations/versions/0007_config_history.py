"""Config history: who changed which fields of an enterprise's `ms` config, and when (never the values).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade():
    op.create_table(
        "ms_config_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("enterprise_number", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("by", sa.Text(), nullable=False),
        sa.Column("fields", JSONType, nullable=False),
    )
    op.create_index("ix_ms_config_history_enterprise", "ms_config_history", ["enterprise_number", "id"])


def downgrade():
    op.drop_index("ix_ms_config_history_enterprise", table_name="ms_config_history")
    op.drop_table("ms_config_history")
