"""The admin door: cookie flags, session expiry, wrong-token throttling per client address, security headers."""
import hashlib
import hmac
import re

import pytest
import requests
from sqlalchemy import select

from msapp import clock as msapp_clock
from msapp.db.models import Enterprise, IntegrationLog
from msapp.extensions import db
from msapp.web.admin import auth
from msapp.web.security import client_address
from tests.conftest import ADMIN_TOKEN, dispose, make_app

PAGE = "/ms-admin/"


def login(c, token=ADMIN_TOKEN, addr="203.0.113.7", headers=None):
    page = c.get("/ms-admin/login", environ_base={"REMOTE_ADDR": addr}).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return c.post("/ms-admin/login", data={"token": token, "csrf_token": csrf},
                  environ_base={"REMOTE_ADDR": addr}, headers=headers or {})


@pytest.mark.parametrize("public_url,secure", [("https://bot.example.by", True), ("http://pbx.local:8023", False)])
def test_session_cookie_flags(db_url, tmp_path, public_url, secure):
    app = make_app(db_url, tmp_path, MS_PUBLIC_URL=public_url)
    try:
        r = login(app.test_client())
        assert r.status_code == 302
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Expires=" in cookie
        assert ("Secure" in cookie) is secure
    finally:
        dispose(app)


def test_a_session_expires_after_the_configured_hours(db_url, tmp_path, monkeypatch):
    app = make_app(db_url, tmp_path, MS_ADMIN_SESSION_HOURS="2")
    try:
        c = app.test_client()
        assert login(c).status_code == 302
        assert c.get(PAGE).status_code == 200
        real = auth.time.time()
        monkeypatch.setattr(auth.time, "time", lambda: real + 2 * 3600 - 30)
        assert c.get(PAGE).status_code == 200
        monkeypatch.setattr(auth.time, "time", lambda: real + 2 * 3600 + 30)
        r = c.get(PAGE)
        assert r.status_code == 302 and r.headers["Location"].startswith("/ms-admin/login")
        monkeypatch.setattr(auth.time, "time", lambda: real)
        assert c.get(PAGE).status_code == 302  # the expired session was dropped, not revived
    finally:
        dispose(app)


def test_the_default_session_lasts_twelve_hours(app, monkeypatch):
    c = app.test_client()
    login(c)
    real = auth.time.time()
    monkeypatch.setattr(auth.time, "time", lambda: real + 11.9 * 3600)
    assert c.get(PAGE).status_code == 200
    monkeypatch.setattr(auth.time, "time", lambda: real + 12.1 * 3600)
    assert c.get(PAGE).status_code == 302


def test_changing_the_admin_token_ends_sessions_at_once(db_url, tmp_path):
    first = make_app(db_url, tmp_path, MS_SECRET_KEY="same-signing-key")
    second = make_app(db_url, tmp_path, MS_SECRET_KEY="same-signing-key", MS_ADMIN_TOKEN="a-brand-new-token-9876543210")
    try:
        c = first.test_client()
        login(c)
        assert c.get(PAGE).status_code == 200
        cookie = c.get_cookie("session")
        other = second.test_client()
        other.set_cookie("session", cookie.value, domain=cookie.domain)
        assert other.get(PAGE).status_code == 302
    finally:
        dispose(first)
        dispose(second)


def test_wrong_logins_are_limited_per_address(app):
    c = app.test_client()
    codes = [login(c, "wrong-token").status_code for _ in range(12)]
    assert codes == [401] * 9 + [429] * 3
    r = login(c)  # even the right token waits out the lockout
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
    assert "Слишком много неверных попыток" in r.text
    assert login(c, addr="198.51.100.20").status_code == 302  # another address is not locked out
    msapp_clock.advance(61)
    assert login(c).status_code == 302
    with app.app_context():
        rows = db.session.scalars(select(IntegrationLog).where(IntegrationLog.event_type == "admin.login")).all()
        assert [r.response_data["status"] for r in rows].count(401) == 9
        assert [r.response_data["status"] for r in rows].count(429) == 4
        assert all("wrong-token" not in str(r.request_data) for r in rows)


