"""Bad input on the internal routes: clear 4xx, never a 500, never a stored job."""
import pytest
from sqlalchemy import func, select

from msapp.db.models import Call, Enterprise, Job
from msapp.extensions import db
from tests.conftest import make_app

GOOD = {"enterprise_number": "0367", "unique_id": "1757772742.60", "event_type": "dial", "direction": "in",
        "phone": "+375296254070", "extension": "151", "extensions": ["150", "151"],
        "start_time": "2025-09-13 17:12:22", "raw": {}}


@pytest.fixture
def client(app):
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
        db.session.commit()
        app.extensions["ms"].configs.save("0367", {"enabled": True, "integration_code": "k" * 40})
    return app.test_client()


def jobs(app):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Job))


def post(client, body, path="call-event", **kw):
    return client.post(f"/internal/ms/{path}", json=body, **kw)


@pytest.mark.parametrize("change,status,field", [
    ({"enterprise_number": None}, 400, "enterprise_number"),
    ({"enterprise_number": "9999"}, 404, "enterprise_number"),
    ({"enterprise_number": "../0367"}, 400, "enterprise_number"),
    ({"event_type": "ring"}, 400, "event_type"),
    ({"event_type": None}, 400, "event_type"),
    ({"direction": "sideways"}, 400, "direction"),
    ({"phone": "not a phone"}, 400, "phone"),
    ({"phone": "+375296254070; rm -rf /"}, 400, "phone"),
    ({"unique_id": None}, 400, "unique_id"),
    ({"unique_id": "a b"}, 400, "unique_id"),
    ({"unique_id": "x" * 200}, 400, "unique_id"),
    ({"extension": "15a"}, 400, "extension"),
    ({"extensions": ["150", "x"]}, 400, "extensions"),
    ({"extensions": "150,abc"}, 400, "extensions"),
    ({"start_time": "yesterday"}, 400, "start_time"),
    ({"call_status": "maybe"}, 400, "call_status"),
    ({"record_url": "javascript:alert(1)"}, 400, "record_url"),
    ({"raw": "text"}, 400, "raw"),
])
def test_bad_fields(client, app, change, status, field):
    r = post(client, {**GOOD, **change})
    assert r.status_code == status
    assert r.get_json()["field"] == field and r.get_json()["error"]
    assert jobs(app) == 0


