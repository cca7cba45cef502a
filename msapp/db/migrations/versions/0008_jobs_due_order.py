"""The claim's index gives jobs in the claim's own order (status, run_at, id), so a claim stops at its
first fit whatever the backlog (before, PostgreSQL sorted every due job for each claim).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_index("ix_ms_jobs_due", table_name="ms_jobs")
    op.create_index("ix_ms_jobs_due", "ms_jobs", ["status", "run_at", "id"])


def downgrade():
    op.drop_index("ix_ms_jobs_due", table_name="ms_jobs")
    op.create_index("ix_ms_jobs_due", "ms_jobs", ["status", "run_at"])
