"""Pages of a list, newest first, by keyset: a page ends with a cursor (its last row's time and id) and the
next page starts after it, so page 200 costs what the first does; the total is counted up to a cap
(docs/design.md 5.4). The time column is the second of an index that begins with the enterprise."""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import and_, func, or_, select

from msapp.errors import ValidationFailed
from msapp.extensions import db

TOTAL_CAP = 1000  # counted up to this many ("more than 1000" past it)


def count_capped(cond, id_column) -> tuple:
    """(total, capped): the rows matching `cond`, counted up to TOTAL_CAP; capped: there are more."""
    cap = TOTAL_CAP
    counted = db.session.scalar(select(func.count()).select_from(
        select(id_column).where(cond).limit(cap + 1).subquery())) or 0
    return min(counted, cap), counted > cap


def newest_first(cond, at_column, id_column, before: str, size: int):
    """The SELECT's WHERE and ORDER BY for one page after `before` (a cursor, or "" for the first), with
    one row more than `size` asked to learn whether a page follows."""
    if before:
        at, last_id = parse(before)
        # the time bounds the index walk; the id orders rows of the same microsecond
        cond = and_(cond, at_column <= at, or_(at_column < at, id_column < last_id))
    return lambda query: query.where(cond).order_by(at_column.desc(), id_column.desc()).limit(size + 1)


def page_of(rows: list, size: int, at_key: str, id_key: str = "id") -> tuple:
    """(the page's rows, the cursor of the next page or None)."""
    if len(rows) <= size:
        return rows, None
    rows = rows[:size]
    return rows, f"{rows[-1][at_key].isoformat()}~{rows[-1][id_key]}"


def parse(value: str) -> tuple:
    """A page's `next`, given back as `before`: the time (ISO, UTC) and the id of the last row shown."""
    at, _, last_id = (value or "").partition("~")
    try:
        start = datetime.fromisoformat(at)
        return (start.astimezone(UTC).replace(tzinfo=None) if start.tzinfo else start), int(last_id)
    except ValueError:
        raise ValidationFailed({"before": "must be a page's `next` as given"}) from None
