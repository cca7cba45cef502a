"""The transport both clients share: one `requests.Session` per thread (kept connections, no cookies),
the headers MoySklad requires, connect and read timeouts, limits, metrics and the exchange log."""
from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Optional, Protocol

import requests
from requests.adapters import HTTPAdapter

from msapp import metrics
from msapp.moysklad.errors import MoySkladError
from msapp.moysklad.limiter import Limiter

ACCEPT = "application/json;charset=utf-8"
DEFAULT_TIMEOUT = (3.05, 10.0)
# Names the process: MoySklad's support (and the sandbox's log) can tell several service processes apart.
USER_AGENT = f"ms-telephony/0.1 (pid {os.getpid()})"
Exchange = Callable[[dict], None]


class Breaker(Protocol):
    """What the transport asks before and tells after each request (services.breakers implements it)."""

    def before(self, enterprise: str, api: str) -> None: ...

    def after(self, enterprise: str, api: str, error: Optional[MoySkladError]) -> None: ...

_local = threading.local()
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps with options builds one per call


def thread_session() -> requests.Session:
    """One requests.Session per thread (sessions are not thread-safe; connections are reused).

    The environment is read once, not per request: with `trust_env` requests stats ~/.netrc and scans the
    proxy variables on every call (3 % of the service's CPU per event). Proxies still follow
    HTTP(S)_PROXY / NO_PROXY per MoySklad URL (`env_proxies`), and a CA bundle REQUESTS_CA_BUNDLE /
    CURL_CA_BUNDLE, as requests would have taken them."""
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        # Keep no cookies: one session serves every enterprise, and a cookie set for one enterprise's
        # credentials must never ride along with another's.
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        session.trust_env = False
        session.verify = _ca_bundle()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=8, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _local.session = session
    return session


def _ca_bundle():
    """The CA bundle requests would verify MoySklad's certificate against (True: requests' own)."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


class ApiClient:
    """Base of PhoneApi and JsonApi. Subclasses set `api` and implement `auth_headers`."""

    api = ""

    def __init__(self, base_url: str, *, enterprise: str = "-", limiter: Optional[Limiter] = None,
                 timeout: tuple = DEFAULT_TIMEOUT, on_exchange: Optional[Exchange] = None,
                 max_wait: float = 2.0, session: Optional[requests.Session] = None,
                 breaker: Optional[Breaker] = None, gate: bool = True):
        self.base_url = base_url.rstrip("/")
        self.enterprise = enterprise
        self.limiter = limiter
        self.timeout = timeout
        self.on_exchange = on_exchange
        self.max_wait = max_wait
        self._session = session
        self.breaker = breaker
        self.gate = gate  # False: ask even while the breaker is open (an admin's connection test)

    def auth_headers(self) -> dict:
        raise NotImplementedError

    def request(self, method: str, path: str, *, body: Any = None, params: Optional[dict] = None,
                event: str = "") -> Any:
        """Send one request; return the decoded JSON (None for 204); raise MoySkladError on failure."""
        headers = {"Accept-Encoding": "gzip", "Accept": ACCEPT, "User-Agent": USER_AGENT, **self.auth_headers()}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = _ENCODE(body).encode("utf-8")
        if self.breaker is not None and self.gate:
            self.breaker.before(self.enterprise, self.api)  # raises BreakerOpen while MoySklad is down
        url = self.base_url + path
        session = self._session or thread_session()
        started = time.monotonic()
        record = {"api": self.api, "event": event or f"{method} {path}", "method": method, "path": path,
                  "params": params, "request": body}
        if self.limiter is not None:
            with self.limiter.slot(self.enterprise, self.api, self.max_wait):
                return self._send(session, method, url, headers, data, params, record, started)
        return self._send(session, method, url, headers, data, params, record, started)

    def _send(self, session, method, url, headers, data, params, record, started):
        try:
            resp = session.request(method, url, headers=headers, data=data, params=params, timeout=self.timeout,
                                   allow_redirects=False,
                                   proxies=env_proxies(self.base_url) if self._session is None else None)
        except (requests.ConnectionError, requests.Timeout) as exc:
            err = MoySkladError(0, type(exc).__name__, api=self.api, network=True)
            self._done(record, started, "network", error=err)
            raise err from None
        if resp.status_code >= 300:
            err = MoySkladError.from_response(resp, self.api)
            outcome = "rate_limited" if resp.status_code == 429 else f"{resp.status_code // 100}xx"
            self._done(record, started, outcome, status=resp.status_code, response=_safe_json(resp), error=err)
            raise err
        payload = None
        if resp.status_code != 204 and resp.content:
            try:
                payload = resp.json()
            except ValueError:
                err = MoySkladError(resp.status_code, "answer is not JSON", api=self.api)
                self._done(record, started, "bad_answer", status=resp.status_code, error=err)
                raise err from None
        self._done(record, started, "ok", status=resp.status_code, response=payload)
        return payload

    def _done(self, record: dict, started: float, outcome: str, *, status: int = 0, response: Any = None,
              error: Optional[MoySkladError] = None) -> None:
        latency = time.monotonic() - started
        metrics.MS_REQUESTS.labels(self.api, outcome).inc()
        metrics.MS_LATENCY.labels(self.api).observe(latency)
        if self.breaker is not None:
            self.breaker.after(self.enterprise, self.api, error)
        if self.on_exchange is not None:
            record.update(status=status, response=response, outcome=outcome,
                          latency_ms=round(latency * 1000, 1), error=str(error) if error else None)
            self.on_exchange(record)


@functools.lru_cache(maxsize=64)
def env_proxies(base_url: str) -> dict:
    """The proxies the environment names for this base URL (NO_PROXY honoured), read once."""
    return requests.utils.get_environ_proxies(base_url)


def _safe_json(resp) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def meta(href: str, type_: str) -> dict:
    """A bare meta object (`{href, type, mediaType}`) as the Phone API wants it."""
    return {"href": href, "type": type_, "mediaType": "application/json"}


def id_from_href(href: Optional[str]) -> Optional[str]:
    if not href:
        return None
    return href.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
