"""The analytics rollup (docs/design.md 5.4), kept so that a month of a large enterprise is read in a few
hundred rows: per enterprise and UTC hour, the figures of the ended calls that started in it
(`ms_call_hours`), and per enterprise and phone, the missed callers' episodes (`ms_callbacks`).

Both are recomputed from ms_calls, never added to, so they cannot drift from the calls: a PBX event that
changes an ended call marks its hour and its phone (`mark_statement`, in the event's own transaction), and
the ticker recomputes what is marked (`Rollup.refresh`); a mark made again while it is being recomputed
stays for the next tick. `Rollup.rebuild` recomputes an enterprise from scratch (the migration marks every
enterprise that has calls for it). A callback's bucket uses the enterprise's time zone when its phone was
last recomputed.

What a tick costs does not grow with an hour's calls or a caller's history: an hour's figures are
aggregated by the database (`_figure_statements`), and a phone's mark keeps the earliest start of the
calls that changed (`since`), from which its episodes are replayed (`_anchors`).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Optional
from zoneinfo import ZoneInfo

from sqlalchemy import and_, bindparam, case, delete, distinct, extract, func, literal_column, null, or_, select, true
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
COLUMNS = (Call.id, Call.unique_id, Call.direction, Call.phone, Call.extensions, Call.answered_extension,
           Call.start_time, Call.answer_time, Call.end_time, Call.call_status)
ENDED = Call.call_status.is_not(None)


def mark_statement(dialect: str):
    """The event path's mark (run by rawsql, values: `MARK_KEYS`). A phone's `since` is the earliest start,
    before or after the change, of the calls changed since its last recompute; None (a mark of an hour,
    or of before migration 0015) means all its calls."""
    table = AnalyticsMark.__table__
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
    kept, new = table.c.since, ins.excluded.since
    earlier = case((or_(kept.is_(None), new.is_(None)), null()), (new < kept, new), else_=kept)
    return ins.on_conflict_do_update(index_elements=["enterprise_number", "kind", "key"],
                                     set_={"marked_at": ins.excluded.marked_at, "since": earlier})


MARK_KEYS = ("enterprise_number", "key", "kind", "marked_at", "since")


def request_rebuild(number: str, at: datetime) -> None:
    """Have the ticker rebuild an enterprise's rollup (in the caller's session transaction; it commits)."""
    db.session.merge(AnalyticsMark(enterprise_number=number, kind="rebuild", key="", marked_at=at))


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _seconds(later, earlier, dialect: str):
    """`later - earlier` in seconds, in SQL (SQLite's date functions count whole milliseconds)."""
    if dialect == "postgresql":
        return extract("epoch", later - earlier)  # numeric: round() goes half away from zero, as SQLite's
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


_FIGURES: dict = {}


def _figure_statements(dialect: str) -> dict:
    """The aggregates behind `hours_figures` (bind parameters: n, lo, hi), each grouped by UTC hour, built
    once per dialect. The database folds the calls, not the interpreter: on SQLite the statement steps
    without the GIL, so the event path's threads are not stopped for the length of an hour's calls."""
    found = _FIGURES.get(dialect)
    if found is not None:
        return found
    c = Call.__table__.c
    pg = dialect == "postgresql"
    in_hour = (c.enterprise_number == bindparam("n"), c.start_time >= bindparam("lo"), c.start_time < bindparam("hi"),
               c.call_status.is_not(None))
    hour = func.date_trunc(literal_column("'hour'"), c.start_time) if pg else \
        func.strftime(literal_column("'%Y-%m-%d %H:00:00'"), c.start_time)
    spoke = _seconds(c.end_time, func.coalesce(c.answer_time, c.start_time), dialect)
    answered = c.call_status == "answered"
    per_call = select(  # one row per ended call: what the aggregates below group
        hour.label("h"), c.direction.label("d"), c.call_status.label("s"),
        case((and_(answered, spoke > 0), spoke), else_=0).label("talk"),
        case((and_(answered, c.direction == "in", c.answer_time >= c.start_time),
              _seconds(c.answer_time, c.start_time, dialect))).label("wait"),
        case((c.direction == "in", c.answered_extension), else_=c.extensions[0].as_string()).label("who"),
    ).where(*in_hour).subquery()
    p = per_call.c
    wait = func.round(p.wait)
    rang = func.jsonb_array_elements_text(c.extensions).table_valued("value").render_derived() if pg else \
        func.json_each(c.extensions).table_valued("value")
    found = _FIGURES[dialect] = {
        "counts": select(p.h, p.d, p.s, func.count(), func.sum(p.talk)).group_by(p.h, p.d, p.s),
        "waits": select(p.h, wait, func.count()).where(p.wait.is_not(None)).group_by(p.h, wait),
        # answered incoming calls by who answered, answered outgoing ones by who called: talk time
        "talked": select(p.h, p.who, func.sum(case((p.d == "in", 1), else_=0)), func.sum(p.talk), func.count())
        .where(p.s == "answered", p.who != "").group_by(p.h, p.who),
        # incoming calls by each extension they rang (once a call), and those of them not answered
        "rung": select(hour.label("h"), rang.c.value, func.count(distinct(c.id)),
                       func.count(distinct(case((c.call_status != "answered", c.id)))))
        .select_from(Call.__table__.join(rang, true())).where(*in_hour, c.direction == "in")
        .group_by(literal_column("h"), rang.c.value),
    }
    return found


def hours_figures(number: str, lo: datetime, hi: datetime) -> dict:
    """Per UTC hour in [lo, hi) with ended calls, their figures: counts by direction and result, answer
    waits (whole seconds, half away from zero -> calls), talk time, and per extension [rung, answered,
    missed while ringing, talk_s, calls talked]."""
    statements = _figure_statements(db.engine.dialect.name)
    params = {"n": number, "lo": lo, "hi": hi}
    out: dict = {}

    def of(hour) -> dict:
        hour = hour if isinstance(hour, datetime) else datetime.fromisoformat(hour)
        return out.setdefault(hour, {"counts": dict.fromkeys(COUNT_KEYS, 0), "waits": {}, "talk_s": 0.0,
                                     "employees": {}})

    def employee(hour, ext: str) -> list:
        return of(hour)["employees"].setdefault(str(ext), [0, 0, 0, 0.0, 0])

    for hour, direction, status, n, talk in db.session.execute(statements["counts"], params):
        figures = of(hour)
        figures["counts"][f"{direction}_{status}"] = n
        figures["talk_s"] = round(figures["talk_s"] + float(talk or 0), 3)
    for hour, seconds, n in db.session.execute(statements["waits"], params):
        of(hour)["waits"][str(int(seconds))] = n
    for hour, ext, rung, missed in db.session.execute(statements["rung"], params):
        figures = employee(hour, ext)
        figures[0], figures[2] = rung, missed
    for hour, who, answered, talk, talked in db.session.execute(statements["talked"], params):
        figures = employee(hour, who)
        figures[1], figures[3], figures[4] = answered, round(float(talk or 0), 3), talked
    return out


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
                self._phones(number, {m.key: m.since for m in group if m.kind == "phone"}, zone)
            db.session.execute(delete(t).where(and_(
                t.c.enterprise_number == bindparam("n"), t.c.kind == bindparam("k"), t.c.key == bindparam("v"),
                t.c.marked_at == bindparam("at"))), [{"n": m.enterprise_number, "k": m.kind, "v": m.key,
                                                      "at": m.marked_at} for m in group])
            db.session.commit()
        return len(marks)

    def _hour(self, number: str, hour: datetime) -> None:
        found = self._read(number, lambda: hours_figures(number, hour, hour + HOUR).get(hour))
        t = CallHour.__table__
        db.session.execute(delete(t).where(t.c.enterprise_number == number, t.c.hour == hour))
        if found:
            db.session.execute(t.insert().values(enterprise_number=number, hour=hour, **found))
        db.session.commit()

    def _phones(self, number: str, since: dict, zone: ZoneInfo, batch: int = 500) -> None:
        """Recompute the episodes of some phones of one enterprise (phone -> its mark's `since`), `batch`
        phones per transaction: each phone's from its anchor (`_anchors`) on."""
        t = CallbackEpisode.__table__
        phones = sorted(since)
        for start in range(0, len(phones), batch):
            chunk = {phone: since[phone] for phone in phones[start:start + batch]}
            anchors, episodes = self._read(number, lambda chunk=chunk: _replay(number, chunk, zone))
            dated = _dated(anchors)
            whole = [phone for phone in anchors if phone not in dated]
            if whole:
                db.session.execute(delete(t).where(t.c.enterprise_number == number, t.c.phone.in_(whole)))
            if dated:
                db.session.execute(delete(t).where(t.c.enterprise_number == number, t.c.phone == bindparam("p"),
                                                   t.c.first_missed_at >= bindparam("at")),
                                   [{"p": phone, "at": at} for phone, at in dated.items()])
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
            found = hours_figures(number, day, day + DAY)
            db.session.commit()
            hours += [{"enterprise_number": number, "hour": h, **figures} for h, figures in sorted(found.items())]
            day += DAY
        episodes: list = []
        for start in range(0, len(phones), batch):
            read_only()
            episodes += _replay(number, dict.fromkeys(phones[start:start + batch]), zone)[1]
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


def _dated(anchors: dict) -> dict:
    """The phones replayed from an anchor (-> it); the others (None) are replayed from their first call."""
    return {phone: at for phone, at in anchors.items() if at is not None}


def _anchors(number: str, since: dict) -> dict:
    """Per phone (-> the earliest start of its changed calls, or None: all its calls), the start from
    which its episodes are replayed: the latest time T <= since before which every stored episode of the
    phone was closed by a call that started before T. No episode is open at T, so a replay of the calls
    from T on, from nothing, gives the episodes from T on; those before T saw none of the changed calls.
    An episode still open at `since` moves T back to its first miss (and a tie there, one more)."""
    t = CallbackEpisode.__table__
    anchors = dict(since)
    while True:
        dated = _dated(anchors)
        if not dated:
            return anchors
        moved = False
        for phone, first, reached in db.session.execute(select(t.c.phone, t.c.first_missed_at, t.c.reached_at).where(
                t.c.enterprise_number == number, t.c.phone.in_(dated), t.c.first_missed_at < max(dated.values()),
                or_(t.c.reached_at.is_(None), t.c.reached_at >= min(dated.values())))):
            at = anchors[phone]
            if first < at and (reached is None or reached >= at):
                anchors[phone], moved = first, True
        if not moved:
            return anchors


def _replay(number: str, since: dict, zone: ZoneInfo) -> tuple:
    """(`_anchors`, the episodes from them on as rows for ms_callbacks) of some phones of one enterprise."""
    anchors = _anchors(number, since)
    dated = _dated(anchors)
    whole = [phone for phone in anchors if phone not in dated]
    calls = []
    if whole:
        calls += _rows(select(*COLUMNS).where(Call.enterprise_number == number, Call.phone.in_(whole), ENDED))
    if dated:
        # `coalesce(start_time, NULL)`: a term no index serves, so the phones are looked up
        # (ix_ms_calls_enterprise_phone); without statistics SQLite's planner would rather walk all the
        # enterprise's calls since the earliest anchor (an episode open for weeks: weeks of them)
        later = func.coalesce(Call.start_time, null()) >= min(dated.values())
        calls += [c for c in _rows(select(*COLUMNS).where(Call.enterprise_number == number, Call.phone.in_(dated),
                                                          later, ENDED))
                  if c["start_time"] >= dated[c["phone"]]]
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
    return anchors, [{"enterprise_number": number, **e} for e in episodes]
