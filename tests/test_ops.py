import pytest
import sqlalchemy as sa

from msapp.db.models import IntegrationLog
from msapp.extensions import db
from tests.conftest import ADMIN_TOKEN

REMOTE = {"REMOTE_ADDR": "203.0.113.9"}


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}


def test_readyz_reports_queue(client, app):
    with app.app_context():
        app.extensions["ms"].queue.enqueue("x", "k", {})
        db.session.commit()
    r = client.get("/readyz")
    body = r.get_json()
    assert r.status_code == 200 and body["database"] == "ok" and body["depth"] == 1
    assert "oldest_pending_age_seconds" in body and body["workers"] == 0


def test_readyz_503_when_workers_are_missing(tmp_path, db_url):
    from tests.conftest import dispose, make_app

    app = make_app(db_url, tmp_path, MS_WORKERS=2)  # pool not started
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and r.get_json()["status"] == "not ready"
    dispose(app)


def test_readyz_503_when_database_is_gone(tmp_path):
    """SQLite form: a directory where the database file was makes every connect fail."""
    import os

    from tests.conftest import dispose, make_app

    app = make_app(f"sqlite:///{tmp_path / 'gone.db'}", tmp_path)
    with app.app_context():
        db.engine.dispose()
    os.remove(tmp_path / "gone.db")
    os.mkdir(tmp_path / "gone.db")
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and r.get_json()["database"].startswith("error")
    dispose(app)


def test_metrics_from_loopback(client):
    r = client.get("/metrics")
    assert r.status_code == 200
    for name in ("ms_events_received_total", "ms_calls_created_total", "ms_moysklad_requests_total",
                 "ms_moysklad_request_seconds", "ms_job_retries_total", "ms_jobs_dead_total",
                 "ms_customers_created_total", "ms_orders_created_total", "ms_queue_depth"):
        assert name in r.text
    # exactly Prometheus's content type: it once came with "; charset=utf-8" twice
    assert r.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"


@pytest.mark.parametrize("environ,headers,status", [
    (REMOTE, {}, 403),
    (REMOTE, {"Authorization": "Bearer wrong"}, 403),
    (REMOTE, {"Authorization": f"Bearer {ADMIN_TOKEN}"}, 200),
    ({}, {"X-Forwarded-For": "203.0.113.9"}, 403),
    ({}, {"Forwarded": "for=203.0.113.9"}, 403),
    ({}, {"X-Real-IP": "203.0.113.9"}, 403),
])
def test_metrics_access(client, environ, headers, status):
    r = client.get("/metrics", environ_base=environ, headers=headers)
    assert r.status_code == status
    if status == 403:
        assert "error" in r.get_json()


def test_unknown_route_is_json_404(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.get_json() == {"error": "not found"}


def test_tables_exist(app):
    with app.app_context():
        assert "ms_jobs" in sa.inspect(db.engine).get_table_names()


def test_guessing_the_admin_token_through_metrics_is_throttled_and_journaled(client, app):
    """/metrics checks a Bearer token through the admin door's throttle: 30 guesses are not 30 tries."""
    codes = [client.get("/metrics", environ_base=REMOTE, headers={"Authorization": f"Bearer guess-{n}"}).status_code
             for n in range(30)]
    assert codes[:9] == [403] * 9 and set(codes[9:]) == {429}, codes
    r = client.get("/metrics", environ_base=REMOTE, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 429 and "Retry-After" in r.headers  # the right token waits out the lockout too
    with app.app_context():
        rows = db.session.scalars(sa.select(IntegrationLog).where(IntegrationLog.event_type == "admin.login")).all()
        assert len(rows) >= 10 and all(row.request_data["path"] == "/metrics" for row in rows)


def test_readyz_names_no_enterprise_to_strangers(client, app):
    with app.app_context():
        app.extensions["ms"].breakers.trip("0367", "phone", "outage", "MoySklad unreachable", 30.0)
        db.session.commit()
    local = client.get("/readyz").get_json()
    assert local["breakers_open"] == 1 and local["breakers"][0]["enterprise"] == "0367"
    stranger = client.get("/readyz", environ_base=REMOTE)
    assert stranger.get_json()["breakers_open"] == 1 and "breakers" not in stranger.get_json()
    assert "0367" not in stranger.text
    admin = client.get("/readyz", environ_base=REMOTE, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert admin.get_json()["breakers"][0]["enterprise"] == "0367"


@pytest.mark.parametrize("faces, served", [
    ("internal,webhook,admin", {"internal", "webhook", "admin"}),
    ("internal,webhook", {"internal", "webhook"}),
    ("admin", {"admin"}),
    ("webhook", {"webhook"}),
])
def test_a_process_answers_only_its_faces_and_the_probes(tmp_path, faces, served):
    """A face left out has no routes: its paths are the app's plain 404, not its own answers."""
    from tests.conftest import dispose, make_app

    def routed(resp) -> bool:
        return resp.status_code != 404 or resp.get_json() != {"error": "not found"}

    app = make_app(f"sqlite:///{tmp_path / 'ms.db'}", tmp_path, MS_FACES=faces)
    c = app.test_client()
    answered = {"internal": routed(c.post("/internal/ms/call-event", json={})),
                "webhook": routed(c.post("/ms/webhook/no-such-uuid", json={})),
                "admin": routed(c.get("/ms-admin/api/config/0367", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}))}
    assert {face for face, yes in answered.items() if yes} == served
    assert c.get("/ms.png").status_code == (200 if "admin" in served else 404)
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    dispose(app)
