"""Admin routes with the Flask client: pages, JSON API, and every auth and CSRF rule."""
import json
import re

import pytest
from sqlalchemy import select, update

from msapp.db.models import Enterprise, IntegrationLog, Job
from msapp.extensions import db
from tests.conftest import ADMIN_TOKEN, dispose, make_app

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def app(db_url, tmp_path, sandbox):
    app = make_app(db_url, tmp_path, MS_PHONE_API_URL=sandbox.phone_url, MS_JSON_API_URL=sandbox.json_url)
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Ромашка", secret="s", integrations_config={"other": 1}))
        db.session.add(Enterprise(number="0500", name="Василёк", integrations_config={}))
        db.session.commit()
    yield app
    dispose(app)


def configure(app, sandbox, **cfg):
    keys = sandbox.state.keys()["demo"]
    with app.app_context():
        app.extensions["ms"].configs.save("0367", {"enabled": True, "integration_code": keys["phone_api_key"],
                                                   "api_token": keys["json_api_token"], **cfg})


def csrf_from(html):
    return re.search(r'"X-CSRFToken": "([^"]+)"', html).group(1)


@pytest.fixture
def browser(app):
    """A logged-in browser session: (client, csrf token)."""
    c = app.test_client()
    page = c.get("/ms-admin/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert c.post("/ms-admin/login", data={"token": ADMIN_TOKEN, "csrf_token": token}).status_code == 302
    return c, csrf_from(c.get("/ms-admin/").text)


def hx(csrf):
    return {"HX-Request": "true", "X-CSRFToken": csrf}


# -- authentication ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/ms-admin/", "/ms-admin/?enterprise_number=0367", "/ms-admin/journal?enterprise_number=0367"])
def test_pages_need_login(app, path):
    r = app.test_client().get(path)
    assert r.status_code == 302 and r.headers["Location"].startswith("/ms-admin/login")


@pytest.mark.parametrize("method,path", [("get", "/ms-admin/api/config/0367"), ("put", "/ms-admin/api/config/0367"),
                                         ("delete", "/ms-admin/api/config/0367"), ("post", "/ms-admin/api/test/0367"),
                                         ("post", "/ms-admin/api/config/0367/webhook-uuid"),
                                         ("get", "/ms-admin/api/employees/0367"), ("post", "/ms-admin/api/employees/0367"),
                                         ("post", "/ms-admin/api/test-popup/0367")])
def test_json_routes_need_a_token(app, method, path):
    c = app.test_client()
    assert getattr(c, method)(path).status_code == 401
    assert getattr(c, method)(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_login_rejects_a_wrong_token_and_needs_csrf(app):
    c = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/ms-admin/login").text).group(1)
    r = c.post("/ms-admin/login", data={"token": "nope", "csrf_token": token})
    assert r.status_code == 401 and "Неверный токен" in r.text
    assert c.post("/ms-admin/login", data={"token": ADMIN_TOKEN}).status_code == 403  # no CSRF token
    assert c.get("/ms-admin/").status_code == 302


def test_session_cookie_flags(app):
    c = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/ms-admin/login").text).group(1)
    r = c.post("/ms-admin/login", data={"token": ADMIN_TOKEN, "csrf_token": token})
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_login_next_must_stay_inside_the_admin(app):
    c = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/ms-admin/login").text).group(1)
    r = c.post("/ms-admin/login", data={"token": ADMIN_TOKEN, "csrf_token": token, "next": "https://evil.example/"})
    assert r.headers["Location"] == "/ms-admin/"


@pytest.mark.parametrize("path,data", [("/ms-admin/config/0367", {"enabled": "on"}),
                                       ("/ms-admin/config/0367/webhook-uuid", {}),
                                       ("/ms-admin/config/0367/delete", {}), ("/ms-admin/enterprises", {"number": "9"}),
                                       ("/ms-admin/test-popup/0367", {"extension": "150"}), ("/ms-admin/logout", {}),
                                       ("/ms-admin/api/config/0367/webhook-uuid", {})])
def test_every_browser_change_needs_csrf(browser, app, path, data):
    c, _ = browser
    r = c.post(path, data=data, headers={"HX-Request": "true"})
    assert r.status_code == 403
    with app.app_context():
        assert db.session.get(Enterprise, "9") is None


def test_logout(browser):
    c, csrf = browser
    assert c.post("/ms-admin/logout", headers=hx(csrf)).headers["HX-Redirect"] == "/ms-admin/login"
    assert c.get("/ms-admin/").status_code == 302


# -- pages ---------------------------------------------------------------------------------------
def test_list_search_and_add(browser, app):
    c, csrf = browser
    page = c.get("/ms-admin/").text
    assert "Ромашка" in page and "Василёк" in page
    rows = c.get("/ms-admin/?q=Вас", headers={"HX-Request": "true", "HX-Target": "rows"}).text
    assert "Василёк" in rows and "Ромашка" not in rows and "<html" not in rows
    r = c.post("/ms-admin/enterprises", data={"number": "0777", "name": "Новая"}, headers=hx(csrf))
    assert r.headers["HX-Redirect"] == "/ms-admin/?enterprise_number=0777"
    dup = c.post("/ms-admin/enterprises", data={"number": "0777"}, headers=hx(csrf))
    assert dup.status_code == 200 and "уже есть" in dup.text
    bad = c.post("/ms-admin/enterprises", data={"number": "a b"}, headers=hx(csrf))
    assert "буквы, цифры" in bad.text


def test_enterprise_page_masks_secrets_and_stays_out_of_history(browser, app, sandbox):
    configure(app, sandbox)
    c, _ = browser
    page = c.get("/ms-admin/?enterprise_number=0367").text
    keys = sandbox.state.keys()["demo"]
    assert keys["phone_api_key"] not in page and keys["json_api_token"] not in page
    assert "••••" + keys["phone_api_key"][-4:] in page
    assert 'hx-history="false"' in page and "/ms/webhook/" in page and sandbox.phone_url in page  # read-only, from settings
    assert c.get("/ms-admin/?enterprise_number=0367").headers["Cache-Control"] == "no-store"


def test_save_with_field_errors_then_success(browser, app):
    c, csrf = browser
    r = c.post("/ms-admin/config/0367", data={"enabled": "on", "timezone": "Mars/Base", "default_region": "ZZ"},
               headers=hx(csrf))
    assert r.status_code == 200 and 'aria-invalid="true"' in r.text and "Mars/Base" in r.text
    assert "неизвестный часовой пояс" in r.text and "Исправьте" in json.loads(r.headers["HX-Trigger"])["toast"]["message"]
    r = c.post("/ms-admin/config/0367", headers=hx(csrf), data={
        "enabled": "on", "timezone": "Europe/Moscow", "default_region": "RU", "integration_code": "phonekey-abcdef123456",
        "notifications.call_notify_mode": "answer", "incoming_call_actions.create_orders": "always",
        "incoming_call_actions.create_customers": "on", "signature_mode": "enforce"})
    assert "сохранены" in json.loads(r.headers["HX-Trigger"])["toast"]["message"]
    assert r.headers["HX-Trigger"].isascii()
    with app.app_context():
        ent = db.session.get(Enterprise, "0367")
        cfg = ent.integrations_config["ms"]
        assert ent.integrations_config["other"] == 1
        assert cfg["enabled"] is True and cfg["timezone"] == "Europe/Moscow" and cfg["integration_code"] == "phonekey-abcdef123456"
        assert cfg["notifications"]["call_notify_mode"] == "answer" and cfg["notifications"]["notify_incoming"] is False
        assert cfg["incoming_call_actions"]["create_orders"] == "always" and cfg["signature_mode"] == "enforce"
    c.post("/ms-admin/config/0367", data={"enabled": "on", "integration_code": ""}, headers=hx(csrf))
    with app.app_context():  # an empty password field keeps the stored key
        assert db.session.get(Enterprise, "0367").integrations_config["ms"]["integration_code"] == "phonekey-abcdef123456"


def test_regenerate_and_delete(browser, app):
    c, csrf = browser
    with app.app_context():
        old = app.extensions["ms"].configs.save("0367", {"enabled": True})["webhook_url"]
    r = c.post("/ms-admin/config/0367/webhook-uuid", headers=hx(csrf))
    assert "/ms/webhook/" in r.text and old not in r.text
    r = c.post("/ms-admin/config/0367/delete", headers=hx(csrf))
    assert r.headers["HX-Redirect"] == "/ms-admin/"
    with app.app_context():
        assert db.session.get(Enterprise, "0367").integrations_config == {"other": 1}


def test_test_connection_and_employees(browser, app, sandbox):
    configure(app, sandbox)
    c, csrf = browser
    r = c.post("/ms-admin/test/0367", headers=hx(csrf))
    assert "Ключ принят" in r.text and "Токен принят" in r.text
    assert "Петрова Анна" in r.text and "151" in r.text and "Показать тестовую карточку" in r.text


@pytest.mark.parametrize("fault,message", [
    ({"phone_api_disabled": True}, "55008"),
    ({"latency_ms": 6000, "api": "phone"}, "не ответил вовремя"),
])
def test_test_connection_explains_failures(browser, app, sandbox, fault, message):
    import requests

    configure(app, sandbox)
    requests.post(f"{sandbox.url}/sandbox/api/faults", json=fault)
    c, csrf = browser
    r = c.post("/ms-admin/test/0367", headers=hx(csrf))
    assert message in r.text and 'role="alert"' in r.text


def test_test_connection_explains_401(browser, app, sandbox):
    configure(app, sandbox, integration_code="wrong-key-000000", api_token="wrong-token-00000")
    c, csrf = browser
    r = c.post("/ms-admin/test/0367", headers=hx(csrf))
    assert r.text.count("401") == 2


def test_test_popup_shows_and_queues_the_hide(browser, app, sandbox):
    configure(app, sandbox)
    c, csrf = browser
    r = c.post("/ms-admin/test-popup/0367", data={"extension": "151"}, headers=hx(csrf))
    assert "показана" in r.text
    acc = sandbox.state.accounts["demo"]
    (call,) = acc.calls.values()
    assert list(acc.cards) == ["151"] and call["number"] == "+70000000000"
    assert len(acc.counterparties) == 3  # no customer created
    with app.app_context():  # the hide job is due in a few seconds: make it due now and run it
        from msapp.clock import utcnow

        db.session.execute(update(Job).where(Job.kind == "test-popup.hide").values(run_at=utcnow()))
        db.session.commit()
        q = app.extensions["ms"].queue
        assert q.run_one(q.claim()) == "done"
    assert all(not shown for shown in acc.cards.values())
    bad = c.post("/ms-admin/test-popup/0367", data={"extension": "15x"}, headers=hx(csrf))
    assert "digits" in bad.text


def test_journal_filters_pages_and_retry(browser, app):
    c, csrf = browser
    with app.app_context():
        from msapp.services import exchange_log

        for i in range(60):
            exchange_log.add("0367", "ms.phone.call.create" if i % 2 else "event.call-event", {"i": i}, {"ok": True},
                             "boom" if i % 10 == 0 else None)
        exchange_log.add("0500", "ms.phone.call.create", {"secret": "x"}, None)
        jid = app.extensions["ms"].queue.enqueue("call.sync", "call:0367:x", {}, enterprise_number="0367", max_attempts=1)
        db.session.commit()
        q = app.extensions["ms"].queue
        q.fail(q.claim(), RuntimeError("MoySklad said no"))
    page = c.get("/ms-admin/journal?enterprise_number=0367").text
    assert "Записей: 60" in page and "MoySklad said no" in page
    errors = c.get("/ms-admin/journal?enterprise_number=0367&status=error", headers={"HX-Request": "true"}).text
    assert "Записей: 6" in errors and "<html" not in errors
    phone = c.get("/ms-admin/journal?enterprise_number=0367&event=ms.phone").text
    assert "Записей: 30" in phone
    older = re.search(r'href="([^"]*before=[^"]*)">Старее', page).group(1).replace("&amp;", "&")
    second = c.get(older).text
    assert second.count("<details>") == 10 and "Старее" not in second and "К новым" in second
    assert "неверная ссылка" in c.get("/ms-admin/journal?enterprise_number=0367&before=x").text
    r = c.post(f"/ms-admin/jobs/{jid}/retry", data={"enterprise_number": "0367"}, headers=hx(csrf))
    assert "в очередь" in r.text
    with app.app_context():
        assert db.session.get(Job, jid).status == "pending"
        assert db.session.scalar(select(IntegrationLog.id).where(IntegrationLog.enterprise_number == "0500"))


def test_json_api(app, sandbox):
    c = app.test_client()
    keys = sandbox.state.keys()["demo"]
    r = c.put("/ms-admin/api/config/0367", json={"enabled": True, "integration_code": keys["phone_api_key"],
                                                 "api_token": keys["json_api_token"]}, headers=BEARER)
    assert r.status_code == 200 and r.get_json()["integration_code"].startswith("••••")
    assert c.put("/ms-admin/api/config/0367", json={"timezone": "x"}, headers=BEARER).get_json()["field"] == "timezone"
    assert c.put("/ms-admin/api/config/9999", json={}, headers=BEARER).status_code == 404
    assert c.put("/ms-admin/api/config/0367", data="nope", content_type="application/json", headers=BEARER).status_code == 400
    old = c.get("/ms-admin/api/config/0367", headers=BEARER).get_json()["webhook_url"]
    new = c.post("/ms-admin/api/config/0367/webhook-uuid", headers=BEARER).get_json()["webhook_url"]
    assert old != new
    test = c.post("/ms-admin/api/test/0367", headers=BEARER).get_json()
    assert test["phone"]["ok"] and test["json"]["ok"] and len(test["employees"]) == 3
    emps = c.post("/ms-admin/api/employees/0367", headers=BEARER).get_json()["employees"]
    assert {e["extension"] for e in emps} == {"150", "151", "152"}
    assert c.get("/ms-admin/api/employees/0367", headers=BEARER).get_json()["employees"] == emps
    assert c.post("/ms-admin/api/test-popup/0367", json={"extension": "150"}, headers=BEARER).get_json()["shown"]
    assert c.post("/ms-admin/api/test-popup/0367", json={"extension": "x"}, headers=BEARER).status_code == 400
    assert c.delete("/ms-admin/api/config/0367", headers=BEARER).get_json() == {"deleted": True}


def test_panel_counts_today(browser, app):
    from msapp.clock import utcnow
    from msapp.db.models import Call
    from msapp.services import exchange_log

    c, _ = browser
    with app.app_context():
        now = utcnow()
        for i, (created, order) in enumerate([(True, "o1"), (False, None), (False, "")]):
            db.session.add(Call(enterprise_number="0367", unique_id=f"u{i}", direction="in", phone="+375296254070",
                                extensions=[], shown=[], hidden=[], customer_created=created, order_id=order, start_time=now,
                                created_at=now, updated_at=now))
        exchange_log.add("0367", "ms.phone.call.create", {}, {"latency_ms": 40})
        exchange_log.add("0367", "ms.phone.call.update", {}, {"latency_ms": 60}, "HTTP 503")
        db.session.commit()
        panel = app.extensions["ms"].admin.panel("0367")
    assert panel["calls_today"] == 3 and panel["customers_created"] == 1 and panel["orders_created"] == 1
    assert panel["success_rate"] == 50.0 and panel["median_latency_ms"] == 50 and panel["last_error"]
    page = c.get("/ms-admin/?enterprise_number=0367").text
    assert "звонков сегодня" in page and "HTTP 503" in page


def test_static_and_redirects(app):
    c = app.test_client()
    assert c.get("/ms.png").mimetype == "image/png"
    assert c.get("/ms-admin/favicon.ico").mimetype == "image/png"
    assert c.get("/ms/").headers["Location"] == "/ms-admin/"
    assert c.get("/static/htmx-2.0.11.min.js").status_code == 200


def test_a_failed_save_keeps_what_was_entered(browser):
    c, csrf = browser
    r = c.post("/ms-admin/config/0367", headers=hx(csrf), data={
        "enabled": "on", "timezone": "Mars/Base", "notifications.call_notify_mode": "none",
        "outgoing_call_actions.create_customers": "on"})
    assert re.search(r'name="enabled"\s+checked', r.text)
    assert re.search(r'name="outgoing_call_actions.create_customers"\s+checked', r.text)
    assert not re.search(r'name="notifications.notify_incoming"\s+checked', r.text)  # unticked by the operator
    assert '<option value="none" selected>' in r.text
