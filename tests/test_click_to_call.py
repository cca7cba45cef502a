"""The originate handler alone (a fake transport): what is retried, what is dialled once, and the checks
made right before dialling (enabled, the clicked webhook still current, the click young enough). Over real
sockets: test_click_to_call_e2e (a PBX that drops the connection) and test_moysklad_http (the transport)."""
from datetime import timedelta

import pytest

from msapp import clock
from msapp.db.models import Enterprise, IntegrationLog
from msapp.extensions import db
from msapp.moysklad.transport import NetworkError
from msapp.queue import JobContext, Permanent
from msapp.services.click_to_call import Originate, PbxUnreachable
from msapp.services.config_schema import webhook_hash

URL = "http://pbx.local:8018/api/makecallexternal"
SECRET_URL = "http://admin:pbx-pass@pbx.local:8018/api/makecallexternal?key=sekrit"


@pytest.fixture
def ent(app):
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co", secret="client-secret-1", integrations_config={}))
        db.session.commit()
        cfg = app.extensions["ms"].configs.save("0367", {"enabled": True})
        db.session.commit()
    return cfg


def job(cfg, age=1.0, **payload):
    return JobContext(id=1, kind="originate", key="k", enterprise_number="0367",
                      payload={"src": "152", "dest": "+375445613954", "uid": "sidorov@demo",
                               "webhook": webhook_hash(cfg["webhook_uuid"]), **payload},
                      attempts=1, max_attempts=4, created_at=clock.utcnow() - timedelta(seconds=age))


def handler(app, url=URL):
    return Originate(url, app.extensions["ms"].configs, max_age=30.0)


def journal(ran: JobContext):
    """The journal rows of a run: the handler leaves them in the job's unit of work, which the queue writes
    with the outcome (here, at once)."""
    ran.work.commit()
    return db.session.scalars(db.select(IntegrationLog).where(IntegrationLog.event_type == "originate")).all()


def test_a_fresh_click_dials(app, ent, http):
    http.get(URL, text="ok")
    with app.app_context():
        handler(app)(job(ent))
    assert http.call_count == 1
    assert http.last_request.qs == {"code": ["152"], "phone": ["+375445613954"],
                                    "clientId": ["client-secret-1"]}


@pytest.mark.parametrize("why,change", [
    ("turned off", lambda app: app.extensions["ms"].configs.save("0367", {"enabled": False})),
    ("webhook address was changed", lambda app: app.extensions["ms"].configs.regenerate_webhook("0367")),
    ("older than 30 s", lambda app: clock.advance(31)),
])
def test_a_click_no_longer_wanted_is_dropped_without_dialling(app, ent, http, why, change):
    http.get(URL, text="ok")
    clicked = job(ent)
    with app.app_context():
        change(app)
        with pytest.raises(Permanent, match="click dropped"):
            handler(app)(clicked)
        assert why in journal(clicked)[-1].error_message
    assert http.call_count == 0


def test_a_click_without_its_webhook_is_dropped(app, ent, http):
    http.get(URL, text="ok")
    with app.app_context(), pytest.raises(Permanent):
        handler(app)(job(ent, webhook=None))
    assert http.call_count == 0


@pytest.mark.parametrize("exc,retried", [
    (NetworkError("ConnectionError", False, "NewConnectionError"), True),   # refused, DNS
    (NetworkError("ConnectTimeout", False), True),
    (NetworkError("ConnectionError", True, "ProtocolError"), False),        # dropped after sending
    (NetworkError("ReadTimeout", True), False),
])
def test_only_a_request_that_never_left_is_tried_again(app, ent, http, exc, retried):
    http.get(URL, exc=exc)
    with app.app_context():
        clicked = job(ent)
        with pytest.raises(PbxUnreachable if retried else Permanent):
            handler(app)(clicked)
        message = journal(clicked)[-1].error_message
        assert ("will try again" in message) if retried else ("outcome unknown" in message)


def test_a_refused_connection_to_a_real_port_is_never_sent(app, ent):
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/api/makecallexternal"
    with app.app_context(), pytest.raises(PbxUnreachable):
        handler(app, url)(job(ent))


@pytest.mark.parametrize("status", [500, 502, 404])
def test_a_pbx_answer_is_never_repeated(app, ent, http, status):
    http.get(URL, status_code=status)
    with app.app_context(), pytest.raises(Permanent):
        handler(app)(job(ent))


def test_credentials_in_the_originate_url_are_never_journaled(app, ent, http):
    http.get(SECRET_URL, exc=NetworkError("ReadTimeout", True))
    with app.app_context():
        clicked = job(ent)
        with pytest.raises(Permanent):
            handler(app, SECRET_URL)(clicked)
        row = journal(clicked)[-1]
        text = f"{row.request_data} {row.error_message}"
        assert "pbx-pass" not in text and "sekrit" not in text and "client-secret-1" not in text
        assert row.request_data["url"] == "http://••••@pbx.local:8018/api/makecallexternal?key=••••"