def test_lockouts_grow_when_guessing_goes_on(app):
    c = app.test_client()
    for _ in range(10):
        login(c, "wrong")
    first = int(login(c, "wrong").headers["Retry-After"])
    msapp_clock.advance(61)
    for _ in range(10):
        login(c, "wrong")
    second = int(login(c, "wrong").headers["Retry-After"])
    assert first <= 60 < second <= 120


def test_bearer_guesses_are_throttled_too(app):
    c = app.test_client()
    codes = [c.get("/ms-admin/api/config/0367", headers={"Authorization": f"Bearer guess-{n}"},
                   environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code for n in range(11)]
    assert codes == [401] * 9 + [429] * 2
    r = c.get("/ms-admin/api/config/0367", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
              environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert r.status_code == 429 and r.json["error"] and "Retry-After" in r.headers


def test_a_forged_forwarded_for_does_not_dodge_the_lockout(app):
    """Without trusted proxies X-Forwarded-For is ignored: rotating it gives no fresh address."""
    c = app.test_client()
    codes = [login(c, "wrong", headers={"X-Forwarded-For": f"10.0.0.{n}"}).status_code for n in range(11)]
    assert codes[-1] == 429


def test_behind_a_trusted_proxy_each_client_counts_alone(db_url, tmp_path):
    app = make_app(db_url, tmp_path, MS_TRUSTED_PROXIES="127.0.0.1")
    try:
        c = app.test_client()
        for _ in range(10):
            login(c, "wrong", addr="127.0.0.1", headers={"X-Forwarded-For": "192.0.2.66"})
        assert login(c, "wrong", addr="127.0.0.1", headers={"X-Forwarded-For": "192.0.2.66"}).status_code == 429
        # the admin behind the same nginx, from another address, logs in
        assert login(c, addr="127.0.0.1", headers={"X-Forwarded-For": "192.0.2.10"}).status_code == 302
    finally:
        dispose(app)


@pytest.mark.parametrize("environ,trusted,expected", [
    ({"REMOTE_ADDR": "203.0.113.1", "HTTP_X_FORWARDED_FOR": "1.1.1.1"}, "", "203.0.113.1"),
    ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "1.1.1.1"}, "127.0.0.1", "1.1.1.1"),
    ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 1.1.1.1"}, "127.0.0.1", "1.1.1.1"),
    ({"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "1.1.1.1, 10.0.0.3"}, "10.0.0.0/8", "1.1.1.1"),
    ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "junk"}, "127.0.0.1", "127.0.0.1"),
    ({"REMOTE_ADDR": "127.0.0.1"}, "127.0.0.1", "127.0.0.1"),
    ({"REMOTE_ADDR": "::ffff:203.0.113.1"}, "", "203.0.113.1"),
])
def test_client_address(environ, trusted, expected):
    import ipaddress

    nets = tuple(ipaddress.ip_network(n) for n in trusted.split(",") if n)
    assert client_address(environ, nets) == expected


def test_bad_trusted_proxies_setting_is_one_line():
    from msapp.settings import SettingsError, load

    with pytest.raises(SettingsError, match="MS_TRUSTED_PROXIES"):
        load({"MS_TRUSTED_PROXIES": "not-an-ip", "MS_ADMIN_TOKEN": "x" * 24, "MS_SECRET_KEY": "y"})


@pytest.mark.parametrize("path", ["/ms-admin/login", "/ms-admin/", "/ms-admin/api/config/0367"])
def test_security_headers_on_admin_pages(app, path):
    c = app.test_client()
    login(c)
    r = c.get(path)
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Referrer-Policy"] == "same-origin"
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_thirty_wrong_logins_over_a_real_socket(db_url, tmp_path, sandbox):
    from tests.service_harness import Service

    svc = Service(db_url, tmp_path, sandbox, MS_PUBLIC_URL="http://127.0.0.1:8023")  # no Secure cookie on http
    try:
        s = requests.Session()
        codes = []
        for _ in range(30):
            page = s.get(f"{svc.url}/ms-admin/login", timeout=5).text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
            codes.append(s.post(f"{svc.url}/ms-admin/login", data={"token": "guess", "csrf_token": csrf},
                                allow_redirects=False, timeout=5).status_code)
        assert codes.count(401) == 9 and codes.count(429) == 21
    finally:
        svc.stop()


