"""The service killed with SIGKILL mid-call and restarted: the call completes, once."""
import signal
import time

import pytest
import requests

from msapp.db.models import Enterprise
from msapp.extensions import db
from tests.conftest import dispose, free_port, make_app
from tests.service_harness import calls, service_env, shown_cards, start_process

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CALLER = "+375296254070"


def test_sigkill_mid_call_then_restart(db_url, tmp_path, sandbox):
    app = make_app(db_url, tmp_path, MS_PHONE_API_URL=sandbox.phone_url, MS_JSON_API_URL=sandbox.json_url)
    keys = sandbox.state.keys()["demo"]
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
        db.session.commit()
        app.extensions["ms"].configs.save("0367", {"enabled": True, "integration_code": keys["phone_api_key"]})
    dispose(app)
    port = free_port()
    env = service_env(db_url, port, tmp_path, workers=2, MS_PHONE_API_URL=sandbox.phone_url,
                      MS_JSON_API_URL=sandbox.json_url)
    url = f"http://127.0.0.1:{port}/internal/ms/call-event"
    call = dict(enterprise_number="0367", unique_id="crash-1", direction="in", phone=CALLER)

    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"latency_ms": 1500, "api": "phone"})
    proc = start_process(env, port)
    try:
        r = requests.post(url, json={**call, "event_type": "dial", "extensions": ["150", "151"]}, timeout=5)
        assert r.status_code == 202
        time.sleep(0.5)  # the create is now inside the sandbox, waiting out its latency
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(1.5)  # the sandbox applies the create; its answer goes nowhere
        assert len(calls(sandbox)) == 1
        requests.post(f"{sandbox.url}/sandbox/api/faults", json={})

        proc = start_process(env, port)  # same host:port, so it takes its orphaned job back at once
        r = requests.post(url, json={**call, "event_type": "hangup", "call_status": "missed"}, timeout=5)
        assert r.status_code == 202
        deadline = time.time() + 20
        while time.time() < deadline and not (calls(sandbox) and calls(sandbox)[0]["endTime"]):
            time.sleep(0.1)
        assert len(calls(sandbox)) == 1, "the create was repeated instead of probed"
        assert calls(sandbox)[0]["endTime"] and shown_cards(sandbox) == {}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
