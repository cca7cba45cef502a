"""Dialplan lookups over real sockets: found, not found, contact persons, formats, deadline, cache."""
import time

import pytest
import requests

from tests.conftest import ADMIN_TOKEN
from tests.service_harness import Service

pytestmark = pytest.mark.e2e
ROMASHKA = "5c0e7a00-0000-4000-8000-000000000001"
PETROVA = "0a9c1f00-0000-4000-8000-000000000151"


@pytest.fixture
def svc(db_url, tmp_path, sandbox):
    service = Service(db_url, tmp_path, sandbox, MS_LOOKUP_TIMEOUT="0.5")
    service.add_enterprise()
    yield service
    service.stop()


def get(svc, route, phone, number="0367"):
    params = {"phone": phone}
    if number is not None:
        params["enterprise_number"] = number
    return requests.get(f"{svc.url}/internal/ms/{route}", params=params, timeout=5)


def json_requests(sandbox, since=0):
    return [r for r in sandbox.state.log[since:] if r["api"] in ("json", "phone")]


@pytest.mark.parametrize("written", ["80297111222", "+375 (29) 711-12-22", "375297111222"])
def test_found_in_any_format_with_owner(svc, written):
    body = get(svc, "customer-by-phone", written).json()
    assert body["found"] is True and body["id"] == ROMASHKA and body["name"] == "ООО Ромашка"
    assert body["owner"] == {"id": PETROVA, "name": "Петрова Анна", "extension": "151"}
    assert body["contact_persons"][0]["name"] == "Ольга Смирнова"
    assert get(svc, "responsible-extension", written).json() == {"extension": "151", "manager_id": PETROVA}


def test_matched_through_a_contact_person(svc):
    body = get(svc, "customer-by-phone", "+375 44 561-39-54").json()
    assert body["found"] and body["id"] == ROMASHKA


def test_not_found_and_no_owner(svc):
    assert get(svc, "customer-by-phone", "+375291000009").json() == {"found": False}
    assert get(svc, "responsible-extension", "+375291000009").json() == {"extension": None, "manager_id": None}
    assert get(svc, "responsible-extension", "80257654321").json() == {"extension": None, "manager_id": None}


def test_compat_name_and_profile(svc):
    assert get(svc, "customer-name", "80297111222").json() == {"name": "ООО Ромашка"}
    assert get(svc, "customer-name", "+375291000009").json() == {"name": None}
    assert get(svc, "customer-profile", "80297111222").json() == {
        "last_name": None, "first_name": None, "middle_name": None, "enterprise_name": "ООО Ромашка",
        "source": "moysklad"}
    person = get(svc, "customer-profile", "80257654321").json()
    assert (person["last_name"], person["first_name"], person["enterprise_name"]) == ("Смирнов", "Алексей", None)


def test_cache_hit_makes_no_moysklad_request(svc, sandbox):
    get(svc, "customer-by-phone", "80297111222")
    get(svc, "customer-by-phone", "+375291000009")
    mark = len(sandbox.state.log)
    assert get(svc, "customer-by-phone", "+375 29 711-12-22").json()["found"]
    assert get(svc, "responsible-extension", "80297111222").json()["extension"] == "151"
    assert get(svc, "customer-by-phone", "+375291000009").json() == {"found": False}  # misses are cached too
    assert json_requests(sandbox, mark) == []


def test_deadline_is_held_when_moysklad_is_slow(svc, sandbox):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"latency_ms": 3000})
    started = time.monotonic()
    body = get(svc, "customer-by-phone", "80297111222").json()
    elapsed = time.monotonic() - started
    assert body == {"found": False} and elapsed < 0.5 + 0.3
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
    time.sleep(3.5)  # the slow lookup finished in the background and filled the cache
    mark = len(sandbox.state.log)
    started = time.monotonic()
    assert get(svc, "customer-by-phone", "80297111222").json()["found"]
    assert time.monotonic() - started < 0.5 and json_requests(sandbox, mark) == []


def test_never_an_answer_from_another_enterprise(db_url, tmp_path, sandbox):
    service = Service(db_url, tmp_path, sandbox)
    try:
        service.add_enterprise("0367", account="demo")
        service.add_enterprise("0500", account="other")
        acc = sandbox.state.accounts["other"]
        acc.counterparties.clear()  # the other company has no customers at all
        assert get(service, "customer-by-phone", "80297111222", "0367").json()["found"]
        assert get(service, "customer-by-phone", "80297111222", "0500").json() == {"found": False}
    finally:
        service.stop()


@pytest.mark.parametrize("params,status,field", [
    ({"phone": "80297111222"}, 400, "enterprise_number"),
    ({"enterprise_number": "0367"}, 400, "phone"),
    ({"enterprise_number": "0367", "phone": "abc"}, 400, "phone"),
    ({"enterprise_number": "9999", "phone": "80297111222"}, 404, "enterprise_number"),
])
def test_bad_lookup_input(svc, params, status, field):
    r = requests.get(f"{svc.url}/internal/ms/customer-by-phone", params=params, timeout=5)
    assert r.status_code == status and r.json()["field"] == field


def test_lookups_are_internal_only(svc):
    r = requests.get(f"{svc.url}/internal/ms/customer-by-phone", params={"enterprise_number": "0367", "phone": "1"},
                     headers={"X-Forwarded-For": "203.0.113.1"}, timeout=5)
    assert r.status_code == 403


def test_disabled_enterprise_answers_not_found(svc, sandbox):
    with svc.app.app_context():
        svc.app.extensions["ms"].configs.save("0367", {"enabled": False})
    mark = len(sandbox.state.log)
    assert get(svc, "customer-by-phone", "80297111222").json() == {"found": False}
    assert json_requests(sandbox, mark) == []


def test_routing_and_the_click_guard_read_one_employee_list(svc, sandbox):
    """One directory: once it is refreshed, the dialplan's responsible extension and the click guard both
    see the new extension at once (routing once kept its own list for 10 minutes)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert get(svc, "responsible-extension", "80297111222").json()["extension"] == "151"
    sandbox.state.accounts["demo"].employee(PETROVA)["extension"] = "159"
    r = requests.post(f"{svc.url}/ms-admin/api/employees/0367", headers=admin, timeout=10)
    assert sorted(e["extension"] for e in r.json()["employees"]) == ["150", "152", "159"]
    assert get(svc, "responsible-extension", "80297111222").json() == {"extension": "159", "manager_id": PETROVA}
    assert get(svc, "customer-by-phone", "80297111222").json()["owner"]["extension"] == "159"
    click = {"srcNumber": "159", "destNumber": "+375297111222", "uid": "petrova@demo"}
    assert requests.post(svc.webhook_url(), json=click, timeout=10).status_code == 200
    assert requests.post(svc.webhook_url(), json={**click, "srcNumber": "151", "destNumber": "+375297111333"},
                         timeout=10).status_code == 403
