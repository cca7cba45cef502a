"""End to end: PBX events over real sockets -> the service -> the sandbox (docs/design.md 5.1, 6, 7)."""
import time

import pytest
import requests
from sqlalchemy import select

from msapp.db.models import Call, IntegrationLog, Job
from msapp.extensions import db
from tests.service_harness import Service, calls, phone_requests, shown_cards

pytestmark = pytest.mark.e2e
CALLER = "+375296254070"


@pytest.fixture
def svc(db_url, tmp_path, sandbox):
    service = Service(db_url, tmp_path, sandbox)
    service.add_enterprise()
    yield service
    service.stop()


def dial(svc, uid="1757772742.60", exts=("150", "151", "152"), **kw):
    body = dict(unique_id=uid, event_type="dial", direction="in", phone=CALLER, extensions=list(exts),
                start_time="2025-09-13 17:12:22")
    body.update(kw)
    return svc.event(**body)


def answer(svc, uid="1757772742.60", ext="151", **kw):
    return svc.event(unique_id=uid, event_type="answer", direction="in", phone=CALLER, extension=ext, **kw)


def hangup(svc, uid="1757772742.60", status="answered", **kw):
    body = dict(unique_id=uid, event_type="hangup", direction="in", phone=CALLER, call_status=status,
                end_time="2025-09-13 17:14:27", record_url="https://pbx.example.by/rec/1757772742.60.mp3")
    body.update(kw)
    return svc.event(**body)


def test_incoming_answered_three_phones_costs_three_requests(svc, sandbox):
    assert dial(svc).status_code == 202
    svc.wait_idle()
    (call,) = calls(sandbox)
    assert shown_cards(sandbox) == {"150": [call["id"]], "151": [call["id"]], "152": [call["id"]]}
    assert answer(svc).json() == {"status": "accepted"}
    svc.wait_idle()
    assert shown_cards(sandbox) == {"151": [call["id"]]}
    assert [e["eventType"] for e in call["events"]][-1] == "HIDE"
    assert hangup(svc).status_code == 202
    svc.wait_idle()
    assert shown_cards(sandbox) == {}
    reqs = phone_requests(sandbox)
    assert [(r["method"], r["path"].rsplit("/", 2)[-2:][0]) for r in reqs] == [
        ("POST", "1.0"), ("PUT", "call"), ("PUT", "call")]
    assert call["extension"] == "151" and call["isIncoming"] is True
    assert call["startTime"] == "2025-09-13 17:12:22.000" and call["endTime"] == "2025-09-13 17:14:27.000"
    assert call["recordUrl"] == ["https://pbx.example.by/rec/1757772742.60.mp3"]
    assert "принят" in call["comment"] and "151" in call["comment"]
    seqs = [e["sequence"] for e in call["events"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    started = [e for e in call["events"] if e["eventType"] == "STARTTIME"]
    assert [e["extension"] for e in started] == ["151"]


def test_missed_call_costs_two_requests(svc, sandbox):
    dial(svc)
    svc.wait_idle()
    hangup(svc, status="missed", record_url=None)
    svc.wait_idle()
    (call,) = calls(sandbox)
    assert len(phone_requests(sandbox)) == 2
    assert call["extension"] is None and "пропущен" in call["comment"] and "150" in call["comment"]
    assert shown_cards(sandbox) == {} and call["recordUrl"] == []


def test_busy_call(svc, sandbox):
    dial(svc, exts=["150"])
    svc.wait_idle()
    hangup(svc, status="busy", record_url=None)
    svc.wait_idle()
    (call,) = calls(sandbox)
    assert "занято" in call["comment"] and call["endTime"] and shown_cards(sandbox) == {}


def test_outgoing_call_costs_two_requests(svc, sandbox):
    uid = "1757772800.1"
    body = dict(unique_id=uid, direction="out", phone="80297111222", extension="152",
                start_time="2025-09-13 17:20:00")
    svc.event(event_type="dial", **body)
    svc.event(event_type="answer", **body)
    svc.event(event_type="hangup", call_status="answered", end_time="2025-09-13 17:21:00", **body)
    svc.wait_idle()
    (call,) = calls(sandbox)
    assert len(phone_requests(sandbox)) == 2
    assert call["isIncoming"] is False and call["extension"] == "152" and call["number"] == "+375297111222"
    assert "Исходящий" in call["comment"] and call["counterparty"]  # linked by MoySklad by number
    assert call["events"] == []  # notify_outgoing is off by default


def test_outgoing_cards_when_enabled(svc, sandbox):
    svc.app.extensions["ms"].configs  # noqa: B018 - the store is used inside the app context below
    with svc.app.app_context():
        svc.app.extensions["ms"].configs.save("0367", {"notifications": {"notify_outgoing": True}})
    body = dict(unique_id="o2", direction="out", phone="80297111222", extension="150")
    svc.event(event_type="dial", **body)
    svc.wait_idle()
    assert list(shown_cards(sandbox)) == ["150"]
    svc.event(event_type="hangup", call_status="answered", **body)
    svc.wait_idle()
    assert shown_cards(sandbox) == {} and len(phone_requests(sandbox)) == 2


def test_duplicate_events_have_the_effect_of_one(svc, sandbox):
    for send in (dial, dial, answer, answer, hangup, hangup):
        assert send(svc).status_code == 202
        svc.wait_idle()
    assert len(calls(sandbox)) == 1 and len(phone_requests(sandbox)) == 3
    dial(svc)  # a late duplicate dial after the end does nothing
    svc.wait_idle()
    assert len(phone_requests(sandbox)) == 3 and shown_cards(sandbox) == {}


def test_more_extensions_ring_later(svc, sandbox):
    dial(svc, exts=["150"])
    svc.wait_idle()
    dial(svc, exts=["150", "151"])
    svc.wait_idle()
    (call,) = calls(sandbox)
    assert sorted(shown_cards(sandbox)) == ["150", "151"]
    assert phone_requests(sandbox)[-1]["path"].endswith("/event")


def test_hangup_while_the_create_is_still_running(svc, sandbox):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"latency_ms": 600})
    dial(svc)
    time.sleep(0.2)  # the create is in flight now
    answer(svc)
    hangup(svc)
    svc.wait_idle()
    (call,) = calls(sandbox)
    assert call["endTime"] == "2025-09-13 17:14:27.000" and call["extension"] == "151"
    assert shown_cards(sandbox) == {}
    assert len(phone_requests(sandbox)) <= 3


