"""The sandbox enforces what MoySklad enforces (over real sockets)."""
import time

import pytest
import requests

CALL = {"externalId": "1757772742.60", "number": "+375296254070", "isIncoming": True,
        "startTime": "2025-09-13 17:12:22.000"}


@pytest.fixture
def keys(sandbox):
    return requests.get(f"{sandbox.url}/sandbox/api/keys").json()


def ph(sandbox, keys, method, path, **kw):
    headers = {"Accept-Encoding": "gzip", "Lognex-Phone-Auth-Token": keys["phone_api_key"],
               **kw.pop("headers", {})}
    return requests.request(method, sandbox.phone_url + path, headers=headers, **kw)


def js(sandbox, keys, method, path, **kw):
    headers = {"Accept-Encoding": "gzip", "Authorization": f"Bearer {keys['json_api_token']}",
               **kw.pop("headers", {})}
    return requests.request(method, sandbox.json_url + path, headers=headers, **kw)


@pytest.mark.parametrize("headers", [{"Lognex-Phone-Auth-Token": "wrong"}, {"Lognex-Phone-Auth-Token": ""}])
def test_wrong_key_is_401_with_errors_body(sandbox, keys, headers):
    r = ph(sandbox, keys, "GET", "/employee", headers=headers)
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == 1056


def test_json_api_needs_bearer(sandbox, keys):
    r = js(sandbox, keys, "GET", "/entity/employee", headers={"Authorization": "Basic eDp5"})
    assert r.status_code == 401 and "errors" in r.json()


@pytest.mark.parametrize("api", ["phone", "json"])
def test_no_gzip_is_415_empty(sandbox, keys, api):
    call = ph if api == "phone" else js
    r = call(sandbox, keys, "GET", "/employee" if api == "phone" else "/entity/employee",
             headers={"Accept-Encoding": "identity"})
    assert r.status_code == 415 and r.content == b""


def test_answers_are_gzipped_and_accept_is_checked(sandbox, keys):
    r = ph(sandbox, keys, "GET", "/employee")
    assert r.headers["Content-Encoding"] == "gzip" and len(r.json()["employees"]) == 3
    r = ph(sandbox, keys, "GET", "/employee", headers={"Accept": "text/html"})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == 1062


def test_extention_filter(sandbox, keys):
    r = ph(sandbox, keys, "GET", "/employee", params={"filter": "extention=151"})
    assert [e["extention"] for e in r.json()["employees"]] == ["151"]


@pytest.mark.parametrize("missing", ["externalId", "number", "isIncoming", "startTime"])
def test_create_needs_required_fields(sandbox, keys, missing):
    body = {k: v for k, v in CALL.items() if k != missing}
    r = ph(sandbox, keys, "POST", "/call", json=body)
    assert r.status_code == 412
    assert r.json()["errors"][0] == {"error": r.json()["errors"][0]["error"], "code": 3000,
                                     "error_message": r.json()["errors"][0]["error"], "parameter": missing}


def test_call_lifecycle_write_once_and_record_url_appends(sandbox, keys):
    r = ph(sandbox, keys, "POST", "/call", json={**CALL, "events": [
        {"eventType": "SHOW", "extension": "150", "sequence": 1},
        {"eventType": "SHOW", "extension": "151", "sequence": 2}]})
    assert r.status_code == 200
    call = r.json()
    assert call["meta"]["type"] == "call" and call["recordUrl"] == [] and call["endTime"] is None
    cards = requests.get(f"{sandbox.url}/sandbox/api/cards").json()
    assert cards == {"150": [call["id"]], "151": [call["id"]]}
    r = ph(sandbox, keys, "PUT", f"/call/{call['id']}", json={
        "extension": "151", "comment": "first", "recordUrl": ["http://r/1.mp3"],
        "events": [{"eventType": "STARTTIME", "extension": "151", "sequence": 3},
                   {"eventType": "HIDE", "extension": "150", "sequence": 4}]})
    assert r.status_code == 200 and r.json()["extension"] == "151"
    r = ph(sandbox, keys, "PUT", f"/call/extid/{CALL['externalId']}", json={
        "extension": "150", "endTime": "2025-09-13 17:13:00.000", "comment": "second",
        "recordUrl": ["http://r/2.mp3"]})
    body = r.json()
    assert body["extension"] == "151"  # write-once
    assert body["comment"] == "second"  # comment is replaced
    assert body["recordUrl"] == ["http://r/1.mp3", "http://r/2.mp3"]  # appended
    ph(sandbox, keys, "PUT", f"/call/{call['id']}", json={"endTime": "2025-09-13 17:20:00.000"})
    assert ph(sandbox, keys, "GET", f"/call/{call['id']}").json()["endTime"] == "2025-09-13 17:13:00.000"
    r = ph(sandbox, keys, "POST", f"/call/{call['id']}/event", json={"eventType": "HIDE_ALL", "sequence": 5})
    assert r.status_code == 204 and r.content == b""
    assert requests.get(f"{sandbox.url}/sandbox/api/cards").json() == {}


