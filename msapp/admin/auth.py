"""Admin authentication: a session cookie after logging in with the admin token, or a Bearer token.

The session keeps a fingerprint of the token, so changing MS_ADMIN_TOKEN logs every browser out.
CSRF (Flask-WTF) guards every state-changing request made with the session cookie; Bearer requests
carry no cookie and need none.
"""
from __future__ import annotations

import hashlib
from typing import Optional

from flask import request, session
from flask_wtf.csrf import CSRFProtect

from ..security import bearer_token, secrets_equal
from ..state import ms

csrf = CSRFProtect()
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _fingerprint(token: str) -> str:
    return hashlib.sha256(("ms-admin:" + token).encode()).hexdigest()


def login(token: str) -> bool:
    if not secrets_equal(token, ms().settings.admin_token):
        return False
    session.clear()
    session["admin"] = _fingerprint(ms().settings.admin_token)
    session.permanent = False
    return True


def logout() -> None:
    session.clear()


def method() -> Optional[str]:
    """"bearer", "session", or None when the request is not authenticated."""
    token = bearer_token(request)
    if token is not None:
        return "bearer" if secrets_equal(token, ms().settings.admin_token) else None
    if secrets_equal(session.get("admin"), _fingerprint(ms().settings.admin_token)):
        return "session"
    return None


def protect() -> Optional[str]:
    """Authenticate; run the CSRF check for cookie-authenticated state changes. Returns the method."""
    how = method()
    if how == "session" and request.method not in SAFE_METHODS:
        csrf.protect()
    return how
