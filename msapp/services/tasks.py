"""Missed calls become callbacks: a MoySklad task for the responsible manager, closed when the customer is
reached (config `missed_calls`, docs/design.md 4.1; tasks: docs/moysklad.md 2.11).

- A call's sync, once the call is in MoySklad's history, queues one `task.sync` job: `missed` for an
  incoming call nobody answered (missed or busy), `reached` for an answered call to or from a number
  that has an open task. The jobs of one caller share a key, so they run one at a time, in order.
- **Open**: one open task per caller (`ms_tasks`). The first missed call creates it (assignee: the
  counterparty's owner, else the fallback employee; agent: the caller's counterparty; due: end of the
  call + due_minutes); further misses extend its description; a task that a person completed or deleted
  in MoySklad is left alone and the next miss opens a new one.
- **Close**: with close_on_callback, reaching the caller adds a note saying who and when, then marks the
  task done. A task is also closed as soon as it is created when the caller was already reached after the
  miss (the callback's sync ran first and found no task to close).
- **Reliable**: every step is saved before the next request; a create whose answer was lost is found by
  the marker in its description before it is sent again. An account whose tasks are refused (403: no
  CRM option) is recorded once and task creation is suspended until the config is saved again; calls are
  never held up: tasks have their own jobs.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Optional
from zoneinfo import ZoneInfo

from sqlalchemy import and_, exists, func, insert, select, update

from msapp import metrics
from msapp.clock import utcnow
from msapp.db.models import Call, Enterprise, Job, MsTask
from msapp.db.work import Work
from msapp.extensions import db
from msapp.moysklad import MoySkladError, RateLimited, RetryPolicy
from msapp.moysklad.formats import to_moysklad_time
from msapp.moysklad.http import id_from_href
from msapp.queue import ACTIVE, Defer, JobContext
from msapp.services import exchange_log

log = logging.getLogger("msapp.tasks")
KIND = "task.sync"
SUSPENDED = "crm"  # breaker kind (api "task") while MoySklad refuses the account's tasks
SUSPEND_FOR = 10 * 365 * 86400.0  # until the config is saved again


FACTS = ("id", "enterprise_number", "unique_id", "direction", "phone", "extensions", "answered_extension",
         "start_time", "end_time", "counterparty_id", "call_status")  # what the job reads of a call


def closing_extension(call: dict) -> Optional[str]:
    """Who reached the caller (the analytics' «tasks closed»): the extension that answered their call, or
    that dialled them."""
    if call["direction"] == "in":
        return call["answered_extension"]
    return (call["extensions"] or [None])[0]


def _key(enterprise: str, phone: str) -> str:
    return f"task:{enterprise}:{phone}"


def _open_row(enterprise: str, phone: str):
    t = MsTask.__table__
    return db.session.execute(select(t).where(t.c.enterprise_number == enterprise, t.c.phone == phone,
                                              t.c.state == "open").order_by(t.c.id.desc())).first()


class Tasks:
    def __init__(self, clients, configs, customers, queue):
        self.clients = clients
        self.configs = configs
        self.customers = customers
        self.queue = queue
        self.policy = RetryPolicy()

    # -- from the call flow ---------------------------------------------------------------------
    def after_call(self, snap, cfg: dict, save) -> None:
        """Queue the task work of an ended call (once): in the same commit as the call's last step."""
        rules = cfg.get("missed_calls") or {}
        if snap.task_queued or not rules.get("create_task"):
            return  # nothing to do costs nothing: no query, no write on the calls of enterprises without tasks
        event = None
        if snap.incoming and snap.call_status in ("missed", "busy"):
            event = "missed"
        elif snap.call_status == "answered" and rules.get("close_on_callback", True) and \
                self._may_have_task(snap.enterprise_number, snap.phone):
            event = "reached"
        if event is None:
            return
        self.queue.enqueue(KIND, _key(snap.enterprise_number, snap.phone), {"call_id": snap.id, "event": event},
                           enterprise_number=snap.enterprise_number)
        save(snap, task_queued=True)
        self.queue.notify()

    @staticmethod
    def _may_have_task(enterprise: str, phone: str) -> bool:
        """An open task for this caller, or task work still queued for it (a callback right after the miss:
        its job runs after the one creating the task, under the same key)."""
        if _open_row(enterprise, phone) is not None:
            return True
        return db.session.scalar(select(exists().where(and_(Job.key == _key(enterprise, phone),
                                                            Job.status.in_(ACTIVE))))) or False

    # -- the job --------------------------------------------------------------------------------
    def __call__(self, job: JobContext) -> None:
        call = db.session.get(Call, job.payload.get("call_id"))
        ent = db.session.get(Enterprise, job.enterprise_number)
        if call is None or ent is None:
            return
        cfg = self.configs.of(ent)
        facts = {name: getattr(call, name) for name in FACTS}
        db.session.commit()
        breakers = self.clients.breakers
        if not cfg.get("enabled") or not cfg.get("api_token"):
            return
        if breakers is not None and breakers.wait(job.enterprise_number, "task") is not None:
            return  # tasks refused by this account (no CRM option) until its config is saved again
        try:
            if job.payload.get("event") == "missed":
                self._missed(facts, cfg, job.work)
            else:
                self._reached(facts, cfg, job.work)
        except RateLimited as exc:  # our pacing, or the JSON API's breaker: wait, no attempt
            raise Defer(max(exc.after, 0.5), str(exc)) from None
        except MoySkladError as exc:
            if exc.status == 403 and breakers is not None:
                self._suspend(job.enterprise_number, exc)
                return
            raise self.policy.as_job_error(exc) from None

    def _suspend(self, enterprise: str, exc: MoySkladError) -> None:
        reason = ("МойСклад отклонил создание задачи (403: нужна опция CRM тарифа, или нет прав): задачи по "
                  "пропущенным звонкам не создаются, пока настройки предприятия не сохранят снова")
        log.error("tasks of %s suspended: %s", enterprise, exc)
        self.clients.breakers.trip(enterprise, "task", SUSPENDED, reason, SUSPEND_FOR)

    # -- open or extend -----------------------------------------------------------------------------
    def _missed(self, call: dict, cfg: dict, work: Work) -> None:
        rules = cfg.get("missed_calls") or {}
        number, phone = call["enterprise_number"], call["phone"]
        if not call["counterparty_id"] and rules.get("only_known_customers"):
            return
        api = self.clients.json(number, cfg, work, context={"unique_id": call["unique_id"]})
        row = _open_row(number, phone)
        db.session.commit()
        if row is not None and row.task_id is None and row.create_attempted:
            found = api.find_open_task(row.marker)  # a create whose answer was lost
            if found is not None:
                self._set(row.id, task_id=found.get("id"))
                row = _open_row(number, phone)
        if row is not None and row.task_id is not None and not self._still_open(api, row):
            row = None  # completed or deleted by a person: never touched again
        entry = {"unique_id": call["unique_id"], "at": (call["end_time"] or utcnow()).isoformat(),
                 "extensions": list(call["extensions"] or [])}
        if row is not None and row.task_id is not None:
            if any(m.get("unique_id") == call["unique_id"] for m in row.missed or []):
                return  # this call is already in the task
            missed = list(row.missed or []) + [entry]
            api.update_task(row.task_id, {"description": self._describe(number, cfg, call, missed, row.marker, work)})
            self._set(row.id, missed=missed)
            return
        assignee = self._assignee(number, cfg, call, work)
        if assignee is None:
            exchange_log.add(number, "task.skipped", {"phone": phone, "unique_id": call["unique_id"]}, None,
                             "задача не создана: у клиента нет ответственного и не выбран сотрудник по умолчанию",
                             work=work)
            return
        if row is None:
            row_id = self._new_row(number, phone, call, assignee, entry)
            row = db.session.execute(select(MsTask.__table__).where(MsTask.__table__.c.id == row_id)).one()
            db.session.commit()
        due = (call["end_time"] or utcnow()) + timedelta(minutes=int(rules.get("due_minutes") or 30))
        self._set(row.id, create_attempted=True)
        task = api.create_task(self._describe(number, cfg, call, row.missed, row.marker, work), assignee,
                               agent_id=call["counterparty_id"], due=to_moysklad_time(due)[:19])
        self._set(row.id, task_id=task.get("id"))
        metrics.TASKS.labels("opened").inc()
        self._close_if_reached(call, cfg, work)

    def _close_if_reached(self, call: dict, cfg: dict, work: Work) -> None:
        """Close the task just opened when the caller was reached after this miss ended: that callback's sync
        may have asked for a task (`_may_have_task`) before this miss's task work was queued, on another
        worker, and then queued nothing that would close it. A callback that did queue its work finds the
        task closed and stops there."""
        if not (cfg.get("missed_calls") or {}).get("close_on_callback", True):
            return
        c = Call.__table__
        since = call["end_time"] or call["start_time"]
        reached = db.session.execute(
            select(*(c.c[name] for name in FACTS))
            .where(c.c.enterprise_number == call["enterprise_number"], c.c.phone == call["phone"],
                   c.c.call_status == "answered", c.c.end_time.is_not(None), c.c.start_time >= since)
            .order_by(c.c.start_time).limit(1)).first()
        db.session.commit()
        if reached is not None:
            self._reached(dict(reached._mapping), cfg, work)

    def _still_open(self, api, row) -> bool:
        try:
            task = api.get_task(row.task_id)
        except MoySkladError as exc:
            if exc.status != 404:
                raise
            task = None
        if task is None or task.get("done"):
            self._set(row.id, state="closed", closed_at=utcnow(), closed_reason="person")
            return False
        return True

    def _new_row(self, number: str, phone: str, call: dict, assignee: str, entry: dict) -> int:
        now = utcnow()
        result = db.session.execute(insert(MsTask.__table__).values(
            enterprise_number=number, phone=phone, state="open", task_id=None, create_attempted=False,
            marker=f"ms-task:{number}:{call['unique_id']}", assignee_id=assignee,
            counterparty_id=call["counterparty_id"], missed=[entry], note_added=False, created_at=now,
            updated_at=now))
        db.session.commit()
        return result.inserted_primary_key[0]

    def _set(self, row_id: int, **values) -> None:
        t = MsTask.__table__
        db.session.execute(update(t).where(t.c.id == row_id).values(updated_at=utcnow(), **values))
        db.session.commit()

    def _assignee(self, number: str, cfg: dict, call: dict, work: Work) -> Optional[str]:
        rules = cfg.get("missed_calls") or {}
        fallback = rules.get("fallback_employee") or None
        if rules.get("assignee") == "employee" or not call["counterparty_id"]:
            return fallback
        owner = None
        found = self.customers.find(number, cfg, call["phone"], work)
        if found is not None and found.get("id") == call["counterparty_id"] and found.get("owner_href"):
            owner = id_from_href(found["owner_href"])
        if owner is None:
            cp = self.clients.json(number, cfg, work).get_counterparty(call["counterparty_id"])
            owner = id_from_href(((cp.get("owner") or {}).get("meta") or {}).get("href"))
        return owner or fallback

    def _describe(self, number: str, cfg: dict, call: dict, missed: list, marker: str, work: Work) -> str:
        """What a manager reads: who called, when (the enterprise's local time), which extensions rang."""
        tz_name = cfg.get("timezone") or "Europe/Minsk"
        zone = ZoneInfo(tz_name)
        who = self._name(number, cfg, call, work) or "неизвестный номер"
        lines = [f"Перезвонить: {who}, {call['phone']}", f"Пропущенные звонки ({tz_name}):"]
        for item in missed:
            at = datetime.fromisoformat(item["at"]).replace(tzinfo=UTC).astimezone(zone)
            rang = ", ".join(f"доб. {e}" for e in item.get("extensions") or []) or "—"
            lines.append(f"— {at:%d.%m.%Y %H:%M}, звонили: {rang}")
        lines.append(f"[{marker}]")  # finds this task again if the answer to its creation is lost
        return "\n".join(lines)

    def _name(self, number: str, cfg: dict, call: dict, work: Work) -> Optional[str]:
        if not call["counterparty_id"]:
            return None
        found = self.customers.find(number, cfg, call["phone"], work)
        if found is not None and found.get("id") == call["counterparty_id"]:
            return found.get("name")
        return None

    # -- close --------------------------------------------------------------------------------------
    def _reached(self, call: dict, cfg: dict, work: Work) -> None:
        number, phone = call["enterprise_number"], call["phone"]
        row = _open_row(number, phone)
        db.session.commit()
        if row is None:
            return
        api = self.clients.json(number, cfg, work, context={"unique_id": call["unique_id"]})
        if row.task_id is None:
            found = api.find_open_task(row.marker) if row.create_attempted else None
            if found is None:
                self._set(row.id, state="closed", closed_at=utcnow(), closed_reason="never created")
                return
            self._set(row.id, task_id=found.get("id"))
            row = _open_row(number, phone)
        if not self._still_open(api, row):
            return
        if not row.note_added:
            zone = ZoneInfo(cfg.get("timezone") or "Europe/Minsk")
            at = (call["end_time"] or utcnow()).replace(tzinfo=UTC).astimezone(zone)
            ext = call["answered_extension"] or ((call["extensions"] or [None])[0])
            how = (f"клиент перезвонил, ответил доб. {ext}" if call["direction"] == "in"
                   else f"доб. {ext} дозвонился клиенту")
            api.add_task_note(row.task_id, f"Связались с клиентом {phone}: {how}, {at:%d.%m.%Y %H:%M} "
                                           f"({zone.key}). Задача закрыта автоматически.")
            self._set(row.id, note_added=True)
        api.update_task(row.task_id, {"done": True})
        self._set(row.id, state="closed", closed_at=utcnow(), closed_reason="reached",
                  closed_by_call=call["unique_id"], closed_by_ext=closing_extension(call))
        metrics.TASKS.labels("closed").inc()

    # -- the admin's today panel ----------------------------------------------------------------------
    @staticmethod
    def today(number: str, day) -> dict:
        """Tasks opened and tasks a call closed since `day`: each count walks its index from `day` on (the
        enterprise's tasks by creation; those a call closed, by closing time), not the enterprise's month."""
        t = MsTask.__table__
        mine = t.c.enterprise_number == number
        opened = select(func.count()).where(mine, t.c.created_at >= day, t.c.task_id.is_not(None))
        closed = select(func.count()).where(mine, t.c.closed_reason == "reached", t.c.closed_at >= day)
        row = db.session.execute(select(opened.scalar_subquery(), closed.scalar_subquery())).one()
        return {"tasks_opened": row[0] or 0, "tasks_closed": row[1] or 0}