def test_counterparty_linked_by_number_with_owner_extension(sandbox, keys):
    r = ph(sandbox, keys, "POST", "/call", json={**CALL, "number": "+375297111222"})
    owner = r.json()["counterpartyowner"]
    assert owner["extention"] == "151" and owner["meta"]["href"].endswith("000000000151")


@pytest.mark.parametrize("event,status", [
    ({"eventType": "BLINK", "extension": "150", "sequence": 1}, 400),
    ({"eventType": "SHOW", "sequence": 1}, 412),
    ({"eventType": "SHOW", "extension": "150"}, 412),
])
def test_bad_events(sandbox, keys, event, status):
    call = ph(sandbox, keys, "POST", "/call", json=CALL).json()
    assert ph(sandbox, keys, "POST", f"/call/{call['id']}/event", json=event).status_code == status


def test_unknown_call_is_404(sandbox, keys):
    r = ph(sandbox, keys, "PUT", "/call/extid/nope", json={"comment": "x"})
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == 1021


def test_bad_json_and_content_type(sandbox, keys):
    r = ph(sandbox, keys, "POST", "/call", data=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == 2001
    r = ph(sandbox, keys, "POST", "/call", data=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    r = ph(sandbox, keys, "POST", "/call", json={**CALL, "startTime": "13.09.2025"})
    assert r.status_code == 400


def test_own_rate_limit_answers_429_with_retry_after(sandbox, keys):
    statuses = [js(sandbox, keys, "GET", "/entity/organization").status_code for _ in range(17)]
    assert statuses[:15] == [200] * 15 and statuses[15] == 429
    r = js(sandbox, keys, "GET", "/entity/organization")
    assert r.status_code == 429 and 0 < int(r.headers["X-Lognex-Retry-After"]) <= 3001
    assert r.json()["errors"][0]["code"] == 1049
    assert requests.get(f"{sandbox.url}/sandbox/api/requests").json()["own_429"] >= 2


def test_faults_fail_next_and_latency(sandbox, keys):
    r = requests.post(f"{sandbox.url}/sandbox/api/faults", json={"fail_next": 2, "fail_status": 503})
    assert r.json()["fail_next"] == 2
    assert [ph(sandbox, keys, "GET", "/employee").status_code for _ in range(3)] == [503, 503, 200]
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"fail_next": 1, "fail_status": 429, "retry_after_ms": 700})
    r = ph(sandbox, keys, "GET", "/employee")
    assert r.status_code == 429 and r.headers["X-Lognex-Retry-After"] == "700"
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"latency_ms": 200})
    started = time.monotonic()
    ph(sandbox, keys, "GET", "/employee")
    assert time.monotonic() - started >= 0.2
    bad = requests.post(f"{sandbox.url}/sandbox/api/faults", json={"explode": True})
    assert bad.status_code == 400 and bad.json()["field"] == "explode"


def test_phone_api_disabled_is_55008(sandbox, keys):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"phone_api_disabled": True})
    r = ph(sandbox, keys, "GET", "/employee")
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == 55008


def test_request_log_and_reset(sandbox, keys):
    ph(sandbox, keys, "POST", "/call", json=CALL)
    log = requests.get(f"{sandbox.url}/sandbox/api/requests", params={"api": "phone"}).json()["requests"]
    assert log[-1]["method"] == "POST" and log[-1]["path"] == "/api/phone/1.0/call" and log[-1]["status"] == 200
    assert '"externalId"' in log[-1]["body"]
    new_keys = requests.post(f"{sandbox.url}/sandbox/api/reset").json()
    assert new_keys["phone_api_key"] != keys["phone_api_key"]
    assert requests.get(f"{sandbox.url}/sandbox/api/requests").json()["requests"] == []


def test_accounts_are_separate(sandbox, keys):
    other = requests.post(f"{sandbox.url}/sandbox/api/accounts", json={"name": "acme"}).json()
    ph(sandbox, keys, "POST", "/call", json=CALL)
    assert requests.get(f"{sandbox.url}/sandbox/api/calls", params={"account": "acme"}).json()["calls"] == []
    r = requests.get(sandbox.phone_url + "/employee",
                     headers={"Accept-Encoding": "gzip", "Lognex-Phone-Auth-Token": other["phone_api_key"]})
    assert r.status_code == 200


