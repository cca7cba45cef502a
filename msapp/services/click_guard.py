"""The toll-fraud guard of click-to-call (DESIGN.md 5.2): the webhook URL alone must not be enough to
make the PBX dial anywhere.

A click passes only when
- the destination is a valid number of an allowed country and, with `block_premium`, of no premium-rate,
  shared-cost, personal-number or UAN type (checked first: it costs nothing);
- `srcNumber` is the extension of an employee of the enterprise's MoySklad account, and a `uid`, when
  sent, is that employee's login (from the stored employee directory, never a request per click);
- the enterprise and the extension are under their per-minute limits, counted in `ms_clicks` under the
  enterprise's row lock, so the limits hold for every process sharing the database.
A refused click raises `Refused` (403, 429 for a limit, 503 when no employee list can be had).
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Optional

import phonenumbers
from phonenumbers import PhoneNumberType
from sqlalchemy import func, insert, select

from .. import metrics
from ..clock import utcnow
from ..errors import ApiError
from ..extensions import db
from ..models import Click
from .directory import Listing

BLOCKED_TYPES = {
    PhoneNumberType.PREMIUM_RATE: "premium-rate",
    PhoneNumberType.SHARED_COST: "shared-cost",
    PhoneNumberType.PERSONAL_NUMBER: "personal-number",
    PhoneNumberType.UAN: "UAN",
}
WINDOW = timedelta(minutes=1)
# Russian wording for the journal and the admin's alert, by reason.
REASONS_RU = {
    "invalid_number": "номер не существует",
    "country": "страна номера не разрешена",
    "number_type": "платный или специальный номер",
    "unknown_extension": "добавочный не принадлежит сотруднику МойСклад",
    "uid_mismatch": "логин не совпадает с сотрудником добавочного",
    "rate_extension": "превышен лимит звонков с добавочного в минуту",
    "rate_enterprise": "превышен лимит звонков предприятия в минуту",
    "employees_unavailable": "список сотрудников МойСклад недоступен",
}
_INSERT_CLICK = insert(Click.__table__)


class Refused(ApiError):
    """A click the guard turned down: `reason` is a short code for metrics, the journal and the alert."""

    def __init__(self, status: int, reason: str, error: str, field: Optional[str] = None,
                 retry_after: Optional[int] = None):
        super().__init__(status, error, field)
        self.reason = reason
        self.retry_after = retry_after


def allowed_countries(cfg: dict) -> list:
    """The regions a click may dial: the configured list, else the enterprise's default region."""
    configured = (cfg.get("click_to_call") or {}).get("allowed_countries")
    return list(configured) if configured else [(cfg.get("default_region") or "BY").upper()]


def check_destination(e164: str, cfg: dict) -> None:
    """Refuse invalid numbers, other countries, and (with block_premium) costly number types."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise Refused(403, "invalid_number", "destNumber is not a valid phone number", "destNumber")
    region = phonenumbers.region_code_for_number(number)
    if region not in allowed_countries(cfg):
        where = region if region and region != "001" else "a non-geographic (e.g. satellite) network"
        raise Refused(403, "country", f"calls to {where} are not allowed for this enterprise", "destNumber")
    kind = phonenumbers.number_type(number)
    if (cfg.get("click_to_call") or {}).get("block_premium", True) and kind in BLOCKED_TYPES:
        raise Refused(403, "number_type", f"calls to {BLOCKED_TYPES[kind]} numbers are blocked", "destNumber")


def check_caller(listing: Listing, src: str, uid: str) -> Optional[dict]:
    """The employee behind the extension; refuse an unknown extension or another employee's login.
    Returns None when a login was sent but the stored list does not know that employee's login yet."""
    matches = listing.with_extension(src)
    if not matches:
        raise Refused(403, "unknown_extension", "srcNumber is not the extension of an employee", "srcNumber")
    if not uid:
        return matches[0]
    known = [m for m in matches if m.get("uid")]
    if not known:
        return None
    for employee in known:
        if employee["uid"].casefold() == uid.casefold():
            return employee
    raise Refused(403, "uid_mismatch", "uid is not the login of the employee with this extension", "uid")


