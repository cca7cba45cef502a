"""Client unit tests on a fake transport (tests/fake_http.py): every endpoint, the headers MoySklad
requires, every error class. The transport itself is tested over real sockets in test_moysklad_http."""
import json

import pytest

from msapp.moysklad import JsonApi, MoySkladError, PhoneApi, RetryPolicy
from msapp.moysklad.transport import NetworkError
from msapp.queue import Permanent, Retry

P = "https://ms.test/api/phone/1.0"
J = "https://ms.test/api/remap/1.2"
KEY = "d03627d59c1948a0f9a6aa1e267c954bfd0301ec"


@pytest.fixture
def phone(http):
    return PhoneApi(P, KEY)


@pytest.fixture
def jsonapi(http):
    return JsonApi(J, "tok123")


def check_headers(req, auth):
    assert req.headers["Accept-Encoding"] == "gzip"
    assert req.headers["Accept"] == "application/json;charset=utf-8"
    for name, value in auth.items():
        assert req.headers[name] == value
    if req.body:
        assert req.headers["Content-Type"] == "application/json"


def test_employees_with_the_apis_spelling(http, phone):
    href = "https://api.moysklad.ru/api/remap/1.2/entity/employee/0a9c1f00-0000-4000-8000-000000000150"
    http.get(f"{P}/employee", json={"employees": [{"meta": {"href": href}, "extention": "150"},
                                                            {"meta": {"href": href}}]})
    assert phone.employees() == [{"id": "0a9c1f00-0000-4000-8000-000000000150", "href": href, "extension": "150"}]
    check_headers(http.last_request, {"Lognex-Phone-Auth-Token": KEY})
    phone.employees("150")
    assert http.last_request.qs == {"filter": ["extention=150"]}


@pytest.mark.parametrize("method,verb,url,args,status", [
    ("create_call", "POST", f"{P}/call", ({"externalId": "1"},), 200),
    ("get_call", "GET", f"{P}/call/abc", ("abc",), 200),
    ("update_call", "PUT", f"{P}/call/abc", ("abc", {"endTime": "x"}), 200),
    ("update_call_by_extid", "PUT", f"{P}/call/extid/1757772742.60", ("1757772742.60", {"comment": "c"}), 200),
    ("send_event", "POST", f"{P}/call/abc/event", ("abc", {"eventType": "SHOW"}), 204),
    ("send_event_by_extid", "POST", f"{P}/call/extid/17.6%2F1/event", ("17.6/1", {"eventType": "HIDE"}), 204),
])
def test_call_endpoints(http, phone, method, verb, url, args, status):
    http.register_uri(verb, url, status_code=status, json={"id": "abc"} if status == 200 else None)
    result = getattr(phone, method)(*args)
    req = http.last_request
    assert req.method == verb and req.url == url
    if len(args) > 1 or verb == "POST":
        assert json.loads(req.body) == args[-1]
    assert result == ({"id": "abc"} if status == 200 else None)
    check_headers(req, {"Lognex-Phone-Auth-Token": KEY})


def test_json_api_endpoints(http, jsonapi):
    auth = {"Authorization": "Bearer tok123"}
    http.get(f"{J}/entity/employee", json={"rows": [{"id": "e1", "uid": "admin@x"}]})
    assert jsonapi.employees()[0]["id"] == "e1"
    assert jsonapi.employee_by_uid("admin@x")["uid"] == "admin@x"
    assert http.last_request.qs["filter"] == ["uid=admin@x"]
    http.get(f"{J}/entity/employee/e1", json={"id": "e1"})
    assert jsonapi.get_employee("e1") == {"id": "e1"}
    http.get(f"{J}/context/employee", json={"id": "me"})
    assert jsonapi.current_employee()["id"] == "me"
    http.get(f"{J}/entity/organization", json={"rows": [{"id": "o1"}]})
    assert jsonapi.organizations() == [{"id": "o1"}]
    http.get(f"{J}/entity/customerorder/metadata", json={"states": [{"id": "s1", "name": "Новый"}]})
    assert jsonapi.order_states()[0]["name"] == "Новый"
    http.get(f"{J}/entity/saleschannel", json={"rows": [{"id": "c1"}]})
    assert jsonapi.sales_channels() == [{"id": "c1"}]
    http.get(f"{J}/entity/counterparty/cp1", json={"id": "cp1"})
    assert jsonapi.get_counterparty("cp1") == {"id": "cp1"}
    check_headers(http.last_request, auth)


def test_create_counterparty_with_owner(http, jsonapi):
    http.post(f"{J}/entity/counterparty", json={"id": "new"})
    assert jsonapi.create_counterparty("+375297111222", "+375297111222", owner_id="e1")["id"] == "new"
    body = http.last_request.json()
    assert body["name"] == "+375297111222" and body["phone"] == "+375297111222"
    assert body["owner"]["meta"] == {"href": f"{J}/entity/employee/e1", "type": "employee",
                                     "mediaType": "application/json"}
    jsonapi.create_counterparty("x", "+1")
    assert "owner" not in http.last_request.json()


def test_create_customer_order(http, jsonapi):
    http.post(f"{J}/entity/customerorder", json={"id": "ord"})
    jsonapi.create_customer_order("org", "cp", state_id="st", sales_channel_id="ch", owner_id="e1",
                                  description="Звонок")
    body = http.last_request.json()
    assert body["organization"]["meta"]["href"] == f"{J}/entity/organization/org"
    assert body["agent"]["meta"]["href"] == f"{J}/entity/counterparty/cp"
    assert body["state"]["meta"]["href"] == f"{J}/entity/customerorder/metadata/states/st"
    assert body["salesChannel"]["meta"]["type"] == "saleschannel"
    assert body["owner"]["meta"]["type"] == "employee" and body["description"] == "Звонок"