def test_counterparty_search_create_and_order(sandbox, keys):
    rows = js(sandbox, keys, "GET", "/entity/counterparty",
              params={"search": "445613954", "expand": "contactpersons", "limit": 50}).json()["rows"]
    assert [r["name"] for r in rows] == ["ООО Ромашка"]
    assert rows[0]["contactpersons"]["rows"][0]["name"] == "Ольга Смирнова"
    r = js(sandbox, keys, "GET", "/entity/counterparty", params={"expand": "contactpersons", "limit": 500})
    assert r.status_code == 400
    assert js(sandbox, keys, "POST", "/entity/counterparty", json={"phone": "1"}).status_code == 412
    cp = js(sandbox, keys, "POST", "/entity/counterparty", json={"name": "Новый", "phone": "+375291112233"}).json()
    assert js(sandbox, keys, "POST", "/entity/customerorder", json={"agent": {"meta": {"href": "x"}}}).status_code == 412
    r = js(sandbox, keys, "GET", "/entity/counterparty", params={"filter": "phone~291112233"})
    assert [x["id"] for x in r.json()["rows"]] == [cp["id"]]


def test_cards_page_shows_what_employees_see(sandbox, keys):
    ph(sandbox, keys, "POST", "/call", json={**CALL, "events": [{"eventType": "SHOW", "extension": "152", "sequence": 1}]})
    page = requests.get(f"{sandbox.url}/sandbox/").text
    assert "Сидоров Пётр" in page and "+375296254070" in page and "Входящий" in page


EMP = "https://x/api/remap/1.2/entity/employee/0a9c1f00-0000-4000-8000-000000000151"
AGENT = "https://x/api/remap/1.2/entity/counterparty/5c0e7a00-0000-4000-8000-000000000001"


def ref(href, kind):
    return {"meta": {"href": href, "type": kind, "mediaType": "application/json"}}


@pytest.mark.parametrize("missing", ["description", "assignee"])
def test_task_needs_its_required_fields(sandbox, keys, missing):
    body = {"description": "Перезвонить", "assignee": ref(EMP, "employee")}
    body.pop(missing)
    r = js(sandbox, keys, "POST", "/entity/task", json=body)
    assert r.status_code == 412 and r.json()["errors"][0]["code"] == 3000


def test_task_lifecycle_filters_and_notes(sandbox, keys):
    r = js(sandbox, keys, "POST", "/entity/task", json={
        "description": "Перезвонить [ms-task:1]", "assignee": ref(EMP, "employee"), "agent": ref(AGENT, "counterparty"),
        "dueToDate": "2025-09-13 11:12:30"})
    assert r.status_code == 200
    task = r.json()
    assert task["assignee"]["meta"]["href"].endswith("000000000151") and task["done"] is False
    found = js(sandbox, keys, "GET", "/entity/task", params={"filter": "done=false;description~ms-task:1"}).json()
    assert [t["id"] for t in found["rows"]] == [task["id"]]
    href = f"{sandbox.json_url}/entity/counterparty/5c0e7a00-0000-4000-8000-000000000001"
    assert js(sandbox, keys, "GET", "/entity/task", params={"filter": f"agent={href}"}).json()["meta"]["size"] == 1
    note = js(sandbox, keys, "POST", f"/entity/task/{task['id']}/notes", json={"description": "Дозвонились"})
    assert note.status_code == 200
    assert js(sandbox, keys, "PUT", f"/entity/task/{task['id']}", json={"done": True}).json()["done"] is True
    assert js(sandbox, keys, "GET", "/entity/task").json()["rows"] == []  # only open tasks by default
    assert js(sandbox, keys, "GET", f"/entity/task/{task['id']}/notes").json()["rows"][0]["description"] == "Дозвонились"
    assert "Перезвонить" in requests.get(f"{sandbox.url}/sandbox/").text
    assert js(sandbox, keys, "DELETE", f"/entity/task/{task['id']}").status_code == 200
    r = js(sandbox, keys, "GET", f"/entity/task/{task['id']}")
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == 1021


def test_an_account_without_crm_refuses_tasks(sandbox, keys):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"tasks_disabled": True})
    r = js(sandbox, keys, "POST", "/entity/task", json={"description": "x", "assignee": ref(EMP, "employee")})
    assert r.status_code == 403 and "CRM" in r.json()["errors"][0]["error"]


def test_runs_alone_from_the_command_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "msapp", "sandbox", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin", "MS_INSTANCE_DIR": str(tmp_path), "MS_LOG_DIR": str(tmp_path)})
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                keys = requests.get(f"http://127.0.0.1:{port}/sandbox/api/keys", timeout=1).json()
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert len(keys["phone_api_key"]) == 40
    finally:
        proc.terminate()
        proc.wait(10)