def test_a_right_token_does_not_wipe_the_wrong_ones(app):
    """Nine guesses, one good Bearer call (a script, or the guesser's own session), nine more: locked."""
    c = app.test_client()
    addr = {"REMOTE_ADDR": "203.0.113.44"}
    for n in range(9):
        assert c.get("/ms-admin/api/config/0367", headers={"Authorization": f"Bearer g{n}"},
                     environ_base=addr).status_code == 401
    assert c.get("/ms-admin/api/config/0367", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                 environ_base=addr).status_code == 404  # in: the enterprise does not exist
    assert c.get("/ms-admin/api/config/0367", headers={"Authorization": "Bearer g9"},
                 environ_base=addr).status_code == 429


def test_wrong_tokens_are_counted_for_every_process_and_survive_a_restart(db_url, tmp_path):
    first = make_app(db_url, tmp_path)
    second = make_app(db_url, tmp_path)  # another process on the same database (or the same one restarted)
    try:
        for n in range(8):
            login(first.test_client(), f"wrong-{n}")
        dispose(first)
        codes = [login(second.test_client(), f"wrong-{n}").status_code for n in range(8, 10)]
        assert codes == [401, 429]  # the tenth wrong token in a minute locks, wherever the other nine went
    finally:
        dispose(second)


def test_an_undeclared_local_proxy_is_logged_once_and_shown_to_the_admin(app, caplog):
    c = app.test_client()
    proxied = {"REMOTE_ADDR": "127.0.0.1"}
    with caplog.at_level("WARNING", logger="msapp.security"):
        for _ in range(3):
            login(c, "wrong", addr="127.0.0.1", headers={"X-Forwarded-For": "198.51.100.7"})
    warnings = [r for r in caplog.records if "MS_TRUSTED_PROXIES is unset" in r.getMessage()]
    assert len(warnings) == 1
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
        db.session.commit()
    page = c.get("/ms-admin/?enterprise_number=0367", environ_base=proxied,
                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    assert "MS_TRUSTED_PROXIES не задан" in page


def test_the_session_cookie_holds_nothing_to_guess_the_token_from(db_url, tmp_path):
    app = make_app(db_url, tmp_path, MS_SECRET_KEY="signing-key-one")
    try:
        c = app.test_client()
        assert login(c).status_code == 302
        session = app.session_interface.get_signing_serializer(app).loads(c.get_cookie("session").value)
        plain = hashlib.sha256(("ms-admin:" + ADMIN_TOKEN).encode()).hexdigest()
        keyed = hmac.new(b"signing-key-one", b"ms-admin-session:" + ADMIN_TOKEN.encode(), hashlib.sha256).hexdigest()
        assert session["admin"] == keyed and session["admin"] != plain
        assert re.fullmatch(r"[0-9a-f]{12}", session["sid"])
    finally:
        dispose(app)
    # a new secret key logs everyone out (the old cookie no longer verifies)
    other = make_app(db_url, tmp_path, MS_SECRET_KEY="signing-key-two")
    try:
        fresh = other.test_client()
        fresh.set_cookie("session", c.get_cookie("session").value)
        assert fresh.get(PAGE).status_code == 302
    finally:
        dispose(other)


def test_admin_json_answers_are_never_cached(app):
    r = app.test_client().get("/ms-admin/api/config/0367", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("method,path", [("get", "/ms-admin/api/test/0367"),
                                         ("get", "/ms-admin/api/employees/0367?refresh=1")])
def test_nothing_changes_state_on_a_get(app, method, path):
    r = getattr(app.test_client(), method)(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code in (400, 405) and r.get_json()["error"]
