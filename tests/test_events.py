"""Unit tests of event parsing and merging (services/events.py)."""
from datetime import datetime
from types import SimpleNamespace

import pytest

from msapp.errors import ValidationFailed
from msapp.services.events import CallEvent, merge, parse

CFG = {"timezone": "Europe/Minsk", "default_region": "BY"}


def ev(**kw):
    body = {"enterprise_number": "0367", "unique_id": "u1", "event_type": "dial", "direction": "in",
            "phone": "80296254070"}
    body.update(kw)
    return parse(body, None, CFG)


def blank_call(direction="in"):
    return SimpleNamespace(direction=direction, extensions=[], answered_extension=None, start_time=None,
                           answer_time=None, end_time=None, call_status=None, record_url=None, status="ringing")


def test_parse_normalises():
    e = ev(extensions="150, 151;152", start_time="2025-09-13 17:12:22", extension=153)
    assert e.phone == "+375296254070" and e.extensions == ["150", "151", "152"] and e.extension == "153"
    assert e.start_time == datetime(2025, 9, 13, 14, 12, 22)


def test_parse_reports_every_bad_field():
    with pytest.raises(ValidationFailed) as info:
        parse({"enterprise_number": "0367", "event_type": "x", "direction": "y"}, None, CFG)
    assert {"event_type", "direction", "unique_id", "phone"} <= set(info.value.errors)


def test_forced_event_type_wins():
    assert parse({"enterprise_number": "0367", "unique_id": "u", "direction": "in", "phone": "80296254070",
                  "event_type": "whatever"}, "hangup", CFG).event_type == "hangup"


def test_merge_is_idempotent_and_order_tolerant():
    call = blank_call()
    hangup = ev(event_type="hangup", call_status="answered", extension="151", end_time="2025-09-13 17:14:27")
    dial = ev(extensions=["150", "151"], start_time="2025-09-13 17:12:22")
    merge(call, hangup)  # the hangup arrives first
    merge(call, dial)
    merge(call, dial)
    assert call.status == "ended" and call.answered_extension == "151" and call.call_status == "answered"
    assert call.extensions == ["151", "150"] and call.start_time == datetime(2025, 9, 13, 14, 12, 22)
    before = dict(vars(call))
    merge(call, hangup)
    assert vars(call) == before


def test_first_answer_wins_and_missed_without_answer():
    call = blank_call()
    merge(call, ev(event_type="answer", extension="150"))
    merge(call, ev(event_type="answer", extension="152"))
    assert call.answered_extension == "150"
    missed = blank_call()
    merge(missed, ev(extensions=["150"]))
    merge(missed, ev(event_type="hangup"))
    assert missed.call_status == "missed" and missed.end_time is not None


def test_log_call_duration_gives_end_time():
    call = blank_call()
    merge(call, CallEvent("0367", "u", "log", "in", "+375296254070", extension="150",
                          start_time=datetime(2025, 1, 1, 10, 0, 0), call_status="answered", duration=65))
    assert call.end_time == datetime(2025, 1, 1, 10, 1, 5) and call.answered_extension == "150"


def test_an_event_wakes_a_worker_for_a_job_queued_not_for_one_re_armed(ctx, monkeypatch):
    """An event whose call has a job waiting re-arms it (announced when it was queued); waking a worker
    again would only buy a claim that finds nothing. A call whose job is running gets a new one, announced.
    PostgreSQL: every event is 2 round trips (BEGIN rides with the upsert, the re-arm inside it as a CTE,
    COMMIT with the last batch)."""
    from sqlalchemy import select

    from msapp.db import rawsql
    from msapp.db.models import Enterprise, Job
    from msapp.extensions import db
    from msapp.services import events
    from msapp.state import ms

    db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    sent, real = [], rawsql.Tx._send
    monkeypatch.setattr(rawsql.Tx, "_send", lambda self, sql, params: sent.append(
        ("" if self.begun else "BEGIN;\n") + sql) or real(self, sql, params))
    queue, postgresql = ms().queue, db.engine.dialect.name == "postgresql"
    base = {"enterprise_number": "0367", "unique_id": "w-1", "direction": "in", "phone": "+375296254070"}
    for body, woken in (({**base, "event_type": "dial", "extensions": ["150"]}, 1),
                        ({**base, "event_type": "answer", "extension": "150"}, 0),
                        ("claim", None),
                        ({**base, "event_type": "hangup", "call_status": "answered"}, 1)):
        if body == "claim":
            assert queue.claim() is not None
            continue
        before = queue.generation
        sent.clear()
        events.accept(events.parse(body, None, {}), queue, "event.call-event", body)
        assert queue.generation - before == woken
        if postgresql:
            assert len(sent) == 2 and sent[0].startswith("BEGIN;") and sent[-1].endswith("COMMIT"), sent
    assert db.session.execute(select(Job.status).order_by(Job.id)).scalars().all() == ["running", "pending"]


def test_an_events_cost_does_not_grow_with_the_waiting_jobs(ctx):
    """An event re-arms its call's waiting job, found by the call's key. Without statistics both planners
    also took the status index (SQLite instead of the key's, PostgreSQL in a BitmapAnd with it): each event
    read every waiting job (a backlog after an outage). The re-arming statement (SQLite: the re-arm;
    PostgreSQL: the upsert that carries it) costs under twice as much with 2,000 other jobs waiting as
    with 20."""
    from msapp.clock import utcnow
    from msapp.db.models import Enterprise
    from msapp.extensions import db
    from msapp.services import events
    from msapp.state import ms
    from tests.conftest import statement_work

    db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    st = events._statements(db.engine.dialect.name)

    def rearm_work(uid: str, others: range) -> int:
        for i in others:
            ms().queue.enqueue("test", f"other-{i}", {}, enterprise_number="0367")
        db.session.commit()
        dial = {"enterprise_number": "0367", "unique_id": uid, "direction": "in", "phone": "+375296254070",
                "event_type": "dial", "extensions": ["150"]}
        events.accept(events.parse(dial, None, {}), ms().queue, "event.call-event", dial)  # its job waits
        now, key = utcnow(), f"call:0367:{uid}"
        if st["rearm_job"] is not None:
            return statement_work(st["rearm_job"], {"_key": key, "updated_at": now}, keys=("updated_at",))
        return statement_work(st["upsert"], dict(
            enterprise_number="0367", unique_id=uid, direction="in", phone="+375296254070", notify=True,
            external_id=uid, created_at=now, updated_at=now, _key=key, _rearm_at=now))

    small = rearm_work("r-1", range(20))
    large = rearm_work("r-2", range(20, 2000))
    assert large < 2 * small, (small, large)
