"""Missed calls become callbacks (issue 12), over real sockets against the sandbox's tasks."""
import threading
import time

import pytest
import requests
from sqlalchemy import func, select

from msapp.db.models import IntegrationLog, Job, MsTask
from msapp.extensions import db
from msapp.services.tasks import Tasks
from tests.service_harness import Service, calls

pytestmark = pytest.mark.e2e
KNOWN = "+375297111222"  # ООО Ромашка in the sandbox's seed, owner: see below
UNKNOWN = "+375296254070"
IVANOV = "0a9c1f00-0000-4000-8000-000000000150"
PETROVA = "0a9c1f00-0000-4000-8000-000000000151"
RULES = {"create_task": True, "assignee": "owner", "fallback_employee": PETROVA, "due_minutes": 30,
         "close_on_callback": True, "only_known_customers": False}


@pytest.fixture
def svc(db_url, tmp_path, sandbox):
    service = Service(db_url, tmp_path, sandbox)
    service.add_enterprise(missed_calls=RULES)
    yield service
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
    service.stop()


def missed(svc, uid, phone=KNOWN, status="missed", exts=("150", "151")):
    svc.event(unique_id=uid, event_type="dial", direction="in", phone=phone, extensions=list(exts),
              start_time="2025-09-13 10:42:00")
    svc.event(unique_id=uid, event_type="hangup", direction="in", phone=phone, call_status=status,
              end_time="2025-09-13 10:42:30")


def answered(svc, uid, phone=KNOWN, direction="in", ext="151"):
    if direction == "in":
        svc.event(unique_id=uid, event_type="dial", direction="in", phone=phone, extensions=[ext])
        svc.event(unique_id=uid, event_type="answer", direction="in", phone=phone, extension=ext)
    else:
        svc.event(unique_id=uid, event_type="dial", direction="out", phone=phone, extension=ext)
    svc.event(unique_id=uid, event_type="hangup", direction=direction, phone=phone, call_status="answered",
              end_time="2025-09-13 11:05:00")


def tasks(sandbox, account="demo"):
    return sorted(sandbox.state.accounts[account].tasks.values(), key=lambda t: t["created"])


def test_a_missed_call_from_a_known_customer_opens_one_task_for_the_owner(svc, sandbox):
    owner = sandbox.state.accounts["demo"].counterparties["5c0e7a00-0000-4000-8000-000000000001"]
    owner["owner"] = IVANOV
    missed(svc, "m-1")
    svc.wait_idle()
    (task,) = tasks(sandbox)
    assert task["assignee"] == IVANOV and task["agent"] == "5c0e7a00-0000-4000-8000-000000000001"
    assert task["dueToDate"] == "2025-09-13 11:12:30"  # 10:42:30 Minsk + 30 min, in Moscow time (same offset)
    text = task["description"]
    assert "ООО Ромашка" in text and KNOWN in text and "13.09.2025 10:42" in text and "доб. 150, доб. 151" in text
    assert calls(sandbox)[0]["endTime"]  # the call itself is logged as before


def test_an_unknown_caller_gets_a_new_customer_and_a_task_for_the_fallback(db_url, tmp_path, sandbox):
    svc = Service(db_url, tmp_path, sandbox)
    try:
        svc.add_enterprise(missed_calls=RULES,
                           incoming_call_actions={"create_customers": True, "create_orders": "none"})
        missed(svc, "u-1", phone=UNKNOWN)
        svc.wait_idle()
        (task,) = tasks(sandbox)
        created = [cp for cp in sandbox.state.accounts["demo"].counterparties.values() if cp["phone"] == UNKNOWN]
        assert len(created) == 1 and task["agent"] == created[0]["id"] and task["assignee"] == PETROVA
    finally:
        svc.stop()


def test_only_known_customers_skips_strangers(svc, sandbox):
    svc.configure(missed_calls={"only_known_customers": True})
    missed(svc, "s-1", phone=UNKNOWN)
    svc.wait_idle()
    assert tasks(sandbox) == [] and len(calls(sandbox)) == 1


def test_three_missed_calls_make_one_task_listing_three(svc, sandbox):
    for n in range(3):
        missed(svc, f"r-{n}", status="busy" if n == 1 else "missed")
        svc.wait_idle()
    (task,) = tasks(sandbox)
    assert task["description"].count("— 13.09.2025") == 3
    assert task["dueToDate"] == "2025-09-13 11:12:30"  # the due date is kept


def test_the_callback_closes_the_task_with_a_note(svc, sandbox):
    missed(svc, "cb-1")
    svc.wait_idle()
    answered(svc, "cb-2")
    svc.wait_idle()
    (task,) = tasks(sandbox)
    assert task["done"] is True
    (note,) = task["notes"]
    assert "ответил доб. 151" in note["description"] and "13.09.2025" in note["description"]
    with svc.app.app_context():  # who closed it, for the analytics' «tasks closed» per employee
        assert db.session.execute(select(MsTask.state, MsTask.closed_by_ext)).all() == [("closed", "151")]


