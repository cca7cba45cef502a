"""What a handler's failure means to the queue (docs/design.md 7): `Retry` (the outside world failed: try
again, after its wait or the backoff; the job lives until the retry horizon), `Defer` (wait without
spending an attempt: pacing, an open breaker), `Permanent` (dead now); any other exception is a fault of
ours and counts toward `max_attempts`. Backoff is exponential with jitter.
"""
from __future__ import annotations

import random
from typing import Optional

BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0


class Retry(Exception):
    """Try again after `after` seconds, or after the queue's backoff when None (counts as an attempt;
    the job lives until the retry horizon, however many attempts that takes)."""

    def __init__(self, after: Optional[float] = None, reason: str = ""):
        super().__init__(reason or (f"retry after {after:.3f}s" if after is not None else "retry"))
        self.after = None if after is None else max(0.0, float(after))


class Defer(Exception):
    """Run again after `after` seconds without counting an attempt (local pacing, not a failure)."""

    def __init__(self, after: float, reason: str = ""):
        super().__init__(reason or f"deferred {after:.3f}s")
        self.after = max(0.0, float(after))


class Permanent(Exception):
    """The job can never succeed: mark it dead now."""



def backoff(attempts: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2^(attempts-1))."""
    ceiling = min(cap, base * (2 ** max(0, attempts - 1)))
    return random.uniform(ceiling / 2, ceiling)

