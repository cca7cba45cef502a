"""Customers and orders around a call: find the caller by phone (cached), create them when the config
says so (owner = who answered or called), and create a customer order (none / new customer / always).

JSON API trouble never keeps a call out of MoySklad's history: after a few retryable failures, or at
once on a permanent one, the step is given up (logged in the journal) and the call completes unlinked.
Creates carry an externalCode, so a create whose answer was lost is found instead of made twice.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Optional

from msapp import metrics
from msapp.db.work import Work
from msapp.moysklad import BreakerOpen, MoySkladError, RateLimited, RetryPolicy
from msapp.queue import JobContext
from msapp.services import customer_names
from msapp.services.directory import DirectoryUnavailable
from msapp.services.moysklad_clients import MoySkladClients

log = logging.getLogger("msapp.customers")
HIT_TTL, MISS_TTL, LIST_TTL = 600.0, 60.0, 600.0
GIVE_UP_AFTER = 3
_ID = re.compile(r"[0-9a-fA-F-]{8,64}")


class Customers:
    def __init__(self, clients: MoySkladClients, directory):
        self.clients = clients
        self.directory = directory  # services.directory.Directory: the one list of employees
        self.policy = RetryPolicy()

    # -- lookups (shared with the dialplan routes) ----------------------------------------------
    def find(self, number: str, cfg: dict, e164: str, work: Optional[Work], **client_kw) -> Optional[dict]:
        """The counterparty with this phone, or None; cached (hits 10 min, misses 1 min). A request to
        MoySklad is journaled in `work`."""
        key = (number, "customer", e164)
        cached = self.clients.cache.get(key, default=KeyError)
        if cached is not KeyError:
            return cached
        found = self.clients.json(number, cfg, work, **client_kw).find_counterparty_by_phone(
            e164, cfg.get("default_region") or "BY")
        self.clients.cache.set(key, found, HIT_TTL if found else MISS_TTL)
        if found:
            customer_names.remember(work, number, e164, found.get("id"), found.get("name"))
        return found

    def cached_list(self, number: str, cfg: dict, kind: str, fetch: Callable, work: Optional[Work]) -> list:
        """A JSON API list of one enterprise (organizations, employees...), cached 10 minutes."""
        key = (number, kind)
        rows = self.clients.cache.get(key)
        if rows is None:
            rows = fetch(self.clients.json(number, cfg, work))
            self.clients.cache.set(key, rows, LIST_TTL)
        return rows

    # -- around the end of a call ---------------------------------------------------------------
    def _api(self, snap, cfg: dict):
        """The JSON API client for one call's steps: its exchanges are journaled with the call's unique_id."""
        return self.clients.json(snap.enterprise_number, cfg, snap.work, context={"unique_id": snap.unique_id})

    @staticmethod
    def _actions(snap, cfg: dict) -> dict:
        return cfg.get("incoming_call_actions" if snap.incoming else "outgoing_call_actions") or {}

    def _owner(self, number: str, cfg: dict, snap) -> Optional[dict]:
        """The employee who answered (incoming) or called (outgoing), from the directory. No list at all
        is a Phone API failure of the call's own: it waits and tries again."""
        extension = snap.answered_extension if snap.incoming else snap.caller
        try:
            return self.directory.employee(number, cfg, extension=extension)
        except DirectoryUnavailable as exc:
            raise MoySkladError(0, f"employee list unavailable: {exc}", api="phone", network=True) from None

    def _give_up(self, exc: MoySkladError, job: JobContext, what: str, snap) -> bool:
        """True when the step should be abandoned rather than retried: a permanent error, a few
        retryable ones, or the JSON API's breaker open (the call must not wait for the JSON API)."""
        json_down = self.clients.breakers is not None and \
            self.clients.breakers.wait(snap.enterprise_number, "json") is not None
        if self.policy.retryable(exc) and (exc.api != "json" or (job.attempts < GIVE_UP_AFTER and not json_down)):
            return False  # a Phone API failure here (the employee list) is the call's own: it waits
        log.error("call %s of %s: %s given up: %s", snap.unique_id, snap.enterprise_number, what, exc)
        return True

    def before_end(self, snap, cfg: dict, job: JobContext, save: Callable) -> None:
        """Find or create the caller so the final PUT can link the call to them."""
        if snap.counterparty_id or snap.customer_checked:
            return
        actions = self._actions(snap, cfg)
        wants_customer = bool(actions.get("create_customers"))
        wants_order = actions.get("create_orders") in ("always", "new_customer")
        if not (wants_customer or wants_order) or not cfg.get("api_token"):
            save(snap, customer_checked=True)
            return
        number = snap.enterprise_number
        code = f"ms-call-{number}-{snap.unique_id}"
        try:
            found = self.find(number, cfg, snap.phone, snap.work, context={"unique_id": snap.unique_id})
            if found is None and snap.customer_attempted:
                found = self._api(snap, cfg).find_by_external_code("counterparty", code)
            if found is not None:
                save(snap, counterparty_id=found["id"], customer_checked=True)
                return
            if not wants_customer:
                save(snap, customer_checked=True)
                return
            owner = self._owner(number, cfg, snap)
            save(snap, customer_attempted=True)
            created = self._api(snap, cfg).create_counterparty(
                snap.phone, snap.phone, owner_id=owner["id"] if owner else None, external_code=code,
                description=f"Создан автоматически по звонку {snap.phone}")
        except BreakerOpen as exc:  # the JSON API is down: the call goes into the history unlinked
            if exc.api != "json":
                raise
            log.warning("call %s of %s: customer step skipped: %s", snap.unique_id, snap.enterprise_number, exc)
            save(snap, customer_checked=True)
            return
        except RateLimited:
            raise
        except MoySkladError as exc:
            if not self._give_up(exc, job, "customer lookup/creation", snap):
                raise
            save(snap, customer_checked=True)
            return
        metrics.CUSTOMERS_CREATED.inc()
        customer_names.remember(snap.work, number, snap.phone, created.get("id"), created.get("name"))
        self.clients.cache.set((number, "customer", snap.phone), {
            "id": created.get("id"), "name": created.get("name"), "phone": snap.phone,
            "href": (created.get("meta") or {}).get("href"), "owner_href": None, "contact_persons": [],
            "matched_by": "created"}, HIT_TTL)
        save(snap, counterparty_id=created.get("id"), customer_created=True, customer_checked=True)

    def after_end(self, snap, cfg: dict, job: JobContext, save: Callable) -> None:
        """Create the customer order the config asks for (once)."""
        mode = self._actions(snap, cfg).get("create_orders") or "none"
        if snap.order_id is not None or mode == "none" or not snap.counterparty_id or not cfg.get("api_token"):
            return
        if mode == "new_customer" and not snap.customer_created:
            return
        number = snap.enterprise_number
        settings = cfg.get("incoming_call_actions") or {}
        code = f"ms-call-{number}-{snap.unique_id}"
        try:
            api = self._api(snap, cfg)
            if snap.order_attempted:
                found = api.find_by_external_code("customerorder", code)
                if found is not None:
                    save(snap, order_id=found.get("id"))
                    return
            organization = settings.get("organization") or self._first_organization(number, cfg, snap.work)
            if organization is None:
                log.error("call %s: no organization in MoySklad, order not created", snap.unique_id)
                save(snap, order_id="")
                return
            owner = self._owner(number, cfg, snap)
            save(snap, order_attempted=True)
            order = api.create_customer_order(
                organization, snap.counterparty_id, state_id=settings.get("order_state"),
                sales_channel_id=self._sales_channel(number, cfg, settings.get("order_source"), snap.work),
                owner_id=owner["id"] if owner else None, external_code=code,
                description=f"Заказ по звонку {snap.phone}")
        except BreakerOpen as exc:
            if exc.api != "json":
                raise
            log.warning("call %s of %s: order skipped: %s", snap.unique_id, snap.enterprise_number, exc)
            save(snap, order_id="")
            return
        except RateLimited:
            raise
        except MoySkladError as exc:
            if not self._give_up(exc, job, "customer order", snap):
                raise
            save(snap, order_id="")
            return
        metrics.ORDERS_CREATED.inc()
        save(snap, order_id=order.get("id") or "")

    def _first_organization(self, number: str, cfg: dict, work: Work) -> Optional[str]:
        rows = self.cached_list(number, cfg, "organizations", lambda api: api.organizations(), work)
        return rows[0]["id"] if rows else None

    def _sales_channel(self, number: str, cfg: dict, source: Optional[str], work: Work) -> Optional[str]:
        """An id as given; a name (the old service stored names) is looked up among the sales channels."""
        if not source or _ID.fullmatch(source):
            return source or None
        rows = self.cached_list(number, cfg, "saleschannels", lambda api: api.sales_channels(), work)
        return next((r["id"] for r in rows if (r.get("name") or "").strip().lower() == source.strip().lower()), None)
