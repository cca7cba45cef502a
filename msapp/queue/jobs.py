"""Durable job queue (table `ms_jobs`) and the worker pool that runs it.

Rules (docs/design.md 7):
- `enqueue` adds a row to the caller's transaction (the session's, or a `rawsql.Tx`): the job exists
  exactly when the caller's commit does.
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

import functools
import json
import logging
import math
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import (
    Integer,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from msapp import metrics
from msapp.clock import utcnow
from msapp.db import rawsql
from msapp.db.models import Job
from msapp.extensions import db
from msapp.queue import wakeups
from msapp.queue.ownership import BUCKETS, bucket_of
from msapp.redact import redact_text

log = logging.getLogger("msapp.jobs")

BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
ACTIVE = ("pending", "running")
# run by rawsql (hot path): a new job's constant columns are SQL of the statement, the rest bound (_JOB_KEYS)
_INSERT_JOB_ONLY = insert(Job.__table__).values(status=literal_column("'pending'"), attempts=literal_column("0"),
                                                 lease_until=null(), locked_by=null(), last_error=null())
_INSERT_JOB = _INSERT_JOB_ONLY.returning(Job.__table__.c.id)
_JOB_KEYS = ("bucket", "created_at", "enterprise_number", "key", "kind", "max_attempts", "payload", "run_at",
             "updated_at")


class Retry(Exception):
    """Try again after `after` seconds, or after the queue's backoff when None (counts as an attempt;
    the job lives until the retry horizon, however many attempts that takes)."""

    def __init__(self, after: Optional[float] = None, reason: str = ""):
        super().__init__(reason or (f"retry after {after:.3f}s" if after is not None else "retry"))
        self.after = None if after is None else max(0.0, float(after))


class Defer(Exception):
    """Run again after `after` seconds without counting an attempt (local pacing, not a failure)."""

    def __init__(self, after: float, reason: str = ""):
        super().__init__(reason or f"deferred {after:.3f}s")
        self.after = max(0.0, float(after))


class Permanent(Exception):
    """The job can never succeed: mark it dead now."""


@dataclass(frozen=True)
class Subject:
    """The row a kind of job is about: `table`'s row whose `id` is the payload's `key`, its `columns` (a
    handler's first read, done by the claim instead)."""

    table: Any
    key: str
    columns: tuple

    @functools.cached_property
    def select(self):
        """Its columns by `_id`: the claim's read on SQLite, and the handler's when the claim read none."""
        return select(*(self.table.c[name] for name in self.columns)).where(self.table.c.id == bindparam("_id"))


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


Handler = Callable[[JobContext], Any]


def backoff(attempts: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2^(attempts-1))."""
    ceiling = min(cap, base * (2 ** max(0, attempts - 1)))
    return random.uniform(ceiling / 2, ceiling)


_JOB_COLUMNS = ("id", "kind", "key", "enterprise_number", "payload", "attempts", "max_attempts", "created_at",
                "last_error")


def _claim_statements(dialect: str, subjects: dict) -> dict:
    """The claim, built once per dialect and run through `rawsql`: one UPDATE that picks the first due
    job, takes it and returns it. A job whose lease expired (its process died) gets `_retaken` as its
    last error: RETURNING shows new values only (and SQLite's cannot name a FROM table), so that is how
    the claimer learns it, and how the support desk sees why the job ran twice.

    The lists (enterprises this process is busy with, buckets it owns) are bound as one value each (a
    PostgreSQL array, a JSON text on SQLite), not expanded: 256 buckets expanded into an IN list cost a
    third of the service's CPU per event on PostgreSQL.

    With `subjects` (kind -> Subject), PostgreSQL: the UPDATE (`mark`) only notes the id it took, and `read`
    returns the job with its subject's row (columns named by `prefix`, kind -> `s<n>_`), sent with it in one
    round trip. `read` is a statement of its own on purpose: in READ COMMITTED it reads with a snapshot taken
    after the job is locked, so an event that re-armed the job and committed while the claim was on its way is
    in the row (a join in the UPDATE's own statement would read the calls as they were when it started). SQLite:
    the subject's own `select` runs after the claim, in its transaction (writers are serialized)."""
    j = Job.__table__
    p = j.alias("p")
    # One job of a key at a time, earliest first: blocked by an earlier waiting one, or by any running one
    # (a dead job retried from the admin may be older than one already running). A sub-select with LIMIT,
    # not NOT EXISTS: PostgreSQL turns NOT EXISTS into an anti-join whose shape rests on the table's
    # statistics, and with stale ones it read every waiting job for each candidate; this stays one lookup
    # on ix_ms_jobs_key per candidate, whatever they say.
    blocker = select(literal_column("1")).select_from(p).where(
        p.c.key == j.c.key, p.c.id != j.c.id,
        or_(p.c.status == "running", and_(p.c.id < j.c.id, p.c.status == "pending"))).limit(1).scalar_subquery()
    if dialect == "postgresql":  # array literals ('{1,2}'): one string to send, not 256 values to adapt
        from sqlalchemy import all_, any_
        from sqlalchemy.dialects.postgresql import ARRAY

        not_busy = j.c.enterprise_number != all_(cast(bindparam("_busy"), ARRAY(Text)))
        owned = j.c.bucket == any_(cast(bindparam("_buckets"), ARRAY(Integer)))
    else:
        def listed(name):
            return select(literal_column("value")).select_from(func.json_each(bindparam(name))).scalar_subquery()

        not_busy = j.c.enterprise_number.not_in(listed("_busy"))
        owned = j.c.bucket.in_(listed("_buckets"))
    fits = [blocker.is_(None), or_(j.c.enterprise_number.is_(None), not_busy)]
    found: dict = {"prefix": {}}
    # Whether another waiting job was due as this one was taken: its worker, back, claims again at once
    # instead of waiting for a notify (a backlog of retries, or of jobs released after an outage, comes
    # with none). One step of ix_ms_jobs_due past the job taken.
    if dialect == "postgresql":  # returned with the job
        m = j.alias("m")
        more = [exists().where(m.c.status == "pending", m.c.run_at <= bindparam("_now"), m.c.id != j.c.id)
                .label("more")]
    else:  # read after the claim, in its transaction: SQLite's RETURNING cannot name another row of the table
        more = []
        found["more"] = select(exists().where(j.c.status == "pending", j.c.run_at <= bindparam("_now")).label("more"))
    for in_buckets in (False, True):
        # several processes: only the buckets this one owns (msapp/ownership.py)
        where = [*fits, or_(j.c.bucket.is_(None), owned)] if in_buckets else fits
        # Two picks, each walking ix_ms_jobs_due (status, run_at, id) in its order and stopping at its first
        # fit: a job whose lease expired (among the few running rows), else the earliest due waiting one.
        # One pick over both (an OR) read every due job and sorted them, on both databases: a claim's cost
        # grew with the backlog (2 ms at 5,000 due jobs), and a backlog after an outage drained in
        # quadratic time.
        pick = func.coalesce(_first(dialect, j.c.status == "running", j.c.lease_until < bindparam("_now"), *where),
                             _first(dialect, j.c.status == "pending", j.c.run_at <= bindparam("_now"), *where))
        take = update(j).where(j.c.id == pick).values(
            status="running", attempts=j.c.attempts + 1, locked_by=bindparam("_by"), lease_until=bindparam("_lease"),
            updated_at=bindparam("_now"),
            last_error=case((j.c.status == "running", bindparam("_retaken")), else_=j.c.last_error))
        found[in_buckets] = take.returning(*(j.c[name] for name in _JOB_COLUMNS), *more)
        if dialect == "postgresql" and subjects:  # the id taken, for `read`, until the claim commits
            found["mark", in_buckets] = take.returning(func.set_config(_CLAIMED, cast(j.c.id, Text), True))
    if dialect == "postgresql" and subjects:
        joined, columns = j, [*(j.c[name] for name in _JOB_COLUMNS), *more]
        for n, (kind, subject) in enumerate(sorted(subjects.items())):
            row, key = subject.table.alias(f"s{n}"), j.c.payload[subject.key].as_string()
            # cast only a plain id of this kind's payload: another kind's (or a malformed) value must not
            # make every claim fail (SQL does not promise to evaluate an AND left to right; CASE does)
            row_id = case((and_(j.c.kind == kind, key.regexp_match("^[0-9]{1,9}$")), cast(key, Integer)))
            joined = joined.outerjoin(row, row.c.id == row_id)
            columns += [row.c[name].label(f"s{n}_{name}") for name in subject.columns]
            found["prefix"][kind] = f"s{n}_"  # of its columns in `read`
        taken = cast(func.nullif(func.current_setting(_CLAIMED, True), ""), Integer)
        found["read"] = select(*columns).select_from(joined).where(j.c.id == taken)
    return found


def _first(dialect: str, *where):
    """The id of the first job, in the claim's order, that meets `where` (locked on PostgreSQL)."""
    j = Job.__table__
    query = select(j.c.id).where(*where).order_by(j.c.run_at, j.c.id).limit(1)
    if dialect == "postgresql":  # SQLite: writers are serialized (BEGIN IMMEDIATE) already
        query = query.with_for_update(skip_locked=True, of=j)
    return query.scalar_subquery()


_CLAIMED = "ms.claimed_job"  # a setting local to the claim's transaction: the id it took


_JOBS = Job.__table__
_FINISH = update(_JOBS).where(_JOBS.c.id == bindparam("_id"), _JOBS.c.locked_by == bindparam("_by"),
                              _JOBS.c.status == "running")


def _pg_array(values: list) -> str:
    """A PostgreSQL array literal of ints or of enterprise numbers (letters, digits, '-', '_')."""
    return "{" + ",".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values) + "}"


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
        # Called before each run, and to add buffered rows to the transaction that records its outcome.
        self.start_hooks: list[Callable[[], None]] = []
        self.flush_hooks: list[Callable[[rawsql.Tx], None]] = []
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
            if not delay:
                wakeups.announce(self, tx, row["bucket"])
            return None
        tx = rawsql.session_tx()
        if not delay:  # on PostgreSQL it goes to the server with the insert: no round trip of its own
            wakeups.announce(self, tx, row["bucket"])
        return tx.first(_INSERT_JOB, row, keys=_JOB_KEYS)["id"]

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
                with rawsql.write() as tx:
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
        if conn.in_transaction():
            conn.commit()
        dbapi = conn.connection.dbapi_connection
        dbapi.autocommit = True
        try:
            tx = rawsql.Tx(dbapi, conn.dialect, conn.invalidate, prepared=conn.connection.info.get(rawsql.PREPARED))
            tx.ready()
            return self._claim(tx, busy, buckets)
        finally:
            if not conn.invalidated:
                dbapi.autocommit = False

    def _claim(self, tx: rawsql.Tx, busy: frozenset, buckets: Optional[frozenset]) -> Optional[JobContext]:
        dialect = tx.dialect.name
        st = self._claims.get(dialect)
        if st is None:
            st = self._claims[dialect] = _claim_statements(dialect, self.subjects)
        now = utcnow()
        retaken = f"lease expired (its process stopped); taken again by {self.worker_id} at {now:%H:%M:%S.%f}"
        as_list = _pg_array if dialect == "postgresql" else json.dumps
        params = {"_now": now, "_by": self.worker_id, "_lease": now + timedelta(seconds=self.lease_seconds),
                  "_retaken": retaken, "_busy": as_list(sorted(busy))}
        if buckets is not None and len(buckets) >= BUCKETS:
            buckets = None  # it owns them all (alone): the filter would let every job through
        if buckets is not None:
            if self._bucket_list[0] != buckets:  # they change at ownership ticks, not per claim
                self._bucket_list = (buckets, as_list(sorted(buckets)))
            params["_buckets"] = self._bucket_list[1]
        if "read" in st:  # PostgreSQL with subjects: take, then read with the subject, one round trip
            tx.later(st["mark", buckets is not None], params)
            job = tx.first(st["read"], {"_now": now})
        else:
            job = tx.first(st[buckets is not None], params)
        if job is None:
            return None
        if "more" in st:
            job["more"] = tx.first(st["more"], {"_now": now})["more"]
        if job["last_error"] == retaken:
            log.warning("job %s (%s) taken again after its lease expired", job["id"], job["kind"])
        payload = dict(job["payload"] or {})
        return JobContext(job["id"], job["kind"], job["key"], job["enterprise_number"], payload, job["attempts"],
                          job["max_attempts"], job["created_at"], self._subject(tx, st, job, payload),
                          bool(job["more"]))

    def _subject(self, tx: rawsql.Tx, st: dict, job: dict, payload: dict) -> Optional[dict]:
        subject = self.subjects.get(job["kind"])
        if subject is None:
            return None
        if "read" in st:  # read with the claim, as s<n>_<column>
            prefix = st["prefix"][job["kind"]]
            row = {name: job[prefix + name] for name in subject.columns}
            return row if row.get("id") is not None else None
        key = payload.get(subject.key)
        return tx.first(subject.select, {"_id": key}) if isinstance(key, int) else None

    def _finish(self, job_id: int, **values: Any) -> None:
        """Record the job's outcome (only if this worker still holds it), with the journal rows its run
        kept back (`flush_hooks`), in one transaction (the session's, when the handler left work open)."""
        values.setdefault("updated_at", utcnow())
        with rawsql.write() as tx:
            for hook in self.flush_hooks:
                hook(tx)
            tx.later(_FINISH, {**values, "_id": job_id, "_by": self.worker_id}, keys=rawsql.columns_of(values))

    def complete(self, job: JobContext) -> None:
        self._finish(job.id, status="done", lease_until=None, locked_by=None)

    def fail(self, job: JobContext, exc: BaseException) -> str:
        """Record a failed run: reschedule, defer or mark dead. Returns the new status."""
        error = redact_text(f"{type(exc).__name__}: {exc}")[:2000]
        now = utcnow()
        outside = isinstance(exc, (Retry, Defer))
        past_horizon = outside and job.created_at is not None and now - job.created_at > self.retry_horizon
        if past_horizon:
            error = f"gave up after the retry horizon ({self.retry_horizon}): {error}"[:2000]
        if isinstance(exc, Defer) and not past_horizon:
            self._finish(job.id, status="pending", attempts=job.attempts - 1, lease_until=None,
                         locked_by=None, run_at=now + timedelta(seconds=exc.after))
            return "pending"
        if isinstance(exc, Permanent) or past_horizon or (not outside and job.attempts >= job.max_attempts):
            self._finish(job.id, status="dead", lease_until=None, locked_by=None, last_error=error)
            metrics.JOBS_DEAD.labels(job.kind).inc()
            log.error("job %s (%s, key %s) is dead after %s attempts: %s", job.id, job.kind, job.key,
                      job.attempts, error)
            return "dead"
        wait = backoff(job.attempts)
        if isinstance(exc, Retry) and exc.after is not None:
            wait = exc.after * random.uniform(1.0, 1.1)
        self._finish(job.id, status="pending", lease_until=None, locked_by=None, last_error=error,
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
        with rawsql.pinned():  # the job's transactions share one pooled connection
            return self._run(job)

    def _run(self, job: JobContext) -> str:
        entry = self.handlers.get(job.kind)
        for hook in self.start_hooks:
            hook()
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
        j = Job.__table__
        row = db.session.execute(select(
            func.count().filter(j.c.status.in_(ACTIVE)),
            func.min(j.c.created_at).filter(j.c.status == "pending"),
            func.count().filter(j.c.status == "dead"),
        )).one()
        db.session.commit()
        oldest = (utcnow() - row[1]).total_seconds() if row[1] else 0.0
        return {"depth": int(row[0] or 0), "oldest_pending_age_seconds": round(max(0.0, oldest), 3),
                "dead": int(row[2] or 0)}


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
        from msapp.queue.ownership import bucket_of

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
