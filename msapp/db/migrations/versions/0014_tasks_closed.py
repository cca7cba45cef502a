"""The analytics' «tasks closed» per employee finds the period's closed tasks by an index of the
enterprise's tasks by closing time (docs/design.md 4), not a walk of all its tasks; on PostgreSQL built
CONCURRENTLY, so the event path keeps writing meanwhile.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

NAME, COLUMNS = "ix_ms_tasks_closed", ["enterprise_number", "closed_at"]


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():  # CONCURRENTLY cannot run in a transaction
            op.create_index(NAME, "ms_tasks", COLUMNS, postgresql_concurrently=True, if_not_exists=True)
    else:
        op.create_index(NAME, "ms_tasks", COLUMNS)


def downgrade():
    op.drop_index(NAME, table_name="ms_tasks")
