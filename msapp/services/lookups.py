"""Dialplan lookups (docs/design.md 5.1): who is calling, and which extension is their responsible manager.

Each answer comes within MS_LOOKUP_TIMEOUT. The MoySklad work runs on a small pool; when it is too
slow the caller gets the "not found" shape at the deadline while the work goes on and fills the cache,
so the next call from that number is answered from memory. Answers never cross enterprises: every
cache key starts with the enterprise number.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Optional

from msapp.db.work import Work
from msapp.errors import ApiError, ValidationFailed
from msapp.extensions import db
from msapp.moysklad import MoySkladError, RateLimited
from msapp.moysklad.formats import to_e164
from msapp.moysklad.http import id_from_href
from msapp.services.directory import DirectoryUnavailable

log = logging.getLogger("msapp.lookups")
NOT_FOUND = {"found": False}


class Lookups:
    def __init__(self, app, configs, clients, customers, deadline: float, threads: int = 8, directory=None):
        self.app = app
        self.directory = directory
        self.configs = configs
        self.clients = clients
        self.customers = customers
        self.deadline = deadline
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ms-lookup")

    def customer(self, number, phone) -> dict:
        """The customer-by-phone answer: found with owner and contact persons, or {"found": false}."""
        errors = {}
        if not isinstance(number, str) or not number:
            errors["enterprise_number"] = "is required"
        if not isinstance(phone, str) or not phone:
            errors["phone"] = "is required"
        if errors:
            raise ValidationFailed(errors)
        cfg = self.configs.read_fast(number)
        e164 = to_e164(phone, cfg.get("default_region") or "BY")
        if e164 is None:
            raise ValidationFailed({"phone": "is not a phone number"})
        db.session.rollback()  # hold no transaction (on SQLite: the write lock) while waiting below
        if not cfg.get("enabled") or not cfg.get("api_token"):
            return dict(NOT_FOUND)
        future = self.pool.submit(self._resolve, number, cfg, e164)
        try:
            return future.result(timeout=self.deadline)
        except FutureTimeout:
            log.info("lookup of a number for %s missed the %.2fs deadline", number, self.deadline)
            return dict(NOT_FOUND)

    def _resolve(self, number: str, cfg: dict, e164: str) -> dict:
        work = Work()  # the lookup's journal rows
        with self.app.app_context():
            try:
                found = self.customers.find(number, cfg, e164, work, max_wait=self.deadline,
                                            timeout=(min(3.05, self.deadline), 10.0))
                if found is None:
                    return dict(NOT_FOUND)
                return {"found": True, "id": found["id"], "name": found["name"], "phone": found.get("phone"),
                        "href": found.get("href"), "company_type": found.get("company_type"),
                        "owner": self._owner(number, cfg, found.get("owner_href")),
                        "contact_persons": found.get("contact_persons") or []}
            except (MoySkladError, RateLimited, ApiError) as exc:
                log.warning("lookup for %s failed: %s", number, exc)
                return dict(NOT_FOUND)
            finally:
                try:
                    work.commit()
                    db.session.commit()
                except Exception:  # the journal must never break a lookup
                    db.session.rollback()
                db.session.remove()

    def _owner(self, number: str, cfg: dict, owner_href: Optional[str]) -> Optional[dict]:
        """The customer's owner with the extension and name the directory knows (none: no extension)."""
        owner_id = id_from_href(owner_href)
        if not owner_id:
            return None
        try:
            employee = self.directory.employee(number, cfg, employee_id=owner_id)
        except DirectoryUnavailable:
            employee = None
        employee = employee or {}
        return {"id": owner_id, "name": employee.get("name"), "extension": employee.get("extension")}


def split_name(name: Optional[str]) -> tuple:
    """"Иванов Иван Иванович" -> (last, first, middle)."""
    parts = (name or "").split()
    return (parts[0] if parts else None, parts[1] if len(parts) > 1 else None,
            " ".join(parts[2:]) if len(parts) > 2 else None)


def profile(answer: dict) -> dict:
    """The old service's customer-profile shape."""
    if not answer.get("found"):
        return {"last_name": None, "first_name": None, "middle_name": None, "enterprise_name": None,
                "source": None}
    person = answer.get("company_type") == "individual"
    last, first, middle = split_name(answer["name"]) if person else (None, None, None)
    return {"last_name": last, "first_name": first, "middle_name": middle,
            "enterprise_name": None if person else answer["name"], "source": "moysklad"}