def test_hangup_only_creates_the_whole_call(svc, sandbox):
    hangup(svc, uid="only-1", extension="151")
    svc.wait_idle()
    (call,) = calls(sandbox)
    assert len(phone_requests(sandbox)) == 1
    assert call["endTime"] and call["extension"] == "151" and call["recordUrl"] and call["events"] == []


def test_log_call_after_a_live_call_does_not_duplicate(svc, sandbox):
    dial(svc)
    answer(svc)
    hangup(svc)
    svc.wait_idle()
    sent = len(phone_requests(sandbox))
    assert sent <= 3  # events that arrive together may share a request
    r = svc.event("log-call", unique_id="1757772742.60", phone=CALLER, direction="in", extension="151",
                  start_time="2025-09-13 17:12:22", duration=125, call_status="answered",
                  record_url="https://pbx.example.by/rec/other.mp3")
    assert r.status_code == 202
    svc.wait_idle()
    assert len(calls(sandbox)) == 1 and len(phone_requests(sandbox)) == sent


def test_log_call_for_a_missed_live_flow_creates_without_cards(svc, sandbox):
    r = svc.event("log-call", unique_id="rec-7", phone="+375 29 625-40-70", direction="in", extension="150",
                  start_time="2025-09-13 10:00:00", duration=65, call_status="answered",
                  record_url="https://pbx.example.by/rec/7.mp3")
    assert r.status_code == 202
    svc.wait_idle()
    (call,) = calls(sandbox)
    assert call["events"] == [] and call["endTime"] == "2025-09-13 10:01:05.000" and call["extension"] == "150"


def test_lost_create_answer_is_probed_not_repeated(svc, sandbox):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"lose_next": 1, "api": "phone"})
    dial(svc)
    svc.wait_idle(60)
    hangup(svc, status="missed")
    svc.wait_idle()
    assert len(calls(sandbox)) == 1
    methods = [(r["method"], r["status"]) for r in phone_requests(sandbox)]
    assert methods[:2] == [("POST", 504), ("PUT", 200)]  # the second is the probe by externalId
    assert calls(sandbox)[0]["endTime"]


