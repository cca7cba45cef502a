"""Click-to-call (docs/design.md 5.2, 5.3): MoySklad's webhook becomes one durable originate job; the
worker asks the PBX to ring the extension and dial the number.

The signature recipe of `Lognex-Content-MD5` is undocumented (docs/moysklad.md 1.9): every candidate
recipe public integrations use is accepted; `signature_mode` decides whether a mismatch is ignored,
logged or rejected. Only validated digits and E.164 numbers ever reach the PBX, as URL query values.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import timedelta
from typing import Any, Optional

from sqlalchemy import select

from msapp.clock import utcnow
from msapp.db.models import Enterprise, Job
from msapp.errors import ApiError, ValidationFailed
from msapp.extensions import db
from msapp.moysklad.formats import is_extension, to_e164
from msapp.moysklad.http import USER_AGENT
from msapp.moysklad.transport import NetworkError, Transport
from msapp.moysklad.transport import default as default_transport
from msapp.queue import JobContext, Permanent
from msapp.redact import redact_url
from msapp.services import click_guard as guard
from msapp.services import exchange_log
from msapp.services.config_schema import webhook_hash
from msapp.services.directory import RECHECK_SECONDS, DirectoryUnavailable

log = logging.getLogger("msapp.click_to_call")
KIND = "originate"
REPEAT_WINDOW = timedelta(seconds=5)
FIELDS = ("srcNumber", "destNumber", "uid")


def signature_candidates(key: str, body: dict, raw: bytes) -> list[str]:
    """MD5 (upper hex) of each recipe third-party integrations use: key + values in several orders."""
    values = [str(body.get(name, "")) for name in FIELDS]
    in_order = [str(v) for v in body.values()]
    recipes = [
        key + "".join(values),
        key + "".join(sorted(str(v) for v in body.values())),
        key + "".join(in_order),
        key + raw.decode("utf-8", "replace"),
        "".join(values) + key,
    ]
    return [hashlib.md5(r.encode("utf-8")).hexdigest().upper() for r in recipes]  # noqa: S324 - MoySklad's choice


def check_signature(key: str, header: Optional[str], body: dict, raw: bytes) -> bool:
    if not header or not key:
        return False
    given = header.strip().upper().encode()
    return any(hmac.compare_digest(given, c.encode()) for c in signature_candidates(key, body, raw))


def parse_click(body: Any, region: str) -> tuple[str, str, str]:
    """(extension, E.164 number, uid) from MoySklad's body; 400 naming the field otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object or a form")
    errors = {}
    src = body.get("srcNumber")
    if not is_extension(src if isinstance(src, str) else None):
        errors["srcNumber"] = "must be an extension (digits only)"
    dest = to_e164(body.get("destNumber") if isinstance(body.get("destNumber"), str) else None, region)
    if dest is None:
        errors["destNumber"] = "must be a phone number"
    uid = body.get("uid")
    if uid is not None and (not isinstance(uid, str) or len(uid) > 255):
        errors["uid"] = "must be a MoySklad login"
    if errors:
        raise ValidationFailed(errors)
    return src, dest, uid or ""


