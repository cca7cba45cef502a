"""MoySklad's employees of one enterprise (extension, login, name), kept in `ms_directory`.

Click-to-call is judged against this list (docs/design.md 5.2), so it lives in the database: every process
sees the same list, it is warm after a restart, and it stays in use while MoySklad is down. It is
fetched (bounded by MS_LOOKUP_TIMEOUT) when a click finds no list, or by the admin's test connection;
from then on a durable job refreshes it every REFRESH_SECONDS (the worker pool's ticker asks for it),
and an unknown extension asks for a fresh list at most once a minute.

Extensions come from the Phone API (`GET /employee`); logins (`uid`) and names from the JSON API
(`GET /entity/employee`), joined by employee id. Without a JSON API token the logins stay unknown.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import and_, exists, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from msapp.clock import utcnow
from msapp.db.models import Directory as DirectoryRow
from msapp.db.models import Enterprise, Job
from msapp.db.work import Work
from msapp.errors import ApiError
from msapp.extensions import db
from msapp.moysklad import BreakerOpen, MoySkladError, RateLimited
from msapp.queue import ACTIVE, Defer, JobContext
from msapp.redact import redact_text

log = logging.getLogger("msapp.directory")
REFRESH_KIND = "directory.refresh"
REFRESH_SECONDS = 600.0
# An unknown extension asks for a fresh list at most this often: a stream of refused clicks must not
# become a stream of MoySklad requests.
RECHECK_SECONDS = 60.0
RETRY_GAP = 10.0  # a bounded fetch that just finished (or failed) answers the clicks of the next seconds


class DirectoryUnavailable(Exception):
    """No list of employees could be had in time (MoySklad slow or down, and nothing stored)."""


@dataclass(frozen=True)
class Listing:
    employees: list  # [{"id", "extension", "uid", "name"}]
    logins_known: bool
    fetched_at: datetime

    def with_extension(self, extension: str) -> list:
        return [e for e in self.employees if e.get("extension") == extension]

    def age(self, now: Optional[datetime] = None) -> float:
        return ((now or utcnow()) - self.fetched_at).total_seconds()


def _key(number: str) -> str:
    return f"directory:{number}"


class Directory:
    def __init__(self, app, clients, configs, queue, deadline: float):
        self.app = app
        self.clients = clients
        self.configs = configs
        self.queue = queue
        self.deadline = deadline
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ms-directory")
        self._fetches: dict[str, tuple] = {}  # number -> (started, future) of the last bounded fetch
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------------
    def read(self, number: str) -> Optional[Listing]:
        row = db.session.get(DirectoryRow, number)
        listing = Listing(list(row.employees or []), bool(row.logins_known), row.fetched_at) if row else None
        db.session.commit()
        return listing

    def get(self, number: str, cfg: dict) -> Listing:
        """The stored list, or (when there is none) one fetch bounded by the lookup deadline."""
        listing = self.read(number)
        return listing if listing is not None else self.fetch_bounded(number, cfg)

    def fetch_bounded(self, number: str, cfg: dict) -> Listing:
        """Fetch now, waiting at most the lookup deadline (the fetch goes on and stores its result).
        Concurrent callers share one fetch, and a finished one is reused for RETRY_GAP seconds, so a burst
        of clicks costs MoySklad one list. Raises DirectoryUnavailable. Holds no transaction while waiting."""
        db.session.rollback()
        now = time.monotonic()
        with self._lock:
            found = self._fetches.get(number)
            if found is None or (found[1].done() and now - found[0] >= RETRY_GAP):
                found = (now, self.pool.submit(self._fetch_in_app, number, cfg))
                self._fetches[number] = found
        try:
            return found[1].result(timeout=self.deadline)
        except FutureTimeout:
            raise DirectoryUnavailable("MoySklad did not give the employee list in time") from None
        except (MoySkladError, RateLimited, ApiError) as exc:
            raise DirectoryUnavailable(f"the employee list could not be fetched: {exc}") from None

    def employee(self, number: str, cfg: dict, *, extension: Optional[str] = None,
                 employee_id: Optional[str] = None) -> Optional[dict]:
        """One employee of the enterprise (`{"id", "extension", "uid", "name"}`) by extension or by MoySklad
        id, from the stored list (fetched once, bounded, when there is none); None if no such employee.
        Raises DirectoryUnavailable when no list can be had. Routing, lookups, customers' owners, the
        admin and the click guard all read this one list."""
        if not extension and not employee_id:
            return None
        for e in self.get(number, cfg).employees:
            if (extension and e.get("extension") == extension) or (employee_id and e.get("id") == employee_id):
                return e
        return None

    # -- fetching --------------------------------------------------------------------------------
    def _fetch_in_app(self, number: str, cfg: dict) -> Listing:
        with self.app.app_context():
            try:
                return self.fetch(number, cfg, max_wait=self.deadline, timeout=(min(3.05, self.deadline), 10.0))
            finally:
                db.session.remove()

    def fetch(self, number: str, cfg: dict, **client_kw) -> Listing:
        """Ask MoySklad for the employees and store them. The Phone API list is required; the JSON API
        logins are added when a token is set and it answers (else the previous logins are kept)."""
        work = Work()
        try:
            phone_rows = self.clients.phone(number, cfg, work, **client_kw).employees()
            people = self.people(number, cfg, work, **client_kw)
        finally:
            work.commit()
            db.session.commit()
        return self.store(number, phone_rows, people)

    def people(self, number: str, cfg: dict, work: Optional[Work], **client_kw) -> Optional[list]:
        """The JSON API's employees (names, logins) to store with the Phone API list, or None without a
        token or when the JSON API cannot answer (`store` then keeps the logins it had)."""
        if not cfg.get("api_token"):
            return None
        try:
            return self.clients.json(number, cfg, work, **client_kw).employees()
        except (MoySkladError, RateLimited, ApiError) as exc:
            log.warning("employee logins of %s not refreshed: %s", number, redact_text(str(exc)))
            return None

    def store(self, number: str, phone_rows: list, people: Optional[list]) -> Listing:
        """Save the Phone API employees, with logins and names from the JSON API rows. Without those
        rows (no token, or the JSON API failed) each employee keeps the login stored before, if any."""
        before = self.read(number)
        previous = {e["id"]: e for e in before.employees} if before else {}
        source = {p.get("id"): p for p in people} if people is not None else previous
        employees = [{"id": row["id"], "extension": row["extension"],
                      "uid": (source.get(row["id"]) or {}).get("uid"),
                      "name": (source.get(row["id"]) or {}).get("name")} for row in phone_rows]
        known = people is not None or bool(before and before.logins_known)
        now = utcnow()
        ins = (pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert)(DirectoryRow.__table__)
        db.session.execute(ins.values(enterprise_number=number, employees=employees, logins_known=known,
                                      fetched_at=now).on_conflict_do_update(
            index_elements=["enterprise_number"],
            set_={"employees": ins.excluded.employees, "logins_known": ins.excluded.logins_known,
                  "fetched_at": ins.excluded.fetched_at}))
        db.session.commit()
        return Listing(employees, known, now)

    # -- background refresh ----------------------------------------------------------------------
    def request_refresh(self, number: str, if_older_than: float = 0.0) -> bool:
        """Queue one refresh job for the enterprise (none if one is waiting, or the list is young enough).
        Runs in the caller's transaction; the caller commits."""
        if if_older_than:
            row = db.session.get(DirectoryRow, number)
            if row is not None and (utcnow() - row.fetched_at).total_seconds() < if_older_than:
                return False
        waiting = db.session.scalar(select(exists().where(
            and_(Job.key == _key(number), Job.status.in_(ACTIVE)))))
        if waiting:
            return False
        self.queue.enqueue(REFRESH_KIND, _key(number), {}, enterprise_number=number, max_attempts=3)
        return True

    def refresh_stale(self) -> int:
        """Ticker task: queue a refresh for each enabled enterprise whose stored list is old. Only
        enterprises that have a list (a click or a connection test fetched one) are kept fresh."""
        cutoff = utcnow() - timedelta(seconds=REFRESH_SECONDS)
        stale = db.session.scalars(select(DirectoryRow.enterprise_number).where(DirectoryRow.fetched_at < cutoff)).all()
        queued = 0
        for number in stale:
            ent = db.session.get(Enterprise, number)
            cfg = self.configs.of(ent) if ent is not None else {}
            if cfg.get("enabled") and cfg.get("integration_code") and self.request_refresh(number):
                queued += 1
        db.session.commit()
        if queued:
            self.queue.notify()
        return queued

    def refresh_job(self, job: JobContext) -> None:
        """Job handler. A failure is logged and left to the next tick: a list is never worth a dead job."""
        ent = db.session.get(Enterprise, job.enterprise_number)
        cfg = self.configs.of(ent) if ent is not None else {}
        db.session.commit()
        if not cfg.get("enabled") or not cfg.get("integration_code"):
            return
        try:
            self.fetch(job.enterprise_number, cfg)
        except BreakerOpen:
            return  # MoySklad is down: the stored list stays in use; the next tick asks again
        except RateLimited as exc:
            raise Defer(exc.after) from None
        except MoySkladError as exc:
            log.warning("employee list of %s not refreshed: %s", job.enterprise_number, redact_text(str(exc)))
