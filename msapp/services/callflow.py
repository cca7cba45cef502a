"""The call state machine (docs/design.md 6), run by the workers as job kind `call.sync`.

Each run reconciles one call: the row holds what the PBX reported (desired state) and what MoySklad has
been sent; the run sends only the difference, in the fewest requests the Phone API allows:

| moment           | request                                                                  |
|------------------|--------------------------------------------------------------------------|
| first dial       | POST /call with SHOW for every ringing extension                         |
| more extensions  | POST /call/{id}/event (one) or PUT /call/{id} with events (several)      |
| answer           | PUT /call/{id}: extension, STARTTIME for the answerer, HIDE the others   |
| hangup           | PUT /call/{id}: endTime, recordUrl, comment, counterparty, HIDE the rest |

Events that arrive together are folded into fewer requests; a call that ended before it was created
is created whole in one POST. No transaction is held across a MoySklad request. What a request did is
committed with the job's outcome (one write transaction per job); the guard before a create (and a
customer's or an order's) is committed before it is sent, so a crash repeats at most the requests of
the job in flight, and a create whose answer was lost is probed by externalId before it is sent again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from sqlalchemy import bindparam, update

from msapp import metrics
from msapp.db import rawsql
from msapp.db.models import Call
from msapp.db.work import Work
from msapp.errors import ApiError
from msapp.moysklad import BreakerOpen, MoySkladError, RateLimited, RetryPolicy
from msapp.moysklad.formats import to_moysklad_time
from msapp.moysklad.http import id_from_href, meta
from msapp.queue import Defer, JobContext, Subject
from msapp.redact import redact_text
from msapp.services.customers import Customers
from msapp.services.moysklad_clients import MoySkladClients

log = logging.getLogger("msapp.callflow")
UPDATE_CALL = update(Call.__table__).where(Call.__table__.c.id == bindparam("_id"))
RESULT_WORDS = {"answered": "принят", "missed": "пропущен", "busy": "занято"}


@dataclass
class Snapshot:
    """Plain values of a call row, read in one short transaction."""

    id: int
    enterprise_number: str
    unique_id: str
    direction: str
    phone: str
    extensions: list
    answered_extension: Optional[str]
    start_time: Optional[datetime]
    answer_time: Optional[datetime]
    end_time: Optional[datetime]
    call_status: Optional[str]
    record_url: Optional[str]
    notify: bool
    ms_call_id: Optional[str]
    create_attempted: bool
    shown: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    answer_sent: bool = False
    end_sent: bool = False
    sequence: int = 0
    counterparty_id: Optional[str] = None
    created_at: Optional[datetime] = None
    customer_checked: bool = False
    customer_attempted: bool = False
    customer_created: bool = False
    order_attempted: bool = False
    order_id: Optional[str] = None
    task_queued: bool = False
    # the job's unit of work: this call's progress and the journal of its exchanges go there (not a column)
    work: Work = field(default_factory=Work, compare=False, repr=False)

    @property
    def incoming(self) -> bool:
        return self.direction == "in"

    @property
    def caller(self) -> Optional[str]:
        return self.extensions[0] if self.extensions else None


# What a sync reads first: its call, read by the claim that takes the job (queue/claims.py, Subject).
SUBJECT = Subject(Call.__table__, "call_id", tuple(name for name in Snapshot.__dataclass_fields__ if name != "work"))


def card_mode(snap: Snapshot, cfg: dict) -> str:
    """`during`, `answer` or `none` for this call under the enterprise's notification settings."""
    notes = cfg.get("notifications") or {}
    if not snap.notify:
        return "none"
    if snap.incoming and not notes.get("notify_incoming", True):
        return "none"
    if not snap.incoming and not notes.get("notify_outgoing", False):
        return "none"
    return notes.get("call_notify_mode") or "during"


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def comment(snap: Snapshot) -> str:
    """Direction, result, who, and duration, in the users' language."""
    status = snap.call_status or ("answered" if snap.answered_extension else "missed")
    parts = ["Входящий звонок" if snap.incoming else "Исходящий звонок", RESULT_WORDS.get(status, status)]
    if snap.incoming and snap.answered_extension:
        parts.append(f"ответил доб. {snap.answered_extension}")
    elif snap.incoming and snap.extensions:
        parts.append("звонили: " + ", ".join(f"доб. {e}" for e in snap.extensions))
    elif not snap.incoming and snap.caller:
        parts.append(f"звонил доб. {snap.caller}")
    start = snap.start_time
    if status == "answered" and snap.answer_time and (not snap.end_time or snap.answer_time <= snap.end_time):
        start = snap.answer_time
    if start and snap.end_time:
        label = "разговор" if status == "answered" else "ожидание"
        parts.append(f"{label} {_fmt_duration((snap.end_time - start).total_seconds())}")
    return " · ".join(parts)


