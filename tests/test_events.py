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

    from msapp import rawsql
    from msapp.extensions import db
    from msapp.models import Enterprise, Job
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


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL re-arms in the upsert's CTE
def test_an_events_cost_does_not_grow_with_the_waiting_jobs(ctx):
    """An event re-arms its call's waiting job found by the call's key. Without statistics SQLite's planner
    saw the key's and the status's index as equal and took the status one: each event read every waiting
    job (a backlog after an outage: 119 us per event at 950 jobs waiting, 349 us at 5,700). Measured in
    SQLite's virtual machine steps for the same re-arming event with 20 and with 2,000 other jobs waiting."""
    from sqlalchemy import event

    from msapp.extensions import db
    from msapp.models import Enterprise
    from msapp.services import events
    from msapp.state import ms

    db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    steps = [0]

    def count(dbapi_conn, *_):
        dbapi_conn.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1), 1)

    def stop(dbapi_conn, *_):
        dbapi_conn.set_progress_handler(None, 1)

    def waiting(start: int, count_: int) -> None:
        for i in range(start, start + count_):
            ms().queue.enqueue("test", f"other-{i}", {}, enterprise_number="0367")
        db.session.commit()

    def answer_steps(uid: str) -> int:
        base = {"enterprise_number": "0367", "unique_id": uid, "direction": "in", "phone": "+375296254070"}
        dial, answer = {**base, "event_type": "dial", "extensions": ["150"]}, {**base, "event_type": "answer",
                                                                              "extension": "150"}
        events.accept(events.parse(dial, None, {}), ms().queue, "event.call-event", dial)  # its job waits
        event.listen(db.engine, "checkout", count)
        event.listen(db.engine, "checkin", stop)
        try:
            steps[0] = 0
            events.accept(events.parse(answer, None, {}), ms().queue, "event.call-event", answer)  # re-arms it
            return steps[0]
        finally:
            event.remove(db.engine, "checkout", count)
            event.remove(db.engine, "checkin", stop)

    waiting(0, 20)
    small = answer_steps("r-1")
    waiting(20, 1980)
    large = answer_steps("r-2")
    assert large < 2 * small, (small, large)