def accept_click(queue, directory, ent: Enterprise, cfg: dict, body: Any, raw: bytes,
                 signature: Optional[str], address: str, webhook_uuid: str) -> dict:
    """Validate, check the signature and the toll-fraud guard, and store one originate job (one per click
    within 5 s). A refusal is journaled, counted and raised as `Refused`."""
    now = utcnow()
    guard.cooling_down(ent.number, address, now)
    db.session.commit()
    src, dest, uid = parse_click(body, cfg.get("default_region") or "BY")
    mode = cfg.get("signature_mode") or "log"
    signed = None if mode == "off" else check_signature(cfg.get("integration_code") or "", signature, body, raw)
    request_log = {"srcNumber": src, "destNumber": dest, "uid": uid, "signature": signed, "client": address}
    if mode == "enforce" and not signed:
        exchange_log.add(ent.number, "webhook.click", request_log, {"status": 401}, "signature mismatch")
        db.session.commit()
        raise ApiError(401, "signature (Lognex-Content-MD5) does not match")
    try:
        guard.check_destination(dest, cfg)
        employee = _employee(directory, ent.number, cfg, src, uid)
        # Lock the enterprise row: the repeat rule and the limits hold across requests and processes.
        db.session.execute(select(Enterprise.number).where(Enterprise.number == ent.number).with_for_update())
        now = utcnow()
        key = f"originate:{ent.number}:{src}:{dest}"
        recent = db.session.execute(select(Job.id).where(Job.key == key, Job.kind == KIND,
                                                         Job.created_at > now - REPEAT_WINDOW)).first()
        if recent is not None:
            guard.record(ent.number, src, dest, uid, "repeat", now=now, address=address)
            exchange_log.add(ent.number, "webhook.click", request_log, {"repeat_of_job": recent[0]})
            db.session.commit()
            return {"success": True}
        counts = guard.check_rate(ent.number, src, cfg, now)
    except guard.Refused as refusal:
        _refuse(directory, ent.number, cfg, request_log, refusal)
        raise
    queue.enqueue(KIND, key, {"src": src, "dest": dest, "uid": uid, "webhook": webhook_hash(webhook_uuid)},
                  enterprise_number=ent.number, max_attempts=4)
    guard.record(ent.number, src, dest, uid, "queued", now=now, address=address)
    for limit, count, cap in guard.volume_alerts(ent.number, src, cfg, counts, now):
        exchange_log.add(ent.number, "webhook.alert", {"limit": limit.key, "extension": src, "count": count,
                                                         "cap": cap}, {"status": "alert"},
                         f"alert: {count} of {cap} {limit.text} accepted")
        log.warning("click-to-call of %s: %s of %s %s accepted", ent.number, count, cap, limit.text)
    note = None if signed is not False else "signature mismatch (logged, not enforced)"
    if employee is None:
        note = "; ".join(filter(None, [note, "uid not verified: no JSON API token"]))
    exchange_log.add(ent.number, "webhook.click", request_log, {"status": "queued"}, note)
    db.session.commit()
    queue.notify()
    return {"success": True}


def _employee(directory, number: str, cfg: dict, src: str, uid: str) -> Optional[dict]:
    """The employee behind the click from the stored directory (one bounded fetch when it is missing, or
    when it cannot yet tell a sent login apart). None: the login cannot be checked (no JSON API token)."""
    try:
        listing = directory.get(number, cfg)
        employee = guard.check_caller(listing, src, uid)
        if employee is None and cfg.get("api_token"):
            if listing.age() < RECHECK_SECONDS:
                raise DirectoryUnavailable("employee logins are not known yet")
            employee = guard.check_caller(directory.fetch_bounded(number, cfg), src, uid)
            if employee is None:
                raise DirectoryUnavailable("employee logins are not known")
        return employee
    except DirectoryUnavailable as exc:
        raise guard.Refused(503, "employees_unavailable", "cannot check the extension now: MoySklad's employee "
                            "list is unavailable, try again in a minute", "srcNumber", 60) from exc


def _refuse(directory, number: str, cfg: dict, request_log: dict, refusal: guard.Refused) -> None:
    """Journal and count a refused click, and start its address's cool-down when it sent too many;
    commit. Nothing is originated."""
    db.session.rollback()  # drop the row lock and anything half done
    address, now = request_log["client"], utcnow()
    guard.record(number, request_log["srcNumber"], request_log["destNumber"], request_log["uid"], "refused",
                 refusal.reason, now=now, address=address)
    if refusal.reason == "unknown_extension":  # perhaps a new employee: a fresh list, at most once a minute
        directory.request_refresh(number, if_older_than=RECHECK_SECONDS)
    exchange_log.add(number, "webhook.click", request_log,
                     {"status": refusal.status, "reason": refusal.reason, "field": refusal.field},
                     f"refused: {guard.REASONS_RU[refusal.reason]} ({refusal.error})")
    if refusal.reason in guard.GUESS_REASONS:
        refused = guard.start_cooldown(number, address, cfg, now)
        if refused is not None:
            exchange_log.add(number, "webhook.cooldown", {"client": address, "refused_last_minute": refused},
                             {"status": 429}, f"alert: {refused} refused clicks from {address} within a minute; "
                             "its clicks are refused for a while")
            log.warning("click-to-call of %s: %s refused clicks from %s within a minute: cooling down",
                        number, refused, address)
    db.session.commit()
    log.warning("click-to-call of %s refused (%s): %s", number, refusal.reason, refusal.error)


