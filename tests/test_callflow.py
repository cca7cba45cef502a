"""Unit tests of the call state machine's pure parts (services/callflow.py)."""
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
