"""The worker pool: threads that claim jobs and run their handlers inside an app context, a scheduler for
periodic tasks, and (several processes on PostgreSQL) the ownership tick and the wake-up listener.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from sqlalchemy import (
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from msapp import metrics
from msapp.clock import utcnow
from msapp.db.models import Job
from msapp.extensions import db
from msapp.queue.ownership import bucket_of
from msapp.queue.store import JobQueue
from msapp.redact import redact_text

log = logging.getLogger("msapp.jobs")


class WorkerPool:
    """`size` threads, each claiming and running jobs inside an app context."""

    def __init__(self, app, queue: JobQueue, size: int, idle_poll: float = 0.5):
        self.app = app
        self.queue = queue
        self.size = size
        self.idle_poll = idle_poll
        # A slow enterprise may hold at most this many of this process's workers at once.
        self.per_enterprise = max(1, math.ceil(size / 2))
        self._running: dict[str, int] = {}
        self._unrecorded: set[int] = set()  # jobs whose outcome could not be written (database down)
        self._lock = threading.Lock()
        self._claim_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._periodic: list[list] = []  # [interval, due (monotonic), task]
        self.ownership = None  # ownership.PgOwnership (PostgreSQL), taken at start
        self.listener = None  # wakeups.Listener: other processes' jobs in this one's buckets

    def every(self, interval: float, task: Callable[[], Any]) -> None:
        """Run `task` (in an app context) every `interval` seconds, first one interval after start."""
        self._periodic.append([interval, 0.0, task])

    def start(self) -> None:
        """Start the workers (and the ownership, which may refuse: ownership.SecondProcess)."""
        if self._threads:
            return
        self._stop.clear()
        owner = self.ownership
        if owner is not None and not self.size:  # HTTP only: the processes with workers must hear of its jobs
            from msapp.queue.wakeups import announce_only

            with self.app.app_context():
                try:
                    announce_only(self.queue, db.session.connection())
                except SQLAlchemyError as exc:  # its jobs then wait for the workers' idle poll, as before
                    log.warning("jobs queued here will not be announced: %s", type(exc).__name__)
                finally:
                    db.session.remove()
        if owner is not None and self.size:
            with self.app.app_context():
                owner.start()
            self.queue.ownership = owner  # from now on this process claims only in its buckets
            t = threading.Thread(target=self._own, name="ms-owner", daemon=True)
            t.start()
            self._threads.append(t)
            from msapp.queue.wakeups import Listener

            with self.app.app_context():
                self.listener = Listener(self.queue, owner, db.engine.url)
            t = threading.Thread(target=self.listener.run, args=(self._stop,), name="ms-listen", daemon=True)
            t.start()
            self._threads.append(t)
        for i in range(self.size):
            t = threading.Thread(target=self._loop, name=f"ms-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if self._periodic and self.size:
            t = threading.Thread(target=self._tick, name="ms-ticker", daemon=True)
            t.start()
            self._threads.append(t)

    def _own(self) -> None:
        """The ownership thread: which buckets this process works, every TICK (its own thread, so that
        slow housekeeping never delays a failover)."""
        from msapp.queue.ownership import TICK

        with self.app.app_context():
            while not self._stop.wait(TICK):
                self.queue.ownership.tick()
                db.session.remove()

    def busy_buckets(self) -> set:
        """Buckets in which a job of this process is running now (they are not handed over yet)."""

        with self._lock:
            return {bucket_of(e) for e, n in self._running.items() if n > 0}

    def _tick(self) -> None:
        """The ticker thread: periodic housekeeping (each task queues durable jobs or prunes rows)."""
        now = time.monotonic()
        for entry in self._periodic:
            entry[1] = now + entry[0]
        with self.app.app_context():
            while not self._stop.is_set():
                now = time.monotonic()
                for entry in self._periodic:
                    if entry[1] > now:
                        continue
                    entry[1] = now + entry[0]
                    try:
                        entry[2]()
                    except Exception as exc:  # a failed tick is tried again next interval
                        log.warning("periodic task %s failed: %s", getattr(entry[2], "__name__", entry[2]),
                                    redact_text(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__)
                        db.session.rollback()
                        db.session.remove()
                self._stop.wait(min([e[1] for e in self._periodic] + [now + 1.0]) - now)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.queue.notify(everyone=True)
        for t in self._threads:
            t.join(timeout)
        if self._threads and self.queue.ownership is not None:
            with self.app.app_context():  # let the other processes take this one's buckets at once
                self.queue.ownership.stop()
            self.queue.ownership = None
        self._threads = []

    def alive(self) -> int:
        """Worker threads alive (the ticker is not counted)."""
        return sum(1 for t in self._threads if t.is_alive() and t.name.startswith("ms-worker"))

    def _busy(self) -> frozenset:
        with self._lock:
            return frozenset(k for k, n in self._running.items() if n >= self.per_enterprise)

    def _track(self, enterprise: Optional[str], delta: int) -> None:
        if enterprise is None:
            return
        with self._lock:
            self._running[enterprise] = self._running.get(enterprise, 0) + delta
            if self._running[enterprise] <= 0:
                del self._running[enterprise]

    def _release_unrecorded(self) -> None:
        """Hand back, as soon as the database answers again, jobs whose outcome was lost with it.

        Handlers are idempotent (state-based), so running such a job again is safe; waiting for its
        lease would delay the call by minutes.
        """
        with self._lock:
            ids = sorted(self._unrecorded)
        try:
            db.session.execute(update(Job).where(Job.id.in_(ids), Job.status == "running",
                                                 Job.locked_by == self.queue.worker_id)
                               .values(status="pending", lease_until=None, locked_by=None, run_at=utcnow()))
            db.session.commit()
        except Exception:  # still down: try again on the next turn
            db.session.rollback()
            db.session.remove()
            self._stop.wait(1.0)
            return
        with self._lock:
            self._unrecorded.difference_update(ids)
        log.warning("handed back %s job(s) whose outcome was lost while the database was down", len(ids))

    def _loop(self) -> None:
        since, rest = 0, False  # rest: back from a job, wait unless work may wait (worth_claiming)
        with self.app.app_context():
            while not self._stop.is_set():
                if self._unrecorded:
                    self._release_unrecorded()
                if rest and not self.queue.worth_claiming(since):
                    self.queue.wait(self.idle_poll, self._stop)  # a notify, or the idle poll (retries, leases due)
                rest, since = False, self.queue.generation
                try:
                    with self._claim_lock:  # claim and count it as one step, or two workers race past the cap
                        job = self.queue.claim(self._busy())
                        if job is not None:
                            self._track(job.enterprise_number, 1)
                except Exception as exc:  # database down: keep the thread, try again shortly
                    log.warning("claiming a job failed: %s", redact_text(str(exc)).splitlines()[0])
                    db.session.remove()
                    self._stop.wait(1.0)
                    continue
                if job is None:
                    self.queue.wait(self.idle_poll, self._stop)
                    continue
                started, rest = time.monotonic(), True
                self.queue.running(job.key, 1)
                try:
                    # more were due and this one ran: claim again at once. One that had to wait (an open
                    # breaker, a failure) says the rest would too; rushing them would only defer each again.
                    rest = self.queue.run_one(job) != "done" or not job.more
                except Exception as exc:
                    log.error("recording the result of job %s failed: %s", job.id, redact_text(str(exc)))
                    db.session.remove()
                    with self._lock:
                        self._unrecorded.add(job.id)
                finally:
                    self.queue.running(job.key, -1)  # before it looks for more (worth_claiming)
                    self._track(job.enterprise_number, -1)
                    metrics.JOB_SECONDS.labels(job.kind).observe(time.monotonic() - started)
            db.session.remove()


def release_orphans(queue: JobQueue) -> int:
    """Hand back jobs this worker id left running (its previous process died): no wait for the lease."""
    j = Job.__table__
    result = db.session.execute(update(j).where(j.c.status == "running", j.c.locked_by == queue.worker_id)
                                .values(status="pending", lease_until=None, locked_by=None,
                                        run_at=utcnow(), updated_at=utcnow()))
    db.session.commit()
    return result.rowcount or 0

