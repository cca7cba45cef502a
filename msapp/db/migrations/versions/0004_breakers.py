"""MoySklad breakers: per enterprise and API, whether MoySklad is reachable (or refuses the key).

One row per (enterprise, api) that ever opened; every process reads and updates the same rows, so they
agree on the state and on who sends the next probe.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "ms_breakers",
        sa.Column("enterprise_number", sa.Text(), primary_key=True),
        sa.Column("api", sa.String(8), primary_key=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("next_probe_at", sa.DateTime(), nullable=False),
        sa.Column("probe_interval", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade():
    op.drop_table("ms_breakers")
