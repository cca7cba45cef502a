"""Unit tests of the call state machine's pure parts (services/callflow.py)."""
import threading
from datetime import datetime

import pytest

from msapp.services.callflow import Snapshot, card_mode, comment


def snap(**kw):
    base = dict(id=1, enterprise_number="0367", unique_id="u", direction="in", phone="+375296254070",
                extensions=["150", "151"], answered_extension=None, start_time=datetime(2025, 1, 1, 10, 0, 0),
                answer_time=None, end_time=datetime(2025, 1, 1, 10, 0, 30), call_status=None, record_url=None,
                notify=True, ms_call_id=None, create_attempted=False)
    base.update(kw)
    return Snapshot(**base)


@pytest.mark.parametrize("direction,notes,notify,expected", [
    ("in", {"call_notify_mode": "during", "notify_incoming": True}, True, "during"),
    ("in", {"call_notify_mode": "answer", "notify_incoming": True}, True, "answer"),
    ("in", {"call_notify_mode": "during", "notify_incoming": False}, True, "none"),
    ("in", {"call_notify_mode": "during", "notify_incoming": True}, False, "none"),
    ("out", {"call_notify_mode": "during", "notify_outgoing": False}, True, "none"),
    ("out", {"call_notify_mode": "during", "notify_outgoing": True}, True, "during"),
    ("in", {"call_notify_mode": "none", "notify_incoming": True}, True, "none"),
])
def test_card_mode(direction, notes, notify, expected):
    assert card_mode(snap(direction=direction, notify=notify), {"notifications": notes}) == expected


def test_comments():
    answered = snap(answered_extension="151", call_status="answered", answer_time=datetime(2025, 1, 1, 10, 0, 5))
    assert comment(answered) == "Входящий звонок · принят · ответил доб. 151 · разговор 0:00:25"
    assert comment(snap(call_status="missed")) == "Входящий звонок · пропущен · звонили: доб. 150, доб. 151 · ожидание 0:00:30"
    out = snap(direction="out", extensions=["152"], call_status="busy")
    assert comment(out) == "Исходящий звонок · занято · звонил доб. 152 · ожидание 0:00:30"
    late = snap(answered_extension="151", call_status="answered", answer_time=datetime(2025, 1, 1, 11, 0, 0))
    assert comment(late).endswith("разговор 0:00:30")  # an answer time after the end is not trusted


def test_a_sync_commits_its_guard_before_the_request_and_its_progress_with_the_outcome(db_url, tmp_path, sandbox,
                                                                                       monkeypatch):
    """What a request did is committed with the job's outcome, not in a transaction of its own; a guard
    (before a create whose answer may be lost: the call's, the new customer's) is committed before the
    request is sent. Dial: guard + outcome; answer: outcome; hangup: the customer's guard + outcome (was
    3, 2 and 4)."""
    from sqlalchemy import select

    from msapp.db import rawsql
    from msapp.db.models import Call, Enterprise
    from msapp.extensions import db
    from msapp.moysklad.phone_api import PhoneApi
    from msapp.services import events
    from msapp.state import ms
    from tests.conftest import dispose, make_app

    app = make_app(db_url, tmp_path, MS_PHONE_API_URL=sandbox.phone_url, MS_JSON_API_URL=sandbox.json_url)
    keys = sandbox.state.keys()["demo"]
    writes, seen_at_create = [], []
    real_transaction, real_create = rawsql.transaction, PhoneApi.create_call

    def counted(atomic=True, connection=None):
        if threading.current_thread() is threading.main_thread():  # the sync's, not the directory's fetch
            writes.append(atomic)
        return real_transaction(atomic, connection)

    def create_call(self, body):
        with db.engine.connect() as other:  # what another connection (a crash) would find committed
            seen_at_create.append(other.execute(select(Call.create_attempted, Call.ms_call_id)).one())
        return real_create(self, body)

    try:
        with app.app_context():
            db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
            db.session.commit()
            ms().configs.save("0367", {"enabled": True, "integration_code": keys["phone_api_key"],
                                       "api_token": keys["json_api_token"]})
            db.session.commit()
            monkeypatch.setattr(rawsql, "transaction", counted)
            monkeypatch.setattr(PhoneApi, "create_call", create_call)
            base = {"enterprise_number": "0367", "unique_id": "kept-1", "direction": "in", "phone": "+375296254070"}
            for body, commits in (({**base, "event_type": "dial", "extensions": ["150", "151"]}, 2),
                                  ({**base, "event_type": "answer", "extension": "151"}, 1),
                                  ({**base, "event_type": "hangup", "call_status": "answered"}, 2)):
                events.accept(events.parse(body, None, {}), ms().queue, "event.call-event", body)
                job = ms().queue.claim()
                writes.clear()
                assert ms().queue.run_one(job) == "done"
                assert writes.count(True) == commits, writes  # the read of the call is atomic=False
            assert seen_at_create == [(True, None)]
            db.session.expire_all()
            call = db.session.execute(select(Call)).scalar_one()
            assert call.ms_call_id and call.answer_sent and call.end_sent and call.hidden == ["150", "151"]
            assert call.customer_created and call.counterparty_id
            assert [c["externalId"] for c in sandbox.state.accounts["demo"].calls.values()] == ["kept-1"]
    finally:
        dispose(app)
