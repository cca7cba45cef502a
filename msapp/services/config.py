"""The `ms` config of one enterprise (docs/design.md 4.1): read, validate, merge, mask, find by webhook.

The service owns only the key `ms` of `enterprises.integrations_config`; every other key is written
back exactly as read, under a row lock so a concurrent writer of another integration is not lost.
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import re
import time
import uuid
from typing import Any, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
from sqlalchemy import bindparam, select

from msapp.clock import utcnow
from msapp.db import rawsql
from msapp.db.models import ConfigChange, Enterprise, WebhookKey
from msapp.errors import ApiError, ValidationFailed
from msapp.extensions import db
from msapp.redact import MASK, mask_tail

NOTIFY_MODES = ("during", "answer", "none")
ORDER_MODES = ("none", "new_customer", "always")
SIGNATURE_MODES = ("off", "log", "enforce")
SECRET_FIELDS = ("integration_code", "api_token")
_ID = re.compile(r"[0-9a-fA-F-]{8,64}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "integration_code": "",
    "api_token": "",
    "webhook_uuid": "",
    "timezone": "Europe/Minsk",
    "default_region": "BY",
    "notifications": {"call_notify_mode": "during", "notify_incoming": True, "notify_outgoing": False},
    "incoming_call_actions": {"create_customers": True, "create_orders": "none",
                              "order_state": None, "order_source": None, "organization": None},
    "outgoing_call_actions": {"create_customers": False, "create_orders": "none"},
    # Toll-fraud guard (docs/design.md 5.2). allowed_countries None: the enterprise's default_region only.
    "click_to_call": {"allowed_countries": None, "block_premium": True,
                      "max_per_extension_per_minute": 10, "max_per_enterprise_per_minute": 60,
                      "max_per_extension_per_hour": 60, "max_per_enterprise_per_hour": 500,
                      "max_per_extension_per_day": 300, "max_per_enterprise_per_day": 2000,
                      "refusals_per_minute": 20, "cooldown_minutes": 10},
    # Missed calls become callback tasks (services/tasks.py); legacy configs without the block: off.
    "missed_calls": {"create_task": False, "assignee": "owner", "fallback_employee": None, "due_minutes": 30,
                     "close_on_callback": True, "only_known_customers": False},
    "signature_mode": "log",
}
_SECTIONS = ("notifications", "incoming_call_actions", "outgoing_call_actions", "click_to_call", "missed_calls")
ASSIGNEE_MODES = ("owner", "employee")
# Read-only fields a GET returns: a PUT of exactly what a GET returned must succeed and change nothing.
_READ_ONLY = {"phone_api_url", "webhook_url", "webhook_uuid", "integration_code_set", "api_token_set"}
_KNOWN = set(DEFAULTS) | _READ_ONLY | {"employee_mapping"}


def webhook_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _order_mode(value: Any) -> Any:
    """Legacy booleans and `create_order` values -> the new `create_orders` words."""
    if value is True:
        return "always"
    if value is False or value is None:
        return "none"
    return value


def upgrade_legacy(raw: dict) -> dict:
    """Map the old service's keys (create_client, create_order, boolean create_orders) to the new form.

    Returns a new dict; `raw` is not modified (sections that change are copied, not mutated).
    """
    cfg = dict(raw)
    section = cfg.get("incoming_call_actions")
    incoming = dict(section) if isinstance(section, dict) else {}
    if "create_client" in cfg and "create_customers" not in incoming:
        incoming["create_customers"] = bool(cfg["create_client"])
    if "create_order" in cfg and "create_orders" not in incoming:
        incoming["create_orders"] = _order_mode(cfg["create_order"])
    if "order_source" in cfg:  # the old service kept a sales channel name at the top level
        legacy_source = cfg.pop("order_source")
        incoming.setdefault("order_source", legacy_source or None)
    for key in ("create_client", "create_order"):
        cfg.pop(key, None)
    for section in ("incoming_call_actions", "outgoing_call_actions"):
        other = cfg.get(section)
        part = incoming if section == "incoming_call_actions" else (dict(other) if isinstance(other, dict) else other)
        if not isinstance(part, dict):
            continue  # not an object: left for validation to reject
        if "create_orders" in part and isinstance(part["create_orders"], bool):
            part["create_orders"] = _order_mode(part["create_orders"])
        if part:
            cfg[section] = part
    return cfg


def normalize(raw: Optional[dict], phone_api_url: str, public_url: str) -> dict:
    """A complete config: defaults, then the stored (possibly legacy) values, then derived fields."""
    stored = upgrade_legacy(raw or {})
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}  # defaults are flat per section
    for key, value in stored.items():
        if key in _SECTIONS and isinstance(value, dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    cfg["phone_api_url"] = phone_api_url
    cfg["webhook_url"] = f"{public_url}/ms/webhook/{cfg['webhook_uuid']}" if cfg.get("webhook_uuid") else ""
    return cfg


def changed_fields(before: dict, after: dict) -> list:
    """Dotted names of the fields whose value differs (secrets by name only; derived fields left out)."""
    out = []
    for key in sorted(set(before) | set(after)):
        if key in ("webhook_url", "phone_api_url"):
            continue
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = a if isinstance(a, dict) else {}, b if isinstance(b, dict) else {}
            out += [f"{key}.{sub}" for sub in sorted(set(a) | set(b)) if a.get(sub) != b.get(sub)]
        elif a != b:
            out.append("webhook_url" if key == "webhook_uuid" else key)
    return out


def public_view(cfg: dict) -> dict:
    """The config as an API answer or page may show it: secrets masked, `*_set` flags beside them."""
    out = copy.deepcopy(cfg)
    out.pop("webhook_uuid", None)  # shown once, inside webhook_url, which the admin pastes into MoySklad
    for key in SECRET_FIELDS:
        out[f"{key}_set"] = bool(cfg.get(key))
        out[key] = mask_tail(cfg.get(key))
    return out


def _bool(errors: dict, name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        errors[name] = "must be true or false"
    return value


def _choice(errors: dict, name: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        errors[name] = f"must be one of: {', '.join(choices)}"
    return value


def _optional_id(errors: dict, name: str, value: Any) -> Any:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not _ID.fullmatch(value):
        errors[name] = "must be a MoySklad id"
    return value


def _section(errors: dict, name: str, value: Any, rules: dict) -> dict:
    if not isinstance(value, dict):
        errors[name] = "must be an object"
        return {}
    out = {}
    for key, item in value.items():
        field = f"{name}.{key}"
        rule = rules.get(key)
        if rule is None:
            errors[field] = "unknown field"
            continue
        out[key] = rule(errors, field, item)
    return out


_ACTION_RULES = {
    "create_customers": _bool,
    "create_orders": lambda e, n, v: _choice(e, n, _order_mode(v) if isinstance(v, bool) else v, ORDER_MODES),
    "order_state": _optional_id,
    "order_source": _optional_id,
    "organization": _optional_id,
}
def _int_range(lo: int, hi: int):
    def rule(errors: dict, name: str, value: Any) -> Any:
        if isinstance(value, str) and re.fullmatch("[0-9]{1,9}", value.strip()):
            value = int(value.strip())
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            errors[name] = f"must be a whole number from {lo} to {hi}"
        return value
    return rule


def _countries(errors: dict, name: str, value: Any) -> Any:
    """A list of two-letter regions phonenumbers knows; None means the enterprise's default_region."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [part for part in re.split(r"[\s,;]+", value) if part]
    if not isinstance(value, list) or not value or len(value) > 60 or not all(isinstance(v, str) for v in value):
        errors[name] = "must be a list of one or more two-letter country codes such as BY or RU"
        return value
    regions = list(dict.fromkeys(v.strip().upper() for v in value))
    unknown = [r for r in regions if r not in phonenumbers.SUPPORTED_REGIONS]
    if unknown:
        errors[name] = f"unknown country code: {unknown[0]}"
    return regions