@pytest.mark.slow
def test_503_and_429_storm_loses_and_duplicates_nothing(svc, sandbox):
    requests.post(f"{sandbox.url}/sandbox/api/faults",
                  json={"fail_rate": 0.25, "rate_429": 0.1, "retry_after_ms": 50, "api": "phone"})
    for n in range(12):
        uid = f"storm-{n}"
        dial(svc, uid=uid, exts=["150", "151"])
        answer(svc, uid=uid, ext="150")
        hangup(svc, uid=uid)
    # Let the storm do its damage (a fault or more per call on average), then end it and serve the backoff
    # of the jobs it left waiting: their random jitter must not decide whether the test passes.
    injected = lambda: sum(1 for r in sandbox.state.log if r["status"] in (503, 429))  # noqa: E731
    deadline = time.time() + 30
    while injected() < 12 and len([c for c in calls(sandbox) if c["endTime"]]) < 12 and time.time() < deadline:
        time.sleep(0.05)
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
    svc.wait_idle(60, serve_backoff=True)
    done = calls(sandbox)
    assert sorted(c["externalId"] for c in done) == sorted(f"storm-{n}" for n in range(12))
    assert all(c["endTime"] and c["extension"] == "150" for c in done)
    assert shown_cards(sandbox) == {}
    with svc.app.app_context():
        assert db.session.query(Job).filter(Job.status == "dead").count() == 0
    assert any(r["status"] in (503, 429) for r in sandbox.state.log)


def test_one_enterprise_down_does_not_delay_another(db_url, tmp_path, sandbox):
    service = Service(db_url, tmp_path, sandbox)
    try:
        service.add_enterprise("0367", account="demo")
        service.add_enterprise("0500", account="down")
        requests.post(f"{sandbox.url}/sandbox/api/faults", json={"latency_ms": 4000, "account": "down"})
        for n in range(6):  # the slow company's calls occupy what they can
            service.event(enterprise_number="0500", unique_id=f"slow-{n}", event_type="dial", direction="in",
                          phone=CALLER, extensions=["150"])
        time.sleep(0.2)
        started = time.monotonic()
        service.event(enterprise_number="0367", unique_id="fast-1", event_type="dial", direction="in",
                      phone=CALLER, extensions=["151"])
        while not shown_cards(sandbox) and time.monotonic() - started < 3:
            time.sleep(0.01)
        assert shown_cards(sandbox), "the healthy enterprise's card did not arrive"
        assert time.monotonic() - started < 1.0
    finally:
        requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
        service.stop()


def test_inbound_and_exchange_logs_are_redacted(svc, sandbox):
    dial(svc)
    svc.wait_idle()
    key = sandbox.state.keys()["demo"]["phone_api_key"]
    with svc.app.app_context():
        rows = db.session.scalars(select(IntegrationLog).order_by(IntegrationLog.id)).all()
        kinds = [r.event_type for r in rows]
        assert kinds[0] == "event.call-event" and "ms.phone.call.create" in kinds
        assert all(r.integration_type == "ms" and r.enterprise_number == "0367" for r in rows)
        text = str([(r.request_data, r.response_data) for r in rows])
        assert key not in text
        call = db.session.scalars(select(Call)).one()
        assert call.ms_call_id and call.shown == ["150", "151", "152"]


def test_metrics_count_events_and_calls(svc, sandbox):
    before = svc.http.get(f"{svc.url}/metrics").text
    dial(svc)
    svc.wait_idle()
    after = svc.http.get(f"{svc.url}/metrics").text

    def value(text, name):
        line = next(ln for ln in text.splitlines() if ln.startswith(name))
        return float(line.rsplit(" ", 1)[1])

    assert value(after, "ms_calls_created_total") == value(before, "ms_calls_created_total") + 1
    assert value(after, 'ms_events_received_total{event_type="dial"}') >= 1


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_forged_proxy_header_from_loopback_is_refused_by_the_real_server(svc, sandbox, header):
    value = "for=203.0.113.7" if header == "Forwarded" else "203.0.113.7"
    r = svc.http.post(f"{svc.url}/internal/ms/call-event", headers={header: value}, timeout=5,
                      json={"enterprise_number": "0367", "unique_id": "p1", "event_type": "dial", "direction": "in",
                            "phone": CALLER, "extensions": ["150"]})
    assert r.status_code == 403
    with svc.app.app_context():
        assert db.session.query(Job).count() == 0


def test_answer_arriving_after_the_hangup_still_sets_the_answerer(svc, sandbox):
    dial(svc)
    svc.wait_idle()
    hangup(svc, extension=None)  # the hangup names no extension, and the answer is late
    svc.wait_idle()
    (call,) = calls(sandbox)
    assert call["endTime"] and call["extension"] is None
    answer(svc, ext="151")
    svc.wait_idle()
    assert call["extension"] == "151" and "ответил доб. 151" in call["comment"]
    assert shown_cards(sandbox) == {}
    answer(svc, ext="151")  # a duplicate of the late answer changes nothing more
    svc.wait_idle()
    assert len(phone_requests(sandbox)) == 3