def _cp(name, phone, persons=(), owner=None):
    row = {"id": name, "name": name, "phone": phone, "meta": {"href": f"{J}/entity/counterparty/{name}"},
           "contactpersons": {"rows": [{"name": n, "phone": p} for n, p in persons]}}
    if owner:
        row["owner"] = {"meta": {"href": f"{J}/entity/employee/{owner}"}}
    return row


def test_find_by_phone_normalises_and_checks_contact_persons(http, jsonapi):
    http.get(f"{J}/entity/counterparty", json={"rows": [
        _cp("near-miss", "+375 29 711-12-23"),
        _cp("via-person", "", [("Ольга", "8 (029) 711-12-22")]),
        _cp("direct", "80297111222; 8 017 123 45 67", owner="e9"),
    ]})
    found = jsonapi.find_counterparty_by_phone("+375297111222", "BY")
    assert found["id"] == "via-person" and found["matched_by"] == "contact_person"
    assert http.last_request.qs == {"search": ["297111222"], "limit": ["50"], "expand": ["contactpersons"]}
    http.get(f"{J}/entity/counterparty", json={"rows": [_cp("direct", "80297111222", owner="e9")]})
    found = jsonapi.find_counterparty_by_phone("+375297111222", "BY")
    assert found["matched_by"] == "phone" and found["owner_href"].endswith("/employee/e9")
    http.get(f"{J}/entity/counterparty", json={"rows": [_cp("near-miss", "+375297111223")]})
    assert jsonapi.find_counterparty_by_phone("+375297111222", "BY") is None


ERRORS = [
    (401, {"errors": [{"error": "Ошибка аутентификации", "code": 1056}]}, {}, False, None),
    (403, {"errors": [{"error": "Нет решения", "code": 55008}]}, {}, False, None),
    (404, {"errors": [{"error": "Не найден", "code": 1021}]}, {}, False, None),
    (412, {"errors": [{"error": "Не указано поле", "code": 3000, "parameter": "name"}]}, {}, False, None),
    (429, {"errors": [{"error": "Лимит", "code": 1049}]}, {"X-Lognex-Retry-After": "1500"}, True, 1.5),
    (429, None, {"Retry-After": "3"}, True, 3.0),
    (500, None, {}, True, None),
    (503, {"errors": [{"error": "Недоступен"}]}, {}, True, None),
    (409, {"errors": [{"error": "Одновременное изменение", "code": 1065}]}, {}, True, None),
    (400, {"errors": [{"error": "Повторите через минуту", "code": 1095}]}, {}, True, 60.0),
]


@pytest.mark.parametrize("status,body,headers,retryable,wait", ERRORS)
def test_errors_and_retry_policy(http, phone, status, body, headers, retryable, wait):
    http.post(f"{P}/call", status_code=status, json=body, headers=headers)
    with pytest.raises(MoySkladError) as info:
        phone.create_call({})
    err = info.value
    assert err.status == status and err.api == "phone"
    if body:
        assert err.codes == [e["code"] for e in body["errors"] if "code" in e]
        assert body["errors"][0]["error"] in err.message
    policy = RetryPolicy()
    assert policy.retryable(err) is retryable
    assert policy.wait(err) == wait
    job_error = policy.as_job_error(err)
    if not retryable:
        assert isinstance(job_error, Permanent)
    elif wait is not None:
        assert isinstance(job_error, Retry) and job_error.after == wait
    else:
        assert isinstance(job_error, Retry) and job_error.after is None  # the queue's own backoff


def test_55008_explanation(http, phone):
    http.get(f"{P}/employee", status_code=403, json={"errors": [{"error": "x", "code": 55008}]})
    with pytest.raises(MoySkladError) as info:
        phone.employees()
    assert "Phone API is not enabled" in info.value.explanation


@pytest.mark.parametrize("exc", [NetworkError("ConnectionError", False), NetworkError("ConnectTimeout", False),
                                 NetworkError("ReadTimeout", True), NetworkError("ConnectionError", True)])
def test_network_errors_are_retryable(http, phone, exc):
    http.get(f"{P}/employee", exc=exc)
    with pytest.raises(MoySkladError) as info:
        phone.employees()
    assert info.value.network and info.value.status == 0
    assert RetryPolicy().retryable(info.value)
    assert "did not answer" in info.value.explanation


def test_non_json_answer(http, phone):
    http.get(f"{P}/employee", text="<html>gateway</html>", status_code=200)
    with pytest.raises(MoySkladError, match="not JSON"):
        phone.employees()


def test_timeouts_are_always_set(http):
    http.get(f"{P}/employee", json={"employees": []})
    PhoneApi(P, KEY, timeout=(1, 2)).employees()
    assert http.last_request.timeout == (1, 2)
    PhoneApi(P, KEY).employees()
    assert http.last_request.timeout == (3.05, 10.0)


def test_exchange_callback_gets_each_request(http):
    records = []
    api = PhoneApi(P, KEY, on_exchange=records.append)
    http.post(f"{P}/call", json={"id": "c1"})
    http.put(f"{P}/call/c1", status_code=503)
    api.create_call({"externalId": "1"})
    with pytest.raises(MoySkladError):
        api.update_call("c1", {"endTime": "x"})
    assert [r["outcome"] for r in records] == ["ok", "5xx"]
    assert records[0]["request"] == {"externalId": "1"} and records[0]["response"] == {"id": "c1"}
    assert records[1]["status"] == 503 and records[1]["latency_ms"] >= 0
    assert KEY not in json.dumps(records)
