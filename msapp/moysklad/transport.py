"""The one way a request reaches MoySklad: urllib3 connection pools shared by the process.

`Transport.send` takes a method, a URL, headers, a body and `(connect, read)` timeouts and gives an
`Answer` (status, headers, decoded body) or raises `NetworkError` naming what failed (`ConnectionError`,
`ConnectTimeout`, `ReadTimeout`). Connections are kept alive per host and are thread-safe to share;
there is no cookie jar, no redirect following and no retry here (retries are the queue's decision).
Proxies follow HTTP(S)_PROXY / NO_PROXY per URL, read once; TLS is verified against REQUESTS_CA_BUNDLE,
CURL_CA_BUNDLE or certifi's bundle.
"""
from __future__ import annotations

import functools
import json
import os
import threading
import urllib.request
from typing import Any, Optional
from urllib.parse import urlencode, urlsplit

import certifi
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError


class NetworkError(Exception):
    """No answer: `kind` is ConnectionError, ConnectTimeout or ReadTimeout (as requests names them).
    `sent` is False only when no byte of the request can have left (refused, DNS, connect timeout)."""

    def __init__(self, kind: str, sent: bool, detail: str = ""):
        super().__init__(kind if not detail else f"{kind}: {detail}")
        self.kind = kind
        self.sent = sent


class Answer:
    """What the clients read of an HTTP answer."""

    __slots__ = ("status_code", "headers", "content", "reason")

    def __init__(self, status_code: int, headers, content: bytes, reason: str = ""):
        self.status_code, self.headers, self.content, self.reason = status_code, headers, content, reason

    def json(self) -> Any:
        return json.loads(self.content)  # ValueError when it is not JSON


def ca_bundle() -> str:
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()


@functools.lru_cache(maxsize=64)
def env_proxy(url: str) -> Optional[str]:
    """The proxy the environment names for this URL's scheme and host (NO_PROXY honoured), or None."""
    parts, proxies = urlsplit(url), urllib.request.getproxies_environment()
    if urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme)


class Transport:
    """Keep-alive connection pools by scheme, host, port and proxy, shared by every thread."""

    def __init__(self, maxsize: int = 8):
        self.maxsize = maxsize
        self._pools: dict = {}  # (scheme, host, port, proxy) -> (pool, whether paths go as absolute URLs)
        self._timeouts: dict = {}
        self._lock = threading.Lock()

    def _pool(self, url: str, proxy: Optional[str]) -> tuple:
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname, parts.port, proxy)
        found = self._pools.get(key)
        if found is None:
            with self._lock:
                found = self._pools.get(key)
                if found is None:
                    kw = dict(num_pools=4, maxsize=self.maxsize, retries=False, cert_reqs="CERT_REQUIRED",
                              ca_certs=ca_bundle())
                    manager = urllib3.ProxyManager(proxy, **kw) if proxy else urllib3.PoolManager(**kw)
                    pool = manager.connection_from_url(url)
                    # through a plain-http proxy the request line carries the whole URL
                    found = (pool, bool(proxy) and parts.scheme == "http")
                    self._pools[key] = found
        return found

    def _timeout(self, timeout) -> urllib3.Timeout:
        found = self._timeouts.get(timeout)
        if found is None:
            connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
            found = self._timeouts[timeout] = urllib3.Timeout(connect=connect, read=read)
        return found

    def send(self, method: str, url: str, headers: dict, body: Optional[bytes], timeout: tuple,
             params: Optional[dict] = None, proxy: Optional[str] = None) -> Answer:
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        pool, absolute = self._pool(url, proxy)
        path_at = url.find("/", url.find("//") + 2)
        target = url if absolute else (url[path_at:] if path_at >= 0 else "/")
        try:
            resp = pool.urlopen(method, target, body=body, headers=headers, redirect=False, retries=False,
                                assert_same_host=False, timeout=self._timeout(timeout))
        except NewConnectionError as exc:  # refused, unreachable, DNS (a subclass of the connect timeout)
            raise NetworkError("ConnectionError", False, exc.__class__.__name__) from None
        except ConnectTimeoutError:
            raise NetworkError("ConnectTimeout", False) from None
        except ReadTimeoutError:
            raise NetworkError("ReadTimeout", True) from None
        except HTTPError as exc:  # dropped connection, protocol or TLS error: it may have been sent
            raise NetworkError("ConnectionError", True, exc.__class__.__name__) from None
        return Answer(resp.status, resp.headers, resp.data, resp.reason or "")


_process = Transport()


def default() -> Transport:
    """The process's transport."""
    return _process
