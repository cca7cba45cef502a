"""End to end: the enterprise config is obeyed (enabled, card modes, customers, orders)."""
import pytest
from sqlalchemy import func, select

from msapp.db.models import Job
from msapp.extensions import db
from tests.service_harness import Service, calls, phone_requests, shown_cards

pytestmark = pytest.mark.e2e
UNKNOWN = "+375291000001"
PETROVA = "0a9c1f00-0000-4000-8000-000000000151"
ORG = "a1b2c3d4-0000-4000-8000-000000000001"
STATE = "57a7e500-0000-4000-8000-000000000002"
CHANNEL = "5a1e5000-0000-4000-8000-000000000001"


@pytest.fixture
def make(db_url, tmp_path, sandbox):
    made = []

    def build(**cfg):
        service = Service(db_url, tmp_path / f"s{len(made)}", sandbox)
        service.add_enterprise(**cfg)
        made.append(service)
        return service

    yield build
    for service in made:
        service.stop()


def full_call(svc, uid="c1", phone=UNKNOWN, answered="151", exts=("150", "151")):
    base = dict(unique_id=uid, direction="in", phone=phone)
    svc.event(event_type="dial", extensions=list(exts), **base)
    svc.wait_idle()
    if answered:
        svc.event(event_type="answer", extension=answered, **base)
        svc.wait_idle()
    svc.event(event_type="hangup", call_status="answered" if answered else "missed", **base)
    svc.wait_idle()


def test_disabled_enterprise_is_not_sent(make, sandbox):
    svc = make(enabled=False)
    r = svc.event(unique_id="x", event_type="dial", direction="in", phone=UNKNOWN, extensions=["150"])
    assert r.status_code == 200 and r.json() == {"status": "disabled"}
    with svc.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Job)) == 0
    assert svc.event("incoming-call", unique_id="x", direction="in", phone=UNKNOWN).json() == {"status": "disabled"}
    assert phone_requests(sandbox) == []


def test_answer_mode_shows_only_the_answerer(make, sandbox):
    svc = make(notifications={"call_notify_mode": "answer"})
    base = dict(unique_id="a1", direction="in", phone=UNKNOWN)
    svc.event(event_type="dial", extensions=["150", "151", "152"], **base)
    svc.wait_idle()
    assert shown_cards(sandbox) == {}
    svc.event(event_type="answer", extension="152", **base)
    svc.wait_idle()
    assert list(shown_cards(sandbox)) == ["152"]
    svc.event(event_type="hangup", call_status="answered", **base)
    svc.wait_idle()
    assert shown_cards(sandbox) == {} and len(phone_requests(sandbox)) == 3
    assert {e["extension"] for e in calls(sandbox)[0]["events"]} == {"152"}


@pytest.mark.parametrize("cfg", [{"notifications": {"call_notify_mode": "none"}},
                                 {"notifications": {"notify_incoming": False}}])
def test_cards_off_still_logs_the_call(make, sandbox, cfg):
    svc = make(**cfg)
    full_call(svc, phone="80297111222")
    (call,) = calls(sandbox)
    assert call["events"] == [] and call["extension"] == "151" and call["endTime"]
    assert len(phone_requests(sandbox)) == 2  # no answer PUT without cards


def test_unknown_caller_is_created_with_owner_and_linked(make, sandbox):
    svc = make(incoming_call_actions={"create_customers": True})
    full_call(svc)
    acc = sandbox.state.accounts["demo"]
    created = [cp for cp in acc.counterparties.values() if cp.get("phone") == UNKNOWN]
    assert len(created) == 1 and created[0]["owner"] == PETROVA
    (call,) = calls(sandbox)
    assert call["counterparty"]["href"].endswith(created[0]["id"])
    assert len(phone_requests(sandbox)) == 3 + 1  # + the cached employee list (for the owner)
    full_call(svc, uid="c2")  # the same caller again: found (cached), not created twice
    assert len([cp for cp in acc.counterparties.values() if cp.get("phone") == UNKNOWN]) == 1
    assert calls(sandbox)[1]["counterparty"]["href"].endswith(created[0]["id"])


def test_known_caller_is_not_created(make, sandbox):
    svc = make(incoming_call_actions={"create_customers": True})
    before = len(sandbox.state.accounts["demo"].counterparties)
    full_call(svc, phone="+375 44 561-39-54")  # a contact person of ООО Ромашка
    assert len(sandbox.state.accounts["demo"].counterparties) == before


def test_missed_unknown_caller_created_without_owner(make, sandbox):
    svc = make(incoming_call_actions={"create_customers": True})
    full_call(svc, answered=None)
    created = [cp for cp in sandbox.state.accounts["demo"].counterparties.values() if cp.get("phone") == UNKNOWN]
    assert len(created) == 1 and created[0]["owner"] is None


def test_orders_for_new_customers_with_configured_fields(make, sandbox):
    svc = make(incoming_call_actions={"create_customers": True, "create_orders": "new_customer",
                                      "organization": ORG, "order_state": STATE, "order_source": CHANNEL})
    full_call(svc)
    full_call(svc, uid="c2", phone="80297111222")  # known customer: no order in new_customer mode
    orders = sandbox.state.accounts["demo"].orders
    assert len(orders) == 1
    order = orders[0]
    assert order["organization"]["meta"]["href"].endswith(ORG)
    assert order["state"]["meta"]["href"].endswith(STATE)
    assert order["salesChannel"]["meta"]["href"].endswith(CHANNEL)
    assert order["owner"]["meta"]["href"].endswith(PETROVA)


def test_orders_always_with_defaults_and_legacy_channel_name(make, sandbox):
    svc = make(incoming_call_actions={"create_customers": False, "create_orders": "always"})
    with svc.app.app_context():  # the old service stored a sales channel by name, not id
        from msapp.db.models import Enterprise

        ent = db.session.get(Enterprise, "0367")
        ms_cfg = dict(ent.integrations_config["ms"])
        ms_cfg["incoming_call_actions"] = {"create_orders": "always", "order_source": "Телефонный звонок"}
        ent.integrations_config = {**ent.integrations_config, "ms": ms_cfg}
        db.session.commit()
    full_call(svc, phone="80297111222")
    (order,) = sandbox.state.accounts["demo"].orders
    assert order["agent"]["meta"]["href"].endswith("5c0e7a00-0000-4000-8000-000000000001")
    assert order["organization"]["meta"]["href"].endswith(ORG)  # the account's first organization
    assert order["salesChannel"]["meta"]["href"].endswith(CHANNEL)
    assert "state" not in order


def test_json_api_failure_never_keeps_the_call_out(make, sandbox):
    svc = make(incoming_call_actions={"create_customers": True}, api_token="wrong-token-000000")
    full_call(svc)
    (call,) = calls(sandbox)
    assert call["endTime"] and call["counterparty"] is None
