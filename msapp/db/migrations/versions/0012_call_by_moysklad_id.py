"""The support desk finds a call by its MoySklad id through an index of the enterprise's calls (docs/design.md
5.4); on PostgreSQL built CONCURRENTLY, so the event path keeps writing meanwhile.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

NAME, COLUMNS = "ix_ms_calls_enterprise_ms_call", ["enterprise_number", "ms_call_id"]


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():  # CONCURRENTLY cannot run in a transaction
            op.create_index(NAME, "ms_calls", COLUMNS, postgresql_concurrently=True, if_not_exists=True)
    else:
        op.create_index(NAME, "ms_calls", COLUMNS)


def downgrade():
    op.drop_index(NAME, table_name="ms_calls")
