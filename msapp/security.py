"""Who is asking: the loopback rule of DESIGN.md 5.1 and constant-time secret checks."""
from __future__ import annotations

import hmac
import ipaddress
from typing import Optional

from flask import Request

PROXY_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded", "X-Forwarded-Host", "X-Forwarded-Proto")


def secrets_equal(given: Optional[str], expected: Optional[str]) -> bool:
    """Constant-time comparison; an empty expected secret never matches."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def peer_is_loopback(request: Request) -> bool:
    """True when the TCP peer (never a header) is a loopback address."""
    addr = (request.environ.get("REMOTE_ADDR") or "").strip()
    if addr.startswith("::ffff:"):
        addr = addr[7:]
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def is_internal(request: Request, internal_token: Optional[str]) -> bool:
    """Loopback peer, no proxy header, and the internal token when one is configured."""
    if not peer_is_loopback(request):
        return False
    if any(h in request.headers for h in PROXY_HEADERS):
        return False
    if internal_token:
        return secrets_equal(request.headers.get("X-Internal-Token"), internal_token)
    return True


def bearer_token(request: Request) -> Optional[str]:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
