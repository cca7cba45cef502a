"""Keep the database lean: rows older than MS_RETENTION_DAYS go, in small batches (ticker task).

What goes: this service's journal rows (`integration_logs` with integration_type 'ms'; other
integrations' rows are never touched) with their links to calls (`ms_call_journal`), finished jobs (done
or dead), ended calls, clicks, closed callback tasks, the analytics rollup and customers' names.

Every walk follows an index, oldest first, and stops at the cutoff: per enterprise where the table's
index begins with the enterprise (the enterprises found by a skip along that index, one probe each),
per status where it begins with the status. Never a walk of a whole table, however large the platform's
journal (docs/design.md 7). Each batch is one short transaction of at most BATCH rows, with a pause
between batches and a time budget per tick, so the event path never waits behind a long delete. A
table whose walk ended is walked again once the cutoff has moved by STEP: the probes are hourly, not
every tick, and a row stays at most STEP past its retention.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, delete, select, true

from msapp import metrics
from msapp.clock import utcnow
from msapp.db.models import (
    AuthFailure,
    AuthLockout,
    Call,
    CallbackEpisode,
    CallHour,
    CallJournal,
    Click,
    ClickCooldown,
    CustomerName,
    IntegrationLog,
    Job,
    MsTask,
)
from msapp.db.reader import read_only
from msapp.extensions import db

log = logging.getLogger("msapp.retention")
BATCH = 500
SQLITE_BATCH = 100  # there a batch holds the process's writer lock, which the event path waits for: ~5 ms
PAUSE = 0.05
BUDGET = 2.0  # seconds of pruning per tick at most; the rest waits for the next tick
STEP = timedelta(hours=1)
TICK = 60.0  # seconds between the ticker's prunes (the first one TICK after start)


@dataclass(frozen=True)
class Walk:
    """One table's walk: `parts()` the leading values of its index (each a condition), `old(cutoff)` what
    goes, `order` the indexed column the walk follows after the part; `also(ids)`, if set, deletes what
    goes with a batch's rows, in its transaction."""

    name: str
    table: object
    order: object
    parts: Callable[[], list]
    old: Callable[[object], object]
    also: Callable[[list], None] | None = None


def enterprises_of(column) -> list:
    """The distinct values of an indexed column, one index probe each (a skip along the index): `= each`
    conditions. None (rows of no enterprise) is not among them."""
    found, last = [], ""
    while True:
        last = db.session.scalar(select(column).where(column > last).order_by(column).limit(1))
        if last is None:
            return [column == number for number in found]
        found.append(last)


def _walks() -> list:
    logs, jobs, calls, clicks, tasks = (IntegrationLog.__table__, Job.__table__, Call.__table__, Click.__table__,
                                        MsTask.__table__)
    hours, callbacks, names = CallHour.__table__, CallbackEpisode.__table__, CustomerName.__table__
    return [  # (enterprise_number, integration_type, created_at): the platform's index, not one of ours
        Walk("integration_logs", logs, logs.c.created_at,
             lambda: [*enterprises_of(logs.c.enterprise_number), logs.c.enterprise_number.is_(None)],
             lambda cutoff: and_(logs.c.integration_type == "ms", logs.c.created_at < cutoff), _forget_links),
        Walk("ms_jobs", jobs, jobs.c.run_at,  # (status, run_at, id); a finished job ran at or after run_at
             lambda: [jobs.c.status == "done", jobs.c.status == "dead"],
             lambda cutoff: and_(jobs.c.run_at < cutoff, jobs.c.updated_at < cutoff)),
        Walk("ms_calls", calls, calls.c.start_time,  # (enterprise_number, start_time); set by the first event
             lambda: enterprises_of(calls.c.enterprise_number),
             lambda cutoff: and_(calls.c.start_time < cutoff, calls.c.status == "ended", calls.c.updated_at < cutoff)),
        Walk("ms_clicks", clicks, clicks.c.created_at, lambda: enterprises_of(clicks.c.enterprise_number),
             lambda cutoff: clicks.c.created_at < cutoff),
        Walk("ms_tasks", tasks, tasks.c.updated_at, lambda: [tasks.c.state == "closed"],
             lambda cutoff: tasks.c.updated_at < cutoff),
        Walk("ms_call_hours", hours, hours.c.hour, lambda: enterprises_of(hours.c.enterprise_number),
             lambda cutoff: hours.c.hour < cutoff),
        Walk("ms_callbacks", callbacks, callbacks.c.first_missed_at,
             lambda: enterprises_of(callbacks.c.enterprise_number),
             lambda cutoff: callbacks.c.first_missed_at < cutoff),
        Walk("ms_customer_names", names, names.c.updated_at, lambda: [true()],
             lambda cutoff: names.c.updated_at < cutoff),
    ]


