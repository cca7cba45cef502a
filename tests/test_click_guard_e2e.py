"""The toll-fraud guard over real sockets (docs/design.md 5.2): an attacker who has only the webhook URL.

The fake PBX originate server records every call the PBX would have placed: a refused click must leave
it empty; a legitimate one must still become exactly one originate.
"""
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import select

from msapp import clock
from msapp.db.models import Click, Enterprise, IntegrationLog, Job
from msapp.extensions import db
from tests.conftest import ADMIN_TOKEN, dispose, free_port, make_app, require_pg
from tests.service_harness import Service, service_env, start_process, wait_for

pytestmark = pytest.mark.e2e
LEGIT = {"srcNumber": "151", "destNumber": "+375297111222", "uid": "petrova@demo"}


@pytest.fixture
def svc(db_url, tmp_path, sandbox, pbx):
    service = Service(db_url, tmp_path, sandbox, MS_ORIGINATE_URL=pbx.url)
    service.add_enterprise()
    yield service
    service.stop()


def click(svc, **change):
    return requests.post(svc.webhook_url(), json={**LEGIT, **change}, timeout=10)


def refused_rows(svc):
    with svc.app.app_context():
        return db.session.scalars(select(Click).where(Click.outcome == "refused").order_by(Click.id)).all()


def settle(svc, pbx):
    """What the PBX was asked once every job has run to its end (a refused click stores none)."""
    svc.wait_idle()
    return pbx.requests


def test_legitimate_click_is_one_originate_with_the_right_values(svc, pbx):
    r = click(svc)
    assert r.status_code == 200 and r.json() == {"success": True}
    assert wait_for(lambda: pbx.requests)
    assert settle(svc, pbx) == [{"code": ["151"], "phone": ["+375297111222"], "clientId": ["client-secret-1"]}]


@pytest.mark.parametrize("change,status,field,reason", [
    ({"srcNumber": "777", "uid": ""}, 403, "srcNumber", "unknown_extension"),
    ({"srcNumber": "777"}, 403, "srcNumber", "unknown_extension"),
    ({"uid": "ivanov@demo"}, 403, "uid", "uid_mismatch"),
    ({"uid": "admin@demo"}, 403, "uid", "uid_mismatch"),
    ({"destNumber": "+447031234567"}, 403, "destNumber", "country"),     # UK personal number
    ({"destNumber": "+4782012345"}, 403, "destNumber", "country"),       # Norwegian premium rate
    ({"destNumber": "+881631234567"}, 403, "destNumber", "country"),     # satellite network
    ({"destNumber": "+5352123456"}, 403, "destNumber", "country"),       # Cuba
    ({"destNumber": "+375902123456"}, 403, "destNumber", "invalid_number"),  # possible, not valid
])
def test_attacks_are_refused_and_nothing_is_originated(svc, pbx, change, status, field, reason):
    r = click(svc, **change)
    assert r.status_code == status, r.text
    assert r.json() == {"error": "click refused"}  # one answer for all: the reason is the journal's
    assert settle(svc, pbx) == []
    (row,) = refused_rows(svc)
    assert row.reason == reason and row.client_address == "127.0.0.1"
    with svc.app.app_context():
        log = db.session.scalars(select(IntegrationLog).where(IntegrationLog.event_type == "webhook.click")
                                 .order_by(IntegrationLog.id.desc())).first()
        assert log.status == "error" and log.response_data["reason"] == reason and "refused" in log.error_message
        assert log.response_data["field"] == field


@pytest.mark.parametrize("number,kind", [
    ("+447031234567", "personal-number"),
    ("+448431234567", "premium-rate"),
    ("+445512345678", "UAN"),
    ("+4782012345", "premium-rate"),
    ("+4781012345", "UAN"),
    ("+33810123456", "shared-cost"),
])
def test_costly_number_types_are_blocked_even_in_allowed_countries(svc, pbx, number, kind):
    svc.configure(click_to_call={"allowed_countries": ["BY", "GB", "NO", "FR"]})
    r = click(svc, destNumber=number)
    assert r.status_code == 403 and r.json() == {"error": "click refused"}
    assert settle(svc, pbx) == []
    with svc.app.app_context():
        log = db.session.scalars(select(IntegrationLog).where(IntegrationLog.event_type == "webhook.click")
                                 .order_by(IntegrationLog.id.desc())).first()
        assert kind in log.error_message
    # the operator may lift the block (an enterprise that really calls such numbers)
    svc.configure(click_to_call={"block_premium": False})
    assert click(svc, destNumber=number).status_code == 200
    assert wait_for(lambda: pbx.requests)


