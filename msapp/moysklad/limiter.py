"""Per-enterprise limits shared by all worker threads: requests in flight, and token buckets per API.

A bucket of capacity C refilled at r per second admits at most C + r*W requests in any window W, so
each bucket is sized to stay under MoySklad's own window (Phone API 100 per 5 s; JSON API a budget per
3 s) with some headroom.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class RateLimited(Exception):
    """No slot within the allowed wait; `after` says when one is likely."""

    def __init__(self, after: float):
        super().__init__(f"rate limited locally, next slot in {after:.3f}s")
        self.after = after


class BreakerOpen(RateLimited):
    """MoySklad is unreachable for this enterprise and API (or refuses its key): nothing is sent until the
    breaker's next probe, `after` seconds from now. Waiting is not a failure of the work that waits."""

    def __init__(self, after: float, reason: str = "", api: str = ""):
        super().__init__(after)
        self.reason = reason
        self.api = api
        self.args = (f"MoySklad unavailable ({reason}), next probe in {after:.1f}s",)


class TokenBucket:
    def __init__(self, limit: int, window: float, headroom: float = 0.9):
        self.capacity = max(1.0, round(limit * 0.2))
        self.rate = max(0.1, (limit * headroom - self.capacity) / window)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self, now: float) -> float:
        """Take a token and return 0, or return the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class _Enterprise:
    def __init__(self, phone_limit: int, json_budget: int, max_in_flight: int):
        self.cond = threading.Condition()
        self.in_flight = 0
        self.max_in_flight = max_in_flight
        self.buckets = {"phone": TokenBucket(phone_limit, 5.0), "json": TokenBucket(json_budget, 3.0)}


class Limiter:
    """`with limiter.slot(enterprise, "phone", max_wait=...)` around every MoySklad request."""

    def __init__(self, phone_limit: int = 100, json_budget: int = 15, max_in_flight: int = 5):
        self.phone_limit = phone_limit
        self.json_budget = json_budget
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._enterprises: dict[str, _Enterprise] = {}

    def _get(self, enterprise: str) -> _Enterprise:
        with self._lock:
            ent = self._enterprises.get(enterprise)
            if ent is None:
                ent = _Enterprise(self.phone_limit, self.json_budget, self.max_in_flight)
                self._enterprises[enterprise] = ent
            return ent

    @contextmanager
    def slot(self, enterprise: str, api: str, max_wait: float = 2.0) -> Iterator[None]:
        ent = self._get(enterprise)
        deadline = time.monotonic() + max_wait
        with ent.cond:
            while True:
                now = time.monotonic()
                if ent.in_flight < ent.max_in_flight:
                    wait = ent.buckets[api].take(now)
                    if wait == 0:
                        ent.in_flight += 1
                        break
                else:
                    wait = 0.05
                if now + wait > deadline:
                    raise RateLimited(wait)
                ent.cond.wait(min(wait, deadline - now))
        try:
            yield
        finally:
            with ent.cond:
                ent.in_flight -= 1
                ent.cond.notify()
