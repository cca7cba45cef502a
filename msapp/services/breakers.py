"""Breakers per enterprise and API (docs/design.md 7): an outage is not a failure of each job.

- **Closed** (no row, or state `closed`): requests go out. Consecutive retryable failures (network
  errors, 5xx, 429) are counted; at THRESHOLD the breaker **opens** (`outage`). A refused key (401, or
  55008: no telephony solution) opens it at once (`auth`).
- **Open**: nothing is sent (`BreakerOpen`; jobs wait without spending attempts). One request at a time,
  the *probe*, goes out when `next_probe_at` is reached: the next due job's own request. Probes of an
  outage come at a growing interval (FIRST_PROBE x GROWTH, at most MAX_PROBE); of a refused key every
  AUTH_PROBE, or at once when the enterprise's config is saved or an admin resumes it.
- The first answer that is not an outage **closes** it and makes every waiting job of the enterprise
  due at once; the queue keeps each call's order and the limiter paces them.

State lives in `ms_breakers`, so all processes agree: the right to send a probe is taken by one
conditional update, and the journal gets one row when a breaker opens and one when it closes, not one
per refused request. Each process keeps a snapshot of the open breakers (its own transitions at once,
others' through `refresh()` every second), so a request to a healthy MoySklad costs a dict lookup.

Transitions write on a connection of their own: call them with no transaction open on the session (as
every MoySklad request is made), or on SQLite the second writer of one thread waits for the first.
"""
from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from msapp import metrics
from msapp.clock import utcnow
from msapp.db.models import Breaker, Job
from msapp.db.reader import read_only
from msapp.extensions import db
from msapp.moysklad import BreakerOpen, MoySkladError
from msapp.services import exchange_log

log = logging.getLogger("msapp.breakers")
THRESHOLD = 5
FIRST_PROBE = 5.0
GROWTH = 1.5
MAX_PROBE = 25.0  # under the 30 s docs/design.md 7 allows, so a call reaches MoySklad <= 30 s after it is back
AUTH_PROBE = 300.0
API_NAMES = {"phone": "Phone API", "json": "JSON API"}


@dataclass
class OpenState:
    kind: str
    reason: str
    opened_at: datetime
    next_probe_at: datetime
    interval: float


def is_outage(error: MoySkladError) -> bool:
    return error.network or error.status >= 500 or error.status == 429


def is_refusal(error: MoySkladError) -> bool:
    return error.status == 401 or 55008 in error.codes