def test_a_foreign_country_works_once_the_admin_allows_it(svc, pbx):
    assert click(svc, destNumber="+79991234567").status_code == 403
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = requests.put(f"{svc.url}/ms-admin/api/config/0367", headers=admin,
                     json={"click_to_call": {"allowed_countries": ["BY", "RU"]}}, timeout=10)
    assert r.status_code == 200 and r.json()["click_to_call"]["allowed_countries"] == ["BY", "RU"]
    assert click(svc, destNumber="+79991234567").status_code == 200
    assert wait_for(lambda: pbx.requests)
    assert settle(svc, pbx)[0]["phone"] == ["+79991234567"]


def test_forty_clicks_in_a_second_make_ten_calls(svc, pbx):
    numbers = [f"+3752971{n:05d}" for n in range(40)]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: click(svc, destNumber=n), numbers))
    assert time.monotonic() - started < 5
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 10 and codes.count(429) == 30, codes
    limited = [a for a in answers if a.status_code == 429]
    assert all(a.json()["field"] == "srcNumber" and 1 <= int(a.headers["Retry-After"]) <= 60 for a in limited)
    assert wait_for(lambda: len(pbx.requests) >= 10)
    assert len(settle(svc, pbx)) == 10
    # another extension still has its own allowance; the repeat rule is unchanged
    assert click(svc, srcNumber="150", uid="ivanov@demo").status_code == 200
    assert click(svc, srcNumber="150", uid="ivanov@demo").status_code == 200
    assert wait_for(lambda: len(pbx.requests) >= 11)
    assert len(settle(svc, pbx)) == 11


def test_the_enterprise_limit_spans_extensions(svc, pbx):
    svc.configure(click_to_call={"max_per_enterprise_per_minute": 4})
    answers = [click(svc, srcNumber=ext, uid=uid, destNumber=f"+37529711{n:04d}")
               for n, (ext, uid) in enumerate([("150", "ivanov@demo"), ("151", "petrova@demo"),
                                               ("152", "sidorov@demo")] * 3)]
    assert [a.status_code for a in answers].count(200) == 4
    assert {a.json().get("field") for a in answers if a.status_code == 429} == {None}
    assert wait_for(lambda: len(pbx.requests) >= 4) and len(settle(svc, pbx)) == 4


def test_moysklad_down_with_a_warm_list_still_clicks(svc, sandbox, pbx):
    assert click(svc).status_code == 200  # the first click fetched and stored the employee list
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"fail_rate": 1.0})
    try:
        before = len(sandbox.state.log)
        assert click(svc, destNumber="+375445613954").status_code == 200
        assert click(svc, srcNumber="777").status_code == 403
        assert len(sandbox.state.log) == before  # no MoySklad request for a click, refused or not
        assert wait_for(lambda: len(pbx.requests) == 2)
    finally:
        requests.post(f"{sandbox.url}/sandbox/api/faults", json={})


def test_moysklad_down_with_a_cold_list_refuses(svc, sandbox, pbx):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"fail_rate": 1.0})
    try:
        r = click(svc)
        assert r.status_code == 503 and r.json()["field"] == "srcNumber"
        assert settle(svc, pbx) == []
        assert refused_rows(svc)[0].reason == "employees_unavailable"
    finally:
        requests.post(f"{sandbox.url}/sandbox/api/faults", json={})


def test_slow_moysklad_cold_list_answers_within_the_deadline(db_url, tmp_path, sandbox, pbx):
    service = Service(db_url, tmp_path, sandbox, MS_ORIGINATE_URL=pbx.url, MS_LOOKUP_TIMEOUT="0.5")
    try:
        service.add_enterprise()
        requests.post(f"{sandbox.url}/sandbox/api/faults", json={"latency_ms": 3000})
        started = time.monotonic()
        assert click(service).status_code == 503
        assert time.monotonic() - started < 1.5
        requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
        # the fetch went on and stored the list: the next click passes without waiting for MoySklad
        assert wait_for(lambda: click(service, destNumber="+375445613954").status_code == 200, timeout=10)
    finally:
        requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
        service.stop()


