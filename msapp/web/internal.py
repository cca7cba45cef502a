"""Internal face: the PBX side on the same host (loopback only, docs/design.md 5.1).

Handlers validate, store and answer; nothing here waits for MoySklad.
"""
from __future__ import annotations

import uuid

from flask import Blueprint, jsonify, request

from msapp.errors import ApiError
from msapp.services import events, lookups
from msapp.state import ms
from msapp.web.http_utils import json_body
from msapp.web.security import headers_hidden, is_internal

bp = Blueprint("internal", __name__, url_prefix="/internal/ms")


@bp.before_request
def only_local():
    """Loopback TCP peer, no proxy header, and the internal token when one is configured."""
    if not is_internal(request, ms().settings.internal_token):
        if headers_hidden(request.environ):
            raise ApiError(403, "internal routes need a server that shows proxy headers (./ms.sh start or "
                                "`python wsgi.py`) or MS_INTERNAL_TOKEN")
        raise ApiError(403, "internal routes answer only local, unproxied requests")


def _accept(event_type, log_event: str, notify: bool = True, defaults: dict | None = None):
    """Validate and store one event. Returns (status, reason): accepted, disabled or ignored."""
    body = json_body(unread=True)
    number = events.enterprise_number(body)
    for key, value in (defaults or {}).items():
        if body.get(key) in (None, ""):
            body[key] = value
    cfg = ms().configs.read_fast(number)
    if not cfg.get("enabled"):
        return "disabled", None
    ev = events.parse(body, event_type, cfg)
    if ev is None:
        return "ignored", "internal call"
    ev.notify = notify
    events.accept(ev, ms().queue, log_event, body)
    return "accepted", None


def _answer(status: str, reason):
    if status == "accepted":
        return jsonify({"status": "accepted"}), 202
    body = {"status": status}
    if reason:
        body["reason"] = reason
    return jsonify(body), 200


@bp.post("/call-event")
def call_event():
    """One PBX call event (dial, answer, hangup)."""
    return _answer(*_accept(None, "event.call-event"))


@bp.post("/notify-incoming")
def notify_incoming():
    """Show incoming-call cards now: the same as a dial with direction in (unique_id optional)."""
    return _answer(*_accept("dial", "event.notify-incoming",
                            defaults={"direction": "in", "unique_id": f"notify-{uuid.uuid4().hex}"}))


@bp.post("/log-call")
def log_call():
    """A finished call the live flow missed: logged without cards, completed if it already exists."""
    return _answer(*_accept("log", "event.log-call", notify=False))


def _compat(event_type, log_event, notify=True):
    status, _ = _accept(event_type, log_event, notify)
    return jsonify({"status": "disabled" if status == "disabled" else "success"}), 200


@bp.post("/incoming-call")
def compat_incoming():
    """Old contract: = dial; answers {"status": "success"}."""
    return _compat("dial", "event.incoming-call")


@bp.post("/hangup-call")
def compat_hangup():
    """Old contract: = hangup."""
    return _compat("hangup", "event.hangup-call")


@bp.post("/recovery-call")
def compat_recovery():
    """Old contract: = log-call."""
    return _compat("log", "event.recovery-call", notify=False)


def _lookup() -> dict:
    return ms().lookups.customer(request.args.get("enterprise_number"), request.args.get("phone"))


@bp.get("/customer-by-phone")
def customer_by_phone():
    """The counterparty with this phone (or a contact person's), its owner and extension; fast or not found."""
    answer = _lookup()
    answer.pop("company_type", None)
    return jsonify(answer)


@bp.get("/responsible-extension")
def responsible_extension():
    """The extension of the caller's responsible manager (their owner in MoySklad), for routing."""
    owner = _lookup().get("owner") or {}
    return jsonify({"extension": owner.get("extension"), "manager_id": owner.get("id")})


@bp.get("/customer-name")
def customer_name():
    """Old contract: the caller's name or null."""
    answer = _lookup()
    return jsonify({"name": answer.get("name") if answer.get("found") else None})


@bp.get("/customer-profile")
def customer_profile():
    """Old contract: last/first/middle name for a person, enterprise_name for a company."""
    return jsonify(lookups.profile(_lookup()))
