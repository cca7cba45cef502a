"""The analytics rollup (docs/design.md 5.4), kept so that a month of a large enterprise is read in a few
hundred rows: per enterprise and UTC hour, the figures of the ended calls that started in it
(`ms_call_hours`), and per enterprise and phone, the missed callers' episodes (`ms_callbacks`).

Both are recomputed from ms_calls, never added to, so they cannot drift from the calls: a PBX event that
changes an ended call marks its hour and its phone (`MARK`, in the event's own transaction), and the
ticker recomputes what is marked (`Rollup.refresh`); a mark made again while it is being recomputed stays
for the next tick. `Rollup.rebuild` recomputes an enterprise from scratch (the migration marks every
enterprise that has calls for it). A callback's bucket uses the enterprise's time zone when its phone was
last recomputed.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Optional
from zoneinfo import ZoneInfo

from sqlalchemy import and_, bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from msapp.db.models import AnalyticsMark, Call, CallbackEpisode, CallHour
from msapp.db.reader import read_only
from msapp.errors import ApiError
from msapp.extensions import db

log = logging.getLogger("msapp.analytics")
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
STATUSES = ("answered", "missed", "busy")
COUNT_KEYS = tuple(f"{d}_{s}" for d in ("in", "out") for s in STATUSES)
COLUMNS = (Call.unique_id, Call.direction, Call.phone, Call.extensions, Call.answered_extension, Call.start_time,
           Call.answer_time, Call.end_time, Call.call_status)
ENDED = Call.call_status.is_not(None)


def mark_statement(dialect: str):
    """The event path's mark (run by rawsql, values: enterprise_number, kind, key, marked_at)."""
    table = AnalyticsMark.__table__
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
    return ins.on_conflict_do_update(index_elements=["enterprise_number", "kind", "key"],
                                     set_={"marked_at": ins.excluded.marked_at})


MARK_KEYS = ("enterprise_number", "key", "kind", "marked_at")


