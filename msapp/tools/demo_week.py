"""A week of plausible calls for the demo enterprise, so the analytics page is not empty on first look.

The rows go straight into ms_calls (no jobs: MoySklad never hears of them), ended and marked as demo
data by their unique_id (`DEMO_PREFIX`), which the analytics page counts and says so.
"""
from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from msapp.db.models import Call
from msapp.extensions import db
from msapp.services.analytics import DEMO_PREFIX
from msapp.services.analytics_rollup import request_rebuild

EXTENSIONS = ("150", "151", "152")


def seed_week(number: str, now: datetime, zone: ZoneInfo, seed: int = 7) -> int:
    """Calls of the last 7 days (local; today's until now), business hours heavier, and the mark that has
    the ticker build their analytics; the caller commits. Returns how many calls were added."""
    rng = random.Random(seed)
    today = now.replace(tzinfo=UTC).astimezone(zone).date()
    rows = []
    for back in range(6, -1, -1):
        day = today - timedelta(days=back)
        weekend = day.weekday() >= 5
        for n in range(rng.randint(6, 12) if weekend else rng.randint(25, 45)):
            hour = rng.choices(range(8, 20), weights=(2, 6, 9, 8, 6, 4, 6, 8, 7, 5, 3, 1))[0]
            start = datetime(day.year, day.month, day.day, hour, rng.randint(0, 59), rng.randint(0, 59), tzinfo=zone)
            start = start.astimezone(UTC).replace(tzinfo=None)
            if start < now - timedelta(minutes=30):  # today's only until shortly before now
                rows += [c for c in _call(rng, f"{DEMO_PREFIX}{day:%m%d}-{n}", start) if c.end_time < now]
    for row in rows:
        row.enterprise_number = number
    db.session.add_all(rows)
    # no PBX event marked their hours: the ticker rebuilds the enterprise's analytics
    request_rebuild(number, now)
    return len(rows)


def _call(rng: random.Random, uid: str, start: datetime) -> list:
    """One call, and for a missed one, often the callback that reached the caller."""
    phone = f"+37529{rng.randint(1000000, 9999999)}"
    if rng.random() < 0.25:  # outgoing
        ext = rng.choice(EXTENSIONS)
        answered = rng.random() < 0.8
        return [_row(uid, "out", phone, [ext], ext if answered else None, start, 8 if answered else None,
                     rng.randint(40, 600) if answered else 0, "answered" if answered else "missed")]
    rang = rng.sample(EXTENSIONS, rng.randint(1, 3))
    outcome = rng.choices(("answered", "missed", "busy"), weights=(80, 16, 4))[0]
    if outcome == "answered":
        return [_row(uid, "in", phone, rang, rng.choice(rang), start, rng.randint(3, 40), rng.randint(30, 900),
                     "answered")]
    missed = _row(uid, "in", phone, rang, None, start, None, rng.randint(5, 40), outcome)
    if rng.random() < 0.15:
        return [missed]  # still waiting for a call back
    delay = rng.choice((rng.randint(120, 900), rng.randint(900, 3600), rng.randint(3600, 6 * 3600)))
    ext = rng.choice(rang)
    back = _row(uid + "-cb", "out", phone, [ext], ext, missed.end_time + timedelta(seconds=delay), 6,
                rng.randint(30, 300), "answered")
    return [missed, back]


def _row(uid, direction, phone, exts, answered, start, answer_after, length, status) -> Call:
    answer = start + timedelta(seconds=answer_after) if answer_after is not None else None
    end = (answer or start) + timedelta(seconds=length)
    return Call(unique_id=uid, direction=direction, phone=phone, extensions=list(exts),
                answered_extension=answered if direction == "in" else None, start_time=start, answer_time=answer,
                end_time=end, call_status=status, status="ended", notify=False, create_attempted=True,
                answer_sent=True, end_sent=True, created_at=start, updated_at=end)