def test_a_new_employee_is_found_by_a_refresh_at_most_once_a_minute(svc, sandbox, pbx):
    assert click(svc).status_code == 200
    sandbox.state.accounts["demo"].employees.append(
        {"id": "0a9c1f00-0000-4000-8000-000000000160", "name": "Новиков Олег", "uid": "novikov@demo",
         "extension": "160"})
    lists_before = len([r for r in sandbox.state.log if r["path"].endswith("/employee")])
    for _ in range(5):
        assert click(svc, srcNumber="160", uid="novikov@demo").status_code == 403
    svc.wait_idle()
    assert len([r for r in sandbox.state.log if r["path"].endswith("/employee")]) == lists_before
    # the list is young: no refresh yet; once it is a minute old, one refused click asks for one
    with svc.app.app_context():
        from msapp.db.models import Directory

        row = db.session.get(Directory, "0367")
        row.fetched_at = row.fetched_at.replace(year=row.fetched_at.year - 1)
        db.session.commit()
    for _ in range(3):
        assert click(svc, srcNumber="160", uid="novikov@demo").status_code == 403
    svc.wait_idle()
    phone_lists = [r for r in sandbox.state.log if r["api"] == "phone" and r["path"].endswith("/employee")]
    assert len(phone_lists) == 2  # the first click's fetch, and exactly one refresh
    assert click(svc, srcNumber="160", uid="novikov@demo").status_code == 200


def test_repeated_refusals_raise_the_alert_on_the_enterprise_page(svc, pbx):
    def page():
        return requests.get(f"{svc.url}/ms-admin/?enterprise_number=0367", timeout=10,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text

    assert "Подозрительные вызовы" not in page()
    for number in ("+447031234567", "+4782012345", "+5352123456"):
        click(svc, srcNumber="777", uid="", destNumber=number)
    page = page()
    assert "Подозрительные вызовы" in page and "+5352123456" in page and "страна номера не разрешена" in page


def test_refusals_are_counted_by_reason(svc, pbx):
    click(svc, srcNumber="777")
    text = requests.get(f"{svc.url}/metrics", timeout=5).text
    line = next(ln for ln in text.splitlines() if ln.startswith('ms_click_refusals_total{reason="country"}')
                or ln.startswith('ms_click_refusals_total{reason="unknown_extension"}'))
    assert float(line.rsplit(" ", 1)[1]) >= 1


@pytest.mark.postgres
@pytest.mark.slow
def test_two_processes_hold_the_enterprise_limit_together(pg_schema, tmp_path, sandbox, pbx):
    require_pg()
    url = pg_schema.url
    app = make_app(url, tmp_path, MS_PHONE_API_URL=sandbox.phone_url, MS_JSON_API_URL=sandbox.json_url)
    keys = sandbox.state.keys()["demo"]
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co", secret="client-secret-1", integrations_config={}))
        db.session.commit()
        cfg = app.extensions["ms"].configs.save("0367", {
            "enabled": True, "integration_code": keys["phone_api_key"], "api_token": keys["json_api_token"],
            "click_to_call": {"max_per_enterprise_per_minute": 7}})
        hook = cfg["webhook_url"]
    dispose(app)
    procs, bases = [], []
    try:
        for n in range(2):
            port = free_port()
            env = service_env(url, port, tmp_path / f"p{n}", workers=2, MS_PHONE_API_URL=sandbox.phone_url,
                              MS_JSON_API_URL=sandbox.json_url, MS_ORIGINATE_URL=pbx.url, MS_ADMIN_TOKEN=ADMIN_TOKEN,
                              MS_PUBLIC_URL="https://bot.example.by")
            procs.append(start_process(env, port))
            bases.append(f"http://127.0.0.1:{port}")
        extensions = [("150", "ivanov@demo"), ("151", "petrova@demo"), ("152", "sidorov@demo")]

        def send(n):
            ext, uid = extensions[n % 3]
            target = hook.replace("https://bot.example.by", bases[n % 2])
            return requests.post(target, json={"srcNumber": ext, "uid": uid, "destNumber": f"+37529722{n:04d}"},
                                 timeout=10).status_code

        assert send(99) == 200  # warms the shared employee list
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(send, range(24)))
        assert codes.count(200) == 6 and codes.count(429) == 18, codes
        assert wait_for(lambda: len(pbx.requests) >= 7, timeout=15)
        assert wait_for(lambda: not _active_originates(pg_schema), timeout=15)  # every accepted click has run
        assert len(pbx.requests) == 7
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(20)


def _active_originates(pg_schema) -> int:
    """Originate jobs not yet run to their end, in the schema the test's processes share."""
    return pg_schema.execute("SELECT count(*) FROM ms_jobs WHERE kind = 'originate' "
                             "AND status IN ('pending', 'running')")[0][0]


def originate_jobs(svc):
    with svc.app.app_context():
        return db.session.scalars(select(Job).where(Job.kind == "originate")).all()