def request_rebuild(number: str, at: datetime) -> None:
    """Have the ticker rebuild an enterprise's rollup (in the caller's session transaction; it commits)."""
    db.session.merge(AnalyticsMark(enterprise_number=number, kind="rebuild", key="", marked_at=at))


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def hour_figures(calls: list) -> dict:
    """The figures of some ended calls (dicts of `COLUMNS`): counts by direction and result, answer waits
    (whole seconds -> calls), talk time, and per extension [rung, answered, missed, talk_s, talked]."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    waits: dict = defaultdict(int)
    employees: dict = defaultdict(lambda: [0, 0, 0, 0.0, 0])
    talk_total = 0.0
    for c in calls:
        counts[f"{c['direction']}_{c['call_status']}"] += 1
        who = None
        if c["direction"] == "in":
            for ext in dict.fromkeys(c["extensions"] or []):
                employees[ext][0] += 1
                employees[ext][2] += c["call_status"] != "answered"
            if c["call_status"] == "answered":
                who = c["answered_extension"]
                if who:
                    employees[who][1] += 1
                wait = answer_wait(c)
                if wait is not None:
                    waits[str(round(wait))] += 1
        elif c["call_status"] == "answered":
            who = caller(c)
        talk = talk_of(c)
        talk_total += talk
        if who:
            employees[who][3] = round(employees[who][3] + talk, 3)
            employees[who][4] += 1
    return {"counts": counts, "waits": dict(waits), "talk_s": round(talk_total, 3), "employees": dict(employees)}


def answer_wait(call: dict) -> Optional[float]:
    if call["answer_time"] and call["start_time"] and call["answer_time"] >= call["start_time"]:
        return (call["answer_time"] - call["start_time"]).total_seconds()
    return None


def talk_of(call: dict) -> float:
    if call["call_status"] != "answered" or not call["end_time"]:
        return 0.0
    began = call["answer_time"] or call["start_time"]
    return max(0.0, (call["end_time"] - began).total_seconds()) if began else 0.0


def caller(call: dict) -> Optional[str]:
    return (call["extensions"] or [None])[0]


def episodes_of(calls: list, zone: ZoneInfo) -> list:
    """Missed callers' episodes over ended `calls` in start order: a missed or busy incoming call opens
    one for its phone, later misses join it, and the first answered call with that phone starting after
    the first miss ended closes it (docs/design.md 5.4)."""
    open_by_phone: dict = {}
    out = []
    for c in calls:
        phone = c["phone"]
        if not phone:
            continue
        episode = open_by_phone.get(phone)
        if c["direction"] == "in" and c["call_status"] != "answered":
            if episode is None:
                episode = open_by_phone[phone] = {
                    "phone": phone, "first_missed_at": c["start_time"], "ended_at": c["end_time"] or c["start_time"],
                    "unique_id": c["unique_id"], "misses": 0, "reached_at": None, "delay_s": None,
                    "callback_by": None, "bucket": "never"}
                out.append(episode)
            episode["misses"] += 1
        elif c["call_status"] == "answered" and episode is not None and c["start_time"] >= episode["ended_at"]:
            delay = (c["start_time"] - episode["ended_at"]).total_seconds()
            episode.update(reached_at=c["start_time"], delay_s=delay, bucket=_bucket(episode, c["start_time"], zone),
                           callback_by=caller(c) if c["direction"] == "out" else None)
            del open_by_phone[phone]
    return out


def _bucket(episode: dict, reached: datetime, zone: ZoneInfo) -> str:
    delay = (reached - episode["ended_at"]).total_seconds()
    if delay <= 15 * 60:
        return "within_15m"
    if delay <= 3600:
        return "within_1h"
    day = episode["ended_at"].replace(tzinfo=UTC).astimezone(zone).date()
    return "same_day" if reached.replace(tzinfo=UTC).astimezone(zone).date() == day else "later"


def _rows(query) -> list:
    return [dict(row._mapping) for row in db.session.execute(query)]


class Rollup:
    def __init__(self, configs):
        self.configs = configs  # services.config.ConfigStore: each enterprise's time zone

    def _zone(self, number: str) -> Optional[ZoneInfo]:
        try:
            return ZoneInfo(self.configs.read_fast(number).get("timezone") or "Europe/Minsk")
        except ApiError:  # the enterprise is gone
            return None

    def refresh(self, limit: int = 2000) -> int:
        """Ticker task: recompute what the event path marked (oldest marks first, at most `limit`): per
        enterprise, its marked hours, then all its marked phones in one transaction; a mark goes only if
        nobody marked it again meanwhile (a later event: recomputed at the next tick). Returns how many
        marks were done."""
        t = AnalyticsMark.__table__
        read_only()
        marks = db.session.execute(select(t).order_by(t.c.marked_at).limit(limit)).all()
        db.session.commit()
        by_enterprise: dict = defaultdict(list)
        for mark in marks:
            by_enterprise[mark.enterprise_number].append(mark)
        for number, group in by_enterprise.items():
            zone = self._zone(number)
            kinds = {m.kind for m in group}
            if zone is None:
                pass  # the enterprise is gone: its marks with it
            elif "rebuild" in kinds:
                self.rebuild(number)
            else:
                for hour in sorted({m.key for m in group if m.kind == "hour"}):
                    self._hour(number, datetime.fromisoformat(hour))
                self._phones(number, sorted({m.key for m in group if m.kind == "phone"}), zone)
            db.session.execute(delete(t).where(and_(
                t.c.enterprise_number == bindparam("n"), t.c.kind == bindparam("k"), t.c.key == bindparam("v"),
                t.c.marked_at == bindparam("at"))), [{"n": m.enterprise_number, "k": m.kind, "v": m.key,
                                                      "at": m.marked_at} for m in group])
            db.session.commit()
        return len(marks)

    def _hour(self, number: str, hour: datetime) -> None:
        def figures() -> Optional[dict]:
            calls = _rows(select(*COLUMNS).where(Call.enterprise_number == number, Call.start_time >= hour,
                                                 Call.start_time < hour + HOUR, ENDED))
            return hour_figures(calls) if calls else None

        found = self._read(number, figures)
        t = CallHour.__table__
        db.session.execute(delete(t).where(t.c.enterprise_number == number, t.c.hour == hour))
        if found:
            db.session.execute(t.insert().values(enterprise_number=number, hour=hour, **found))
        db.session.commit()

    def _phones(self, number: str, phones: list, zone: ZoneInfo, batch: int = 500) -> None:
        """Recompute the episodes of some phones of one enterprise, `batch` phones per transaction."""
        t = CallbackEpisode.__table__
        for start in range(0, len(phones), batch):
            chunk = phones[start:start + batch]
            episodes = self._read(number, lambda chunk=chunk: _episodes_of_phones(number, chunk, zone))
            db.session.execute(delete(t).where(t.c.enterprise_number == number, t.c.phone.in_(chunk)))
            if episodes:
                db.session.execute(t.insert(), episodes)
            db.session.commit()

    @staticmethod
    def _read(number: str, compute: Callable[[], Any]) -> Any:
        """What a recompute reads and folds, before it writes. PostgreSQL: under the enterprise's lock
        (`_lock`), in the transaction that then writes. SQLite (one process, one ticker): in a reader's
        transaction, so that the writers' lock, which the event path waits for, is held only for the
        delete and insert (a frequent caller's thousands of calls are read and folded outside it). A call
        that changes meanwhile marks its hour and phone again: recomputed at the next tick."""
        if db.engine.dialect.name == "postgresql":
            Rollup._lock(number)
            return compute()
        read_only()
        out = compute()
        db.session.commit()
        return out

    @staticmethod
    def _lock(number: str) -> None:
        """PostgreSQL: one process at a time writes an enterprise's rollup, until its transaction ends (two
        would both delete, then both insert)."""
        if db.engine.dialect.name == "postgresql":
            key = bindparam("k", "ms-rollup:" + number)
            db.session.execute(select(func.pg_advisory_xact_lock(func.hashtext(key))))

    def rebuild(self, number: str, batch: int = 500) -> None:
        """Recompute an enterprise's whole rollup from its calls: read a day, or `batch` phones, per short
        reader's transaction, then written in one."""
        zone = self._zone(number)
        if zone is None:
            return
        read_only()  # the bounds and the phones in one reader's transaction (SQLite: outside the writers' lock)
        first, last = db.session.execute(select(func.min(Call.start_time), func.max(Call.start_time))
                                         .where(Call.enterprise_number == number, ENDED)).one()
        phones = db.session.scalars(select(Call.phone).where(Call.enterprise_number == number).distinct()).all()
        db.session.commit()
        hours: list = []
        day = hour_of(first) if first else None
        while day is not None and day <= last:
            read_only()
            calls = _rows(select(*COLUMNS).where(Call.enterprise_number == number, Call.start_time >= day,
                                                 Call.start_time < day + DAY, ENDED).order_by(Call.start_time))
            db.session.commit()
            by_hour: dict = defaultdict(list)
            for call in calls:
                by_hour[hour_of(call["start_time"])].append(call)
            hours += [{"enterprise_number": number, "hour": h, **hour_figures(rows)}
                      for h, rows in sorted(by_hour.items())]
            day += DAY
        episodes: list = []
        for start in range(0, len(phones), batch):
            read_only()
            episodes += _episodes_of_phones(number, phones[start:start + batch], zone)
            db.session.commit()
        self._lock(number)
        t_hours, t_episodes = CallHour.__table__, CallbackEpisode.__table__
        db.session.execute(delete(t_hours).where(t_hours.c.enterprise_number == number))
        db.session.execute(delete(t_episodes).where(t_episodes.c.enterprise_number == number))
        if hours:
            db.session.execute(t_hours.insert(), hours)
        if episodes:
            db.session.execute(t_episodes.insert(), episodes)
        db.session.commit()


def _episodes_of_phones(number: str, phones: list, zone: ZoneInfo) -> list:
    """The episodes (rows for ms_callbacks) of some phones of one enterprise, from their ended calls."""
    calls = _rows(select(*COLUMNS, Call.id).where(Call.enterprise_number == number, Call.phone.in_(phones), ENDED))
    # sorted here, not by the query: with an ORDER BY, SQLite's planner (no statistics) walks all the
    # enterprise's calls by ix_ms_calls_enterprise_start rather than look up the phones
    calls.sort(key=lambda c: (c["phone"], c["start_time"], c["id"]))
    episodes, current, rows = [], None, []
    for call in calls:
        if call["phone"] != current and rows:
            episodes += episodes_of(rows, zone)
            rows = []
        current = call["phone"]
        rows.append(call)
    episodes += episodes_of(rows, zone)
    return [{"enterprise_number": number, **e} for e in episodes]
