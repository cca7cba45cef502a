"""Who is asking: the loopback rule of DESIGN.md 5.1 and constant-time secret checks."""
from __future__ import annotations

import functools
import hmac
import ipaddress
from typing import Optional

from flask import Request

PROXY_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded", "X-Forwarded-Host", "X-Forwarded-Proto")
# as WSGI names them (asking the header map for a missing header costs an exception, on every internal request)
_PROXY_ENVIRON = tuple("HTTP_" + h.upper().replace("-", "_") for h in PROXY_HEADERS)


def secrets_equal(given: Optional[str], expected: Optional[str]) -> bool:
    """Constant-time comparison; an empty expected secret never matches."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def peer_is_loopback(request: Request) -> bool:
    """True when the TCP peer (never a header) is a loopback address."""
    return _loopback(request.environ.get("REMOTE_ADDR") or "")


@functools.lru_cache(maxsize=256)
def _loopback(addr: str) -> bool:
    addr = addr.strip()
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
    environ = request.environ
    if any(name in environ for name in _PROXY_ENVIRON):
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
