"""Property-based hostile input (hypothesis) over the internal, webhook and admin config routes:
never a 500, and a rejected request never leaves a job behind."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from msapp.db.models import Enterprise, Job
from msapp.extensions import db
from tests.conftest import ADMIN_TOKEN, dispose, make_app

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=40), st.sampled_from(["", "+375296254070", "151", "dial", "hangup", "in",
                                                           "0367", "2025-09-13 17:12:22", "%25", "../", "\x00"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=12), inner, max_size=4), max_leaves=12)
EVENT_KEYS = ["enterprise_number", "unique_id", "event_type", "direction", "phone", "extension", "extensions",
              "start_time", "end_time", "call_status", "record_url", "raw", "duration"]
events = st.fixed_dictionaries({}, optional={k: json_values for k in EVENT_KEYS})


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    app = make_app(f"sqlite:///{tmp / 'ms.db'}", tmp)
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
        db.session.commit()
        cfg = app.extensions["ms"].configs.save("0367", {"enabled": True, "integration_code": "k" * 40})
    app.config["WEBHOOK"] = cfg["webhook_url"].split("/ms/webhook/")[1]
    yield app
    dispose(app)


def job_count(app):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Job))


def check(app, response, before):
    assert response.status_code != 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert job_count(app) == before, "a rejected request stored a job"
        assert "error" in response.get_json()


@pytest.mark.parametrize("route", ["call-event", "notify-incoming", "log-call", "incoming-call", "hangup-call",
                                   "recovery-call"])
@SETTINGS
@given(body=st.one_of(events, json_values))
def test_internal_event_routes(app, route, body):
    before = job_count(app)
    check(app, app.test_client().post(f"/internal/ms/{route}", json=body), before)


@SETTINGS
@given(data=st.binary(max_size=300), ctype=st.sampled_from(["application/json", "text/plain", "",
                                                            "application/x-www-form-urlencoded", "application/json; charset=koi8-r"]))
def test_internal_raw_bytes(app, data, ctype):
    before = job_count(app)
    check(app, app.test_client().post("/internal/ms/call-event", data=data, content_type=ctype), before)


@pytest.mark.parametrize("route", ["customer-by-phone", "responsible-extension", "customer-name", "customer-profile"])
@SETTINGS
@given(params=st.dictionaries(st.sampled_from(["enterprise_number", "phone", "x"]), st.text(max_size=30), max_size=3))
def test_lookup_routes(app, route, params):
    r = app.test_client().get(f"/internal/ms/{route}", query_string=params)
    assert r.status_code != 500


@SETTINGS
@given(suffix=st.text(max_size=60), body=json_values)
def test_webhook_paths(app, suffix, body):
    before = job_count(app)
    r = app.test_client().post("/ms/webhook/" + suffix, json=body)
    assert r.status_code != 500
    if r.status_code >= 400:
        assert job_count(app) == before


@SETTINGS
@given(body=st.one_of(st.fixed_dictionaries({}, optional={k: json_values for k in ("srcNumber", "destNumber", "uid")}),
                      json_values),
       signature=st.one_of(st.none(), st.text(max_size=40)))
def test_webhook_bodies(app, body, signature):
    before = job_count(app)
    headers = {"Lognex-Content-MD5": signature} if signature and signature.isascii() and signature.isprintable() else {}
    r = app.test_client().post(f"/ms/webhook/{app.config['WEBHOOK']}", json=body, headers=headers)
    check(app, r, before)


CONFIG_KEYS = ["enabled", "integration_code", "api_token", "timezone", "default_region", "notifications",
               "incoming_call_actions", "outgoing_call_actions", "signature_mode", "webhook_uuid", "phone_api_url",
               "create_client", "create_order", "order_source", "employee_mapping"]


@SETTINGS
@given(body=st.one_of(st.fixed_dictionaries({}, optional={k: json_values for k in CONFIG_KEYS}), json_values))
def test_config_api(app, body):
    r = app.test_client().put("/ms-admin/api/config/0367", json=body,
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code in (200, 400), r.get_data(as_text=True)
    if r.status_code == 400:
        assert r.get_json()["error"]
    # whatever was accepted, the stored config still reads back, masked
    read = app.test_client().get("/ms-admin/api/config/0367", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert read.status_code == 200 and read.get_json()["integration_code"].startswith("••••")
    reset = app.test_client().put("/ms-admin/api/config/0367", json={"enabled": True, "integration_code": "k" * 40},
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert reset.status_code == 200


@pytest.mark.parametrize("headers,environ", [
    ({"X-Forwarded-For": "127.0.0.1"}, {}), ({"Forwarded": "for=127.0.0.1"}, {}), ({"X-Real-IP": "::1"}, {}),
    ({}, {"REMOTE_ADDR": "192.0.2.1"}), ({}, {"REMOTE_ADDR": "::ffff:192.0.2.1"}), ({}, {"REMOTE_ADDR": "garbage"}),
])
def test_proxy_and_peer_tricks(app, headers, environ):
    before = job_count(app)
    r = app.test_client().post("/internal/ms/call-event", headers=headers, environ_base=environ, json={
        "enterprise_number": "0367", "unique_id": "x1", "event_type": "dial", "direction": "in",
        "phone": "+375296254070", "extensions": ["150"]})
    assert r.status_code == 403 and job_count(app) == before


def test_deep_and_oversized_json(app):
    before = job_count(app)
    deep = "[" * 20000 + "]" * 20000
    r = app.test_client().post("/internal/ms/call-event", data=deep, content_type="application/json")
    assert r.status_code in (400, 413)
    big = json.dumps({"enterprise_number": "0367", "raw": {"x": "y" * 70000}})
    assert app.test_client().post("/internal/ms/call-event", data=big, content_type="application/json").status_code == 413
    assert app.test_client().post(f"/ms/webhook/{app.config['WEBHOOK']}", data=big,
                                  content_type="application/json").status_code == 413
    assert job_count(app) == before
