"""A stand-in for msapp.moysklad.transport in unit tests: answers registered per method and URL, and a
record of every request, with the few requests-mock names the tests read (`last_request.qs`, `.json()`)."""
import json
from urllib.parse import parse_qs, urlencode, urlsplit

from msapp.moysklad.transport import Answer, NetworkError


class SentRequest:
    def __init__(self, method, url, headers, body, timeout):
        self.method, self.url, self.headers, self.body, self.timeout = method, url, headers, body, timeout
        parts = urlsplit(url)
        self.path = parts.path
        self.qs = parse_qs(parts.query)

    def json(self):
        return json.loads(self.body)


class FakeTransport:
    def __init__(self):
        self.routes = {}
        self.request_history = []

    def register_uri(self, method, url, *, json=None, text=None, status_code=200, headers=None, exc=None):
        """Answer `method url` (any query string) with this; `exc` a NetworkError to raise instead."""
        if json is not None:
            content = __import__("json").dumps(json).encode()
        else:
            content = (text or "").encode()
        self.routes[(method.upper(), url.split("?", 1)[0])] = (status_code, dict(headers or {}), content, exc)

    def get(self, url, **kw):
        self.register_uri("GET", url, **kw)

    def post(self, url, **kw):
        self.register_uri("POST", url, **kw)

    def put(self, url, **kw):
        self.register_uri("PUT", url, **kw)

    @property
    def last_request(self):
        return self.request_history[-1] if self.request_history else None

    @property
    def call_count(self):
        return len(self.request_history)

    def send(self, method, url, headers, body, timeout, params=None, proxy=None):
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        self.request_history.append(SentRequest(method, url, dict(headers), body, timeout))
        route = self.routes.get((method, url.split("?", 1)[0]))
        if route is None:
            raise AssertionError(f"no answer registered for {method} {url}")
        status, answer_headers, content, exc = route
        if exc is not None:
            raise exc
        return Answer(status, _Headers(answer_headers), content)


class _Headers(dict):
    """Header lookups in any case, as urllib3's."""

    def __init__(self, items):
        super().__init__({k.lower(): v for k, v in items.items()})

    def get(self, name, default=None):
        return super().get(name.lower(), default)


def refused():
    return NetworkError("ConnectionError", False, "NewConnectionError")


def dropped():
    return NetworkError("ConnectionError", True, "ProtocolError")
