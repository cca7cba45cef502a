"""The admin face in a process of its own beside the one that takes the events, on one SQLite file
(docs/operations.md, "The admin face in a process of its own"): real `ms serve` processes, the sandbox."""
import subprocess
import sys

import pytest
import requests

from msapp.db.models import Enterprise
from msapp.extensions import db
from tests.conftest import ADMIN_TOKEN, dispose, free_port, make_app
from tests.service_harness import DEFAULT_CFG, service_env, shown_cards, start_process, wait_for

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
UID = "split-1"


def _call(events_url: str) -> None:
    base = {"enterprise_number": "0367", "unique_id": UID, "direction": "in", "phone": "+375291234567"}
    for body in ({**base, "event_type": "dial", "extensions": ["151"]},
                 {**base, "event_type": "answer", "extension": "151"},
                 {**base, "event_type": "hangup", "call_status": "answered", "duration": 42}):
        r = requests.post(f"{events_url}/internal/ms/call-event", json=body, timeout=10)
        assert r.status_code == 202, r.text


def _synced(admin_url: str) -> bool:
    found = requests.get(f"{admin_url}/ms-admin/api/calls/0367", params={"q": UID}, headers=BEARER, timeout=10)
    calls = found.json()["calls"]
    return bool(calls) and calls[0]["sync"]["state"] == "done" and calls[0]["duration"] == 42


@pytest.mark.e2e
def test_the_admin_face_in_a_process_of_its_own_on_one_sqlite_file(tmp_path, sandbox):
    db_url = f"sqlite:///{tmp_path / 'ms.db'}"
    app = make_app(db_url, tmp_path)
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co 0367", integrations_config={}))
        db.session.commit()
    dispose(app)
    events_port, admin_port = free_port(), free_port()
    events_url, admin_url = f"http://127.0.0.1:{events_port}", f"http://127.0.0.1:{admin_port}"
    common = {"MS_ADMIN_TOKEN": ADMIN_TOKEN, "MS_PUBLIC_URL": events_url, "MS_PHONE_API_URL": sandbox.phone_url,
              "MS_JSON_API_URL": sandbox.json_url}
    events = start_process(service_env(db_url, events_port, tmp_path, 2, MS_FACES="internal,webhook", **common), events_port)
    procs = [events]
    try:
        # no workers: it takes no SQLite lock, so it starts beside the process that holds it
        procs.append(start_process(service_env(db_url, admin_port, tmp_path, 0, MS_FACES="admin", **common),
                                   admin_port))
        keys = sandbox.state.keys()["demo"]
        saved = requests.put(f"{admin_url}/ms-admin/api/config/0367", headers=BEARER, timeout=10,
                             json={**DEFAULT_CFG, "integration_code": keys["phone_api_key"],
                                   "api_token": keys["json_api_token"]})
        assert saved.status_code == 200, saved.text
        assert saved.json()["webhook_url"].startswith(f"{events_url}/ms/webhook/")  # the events' address

        _call(events_url)  # the config saved by the admin process is the one the events process reads
        assert wait_for(lambda: _synced(admin_url), timeout=20)  # the events' workers synced it; the desk sees it

        # a job the admin process queues (the test card's hide, due in 5 s) is run by the events' workers
        shown = requests.post(f"{admin_url}/ms-admin/api/test-popup/0367", json={"extension": "152"},
                              headers=BEARER, timeout=10)
        assert shown.status_code == 200 and "152" in shown_cards(sandbox), shown.text
        assert wait_for(lambda: "152" not in shown_cards(sandbox), timeout=20)

        # each process answers only its faces (the probes on both)
        assert requests.post(f"{admin_url}/internal/ms/call-event", json={}, timeout=10).status_code == 404
        assert requests.get(f"{events_url}/ms-admin/api/config/0367", headers=BEARER, timeout=10).status_code == 404
        assert requests.get(f"{events_url}/ms-admin/login", timeout=10).status_code == 404
        assert all(requests.get(f"{u}/healthz", timeout=10).status_code == 200 for u in (events_url, admin_url))

        # a second process with workers is still refused: the events process holds the file
        other_port = free_port()
        second = subprocess.run([sys.executable, "-m", "msapp", "serve"], capture_output=True, text=True, timeout=60,
                                env=service_env(db_url, other_port, tmp_path, 1, **common))
        assert second.returncode == 2 and "already runs the workers" in second.stderr
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
