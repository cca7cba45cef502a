"""Missed-call tasks: one row per caller's callback task, and a flag on the call once its task work is queued.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade():
    op.create_table(
        "ms_tasks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("enterprise_number", sa.Text(), nullable=False),
        sa.Column("phone", sa.Text(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("task_id", sa.Text()),
        sa.Column("create_attempted", sa.Boolean(), nullable=False),
        sa.Column("marker", sa.Text(), nullable=False),
        sa.Column("assignee_id", sa.Text()),
        sa.Column("counterparty_id", sa.Text()),
        sa.Column("missed", JSONType, nullable=False),
        sa.Column("note_added", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime()),
        sa.Column("closed_reason", sa.String(16)),
        sa.Column("closed_by_call", sa.Text()),
    )
    op.create_index("ix_ms_tasks_caller", "ms_tasks", ["enterprise_number", "phone", "state"])
    op.add_column("ms_calls", sa.Column("task_queued", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade():
    with op.batch_alter_table("ms_calls") as batch:
        batch.drop_column("task_queued")
    op.drop_index("ix_ms_tasks_caller", table_name="ms_tasks")
    op.drop_table("ms_tasks")
