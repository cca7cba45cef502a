"""Admin authentication: a session cookie after logging in with the admin token, or a Bearer token.

The session keeps an HMAC of the token keyed with the app's secret key (nothing a leaked cookie lets
anyone guess the token from), a random session id for the config history, and the login time: changing
MS_ADMIN_TOKEN or MS_SECRET_KEY logs every browser out at once, and a login lasts MS_ADMIN_SESSION_HOURS
at most (the cookie is `Secure` whenever MS_PUBLIC_URL is https). Wrong tokens, by form, Bearer or
/metrics, are counted per client address (throttle.py). CSRF (Flask-WTF) guards every state-changing
request made with the session cookie; Bearer requests carry no cookie and need none.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from typing import Optional

from flask import current_app, request, session
from flask_wtf.csrf import CSRFProtect

from msapp.errors import ApiError
from msapp.extensions import db
from msapp.services import exchange_log
from msapp.state import ms
from msapp.web.admin.throttle import LoginThrottle
from msapp.web.security import bearer_token, client_of, secrets_equal

log = logging.getLogger("msapp.admin")

csrf = CSRFProtect()
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _fingerprint(token: str) -> str:
    key = current_app.config["SECRET_KEY"]
    key = key.encode() if isinstance(key, str) else key
    return hmac.new(key, b"ms-admin-session:" + token.encode(), hashlib.sha256).hexdigest()


class LockedOut(ApiError):
    """Too many wrong tokens from this address: 429 with Retry-After."""

    def __init__(self, retry_after: int):
        super().__init__(429, f"too many wrong admin tokens from this address; try again in {retry_after} s")
        self.retry_after = retry_after


def throttle() -> LoginThrottle:
    return current_app.extensions.setdefault("ms_admin_throttle", LoginThrottle())


def _address() -> str:
    return client_of(request)


def _check(token: Optional[str], via: str) -> bool:
    """Compare a presented token; count and journal a wrong one. Raises LockedOut while locked out."""
    address = _address()
    wait = throttle().retry_after(address)
    if wait is None and secrets_equal(token, ms().settings.admin_token):
        return True
    if wait is None:
        wait = throttle().failed(address)
        if wait is None:
            _journal(address, via, 401, "wrong admin token")
            return False
    _journal(address, via, 429, f"admin login refused for {wait} s after repeated wrong tokens")
    raise LockedOut(wait)


def _journal(address: str, via: str, status: int, message: str) -> None:
    log.warning("admin %s from %s: %s", via, address, message)
    try:
        db.session.rollback()
        exchange_log.add(None, "admin.login", {"address": address, "via": via, "path": request.path},
                         {"status": status}, message)
        db.session.commit()
    except Exception:  # noqa: BLE001 - the journal must never open the door or break the refusal
        db.session.rollback()


def login(token: str) -> bool:
    if not _check(token, "form"):
        return False
    session.clear()
    session["admin"] = _fingerprint(ms().settings.admin_token)
    session["sid"] = secrets.token_hex(6)
    session["at"] = int(time.time())
    session.permanent = True  # the cookie expires with the login (PERMANENT_SESSION_LIFETIME)
    return True


def logout() -> None:
    session.clear()


def _session_valid() -> bool:
    if not secrets_equal(session.get("admin"), _fingerprint(ms().settings.admin_token)):
        return False
    at = session.get("at")
    age = time.time() - at if isinstance(at, (int, float)) else None
    return age is not None and -60 <= age <= ms().settings.admin_session_hours * 3600


def method() -> Optional[str]:
    """"bearer", "session", or None when the request is not authenticated."""
    token = bearer_token(request)
    if token is not None:
        return "bearer" if _check(token, "bearer") else None
    if _session_valid():
        return "session"
    if session.get("admin"):
        session.clear()  # expired or from an old token: drop it
    return None


def who() -> str:
    """Who is changing things, for the config history: the browser session's random id, or "api"."""
    sid = session.get("sid")
    if bearer_token(request) is None and isinstance(sid, str):
        return f"admin session {sid}"
    return "api"


def protect() -> Optional[str]:
    """Authenticate; run the CSRF check for cookie-authenticated state changes. Returns the method."""
    how = method()
    if how == "session" and request.method not in SAFE_METHODS:
        csrf.protect()
    return how