def test_a_callback_right_after_the_miss_still_closes_the_task(svc, sandbox):
    missed(svc, "q-1")
    answered(svc, "q-2")  # no wait: the task is being created while the callback ends
    svc.wait_idle()
    (task,) = tasks(sandbox)
    assert task["done"] is True and len(task["notes"]) == 1


def test_a_callback_that_asked_before_the_miss_queued_its_task_still_closes_it(svc, sandbox, monkeypatch):
    """The two calls sync on two workers: here the callback's sync asks whether the caller has a task
    before the miss's sync has queued the task's work, so nothing is queued to close it."""
    original, asked = Tasks.after_call, threading.Event()

    def callback_first(self, snap, cfg, save):
        if snap.call_status == "answered":
            original(self, snap, cfg, save)
            asked.set()
        else:
            asked.wait(10)
            original(self, snap, cfg, save)

    monkeypatch.setattr(Tasks, "after_call", callback_first)
    missed(svc, "r-1")
    answered(svc, "r-2")
    svc.wait_idle()
    assert asked.is_set()
    (task,) = tasks(sandbox)
    assert task["done"] is True and "клиент перезвонил, ответил доб. 151" in task["notes"][0]["description"]


def test_an_outgoing_answered_call_closes_it_too(svc, sandbox):
    missed(svc, "o-1")
    svc.wait_idle()
    answered(svc, "o-2", direction="out", ext="152")
    svc.wait_idle()
    (task,) = tasks(sandbox)
    assert task["done"] is True and "доб. 152 дозвонился" in task["notes"][0]["description"]
    with svc.app.app_context():
        assert db.session.scalar(select(MsTask.closed_by_ext)) == "152"


def test_a_task_a_person_completed_is_left_alone(svc, sandbox):
    missed(svc, "p-1")
    svc.wait_idle()
    (first,) = tasks(sandbox)
    first["done"] = True  # the manager ticked it off in MoySklad
    before = dict(first)
    missed(svc, "p-2")
    svc.wait_idle()
    assert len(tasks(sandbox)) == 2
    assert {k: v for k, v in tasks(sandbox)[0].items()} == before  # never reopened or edited
    assert "p-2" not in tasks(sandbox)[0]["description"] and not tasks(sandbox)[1]["done"]


def test_a_deleted_task_is_replaced_by_a_new_one(svc, sandbox):
    missed(svc, "d-1")
    svc.wait_idle()
    sandbox.state.accounts["demo"].tasks.clear()
    missed(svc, "d-2")
    svc.wait_idle()
    (task,) = tasks(sandbox)
    assert task["description"].count("— 13.09.2025") == 1


def test_a_lost_create_answer_makes_no_duplicate(svc, sandbox):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"lose_next": 1, "api": "json"})
    missed(svc, "l-1")
    svc.wait_idle(30, serve_backoff=True)
    assert len(tasks(sandbox)) == 1


def test_a_503_storm_still_yields_exactly_one_task(svc, sandbox):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"fail_rate": 0.5, "api": "json"})
    for n in range(3):
        missed(svc, f"st-{n}")
    time.sleep(2)
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
    svc.wait_idle(60, serve_backoff=True)
    (task,) = tasks(sandbox)
    assert task["description"].count("— 13.09.2025") == 3
    assert len(calls(sandbox)) == 3


def test_an_account_without_crm_is_recorded_once_and_calls_go_on(svc, sandbox):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"tasks_disabled": True})
    for n in range(3):
        missed(svc, f"c-{n}", phone=f"+37529711{n:04d}")
        svc.wait_idle()
    assert tasks(sandbox) == [] and len(calls(sandbox)) == 3 and all(c["endTime"] for c in calls(sandbox))
    with svc.app.app_context():
        rows = db.session.scalars(select(IntegrationLog).where(IntegrationLog.event_type == "breaker.open")).all()
        assert len(rows) == 1 and "CRM" in rows[0].error_message
        assert db.session.scalar(select(func.count()).select_from(Job).where(Job.status == "dead")) == 0
    creates = [r for r in sandbox.state.log if r["path"].endswith("/entity/task") and r["method"] == "POST"]
    assert len(creates) == 1  # suspended after the first refusal
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
    svc.configure(missed_calls={"due_minutes": 45})  # saving the config resumes task creation
    missed(svc, "c-9")
    svc.wait_idle()
    assert len(tasks(sandbox)) == 1


def test_counters_in_metrics_and_panel(svc, sandbox):
    missed(svc, "k-1")
    svc.wait_idle()
    answered(svc, "k-2")
    svc.wait_idle()
    text = requests.get(f"{svc.url}/metrics", timeout=5).text
    assert 'ms_tasks_total{action="opened"}' in text and 'ms_tasks_total{action="closed"}' in text
    with svc.app.app_context():
        panel = svc.app.extensions["ms"].admin.panel("0367")
    assert panel["tasks_opened"] == 1 and panel["tasks_closed"] == 1
