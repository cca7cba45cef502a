"""Toll-fraud guard: the employee directory each enterprise's clicks are checked against, and the clicks.

`ms_directory` keeps MoySklad's employees with extensions and logins per enterprise, so a click is judged
from the database (shared by every process, warm after a restart) even while MoySklad is down.
`ms_clicks` holds every click with its outcome: the per-minute limits count it, the admin alert reads it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade():
    op.create_table(
        "ms_directory",
        sa.Column("enterprise_number", sa.Text(), primary_key=True),
        sa.Column("employees", JSONType, nullable=False),
        sa.Column("logins_known", sa.Boolean(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "ms_clicks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("enterprise_number", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("extension", sa.Text()),
        sa.Column("destination", sa.Text()),
        sa.Column("uid", sa.Text()),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
    )
    op.create_index("ix_ms_clicks_enterprise_time", "ms_clicks", ["enterprise_number", "created_at"])


def downgrade():
    op.drop_index("ix_ms_clicks_enterprise_time", table_name="ms_clicks")
    op.drop_table("ms_clicks")
    op.drop_table("ms_directory")
