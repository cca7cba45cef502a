"""Initial schema: the platform tables if missing, and the service's own ms_* tables.

`enterprises` and `integration_logs` may already exist in the PBX platform's database, with more
columns and rows than this service knows. They are created only when absent, and an existing one is
never altered (no columns, no indexes), so the platform's own code keeps working unchanged.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def _exists(name):
    return sa.inspect(op.get_bind()).has_table(name)


def upgrade():
    if not _exists("enterprises"):
        op.create_table(
            "enterprises",
            sa.Column("number", sa.Text(), primary_key=True),
            sa.Column("name", sa.Text()),
            sa.Column("secret", sa.Text()),
            sa.Column("integrations_config", JSONType),
        )
    if not _exists("integration_logs"):
        op.create_table(
            "integration_logs",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("created_at", sa.DateTime()),
            sa.Column("enterprise_number", sa.Text()),
            sa.Column("integration_type", sa.Text()),
            sa.Column("event_type", sa.Text()),
            sa.Column("request_data", JSONType),
            sa.Column("response_data", JSONType),
            sa.Column("status", sa.Text()),
            sa.Column("error_message", sa.Text()),
        )
        op.create_index("ix_integration_logs_ent_created", "integration_logs",
                        ["enterprise_number", "integration_type", "created_at"])
    op.create_table(
        "ms_webhooks",
        sa.Column("uuid_sha256", sa.String(64), primary_key=True),
        sa.Column("enterprise_number", sa.Text(), nullable=False),
    )
    op.create_index("ix_ms_webhooks_enterprise_number", "ms_webhooks", ["enterprise_number"])
    op.create_table(
        "ms_calls",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("enterprise_number", sa.Text(), nullable=False),
        sa.Column("unique_id", sa.Text(), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("phone", sa.Text(), nullable=False),
        sa.Column("extensions", JSONType),
        sa.Column("answered_extension", sa.Text()),
        sa.Column("start_time", sa.DateTime()),
        sa.Column("answer_time", sa.DateTime()),
        sa.Column("end_time", sa.DateTime()),
        sa.Column("call_status", sa.String(16)),
        sa.Column("record_url", sa.Text()),
        sa.Column("notify", sa.Boolean()),
        sa.Column("status", sa.String(16)),
        sa.Column("ms_call_id", sa.Text()),
        sa.Column("external_id", sa.Text()),
        sa.Column("create_attempted", sa.Boolean()),
        sa.Column("shown", JSONType),
        sa.Column("hidden", JSONType),
        sa.Column("answer_sent", sa.Boolean()),
        sa.Column("end_sent", sa.Boolean()),
        sa.Column("sequence", sa.Integer()),
        sa.Column("counterparty_id", sa.Text()),
        sa.Column("customer_checked", sa.Boolean()),
        sa.Column("customer_attempted", sa.Boolean()),
        sa.Column("customer_created", sa.Boolean()),
        sa.Column("order_attempted", sa.Boolean()),
        sa.Column("order_id", sa.Text()),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", sa.DateTime()),
        sa.Column("updated_at", sa.DateTime()),
        sa.UniqueConstraint("enterprise_number", "unique_id", name="uq_ms_calls_call"),
    )
    op.create_table(
        "ms_jobs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("enterprise_number", sa.Text()),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload", JSONType),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_at", sa.DateTime(), nullable=False),
        sa.Column("lease_until", sa.DateTime()),
        sa.Column("locked_by", sa.Text()),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_ms_jobs_due", "ms_jobs", ["status", "run_at"])
    op.create_index("ix_ms_jobs_key", "ms_jobs", ["key", "id"])


def downgrade():
    # Only the service's own tables: the platform tables are never dropped.
    op.drop_table("ms_jobs")
    op.drop_table("ms_calls")
    op.drop_index("ix_ms_webhooks_enterprise_number", table_name="ms_webhooks")
    op.drop_table("ms_webhooks")
