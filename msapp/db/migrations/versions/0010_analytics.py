"""Analytics: the hourly rollup, missed callers' episodes, the marks of what to recompute, and the
indexes of an enterprise's calls by time and by phone (docs/design.md 5.4). On PostgreSQL the indexes
on ms_calls are built CONCURRENTLY: the event path keeps writing while they are (docs/operations.md).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
CALL_INDEXES = (("ix_ms_calls_enterprise_start", ["enterprise_number", "start_time"]),
                ("ix_ms_calls_enterprise_phone", ["enterprise_number", "phone"]))


def upgrade():
    op.create_table(
        "ms_call_hours",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("enterprise_number", sa.Text(), nullable=False),
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("counts", JSONType, nullable=False),
        sa.Column("waits", JSONType, nullable=False),
        sa.Column("talk_s", sa.Float(), nullable=False),
        sa.Column("employees", JSONType, nullable=False),
        sa.UniqueConstraint("enterprise_number", "hour", name="uq_ms_call_hours"),
    )
    op.create_table(
        "ms_callbacks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("enterprise_number", sa.Text(), nullable=False),
        sa.Column("phone", sa.Text(), nullable=False),
        sa.Column("first_missed_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=False),
        sa.Column("misses", sa.Integer(), nullable=False),
        sa.Column("unique_id", sa.Text(), nullable=False),
        sa.Column("reached_at", sa.DateTime()),
        sa.Column("delay_s", sa.Float()),
        sa.Column("bucket", sa.String(16), nullable=False),
        sa.Column("callback_by", sa.Text()),
    )
    op.create_index("ix_ms_callbacks_period", "ms_callbacks",
                    ["enterprise_number", "first_missed_at", "bucket", "delay_s", "callback_by"])
    op.create_index("ix_ms_callbacks_phone", "ms_callbacks", ["enterprise_number", "phone"])
    op.create_table(
        "ms_analytics_marks",
        sa.Column("enterprise_number", sa.Text(), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("marked_at", sa.DateTime(), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():  # CONCURRENTLY cannot run in a transaction
            for name, columns in CALL_INDEXES:
                op.create_index(name, "ms_calls", columns, postgresql_concurrently=True, if_not_exists=True)
    else:
        for name, columns in CALL_INDEXES:
            op.create_index(name, "ms_calls", columns)
    # the calls already there: their hours and phones are computed by the ticker from these marks
    op.execute("INSERT INTO ms_analytics_marks (enterprise_number, kind, key, marked_at) "
               "SELECT DISTINCT enterprise_number, 'rebuild', '', CURRENT_TIMESTAMP FROM ms_calls")


def downgrade():
    for name, _ in CALL_INDEXES:
        op.drop_index(name, table_name="ms_calls")
    op.drop_table("ms_analytics_marks")
    op.drop_index("ix_ms_callbacks_phone", table_name="ms_callbacks")
    op.drop_index("ix_ms_callbacks_period", table_name="ms_callbacks")
    op.drop_table("ms_callbacks")
    op.drop_table("ms_call_hours")