class PbxUnreachable(Exception):
    """The originate request never reached the PBX: tried again, up to the job's attempts."""


class Originate:
    """Job handler: GET MS_ORIGINATE_URL?code=<ext>&phone=<E.164>&clientId=<enterprise secret>.

    A click dials at most once (docs/design.md 5.3): only an error proving the request never reached the
    PBX (connection refused, DNS, connect timeout) is retried; once the request may have been sent, the
    outcome is journaled (unknown, or the PBX's answer) and never repeated. Right before dialling, the
    click must still be wanted: the integration enabled, the clicked webhook still the current one, the
    click younger than MS_CLICK_MAX_AGE.
    """

    def __init__(self, originate_url: str, configs, max_age: float = 30.0, timeout: tuple = (3.05, 10.0),
                 transport: Optional[Transport] = None):
        self.url = originate_url
        self.configs = configs
        self.max_age = max_age
        self.timeout = timeout
        self.transport = transport or default_transport()

    def __call__(self, job: JobContext) -> None:
        src, dest = job.payload.get("src"), job.payload.get("dest")
        if not is_extension(src) or to_e164(dest, "BY") != dest:
            raise Permanent("refusing to originate unvalidated numbers")
        ent = db.session.get(Enterprise, job.enterprise_number)
        secret = ent.secret if ent is not None else None
        cfg = self.configs.of(ent) if ent is not None else {}
        db.session.commit()
        logged = {"url": redact_url(self.url), "code": src, "phone": dest, "clientId": "••••"}
        stale = self._stale(job, cfg)
        if stale:
            _journal(job, logged, None, f"not dialled: {stale}")
            raise Permanent(f"click dropped: {stale}")
        try:  # again at dial time: the admin may have narrowed the destinations since the click
            guard.check_destination(dest, cfg)
        except guard.Refused as refusal:
            raise Permanent(f"destination no longer allowed: {refusal.error}") from None
        if not secret:
            _journal(job, logged, None,
                     "the enterprise has no secret (clientId): set it with ./ms.sh enterprise set-secret")
            raise Permanent("enterprise secret is not set")
        params = {"code": src, "phone": dest, "clientId": secret}
        try:
            resp = self.transport.send("GET", self.url, {"User-Agent": USER_AGENT}, None, self.timeout, params)
        except NetworkError as exc:
            if not exc.sent:  # nothing reached the PBX: safe to try again
                _journal(job, logged, None, f"PBX not reached ({exc.kind}); will try again")
                raise PbxUnreachable(f"PBX not reached: {exc.kind}") from None
            _journal(job, logged, None,
                     f"outcome unknown ({exc.kind}): the PBX may have started the call; not repeated")
            raise Permanent(f"originate outcome unknown ({exc.kind}); not repeated") from None
        body = resp.content[:500].decode("utf-8", "replace")
        if resp.status_code >= 300:
            _journal(job, logged, {"status": resp.status_code, "body": body},
                     f"PBX answered {resp.status_code}; not repeated")
            raise Permanent(f"PBX originate answered {resp.status_code}")
        _journal(job, logged, {"status": resp.status_code, "body": body})

    def _stale(self, job: JobContext, cfg: dict) -> Optional[str]:
        """Why the click must not be dialled any more, or None."""
        if not cfg.get("enabled"):
            return "the integration was turned off"
        current = cfg.get("webhook_uuid")
        if not current or not hmac.compare_digest(webhook_hash(current), str(job.payload.get("webhook") or "")):
            return "the webhook address was changed since the click"
        age = (utcnow() - job.created_at).total_seconds() if job.created_at else None
        if age is None or age > self.max_age:
            return f"the click is older than {self.max_age:g} s"
        return None


def _journal(job: JobContext, request: dict, response: Optional[dict], error: Optional[str] = None) -> None:
    """One journal row, written with the job's outcome (a failure too)."""
    exchange_log.add(job.enterprise_number, "originate", request, response, error, work=job.work)