def _forget_links(log_ids: list) -> None:
    """A journal row's link to its call goes with it."""
    links = CallJournal.__table__
    db.session.execute(delete(links).where(links.c.log_id.in_(log_ids)))


SECURITY_STATE = timedelta(days=1)  # longer than any lockout, cool-down or the window that counts them


def forget_security_state(before) -> None:
    """Wrong admin tokens and lockouts, and click cool-downs, that ended before `before`."""
    db.session.execute(delete(AuthFailure).where(AuthFailure.at < before))
    db.session.execute(delete(AuthLockout).where(AuthLockout.last_at < before, AuthLockout.locked_until < before))
    db.session.execute(delete(ClickCooldown).where(ClickCooldown.until < before))
    db.session.commit()


class Retention:
    def __init__(self, days: int, step: timedelta = STEP):
        self.days = days
        self.step = step
        self.walked: dict = {}  # table -> the cutoff its last complete walk reached

    def prune(self, budget: float = BUDGET) -> dict:
        """Delete what is older than the retention period, batch by batch; returns rows deleted per table.
        The admin door's counts and ended click cool-downs go after a day, whatever the retention."""
        forget_security_state(utcnow() - SECURITY_STATE)
        if self.days <= 0:
            return {}
        cutoff = utcnow() - timedelta(days=self.days)
        deadline = time.monotonic() + budget
        deleted: dict = {}
        for walk in _walks():
            walked = self.walked.get(walk.name)
            if walked is not None and cutoff - walked < self.step:
                continue
            if time.monotonic() >= deadline:
                break
            if self._walk(walk, cutoff, deadline, deleted):
                self.walked[walk.name] = cutoff
        if deleted:
            log.info("retention: deleted %s", ", ".join(f"{n} {c}" for n, c in deleted.items()))
        return deleted

    def _walk(self, walk: Walk, cutoff, deadline: float, deleted: dict) -> bool:
        """Prune one table, part by part; True when it reached the cutoff everywhere within the budget."""
        table, old = walk.table, walk.old(cutoff)
        batch = min(BATCH, SQLITE_BATCH) if db.engine.dialect.name == "sqlite" else BATCH
        read_only()  # finding what goes only reads (SQLite: outside the writer lock); the delete checks again
        parts = walk.parts()
        db.session.commit()
        for part in parts:
            last = None  # keyset: each batch starts where the previous one ended (PostgreSQL would otherwise
            while True:  # wade through every dead index entry the earlier batches left)
                if time.monotonic() >= deadline:
                    return False
                where = and_(part, old) if last is None else and_(part, old, walk.order >= last)
                read_only()
                rows = db.session.execute(select(table.c.id, walk.order).where(where).order_by(walk.order)
                                          .limit(batch)).all()
                db.session.commit()
                ids = [row[0] for row in rows]
                if ids:
                    if walk.also:
                        walk.also(ids)
                    gone = db.session.execute(delete(table).where(table.c.id.in_(ids), part, old)).rowcount
                    deleted[walk.name] = deleted.get(walk.name, 0) + gone
                    metrics.PRUNED.labels(walk.name).inc(gone)
                    last = rows[-1][1]
                db.session.commit()
                if len(ids) < batch:
                    break
                time.sleep(PAUSE)  # let the event path's writers in between batches
        return True
