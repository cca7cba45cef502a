"""Click-to-call over real sockets: MoySklad's webhook -> one originate request to the PBX."""
import hashlib

import pytest
import requests
from sqlalchemy import func, select

from msapp.db.models import IntegrationLog, Job
from msapp.extensions import db
from msapp.services.click_to_call import check_signature, signature_candidates
from tests.service_harness import FakeOriginate, Service, wait_for

pytestmark = pytest.mark.e2e
CLICK = {"srcNumber": "152", "destNumber": "+375445613954", "uid": "sidorov@demo"}


@pytest.fixture
def svc(db_url, tmp_path, sandbox, pbx):
    service = Service(db_url, tmp_path, sandbox, MS_ORIGINATE_URL=pbx.url)
    service.add_enterprise(signature_mode="log")
    yield service
    service.stop()


def hook_url(svc):
    return svc.webhook_url()


def jobs(svc):
    with svc.app.app_context():
        return db.session.scalar(select(func.count()).select_from(Job).where(Job.kind == "originate"))


def test_one_click_is_one_originate(svc, pbx):
    r = requests.post(hook_url(svc), json=CLICK)
    assert r.status_code == 200 and r.json() == {"success": True}
    assert wait_for(lambda: pbx.requests)
    svc.wait_idle()  # the job has run to its end: nothing more will be dialled
    assert pbx.requests == [{"code": ["152"], "phone": ["+375445613954"], "clientId": ["client-secret-1"]}]
    with svc.app.app_context():
        rows = db.session.scalars(select(IntegrationLog).where(IntegrationLog.event_type == "originate")).all()
        assert len(rows) == 1 and rows[0].status == "success"
        assert "client-secret-1" not in str(rows[0].request_data)


def test_form_body_and_national_number(svc, pbx):
    r = requests.post(hook_url(svc), data={"srcNumber": "150", "destNumber": "8 (029) 711-12-22", "uid": "ivanov@demo"})
    assert r.status_code == 200
    assert wait_for(lambda: pbx.requests)
    assert pbx.requests[0]["phone"] == ["+375297111222"]


def test_repeated_click_within_5_seconds_starts_one_call(svc, pbx):
    for _ in range(3):
        assert requests.post(hook_url(svc), json=CLICK).status_code == 200
    other = requests.post(hook_url(svc), json={**CLICK, "destNumber": "+375297111222"})
    assert other.status_code == 200
    assert wait_for(lambda: len(pbx.requests) >= 2)
    svc.wait_idle()
    assert sorted(r["phone"][0] for r in pbx.requests) == ["+375297111222", "+375445613954"]


@pytest.mark.parametrize("suffix", ["6f1b9a9e-6a55-4c8e-9d1e-2f0d7b1c9a10", "%25", "_", "%", "..%2F..%2Fadmin",
                                    "6f1b9a9e-6a55-4c8e-9d1e-2f0d7b1c9a1%25"])
def test_unknown_and_malformed_uuids_are_404_alike(svc, pbx, suffix):
    r = requests.post(f"{svc.url}/ms/webhook/{suffix}", json=CLICK)
    assert r.status_code == 404 and r.json() == {"error": "unknown webhook"}
    assert jobs(svc) == 0


def test_regenerated_uuid_stops_working(svc, pbx):
    old = hook_url(svc)
    with svc.app.app_context():
        svc.app.extensions["ms"].configs.regenerate_webhook("0367")
    assert requests.post(old, json=CLICK).status_code == 404
    assert requests.post(hook_url(svc), json=CLICK).status_code == 200


def test_disabled_is_403(svc, pbx):
    with svc.app.app_context():
        svc.app.extensions["ms"].configs.save("0367", {"enabled": False})
    assert requests.post(hook_url(svc), json=CLICK).status_code == 403
    assert jobs(svc) == 0


@pytest.mark.parametrize("change,field", [
    ({"srcNumber": "152; reboot"}, "srcNumber"),
    ({"srcNumber": "$(id)"}, "srcNumber"),
    ({"srcNumber": ""}, "srcNumber"),
    ({"srcNumber": 152}, "srcNumber"),
    ({"destNumber": "+375445613954`id`"}, "destNumber"),
    ({"destNumber": "1' OR '1'='1"}, "destNumber"),
    ({"destNumber": "+375445613954&clientId=x"}, "destNumber"),
    ({"destNumber": None}, "destNumber"),
])
def test_metacharacters_are_rejected(svc, pbx, change, field):
    r = requests.post(hook_url(svc), json={**CLICK, **change})
    assert r.status_code == 400 and r.json()["field"] == field
    assert jobs(svc) == 0 and pbx.requests == []  # refused before anything was stored: nothing can dial


