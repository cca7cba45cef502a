"""PBX call events: validate (with fallbacks to the raw Asterisk event), store, and queue the sync.

Nothing here talks to MoySklad. `accept()` writes the call row, the inbound log row and the sync job
in one transaction; the 202 is sent only after that commit (accept = stored).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, Optional

from sqlalchemy import bindparam, cast, false, func, literal_column, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from msapp import metrics
from msapp.clock import utcnow
from msapp.db import rawsql
from msapp.db.models import Call, Job
from msapp.errors import ApiError, ValidationFailed
from msapp.extensions import db
from msapp.moysklad.formats import is_extension, parse_pbx_time, to_e164
from msapp.services import analytics_rollup, exchange_log

EVENT_TYPES = ("dial", "answer", "hangup", "log")
CALL_STATUSES = {"answered": "answered", "missed": "missed", "busy": "busy", "noanswer": "missed",
                 "no_answer": "missed", "cancel": "missed", "2": "answered", "1": "busy", "0": "missed"}
DIRECTIONS = {"in": "in", "incoming": "in", "inbound": "in", "0": "in", "out": "out", "outgoing": "out",
              "outbound": "out", "1": "out", "internal": "internal", "2": "internal"}
_UNIQUE_ID = re.compile(r"[A-Za-z0-9._:@\-]{1,128}")
_ENTERPRISE = re.compile(r"[A-Za-z0-9_\-]{1,32}")
_URL = re.compile(r"https?://[^\s\"'<>]{1,2040}")
SYNC_KIND = "call.sync"


@dataclass
class CallEvent:
    enterprise_number: str
    unique_id: str
    event_type: str
    direction: str
    phone: str
    extension: Optional[str] = None
    extensions: list = field(default_factory=list)
    start_time: Optional[datetime] = None
    end_time: Optional[datetime] = None
    call_status: Optional[str] = None
    record_url: Optional[str] = None
    duration: Optional[int] = None
    notify: bool = True


def _raw(body: dict) -> dict:
    raw = body.get("raw")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValidationFailed({"raw": "must be an object"})
    return raw


def _pick(body: dict, raw: dict, name: str, *raw_names: str) -> Any:
    value = body.get(name)
    if value in (None, ""):
        for alt in raw_names:
            if raw.get(alt) not in (None, ""):
                return raw[alt]
    return value


def enterprise_number(body: Any) -> str:
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    number = body.get("enterprise_number")
    if number in (None, ""):
        raise ValidationFailed({"enterprise_number": "is required"})
    if not isinstance(number, str) or not _ENTERPRISE.fullmatch(number):
        raise ValidationFailed({"enterprise_number": "must be letters, digits, '-' or '_'"})
    return number


def parse(body: dict, event_type: Optional[str], cfg: dict) -> Optional[CallEvent]:
    """Validate one event against the enterprise's config; None for an internal call (ignored)."""
    raw = _raw(body)
    errors: dict[str, str] = {}
    kind = event_type or body.get("event_type")
    if kind not in EVENT_TYPES[:3] and event_type is None:
        errors["event_type"] = "must be one of: dial, answer, hangup"

    direction_raw = _pick(body, raw, "direction", "CallType")
    direction = DIRECTIONS.get(str(direction_raw).lower()) if direction_raw not in (None, "") else None
    if direction is None:
        errors["direction"] = "must be 'in' or 'out' (or raw CallType 0/1/2)"
    elif direction == "internal":
        return None

    unique_id = _pick(body, raw, "unique_id", "UniqueId", "Uniqueid")
    if not isinstance(unique_id, str) or not _UNIQUE_ID.fullmatch(unique_id):
        errors["unique_id"] = "is required: the PBX call id, e.g. 1757772742.60"

    region = cfg.get("default_region") or "BY"
    phone_raw = _pick(body, raw, "phone", "Phone", "CallerIDNum")
    phone = to_e164(phone_raw if isinstance(phone_raw, str) else None, region)
    if phone is None:
        errors["phone"] = "is not a phone number"

    extension = _pick(body, raw, "extension", "Extension")
    if extension is not None and not isinstance(extension, str):
        extension = str(extension) if isinstance(extension, int) else extension
    if extension not in (None, "") and not is_extension(extension):
        errors["extension"] = "must be digits"
    extension = extension or None

    extensions = _pick(body, raw, "extensions", "Extensions")
    if extensions in (None, ""):
        extensions = []
    if isinstance(extensions, str):
        extensions = [e.strip() for e in re.split(r"[,;\s]+", extensions) if e.strip()]
    if not isinstance(extensions, list) or len(extensions) > 100 or \
            not all(is_extension(str(e)) and isinstance(e, (str, int)) for e in extensions):
        errors["extensions"] = "must be a list of extensions (digits)"
        extensions = []
    extensions = [str(e) for e in extensions]

    tz = cfg.get("timezone") or "Europe/Minsk"
    times = {}
    for name, raw_name in (("start_time", "StartTime"), ("end_time", "EndTime")):
        try:
            times[name] = parse_pbx_time(_pick(body, raw, name, raw_name), tz)
        except ValueError as exc:
            errors[name] = str(exc)

    status_raw = _pick(body, raw, "call_status", "CallStatus")
    call_status = None
    if status_raw not in (None, ""):
        call_status = CALL_STATUSES.get(str(status_raw).lower())
        if call_status is None:
            errors["call_status"] = "must be answered, missed or busy (or raw CallStatus 2/1/0)"

    record_url = body.get("record_url") or None
    if record_url is not None and (not isinstance(record_url, str) or not _URL.fullmatch(record_url)):
        errors["record_url"] = "must be an http(s) URL"

    duration = body.get("duration")
    if duration is not None and (not isinstance(duration, (int, float)) or isinstance(duration, bool)
                                 or not 0 <= duration <= 7 * 86400):
        errors["duration"] = "must be seconds (0 to 7 days)"

    if errors:
        raise ValidationFailed(errors)
    return CallEvent(enterprise_number=body["enterprise_number"], unique_id=unique_id, event_type=kind,
                     direction=direction, phone=phone, extension=extension, extensions=extensions,
                     start_time=times["start_time"], end_time=times["end_time"], call_status=call_status,
                     record_url=record_url, duration=int(duration) if duration is not None else None)


