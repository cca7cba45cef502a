"""Ownership in buckets: each job carries its enterprise's bucket; live processes register in ms_workers.

Replaces the 30 s enterprise leases (ms_enterprise_leases), which made a killed owner's enterprises wait
for their lease to expire; ownership is now a PostgreSQL advisory lock per bucket, released by the
server the moment the owner's connection ends (msapp/ownership.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("ms_jobs", sa.Column("bucket", sa.Integer(), nullable=True))
    op.create_table(
        "ms_workers",
        sa.Column("worker_id", sa.Text(), primary_key=True),
        sa.Column("lock_key", sa.BigInteger(), nullable=False),
        sa.Column("host", sa.Text()),
        sa.Column("pid", sa.Integer()),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
    )
    op.drop_table("ms_enterprise_leases")


def downgrade():
    op.create_table(
        "ms_enterprise_leases",
        sa.Column("enterprise_number", sa.Text(), primary_key=True),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    op.drop_table("ms_workers")
    with op.batch_alter_table("ms_jobs") as batch:
        batch.drop_column("bucket")
