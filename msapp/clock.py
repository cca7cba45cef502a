"""One notion of "now": naive UTC datetimes, stored the same on SQLite and PostgreSQL."""
from datetime import datetime, timezone


def utcnow() -> datetime:
    """Current UTC time without tzinfo (the form every timestamp column holds)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
