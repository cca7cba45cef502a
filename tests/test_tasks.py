"""The today panel's task counts (services/tasks.py, Tasks.today): what they count, and that each walks its
index from the day on, not the enterprise's month of tasks."""
from datetime import datetime, timedelta

from sqlalchemy import text

from msapp.db.models import MsTask
from msapp.extensions import db
from msapp.services.tasks import Tasks
from tests.explain import assert_index_access, selects

DAY = datetime(2026, 12, 2)


def task(n, created, task_id="t", closed=None, reason=None, number="0367"):
    return MsTask(enterprise_number=number, phone=f"+3752910000{n:02d}", state="closed" if closed else "open",
                  task_id=task_id, marker=f"m{n}", missed=[], created_at=created, updated_at=created,
                  closed_at=closed, closed_reason=reason)


def test_today_counts_tasks_opened_and_closed_by_a_call_since_the_day(ctx):
    before, during = DAY - timedelta(hours=3), DAY + timedelta(hours=2)
    db.session.add_all([
        task(1, during),  # opened today
        task(2, during, task_id=None),  # its create never reached MoySklad: not opened
        task(3, before, closed=during, reason="reached"),  # opened yesterday, a call closed it today
        task(4, during, closed=during, reason="person"),  # opened today, a person closed it: not by a call
        task(5, before, closed=before, reason="reached"),  # all yesterday
        task(6, during, closed=during, reason="reached", number="0500"),  # another enterprise
    ])
    db.session.commit()
    assert Tasks.today("0367", DAY) == {"tasks_opened": 2, "tasks_closed": 1}  # tasks 1 and 4; task 3


def test_today_walks_the_day_not_the_enterprises_month(ctx):
    with selects() as seen:
        Tasks.today("0367", DAY)
    assert_index_access(seen, keyed=True, rows=a_month_of_tasks)


def a_month_of_tasks(conn):
    """2,000 tasks of the enterprise over the month before, each closed by a call, and fresh statistics."""
    conn.execute(MsTask.__table__.insert(), [{
        "enterprise_number": "0367", "phone": f"+37529{2000000 + n}", "state": "closed", "task_id": f"t{n}",
        "marker": f"old-{n}", "missed": [], "created_at": DAY - timedelta(minutes=20 * n - 1),
        "updated_at": DAY, "closed_at": DAY - timedelta(minutes=20 * n), "closed_reason": "reached",
        "closed_by_ext": "150"} for n in range(1, 2001)])
    conn.execute(text("ANALYZE ms_tasks"))