@pytest.mark.parametrize("data,ctype,status", [
    (b"not json", "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (b"", "application/json", 400),
    (b"a=1", "application/x-www-form-urlencoded", 415),
    (b"[" * 5000 + b"]" * 5000, "application/json", 400),
])
def test_not_json(client, app, data, ctype, status):
    r = client.post("/internal/ms/call-event", data=data, content_type=ctype)
    assert r.status_code == status and "error" in r.get_json()
    assert jobs(app) == 0


def test_body_over_64_kib(client, app):
    r = post(client, {**GOOD, "raw": {"pad": "x" * 70_000}})
    assert r.status_code == 413 and "64 KiB" in r.get_json()["error"]
    assert jobs(app) == 0


@pytest.mark.parametrize("environ,headers", [
    ({}, {"X-Forwarded-For": "203.0.113.5"}),
    ({}, {"X-Real-IP": "203.0.113.5"}),
    ({}, {"Forwarded": "for=203.0.113.5"}),
    ({}, {"x-forwarded-host": "bot.example.by"}),
    ({}, {"X-FORWARDED-PROTO": "https"}),
    ({"REMOTE_ADDR": "203.0.113.5"}, {}),
    ({"REMOTE_ADDR": "::ffff:203.0.113.5"}, {}),
    ({"REMOTE_ADDR": "10.0.0.2"}, {}),
])
def test_only_local_unproxied_requests(client, app, environ, headers):
    r = post(client, GOOD, environ_base=environ, headers=headers)
    assert r.status_code == 403 and jobs(app) == 0


def test_ipv6_loopback_is_local(client):
    assert post(client, GOOD, environ_base={"REMOTE_ADDR": "::1"}).status_code == 202
    assert post(client, {**GOOD, "unique_id": "u-2"}, environ_base={"REMOTE_ADDR": "::ffff:127.0.0.1"}).status_code == 202


def test_internal_token_when_configured(db_url, tmp_path):
    app = make_app(db_url, tmp_path, MS_INTERNAL_TOKEN="int-secret")
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
        db.session.commit()
        app.extensions["ms"].configs.save("0367", {"enabled": True, "integration_code": "k" * 40})
    c = app.test_client()
    assert post(c, GOOD).status_code == 403
    assert post(c, GOOD, headers={"X-Internal-Token": "wrong"}).status_code == 403
    assert post(c, GOOD, headers={"X-Internal-Token": "int-secret"}).status_code == 202


def test_raw_asterisk_fallbacks(client, app):
    body = {"enterprise_number": "0367", "event_type": "hangup", "raw": {
        "UniqueId": "1757772742.61", "Phone": "80296254070", "CallType": 0, "Extensions": ["150"],
        "StartTime": "2025-09-13 17:12:22", "EndTime": "2025-09-13 17:13:00", "CallStatus": "2"}}
    assert post(client, body).status_code == 202
    with app.app_context():
        call = db.session.scalars(select(Call)).one()
        assert (call.unique_id, call.phone, call.direction, call.call_status) == (
            "1757772742.61", "+375296254070", "in", "answered")
        assert call.extensions == ["150"] and call.end_time is not None


def test_internal_calls_are_ignored(client, app):
    r = post(client, {**GOOD, "direction": None, "phone": "152", "raw": {"CallType": 2}})
    assert r.status_code == 200 and r.get_json() == {"status": "ignored", "reason": "internal call"}
    assert jobs(app) == 0


def test_compat_aliases_answer_the_old_bodies(client, app):
    r = post(client, {**GOOD, "event_type": "whatever"}, path="incoming-call")
    assert r.status_code == 200 and r.get_json() == {"status": "success"}
    r = post(client, {**GOOD, "call_status": "missed"}, path="hangup-call")
    assert r.get_json() == {"status": "success"}
    r = post(client, {**GOOD, "unique_id": "rec-1", "call_status": "answered"}, path="recovery-call")
    assert r.get_json() == {"status": "success"}
    assert post(client, {**GOOD, "phone": "x"}, path="incoming-call").status_code == 400
    with app.app_context():
        rec = db.session.scalars(select(Call).where(Call.unique_id == "rec-1")).one()
        assert rec.notify is False and rec.status == "ended"


def test_notify_incoming(client, app):
    r = post(client, {"enterprise_number": "0367", "phone": "+375296254070", "extension": "151"},
             path="notify-incoming")
    assert r.status_code == 202
    with app.app_context():
        call = db.session.scalars(select(Call)).one()
        assert call.direction == "in" and call.extensions == ["151"] and call.unique_id.startswith("notify-")


def test_same_event_twice_is_one_row_and_one_pending_job(client, app):
    assert post(client, GOOD).status_code == 202
    assert post(client, GOOD).status_code == 202
    assert post(client, {**GOOD, "event_type": "answer"}).status_code == 202
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Call)) == 1
        assert db.session.scalar(select(func.count()).select_from(Job)) == 1  # coalesced while pending


def test_a_body_is_read_alike_on_both_paths(client, app):
    """A plain `application/json` body with a length is read straight from the WSGI input; a charset, no
    length (chunked) or a content type to parse take werkzeug's path: every one is stored the same, and
    the body can still be read after the fast read."""
    import io
    import json

    from flask import request

    from msapp.web.http_utils import json_body

    def body(uid):
        return json.dumps({**GOOD, "unique_id": uid}).encode()

    assert client.post("/internal/ms/call-event", data=body("a-1"), content_type="application/json").status_code == 202
    assert client.post("/internal/ms/call-event", data=body("a-2"),
                       content_type="application/json; charset=utf-8").status_code == 202
    assert client.post("/internal/ms/call-event", input_stream=io.BytesIO(body("a-3")), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"}).status_code == 202
    assert client.post("/internal/ms/call-event", data=body("a-4"), content_type="application/vnd.pbx+json").status_code == 202
    with app.app_context():
        assert sorted(db.session.scalars(select(Call.unique_id))) == ["a-1", "a-2", "a-3", "a-4"]
    with app.test_request_context("/x", method="POST", data=body("a-5"), content_type="application/json"):
        assert json_body(unread=True)["unique_id"] == "a-5" and request.get_json()["unique_id"] == "a-5"
    with app.test_request_context("/x", method="POST", data=b"x" * 70_000, content_type="application/json"):
        with pytest.raises(Exception, match="413"):
            json_body(unread=True)
