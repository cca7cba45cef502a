"""The support desk (docs/design.md 5.4 "Support"): find any call in seconds and read its whole story.

`search` finds an enterprise's calls by a phone number in any format, a PBX unique_id or a MoySklad call
id, a date range (the enterprise's local days), direction and result. `timeline` tells one call's story,
oldest first: each PBX event received, each MoySklad exchange (request, response, status, latency),
the cards shown and hidden, the customer, order and task created, and the attempts of its jobs.
Everything comes from rows the service keeps anyway (ms_calls, integration_logs through ms_call_journal,
ms_jobs).
"""
from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Optional
from zoneinfo import ZoneInfo

from sqlalchemy import and_, or_, select

from msapp.db.models import Call, CallJournal, IntegrationLog, Job
from msapp.db.reader import read_only
from msapp.errors import ApiError, ValidationFailed
from msapp.extensions import db
from msapp.moysklad.formats import to_e164
from msapp.services import customer_names, paging

PAGE_SIZE = 50
RESULTS = ("answered", "missed", "busy", "in_progress")
MS_CALL_LINK = "https://online.moysklad.ru/app/#phonecall/edit?id={}"  # [I] the UI path is not documented
CARD_WORDS = {"SHOW": "карточка показана", "HIDE": "карточка скрыта", "STARTTIME": "разговор начат",
              "HIDE_ALL": "все карточки скрыты"}
CREATED = {"counterparty.create": "создан клиент", "customerorder.create": "создан заказ покупателя",
           "task.create": "создана задача «перезвонить»", "task.update": "задача дополнена",
           "task.note": "в задачу добавлен комментарий"}


def _day(value: str, field: str, zone: ZoneInfo, end: bool) -> datetime:
    try:
        day = datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise ValidationFailed({field: "must be a date YYYY-MM-DD"}) from None
    local = datetime.combine(day.date() + (timedelta(days=1) if end else timedelta(0)), time(0), zone)
    return local.astimezone(UTC).replace(tzinfo=None)