class Breakers:
    def __init__(self, queue):
        self.queue = queue
        self._open: dict[tuple, OpenState] = {}
        self._failures: dict[tuple, int] = {}
        self._release_again: set = set()  # enterprises whose waiting jobs are released once more next tick
        self._version = 0  # bumped by every local transition: a refresh read before it must not undo it
        self._lock = threading.Lock()

    # -- the transport's questions ---------------------------------------------------------------
    def before(self, enterprise: str, api: str) -> None:
        """Let the request go, or raise BreakerOpen. While open, one caller at a time gets the probe."""
        state = self._open.get((enterprise, api))
        if state is None:
            return
        now = utcnow()
        if now >= state.next_probe_at and self._take_probe(enterprise, api, now):
            return
        state = self._open.get((enterprise, api))
        if state is None:
            return
        raise BreakerOpen(max(0.5, (state.next_probe_at - now).total_seconds()), state.reason, api)

    def after(self, enterprise: str, api: str, error: Optional[MoySkladError]) -> None:
        """Count the outcome of a request that was sent."""
        key = (enterprise, api)
        if error is None or not (is_outage(error) or is_refusal(error)):
            with self._lock:
                self._failures.pop(key, None)
            if key in self._open:
                self.close(enterprise, api, "MoySklad answered")
            return
        if is_refusal(error):
            self.trip(enterprise, api, "auth", error.explanation, AUTH_PROBE)
            return
        if key in self._open:
            self._probe_failed(enterprise, api, error)
            return
        with self._lock:
            count = self._failures[key] = self._failures.get(key, 0) + 1
        if count >= THRESHOLD:
            self.trip(enterprise, api, "outage", error.explanation, FIRST_PROBE)

    def wait(self, enterprise: str, api: str) -> Optional[float]:
        """Seconds until the next probe while the breaker is open (a job then waits that long), else None:
        a job that met the open breaker but finds it closed now runs again at once."""
        state = self._open.get((enterprise, api))
        if state is None:
            return None
        # a little spread, so that the waiting jobs do not all wake at the probe's instant
        return max(0.5, (state.next_probe_at - utcnow()).total_seconds()) + random.uniform(0.2, 1.0)

    # -- transitions (each one short transaction on its own connection) --------------------------
    def trip(self, enterprise: str, api: str, kind: str, reason: str, interval: float) -> None:
        """Open (or keep open) the breaker; journal the opening once. Also used for other refusals that
        hold a kind of work until the config is saved (tasks without the CRM option: api "task")."""
        now = utcnow()
        table = Breaker.__table__
        pk = and_(table.c.enterprise_number == enterprise, table.c.api == api)
        with db.engine.begin() as conn:
            values = dict(state="open", kind=kind, reason=reason[:500], next_probe_at=now + timedelta(seconds=interval),
                          probe_interval=interval, updated_at=now)
            # Insert first: SELECT … FOR UPDATE locks no row that is not there yet, so two processes (or
            # workers) tripping a new breaker at once both inserted and one failed on the primary key.
            ins = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)
            created = conn.execute(ins.values(enterprise_number=enterprise, api=api, opened_at=now, **values)
                                   .on_conflict_do_nothing(index_elements=["enterprise_number", "api"])).rowcount
            row = None if created else conn.execute(select(table).where(pk).with_for_update()).first()
            if row is not None and row.state == "open":
                conn.execute(update(table).where(pk).values(**values))
                opened_at = row.opened_at
            else:
                if row is not None:
                    conn.execute(update(table).where(pk).values(opened_at=now, **values))
                opened_at = now
                message = f"{API_NAMES[api]} недоступен: {reason}" if api in API_NAMES else reason
                exchange_log.add(enterprise, "breaker.open", {"api": api, "kind": kind},
                                 {"next_probe_in_s": interval}, message, conn=conn)
                metrics.BREAKER_TRANSITIONS.labels(api, "open").inc()
                log.warning("breaker of %s %s opened (%s): %s", enterprise, api, kind, reason)
        with self._lock:
            self._version += 1
            self._failures.pop((enterprise, api), None)
            self._open[(enterprise, api)] = OpenState(kind, reason, opened_at, now + timedelta(seconds=interval),
                                                      interval)

    def _take_probe(self, enterprise: str, api: str, now: datetime) -> bool:
        """True when this caller may send (breaker closed meanwhile, or this caller won the probe)."""
        table = Breaker.__table__
        pk = and_(table.c.enterprise_number == enterprise, table.c.api == api)
        with db.engine.begin() as conn:
            row = conn.execute(select(table).where(pk).with_for_update()).first()
            if row is None or row.state != "open":
                with self._lock:
                    self._version += 1
                    self._open.pop((enterprise, api), None)
                return True
            won = row.next_probe_at <= now
            next_probe = now + timedelta(seconds=row.probe_interval) if won else row.next_probe_at
            if won:  # the probe's own answer decides; meanwhile nobody else probes
                conn.execute(update(table).where(pk, table.c.next_probe_at == row.next_probe_at)
                             .values(next_probe_at=next_probe, updated_at=now))
        with self._lock:
            self._version += 1
            self._open[(enterprise, api)] = OpenState(row.kind, row.reason or "", row.opened_at, next_probe,
                                                      row.probe_interval)
        return won

    def _probe_failed(self, enterprise: str, api: str, error: MoySkladError) -> None:
        state = self._open.get((enterprise, api))
        interval = min(MAX_PROBE, (state.interval if state else FIRST_PROBE) * GROWTH)
        self.trip(enterprise, api, "outage", error.explanation, interval)

    def close(self, enterprise: str, api: Optional[str] = None, why: str = "", kind=None) -> int:
        """Close the enterprise's open breakers (one API, or all; one kind, a tuple of kinds, or all) and
        make its waiting jobs due now. Returns how many closed here (another process may have closed them first)."""
        now = utcnow()
        table = Breaker.__table__
        cond = and_(table.c.enterprise_number == enterprise, table.c.state == "open")
        if api is not None:
            cond = and_(cond, table.c.api == api)
        kinds = (kind,) if isinstance(kind, str) else kind
        if kinds is not None:
            cond = and_(cond, table.c.kind.in_(kinds))
        with self._lock:  # first, so a job that met the open breaker a moment ago sees it closed
            self._version += 1
            for key in [k for k in self._open if k[0] == enterprise and (api is None or k[1] == api)
                        and (kinds is None or self._open[k].kind in kinds)]:
                del self._open[key]
        with db.engine.begin() as conn:
            rows = conn.execute(select(table.c.api, table.c.opened_at).where(cond).with_for_update()).all()
            if rows:
                conn.execute(update(table).where(cond).values(state="closed", updated_at=now))
                waiting = _release(conn, enterprise, now)
                for row in rows:
                    seconds = round((now - row.opened_at).total_seconds())
                    exchange_log.add(enterprise, "breaker.close", {"api": row.api},
                                     {"open_for_s": seconds, "released_jobs": waiting, "why": why}, conn=conn)
                    metrics.BREAKER_TRANSITIONS.labels(row.api, "close").inc()
                    log.warning("breaker of %s %s closed after %ss (%s); %s waiting jobs released",
                                enterprise, row.api, seconds, why, waiting)
        if rows:
            with self._lock:  # a job deferred while this ran would otherwise wait for a probe that never comes
                self._release_again.add(enterprise)
            self.queue.notify(everyone=True)
        return len(rows)

    # -- sharing and showing ---------------------------------------------------------------------
    def refresh(self) -> None:
        """Ticker task: take the open breakers from the database (other processes' transitions)."""
        table = Breaker.__table__
        version = self._version
        rows = db.session.execute(select(table).where(table.c.state == "open")).all()
        db.session.commit()
        fresh = {(r.enterprise_number, r.api): OpenState(r.kind, r.reason or "", r.opened_at, r.next_probe_at,
                                                         r.probe_interval) for r in rows}
        with self._lock:
            # closed elsewhere (another process), or here a moment ago: release the waiting jobs once more
            again = self._release_again | {k[0] for k in self._open if k not in fresh}
            self._release_again = set()
            if version == self._version:  # else a local transition came after the read: next tick
                self._open = fresh
        if again:
            now = utcnow()
            with db.engine.begin() as conn:
                released = sum(_release(conn, number, now) for number in sorted(again))
            if released:
                self.queue.notify(everyone=True)

    def status(self, enterprise: Optional[str] = None) -> list:
        """Open breakers (of one enterprise, or all) with the calls waiting behind them, from the database."""
        read_only()
        table, jobs = Breaker.__table__, Job.__table__
        query = select(table).where(table.c.state == "open")
        if enterprise is not None:
            query = query.where(table.c.enterprise_number == enterprise)
        rows = db.session.execute(query.order_by(table.c.enterprise_number, table.c.api)).all()
        out = []
        for r in rows:
            waiting = db.session.scalar(select(func.count(func.distinct(jobs.c.key))).where(
                jobs.c.enterprise_number == r.enterprise_number, jobs.c.status.in_(("pending", "running")),
                jobs.c.kind == "call.sync")) or 0
            out.append({"enterprise": r.enterprise_number, "api": r.api, "kind": r.kind, "reason": r.reason,
                        "since": r.opened_at, "next_probe_at": r.next_probe_at, "waiting_calls": waiting})
        db.session.commit()
        return out


def _release(conn, enterprise: str, now: datetime) -> int:
    """Make the enterprise's waiting jobs due now; returns how many."""
    jobs = Job.__table__
    return conn.execute(update(jobs).where(jobs.c.enterprise_number == enterprise, jobs.c.status == "pending",
                                           jobs.c.run_at > now).values(run_at=now, updated_at=now)).rowcount
