"""What every bench run shares: the sandbox and service processes, the database, the load generator
(a light HTTP client, open and closed loops), and the small statistics."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Optional

import requests

CALLER = "+375296254070"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _pct(values: list, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def p50_p95_ms(seconds: list) -> tuple:
    """The median and the 95th percentile of some durations (s), in ms to a tenth."""
    return round(_pct(seconds, 50) * 1000, 1), round(_pct(seconds, 95) * 1000, 1)


def _cpu_seconds(pid: int) -> float:
    """CPU time (utime + stime) a process has used, in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()  # the name may hold spaces: count after its ')'
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Answer:
    def __init__(self, status: int, body: bytes):
        self.status_code, self.text = status, body.decode("utf-8", "replace")


class LightClient:
    """Keep-alive HTTP/1.1 with far less CPU per request than `requests` (the load generator shares the
    cores with the service it measures). Speaks just enough of `requests.Session` for `Env.event`."""

    def __init__(self):
        self._conns: dict = {}

    def _send(self, method: str, url: str, body, timeout: float) -> _Answer:
        rest = url.split("://", 1)[1]
        netloc, _, path = rest.partition("/")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):  # a kept-alive connection the server closed is opened again once
            conn = self._conns.get(netloc)
            if conn is None:
                host, _, port = netloc.partition(":")
                conn = self._conns[netloc] = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
            try:
                conn.request(method, "/" + path, data, headers)
                answer = conn.getresponse()
                return _Answer(answer.status, answer.read())
            except (http.client.HTTPException, OSError):
                conn.close()
                del self._conns[netloc]
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def post(self, url: str, json=None, timeout: float = 10):  # noqa: A002 - the requests signature
        return self._send("POST", url, json, timeout)

    def get(self, url: str, timeout: float = 10):
        return self._send("GET", url, None, timeout)


def _rss_mb(pid: int, field_name: str = "VmHWM") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Env:
    sandbox_url: str
    service_urls: list
    procs: list
    accounts: list = field(default_factory=list)
    http: requests.Session = field(default_factory=requests.Session)
    held: int = 0  # jobs held in the queue throughout (`--waiting`): idle is this many left

    @property
    def service_url(self) -> str:
        return self.service_urls[0]

    def faults(self, **faults) -> None:
        self.http.post(f"{self.sandbox_url}/sandbox/api/faults", json=faults, timeout=5).raise_for_status()

    def log(self, since: int = 0) -> dict:
        return self.http.get(f"{self.sandbox_url}/sandbox/api/requests", params={"since": since}, timeout=60).json()

    def calls(self, account: str) -> list:
        return self.http.get(f"{self.sandbox_url}/sandbox/api/calls", params={"account": account},
                             timeout=60).json()["calls"]

    def event(self, session: requests.Session, enterprise: str, body: dict) -> float:
        # every event of one call goes to the same process, as from one PBX host
        url = self.service_urls[hash(body.get("unique_id")) % len(self.service_urls)]
        started = time.perf_counter()
        r = session.post(f"{url}/internal/ms/call-event",
                         json={"enterprise_number": enterprise, **body}, timeout=10)
        elapsed = time.perf_counter() - started
        if r.status_code != 202:
            raise RuntimeError(f"event answered {r.status_code}: {r.text[:200]}")
        return elapsed

    def ended(self, prefix: str) -> int:
        """Calls whose externalId starts with `prefix` that the sandbox holds ended, over all accounts."""
        return sum(self.http.get(f"{self.sandbox_url}/sandbox/api/calls", timeout=60,
                                 params={"account": account, "prefix": prefix, "summary": 1}).json()["ended"]
                   for _, account in self.accounts)

    def wait_idle(self, timeout: float = 600.0) -> float:
        started = time.time()
        while time.time() - started < timeout:
            body = self.http.get(f"{self.service_url}/readyz", timeout=10).json()
            if body.get("depth", 0) <= self.held:
                return time.time() - started
            time.sleep(0.25)
        raise RuntimeError("the queue did not drain")


@contextmanager
def _sandbox():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "msapp", "sandbox", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/sandbox/api/keys")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _database(kind: str, pg_url: str, tmp: str):
    """A fresh database URL (PostgreSQL: a new schema on the search_path) and its cleanup."""
    if kind == "sqlite":
        return f"sqlite:///{tmp}/bench.db", lambda: None
    import psycopg2

    schema = "bench_" + uuid.uuid4().hex[:10]
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE SCHEMA "{schema}"')

    def drop():
        conn.cursor().execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()

    sep = "&" if "?" in pg_url else "?"
    return f"{pg_url}{sep}options=-csearch_path%3D{schema}", drop


def _prepare(db_url: str, tmp: str, sandbox_url: str, enterprises: int) -> list:
    from msapp import create_app
    from msapp.db.models import Enterprise
    from msapp.db.schema import upgrade_database
    from msapp.extensions import db

    app = create_app({"MS_DATABASE_URL": db_url, "MS_INSTANCE_DIR": tmp, "MS_LOG_DIR": tmp, "MS_WORKERS": "0",
                      "MS_PHONE_API_URL": f"{sandbox_url}/api/phone/1.0"})
    upgrade_database(app)
    numbers = []
    with app.app_context():
        for i in range(enterprises):
            name = f"acc{i}"
            keys = requests.post(f"{sandbox_url}/sandbox/api/accounts", json={"name": name}, timeout=5).json()
            number = f"{1000 + i}"
            db.session.add(Enterprise(number=number, name=name, integrations_config={}))
            db.session.commit()
            app.extensions["ms"].configs.save(number, {"enabled": True, "integration_code": keys["phone_api_key"],
                                                       "api_token": keys["json_api_token"]})
            numbers.append((number, name))
        release_db()
    return numbers


