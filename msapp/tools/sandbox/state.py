"""The sandbox's data: MoySklad accounts (employees, counterparties, calls, cards, orders), the request
log, injected faults and MoySklad's own limits. Everything behind one lock.

Behaviour encoded here follows `docs/moysklad.md`; where that file marks a fact as inference, the
sandbox does the likely thing and says so in a comment:
- [I] `search=` on counterparties matches digits of phones in any format (community reports).
- [I] a call created without `counterparty` is linked by its `number`, and `counterpartyowner` is that
  counterparty's owner with the owner's extension.
- [I] the 415 answer of the Phone API without gzip mirrors the JSON API's.
"""
from __future__ import annotations

import copy
import json
import os
import random
import re
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

SEED_PATH = os.path.join(os.path.dirname(__file__), "seed.json")
WRITE_ONCE = ("extension", "employee", "endTime", "duration", "counterparty")
EVENT_TYPES = ("SHOW", "STARTTIME", "HIDE", "HIDE_ALL")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{3})?$")


def digits(text: Optional[str]) -> str:
    return re.sub(r"\D", "", text or "")


def same_phone(a: str, b: str) -> bool:
    """Loose phone equality used by the sandbox itself (independent of the service's phonenumbers code)."""
    da, db = digits(a), digits(b)
    if len(da) < 7 or len(db) < 7:
        return False
    return da[-9:] == db[-9:]