def _union(first: list, more: list) -> list:
    return list(dict.fromkeys([*first, *more]))


_STATEMENTS: dict = {}


def _statements(dialect: str) -> dict:
    """Statements of the hot path, built once per dialect and run through `rawsql` (values bound at
    execution; SQLAlchemy's per-statement machinery skipped)."""
    found = _STATEMENTS.get(dialect)
    if found is None:
        calls, jobs = Call.__table__, Job.__table__
        # a new call's constant columns written into the statement; the rest bound by name
        new_row = {k: _constant(calls.c[k], dialect) if k in _NEW_CALL else bindparam(k, type_=calls.c[k].type)
                   for k in _UPSERT_KEYS}
        rearm = update(jobs).where(jobs.c.key == bindparam("_key"), jobs.c.kind == SYNC_KIND,
                                   _unindexed(jobs.c.status) == "pending")
        if dialect == "postgresql":
            # one round trip: the re-arm rides in the upsert as a data-modifying CTE, and its count comes back
            # with the call's row
            rearm = rearm.values(updated_at=bindparam("_rearm_at", type_=jobs.c.updated_at.type)) \
                .returning(jobs.c.id).cte("rearmed_job")
            ins = pg_insert(calls).values(new_row)
            rearmed = select(func.count()).select_from(rearm).scalar_subquery().label("rearmed")
            upsert = ins.on_conflict_do_update(index_elements=["enterprise_number", "unique_id"],
                                               set_={"updated_at": ins.excluded.updated_at}) \
                .returning(*_merged(calls), rearmed).add_cte(rearm)
        else:  # SQLite has no data-modifying CTEs (and no round trips to save)
            ins = sqlite_insert(calls).values(new_row)
            upsert = ins.on_conflict_do_update(index_elements=["enterprise_number", "unique_id"],
                                               set_={"updated_at": ins.excluded.updated_at}).returning(*_merged(calls))
        found = _STATEMENTS[dialect] = {
            "upsert": upsert,
            "update_call": update(calls).where(calls.c.id == bindparam("_id")),
            "rearm_job": None if dialect == "postgresql" else rearm,
            "mark": analytics_rollup.mark_statement(dialect),
        }
    return found


