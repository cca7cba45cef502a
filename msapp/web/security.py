"""Who is asking: the loopback rule of the internal face (docs/design.md 5.1), the client address behind
trusted proxies, and constant-time secret checks."""
from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
from typing import Optional

from flask import Request, current_app

log = logging.getLogger("msapp.security")

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


# Set by server.make_server: this server hands proxy headers to the app. A waitress started any other way
# (`waitress-serve wsgi:app`) deletes them first, and a proxied request would then look local.
PROXY_HEADERS_KEPT = "ms.proxy_headers_kept"


def headers_hidden(environ: dict) -> bool:
    """True when the server may have deleted proxy headers before the app saw them."""
    return "waitress.client_disconnected" in environ and PROXY_HEADERS_KEPT not in environ


def is_internal(request: Request, internal_token: Optional[str]) -> bool:
    """Loopback peer, no proxy header, and the internal token when one is configured. Under a server that
    hides proxy headers, a loopback peer proves nothing: only the internal token admits."""
    if not peer_is_loopback(request):
        return False
    environ = request.environ
    if any(name in environ for name in _PROXY_ENVIRON):
        return False
    if internal_token:
        return secrets_equal(request.headers.get("X-Internal-Token"), internal_token)
    return not headers_hidden(environ)


def bearer_token(request: Request) -> Optional[str]:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _ip(text: str):
    text = text.strip()
    if text.startswith("::ffff:"):
        text = text[7:]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def client_address(environ: dict, trusted: tuple) -> str:
    """The client's address: the TCP peer, unless the peer is a trusted proxy; then the right-most
    X-Forwarded-For entry that is not itself a trusted proxy (entries further left are client-made)."""
    peer = _ip(environ.get("REMOTE_ADDR") or "")
    if peer is None:
        return environ.get("REMOTE_ADDR") or "?"
    if not trusted or not any(peer in net for net in trusted):
        return str(peer)
    hops = [h for h in (environ.get("HTTP_X_FORWARDED_FOR") or "").split(",") if h.strip()]
    for hop in reversed(hops):
        addr = _ip(hop)
        if addr is None:
            break  # garbage from the client side: stop at the last address we can vouch for
        if not any(addr in net for net in trusted):
            return str(addr)
        peer = addr
    return str(peer)


def client_of(request: Request) -> str:
    """The client address of a request (see client_address). A loopback peer that sends X-Forwarded-For
    while MS_TRUSTED_PROXIES is unset is a proxy nobody declared: every client behind it shares one
    address (one guesser locks everyone out). That is logged once and shown on the admin page."""
    state = current_app.extensions["ms"]
    trusted = state.settings.trusted_proxies
    environ = request.environ
    if not trusted and "HTTP_X_FORWARDED_FOR" in environ and peer_is_loopback(request) \
            and not state.untrusted_proxy_seen:
        state.untrusted_proxy_seen = True
        log.warning("a local proxy forwards requests (X-Forwarded-For from %s) but MS_TRUSTED_PROXIES is unset: "
                    "every client behind it counts as one address; set MS_TRUSTED_PROXIES=127.0.0.1 (docs/"
                    "operations.md, Behind a proxy)", environ.get("REMOTE_ADDR"))
    return client_address(environ, trusted)
