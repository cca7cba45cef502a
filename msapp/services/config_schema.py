"""The `ms` config's shape (docs/design.md 4.1): defaults, what older configs called things, validation of
an update field by field, the masked public view, and the names of the fields a change touched. Pure
functions: the store (config.py) reads and writes the database."""
from __future__ import annotations

import copy
import hashlib
import re
from typing import Any, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers

from msapp.errors import ApiError, ValidationFailed
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
