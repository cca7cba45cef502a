"""Per-enterprise call analytics (docs/design.md 5.4): calls per hour or day, missed share and time to
answer, callbacks (how fast a missed caller was reached again), a weekday × hour heatmap and a table per
employee, all in the enterprise's local time zone, with the previous period of the same length.

Definitions (the tests check each):
- A call belongs to the period, bucket and heatmap cell of its start in local time. Ended calls only
  (`call_status` set): answered, missed or busy.
- Time to answer: `answer_time - start_time` of answered incoming calls, in whole seconds; percentiles
  are nearest-rank (the smallest value with at least q of the values at or below it).
- A missed caller: an incoming missed or busy call from a phone with no open episode opens one; more
  misses from that phone join it. The episode closes at the first answered call with that phone
  (their call back, or ours) that starts after the first miss ended: the delay is between the two. It
  counts in the period of its first miss; still open, the caller is waiting.
- Per employee (by extension): rung (incoming calls that rang there), answered, missed while ringing
  (rang there, nobody answered), talk time (answered incoming and answered outgoing of theirs),
  callbacks made (outgoing calls that closed an episode), tasks closed (callback tasks closed by a call
  of theirs).
"""
from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Optional
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select

from msapp.clock import utcnow
from msapp.db.models import Call, CallbackEpisode, CallHour, MsTask
from msapp.db.reader import read_only
from msapp.errors import ValidationFailed
from msapp.extensions import db
from msapp.services.analytics_rollup import COUNT_KEYS

PRESETS = ("today", "yesterday", "7d", "30d")
MAX_DAYS = 92
CALLBACK_BUCKETS = ("within_15m", "within_1h", "same_day", "later", "never")
WAITING_SHOWN = 50
DEMO_PREFIX = "demo-week-"  # unique_id of the demo's seeded calls (tools/demo_week.py)


@dataclass(frozen=True)
class Period:
    """Local dates `first`..`last` (both included) in `zone`, cut into `grain` buckets (hour or day)."""

    first: date
    last: date
    grain: str
    zone: ZoneInfo

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def local_start(self, day: date) -> datetime:
        return datetime.combine(day, time(0), self.zone)

    @functools.cached_property
    def utc_bounds(self) -> tuple:
        """[start, end) in naive UTC, as the calls are stored (computed once: every hour row asks)."""
        return (_naive_utc(self.local_start(self.first)), _naive_utc(self.local_start(self.last + timedelta(days=1))))

    def contains(self, utc_naive: datetime) -> bool:
        lo, hi = self.utc_bounds
        return lo <= utc_naive < hi

    def previous(self) -> Period:
        return Period(self.first - timedelta(days=self.days), self.first - timedelta(days=1), self.grain, self.zone)

    def labels(self) -> list:
        """Each bucket's label: `YYYY-MM-DD` (days) or `YYYY-MM-DDTHH:00` local (hours; a day that loses an
        hour to daylight saving has 23, one that gains has the repeated hour once, with both hours' calls)."""
        if self.grain == "day":
            return [(self.first + timedelta(days=n)).isoformat() for n in range(self.days)]
        out = []
        at, end = self.utc_bounds  # stepped in UTC: an aware datetime's arithmetic is wall-clock time
        while at < end:
            label = at.replace(tzinfo=UTC).astimezone(self.zone).strftime("%Y-%m-%dT%H:00")
            if not out or out[-1] != label:
                out.append(label)
            at += timedelta(hours=1)
        return out

    def label_of(self, local: datetime) -> str:
        return local.strftime("%Y-%m-%d") if self.grain == "day" else local.strftime("%Y-%m-%dT%H:00")


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def period_from(args, zone: ZoneInfo, now: datetime) -> Period:
    """The period a request asks for: `period` (today, yesterday, 7d, 30d) or `from`/`to` (local dates,
    `YYYY-MM-DD`); `grain` hour or day (default: hours for one day, days otherwise)."""
    today = now.replace(tzinfo=UTC).astimezone(zone).date()
    preset, start, end = args.get("period") or "", args.get("from") or "", args.get("to") or ""
    if start or end:
        first, last = _date(start or end, "from"), _date(end or start, "to")
        if last < first:
            raise ValidationFailed({"to": "must not be before from"})
        if (last - first).days + 1 > MAX_DAYS:
            raise ValidationFailed({"to": f"a period is at most {MAX_DAYS} days"})
    elif preset in ("", "7d"):
        first, last = today - timedelta(days=6), today
    elif preset == "today":
        first = last = today
    elif preset == "yesterday":
        first = last = today - timedelta(days=1)
    elif preset == "30d":
        first, last = today - timedelta(days=29), today
    else:
        raise ValidationFailed({"period": f"must be one of {', '.join(PRESETS)}"})
    grain = args.get("grain") or ("hour" if first == last else "day")
    if grain not in ("hour", "day"):
        raise ValidationFailed({"grain": "must be hour or day"})
    if grain == "hour" and (last - first).days + 1 > 7:
        raise ValidationFailed({"grain": "hours are shown for at most 7 days"})
    return Period(first, last, grain, zone)


