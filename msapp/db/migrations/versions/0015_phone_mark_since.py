"""A phone's analytics mark keeps the earliest start of its changed calls, so that the ticker replays its
missed-caller episodes from there, not from its first call (docs/design.md 5.4). Marks made before stay
NULL: all of that phone's calls, as before. A nullable column without a default: no rewrite of the table.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("ms_analytics_marks", sa.Column("since", sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table("ms_analytics_marks") as batch:
        batch.drop_column("since")
