"""Wrong admin tokens, counted per client address in the database: first slowed, then refused.

A client that gives LIMIT wrong tokens within WINDOW is locked out (429 with Retry-After) for a penalty
that doubles with each lockout within an hour (1, 2, 4 ... 15 minutes); while locked out even the right
token is refused, so guessing cannot go on in the background. A right token erases nothing: a guesser
who also holds a valid session cannot reset the count. Only that address is locked: everyone else logs
in as usual. The counts live in `ms_auth_failures` and `ms_auth_lockouts`, so every process sharing the
database enforces one limit and a restart forgets nothing. The client address is the TCP peer, or,
when the peer is one of MS_TRUSTED_PROXIES, the address that proxy put in X-Forwarded-For.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from msapp.clock import utcnow
from msapp.db.models import AuthFailure, AuthLockout
from msapp.db.reader import read_only
from msapp.extensions import db

LIMIT = 10
WINDOW = timedelta(seconds=60)
FIRST_PENALTY = 60
MAX_PENALTY = 900
FORGET_AFTER = timedelta(hours=1)  # a clean hour: the next lockout starts again at FIRST_PENALTY


class LoginThrottle:
    """The admin door's counts. Each method runs in the caller's session and commits."""

    def __init__(self, limit: int = LIMIT, window: timedelta = WINDOW, clock: Callable[[], datetime] = utcnow):
        self.limit = limit
        self.window = window
        self.clock = clock

    def retry_after(self, address: str) -> Optional[int]:
        """Seconds this address must wait before trying again, or None when it may try now."""
        now = self.clock()
        read_only()
        until = db.session.scalar(select(AuthLockout.locked_until).where(AuthLockout.address == address))
        db.session.commit()
        if until is None or until <= now:
            return None
        return max(1, math.ceil((until - now).total_seconds()))

    def failed(self, address: str) -> Optional[int]:
        """Record a wrong token; returns the lockout in seconds when this failure started one."""
        now = self.clock()
        db.session.add(AuthFailure(address=address, at=now))
        lock = db.session.get(AuthLockout, address)
        since = now - self.window
        if lock is not None and lock.locked_until > since:
            since = lock.locked_until  # failures before the last lockout ended were paid for
        count = db.session.scalar(select(func.count()).select_from(AuthFailure)
                                  .where(AuthFailure.address == address, AuthFailure.at > since)) or 0
        if count < self.limit:
            db.session.commit()
            return None
        strikes = lock.strikes if lock is not None and now - lock.last_at <= FORGET_AFTER else 0
        penalty = min(MAX_PENALTY, FIRST_PENALTY * 2 ** strikes)
        if lock is None:
            lock = AuthLockout(address=address)
            db.session.add(lock)
        lock.locked_until, lock.strikes, lock.last_at = now + timedelta(seconds=penalty), strikes + 1, now
        try:
            db.session.commit()
        except IntegrityError:  # another process locked the address out at the same moment: that lock holds
            db.session.rollback()
        return penalty
