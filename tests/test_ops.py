import pytest
import sqlalchemy as sa

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
