"""The toll-fraud guard of click-to-call (docs/design.md 5.2): the webhook URL alone must not be enough
to make the PBX dial anywhere.

A click passes only when
- its client address is not cooling down after too many refused clicks (`refusals_per_minute` from one
  address within a minute: 429 to that address for `cooldown_minutes`, other addresses unaffected);
- the destination is a valid number of an allowed country and, with `block_premium`, of no premium-rate,
  shared-cost, personal-number or UAN type (checked first: it costs nothing);
- `srcNumber` is the extension of an employee of the enterprise's MoySklad account, and `uid` is that
  employee's login; `uid` may be absent only while no login is known (no JSON API token);
- the enterprise and the extension are under their limits per minute, hour and day, counted in
  `ms_clicks` under the enterprise's row lock, so the limits hold for every process sharing the database.
A refused click raises `Refused` (403, 429 for a limit, 503 when no employee list can be had). Every 403
answers the same body: the reason goes to the journal and the admin's alert, never to the caller.
Accepted volume over half a limit raises the alert too, once per window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Optional

import phonenumbers
from phonenumbers import PhoneNumberType
from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from msapp import metrics
from msapp.clock import utcnow
from msapp.db.models import Click, ClickCooldown
from msapp.errors import ApiError
from msapp.extensions import db
from msapp.services.directory import Listing

BLOCKED_TYPES = {
    PhoneNumberType.PREMIUM_RATE: "premium-rate",
    PhoneNumberType.SHARED_COST: "shared-cost",
    PhoneNumberType.PERSONAL_NUMBER: "personal-number",
    PhoneNumberType.UAN: "UAN",
}
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
REFUSED_BODY = "click refused"


@dataclass(frozen=True)
class Limit:
    key: str  # the `click_to_call` config key
    default: int
    window: timedelta
    per_extension: bool
    reason: str
    text: str  # for the 429's error

    def cap(self, cfg: dict) -> int:
        """This limit in the enterprise's config, else its default."""
        return int((cfg.get("click_to_call") or {}).get(self.key) or self.default)


