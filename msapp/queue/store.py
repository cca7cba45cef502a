"""Durable job queue (table `ms_jobs`): enqueue, claim, finish, retry, inspect. The worker pool is
workers.py; the claim's SQL claims.py; what failures mean policy.py.

Rules (docs/design.md 7):
- `enqueue` adds a row to the caller's transaction (the session's, or a `rawsql.Tx`): the job exists
  exactly when the caller's commit does.
- A job carries its unit of work (`JobContext.work`: the call's progress, its journal rows); it is
  written in the transaction that records the job's outcome, whatever the outcome.
- A job is claimed only when no earlier job with the same `key` is pending and no other one is running,
  so the jobs of one call run strictly in order, one at a time (also when an older dead job is retried
  from the admin). Dead jobs do not block their successors.
- A claim is one UPDATE of the first due job (picked in the same statement; on PostgreSQL `FOR UPDATE
  SKIP LOCKED`, on SQLite under the writer lock), returning it: two claimers never both win and
  consumers do not queue up behind each other.
- A kind of job may name the row it is about (`Subject`): the claim reads it, after taking the job, in
  the same round trip (PostgreSQL) or transaction (SQLite), and hands it to the handler.
- A running job whose lease expired (its process died) is claimed again; the crash counts as an attempt.
- Failures back off exponentially with jitter; a handler may ask for a wait (`Retry(after)`), or for a
  wait that is not an attempt (`Defer(after)`: our own rate limiter, an open breaker); `Permanent` is
  dead at once.
- Two kinds of failure end differently: a `Retry` or `Defer` (MoySklad unreachable, busy, refusing the
  key: the outside world) dies only when the job is older than the retry horizon (MS_RETRY_HORIZON,
  24 h); any other exception (a fault of ours) after `max_attempts` runs.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import (
    and_,
    bindparam,
    func,
    insert,
    literal_column,
    null,
    select,
    update,
)

from msapp import metrics
from msapp.clock import utcnow
from msapp.db import rawsql
from msapp.db.models import Job
from msapp.db.reader import read_only
from msapp.db.work import Work
from msapp.extensions import db
from msapp.queue import wakeups
from msapp.queue.claims import ClaimStatements, Subject, claim_statements, pg_array
from msapp.queue.ownership import BUCKETS, bucket_of
from msapp.queue.policy import Defer, Permanent, Retry, backoff
from msapp.redact import redact_text

log = logging.getLogger("msapp.jobs")

ACTIVE = ("pending", "running")
# run by rawsql (hot path): a new job's constant columns are SQL of the statement, the rest bound (_JOB_KEYS)
_INSERT_JOB_ONLY = insert(Job.__table__).values(status=literal_column("'pending'"), attempts=literal_column("0"),
                                                 lease_until=null(), locked_by=null(), last_error=null())
_INSERT_JOB = _INSERT_JOB_ONLY.returning(Job.__table__.c.id)
_JOB_KEYS = ("bucket", "created_at", "enterprise_number", "key", "kind", "max_attempts", "payload", "run_at",
             "updated_at")



@dataclass(frozen=True)
class JobContext:
    id: int
    kind: str
    key: str
    enterprise_number: Optional[str]
    payload: dict
    attempts: int
    max_attempts: int
    created_at: Optional[datetime] = None
    subject: Optional[dict] = None  # its kind's Subject row, read with the claim (None: none, or gone)
    more: bool = False  # another waiting job was due when this one was claimed
    work: Work = field(default_factory=Work, compare=False, repr=False)  # written with the outcome


Handler = Callable[[JobContext], Any]


_JOBS = Job.__table__
_FINISH = update(_JOBS).where(_JOBS.c.id == bindparam("_id"), _JOBS.c.locked_by == bindparam("_by"),
                              _JOBS.c.status == "running")



class JobQueue:
    """Enqueue, claim, finish and inspect jobs. One instance per app; thread-safe."""

    def __init__(self, lease_seconds: float = 120.0, worker_id: Optional[str] = None,
                 retry_horizon: float = 86400.0):
        self.lease_seconds = lease_seconds
        self.retry_horizon = timedelta(seconds=retry_horizon)
        self.worker_id = worker_id or f"{uuid.uuid4().hex[:8]}"
        self.handlers: dict[str, tuple[Handler, int]] = {}
        self.subjects: dict[str, Subject] = {}
        self._claims: dict = {}  # claim statements by dialect (they depend on the subjects)
        self._wakeup = threading.Condition()
        self._signals = 0  # notified jobs no claim has matched yet (see worth_claiming)
        self._running_keys: dict[str, int] = {}  # keys whose job a worker here runs now
        self._generation = 0
        self._claim_lock = threading.Lock()
        self.ownership = None  # ownership.PgOwnership when several processes share PostgreSQL
        self.announce_to: Optional[str] = None  # wakeups.announce_only: the channel of a process without workers
        self._bucket_list: tuple = (None, None)  # the owned buckets, and their bound form

    # -- registration and enqueue -------------------------------------------------------------
    def register(self, kind: str, handler: Handler, max_attempts: int = 10, subject: Optional[Subject] = None) -> None:
        """Run `handler` for jobs of `kind`; with `subject`, each claim reads that row (JobContext.subject)."""
        self.handlers[kind] = (handler, max_attempts)
        if subject is not None:
            self.subjects[kind] = subject
            self._claims = {}

    def enqueue(self, kind: str, key: str, payload: Optional[dict] = None, *,
                enterprise_number: Optional[str] = None, delay: float = 0.0,
                max_attempts: Optional[int] = None, tx: Optional[rawsql.Tx] = None) -> Optional[int]:
        """Insert a job in the current transaction (the session's, or `tx`); it is durable when the caller
        commits, and announced to the other processes then (`wakeups.announce`) unless it waits a `delay`.
        Returns its id; None in `tx`, where the insert may go to the server `later` (batched)."""
        if max_attempts is None:
            max_attempts = self.handlers.get(kind, (None, 10))[1]
        now = utcnow()
        row = dict(kind=kind, key=key, payload=payload or {}, enterprise_number=enterprise_number,
                   bucket=bucket_of(enterprise_number), max_attempts=max_attempts,
                   run_at=now + timedelta(seconds=delay), created_at=now, updated_at=now)
        if tx is not None:
            tx.later(_INSERT_JOB_ONLY, row, keys=_JOB_KEYS)
            if not delay:  # on PostgreSQL it goes to the server with the insert: no round trip of its own
                wakeups.announce(self, tx.later, row["bucket"])
            return None
        job_id = db.session.execute(_INSERT_JOB, row).scalar_one()
        if not delay:
            wakeups.announce(self, db.session.execute, row["bucket"])
        return job_id

    def notify(self, everyone: bool = False, key: Optional[str] = None) -> None:
        """Wake one idle worker of this process (call after committing a new job); all when stopping.

        Waking every worker for one job would make each run a claim transaction for nothing; so would
        waking one for a job of `key` while a worker here runs that key's job (per-key order holds the
        new one back): that worker claims again when it is back (`worth_claiming`), and finds it.
        """
        with self._wakeup:
            self._signals += 1
            self._generation += 1
            if everyone:
                self._wakeup.notify_all()
            elif key is None or key not in self._running_keys:
                self._wakeup.notify()

    def running(self, key: str, delta: int) -> None:
        """A worker here starts (+1) or has finished (-1) a job of `key` (see `notify`)."""
        with self._wakeup:
            count = self._running_keys.get(key, 0) + delta
            if count > 0:
                self._running_keys[key] = count
            else:
                self._running_keys.pop(key, None)

    def wait(self, timeout: float, stop: Optional[threading.Event] = None) -> None:
        """Sleep until a notify or `timeout`; not at all once `stop` is set (checked under the lock that
        `notify(everyone=True)` takes, so a worker stopping as it comes back cannot miss it)."""
        with self._wakeup:
            if stop is None or not stop.is_set():
                self._wakeup.wait(timeout)

    @property
    def generation(self) -> int:
        """How many times `notify` has run: a worker notes it when it claims."""
        return self._generation

    def worth_claiming(self, since: int) -> bool:
        """Whether a worker back from a job should claim again at once rather than wait for a notify or its
        idle poll: always while other processes are alive (their jobs are announced by no notify here);
        alone (SQLite, or the only live process on PostgreSQL), only if jobs were announced that no claim
        has taken yet, or anything was announced since the worker's last claim (it may have been waiting
        for the job just finished, same key). A claim that finds nothing was a third of all claims.

        A process that has just started is seen by the next ownership tick (0.5 s); until then its jobs
        in this process's buckets wait at most for the idle poll, as they would for an idle worker."""
        owner = self.ownership
        return (owner is not None and not owner.alone) or self._signals > 0 or self._generation != since

    def _claimed(self, found: bool) -> None:
        with self._wakeup:
            self._signals = max(0, self._signals - 1) if found else 0

    # -- claim and finish --------------------------------------------------------------------
    def claim(self, busy_enterprises: frozenset = frozenset()) -> Optional[JobContext]:
        """Take one due job (or one whose lease expired), or None. Commits its own transaction.

        With an ownership (several processes on PostgreSQL) only jobs of the buckets this process owns
        are taken, on the ownership's own connection: no locks, no claim."""
        with self._claim_lock:  # threads of one process never race each other for the same rows
            owner = self.ownership
            if owner is None:
                with rawsql.transaction() as tx:
                    job = self._claim(tx, busy_enterprises, None)
                self._claimed(job is not None)
                return job
            buckets = owner.claimable()
            if not buckets:
                return None
            job = owner.run(lambda conn: self._claim_on(conn, busy_enterprises, buckets))
            self._claimed(job is not None)
            return job

    def _claim_on(self, conn, busy: frozenset, buckets: frozenset) -> Optional[JobContext]:
        """The claim on the ownership's connection, in autocommit: the one UPDATE is its own transaction
        (one round trip; psycopg2 would add one for BEGIN and one for COMMIT)."""
        with rawsql.transaction(atomic=False, connection=conn) as tx:
            return self._claim(tx, busy, buckets)

    def _claim(self, tx: rawsql.Tx, busy: frozenset, buckets: Optional[frozenset]) -> Optional[JobContext]:
        dialect = tx.dialect.name
        st = self._claims.get(dialect)
        if st is None:
            st = self._claims[dialect] = claim_statements(dialect, self.subjects)
        now = utcnow()
        retaken = f"lease expired (its process stopped); taken again by {self.worker_id} at {now:%H:%M:%S.%f}"
        as_list = pg_array if dialect == "postgresql" else json.dumps
        params = {"_now": now, "_by": self.worker_id, "_lease": now + timedelta(seconds=self.lease_seconds),
                  "_retaken": retaken, "_busy": as_list(sorted(busy))}
        if buckets is not None and len(buckets) >= BUCKETS:
            buckets = None  # it owns them all (alone): the filter would let every job through
        if buckets is not None:
            if self._bucket_list[0] != buckets:  # they change at ownership ticks, not per claim
                self._bucket_list = (buckets, as_list(sorted(buckets)))
            params["_buckets"] = self._bucket_list[1]
        if st.read is not None:  # PostgreSQL with subjects: take, then read with the subject, one round trip
            tx.later(st.first(buckets is not None), params)
            job = tx.first(st.read, {"_now": now})
        else:
            job = tx.first(st.first(buckets is not None), params)
        if job is None:
            return None
        if st.more is not None:
            job["more"] = tx.first(st.more, {"_now": now})["more"]
        if job["last_error"] == retaken:
            log.warning("job %s (%s) taken again after its lease expired", job["id"], job["kind"])
        payload = dict(job["payload"] or {})
        return JobContext(job["id"], job["kind"], job["key"], job["enterprise_number"], payload, job["attempts"],
                          job["max_attempts"], job["created_at"], self._subject(tx, st, job, payload),
                          bool(job["more"]))

    def _subject(self, tx: rawsql.Tx, st: ClaimStatements, job: dict, payload: dict) -> Optional[dict]:
        subject = self.subjects.get(job["kind"])
        if subject is None:
            return None
        if st.read is not None:  # read with the claim, as s<n>_<column>
            prefix = st.prefixes[job["kind"]]
            row = {name: job[prefix + name] for name in subject.columns}
            return row if row.get("id") is not None else None
        key = payload.get(subject.key)
        return tx.first(subject.select, {"_id": key}) if isinstance(key, int) else None

    def _finish(self, job: JobContext, **values: Any) -> None:
        """Record the job's outcome (only if this worker still holds it) with the job's unit of work, in one
        transaction (the session's, when the handler left work open)."""
        values.setdefault("updated_at", utcnow())
        with rawsql.transaction() as tx:
            job.work.write(tx)
            tx.later(_FINISH, {**values, "_id": job.id, "_by": self.worker_id}, keys=rawsql.columns_of(values))

    def complete(self, job: JobContext) -> None:
        self._finish(job, status="done", lease_until=None, locked_by=None)

    def fail(self, job: JobContext, exc: BaseException) -> str:
        """Record a failed run: reschedule, defer or mark dead. Returns the new status."""
        error = redact_text(f"{type(exc).__name__}: {exc}")[:2000]
        now = utcnow()
        outside = isinstance(exc, (Retry, Defer))
        past_horizon = outside and job.created_at is not None and now - job.created_at > self.retry_horizon
        if past_horizon:
            error = f"gave up after the retry horizon ({self.retry_horizon}): {error}"[:2000]
        if isinstance(exc, Defer) and not past_horizon:
            self._finish(job, status="pending", attempts=job.attempts - 1, lease_until=None,
                         locked_by=None, run_at=now + timedelta(seconds=exc.after))
            return "pending"
        if isinstance(exc, Permanent) or past_horizon or (not outside and job.attempts >= job.max_attempts):
            self._finish(job, status="dead", lease_until=None, locked_by=None, last_error=error)
            metrics.JOBS_DEAD.labels(job.kind).inc()
            log.error("job %s (%s, key %s) is dead after %s attempts: %s", job.id, job.kind, job.key,
                      job.attempts, error)
            return "dead"
        wait = backoff(job.attempts)
        if isinstance(exc, Retry) and exc.after is not None:
            wait = exc.after * random.uniform(1.0, 1.1)
        self._finish(job, status="pending", lease_until=None, locked_by=None, last_error=error,
                     run_at=now + timedelta(seconds=wait))
        metrics.JOB_RETRIES.labels(job.kind).inc()
        log.info("job %s (%s) attempt %s failed, retry in %.2fs: %s", job.id, job.kind, job.attempts,
                 wait, error)
        return "pending"

    def retry_dead(self, job_id: int, enterprise_number: Optional[str] = None) -> bool:
        """Put a dead job back in the queue with fresh attempts; False if it is not dead (or not theirs)."""
        j = Job.__table__
        cond = and_(j.c.id == job_id, j.c.status == "dead")
        if enterprise_number is not None:
            cond = and_(cond, j.c.enterprise_number == enterprise_number)
        now = utcnow()
        # created_at restarts too: the retry horizon counts from the admin's retry, not the first enqueue
        result = db.session.execute(update(j).where(cond).values(
            status="pending", attempts=0, run_at=now, created_at=now, updated_at=now))
        db.session.commit()
        if result.rowcount:
            self.notify()
        return bool(result.rowcount)

    def run_one(self, job: JobContext) -> str:
        """Run the handler of a claimed job and record the outcome. Returns the job's new status."""
        with rawsql.held_connection():  # the job's transactions share one pooled connection
            return self._run(job)

    def _run(self, job: JobContext) -> str:
        entry = self.handlers.get(job.kind)
        try:
            if entry is None:
                raise Permanent(f"no handler for job kind {job.kind!r}")
            entry[0](job)
            self.complete(job)  # with the handler's writes still open in the session, if any: one commit
        except Exception as exc:  # any failure of a handler is the job's failure, never the worker's
            db.session.rollback()
            if not isinstance(exc, (Retry, Defer, Permanent)):
                log.debug("job %s failed: %s", job.id, redact_text(traceback.format_exc()))
            return self.fail(job, exc)  # the journal of the failed exchanges is committed with the failure
        return "done"

    # -- inspection ---------------------------------------------------------------------------
    def stats(self) -> dict:
        """The queue's depth, its oldest pending job's age and its dead jobs. Each figure is a search by
        status (ix_ms_jobs_due, or the partial index of unfinished jobs), so the done jobs of a month are
        never read; in a reader's transaction (on SQLite outside the writers' lock: /readyz is polled
        while the event path runs)."""
        j = Job.__table__

        def of(column, where):
            return select(column).select_from(j).where(where).scalar_subquery()

        read_only()
        row = db.session.execute(select(
            of(func.count(), j.c.status.in_(ACTIVE)),
            of(func.min(j.c.created_at), j.c.status == "pending"),
            of(func.count(), j.c.status == "dead"),
        )).one()
        db.session.commit()
        oldest = (utcnow() - row[1]).total_seconds() if row[1] else 0.0
        return {"depth": int(row[0] or 0), "oldest_pending_age_seconds": round(max(0.0, oldest), 3),
                "dead": int(row[2] or 0)}

