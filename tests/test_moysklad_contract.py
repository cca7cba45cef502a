"""Contract: the service's clients against the sandbox over real sockets (so the two cannot drift)."""
import threading

import pytest
import requests

from msapp.moysklad import JsonApi, Limiter, MoySkladError, PhoneApi, RateLimited
from msapp.moysklad.formats import to_moysklad_time
from msapp.tools.sandbox.state import same_phone

ROMASHKA = "5c0e7a00-0000-4000-8000-000000000001"
PETROVA = "0a9c1f00-0000-4000-8000-000000000151"


@pytest.fixture
def apis(sandbox):
    keys = sandbox.state.keys()["demo"]
    return PhoneApi(sandbox.phone_url, keys["phone_api_key"]), JsonApi(sandbox.json_url, keys["json_api_token"])


def test_employees(apis):
    phone, _ = apis
    assert [e["extension"] for e in phone.employees()] == ["150", "151", "152"]
    assert phone.employees("151")[0]["id"] == PETROVA


def test_call_flow_by_id_and_by_extid(apis, sandbox):
    phone, _ = apis
    call = phone.create_call({"externalId": "u1", "number": "+375296254070", "isIncoming": True,
                              "startTime": "2025-09-13 17:12:22.000",
                              "events": [{"eventType": "SHOW", "extension": "150", "sequence": 1}]})
    assert call["id"] and phone.get_call(call["id"])["externalId"] == "u1"
    phone.send_event(call["id"], {"eventType": "SHOW", "extension": "151", "sequence": 2})
    phone.update_call(call["id"], {"extension": "151", "events": [
        {"eventType": "STARTTIME", "extension": "151", "sequence": 3},
        {"eventType": "HIDE", "extension": "150", "sequence": 4}]})
    phone.send_event_by_extid("u1", {"eventType": "HIDE", "extension": "151", "sequence": 5})
    done = phone.update_call_by_extid("u1", {"endTime": "2025-09-13 17:13:22.000", "recordUrl": ["http://r/1"]})
    assert done["extension"] == "151" and done["recordUrl"] == ["http://r/1"]
    assert all(not shown for shown in sandbox.state.accounts["demo"].cards.values())  # every card hidden


def test_errors_carry_status_and_codes(apis):
    phone, _ = apis
    with pytest.raises(MoySkladError) as info:
        phone.update_call_by_extid("missing", {"comment": "x"})
    assert info.value.status == 404 and info.value.codes == [1021]
    with pytest.raises(MoySkladError) as info:
        phone.create_call({"externalId": "x"})
    assert info.value.status == 412 and info.value.codes == [3000]
    bad = PhoneApi(phone.base_url, "wrong-key")
    with pytest.raises(MoySkladError) as info:
        bad.employees()
    assert info.value.status == 401


@pytest.mark.parametrize("written", ["80297111222", "+375 (29) 711-12-22", "375297111222"])
def test_find_counterparty_in_any_format(apis, written):
    _, jsonapi = apis
    from msapp.moysklad.formats import to_e164

    found = jsonapi.find_counterparty_by_phone(to_e164(written, "BY"), "BY")
    assert found["id"] == ROMASHKA and found["owner_href"].endswith(PETROVA)


def test_find_through_contact_person_and_not_found(apis):
    _, jsonapi = apis
    found = jsonapi.find_counterparty_by_phone("+375445613954", "BY")
    assert found["id"] == ROMASHKA and found["matched_by"] == "contact_person"
    assert jsonapi.find_counterparty_by_phone("+375291000000", "BY") is None


def test_create_counterparty_and_order(apis, sandbox):
    _, jsonapi = apis
    cp = jsonapi.create_counterparty("+375291000000", "+375291000000", owner_id=PETROVA)
    assert jsonapi.find_counterparty_by_phone("+375291000000", "BY")["id"] == cp["id"]
    org = jsonapi.organizations()[0]
    states = jsonapi.order_states()
    channel = jsonapi.sales_channels()[0]
    assert [s["name"] for s in states] == ["Новый", "Подтвержден", "Выполнен"]
    order = jsonapi.create_customer_order(org["id"], cp["id"], state_id=states[0]["id"],
                                          sales_channel_id=channel["id"], owner_id=PETROVA, description="Звонок")
    assert order["id"] and order["agent"]["meta"]["href"].endswith(cp["id"])
    assert jsonapi.employee_by_uid("petrova@demo")["id"] == PETROVA
    assert jsonapi.get_employee(PETROVA)["name"] == "Петрова Анна"
    assert jsonapi.current_employee()["uid"] == "admin@demo"
    assert len(jsonapi.employees()) == 4


def test_limiter_keeps_eight_threads_under_the_sandbox_limit(sandbox):
    keys = sandbox.state.keys()["demo"]
    limiter = Limiter()
    phone = PhoneApi(sandbox.phone_url, keys["phone_api_key"], enterprise="0367", limiter=limiter, max_wait=30)
    errors = []

    def work():
        for _ in range(8):
            try:
                phone.employees()
            except (MoySkladError, RateLimited) as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = requests.get(f"{sandbox.url}/sandbox/api/requests").json()
    assert errors == [] and log["own_429"] == 0 and log["max_in_flight"] <= 5
    assert len(log["requests"]) == 64


def test_times_are_what_the_sandbox_accepts(apis):
    from datetime import datetime

    phone, _ = apis
    call = phone.create_call({"externalId": "t", "number": "+375296254070", "isIncoming": False,
                              "startTime": to_moysklad_time(datetime(2025, 1, 1, 12, 0, 0, 5000))})
    assert call["startTime"] == "2025-01-01 15:00:00.005"


def test_sandbox_phone_matching_agrees_with_ours():
    assert same_phone("8 (029) 711-12-22", "+375297111222")
    assert not same_phone("+375297111223", "+375297111222")
