"""Customers' names by phone (`ms_customer_names`): kept when MoySklad names a customer (a lookup found
it, or the service created it), in the unit of work of that lookup or job, and read by the support desk,
so its lists show names after a restart too (docs/design.md 4)."""
from __future__ import annotations

from typing import Optional

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from msapp.clock import utcnow
from msapp.db.models import CustomerName
from msapp.db.work import Work
from msapp.extensions import db

KEYS = ("counterparty_id", "enterprise_number", "name", "phone", "updated_at")
_UPSERTS: dict = {}  # by dialect


def _upsert(dialect: str):
    found = _UPSERTS.get(dialect)
    if found is None:
        ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(CustomerName.__table__)
        found = _UPSERTS[dialect] = ins.on_conflict_do_update(
            index_elements=["enterprise_number", "phone"],
            set_={k: ins.excluded[k] for k in ("counterparty_id", "name", "updated_at")})
    return found


def remember(work: Optional[Work], number: str, phone: Optional[str], counterparty_id: Optional[str],
             name: Optional[str]) -> None:
    """Keep the name with `work` (written when it is); nothing without a work, a phone or a name."""
    if work is None or not phone or not name:
        return
    work.insert(_upsert(db.engine.dialect.name), {"enterprise_number": number, "phone": phone,
                                                   "counterparty_id": counterparty_id, "name": name[:255],
                                                   "updated_at": utcnow()}, KEYS)


def names(number: str, phones: list) -> dict:
    """Phone -> the customer's name, for the phones of one enterprise that have one."""
    wanted = sorted({p for p in phones if p})
    if not wanted:
        return {}
    t = CustomerName.__table__
    return dict(db.session.execute(select(t.c.phone, t.c.name).where(
        t.c.enterprise_number == number, t.c.phone.in_(wanted))).all())
