"""Wrong admin tokens, counted per client address: first slowed to LIMIT a minute, then refused.

A client that gives LIMIT wrong tokens within WINDOW seconds is locked out (429 with Retry-After) for
a penalty that doubles with each lockout within an hour (1, 2, 4 ... 15 minutes); while locked out even
the right token is refused, so guessing cannot go on in the background. Only that address is locked:
everyone else logs in as usual. The client address is the TCP peer, or, when the peer is one of
MS_TRUSTED_PROXIES, the address that proxy put in X-Forwarded-For (never a header from anyone else).

Counts live in this process's memory (bounded); behind several processes each holds its own, which
still keeps a guesser to a handful of tries a minute against a 256-bit token.
"""
from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from typing import Optional

LIMIT = 10
WINDOW = 60.0
FIRST_PENALTY = 60.0
MAX_PENALTY = 900.0
FORGET_AFTER = 3600.0  # a clean hour wipes an address's record
MAX_ADDRESSES = 10_000


class _Record:
    __slots__ = ("failures", "locked_until", "strikes", "last_seen")

    def __init__(self):
        self.failures: deque = deque()
        self.locked_until = 0.0
        self.strikes = 0
        self.last_seen = 0.0


class LoginThrottle:
    def __init__(self, limit: int = LIMIT, window: float = WINDOW, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> Optional[int]:
        """Seconds this address must wait before trying again, or None when it may try now."""
        now = self.clock()
        with self._lock:
            rec = self._records.get(address)
            if rec is None or rec.locked_until <= now:
                return None
            return max(1, math.ceil(rec.locked_until - now))

    def failed(self, address: str) -> Optional[int]:
        """Record a wrong token; returns the lockout in seconds when this failure started one."""
        now = self.clock()
        with self._lock:
            rec = self._records.get(address)
            if rec is None or now - rec.last_seen > FORGET_AFTER:
                rec = _Record()
            self._records[address] = rec
            self._records.move_to_end(address)
            while len(self._records) > MAX_ADDRESSES:
                self._records.popitem(last=False)
            rec.last_seen = now
            rec.failures.append(now)
            while rec.failures and rec.failures[0] <= now - self.window:
                rec.failures.popleft()
            if len(rec.failures) < self.limit:
                return None
            penalty = min(MAX_PENALTY, FIRST_PENALTY * 2 ** rec.strikes)
            rec.strikes += 1
            rec.failures.clear()
            rec.locked_until = now + penalty
            return int(penalty)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._records.pop(address, None)


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
