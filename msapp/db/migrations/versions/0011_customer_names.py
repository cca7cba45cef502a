"""Customers' names by phone, kept so that the support desk shows them after a restart (docs/design.md 4).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "ms_customer_names",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("enterprise_number", sa.Text(), nullable=False),
        sa.Column("phone", sa.Text(), nullable=False),
        sa.Column("counterparty_id", sa.Text()),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("enterprise_number", "phone", name="uq_ms_customer_names"),
    )
    op.create_index("ix_ms_customer_names_updated", "ms_customer_names", ["updated_at"])


def downgrade():
    op.drop_index("ix_ms_customer_names_updated", table_name="ms_customer_names")
    op.drop_table("ms_customer_names")
