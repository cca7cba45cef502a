"""Fault runs over real sockets: MoySklad refusing the key, and a burst cut by SIGKILL."""
import signal
import time

import pytest
import requests
from sqlalchemy import func, select

from msapp.db.models import Enterprise, Job
from msapp.extensions import db
from tests.conftest import dispose, free_port, make_app
from tests.service_harness import Service, calls, phone_requests, service_env, start_process

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CALLER = "+375296254070"


def test_refused_key_pauses_the_enterprise_and_keeps_its_calls(db_url, tmp_path, sandbox):
    svc = Service(db_url, tmp_path, sandbox)
    try:
        svc.add_enterprise(integration_code="revoked-key-0000000000")
        for n in range(6):
            svc.event(unique_id=f"k{n}", event_type="dial", direction="in", phone=CALLER, extensions=["150"])
            svc.event(unique_id=f"k{n}", event_type="hangup", direction="in", phone=CALLER, call_status="missed")
        time.sleep(2.0)
        refused = [r for r in sandbox.state.log if r["status"] == 401]
        # at most the jobs already in flight (the per-enterprise worker cap), not a failing request per call
        assert 1 <= len(refused) <= svc.app.extensions["ms"].pool.per_enterprise < 6
        with svc.app.app_context():
            counts = dict(db.session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            assert counts.get("dead", 0) == 0 and counts.get("pending", 0) >= 6  # every call kept, waiting
            panel = svc.app.extensions["ms"].admin.panel("0367")
            assert panel["paused"] and "authentication" in panel["paused"]["reason"]
        keys = sandbox.state.keys()["demo"]
        with svc.app.app_context():  # the admin pastes the right key
            svc.app.extensions["ms"].configs.save("0367", {"integration_code": keys["phone_api_key"]})
        svc.wait_idle(30)
        done = calls(sandbox)
        assert sorted(c["externalId"] for c in done) == [f"k{n}" for n in range(6)]
        assert all(c["endTime"] for c in done)
        assert len([r for r in sandbox.state.log if r["status"] == 401]) == len(refused)
    finally:
        svc.stop()


def test_sigkill_in_the_middle_of_a_burst(db_url, tmp_path, sandbox):
    app = make_app(db_url, tmp_path, MS_PHONE_API_URL=sandbox.phone_url)
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
        db.session.commit()
        app.extensions["ms"].configs.save("0367", {"enabled": True,
                                                   "integration_code": sandbox.state.keys()["demo"]["phone_api_key"]})
    dispose(app)
    port = free_port()
    env = service_env(db_url, port, tmp_path, workers=4, MS_PHONE_API_URL=sandbox.phone_url)
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"latency_ms": 80})
    url = f"http://127.0.0.1:{port}/internal/ms/call-event"
    accepted = set()
    proc = start_process(env, port)
    session = requests.Session()
    try:
        for n in range(40):
            uid = f"burst-{n}"
            for kind, extra in (("dial", {"extensions": ["150", "151"]}), ("hangup", {"call_status": "missed"})):
                r = session.post(url, json={"enterprise_number": "0367", "unique_id": uid, "direction": "in",
                                            "phone": CALLER, "event_type": kind, **extra}, timeout=5)
                assert r.status_code == 202
            accepted.add(uid)
            if n == 25:
                proc.send_signal(signal.SIGKILL)  # mid-burst, with MoySklad requests in flight
                proc.wait(10)
                proc = start_process(env, port)
                session = requests.Session()
        requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
        deadline = time.time() + 60
        while time.time() < deadline and len([c for c in calls(sandbox) if c["endTime"]]) < len(accepted):
            time.sleep(0.2)
        done = calls(sandbox)
        ids = [c["externalId"] for c in done]
        assert sorted(set(ids)) == sorted(accepted), "an acknowledged call was lost"
        assert len(ids) == len(set(ids)), "a call was created twice"
        assert all(c["endTime"] for c in done)
        assert len(phone_requests(sandbox)) <= 2 * len(accepted) + 4  # at most the requests in flight repeated
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
