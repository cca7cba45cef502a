"""What the support desk asks at a platform's scale (docs/design.md 5.4, docs/operations.md): a call's
journal rows by call (`ms_call_journal`), so a call's story is told without searching the platform's
`integration_logs` (which stays as it is: no index or column added to it); the calls still going, by
enterprise and start, and an enterprise's jobs not done (partial indexes, built CONCURRENTLY on
PostgreSQL); closed callback tasks by age, for retention.

The links of the rows already journaled are filled here, walking `integration_logs` by primary key in
ranges (each range one short statement, committed on its own on PostgreSQL), so the table is never
locked and a platform's month takes minutes, not one long transaction.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

PARTIAL = (("ix_ms_calls_open", "ms_calls", ["enterprise_number", "start_time"], "status <> 'ended'"),
           ("ix_ms_jobs_enterprise_unfinished", "ms_jobs", ["enterprise_number", "status"], "status <> 'done'"))
RANGE = 50_000  # journal ids per backfill statement
BACKFILL = {
    "postgresql": "INSERT INTO ms_call_journal (log_id, enterprise_number, unique_id) "
                  "SELECT id, enterprise_number, request_data ->> 'unique_id' FROM integration_logs "
                  "WHERE id > :low AND id <= :high AND integration_type = 'ms' AND enterprise_number IS NOT NULL "
                  "AND request_data ->> 'unique_id' IS NOT NULL ON CONFLICT DO NOTHING",
    "sqlite": "INSERT OR IGNORE INTO ms_call_journal (log_id, enterprise_number, unique_id) "
              "SELECT id, enterprise_number, json_extract(request_data, '$.unique_id') FROM integration_logs "
              "WHERE id > :low AND id <= :high AND integration_type = 'ms' AND enterprise_number IS NOT NULL "
              "AND json_valid(request_data) AND json_type(request_data, '$.unique_id') = 'text'",
}


def upgrade():
    op.create_table(
        "ms_call_journal",
        sa.Column("log_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("enterprise_number", sa.Text(), nullable=False),
        sa.Column("unique_id", sa.Text(), nullable=False),
    )
    op.create_index("ix_ms_call_journal_call", "ms_call_journal", ["enterprise_number", "unique_id", "log_id"])
    op.create_index("ix_ms_tasks_state_updated", "ms_tasks", ["state", "updated_at"])
    bind = op.get_bind()
    statement = sa.text(BACKFILL[bind.dialect.name])
    if bind.dialect.name == "postgresql":
        with op.get_context().autocommit_block():  # CONCURRENTLY cannot run in a transaction
            for name, table, columns, where in PARTIAL:
                op.create_index(name, table, columns, postgresql_concurrently=True, if_not_exists=True,
                                postgresql_where=sa.text(where))
            _backfill(bind, statement)
    else:
        for name, table, columns, where in PARTIAL:
            op.create_index(name, table, columns, sqlite_where=sa.text(where))
        _backfill(bind, statement)


def _backfill(bind, statement) -> None:
    """Ranges of ids up to the highest id there is when the walk reaches it (rows journaled meanwhile by a
    process still on the previous version are included)."""
    low = 0
    while True:
        top = bind.execute(sa.text("SELECT max(id) FROM integration_logs")).scalar() or 0
        if low >= top:
            return
        bind.execute(statement, {"low": low, "high": low + RANGE})
        low += RANGE


def downgrade():
    for name, table, _columns, _where in PARTIAL:
        op.drop_index(name, table_name=table)
    op.drop_index("ix_ms_tasks_state_updated", table_name="ms_tasks")
    op.drop_index("ix_ms_call_journal_call", table_name="ms_call_journal")
    op.drop_table("ms_call_journal")