def test_non_json_body_is_400(svc):
    r = requests.post(hook_url(svc), data=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and jobs(svc) == 0


def signed(svc, sandbox, body):
    key = sandbox.state.keys()["demo"]["phone_api_key"]
    digest = hashlib.md5((key + body["srcNumber"] + body["destNumber"] + body["uid"]).encode()).hexdigest().upper()  # noqa: S324
    return {"Lognex-Content-MD5": digest}


@pytest.mark.parametrize("mode,good,bad,missing", [("off", 200, 200, 200), ("log", 200, 200, 200),
                                                   ("enforce", 200, 401, 401)])
def test_signature_modes(svc, sandbox, pbx, mode, good, bad, missing):
    with svc.app.app_context():
        svc.app.extensions["ms"].configs.save("0367", {"signature_mode": mode})
    url = hook_url(svc)
    assert requests.post(url, json=CLICK, headers=signed(svc, sandbox, CLICK)).status_code == good
    body2 = {**CLICK, "destNumber": "+375297111222"}
    assert requests.post(url, json=body2, headers={"Lognex-Content-MD5": "0" * 32}).status_code == bad
    body3 = {**CLICK, "destNumber": "+375331234567"}
    assert requests.post(url, json=body3).status_code == missing
    if mode == "log":
        with svc.app.app_context():
            errors = db.session.scalars(select(IntegrationLog).where(IntegrationLog.event_type == "webhook.click",
                                                                     IntegrationLog.status == "error")).all()
            assert len(errors) == 2  # the bad and the missing signature were logged


def test_signature_candidates():
    body = {"srcNumber": "100", "destNumber": "+74959999999", "uid": "admin@companyname"}
    raw = b'{"srcNumber":"100","destNumber":"+74959999999","uid":"admin@companyname"}'
    key = "d03627d59c1948a0f9a6aa1e267c954bfd0301ec"
    candidates = signature_candidates(key, body, raw)
    assert len(set(candidates)) >= 4 and all(len(c) == 32 and c == c.upper() for c in candidates)
    for c in candidates:
        assert check_signature(key, c.lower(), body, raw)
    assert not check_signature(key, "802EFD4A933386248031D2928612A13F", body, raw)
    assert not check_signature("", candidates[0], body, raw) and not check_signature(key, None, body, raw)


def test_pbx_errors_are_not_repeated(db_url, tmp_path, sandbox):
    pbx = FakeOriginate(status=500)
    service = Service(db_url, tmp_path, sandbox, MS_ORIGINATE_URL=pbx.url)
    try:
        service.add_enterprise()
        requests.post(hook_url(service), json=CLICK)
        assert wait_for(lambda: pbx.requests)
        service.wait_idle()  # the job has run to its end (dead): it will never dial again
        assert len(pbx.requests) == 1
        with service.app.app_context():
            job = db.session.scalars(select(Job).where(Job.kind == "originate")).one()
            assert job.status == "dead" and "500" in job.last_error
    finally:
        service.stop()
        pbx.stop()


def test_unreachable_pbx_is_retried(db_url, tmp_path, sandbox):
    from tests.conftest import free_port

    service = Service(db_url, tmp_path, sandbox,
                      MS_ORIGINATE_URL=f"http://127.0.0.1:{free_port()}/api/makecallexternal")
    try:
        service.add_enterprise()
        requests.post(hook_url(service), json=CLICK)
        def attempts():
            with service.app.app_context():
                return db.session.scalar(select(Job.attempts).where(Job.kind == "originate")) or 0

        assert wait_for(lambda: attempts() >= 2)  # connection refused: nothing reached the PBX, so it retries
    finally:
        service.stop()


class DroppingPbx:
    """A PBX originate service that reads the whole request, then drops the connection unanswered:
    the call may have been placed, and nothing tells the service so."""

    def __init__(self):
        import socket
        import threading

        self.requests = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/api/makecallexternal"

        def serve():
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data.split(b"\r\n", 1)[0].decode())
                conn.close()

        threading.Thread(target=serve, daemon=True).start()

    def stop(self):
        self.sock.close()


def test_one_click_dials_once_when_the_pbx_drops_the_connection(db_url, tmp_path, sandbox):
    pbx = DroppingPbx()
    service = Service(db_url, tmp_path, sandbox, MS_ORIGINATE_URL=pbx.url)
    try:
        service.add_enterprise()
        assert requests.post(hook_url(service), json=CLICK).status_code == 200

        def job():
            with service.app.app_context():
                return db.session.scalars(select(Job).where(Job.kind == "originate")).one()

        assert wait_for(lambda: job().status == "dead")  # settled: it will never run again
        assert len(pbx.requests) == 1 and pbx.requests[0].startswith("GET /api/makecallexternal?code=152")
        assert "outcome unknown" in job().last_error
        with service.app.app_context():
            rows = db.session.scalars(select(IntegrationLog).where(IntegrationLog.event_type == "originate")).all()
            (row,) = rows
            assert "outcome unknown" in row.error_message and "not repeated" in row.error_message
    finally:
        service.stop()
        pbx.stop()