def check_rate(number: str, src: str, cfg: dict, now: datetime) -> None:
    """Per-minute limits of queued clicks. The caller holds the enterprise's row lock."""
    limits = cfg.get("click_to_call") or {}
    clicks = Click.__table__
    since = now - WINDOW
    row = db.session.execute(select(
        func.count(), func.min(clicks.c.created_at),
        func.count().filter(clicks.c.extension == src),
        func.min(clicks.c.created_at).filter(clicks.c.extension == src),
    ).where(clicks.c.enterprise_number == number, clicks.c.outcome == "queued",
            clicks.c.created_at > since)).one()
    per_ext = int(limits.get("max_per_extension_per_minute") or 10)
    per_ent = int(limits.get("max_per_enterprise_per_minute") or 60)
    if row[2] >= per_ext:
        raise Refused(429, "rate_extension", f"at most {per_ext} calls a minute from one extension", "srcNumber",
                      _retry_after(row[3], now))
    if row[0] >= per_ent:
        raise Refused(429, "rate_enterprise", f"at most {per_ent} calls a minute for this enterprise", None,
                      _retry_after(row[1], now))


def _retry_after(oldest: Optional[datetime], now: datetime) -> int:
    if oldest is None:
        return 1
    return max(1, math.ceil((oldest + WINDOW - now).total_seconds()))


def record(number: str, src: Optional[str], dest: Optional[str], uid: Optional[str], outcome: str,
           reason: Optional[str] = None, now: Optional[datetime] = None) -> None:
    """One row of `ms_clicks` in the caller's transaction, and the metrics."""
    db.session.execute(_INSERT_CLICK, dict(enterprise_number=number, created_at=now or utcnow(), extension=src,
                                           destination=dest, uid=uid or None, outcome=outcome, reason=reason))
    metrics.CLICKS.labels(outcome).inc()
    if reason:
        metrics.CLICK_REFUSALS.labels(reason).inc()


ALERT_AFTER = 3  # refusals within ALERT_WINDOW that raise the alert on the enterprise page
ALERT_WINDOW = timedelta(hours=1)


def suspicious(number: str, now: Optional[datetime] = None) -> Optional[dict]:
    """The alert for the enterprise page: refusals in the last hour (not counting MoySklad being down)
    once there are ALERT_AFTER of them, with the last ten."""
    clicks = Click.__table__
    cond = (clicks.c.enterprise_number == number, clicks.c.outcome == "refused",
            clicks.c.reason != "employees_unavailable", clicks.c.created_at >= (now or utcnow()) - ALERT_WINDOW)
    count = db.session.scalar(select(func.count()).select_from(clicks).where(*cond)) or 0
    if count < ALERT_AFTER:
        return None
    rows = db.session.execute(select(clicks.c.created_at, clicks.c.extension, clicks.c.destination, clicks.c.uid,
                                     clicks.c.reason).where(*cond).order_by(clicks.c.id.desc()).limit(10)).all()
    return {"count": count, "last": [{**r._mapping, "reason_ru": REASONS_RU.get(r.reason, r.reason)} for r in rows]}


@lru_cache(maxsize=1)
def country_choices() -> tuple:
    """(code, Russian name) of every region phonenumbers knows, sorted by name, for the admin's select."""
    from phonenumbers.geodata.locale import LOCALE_DATA

    out = []
    for code in phonenumbers.SUPPORTED_REGIONS:
        names = LOCALE_DATA.get(code) or {}
        name = names.get("ru") or names.get("aa") or code
        while name.startswith("*"):  # "*be": the same text as another language's entry
            name = names.get(name[1:]) or code
        out.append((code, name))
    return tuple(sorted(out, key=lambda item: item[1]))