class SandboxError(Exception):
    """An answer in MoySklad's error shape."""

    def __init__(self, status: int, error: str, code: Optional[int] = None, parameter: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(error)
        self.status, self.error, self.code, self.parameter = status, error, code, parameter
        self.headers = headers or {}

    def body(self) -> Optional[dict]:
        if self.status == 415:
            return None  # MoySklad answers 415 with an empty body
        item = {"error": self.error, "code": self.code or self.status, "error_message": self.error}
        if self.parameter:
            item["parameter"] = self.parameter
        return {"errors": [item]}


@dataclass
class Faults:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fail_next: int = 0
    fail_status: int = 503
    fail_rate: float = 0.0
    rate_429: float = 0.0
    retry_after_ms: int = 200
    api: str = "both"  # phone | json | both
    account: Optional[str] = None  # None = every account
    phone_api_disabled: bool = False  # answer like an account without the telephony solution (55008)
    lose_next: int = 0  # apply the next N requests but answer 504, as if the answer were lost on the way
    tasks_disabled: bool = False  # refuse tasks (403) like an account without MoySklad's CRM option

    def take_lost(self, api: str, account: str) -> bool:
        if self.lose_next > 0 and self.applies(api, account):
            self.lose_next -= 1
            return True
        return False

    def applies(self, api: str, account: str) -> bool:
        return self.api in ("both", api) and self.account in (None, account)


@dataclass
class Account:
    name: str
    phone_key: str
    json_token: str
    employees: list = field(default_factory=list)
    counterparties: dict = field(default_factory=dict)
    organizations: list = field(default_factory=list)
    states: list = field(default_factory=list)
    saleschannels: list = field(default_factory=list)
    calls: dict = field(default_factory=dict)
    orders: list = field(default_factory=list)
    cards: dict = field(default_factory=dict)  # extension -> {call_id: {"started": bool}}
    tasks: dict = field(default_factory=dict)  # task id -> task (sandbox/tasks.py)

    def employee(self, employee_id: str) -> Optional[dict]:
        return next((e for e in self.employees if e["id"] == employee_id), None)

    def employee_by_extension(self, extension: str) -> Optional[dict]:
        return next((e for e in self.employees if e.get("extension") == extension), None)


class SandboxState:
    def __init__(self, seed_path: Optional[str] = None, json_weight: int = 3):
        with open(seed_path or SEED_PATH, encoding="utf-8") as fh:
            self.seed = json.load(fh)
        self.lock = threading.RLock()
        self.json_weight = json_weight
        self.reset()

    # -- accounts, keys, reset ------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.accounts: dict[str, Account] = {}
            self.log: list[dict] = []
            self.faults = Faults()
            self.windows: dict[tuple, deque] = {}
            self.in_flight: dict[tuple, int] = {}
            self.own_429 = 0
            self.max_in_flight_seen = 0
            self.add_account("demo")

    def add_account(self, name: str) -> Account:
        with self.lock:
            if name in self.accounts:
                return self.accounts[name]
            seed = copy.deepcopy(self.seed)
            acc = Account(name=name, phone_key=secrets.token_hex(20), json_token=secrets.token_hex(20),
                          employees=seed["employees"], organizations=seed["organizations"],
                          states=seed["states"], saleschannels=seed["saleschannels"])
            for cp in seed["counterparties"]:
                acc.counterparties[cp["id"]] = cp
            self.accounts[name] = acc
            return acc

    def keys(self) -> dict:
        with self.lock:
            return {name: {"phone_api_key": a.phone_key, "json_api_token": a.json_token}
                    for name, a in self.accounts.items()}

    def account_for(self, api: str, credential: Optional[str]) -> Account:
        with self.lock:
            for acc in self.accounts.values():
                expected = acc.phone_key if api == "phone" else acc.json_token
                if credential and secrets.compare_digest(credential, expected):
                    return acc
        code = 1056
        raise SandboxError(401, "Ошибка аутентификации: неверный токен или ключ доступа", code)

    # -- limits and faults ----------------------------------------------------------------------
    def admit(self, api: str, account: str) -> tuple[float, Optional[SandboxError]]:
        """Apply faults and MoySklad's limits to one request; return (latency to add, error or None)."""
        with self.lock:
            f = self.faults
            latency = 0.0
            if f.applies(api, account):
                latency = max(0.0, f.latency_ms + random.uniform(-f.jitter_ms, f.jitter_ms)) / 1000
                if api == "phone" and f.phone_api_disabled:
                    return latency, SandboxError(403, "Для данного API не установлено решение", 55008)
                if f.fail_next > 0:
                    f.fail_next -= 1
                    return latency, self._injected(f.fail_status, f)
                roll = random.random()
                if roll < f.rate_429:
                    return latency, self._injected(429, f)
                if roll < f.rate_429 + f.fail_rate:
                    return latency, self._injected(f.fail_status, f)
            key = (api, account)
            limit, window, weight = (100, 5.0, 1) if api == "phone" else (45, 3.0, self.json_weight)
            now = time.monotonic()
            q = self.windows.setdefault(key, deque())
            while q and q[0][0] <= now - window:
                q.popleft()
            used = sum(w for _, w in q)
            if used + weight > limit:
                self.own_429 += 1
                wait_ms = int((q[0][0] + window - now) * 1000) + 1
                return latency, SandboxError(429, "Превышен лимит количества запросов", 1049,
                                             headers=self._limit_headers(limit, 0, wait_ms))
            if self.in_flight.get(key, 0) >= 5:
                self.own_429 += 1
                return latency, SandboxError(429, "Превышено ограничение на количество параллельных запросов",
                                             1073, headers={"X-Lognex-Retry-After": "100"})
            q.append((now, weight))
            self.in_flight[key] = self.in_flight.get(key, 0) + 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight[key])
            return latency, None

    def release(self, api: str, account: str) -> None:
        with self.lock:
            key = (api, account)
            self.in_flight[key] = max(0, self.in_flight.get(key, 0) - 1)

    @staticmethod
    def _injected(status: int, f: Faults) -> SandboxError:
        if status == 429:
            return SandboxError(429, "Превышен лимит количества запросов (injected)", 1049,
                                headers={"X-Lognex-Retry-After": str(f.retry_after_ms)})
        return SandboxError(status, "Сервис временно недоступен (injected)", status)

    @staticmethod
    def _limit_headers(limit: int, remaining: int, wait_ms: int) -> dict:
        return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining),
                "X-Lognex-Retry-After": str(wait_ms), "X-Lognex-Reset": str(wait_ms)}

    def record(self, entry: dict) -> None:
        with self.lock:
            entry["seq"] = len(self.log) + 1
            self.log.append(entry)

    # -- calls and cards ------------------------------------------------------------------------
    def create_call(self, acc: Account, body: dict, base: str, remap: str) -> dict:
        with self.lock:
            for name in ("externalId", "number", "isIncoming", "startTime"):
                if body.get(name) in (None, ""):
                    raise SandboxError(412, f"Не указано обязательное поле '{name}'", 3000, name)
            _check_time(body, "startTime")
            _check_time(body, "endTime")
            call_id = str(uuid.uuid4())
            call = {"id": call_id, "externalId": str(body["externalId"]), "number": str(body["number"]),
                    "isIncoming": bool(body["isIncoming"]), "startTime": body["startTime"],
                    "endTime": None, "duration": None, "extension": None, "employee": None,
                    "counterparty": None, "recordUrl": [], "comment": None, "events": [],
                    "created": time.time()}
            acc.calls[call_id] = call
            self._apply(acc, call, body, remap, creating=True)
            if call["counterparty"] is None:  # [I] MoySklad links by number itself
                cp = next((c for c in acc.counterparties.values() if _cp_has_phone(c, call["number"])), None)
                if cp:
                    call["counterparty"] = _meta(f"{remap}/entity/counterparty/{cp['id']}", "counterparty")
            return self.call_view(acc, call, base, remap)

    def update_call(self, acc: Account, call: dict, body: dict, base: str, remap: str) -> dict:
        with self.lock:
            _check_time(body, "endTime")
            self._apply(acc, call, body, remap, creating=False)
            return self.call_view(acc, call, base, remap)

    def _apply(self, acc: Account, call: dict, body: dict, remap: str, creating: bool) -> None:
        for name in WRITE_ONCE:  # fields that already have a value are not overwritten
            if body.get(name) is not None and call.get(name) is None:
                call[name] = body[name]
        if body.get("comment") is not None:
            call["comment"] = str(body["comment"])[:4096]
        urls = body.get("recordUrl")
        if urls is not None:
            if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
                raise SandboxError(400, "Поле 'recordUrl' должно быть массивом строк", 2001, "recordUrl")
            call["recordUrl"].extend(urls)  # recordUrl appends
        events = body.get("events")
        if events is not None:
            if not isinstance(events, list):
                raise SandboxError(400, "Поле 'events' должно быть массивом", 2001, "events")
            for event in events:
                self.apply_event(acc, call, event)

    def apply_event(self, acc: Account, call: dict, event: Any) -> None:
        with self.lock:
            if not isinstance(event, dict) or event.get("eventType") not in EVENT_TYPES:
                raise SandboxError(400, "Неверное значение поля 'eventType'", 3005, "eventType")
            if not isinstance(event.get("sequence"), int):
                raise SandboxError(412, "Не указано обязательное поле 'sequence'", 3000, "sequence")
            kind = event["eventType"]
            ext = event.get("extension")
            emp_href = ((event.get("employee") or {}).get("href"))
            if emp_href:  # employee takes priority over extension
                emp = acc.employee(emp_href.rstrip("/").rsplit("/", 1)[-1])
                ext = emp.get("extension") if emp else ext
            if kind != "HIDE_ALL" and not ext:
                raise SandboxError(412, "Не указано обязательное поле 'extension'", 3000, "extension")
            call["events"].append({"eventType": kind, "extension": ext, "sequence": event["sequence"],
                                   "at": time.time()})
            if kind == "SHOW":
                acc.cards.setdefault(ext, {})[call["id"]] = {"started": False, "at": time.time()}
            elif kind == "STARTTIME":
                acc.cards.setdefault(ext, {}).setdefault(call["id"], {"at": time.time()})["started"] = True
            elif kind == "HIDE":
                acc.cards.get(ext, {}).pop(call["id"], None)
            else:
                for shown in acc.cards.values():
                    shown.pop(call["id"], None)

    def call_view(self, acc: Account, call: dict, base: str, remap: str) -> dict:
        out = {k: v for k, v in call.items() if k not in ("events", "created")}
        out["meta"] = _meta(f"{base}/call/{call['id']}", "call")
        cp_href = (call.get("counterparty") or {}).get("href")
        if cp_href:
            cp = acc.counterparties.get(cp_href.rstrip("/").rsplit("/", 1)[-1])
            owner = acc.employee(cp["owner"]) if cp and cp.get("owner") else None
            if owner:
                out["counterpartyowner"] = {"extention": owner.get("extension") or "",
                                            "meta": _meta(f"{remap}/entity/employee/{owner['id']}", "employee")}
        return out

    def find_call(self, acc: Account, call_id: Optional[str] = None, external_id: Optional[str] = None) -> dict:
        with self.lock:
            if call_id is not None:
                call = acc.calls.get(call_id)
            else:
                matches = [c for c in acc.calls.values() if c["externalId"] == external_id]
                call = matches[-1] if matches else None
            if call is None:
                raise SandboxError(404, "Объект не найден", 1021)
            return call

    # -- counterparties -------------------------------------------------------------------------
    def search_counterparties(self, acc: Account, text: str) -> list[dict]:
        with self.lock:
            needle, dneedle = text.lower(), digits(text)
            out = []
            for cp in acc.counterparties.values():
                fields = [cp.get("name"), cp.get("email"), cp.get("code")] + \
                    [p.get("name") for p in cp.get("contactpersons", [])]
                phones = [cp.get("phone")] + [p.get("phone") for p in cp.get("contactpersons", [])]
                if any(needle in (f or "").lower() for f in fields) or \
                        (dneedle and any(dneedle in digits(p) for p in phones)):
                    out.append(cp)
            return out

    def create_counterparty(self, acc: Account, body: dict) -> dict:
        with self.lock:
            if not str(body.get("name") or "").strip():
                raise SandboxError(412, "Поле 'name' не может быть пустым", 3000, "name")
            owner = ((body.get("owner") or {}).get("meta") or {}).get("href")
            owner_id = owner.rstrip("/").rsplit("/", 1)[-1] if owner else None
            if owner_id and acc.employee(owner_id) is None:
                raise SandboxError(400, "Неверная ссылка на сотрудника", 2010, "owner")
            cp = {"id": str(uuid.uuid4()), "name": str(body["name"])[:255], "phone": body.get("phone"),
                  "email": body.get("email"), "owner": owner_id, "description": body.get("description"),
                  "companyType": body.get("companyType") or "legal", "contactpersons": [],
                  "externalCode": body.get("externalCode") or uuid.uuid4().hex,
                  "created": datetime.now().strftime("%Y-%m-%d %H:%M:%S.000")}
            acc.counterparties[cp["id"]] = cp
            return cp

    def create_order(self, acc: Account, body: dict) -> dict:
        with self.lock:
            for name in ("organization", "agent"):
                if not ((body.get(name) or {}).get("meta") or {}).get("href"):
                    raise SandboxError(412, f"Не указано обязательное поле '{name}'", 3000, name)
            agent_id = body["agent"]["meta"]["href"].rstrip("/").rsplit("/", 1)[-1]
            if agent_id not in acc.counterparties:
                raise SandboxError(400, "Неверная ссылка на контрагента", 2010, "agent")
            order = {"id": str(uuid.uuid4()), "name": f"{len(acc.orders) + 1:05d}", **copy.deepcopy(body)}
            acc.orders.append(order)
            return order


def _check_time(body: dict, name: str) -> None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not TIME_RE.match(value)):
        raise SandboxError(400, f"Неверный формат даты в поле '{name}'", 2001, name)


def _cp_has_phone(cp: dict, number: str) -> bool:
    phones = [cp.get("phone")] + [p.get("phone") for p in cp.get("contactpersons", [])]
    for text in phones:
        for part in re.split(r"[;,]", text or ""):
            if same_phone(part, number):
                return True
    return False


def _meta(href: str, type_: str) -> dict:
    return {"href": href, "type": type_, "mediaType": "application/json"}