def test_the_webhook_url_and_a_guessed_extension_place_no_call(svc, pbx):
    """MoySklad always sends the clicking user's login: a click without `uid` is not MoySklad's."""
    r = requests.post(svc.webhook_url(), json={"srcNumber": "150", "destNumber": "+375297111223"}, timeout=10)
    assert r.status_code == 403 and r.json() == {"error": "click refused"}
    assert [row.reason for row in refused_rows(svc)] == ["uid_missing"]
    assert originate_jobs(svc) == []  # refused before anything was stored: nothing can dial later
    r = requests.post(svc.webhook_url(), json={"srcNumber": "150", "destNumber": "+375297111223", "uid": ""},
                      timeout=10)
    assert r.status_code == 403 and originate_jobs(svc) == []


@pytest.fixture
def proxied(db_url, tmp_path, sandbox, pbx):
    """The service behind a local proxy it trusts: X-Forwarded-For names each client."""
    service = Service(db_url, tmp_path, sandbox, MS_ORIGINATE_URL=pbx.url, MS_TRUSTED_PROXIES="127.0.0.1")
    service.add_enterprise()
    yield service
    service.stop()


def test_a_guessing_address_cools_down_and_moysklad_clicks_on(proxied, pbx):
    svc, attacker, moysklad = proxied, {"X-Forwarded-For": "198.51.100.66"}, {"X-Forwarded-For": "185.5.5.5"}
    answers = [requests.post(svc.webhook_url(), json={**LEGIT, "srcNumber": str(ext)}, headers=attacker,
                             timeout=10) for ext in range(300, 330)]
    codes = [a.status_code for a in answers]
    assert codes[:21] == [403] * 21 and codes[21:] == [429] * 9, codes  # the 21st refusal starts the cool-down
    assert all(1 <= int(a.headers["Retry-After"]) <= 600 for a in answers[21:])
    assert len(refused_rows(svc)) == 21  # a cooling address writes nothing more
    # even a right click from that address waits; MoySklad's own address is unaffected
    assert requests.post(svc.webhook_url(), json=LEGIT, headers=attacker, timeout=10).status_code == 429
    assert requests.post(svc.webhook_url(), json=LEGIT, headers=moysklad, timeout=10).status_code == 200
    assert wait_for(lambda: len(pbx.requests) == 1)
    with svc.app.app_context():
        log = db.session.scalars(select(IntegrationLog).where(IntegrationLog.event_type == "webhook.cooldown")).all()
        assert len(log) == 1 and log[0].request_data["client"] == "198.51.100.66"
    page = requests.get(f"{svc.url}/ms-admin/?enterprise_number=0367", timeout=10,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    assert "временно заблокирован" in page and "198.51.100.66" in page
    clock.advance(601)  # the cool-down (10 minutes by default) is over
    assert requests.post(svc.webhook_url(), json={**LEGIT, "destNumber": "+375297111333"}, headers=attacker,
                         timeout=10).status_code == 200


def test_hourly_and_daily_caps_hold_and_accepted_volume_raises_the_alert(svc, pbx):
    svc.configure(click_to_call={"max_per_extension_per_hour": 4, "max_per_enterprise_per_day": 6})
    codes = [click(svc, destNumber=f"+37529711{n:04d}").status_code for n in range(5)]
    assert codes == [200, 200, 200, 200, 429]
    assert refused_rows(svc)[-1].reason == "rate_extension_hour"
    with svc.app.app_context():
        alerts = db.session.scalars(select(Click).where(Click.outcome == "alert").order_by(Click.id)).all()
        journal = db.session.scalars(select(IntegrationLog).where(IntegrationLog.event_type == "webhook.alert")).all()
    # over half a cap: the hour's at the 3rd click (3 of 4), the day's at the 4th (4 of 6); once each
    assert [a.reason for a in alerts] == ["volume_extension_hour", "volume_enterprise_day"]
    assert [(j.request_data["count"], j.request_data["cap"]) for j in journal] == [(3, 4), (4, 6)]
    page = requests.get(f"{svc.url}/ms-admin/?enterprise_number=0367", timeout=10,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    assert "больше половины лимита звонков с добавочного за час" in page
    clock.advance(3601)  # a new hour for the extension; the enterprise's day still counts
    assert click(svc, destNumber="+375297119001").status_code == 200
    assert click(svc, destNumber="+375297119002").status_code == 200
    r = click(svc, destNumber="+375297119003")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 3600
    assert refused_rows(svc)[-1].reason == "rate_enterprise_day"
    assert wait_for(lambda: len(pbx.requests) == 6)