class CallSync:
    """Job handler for `call.sync`."""

    def __init__(self, clients: MoySkladClients, configs, customers: Customers, tasks=None):
        self.clients = clients
        self.configs = configs
        self.customers = customers
        self.tasks = tasks  # services.tasks.Tasks: missed calls become callback tasks
        self.policy = RetryPolicy()

    def __call__(self, job: JobContext) -> None:
        row = job.subject
        if row is None:  # not read with the claim (or the call is gone): read it, in a short transaction
            with rawsql.transaction(atomic=False) as tx:  # never hold a transaction across a MoySklad request
                row = tx.first(SUBJECT.select, {"_id": job.payload.get("call_id")})
        if row is None:
            return
        snap = Snapshot(**row, work=job.work)
        try:  # the per-process cache the event path uses (a write elsewhere is seen within 2 s)
            cfg = self.configs.read_fast(snap.enterprise_number)
        except ApiError:  # the enterprise was deleted
            cfg = {}
        if not cfg.get("enabled") or not cfg.get("integration_code"):
            log.info("call %s of %s not sent: integration disabled or without key", snap.unique_id,
                     snap.enterprise_number)
            return
        try:
            self.sync(snap, cfg, job)
        except BreakerOpen as exc:  # MoySklad is down for this enterprise: wait for the probe, no attempt
            wait = self.clients.breakers.wait(snap.enterprise_number, exc.api)
            raise Defer(wait or 0.0, str(exc)) from None
        except RateLimited as exc:  # our own pacing: wait, no attempt
            raise Defer(exc.after, str(exc)) from None
        except MoySkladError as exc:
            self._save(snap, last_error=redact_text(str(exc))[:1000])
            wait = self.clients.breakers.wait(snap.enterprise_number, exc.api) if self.clients.breakers else None
            if wait is not None:  # this failure opened the breaker (or was its probe): wait for the next probe
                raise Defer(wait, str(exc)) from None
            raise self.policy.as_job_error(exc) from None

    # -- the steps --------------------------------------------------------------------------------
    def sync(self, snap: Snapshot, cfg: dict, job: JobContext) -> None:
        phone = self.clients.phone(snap.enterprise_number, cfg, snap.work, context={"unique_id": snap.unique_id})
        mode = card_mode(snap, cfg)
        if snap.ms_call_id is None and snap.create_attempted:
            self._probe(snap, phone)
        if snap.ms_call_id is None:
            if snap.end_time is not None:
                self.customers.before_end(snap, cfg, job, self._save)
            self._create(snap, phone, mode)
        if snap.end_time is None:
            self._more_cards(snap, phone, mode)
            self._answer(snap, phone, mode)
            return
        if not snap.end_sent:
            self.customers.before_end(snap, cfg, job, self._save)
            self._end(snap, phone)
        self._late_answer(snap, phone)
        self.customers.after_end(snap, cfg, job, self._save)
        if self.tasks is not None:
            self.tasks.after_call(snap, cfg, self._save)

    def _probe(self, snap: Snapshot, phone) -> None:
        """A create was sent before and its answer lost: find the call by externalId instead of repeating."""
        try:
            found = phone.update_call_by_extid(snap.unique_id, {})
        except MoySkladError as exc:
            if exc.status == 404:
                return
            raise
        if found.get("id"):
            self._save(snap, ms_call_id=found["id"], counterparty_id=snap.counterparty_id or
                       id_from_href((found.get("counterparty") or {}).get("href")))
            log.warning("call %s: create answer was lost; found it by externalId", snap.unique_id)

    def _event(self, snap: Snapshot, kind: str, extension: str) -> dict:
        snap.sequence += 1
        return {"eventType": kind, "extension": extension, "sequence": snap.sequence}

    def _create(self, snap: Snapshot, phone, mode: str) -> None:
        body = {"externalId": snap.unique_id, "number": snap.phone, "isIncoming": snap.incoming,
                "startTime": to_moysklad_time(snap.start_time or snap.created_at)}
        events, shown, answer_sent = [], [], False
        ended = snap.end_time is not None
        if not snap.incoming and snap.caller:
            body["extension"] = snap.caller  # known at once and final: the caller
        if ended:
            body.update(self._final_fields(snap))
        elif snap.incoming and snap.answered_extension and mode != "none":
            body["extension"] = snap.answered_extension
            events = [self._event(snap, "SHOW", snap.answered_extension),
                      self._event(snap, "STARTTIME", snap.answered_extension)]
            shown, answer_sent = [snap.answered_extension], True
        elif snap.incoming and mode == "during":
            events = [self._event(snap, "SHOW", ext) for ext in snap.extensions]
            shown = list(snap.extensions)
        elif not snap.incoming and mode != "none" and snap.caller:
            events = [self._event(snap, "SHOW", snap.caller)]
            shown = [snap.caller]
        if events:
            body["events"] = events
        self._save(snap, create_attempted=True, sequence=snap.sequence)
        created = phone.create_call(body)
        metrics.CALLS_CREATED.inc()
        linked = id_from_href((created.get("counterparty") or {}).get("href"))
        # answer_sent: MoySklad has the answering extension (or, outgoing, the caller's: nothing to add)
        answer_sent = answer_sent or not snap.incoming or "extension" in body
        self._save(snap, ms_call_id=created.get("id"), shown=shown, answer_sent=answer_sent,
                   end_sent=ended, hidden=list(shown) if ended else snap.hidden, last_error=None,
                   counterparty_id=snap.counterparty_id or linked)

    def _more_cards(self, snap: Snapshot, phone, mode: str) -> None:
        if not (snap.incoming and mode == "during") or snap.answered_extension:
            return
        new = [ext for ext in snap.extensions if ext not in snap.shown]
        if not new:
            return
        events = [self._event(snap, "SHOW", ext) for ext in new]
        if len(events) == 1:
            phone.send_event(snap.ms_call_id, events[0])
        else:
            phone.update_call(snap.ms_call_id, {"events": events})
        self._save(snap, shown=snap.shown + new, sequence=snap.sequence)

    def _answer(self, snap: Snapshot, phone, mode: str) -> None:
        who = snap.answered_extension
        if not snap.incoming or not who or snap.answer_sent or mode == "none":
            return  # without cards the extension rides on the final PUT
        events = []
        if who not in snap.shown:
            events.append(self._event(snap, "SHOW", who))
        events.append(self._event(snap, "STARTTIME", who))
        others = [ext for ext in snap.shown if ext != who and ext not in snap.hidden]
        events += [self._event(snap, "HIDE", ext) for ext in others]
        phone.update_call(snap.ms_call_id, {"extension": who, "events": events})
        self._save(snap, answer_sent=True, shown=list(dict.fromkeys(snap.shown + [who])),
                   hidden=snap.hidden + others, sequence=snap.sequence)

    def _final_fields(self, snap: Snapshot) -> dict:
        end = max(snap.end_time, snap.start_time) if snap.start_time else snap.end_time
        body = {"endTime": to_moysklad_time(end), "comment": comment(snap)}
        if snap.incoming and snap.answered_extension and not snap.answer_sent:
            body["extension"] = snap.answered_extension
        if snap.record_url:
            body["recordUrl"] = [snap.record_url]
        if snap.counterparty_id:
            body["counterparty"] = meta(f"{self.clients.settings.json_api_url}/entity/counterparty/"
                                        f"{snap.counterparty_id}", "counterparty")
        return body

    def _end(self, snap: Snapshot, phone) -> None:
        body = self._final_fields(snap)
        pending = [ext for ext in snap.shown if ext not in snap.hidden]
        if pending:
            body["events"] = [self._event(snap, "HIDE", ext) for ext in pending]
        phone.update_call(snap.ms_call_id, body)
        self._save(snap, end_sent=True, answer_sent=snap.answer_sent or not snap.incoming or "extension" in body,
                   hidden=snap.hidden + pending, sequence=snap.sequence, last_error=None)

    def _late_answer(self, snap: Snapshot, phone) -> None:
        """The answer arrived after the hangup was sent: set the (still empty, write-once) extension and
        the comment that names who answered."""
        if not snap.incoming or not snap.answered_extension or snap.answer_sent or not snap.end_sent:
            return
        phone.update_call(snap.ms_call_id, {"extension": snap.answered_extension, "comment": comment(snap)})
        self._save(snap, answer_sent=True)

    def _save(self, snap: Snapshot, **values) -> None:
        """Record progress in the job's unit of work (and mirror it in the snapshot).

        Progress is written with the job's outcome, or with an earlier commit: one write transaction per
        job, not one per step. Lost with the process, it only makes the job run again, which each step
        survives because its guard (`AT_ONCE`: written before a request whose answer may be lost, or a job
        queued here) is committed at once, with everything kept before it."""
        for name, value in values.items():
            if hasattr(snap, name):
                setattr(snap, name, value)
        snap.work.update(UPDATE_CALL, snap.id, values)
        if not AT_ONCE.isdisjoint(values):
            snap.work.commit()


# Progress committed before going on: a step's guard against repeating a request whose answer was lost,
# and tasks' mark of the job it queued in the session (the commit that makes the job visible).
AT_ONCE = frozenset({"create_attempted", "customer_attempted", "order_attempted", "task_queued"})