def _date(text: str, field: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValidationFailed({field: "must be a date YYYY-MM-DD"}) from None


SORTABLE = ("name", "rung", "answered", "missed", "talk_s", "avg_talk_s", "callbacks", "tasks_closed")


def sort_employees(rows: list, key: str) -> list:
    """By name (A to Я), else by the figure, largest first; an unknown key sorts by calls rung."""
    if key == "name":
        return sorted(rows, key=lambda r: ((r["name"] or "~").lower(), r["extension"]))
    key = key if key in SORTABLE else "rung"
    return sorted(rows, key=lambda r: (-(r[key] or 0), r["extension"]))


class Analytics:
    def __init__(self, directory=None):
        self.directory = directory  # services.directory.Directory: employees' names

    def for_request(self, number: str, cfg: dict, args) -> dict:
        """The report a page or an API call asks for (`args`: period, from, to, grain), in the enterprise's
        zone, with the directory's names; a bad argument is a ValidationFailed naming it."""
        zone = ZoneInfo(cfg.get("timezone") or "Europe/Minsk")
        period = period_from(args, zone, utcnow())
        listing = self.directory.read(number) if self.directory is not None else None
        names = {e["extension"]: e.get("name") for e in listing.employees} if listing else {}
        return self.report(number, period, names)

    def report(self, number: str, period: Period, names: Optional[dict] = None) -> dict:
        """Every figure of the page for `period`, with the previous period's totals and the change (%), read
        from the rollup (services/analytics_rollup.py): hours, and missed callers' episodes."""
        before = period.previous()
        read_only()
        current = _Hours(period, _hours(number, period, CallHour.employees))
        previous = _Hours(before, _hours(number, before))  # its totals only: no employees to read
        callbacks, callbacks_before = _Callbacks(number, period), _Callbacks(number, before)
        totals = {**current.totals(), **callbacks.totals(), "demo_calls": _demo_calls(number, period)}
        totals_before = {**previous.totals(), **callbacks_before.totals(), "demo_calls": 0}
        report = {
            "enterprise": number, "timezone": period.zone.key, "from": period.first.isoformat(),
            "to": period.last.isoformat(), "grain": period.grain, "totals": totals,
            "previous": {"from": before.first.isoformat(), "to": before.last.isoformat(), "totals": totals_before},
            "change": {k: _change(totals[k], totals_before[k]) for k in totals},
            "series": current.series(), "callbacks": callbacks.figures(), "heatmap": current.heatmap(),
            "employees": current.employees(names or {}, callbacks.made(), _tasks_closed(number, period)),
        }
        db.session.commit()
        return report


def _hours(number: str, period: Period, *more) -> list:
    lo, hi = period.utc_bounds
    return db.session.execute(select(CallHour.hour, CallHour.counts, CallHour.waits, CallHour.talk_s, *more).where(
        CallHour.enterprise_number == number, CallHour.hour >= lo, CallHour.hour < hi)).all()


def _change(now_value, before) -> Optional[float]:
    if not isinstance(now_value, (int, float)) or not isinstance(before, (int, float)) or not before:
        return None
    return round((now_value - before) * 100.0 / before, 1)


class _Hours:
    """A period's figures from its rollup hours."""

    def __init__(self, period: Period, hours: list):
        self.period = period
        self.hours = [(h.hour.replace(tzinfo=UTC).astimezone(period.zone), h) for h in hours]

    def totals(self) -> dict:
        counts = dict.fromkeys(COUNT_KEYS, 0)
        waits: dict = defaultdict(int)
        talk = 0.0
        for _, h in self.hours:
            for key, n in h.counts.items():
                counts[key] += n
            for seconds, n in h.waits.items():
                waits[seconds] += n
            talk += h.talk_s
        incoming = counts["in_answered"] + counts["in_missed"] + counts["in_busy"]
        calls = sum(counts.values())
        return {"calls": calls, "incoming": incoming, "outgoing": calls - incoming, "answered": counts["in_answered"],
                "missed": counts["in_missed"], "busy": counts["in_busy"],
                "missed_share": _share(counts["in_missed"] + counts["in_busy"], incoming),
                "answer_p50_s": percentile(waits, 0.5), "answer_p90_s": percentile(waits, 0.9),
                "talk_s": round(talk, 1)}

    def series(self) -> list:
        rows = {label: {"at": label, **dict.fromkeys(COUNT_KEYS, 0), "waits": defaultdict(int)}
                for label in self.period.labels()}
        for local, h in self.hours:
            row = rows[self.period.label_of(local)]  # the repeated hour of a daylight-saving change: one label
            for key, n in h.counts.items():
                row[key] += n
            for seconds, n in h.waits.items():
                row["waits"][seconds] += n
        out = []
        for row in rows.values():
            waits = row.pop("waits")
            incoming = row["in_answered"] + row["in_missed"] + row["in_busy"]
            out.append({**row, "missed_share": _share(row["in_missed"] + row["in_busy"], incoming),
                        "answer_p50_s": percentile(waits, 0.5),
                        "answer_p90_s": percentile(waits, 0.9)})
        return out

    def heatmap(self) -> list:
        """[weekday 0 = Monday][hour]: incoming calls and their missed share."""
        cells = [[[0, 0] for _ in range(24)] for _ in range(7)]
        for local, h in self.hours:
            c = h.counts
            cell = cells[local.weekday()][local.hour]
            cell[0] += c["in_answered"] + c["in_missed"] + c["in_busy"]
            cell[1] += c["in_missed"] + c["in_busy"]
        return [[{"calls": n, "missed_share": _share(m, n)} for n, m in day] for day in cells]

    def employees(self, names: dict, callbacks_made: dict, tasks_closed: dict) -> list:
        rows: dict = {}
        for _, h in self.hours:
            for ext, (rung, answered, missed, talk, talked) in h.employees.items():
                row = rows.get(ext)
                if row is None:
                    rows[ext] = [rung, answered, missed, talk, talked]
                else:
                    row[0] += rung
                    row[1] += answered
                    row[2] += missed
                    row[3] += talk
                    row[4] += talked
        for ext in {*callbacks_made, *tasks_closed} - rows.keys():  # who only called back, or closed a task
            rows[ext] = [0, 0, 0, 0.0, 0]
        out = []
        for ext, (rung, answered, missed, talk, talked) in rows.items():
            out.append({"extension": ext, "name": names.get(ext), "rung": rung, "answered": answered,
                        "missed": missed, "talk_s": round(talk, 1),
                        "avg_talk_s": round(talk / talked, 1) if talked else None,
                        "callbacks": callbacks_made.get(ext, 0), "tasks_closed": tasks_closed.get(ext, 0)})
        return sorted(out, key=lambda r: (-r["rung"], r["extension"]))


def percentile(counts: dict, q: float) -> Optional[float]:
    """Nearest-rank percentile (the smallest value with at least q of all at or below it) of values given
    as {value (text): how many}; None for none."""
    total = sum(counts.values())
    if not total:
        return None
    rank, seen = max(1, math.ceil(q * total)), 0
    for value in sorted(counts, key=float):
        seen += counts[value]
        if seen >= rank:
            return float(value)
    return None


class _Callbacks:
    """A period's missed callers (episodes whose first miss is in it), read with SQL aggregates."""

    def __init__(self, number: str, period: Period):
        lo, hi = period.utc_bounds
        self.number, self.zone = number, period.zone
        t = CallbackEpisode.__table__
        self.t = t
        self.where = and_(t.c.enterprise_number == number, t.c.first_missed_at >= lo, t.c.first_missed_at < hi)
        # one walk of the covering index ix_ms_callbacks_period: episodes by bucket and by who called back
        self.counts, self.by = defaultdict(int), defaultdict(int)
        for bucket, callback_by, n in db.session.execute(select(t.c.bucket, t.c.callback_by, func.count()).where(
                self.where).group_by(t.c.bucket, t.c.callback_by)):
            self.counts[bucket] += n
            if callback_by is not None:
                self.by[callback_by] += n
        self.total = sum(self.counts.values())
        self.reached = self.total - self.counts.get("never", 0)
        self.delays: dict = {}  # q -> percentile

    def _delay(self, q: float) -> Optional[float]:
        """Nearest-rank percentile of the reached callers' delays, computed by the database: PostgreSQL's
        percentile_disc is that (p50 and p90 in one sort); SQLite walks to the rank."""
        if not self.reached:
            return None
        if q not in self.delays:
            t = self.t
            reached = and_(self.where, t.c.delay_s.is_not(None))  # reached (the delay is in the index)
            if db.engine.dialect.name == "postgresql":
                both = db.session.execute(select(
                    *(func.percentile_disc(p).within_group(t.c.delay_s) for p in (0.5, 0.9))).where(reached)).one()
                self.delays.update({0.5: both[0], 0.9: both[1]})
            else:
                self.delays[q] = db.session.scalar(select(t.c.delay_s).where(reached).order_by(t.c.delay_s)
                                                   .offset(max(1, math.ceil(q * self.reached)) - 1).limit(1))
        return self.delays.get(q)

    def totals(self) -> dict:
        return {"missed_callers": self.total, "reached_share": _share(self.reached, self.total),
                "reached_p50_s": self._delay(0.5)}

    def made(self) -> dict:
        """Extension -> callbacks made (outgoing calls that reached a missed caller)."""
        return dict(self.by)

    def figures(self) -> dict:
        t = self.t
        waiting = db.session.execute(select(t.c.phone, t.c.first_missed_at, t.c.misses, t.c.unique_id).where(
            self.where, t.c.bucket == "never").order_by(t.c.first_missed_at).limit(WAITING_SHOWN)).all()
        tasks = _open_tasks(self.number, {w.phone for w in waiting})
        return {"missed_callers": self.total, **{k: self.counts.get(k, 0) for k in CALLBACK_BUCKETS},
                "reached_p50_s": self._delay(0.5), "reached_p90_s": self._delay(0.9),
                "waiting_total": self.counts.get("never", 0),
                "waiting": [{"phone": w.phone, "since": _iso_local(w.first_missed_at, self.zone),
                             "missed_calls": w.misses, "unique_id": w.unique_id, "task_id": tasks.get(w.phone)}
                            for w in waiting]}


def _tasks_closed(number: str, period: Period) -> dict:
    """Extension -> callback tasks closed in the period by a call of theirs, counted on the index of the
    tasks a call closed (enterprise, closed_at, closed_by_ext: migration 0016)."""
    lo, hi = period.utc_bounds
    t = MsTask.__table__
    return dict(db.session.execute(select(t.c.closed_by_ext, func.count()).where(
        t.c.enterprise_number == number, t.c.closed_reason == "reached", t.c.closed_at >= lo, t.c.closed_at < hi,
        t.c.closed_by_ext.is_not(None)).group_by(t.c.closed_by_ext)).all())


def _demo_calls(number: str, period: Period) -> int:
    """Calls of the period seeded by `./ms.sh demo` (found by their unique_id's prefix, on the call index)."""
    lo, hi = period.utc_bounds
    demo = and_(Call.enterprise_number == number, Call.unique_id >= DEMO_PREFIX,
                Call.unique_id < DEMO_PREFIX[:-1] + ".")  # the prefix as a range of the index
    if not db.session.scalar(select(Call.id).where(demo).limit(1)):  # one probe of the call index: most have none
        return 0
    return db.session.scalar(select(func.count()).select_from(Call).where(
        demo, Call.start_time >= lo, Call.start_time < hi)) or 0


def _share(part: int, whole: int) -> Optional[float]:
    return round(part / whole, 4) if whole else None


def _iso_local(moment: datetime, zone: ZoneInfo) -> str:
    return moment.replace(tzinfo=UTC).astimezone(zone).isoformat(timespec="minutes")


def _open_tasks(number: str, phones: set) -> dict:
    """Phone -> MoySklad id of its open callback task."""
    if not phones:
        return {}
    t = MsTask.__table__
    rows = db.session.execute(select(t.c.phone, t.c.task_id).where(
        t.c.enterprise_number == number, t.c.state == "open", t.c.phone.in_(sorted(phones)))).all()
    return {phone: task_id for phone, task_id in rows if task_id}


CSV_COLUMNS = ("at", "in_answered", "in_missed", "in_busy", "out_answered", "out_missed", "out_busy", "missed_share",
               "answer_p50_s", "answer_p90_s")


def as_csv(report: dict) -> str:
    """The series, one row per bucket, then the employees (for spreadsheets: `;`-free, comma-separated)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report["series"]:
        writer.writerow(["" if row[k] is None else row[k] for k in CSV_COLUMNS])
    writer.writerow([])
    columns = ("extension", "name", "rung", "answered", "missed", "talk_s", "avg_talk_s", "callbacks", "tasks_closed")
    writer.writerow(columns)
    for row in report["employees"]:
        writer.writerow(["" if row[k] is None else row[k] for k in columns])
    return out.getvalue()
