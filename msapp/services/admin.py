"""What the admin pages show and do, apart from the config itself: test connection, employees, the
MoySklad lists for the order settings, a test card, the journal, and the metrics panel."""
from __future__ import annotations

import statistics
import time
import uuid
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import Text, and_, cast, func, or_, select

from msapp.clock import utcnow
from msapp.db.models import Call, CallJournal, Enterprise, IntegrationLog, Job
from msapp.db.reader import read_only
from msapp.db.work import Work
from msapp.errors import ApiError
from msapp.extensions import db
from msapp.moysklad import BreakerOpen, MoySkladError, RateLimited
from msapp.moysklad.formats import is_extension, to_moysklad_time
from msapp.queue import JobContext
from msapp.services import click_guard, paging
from msapp.services.directory import DirectoryUnavailable
from msapp.services.moysklad_clients import MoySkladClients
from msapp.services.tasks import Tasks

TEST_POPUP_KIND = "test-popup.hide"
TEST_POPUP_SECONDS = 5.0
TEST_NUMBER = "+70000000000"
PAGE_SIZE = 50
QUICK = (3.05, 5.0)


def explain(exc: Exception) -> str:
    """A message an operator can act on, in the users' language."""
    if isinstance(exc, ApiError):
        return exc.error
    if isinstance(exc, BreakerOpen):
        return f"МойСклад сейчас недоступен для этого предприятия ({exc.reason}); повторите позже"
    if isinstance(exc, RateLimited):
        return "Слишком много запросов к МойСклад, попробуйте через несколько секунд"
    if isinstance(exc, MoySkladError):
        if 55008 in exc.codes:
            return "В аккаунте МойСклад не подключено решение телефонии (Phone API), код 55008"
        if exc.network:
            return "МойСклад не ответил вовремя или недоступен"
        if exc.status == 401:
            return "МойСклад отклонил ключ или токен (401): проверьте, что он скопирован целиком"
        if exc.status == 403:
            return "Нет прав на эту операцию в МойСклад (403)"
        return f"МойСклад ответил {exc.status}: {exc.message}"
    return str(exc)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like_prefix(text: str) -> str:
    return _escape_like(text) + "%"


def _like_anywhere(text: str) -> str:
    return "%" + _escape_like(text) + "%"


def _timed(fn):
    started = time.monotonic()
    try:
        value = fn()
        return {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000), "value": value}
    except (MoySkladError, RateLimited, ApiError) as exc:
        return {"ok": False, "latency_ms": round((time.monotonic() - started) * 1000), "message": explain(exc)}


