"""What both clients share around the transport (transport.py): the headers MoySklad requires, timeouts,
limits, the breaker, metrics and the exchange log."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, Optional, Protocol

from msapp import metrics
from msapp.moysklad.errors import MoySkladError
from msapp.moysklad.limiter import Limiter
from msapp.moysklad.transport import NetworkError, Transport, env_proxy
from msapp.moysklad.transport import default as default_transport

ACCEPT = "application/json;charset=utf-8"
DEFAULT_TIMEOUT = (3.05, 10.0)
# Names the process: MoySklad's support (and the sandbox's log) can tell several service processes apart.
USER_AGENT = f"ms-telephony/0.1 (pid {os.getpid()})"
Exchange = Callable[[dict], None]


class Breaker(Protocol):
    """What the transport asks before and tells after each request (services.breakers implements it)."""

    def before(self, enterprise: str, api: str) -> None: ...

    def after(self, enterprise: str, api: str, error: Optional[MoySkladError]) -> None: ...

_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps with options builds one per call


class ApiClient:
    """Base of PhoneApi and JsonApi. Subclasses set `api` and implement `auth_headers`."""

    api = ""

    def __init__(self, base_url: str, *, enterprise: str = "-", limiter: Optional[Limiter] = None,
                 timeout: tuple = DEFAULT_TIMEOUT, on_exchange: Optional[Exchange] = None,
                 max_wait: float = 2.0, transport: Optional[Transport] = None,
                 breaker: Optional[Breaker] = None, gate: bool = True):
        self.base_url = base_url.rstrip("/")
        self.enterprise = enterprise
        self.limiter = limiter
        self.timeout = timeout
        self.on_exchange = on_exchange
        self.max_wait = max_wait
        self.transport = transport or default_transport()
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
        started = time.monotonic()
        record = {"api": self.api, "event": event or f"{method} {path}", "method": method, "path": path,
                  "params": params, "request": body}
        if self.limiter is not None:
            with self.limiter.slot(self.enterprise, self.api, self.max_wait):
                return self._send(method, url, headers, data, params, record, started)
        return self._send(method, url, headers, data, params, record, started)

    def _send(self, method, url, headers, data, params, record, started):
        try:
            resp = self.transport.send(method, url, headers, data, self.timeout, params, env_proxy(self.base_url))
        except NetworkError as exc:
            err = MoySkladError(0, exc.kind, api=self.api, network=True)
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
