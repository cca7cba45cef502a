"""The `ms` config of one enterprise (docs/design.md 4.1): read, validate, merge, mask, find by webhook.

The service owns only the key `ms` of `enterprises.integrations_config`; every other key is written
back exactly as read, under a row lock so a concurrent writer of another integration is not lost.
"""
from __future__ import annotations

import copy
import hmac
import time
import uuid
from typing import Any, Optional

from sqlalchemy import bindparam, select

from msapp.clock import utcnow
from msapp.db import rawsql
from msapp.db.models import ConfigChange, Enterprise, WebhookKey
from msapp.errors import ApiError, ValidationFailed
from msapp.extensions import db
from msapp.services import analytics_rollup
from msapp.services.config_schema import (
    _SECTIONS,
    _UUID4,
    _stored_form,
    changed_fields,
    normalize,
    validate_update,
    webhook_hash,
)

CACHE_SECONDS = 2.0
_SELECT_CONFIG = select(Enterprise.__table__.c.integrations_config).where(
    Enterprise.__table__.c.number == bindparam("_number"))


class ConfigStore:
    """Reads and writes enterprise configs; bound to the service's URLs from settings."""

    def __init__(self, phone_api_url: str, public_url: str):
        self.phone_api_url = phone_api_url
        self.public_url = public_url
        self._fast: dict[str, tuple[float, dict]] = {}
        self.on_saved: list = []  # callbacks(number) after a config is saved (e.g. lift a credentials pause)

    def enterprise(self, number: str, lock: bool = False) -> Enterprise:
        query = select(Enterprise).where(Enterprise.number == number)
        if lock:
            query = query.with_for_update()
        ent = db.session.scalars(query).first()
        if ent is None:
            raise ApiError(404, "unknown enterprise", "enterprise_number")
        return ent

    def read(self, number: str) -> dict:
        return self.of(self.enterprise(number))

    def of(self, ent: Enterprise) -> dict:
        return normalize((ent.integrations_config or {}).get("ms"), self.phone_api_url, self.public_url)

    def read_fast(self, number: str) -> dict:
        """The config for the event hot path: cached per process for CACHE_SECONDS, dropped on every write
        through this store (another process's write is seen within CACHE_SECONDS); 404 if unknown."""
        now = time.monotonic()
        hit = self._fast.get(number)
        if hit is not None and hit[0] > now:
            return hit[1]
        with rawsql.transaction(atomic=False) as tx:  # a read of its own: leaves the session alone
            raw = tx.first(_SELECT_CONFIG, {"_number": number})
        if raw is None:
            raise ApiError(404, "unknown enterprise", "enterprise_number")
        cfg = normalize((raw["integrations_config"] or {}).get("ms"), self.phone_api_url, self.public_url)
        self._fast[number] = (now + CACHE_SECONDS, cfg)
        return cfg

    def save(self, number: str, payload: Any, by: str = "service") -> dict:
        """Validate and merge an update into the stored config; record which fields changed and by whom;
        commit; return the full config."""
        update = validate_update(payload)
        ent = self.enterprise(number, lock=True)
        cfg = self.of(ent)
        before = copy.deepcopy(cfg)
        for key, value in update.items():
            if key in _SECTIONS:
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        missed = cfg.get("missed_calls") or {}
        if missed.get("create_task") and missed.get("assignee") == "employee" and not missed.get("fallback_employee"):
            raise ValidationFailed({"missed_calls.fallback_employee": "choose the employee who gets every task"})
        if not cfg.get("webhook_uuid"):
            cfg["webhook_uuid"] = str(uuid.uuid4())
        self._write(ent, cfg)
        fields = changed_fields(before, cfg)
        self._record(number, by, fields)
        if "timezone" in fields:  # past callbacks' «same day» is in the zone: the analytics are rebuilt
            analytics_rollup.request_rebuild(number, utcnow())
        db.session.commit()
        for callback in self.on_saved:
            callback(number)
        return self.of(ent)

    @staticmethod
    def _record(number: str, by: str, fields: list) -> None:
        if fields:
            db.session.add(ConfigChange(enterprise_number=number, at=utcnow(), by=by[:200], fields=fields))

    def history(self, number: str, limit: int = 50) -> list:
        """The enterprise's config changes, newest first: {"at", "by", "fields"} (no values, no secrets)."""
        self.enterprise(number)
        rows = db.session.scalars(select(ConfigChange).where(ConfigChange.enterprise_number == number)
                                  .order_by(ConfigChange.id.desc()).limit(limit)).all()
        out = [{"at": r.at, "by": r.by, "fields": list(r.fields or [])} for r in rows]
        db.session.commit()
        return out

    def regenerate_webhook(self, number: str, by: str = "service") -> dict:
        """Give the enterprise a new webhook uuid; the old one stops working at once."""
        ent = self.enterprise(number, lock=True)
        cfg = self.of(ent)
        cfg["webhook_uuid"] = str(uuid.uuid4())
        self._write(ent, cfg)
        self._record(number, by, ["webhook_url"])
        db.session.commit()
        return self.of(ent)

    def delete(self, number: str, by: str = "service") -> None:
        """Remove the `ms` key (and its webhook); other integrations' keys stay."""
        ent = self.enterprise(number, lock=True)
        self._record(number, by, ["(all settings deleted)"])
        self._fast.pop(number, None)
        rest = {k: v for k, v in (ent.integrations_config or {}).items() if k != "ms"}
        ent.integrations_config = rest
        db.session.execute(WebhookKey.__table__.delete().where(WebhookKey.enterprise_number == number))
        db.session.commit()

    def _write(self, ent: Enterprise, cfg: dict) -> None:
        self._fast.pop(ent.number, None)
        whole = dict(ent.integrations_config or {})
        whole["ms"] = _stored_form(cfg)
        ent.integrations_config = whole
        self._index_webhook(ent.number, cfg.get("webhook_uuid"))

    def _index_webhook(self, number: str, webhook_uuid: Optional[str]) -> None:
        table = WebhookKey.__table__
        db.session.execute(table.delete().where(table.c.enterprise_number == number))
        if webhook_uuid:
            db.session.execute(table.insert().values(uuid_sha256=webhook_hash(webhook_uuid),
                                                     enterprise_number=number))

    def find_by_webhook(self, candidate: str) -> Optional[tuple[Enterprise, dict]]:
        """The enterprise whose webhook uuid is exactly `candidate` (indexed; constant-time confirm)."""
        if not isinstance(candidate, str) or not _UUID4.fullmatch(candidate):
            return None
        row = db.session.get(WebhookKey, webhook_hash(candidate))
        if row is None:
            return None
        ent = db.session.get(Enterprise, row.enterprise_number)
        if ent is None:
            return None
        cfg = self.of(ent)
        if not hmac.compare_digest(str(cfg.get("webhook_uuid") or "").encode(), candidate.encode()):
            return None
        return ent, cfg

    def reindex_webhooks(self) -> int:
        """Rebuild ms_webhooks from the stored configs (configs written by the old service). Commits."""
        count = 0
        db.session.execute(WebhookKey.__table__.delete())
        for ent in db.session.scalars(select(Enterprise)):
            ms = (ent.integrations_config or {}).get("ms")
            value = ms.get("webhook_uuid") if isinstance(ms, dict) else None
            if isinstance(value, str) and _UUID4.fullmatch(value):
                self._index_webhook(ent.number, value)
                count += 1
        db.session.commit()
        return count
