"""The support desk over real sockets: find any call by any key, and read its story (docs/design.md 5.4)."""
import pytest
import requests

from tests.conftest import ADMIN_TOKEN, PgSchema, require_pg
from tests.service_harness import Service, calls

pytestmark = pytest.mark.e2e
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
KNOWN = "+375297111222"  # ООО Ромашка
STRANGER = "+375296254070"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def desk(request, tmp_path_factory, sandbox_server):
    """One enterprise with four calls: answered, missed, outgoing, and one MoySklad refused for good."""
    sandbox_server.state.reset()
    tmp = tmp_path_factory.mktemp("desk")
    schema = None
    if request.param == "postgresql":
        require_pg()
        schema = PgSchema()
    svc = Service(schema.url if schema else f"sqlite:///{tmp / 'ms.db'}", tmp, sandbox_server)
    svc.add_enterprise(timezone="Europe/Minsk", incoming_call_actions={"create_customers": True,
                                                                       "create_orders": "none"})
    svc.event(unique_id="a-1", event_type="dial", direction="in", phone="80297111222", extensions=["150", "151"],
              start_time="2025-09-13 10:00:00")
    svc.wait_idle()
    svc.event(unique_id="a-1", event_type="answer", direction="in", phone=KNOWN, extension="151")
    svc.wait_idle()
    svc.event(unique_id="a-1", event_type="hangup", direction="in", phone=KNOWN, call_status="answered",
              end_time="2025-09-13 10:02:05")
    svc.event(unique_id="m-1", event_type="dial", direction="in", phone=STRANGER, extensions=["150"],
              start_time="2025-09-14 09:00:00")
    svc.event(unique_id="m-1", event_type="hangup", direction="in", phone=STRANGER, call_status="missed",
              end_time="2025-09-14 09:00:20")
    svc.event(unique_id="o-1", event_type="dial", direction="out", phone=KNOWN, extension="152",
              start_time="2025-09-15 12:00:00")
    svc.event(unique_id="o-1", event_type="hangup", direction="out", phone=KNOWN, call_status="answered",
              end_time="2025-09-15 12:01:00")
    svc.wait_idle()
    requests.post(f"{sandbox_server.url}/sandbox/api/faults", json={"fail_next": 1, "fail_status": 400,
                                                                    "api": "phone"})
    svc.event(unique_id="x-1", event_type="dial", direction="in", phone="+375331234567", extensions=["150"])
    svc.wait_idle()
    requests.post(f"{sandbox_server.url}/sandbox/api/faults", json={})
    yield svc
    svc.stop()
    if schema is not None:
        schema.drop()


