"""One notion of "now": naive UTC datetimes, stored the same on SQLite and PostgreSQL.

Everything that schedules through the database (job run times, retry horizons, breaker probes) reads
this clock, so a test can compress hours into seconds with `advance()`; nothing else should call
`datetime.now()` for such decisions.
"""
from datetime import UTC, datetime, timedelta

_offset = timedelta(0)


def utcnow() -> datetime:
    """Current UTC time without tzinfo (the form every timestamp column holds)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now + _offset if _offset else now  # the sum is a third of the cost, and the offset is for tests


def advance(seconds: float) -> None:
    """Move this process's clock forward (tests: a two-hour outage in seconds)."""
    global _offset
    _offset += timedelta(seconds=seconds)


def reset() -> None:
    global _offset
    _offset = timedelta(0)