def release_db() -> None:
    """Close this process's session and pool, so that a service process or a dropped database finds no
    connection of ours (inside an app context)."""
    from msapp.extensions import db

    db.session.remove()
    db.engine.dispose()


@contextmanager
def _services(db_url: str, tmp: str, sandbox_url: str, workers: int, count: int):
    """`count` service processes on one database (each its own port and worker id)."""
    with ExitStack() as stack:
        started = [stack.enter_context(_service(db_url, tmp, sandbox_url, workers)) for _ in range(count)]
        yield [url for url, _ in started], [proc for _, proc in started]


def service_env(db_url: str, port: int, instance_dir: str, log_dir: str, workers: int, **settings: str) -> dict:
    """The environment of a real `ms serve`: this process's own MS_* settings left out, the database, the
    port, the instance and log directories, the worker count, and `settings` (more MS_* ones)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MS_")},
            "MS_DATABASE_URL": db_url, "MS_PORT": str(port), "MS_INSTANCE_DIR": instance_dir,
            "MS_LOG_DIR": log_dir, "MS_WORKERS": str(workers), **settings}


def start_service(env: dict, port: int, command: Optional[list] = None, cwd: Optional[str] = None) -> subprocess.Popen:
    """`python -m msapp serve` (or `command`, from `cwd`) as a process of its own with `env`; returned once
    /healthz answers on `port`."""
    proc = subprocess.Popen(command or [sys.executable, "-m", "msapp", "serve"], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
    except RuntimeError:
        proc.kill()
        raise
    return proc


@contextmanager
def _service(db_url: str, tmp: str, sandbox_url: str, workers: int, settings: Optional[dict] = None):
    port = _free_port()
    proc = start_service(service_env(db_url, port, tmp, tmp, workers, MS_LOG_LEVEL="WARNING",
                                     MS_PHONE_API_URL=f"{sandbox_url}/api/phone/1.0",
                                     MS_JSON_API_URL=f"{sandbox_url}/api/remap/1.2", **(settings or {})), port)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(30)


def _call_events(uid: str, phones: int = 3) -> list:
    exts = [str(150 + i) for i in range(phones)]
    base = {"unique_id": uid, "direction": "in", "phone": CALLER}
    return [{**base, "event_type": "dial", "extensions": exts},
            {**base, "event_type": "answer", "extension": exts[-1]},
            {**base, "event_type": "hangup", "call_status": "answered"}]


def _senders(count: int, senders: int, work, sample=None) -> None:
    """`senders` threads, each with its own LightClient, share the work items 0..count-1 (`work(client, i)`);
    `sample()` runs every 0.5 s until they are done."""
    index, lock = iter(range(count)), threading.Lock()

    def sender():
        client = LightClient()
        while True:
            with lock:
                i = next(index, None)
            if i is None:
                return
            work(client, i)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if sample:
            sample()
        time.sleep(0.5 if sample else 0.02)


def _open_loop(env: Env, events: list, rate: float, senders: int = 16, sample=None) -> list:
    """Send (enterprise, body) events at a fixed rate, whatever the answers take; return latencies (s)."""
    latencies, lock = [], threading.Lock()
    start = time.perf_counter() + 0.2

    def send(client, i):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elapsed = env.event(client, *events[i])
        with lock:
            latencies.append(elapsed)

    _senders(len(events), senders, send, sample)
    return latencies


def _interleave(calls: list) -> list:
    """Events of many calls in a realistic order: each call's dial, answer, hangup a few slots apart."""
    out, pending = [], []
    for call in calls:
        pending.append(list(call))
        for c in list(pending[-3:]):
            out.append(c.pop(0))
        pending = [c for c in pending if c]
    for c in pending:
        out.extend(c)
    return out


def _ack_latency(env: Env, rate: float, seconds: float, tag: str = "ack") -> dict:
    count = int(rate * seconds)
    calls = [(env.accounts[i % len(env.accounts)][0], ev) for i in range(count // 3 + 1)
             for ev in _call_events(f"{tag}-{i}")]
    events = _interleave([[c for c in calls[j:j + 3]] for j in range(0, len(calls), 3)])[:count]
    latencies = _open_loop(env, events, rate)
    drain = env.wait_idle()
    return {"ack_events": len(latencies), "ack_rate": rate, "ack_p50_ms": round(_pct(latencies, 50) * 1000, 2),
            "ack_p99_ms": round(_pct(latencies, 99) * 1000, 2), "ack_drain_s": round(drain, 1)}


VERSIONED = ("flask", "werkzeug", "sqlalchemy", "psycopg2-binary", "urllib3", "waitress", "phonenumbers")


def environment() -> str:
    """The interpreter, the versions of the packages on the event path, and the lock they came from."""
    import hashlib
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    lock = os.path.join(os.path.dirname(__file__), "..", "..", "..", "requirements", "run.lock")
    try:
        with open(lock, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()[:12]
    except OSError:
        digest = "none"
    packages = ", ".join(f"{name} {installed(name)}" for name in VERSIONED)
    return f"Python {platform.python_version()}; {packages}; requirements/run.lock sha256 {digest}"