def search(svc, **params):
    r = requests.get(f"{svc.url}/ms-admin/api/calls/0367", params=params, headers=BEARER, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("q", ["80297111222", "+375 (29) 711-12-22", "375297111222", "8 029 711 12 22"])
def test_a_number_in_any_format_finds_its_calls(desk, q):
    found = search(desk, q=q)
    assert sorted(c["unique_id"] for c in found["calls"]) == ["a-1", "o-1"] and found["total"] == 2


def test_by_unique_id_and_by_moysklad_id(desk, sandbox_server):
    assert [c["unique_id"] for c in search(desk, q="m-1")["calls"]] == ["m-1"]
    ms_id = next(c["id"] for c in calls(sandbox_server) if c["externalId"] == "o-1")
    (call,) = search(desk, q=ms_id)["calls"]
    assert call["unique_id"] == "o-1" and call["moysklad_call_id"] == ms_id and ms_id in call["moysklad_url"]


def test_filters_and_row_fields(desk):
    (answered,) = search(desk, q=KNOWN, direction="in")["calls"]
    assert answered["answered_by"] == "151" and answered["rang"] == ["150", "151"]
    assert answered["duration"] is not None and answered["result"] == "answered"
    assert answered["sync"]["state"] == "done" and answered["started_at"] == "2025-09-13T07:00:00.000Z"
    assert [c["unique_id"] for c in search(desk, result="missed")["calls"]] == ["m-1"]
    assert search(desk, direction="out")["total"] == 1


def test_a_call_moysklad_refused_shows_dead_with_its_error(desk):
    (call,) = search(desk, q="x-1")["calls"]
    assert call["sync"]["state"] == "dead" and "400" in call["sync"]["last_error"]


@pytest.mark.parametrize("params,field", [({"from": "13.09.2025"}, "from"), ({"to": "yesterday"}, "to"),
                                          ({"direction": "sideways"}, "direction"), ({"result": "maybe"}, "result")])
def test_bad_filters_are_400_with_the_field(desk, params, field):
    r = requests.get(f"{desk.url}/ms-admin/api/calls/0367", params=params, headers=BEARER, timeout=10)
    assert r.status_code == 400 and r.json()["field"] == field


def test_the_timeline_tells_the_story_oldest_first(desk):
    r = requests.get(f"{desk.url}/ms-admin/api/calls/0367/a-1", headers=BEARER, timeout=10)
    assert r.status_code == 200
    story = r.json()["timeline"]
    assert [e["at"] for e in story] == sorted(e["at"] for e in story)
    kinds = [e["kind"] for e in story]
    assert {"pbx", "moysklad", "card", "job"} <= set(kinds)
    summaries = " | ".join(e["summary"] for e in story)
    assert "событие АТС: dial" in summaries and "событие АТС: hangup" in summaries
    assert "POST /call → 200" in summaries and "карточка показана: доб. 150" in summaries
    assert "разговор начат: доб. 151" in summaries and "карточка скрыта: доб. 150" in summaries
    missed = requests.get(f"{desk.url}/ms-admin/api/calls/0367/m-1", headers=BEARER, timeout=10).json()
    assert "создан клиент" in " | ".join(e["summary"] for e in missed["timeline"])
    assert requests.get(f"{desk.url}/ms-admin/api/calls/0367/nope", headers=BEARER, timeout=10).status_code == 404


def test_the_pages(desk):
    page = requests.get(f"{desk.url}/ms-admin/calls", params={"enterprise_number": "0367", "q": "80297111222"},
                        headers=BEARER, timeout=10).text
    assert "a-1" in page and "m-1" not in page and "Начало (Europe/Minsk)" in page
    partial = requests.get(f"{desk.url}/ms-admin/calls", params={"enterprise_number": "0367", "from": "bad"},
                           headers={**BEARER, "HX-Request": "true"}, timeout=10)
    assert partial.status_code == 200 and "ГГГГ-ММ-ДД" in partial.text and "<html" not in partial.text
    story = requests.get(f"{desk.url}/ms-admin/calls/0367/a-1", headers=BEARER, timeout=10).text
    assert "Что происходило" in story and "карточка показана" in story


def test_customer_names_survive_a_restart(desk, sandbox_server):
    """The names the desk shows come from stored data: with this process's lookup cache emptied (as after
    a restart), the customer created for the missed caller is still named."""
    desk.app.extensions["ms"].clients.cache.drop(lambda key: True)
    (missed,) = search(desk, q="m-1")["calls"]
    created = next(c for c in sandbox_server.state.accounts["demo"].counterparties.values()
                   if c.get("externalCode") == "ms-call-0367-m-1")
    assert missed["customer"] == created["name"] and missed["counterparty_id"] == created["id"]
    r = requests.get(f"{desk.url}/ms-admin/api/calls/0367/m-1", headers=BEARER, timeout=10)
    assert r.json()["customer"] == created["name"]


def test_a_name_a_lookup_found_is_kept(desk):
    """The dialplan's lookup names the caller: kept with the lookup, shown by the desk without the cache."""
    desk.app.extensions["ms"].clients.cache.drop(lambda key: True)
    r = requests.get(f"{desk.url}/internal/ms/customer-by-phone",
                     params={"enterprise_number": "0367", "phone": "80297111222"}, timeout=5)
    assert r.status_code == 200 and r.json()["found"], r.text
    desk.app.extensions["ms"].clients.cache.drop(lambda key: True)
    rows = search(desk, q=KNOWN)["calls"]
    assert rows and {c["customer"] for c in rows} == {r.json()["name"]}


@pytest.mark.parametrize("q", [KNOWN, "a-1", "m-1"])
def test_a_search_walks_indexes_of_the_enterprise(desk, sandbox_server, q):
    """By phone, PBX unique_id or MoySklad id: each key is an index of the enterprise's calls, and so are
    the page's job and name lookups (tests/explain.py); never a walk of the platform's ms_calls."""
    from tests.explain import assert_index_access, selects

    ms_id = next(c["id"] for c in calls(sandbox_server) if c["externalId"] == "o-1")
    with desk.app.app_context():
        with selects() as seen:
            for key in (q, ms_id):
                assert desk.app.extensions["ms"].support.search("0367", q=key)["total"] >= 1
        assert any("ms_calls" in s for s, _ in seen)
        assert_index_access(seen, keyed=True, rows=a_grown_enterprise)


def a_grown_enterprise(conn):
    """5,000 more calls of the enterprise and fresh statistics (rolled back with the EXPLAINs)."""
    from sqlalchemy import text

    from msapp.db.models import Call

    conn.execute(Call.__table__.insert(), [
        {"enterprise_number": "0367", "unique_id": f"grown-{n}", "direction": "in", "phone": f"+37529{1000000 + n}",
         "extensions": ["150"], "status": "ended", "call_status": "answered", "ms_call_id": f"ms-grown-{n}"}
        for n in range(5000)])
    conn.execute(text("ANALYZE ms_calls"))