class Support:
    def __init__(self, configs, clients):
        self.configs = configs
        self.clients = clients

    # -- search ---------------------------------------------------------------------------------
    def search(self, number: str, q: str = "", date_from: str = "", date_to: str = "", direction: str = "",
               result: str = "", before: str = "") -> dict:
        """One page of the enterprise's calls, newest first, and the page after it (`next`: pass it back as
        `before`), by keyset on (start_time, id) (services/paging.py); the total is counted up to a cap
        (`capped`: there are more)."""
        read_only()
        cfg = self.configs.read(number)
        zone = ZoneInfo(cfg.get("timezone") or "Europe/Minsk")
        calls = Call.__table__
        cond = calls.c.enterprise_number == number
        q = (q or "").strip()
        if q:
            e164 = to_e164(q, cfg.get("default_region") or "BY") if any(ch.isdigit() for ch in q) else None
            keys = [calls.c.unique_id == q, calls.c.ms_call_id == q]
            if e164:
                keys.append(calls.c.phone == e164)
            # each key with the enterprise: every arm is one index of the enterprise's calls (a BitmapOr on
            # PostgreSQL, a multi-index OR on SQLite), never a walk of all its calls
            cond = or_(*(and_(cond, key) for key in keys))
        if date_from:  # the call's start (set by its first event), by the index (enterprise, start_time)
            cond = and_(cond, calls.c.start_time >= _day(date_from, "from", zone, end=False))
        if date_to:
            cond = and_(cond, calls.c.start_time < _day(date_to, "to", zone, end=True))
        if direction:
            if direction not in ("in", "out"):
                raise ValidationFailed({"direction": "must be in or out"})
            cond = and_(cond, calls.c.direction == direction)
        if result:
            if result not in RESULTS:
                raise ValidationFailed({"result": f"must be one of: {', '.join(RESULTS)}"})
            # calls still going have an index of their own (migration 0013): few, however long the history
            cond = and_(cond, calls.c.status != "ended" if result == "in_progress" else calls.c.call_status == result)
        total, capped = paging.count_capped(cond, calls.c.id)
        page = paging.newest_first(cond, calls.c.start_time, calls.c.id, before, PAGE_SIZE)
        rows, following = paging.page_of(db.session.execute(page(select(calls))).mappings().all(), PAGE_SIZE,
                                         "start_time")
        syncs = self._sync_states(number, [r["unique_id"] for r in rows])
        names = customer_names.names(number, [r["phone"] for r in rows])
        out = [self._row(r, syncs.get(r["unique_id"]), names) for r in rows]
        db.session.commit()
        return {"calls": out, "total": total, "capped": capped, "next": following, "timezone": zone.key}

    def _sync_states(self, number: str, uids: list) -> dict:
        """Per call: done, waiting (attempts so far, last error) or dead, from its jobs."""
        if not uids:
            return {}
        jobs = Job.__table__
        keys = {f"call:{number}:{u}": u for u in uids}
        found: dict = {}
        for job in db.session.execute(select(jobs.c.key, jobs.c.status, jobs.c.attempts, jobs.c.last_error)
                                      .where(jobs.c.key.in_(list(keys))).order_by(jobs.c.id)).all():
            uid = keys[job.key]
            state = found.setdefault(uid, {"state": "done", "attempts": 0, "last_error": None})
            state["attempts"] += job.attempts or 0
            if job.last_error:
                state["last_error"] = job.last_error
            if job.status == "dead":
                state["state"] = "dead"
            elif job.status in ("pending", "running") and state["state"] != "dead":
                state["state"] = "retrying" if job.attempts or job.last_error else "pending"
        return found

    def _row(self, r, sync: Optional[dict], names: dict) -> dict:
        """One call as the desk shows it; the customer's name as kept (`customer_names`), else as this
        process's cache of lookups has it."""
        start, answer, end = r["start_time"], r["answer_time"], r["end_time"]
        duration = None
        if end is not None and (answer or start) is not None:
            duration = max(0, round((end - (answer or start)).total_seconds()))
        cached = self.clients.cache.get((r["enterprise_number"], "customer", r["phone"]), default=None)
        return {
            "unique_id": r["unique_id"], "direction": r["direction"], "phone": r["phone"],
            "customer": names.get(r["phone"]) or (cached.get("name") if isinstance(cached, dict) else None),
            "counterparty_id": r["counterparty_id"],
            "started_at": _iso(start or r["created_at"]), "rang": list(r["extensions"] or []),
            "answered_by": r["answered_extension"], "duration": duration,
            "result": r["call_status"] or ("in_progress" if r["status"] != "ended" else None),
            "sync": sync or {"state": "done" if r["ms_call_id"] else "pending", "attempts": 0, "last_error": None},
            "moysklad_call_id": r["ms_call_id"],
            "moysklad_url": MS_CALL_LINK.format(r["ms_call_id"]) if r["ms_call_id"] else None,
        }

    # -- one call's story -------------------------------------------------------------------------
    def timeline(self, number: str, unique_id: str) -> dict:
        read_only()
        self.configs.read(number)
        calls = Call.__table__
        row = db.session.execute(select(calls).where(calls.c.enterprise_number == number,
                                                     calls.c.unique_id == unique_id)).mappings().first()
        if row is None:
            db.session.commit()
            raise ApiError(404, "unknown call", "unique_id")
        call = self._row(row, self._sync_states(number, [unique_id]).get(unique_id),
                         customer_names.names(number, [row["phone"]]))
        logs, links = IntegrationLog.__table__, CallJournal.__table__
        entries = []
        story = (select(logs).join(links, links.c.log_id == logs.c.id)
                 .where(links.c.enterprise_number == number, links.c.unique_id == unique_id).order_by(links.c.log_id))
        for log in db.session.execute(story).mappings():
            entries += _entries_of(log)
        jobs = Job.__table__
        mine = or_(jobs.c.key == f"call:{number}:{unique_id}",
                   and_(jobs.c.kind == "task.sync", jobs.c.key == f"task:{number}:{row['phone']}",
                        jobs.c.payload["call_id"].as_integer() == row["id"]))
        for job in db.session.execute(select(jobs).where(mine).order_by(jobs.c.id)).mappings():
            summary = f"задание {job['kind']}: {job['status']}, попыток {job['attempts']}"
            entries.append({"at": _iso(job["created_at"]), "kind": "job", "summary": summary,
                            "detail": {"last_error": job["last_error"], "run_at": _iso(job["run_at"]),
                                       "updated_at": _iso(job["updated_at"])}})
        db.session.commit()
        entries.sort(key=lambda e: e["at"] or "")
        return {**call, "timeline": entries}


def _iso(value: Optional[datetime]) -> Optional[str]:
    return value.isoformat(timespec="milliseconds") + "Z" if value is not None else None


def _entries_of(log) -> list:
    """A journal row as timeline entries: the event or exchange, and the cards and creations inside it."""
    at = _iso(log["created_at"])
    request, response = log["request_data"] or {}, log["response_data"] or {}
    event = log["event_type"] or ""
    if event.startswith("event."):
        kind = request.get("event_type") or event.split(".", 1)[1]
        return [{"at": at, "kind": "pbx", "summary": f"событие АТС: {kind}", "detail": request}]
    if not event.startswith("ms."):
        return [{"at": at, "kind": "other", "summary": event, "detail": {"request": request, "response": response}}]
    status = response.get("status") if isinstance(response, dict) else None
    latency = response.get("latency_ms") if isinstance(response, dict) else None
    summary = f"{request.get('method', '')} {request.get('path', '')} → {status or 'нет ответа'}"
    if latency is not None:
        summary += f" за {latency} мс"
    if log["error_message"]:
        summary += f": {log['error_message']}"
    out = [{"at": at, "kind": "moysklad", "summary": summary, "detail": {"request": request, "response": response}}]
    ok = log["status"] == "success"
    body = request.get("body") if isinstance(request.get("body"), dict) else {}
    events = body.get("events") or ([body] if body.get("eventType") else [])
    for card in events if ok else []:
        if isinstance(card, dict) and card.get("eventType"):
            out.append({"at": at, "kind": "card", "detail": card,
                        "summary": f"{CARD_WORDS.get(card['eventType'], card['eventType'])}: доб. "
                                   f"{card.get('extension', '—')}"})
    name = event.split(".", 2)[-1]
    if ok and name in CREATED:
        out.append({"at": at, "kind": "created", "summary": CREATED[name], "detail": response.get("body")})
    return out