def _unindexed(column):
    """`column || ''`: a term no index serves, so that the re-arm finds its job by the call's key
    (ix_ms_jobs_key) alone, whatever the planner's statistics say; its cost then does not grow with the
    jobs waiting (an outage's backlog). Measured in docs/benchmarks.md."""
    return column.concat("")


_NEW_CALL = dict(extensions=[], shown=[], hidden=[], status="ringing", create_attempted=False, answer_sent=False,
                 end_sent=False, sequence=0, customer_checked=False, customer_attempted=False,
                 customer_created=False, order_attempted=False, task_queued=False)
_UPSERT_KEYS = tuple(sorted({"enterprise_number", "unique_id", "direction", "phone", "notify", "external_id",
                             "created_at", "updated_at", *_NEW_CALL}))


def _constant(column, dialect: str):
    """A new call's value of `column` as SQL of the statement, not a parameter: psycopg2 spends 1-2 us on
    each parameter of every event, SQLite's binding a type conversion each."""
    value = _NEW_CALL[column.key]
    if value == []:  # JSON has no SQL literal of its own in SQLAlchemy
        return cast(literal_column("'[]'"), column.type) if dialect == "postgresql" else literal_column("'[]'")
    if isinstance(value, bool):
        return true() if value else false()  # SQLite: 1 / 0
    if isinstance(value, int):
        return literal_column(str(value))
    return literal_column("'" + value.replace("'", "''") + "'")  # a fixed word of ours: no "%" to escape


def _upsert_call(ev: CallEvent, statements: dict, tx, now, key: str) -> dict:
    """The call's row as a dict, inserted if missing (then its created_at is `now`); one statement that
    also locks the row. PostgreSQL: the same statement re-arms the call's waiting sync job (`rearmed`)."""
    values = dict(enterprise_number=ev.enterprise_number, unique_id=ev.unique_id, direction=ev.direction,
                  phone=ev.phone, notify=ev.notify, external_id=ev.unique_id, created_at=now, updated_at=now)
    if statements["rearm_job"] is not None:  # SQLite: the re-arm is a statement of its own
        return tx.first(statements["upsert"], values)
    return tx.first(statements["upsert"], {**values, "_key": key, "_rearm_at": now})


# what `merge` reads and writes, and `accept` needs of the call's row: the upsert returns only these
_MERGED = ("id", "created_at", "direction", "phone", "extensions", "answered_extension", "start_time",
           "answer_time", "end_time", "call_status", "record_url", "status")


def _merged(calls) -> list:
    return [calls.c[name] for name in _MERGED]


