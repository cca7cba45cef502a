"""wsgi.py under another server: `waitress-serve wsgi:app` deletes proxy headers before the app sees
them, so a request a local proxy forwarded would look local. The internal face and /metrics must refuse
it there (the internal token still admits), while `./ms.sh start`'s server keeps serving local callers."""
import os
import sys

import pytest
import requests

from tests.conftest import ADMIN_TOKEN, dispose, free_port, make_app
from tests.service_harness import frozen_objects, service_env, start_process

pytestmark = pytest.mark.e2e
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOKUP = "/internal/ms/customer-name?enterprise_number=0367&phone=%2B375297111222"


def serve_wsgi(db_url, tmp_path, **env):
    make_app(db_url, tmp_path)  # migrated, as `./ms.sh migrate` would
    port = free_port()
    environ = service_env(db_url, port, tmp_path, workers=1, MS_ADMIN_TOKEN=ADMIN_TOKEN, **env)
    waitress = os.path.join(os.path.dirname(sys.executable), "waitress-serve")
    proc = start_process(environ, port, [waitress, f"--listen=127.0.0.1:{port}", "wsgi:app"], cwd=ROOT)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def wsgi_server(db_url, tmp_path):
    proc, base = serve_wsgi(db_url, tmp_path)
    yield base
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize("headers", [{"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}, {}])
def test_waitress_serve_refuses_the_internal_face_and_metrics(wsgi_server, headers):
    r = requests.get(wsgi_server + LOOKUP, headers=headers, timeout=5)
    assert r.status_code == 403 and "MS_INTERNAL_TOKEN" in r.json()["error"]
    assert requests.get(f"{wsgi_server}/metrics", headers=headers, timeout=5).status_code == 403
    # the admin token still opens /metrics, as it does everywhere
    assert requests.get(f"{wsgi_server}/metrics", timeout=5,
                        headers={**headers, "Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200


def test_waitress_serve_freezes_what_startup_built(wsgi_server):
    page = requests.get(f"{wsgi_server}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5).text
    assert frozen_objects(page) > 10_000


def test_waitress_serve_with_the_internal_token_serves_the_pbx(db_url, tmp_path):
    proc, base = serve_wsgi(db_url, tmp_path, MS_INTERNAL_TOKEN="pbx-side-token-1234567890")
    try:
        r = requests.get(base + LOOKUP, headers={"X-Internal-Token": "pbx-side-token-1234567890"}, timeout=5)
        assert r.status_code == 404  # admitted: the enterprise is unknown
        assert requests.get(base + LOOKUP, timeout=5).status_code == 403
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_service_server_still_serves_local_callers(db_url, tmp_path):
    from msapp.web.server import make_server, serve_in_thread

    app = make_app(db_url, tmp_path)
    server = make_server(app, "127.0.0.1", 0)
    serve_in_thread(server)
    base = f"http://127.0.0.1:{server.socket.getsockname()[1]}"
    try:
        assert requests.get(base + LOOKUP, timeout=5).status_code == 404  # admitted
        assert requests.get(base + LOOKUP, headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5).status_code == 403
        assert requests.get(f"{base}/metrics", timeout=5).status_code == 200
    finally:
        server.close()
        dispose(app)
