"""The journal as support staff read it: Cyrillic as text, local times, by call, by text, problems."""
import pytest
import requests
from sqlalchemy import Text, cast, select

from msapp.db.models import IntegrationLog
from msapp.extensions import db
from tests.conftest import ADMIN_TOKEN
from tests.service_harness import Service

pytestmark = pytest.mark.e2e
CALLER = "+375296254070"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def svc(db_url, tmp_path, sandbox):
    service = Service(db_url, tmp_path, sandbox)
    service.add_enterprise(timezone="Asia/Vladivostok")
    for uid in ("j-1", "j-2"):
        service.event(unique_id=uid, event_type="dial", direction="in", phone=CALLER, extensions=["150"])
        service.event(unique_id=uid, event_type="hangup", direction="in", phone=CALLER, call_status="missed")
    service.wait_idle()
    yield service
    service.stop()


def journal(svc, **params):
    return requests.get(f"{svc.url}/ms-admin/journal", params={"enterprise_number": "0367", **params},
                        headers=BEARER, timeout=10).text


def test_cyrillic_is_stored_and_shown_as_text(svc):
    with svc.app.app_context():
        stored = db.session.scalars(select(cast(IntegrationLog.request_data, Text)).where(
            IntegrationLog.event_type.like("ms.phone.call.%"))).all()
    assert any("Входящий звонок" in text for text in stored)
    assert not any("\\u04" in text for text in stored)
    page = journal(svc)
    assert "Входящий звонок · пропущен" in page and "\\u04" not in page
    assert "Время (Asia/Vladivostok)" in page


def test_filter_by_call_and_by_text(svc):
    page = journal(svc, call="j-2")
    assert "j-2" in page and "j-1" not in page
    assert journal(svc, q="пропущен").count("<tr class=") >= 2
    assert "Записей: 0" in journal(svc, q="нет такого текста")


def test_problems_show_errors_and_breakers(svc, sandbox):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"fail_rate": 1.0, "api": "phone"})
    try:
        for n in range(6):
            svc.event(unique_id=f"p-{n}", event_type="dial", direction="in", phone=CALLER, extensions=["150"])
        import time

        time.sleep(2)
        page = journal(svc, status="problems")
        assert "breaker.open" in page and "МойСклад недоступен" in page and "ошибка" in page
        assert "ms.phone.call.create" in page and "event.call-event" not in page
    finally:
        requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