class AdminService:
    def __init__(self, clients: MoySkladClients, customers, queue, directory):
        self.clients = clients
        self.customers = customers
        self.queue = queue
        self.directory = directory

    @staticmethod
    def _done(work: Work) -> None:
        """The request's journal rows, with what it left in the session."""
        work.commit()
        db.session.commit()

    def test_connection(self, number: str, cfg: dict) -> dict:
        """Phone API key and JSON API token, each with its latency, and the employees with extensions."""
        db.session.rollback()  # no transaction held while MoySklad is asked
        self.clients.forget(number)
        work = Work()
        # the admin asks MoySklad itself even while a breaker is open; a good answer closes it
        phone = _timed(lambda: self.clients.phone(number, cfg, work, timeout=QUICK, gate=False).employees())
        jsonapi = _timed(lambda: self.clients.json(number, cfg, work, timeout=QUICK, gate=False).current_employee())
        result = {"phone": {k: v for k, v in phone.items() if k != "value"},
                  "json": {k: v for k, v in jsonapi.items() if k != "value"}, "employees": []}
        if phone["ok"]:
            result["phone"]["message"] = f"Ключ принят, сотрудников с добавочными: {len(phone['value'])}"
            # the one list routing, lookups, owners and click-to-call read from now on
            listing = self.directory.store(number, phone["value"],
                                           self.directory.people(number, cfg, work, timeout=QUICK, gate=False))
            result["employees"] = self._shown(listing.employees)
        if jsonapi["ok"]:
            who = (jsonapi["value"] or {}).get("name") or (jsonapi["value"] or {}).get("uid") or "?"
            result["json"]["message"] = f"Токен принят (пользователь: {who})"
        self._done(work)
        return result

    @staticmethod
    def _shown(employees: list) -> list:
        return [{"id": e["id"], "extension": e["extension"], "name": e.get("name") or "—",
                 "href": f"https://online.moysklad.ru/app/#employee/edit?id={e['id']}"}
                for e in sorted(employees, key=lambda e: e["extension"])]

    def employees(self, number: str, cfg: dict, refresh: bool = False) -> list:
        """The directory's employees with extensions; `refresh`: fetched from MoySklad and stored first."""
        db.session.rollback()
        try:
            listing = self.directory.fetch(number, cfg) if refresh else self.directory.get(number, cfg)
        except DirectoryUnavailable as exc:
            raise ApiError(503, f"MoySklad's employee list is unavailable, try again: {exc}") from None
        db.session.commit()
        return self._shown(listing.employees)

    def lists(self, number: str, cfg: dict, refresh: bool = False) -> dict:
        """Organizations, customer-order states and sales channels for the order settings."""
        db.session.rollback()
        if refresh:
            for kind in ("organizations", "states", "saleschannels"):
                self.clients.forget(number, kind)
        out = {"organizations": [], "states": [], "saleschannels": [], "error": None}
        work = Work()
        try:
            for kind, fetch in (("organizations", lambda api: api.organizations()),
                                ("states", lambda api: api.order_states()),
                                ("saleschannels", lambda api: api.sales_channels())):
                out[kind] = [{"id": r.get("id"), "name": r.get("name")}
                             for r in self.customers.cached_list(number, cfg, kind, fetch, work)]
        except (MoySkladError, RateLimited, ApiError) as exc:
            out["error"] = explain(exc)
        self._done(work)
        return out

    def employee_choices(self, number: str, cfg: dict, refresh: bool = False) -> dict:
        """Employees to pick the missed-call fallback from: from MoySklad's JSON API on request (`refresh`),
        else the stored directory (filled by a connection test), without asking MoySklad."""
        db.session.rollback()
        out = {"employees": [], "error": None, "loaded": refresh}
        if refresh:
            work = Work()
            try:  # every MoySklad user may be the fallback, with an extension or not: asked on request only
                people = self.clients.json(number, cfg, work, timeout=QUICK, gate=False).employees()
                out["employees"] = sorted(({"id": p.get("id"), "name": p.get("name") or p.get("uid") or p.get("id")}
                                           for p in people if not p.get("archived")), key=lambda e: e["name"])
            except (MoySkladError, RateLimited, ApiError) as exc:
                out["error"] = explain(exc)
            self._done(work)
            return out
        listing = self.directory.read(number)
        if listing is not None:
            out["employees"] = sorted(({"id": e["id"], "name": f"{e.get('name') or e['id']} (доб. {e['extension']})"}
                                       for e in listing.employees), key=lambda e: e["name"])
        return out

    def test_popup(self, number: str, cfg: dict, extension) -> dict:
        """Show a test card to one employee, hidden again after a few seconds. No customer is created."""
        if not is_extension(extension if isinstance(extension, str) else None):
            raise ApiError(400, "extension must be digits", "extension")
        db.session.rollback()
        external_id = f"ms-test-{uuid.uuid4().hex[:12]}"
        work = Work()
        call = self.clients.phone(number, cfg, work, timeout=QUICK).create_call({
            "externalId": external_id, "number": TEST_NUMBER, "isIncoming": True,
            "startTime": to_moysklad_time(utcnow()), "comment": "Тестовая карточка звонка из ms",
            "events": [{"eventType": "SHOW", "extension": extension, "sequence": 1}]})
        self.queue.enqueue(TEST_POPUP_KIND, f"test-popup:{number}:{external_id}",
                           {"call_id": call.get("id"), "extension": extension}, enterprise_number=number,
                           delay=TEST_POPUP_SECONDS, max_attempts=5)
        self._done(work)
        return {"shown": True, "extension": extension, "hide_after_seconds": TEST_POPUP_SECONDS}

    def hide_test_popup(self, configs, job: JobContext) -> None:
        """Job handler: hide the test card and end the test call."""
        ent = db.session.get(Enterprise, job.enterprise_number)
        if ent is None:
            return
        cfg = configs.of(ent)
        db.session.commit()
        self.clients.phone(job.enterprise_number, cfg, job.work).update_call(job.payload["call_id"], {
            "endTime": to_moysklad_time(utcnow()),
            "events": [{"eventType": "HIDE", "extension": job.payload["extension"], "sequence": 2}]})

    # -- the journal and the panel ----------------------------------------------------------------
    def journal(self, number: str, event: str = "", status: str = "", before: str = "", call: str = "",
                text: str = "") -> dict:
        """Journal rows, newest first, a page at a time (services/paging.py, by the journal's index of the
        enterprise's rows by time): by kind of event, result ("problems": errors and breaker transitions),
        one call (its unique_id), and free text (in the event, the error and the bodies: a walk of the
        enterprise's rows until a page is found)."""
        read_only()
        logs = IntegrationLog.__table__
        cond = and_(logs.c.enterprise_number == number, logs.c.integration_type == "ms")
        if event:
            cond = and_(cond, logs.c.event_type.like(_like_prefix(event), escape="\\"))
        if status in ("success", "error"):
            cond = and_(cond, logs.c.status == status)
        elif status == "problems":
            cond = and_(cond, or_(logs.c.status == "error", logs.c.event_type.like("breaker.%")))
        if call:  # the call's rows by our index of them (ms_call_journal), not a search of the journal
            links = CallJournal.__table__
            cond = and_(cond, logs.c.id.in_(select(links.c.log_id).where(links.c.enterprise_number == number,
                                                                          links.c.unique_id == call)))
        if text:
            like = _like_anywhere(text)
            cond = and_(cond, or_(logs.c.event_type.like(like, escape="\\"),
                                  logs.c.error_message.like(like, escape="\\"),
                                  cast(logs.c.request_data, Text).like(like, escape="\\"),
                                  cast(logs.c.response_data, Text).like(like, escape="\\")))
        total, capped = paging.count_capped(cond, logs.c.id)
        page = paging.newest_first(cond, logs.c.created_at, logs.c.id, before, PAGE_SIZE)
        rows, following = paging.page_of([dict(r) for r in db.session.execute(page(select(logs))).mappings()],
                                         PAGE_SIZE, "created_at")
        dead = db.session.scalars(select(Job).where(Job.enterprise_number == number, Job.status != "done",
                                                    Job.status == "dead")
                                  .order_by(Job.id.desc()).limit(50)).all()
        db.session.commit()
        breakers = self.clients.breakers.status(number) if status == "problems" and self.clients.breakers else []
        return {"rows": rows, "total": total, "capped": capped, "next": following, "dead": dead,
                "breakers": breakers}

    def panel(self, number: str, now: Optional[datetime] = None) -> dict:
        """Today's figures for one enterprise (UTC day)."""
        now = now or utcnow()
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        read_only()
        calls = db.session.execute(select(
            func.count(),
            func.count().filter(Call.customer_created.is_(True)),
            func.count().filter(and_(Call.order_id.is_not(None), Call.order_id != "")),
        ).where(Call.enterprise_number == number, Call.start_time >= day)).one()
        logs = IntegrationLog.__table__
        ours = and_(logs.c.enterprise_number == number, logs.c.integration_type == "ms")  # the journal's index
        recent = db.session.execute(select(logs.c.status, logs.c.response_data).where(
            ours, logs.c.event_type.like("ms.%"), logs.c.created_at >= day)
            .order_by(logs.c.created_at.desc()).limit(2000)).all()
        latencies = [r.response_data["latency_ms"] for r in recent if isinstance(r.response_data, dict)
                     and isinstance(r.response_data.get("latency_ms"), (int, float))]
        depth = db.session.scalar(select(func.count()).select_from(Job).where(
            Job.enterprise_number == number, Job.status != "done", Job.status.in_(("pending", "running")))) or 0
        last_error = db.session.execute(select(logs.c.created_at, logs.c.error_message, logs.c.event_type).where(
            ours, logs.c.status == "error", logs.c.event_type.like("ms.%"),
            logs.c.created_at >= now - timedelta(hours=1)).order_by(logs.c.created_at.desc()).limit(1)).first()
        ok = sum(1 for r in recent if r.status == "success")
        suspicious = click_guard.suspicious(number, now)
        tasks_today = Tasks.today(number, day)
        db.session.commit()
        breakers = self.clients.breakers.status(number) if self.clients.breakers else []
        paused = next((b for b in breakers if b["kind"] == "auth"), None)
        outage = next((b for b in breakers if b["kind"] == "outage"), None)
        tasks_off = next((b for b in breakers if b["kind"] == "crm"), None)
        return {"paused": {"since": paused["since"], "reason": paused["reason"], "api": paused["api"],
                           "waiting_calls": paused["waiting_calls"]} if paused else None,
                "outage": outage, "tasks_suspended": tasks_off, "suspicious": suspicious, **tasks_today,
                "calls_today": calls[0], "customers_created": calls[1], "orders_created": calls[2],
                "success_rate": round(100 * ok / len(recent), 1) if recent else None,
                "median_latency_ms": round(statistics.median(latencies)) if latencies else None,
                "requests_today": len(recent), "queue_depth": depth,
                "last_error": dict(last_error._mapping) if last_error else None}
