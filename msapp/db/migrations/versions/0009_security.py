"""Security state shared by every process: the client address of each click, click cool-downs per
address, and the admin door's wrong-token counts (docs/design.md 7).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("ms_clicks") as batch:
        batch.add_column(sa.Column("client_address", sa.Text()))
    op.create_table(
        "ms_click_cooldowns",
        sa.Column("enterprise_number", sa.Text(), primary_key=True),
        sa.Column("address", sa.Text(), primary_key=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("until", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "ms_auth_failures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_ms_auth_failures_address_at", "ms_auth_failures", ["address", "at"])
    op.create_index("ix_ms_auth_failures_at", "ms_auth_failures", ["at"])
    op.create_table(
        "ms_auth_lockouts",
        sa.Column("address", sa.Text(), primary_key=True),
        sa.Column("locked_until", sa.DateTime(), nullable=False),
        sa.Column("strikes", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=False),
    )


def downgrade():
    op.drop_table("ms_auth_lockouts")
    op.drop_index("ix_ms_auth_failures_at", table_name="ms_auth_failures")
    op.drop_index("ix_ms_auth_failures_address_at", table_name="ms_auth_failures")
    op.drop_table("ms_auth_failures")
    op.drop_table("ms_click_cooldowns")
    with op.batch_alter_table("ms_clicks") as batch:
        batch.drop_column("client_address")