def merge(call, ev: CallEvent) -> None:
    """Fold one event into the call's desired state. Idempotent: the same event twice changes nothing."""
    now = utcnow()
    if call.start_time is None or (ev.start_time and ev.start_time < call.start_time):
        call.start_time = ev.start_time or call.start_time or now
    ringing = ev.extensions + ([ev.extension] if ev.extension and ev.event_type in ("dial", "log") else [])
    if call.direction == "out" and ev.extension and not call.extensions:
        ringing = [ev.extension]
    if ringing:
        call.extensions = _union(call.extensions or [], ringing)
    if ev.event_type == "answer" or (ev.event_type in ("hangup", "log") and ev.call_status == "answered"):
        who = ev.extension or call.answered_extension or (call.extensions[0] if call.direction == "out"
                                                          and call.extensions else None)
        if call.answered_extension is None and who:
            call.answered_extension = who
            call.extensions = _union(call.extensions or [], [who])
        if call.answer_time is None:
            call.answer_time = now if ev.event_type == "answer" else (ev.start_time or call.start_time)
        if call.status == "ringing":
            call.status = "answered"
    if ev.event_type in ("hangup", "log"):
        end = ev.end_time
        if end is None and ev.duration is not None and call.start_time is not None:
            end = call.start_time + timedelta(seconds=ev.duration)
        if call.end_time is None:
            call.end_time = end or now
        if call.call_status is None:
            call.call_status = ev.call_status or ("answered" if call.answered_extension else "missed")
        if ev.record_url and not call.record_url:
            call.record_url = ev.record_url
        call.status = "ended"


def _mark_analytics(tx, mark, enterprise: str, row: dict, state, now) -> None:
    """The call's hour (and the hour it was in, if its start moved) and its phone, in the event's transaction;
    the phone's mark says from which start on its calls changed (the earlier of the call's old and new)."""
    hours = {analytics_rollup.hour_of(state.start_time)}
    since = state.start_time
    if row["call_status"] and row["start_time"]:
        hours.add(analytics_rollup.hour_of(row["start_time"]))
        since = min(since, row["start_time"])
    marks = [("hour", hour.isoformat(), None) for hour in sorted(hours)] + [("phone", state.phone, since)]
    for kind, key, at in marks:
        tx.later(mark, {"enterprise_number": enterprise, "kind": kind, "key": key, "marked_at": now, "since": at},
                 analytics_rollup.MARK_KEYS)


def accept(ev: CallEvent, queue, log_event: str, body: dict) -> int:
    """Store the event and queue (or re-arm) the call's sync job; commit. Returns the call's id.

    One short transaction of prebuilt statements on a pooled connection (`rawsql`), not the ORM: this
    is the hot path of every PBX event.
    """
    statements = _statements(db.engine.dialect.name)
    now = utcnow()
    key = f"call:{ev.enterprise_number}:{ev.unique_id}"
    with rawsql.transaction() as tx:
        row = _upsert_call(ev, statements, tx, now, key)
        rearmed = row.pop("rearmed", None)
        state = SimpleNamespace(**row)
        merge(state, ev)
        changes = {k: v for k, v in vars(state).items() if row[k] != v}
        if changes:
            changes["updated_at"] = now
            tx.later(statements["update_call"], {**changes, "_id": row["id"]}, keys=rawsql.columns_of(changes))
            if state.call_status:  # an ended call changed: its analytics are recomputed (analytics_rollup)
                _mark_analytics(tx, statements["mark"], ev.enterprise_number, row, state, now)
        # Re-use a sync job still waiting for this call: it will read the state just merged. The UPDATE holds
        # that job's row until commit, so a worker cannot claim it and read the call before this change.
        # A call inserted just now has no job to re-use.
        new = row["created_at"] == now
        if rearmed is None and not new:
            rearmed = tx.run(statements["rearm_job"], {"_key": key, "updated_at": now}, keys=("updated_at",))
        queued = new or not rearmed
        if queued:
            queue.enqueue(SYNC_KIND, key, {"call_id": row["id"]}, enterprise_number=ev.enterprise_number, tx=tx)
        exchange_log.add(ev.enterprise_number, log_event, body, tx=tx)
    if queued:  # a re-armed job was announced when it was queued: waking a worker again finds nothing new
        queue.notify(key=key)  # nor does one while this call's previous job runs here
    metrics.EVENTS.labels(ev.event_type).inc()
    return row["id"]
