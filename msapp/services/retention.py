"""Keep the database lean: rows older than MS_RETENTION_DAYS go, in small batches (ticker task).

What goes: this service's journal rows (`integration_logs` with integration_type 'ms'; other
integrations' rows are never touched), finished jobs (done or dead), ended calls, clicks, and closed
callback tasks. Each batch is one short transaction of at most BATCH rows chosen by primary key (old rows
come first, so the scan stops early), with a pause between batches and a time budget per tick, so the
event path never waits behind a long delete.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy import and_, delete, select

from msapp import metrics
from msapp.clock import utcnow
from msapp.db.models import (
    AuthFailure,
    AuthLockout,
    Call,
    CallbackEpisode,
    CallHour,
    Click,
    ClickCooldown,
    CustomerName,
    IntegrationLog,
    Job,
    MsTask,
)
from msapp.extensions import db

log = logging.getLogger("msapp.retention")
BATCH = 500
PAUSE = 0.05
BUDGET = 2.0  # seconds of pruning per tick at most; the rest waits for the next tick


def _targets(cutoff) -> list:
    logs, jobs, calls, clicks, tasks = (IntegrationLog.__table__, Job.__table__, Call.__table__, Click.__table__,
                                        MsTask.__table__)
    hours, callbacks, names = CallHour.__table__, CallbackEpisode.__table__, CustomerName.__table__
    return [
        ("integration_logs", logs, and_(logs.c.integration_type == "ms", logs.c.created_at < cutoff)),
        ("ms_jobs", jobs, and_(jobs.c.status.in_(("done", "dead")), jobs.c.updated_at < cutoff)),
        ("ms_calls", calls, and_(calls.c.status == "ended", calls.c.updated_at < cutoff)),
        ("ms_clicks", clicks, clicks.c.created_at < cutoff),
        ("ms_tasks", tasks, and_(tasks.c.state == "closed", tasks.c.updated_at < cutoff)),
        ("ms_call_hours", hours, hours.c.hour < cutoff),
        ("ms_callbacks", callbacks, callbacks.c.first_missed_at < cutoff),
        ("ms_customer_names", names, names.c.updated_at < cutoff),
    ]


SECURITY_STATE = timedelta(days=1)  # longer than any lockout, cool-down or the window that counts them


def forget_security_state(before) -> None:
    """Wrong admin tokens and lockouts, and click cool-downs, that ended before `before`."""
    db.session.execute(delete(AuthFailure).where(AuthFailure.at < before))
    db.session.execute(delete(AuthLockout).where(AuthLockout.last_at < before, AuthLockout.locked_until < before))
    db.session.execute(delete(ClickCooldown).where(ClickCooldown.until < before))
    db.session.commit()


class Retention:
    def __init__(self, days: int):
        self.days = days

    def prune(self, budget: float = BUDGET) -> dict:
        """Delete what is older than the retention period, batch by batch; returns rows deleted per table.
        The admin door's counts and ended click cool-downs go after a day, whatever the retention."""
        forget_security_state(utcnow() - SECURITY_STATE)
        if self.days <= 0:
            return {}
        cutoff = utcnow() - timedelta(days=self.days)
        deadline = time.monotonic() + budget
        deleted: dict = {}
        for name, table, cond in _targets(cutoff):
            last = 0  # keyset: each batch starts past the previous one (PostgreSQL would otherwise wade
            while time.monotonic() < deadline:  # through every dead index entry the earlier batches left)
                ids = select(table.c.id).where(cond, table.c.id > last).order_by(table.c.id).limit(BATCH)
                gone = db.session.execute(delete(table).where(table.c.id.in_(ids.scalar_subquery()))
                                          .returning(table.c.id)).scalars().all()
                db.session.commit()
                count = len(gone)
                last = max(gone, default=last)
                if count:
                    deleted[name] = deleted.get(name, 0) + count
                    metrics.PRUNED.labels(name).inc(count)
                if count < BATCH:
                    break
                time.sleep(PAUSE)  # let the event path's writers in between batches
        if deleted:
            log.info("retention: deleted %s", ", ".join(f"{n} {c}" for n, c in deleted.items()))
        return deleted
