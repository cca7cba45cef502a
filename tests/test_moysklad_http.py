"""The transport production uses (urllib3 pools shared by the process), against the sandbox and a small
recording server on real sockets: what goes out, what comes back, and how failures look to the clients."""
import gzip
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import trustme

from msapp.moysklad import MoySkladError
from msapp.moysklad import http as http_module
from msapp.moysklad import transport as transport_module
from msapp.moysklad.phone_api import PhoneApi
from msapp.moysklad.transport import env_proxy
from tests.conftest import free_port

CALL = {"externalId": "direct-1", "number": "+375296254070", "isIncoming": True, "startTime": "2026-11-27 10:00:00",
        "events": [{"eventType": "SHOW", "extension": "150", "sequence": 1}]}


def phone(sandbox, **kw):
    return PhoneApi(sandbox.phone_url, sandbox.state.keys()["demo"]["phone_api_key"], **kw)


def test_a_call_is_sent_and_its_answer_read(sandbox):
    created = phone(sandbox).create_call(CALL)
    assert created["externalId"] == "direct-1" and created["id"]
    assert [c["externalId"] for c in requests.get(f"{sandbox.url}/sandbox/api/calls").json()["calls"]] == ["direct-1"]


def test_errors_are_read_from_the_answer(sandbox):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"fail_rate": 1.0, "fail_status": 429,
                                                             "retry_after_ms": 700})
    with pytest.raises(MoySkladError) as caught:
        phone(sandbox).create_call(CALL)
    assert caught.value.status == 429 and caught.value.retry_after == pytest.approx(0.7)
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
    with pytest.raises(MoySkladError) as caught:
        phone(sandbox).update_call("no-such-call", {"endTime": "2026-11-27 10:01:00"})
    assert caught.value.status == 404


def test_network_failures_are_network_errors():
    client = PhoneApi(f"http://127.0.0.1:{free_port()}/api/phone/1.0", "k" * 32, timeout=(0.5, 0.5))
    with pytest.raises(MoySkladError) as caught:
        client.create_call(CALL)
    assert caught.value.network and caught.value.status == 0 and "ConnectionError" in str(caught.value)


def test_a_slow_answer_is_a_read_timeout(sandbox):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"latency_ms": 1500})
    with pytest.raises(MoySkladError) as caught:
        phone(sandbox, timeout=(1.0, 0.3)).create_call(CALL)
    assert caught.value.network and "ReadTimeout" in str(caught.value)
    deadline = time.time() + 5  # the sandbox still applies it: let it land here, not in the next test's log
    while time.time() < deadline and not requests.get(f"{sandbox.url}/sandbox/api/calls").json()["calls"]:
        time.sleep(0.1)


class Recorder:
    """An HTTP/1.1 server on a free port (TLS with `tls`) that answers every request with `answer` and
    records what came: method, path, headers, body and the client's port (one per connection)."""

    def __init__(self, tls=None):
        self.seen, self.answer = [], (200, {"Content-Type": "application/json"}, b'{"ok": true}')
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def _any(self):
                size = int(self.headers.get("Content-Length") or 0)
                outer.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                   "body": self.rfile.read(size) if size else b"", "port": self.client_address[1]})
                status, headers, body = outer.answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # 40 threads connect at once

        self.server = Server(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}/api/phone/1.0"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.close()


def test_methods_bodies_and_headers_go_as_asked_on_one_kept_connection(recorder):
    client = PhoneApi(recorder.url, "k" * 32)
    client.create_call(CALL)
    client.get_call("c-1")
    client.request("DELETE", "/call/c-1")
    client.update_call("c-1", {"comment": "Входящий"})
    post, get, delete, put = recorder.seen
    assert [r["method"] for r in recorder.seen] == ["POST", "GET", "DELETE", "PUT"]
    assert json.loads(post["body"]) == CALL and get["body"] == b"" and delete["body"] == b""
    assert json.loads(put["body"].decode("utf-8")) == {"comment": "Входящий"}
    assert put["path"] == "/api/phone/1.0/call/c-1"
    for seen in recorder.seen:  # what MoySklad requires, and no 100-continue round trip
        assert seen["headers"]["Lognex-Phone-Auth-Token"] == "k" * 32 and "Expect" not in seen["headers"]
        assert seen["headers"]["Accept"] == http_module.ACCEPT and seen["headers"]["Accept-Encoding"] == "gzip"
    assert post["headers"]["Content-Type"] == "application/json"
    assert len({r["port"] for r in recorder.seen}) == 1  # keep-alive: one connection for the thread


