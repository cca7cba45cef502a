"""The transport's direct path (urllib3, without requests' session machinery), against the sandbox on a
real socket: it is taken exactly when requests would only pass the request on, and answers and
failures look the same to the clients as through requests."""
import time

import pytest
import requests

from msapp.moysklad import MoySkladError
from msapp.moysklad import http as transport
from msapp.moysklad.phone_api import PhoneApi
from tests.conftest import free_port

CALL = {"externalId": "direct-1", "number": "+375296254070", "isIncoming": True, "startTime": "2026-11-27 10:00:00",
        "events": [{"eventType": "SHOW", "extension": "150", "sequence": 1}]}


@pytest.fixture
def no_requests(monkeypatch):
    """requests' Session.request may not run: the direct path must carry the request."""

    real = requests.Session.request

    def refuse(session, method, url, *a, **kw):
        if "/api/phone/" in url or "/api/remap/" in url:
            raise AssertionError("requests.Session.request was used")
        return real(session, method, url, *a, **kw)  # the test's own calls to the sandbox's control API

    monkeypatch.setattr(requests.Session, "request", refuse)


def phone(sandbox, **kw):
    return PhoneApi(sandbox.phone_url, sandbox.state.keys()["demo"]["phone_api_key"], **kw)


def test_a_call_goes_direct_and_reads_the_answer(sandbox, no_requests):
    created = phone(sandbox).create_call(CALL)
    assert created["externalId"] == "direct-1" and created["id"]
    assert [c["externalId"] for c in requests.get(f"{sandbox.url}/sandbox/api/calls").json()["calls"]] == ["direct-1"]


def test_errors_read_the_same_direct(sandbox, no_requests):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"fail_rate": 1.0, "fail_status": 429,
                                                             "retry_after_ms": 700})
    with pytest.raises(MoySkladError) as caught:
        phone(sandbox).create_call(CALL)
    assert caught.value.status == 429 and caught.value.retry_after == pytest.approx(0.7)
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
    with pytest.raises(MoySkladError) as caught:
        phone(sandbox).update_call("no-such-call", {"endTime": "2026-11-27 10:01:00"})
    assert caught.value.status == 404


def test_network_failures_are_network_errors(no_requests):
    client = PhoneApi(f"http://127.0.0.1:{free_port()}/api/phone/1.0", "k" * 32, timeout=(0.5, 0.5))
    with pytest.raises(MoySkladError) as caught:
        client.create_call(CALL)
    assert caught.value.network and caught.value.status == 0 and "ConnectionError" in str(caught.value)


def test_a_slow_answer_is_a_read_timeout(sandbox, no_requests):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"latency_ms": 1500})
    with pytest.raises(MoySkladError) as caught:
        phone(sandbox, timeout=(1.0, 0.3)).create_call(CALL)
    assert caught.value.network and "ReadTimeout" in str(caught.value)
    deadline = time.time() + 5  # the sandbox still applies it: let it land here, not in the next test's log
    while time.time() < deadline and not requests.get(f"{sandbox.url}/sandbox/api/calls").json()["calls"]:
        time.sleep(0.1)


def test_a_mocked_transport_still_answers(sandbox, requests_mock):
    """requests-mock replaces requests' send: the request goes through requests, to the mock."""
    requests_mock.post(f"{sandbox.phone_url}/call", json={"id": "m-1"})
    assert phone(sandbox).create_call(CALL) == {"id": "m-1"}


def test_requests_carries_query_parameters_and_proxies(sandbox, monkeypatch):
    session, client = transport.thread_session(), phone(sandbox)
    assert client._direct_ok(session, f"{sandbox.phone_url}/call", None)
    assert not client._direct_ok(session, f"{sandbox.phone_url}/employee", {"filter": "x"})
    monkeypatch.setattr(transport, "env_proxies", lambda _url: {"http": "http://proxy.invalid:3128"})
    assert not client._direct_ok(session, f"{sandbox.phone_url}/call", None)
    assert not phone(sandbox, session=requests.Session())._direct_ok(session, f"{sandbox.phone_url}/call", None)


def test_the_direct_path_verifies_tls_as_requests_does(monkeypatch):
    import certifi

    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    pool, prefix = transport._host_pool("https://api.moysklad.example/api/phone/1.0")
    assert pool.cert_reqs == "CERT_REQUIRED" and pool.ca_certs == certifi.where() and prefix == "/api/phone/1.0"