# Defaults no honest office reaches; they bound what a leaked URL can cost in a day.
LIMITS = (
    Limit("max_per_extension_per_minute", 10, MINUTE, True, "rate_extension", "calls a minute from one extension"),
    Limit("max_per_enterprise_per_minute", 60, MINUTE, False, "rate_enterprise", "calls a minute for this enterprise"),
    Limit("max_per_extension_per_hour", 60, HOUR, True, "rate_extension_hour", "calls an hour from one extension"),
    Limit("max_per_enterprise_per_hour", 500, HOUR, False, "rate_enterprise_hour", "calls an hour for this enterprise"),
    Limit("max_per_extension_per_day", 300, DAY, True, "rate_extension_day", "calls a day from one extension"),
    Limit("max_per_enterprise_per_day", 2000, DAY, False, "rate_enterprise_day", "calls a day for this enterprise"),
)
# Refusals that count toward an address's cool-down: the 403s, what a guesser collects. A limit's 429 does
# not: a busy office behind MoySklad's servers must never cool MoySklad's own address down.
GUESS_REASONS = ("invalid_number", "country", "number_type", "unknown_extension", "uid_mismatch", "uid_missing")
REFUSALS_PER_MINUTE = 20  # such refusals from one address within a minute that start its cool-down
COOLDOWN_MINUTES = 10
# Russian wording for the journal and the admin's alert, by reason.
REASONS_RU = {
    "invalid_number": "номер не существует",
    "country": "страна номера не разрешена",
    "number_type": "платный или специальный номер",
    "unknown_extension": "добавочный не принадлежит сотруднику МойСклад",
    "uid_mismatch": "логин не совпадает с сотрудником добавочного",
    "uid_missing": "нет логина сотрудника (uid): запрос не от МойСклад",
    "rate_extension": "превышен лимит звонков с добавочного в минуту",
    "rate_enterprise": "превышен лимит звонков предприятия в минуту",
    "rate_extension_hour": "превышен лимит звонков с добавочного в час",
    "rate_enterprise_hour": "превышен лимит звонков предприятия в час",
    "rate_extension_day": "превышен лимит звонков с добавочного в сутки",
    "rate_enterprise_day": "превышен лимит звонков предприятия в сутки",
    "cooldown": "слишком много отклонённых запросов с этого адреса",
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

    def body(self) -> dict:
        """What the caller sees: one uniform answer for every 403, so refusals tell a guesser nothing."""
        if self.status == 403:
            return {"error": REFUSED_BODY}
        return super().body()


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
    """The employee behind the extension; refuse an unknown extension, a missing login once logins are
    known (MoySklad always sends one), or another employee's login. Returns None when the stored list
    cannot tell yet (no login stored for this extension's employees)."""
    matches = listing.with_extension(src)
    if not matches:
        raise Refused(403, "unknown_extension", "srcNumber is not the extension of an employee", "srcNumber")
    known = [m for m in matches if m.get("uid")]
    if not uid:
        if listing.logins_known and known:
            raise Refused(403, "uid_missing", "uid (the employee's login) is required", "uid")
        return None
    if not known:
        return None
    for employee in known:
        if employee["uid"].casefold() == uid.casefold():
            return employee
    raise Refused(403, "uid_mismatch", "uid is not the login of the employee with this extension", "uid")


def check_rate(number: str, src: str, cfg: dict, now: datetime) -> dict:
    """Refuse a click over any limit of LIMITS (429 with Retry-After); else the queued clicks counted
    per limit key, this one not included. The caller holds the enterprise's row lock."""
    clicks = Click.__table__
    columns = []
    for limit in LIMITS:
        cond = clicks.c.created_at > now - limit.window
        if limit.per_extension:
            cond = cond & (clicks.c.extension == src)
        columns += [func.count().filter(cond), func.min(clicks.c.created_at).filter(cond)]
    row = db.session.execute(select(*columns).where(
        clicks.c.enterprise_number == number, clicks.c.outcome == "queued",
        clicks.c.created_at > now - DAY)).one()
    counts = {}
    for i, limit in enumerate(LIMITS):
        count, oldest = int(row[2 * i] or 0), row[2 * i + 1]
        cap = limit.cap(cfg)
        if count >= cap:
            raise Refused(429, limit.reason, f"at most {cap} {limit.text}",
                          "srcNumber" if limit.per_extension else None, _retry_after(oldest, now, limit.window))
        counts[limit.key] = count
    return counts


def _retry_after(oldest: Optional[datetime], now: datetime, window: timedelta) -> int:
    if oldest is None:
        return 1
    return max(1, math.ceil((oldest + window - now).total_seconds()))


def volume_alerts(number: str, src: str, cfg: dict, counts: dict, now: datetime) -> list:
    """Limits this accepted click took over half their cap, with no alert yet in their window: each is
    recorded (an `alert` row of ms_clicks) and returned as (limit, count, cap) for the journal."""
    raised = []
    for limit in LIMITS:
        if limit.window == MINUTE:
            continue  # a minute's burst is the minute limit's business; hours and days show a leak
        cap = limit.cap(cfg)
        count = counts.get(limit.key, 0) + 1
        if count * 2 <= cap:
            continue
        reason = "volume_" + limit.reason[len("rate_"):]
        clicks = Click.__table__
        cond = [clicks.c.enterprise_number == number, clicks.c.outcome == "alert", clicks.c.reason == reason,
                clicks.c.created_at > now - limit.window]
        if limit.per_extension:
            cond.append(clicks.c.extension == src)
        if db.session.execute(select(clicks.c.id).where(*cond).limit(1)).first() is not None:
            continue
        record(number, src if limit.per_extension else None, None, None, "alert", reason, now=now)
        raised.append((limit, count, cap))
    return raised


def cooling_down(number: str, address: str, now: datetime) -> None:
    """Refuse (429) every click from an address in its cool-down for this enterprise."""
    until = db.session.scalar(select(ClickCooldown.until).where(ClickCooldown.enterprise_number == number,
                                                                 ClickCooldown.address == address))
    if until is not None and until > now:
        metrics.CLICK_REFUSALS.labels("cooldown").inc()
        raise Refused(429, "cooldown", "too many refused clicks from this address; try again later", None,
                      max(1, math.ceil((until - now).total_seconds())))


def start_cooldown(number: str, address: str, cfg: dict, now: datetime) -> Optional[int]:
    """After a refusal: when the address has now sent more than `refusals_per_minute` refused clicks
    (GUESS_REASONS) within a minute, it cools down for `cooldown_minutes`. Returns the refusals counted
    when it starts, else None."""
    limits = cfg.get("click_to_call") or {}
    allowed = int(limits.get("refusals_per_minute") or REFUSALS_PER_MINUTE)
    clicks = Click.__table__
    refused = db.session.scalar(select(func.count()).select_from(clicks).where(
        clicks.c.enterprise_number == number, clicks.c.created_at > now - MINUTE, clicks.c.outcome == "refused",
        clicks.c.client_address == address, clicks.c.reason.in_(GUESS_REASONS))) or 0
    if refused <= allowed:
        return None
    until = now + timedelta(minutes=int(limits.get("cooldown_minutes") or COOLDOWN_MINUTES))
    # an upsert: two processes refusing the same address at once both start (or prolong) one cool-down
    ins = (pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert)(ClickCooldown.__table__)
    db.session.execute(ins.values(enterprise_number=number, address=address, started_at=now, until=until)
                       .on_conflict_do_update(index_elements=["enterprise_number", "address"],
                                              set_={"started_at": now, "until": until}))
    record(number, None, None, None, "alert", "cooldown", now=now, address=address)
    return refused


def record(number: str, src: Optional[str], dest: Optional[str], uid: Optional[str], outcome: str,
           reason: Optional[str] = None, now: Optional[datetime] = None, address: Optional[str] = None) -> None:
    """One row of `ms_clicks` in the caller's transaction, and the metrics."""
    db.session.execute(_INSERT_CLICK, dict(enterprise_number=number, created_at=now or utcnow(), extension=src,
                                           destination=dest, uid=uid or None, outcome=outcome, reason=reason,
                                           client_address=address))
    metrics.CLICKS.labels(outcome).inc()
    if reason and outcome == "refused":
        metrics.CLICK_REFUSALS.labels(reason).inc()


ALERT_AFTER = 3  # refusals within ALERT_WINDOW that raise the alert on the enterprise page
ALERT_WINDOW = timedelta(hours=1)
VOLUME_RU = {
    "volume_extension_hour": "больше половины лимита звонков с добавочного за час",
    "volume_enterprise_hour": "больше половины лимита звонков предприятия за час",
    "volume_extension_day": "больше половины лимита звонков с добавочного за сутки",
    "volume_enterprise_day": "больше половины лимита звонков предприятия за сутки",
    "cooldown": "адрес отправил слишком много отклонённых запросов и временно заблокирован",
}


def suspicious(number: str, now: Optional[datetime] = None) -> Optional[dict]:
    """The alert for the enterprise page: refusals in the last hour (not counting MoySklad being down)
    once there are ALERT_AFTER of them, with the last ten; and volume or cool-down alerts of the last day."""
    now = now or utcnow()
    clicks = Click.__table__
    cond = (clicks.c.enterprise_number == number, clicks.c.outcome == "refused",
            clicks.c.reason != "employees_unavailable", clicks.c.created_at >= now - ALERT_WINDOW)
    count = db.session.scalar(select(func.count()).select_from(clicks).where(*cond)) or 0
    alerts = db.session.execute(select(clicks.c.created_at, clicks.c.extension, clicks.c.reason,
                                       clicks.c.client_address).where(
        clicks.c.enterprise_number == number, clicks.c.outcome == "alert", clicks.c.created_at >= now - DAY)
        .order_by(clicks.c.id.desc()).limit(10)).all()
    if count < ALERT_AFTER and not alerts:
        return None
    rows = db.session.execute(select(clicks.c.created_at, clicks.c.extension, clicks.c.destination, clicks.c.uid,
                                     clicks.c.reason).where(*cond).order_by(clicks.c.id.desc()).limit(10)).all() \
        if count else []
    return {"count": count,
            "last": [{**r._mapping, "reason_ru": REASONS_RU.get(r.reason, r.reason)} for r in rows],
            "alerts": [{**a._mapping, "reason_ru": VOLUME_RU.get(a.reason, a.reason)} for a in alerts]}


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
