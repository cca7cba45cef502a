"""The analytics' «tasks closed» per employee counts the period's tasks a call closed by the extension that
closed each (`ms_tasks.closed_by_ext`, written with the close: services/tasks.py), from one partial index
(enterprise, closed_at, closed_by_ext), instead of looking up each task's closing call (docs/design.md
5.4); it takes the place of 0014's index. The enterprise page's today panel counts the tasks opened
today by a second index (enterprise, created_at) and those closed today by the first, instead of walking
the enterprise's tasks.

A nullable column: no rewrite of the table. The tasks closed before are filled here from their closing
calls, in ranges of ids, each one short statement (committed on its own on PostgreSQL, where the indexes
are built CONCURRENTLY), so the event path keeps writing meanwhile.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

OLD = "ix_ms_tasks_closed"
CREATED, CREATED_COLUMNS = "ix_ms_tasks_created", ["enterprise_number", "created_at"]
NAME, COLUMNS, WHERE = "ix_ms_tasks_closed_by", ["enterprise_number", "closed_at", "closed_by_ext"], \
    "closed_reason = 'reached'"
RANGE = 50_000  # task ids per backfill statement
FIRST_EXTENSION = {"postgresql": "c.extensions ->> 0", "sqlite": "json_extract(c.extensions, '$[0]')"}
BACKFILL = ("UPDATE ms_tasks SET closed_by_ext = (SELECT CASE WHEN c.direction = 'in' THEN c.answered_extension "
            "ELSE {first} END FROM ms_calls c WHERE c.enterprise_number = ms_tasks.enterprise_number "
            "AND c.unique_id = ms_tasks.closed_by_call) "
            "WHERE id > :low AND id <= :high AND closed_reason = 'reached' AND closed_by_call IS NOT NULL "
            "AND closed_by_ext IS NULL")


def upgrade():
    op.add_column("ms_tasks", sa.Column("closed_by_ext", sa.Text(), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        with op.get_context().autocommit_block():  # CONCURRENTLY cannot run in a transaction
            backfill(bind)
            op.create_index(NAME, "ms_tasks", COLUMNS, postgresql_concurrently=True, if_not_exists=True,
                            postgresql_where=sa.text(WHERE))
            op.create_index(CREATED, "ms_tasks", CREATED_COLUMNS, postgresql_concurrently=True, if_not_exists=True)
            op.drop_index(OLD, table_name="ms_tasks", postgresql_concurrently=True, if_exists=True)
    else:
        backfill(bind)
        op.create_index(NAME, "ms_tasks", COLUMNS, sqlite_where=sa.text(WHERE))
        op.create_index(CREATED, "ms_tasks", CREATED_COLUMNS)
        op.drop_index(OLD, table_name="ms_tasks")


def backfill(bind) -> None:
    """The closing extension of every task a call closed, by ranges of ids up to the highest there is."""
    statement = sa.text(BACKFILL.format(first=FIRST_EXTENSION[bind.dialect.name]))
    top = bind.execute(sa.text("SELECT max(id) FROM ms_tasks")).scalar() or 0
    for low in range(0, top, RANGE):
        bind.execute(statement, {"low": low, "high": low + RANGE})


def downgrade():
    op.create_index(OLD, "ms_tasks", ["enterprise_number", "closed_at"])
    op.drop_index(CREATED, table_name="ms_tasks")
    op.drop_index(NAME, table_name="ms_tasks")
    with op.batch_alter_table("ms_tasks") as batch:
        batch.drop_column("closed_by_ext")