def test_query_parameters_are_encoded(recorder):
    recorder.answer = (200, {"Content-Type": "application/json"}, b'{"employees": []}')
    assert PhoneApi(recorder.url, "k" * 32).employees(extension="150") == []
    assert recorder.seen[0]["path"] == "/api/phone/1.0/employee?filter=extention%3D150"


def test_a_proxy_the_environment_names_is_used(recorder, monkeypatch):
    """Proxies follow HTTP(S)_PROXY / NO_PROXY per MoySklad URL, read once (env_proxy)."""
    base = recorder.url.rsplit("/api/", 1)[0]
    monkeypatch.setenv("http_proxy", base)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    env_proxy.cache_clear()
    assert PhoneApi("http://moysklad.invalid/api/phone/1.0", "k" * 32).create_call(CALL) == {"ok": True}
    assert recorder.seen[0]["path"] == "http://moysklad.invalid/api/phone/1.0/call"  # asked of the proxy
    env_proxy.cache_clear()  # the next test's environment has no proxy


def test_a_gzipped_answer_is_decoded_and_headers_read_in_any_case(recorder):
    body = json.dumps({"id": "z-1", "comment": "сжато"}, ensure_ascii=False).encode("utf-8")
    recorder.answer = (200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, gzip.compress(body))
    assert PhoneApi(recorder.url, "k" * 32).create_call(CALL) == {"id": "z-1", "comment": "сжато"}
    recorder.answer = (429, {"x-lognex-retry-after": "1500"}, b'{"errors": [{"error": "too many"}]}')
    with pytest.raises(MoySkladError) as caught:
        PhoneApi(recorder.url, "k" * 32).create_call(CALL)
    assert caught.value.status == 429 and caught.value.retry_after == pytest.approx(1.5)


def test_tls_is_verified_and_a_ca_bundle_can_be_named(tmp_path, monkeypatch):
    """Against a server whose certificate a test CA signed: refused with the default bundle (certifi's),
    accepted once REQUESTS_CA_BUNDLE names that CA (read when the transport opens its pools)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = Recorder(tls=context)
    try:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        monkeypatch.setattr(transport_module, "_process", transport_module.Transport())
        with pytest.raises(MoySkladError) as caught:
            PhoneApi(server.url, "k" * 32).create_call(CALL)
        assert caught.value.network and server.seen == []
        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        monkeypatch.setattr(transport_module, "_process", transport_module.Transport())
        assert PhoneApi(server.url, "k" * 32).create_call(CALL) == {"ok": True}
        assert server.seen[0]["method"] == "POST"
    finally:
        server.close()


def test_no_cookie_set_for_one_enterprise_rides_with_another(recorder):
    """One transport serves every enterprise: it keeps no cookie jar, so a `Set-Cookie` answered to one
    enterprise's key is never sent with another's."""
    recorder.answer = (200, {"Content-Type": "application/json", "Set-Cookie": "JSESSIONID=of-enterprise-a; Path=/"},
                       b'{"employees": []}')
    PhoneApi(recorder.url, "a" * 32).create_call(CALL)
    PhoneApi(recorder.url, "a" * 32).employees(extension="150")
    PhoneApi(recorder.url, "b" * 32).create_call(CALL)
    PhoneApi(recorder.url, "b" * 32).employees(extension="151")
    assert [r["path"].split("?")[0] for r in recorder.seen] == ["/api/phone/1.0/call", "/api/phone/1.0/employee"] * 2
    assert not any("Cookie" in r["headers"] or "cookie" in r["headers"] for r in recorder.seen)