_CLICK_RULES = {
    "allowed_countries": _countries,
    "block_premium": _bool,
    "max_per_extension_per_minute": _int_range(1, 120),
    "max_per_enterprise_per_minute": _int_range(1, 1000),
    "max_per_extension_per_hour": _int_range(1, 1000),
    "max_per_enterprise_per_hour": _int_range(1, 20000),
    "max_per_extension_per_day": _int_range(1, 5000),
    "max_per_enterprise_per_day": _int_range(1, 100000),
    "refusals_per_minute": _int_range(1, 1000),
    "cooldown_minutes": _int_range(1, 24 * 60),
}
_MISSED_RULES = {
    "create_task": _bool,
    "assignee": lambda e, n, v: _choice(e, n, v, ASSIGNEE_MODES),
    "fallback_employee": _optional_id,
    "due_minutes": _int_range(1, 7 * 24 * 60),
    "close_on_callback": _bool,
    "only_known_customers": _bool,
}
_NOTIFY_RULES = {
    "call_notify_mode": lambda e, n, v: _choice(e, n, v, NOTIFY_MODES),
    "notify_incoming": _bool,
    "notify_outgoing": _bool,
}


def validate_update(payload: Any) -> dict:
    """Check a (partial) config update; raise ValidationFailed naming each bad field."""
    if not isinstance(payload, dict):
        raise ApiError(400, "body must be a JSON object")
    payload = upgrade_legacy(payload)
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for key, value in payload.items():
        if key not in _KNOWN:
            errors[key] = "unknown field"
        elif key in _READ_ONLY:
            continue  # read-only: set by the service's settings (or derived), never by an admin
        elif key == "employee_mapping":
            clean[key] = value
        elif key == "enabled":
            clean[key] = _bool(errors, key, value)
        elif key in SECRET_FIELDS:
            if value is None or value == "" or (isinstance(value, str) and value.startswith(MASK)):
                continue  # masked or omitted: keep the stored value
            if not isinstance(value, str) or not _TOKEN.fullmatch(value.strip()):
                errors[key] = "must be the key as MoySklad shows it (printable, no spaces)"
            clean[key] = value.strip() if isinstance(value, str) else value
        elif key == "timezone":
            if not isinstance(value, str) or not _valid_timezone(value):
                errors[key] = "unknown time zone (use a name such as Europe/Minsk)"
            clean[key] = value
        elif key == "default_region":
            region = value.upper() if isinstance(value, str) else value
            if not isinstance(region, str) or region not in phonenumbers.SUPPORTED_REGIONS:
                errors[key] = "must be a two-letter country code such as BY or RU"
            clean[key] = region
        elif key == "signature_mode":
            clean[key] = _choice(errors, key, value, SIGNATURE_MODES)
        elif key == "notifications":
            clean[key] = _section(errors, key, value, _NOTIFY_RULES)
        elif key == "click_to_call":
            clean[key] = _section(errors, key, value, _CLICK_RULES)
        elif key == "missed_calls":
            clean[key] = _section(errors, key, value, _MISSED_RULES)
        else:
            clean[key] = _section(errors, key, value, _ACTION_RULES)
    if errors:
        raise ValidationFailed(errors)
    return clean


def _valid_timezone(name: str) -> bool:
    if name not in available_timezones():
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _stored_form(cfg: dict) -> dict:
    """What is written to the database: the new key names, no derived fields."""
    return {k: v for k, v in cfg.items() if k != "webhook_url"}


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
        with rawsql.transaction(write=False) as tx:  # a read of its own: leaves the session alone
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
        self._record(number, by, changed_fields(before, cfg))
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
