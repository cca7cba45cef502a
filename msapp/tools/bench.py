"""`./ms.sh bench`: the figures of docs/design.md 10, measured against the sandbox.

The sandbox and the service each run as their own process (`python -m msapp sandbox|serve`), so the
service's latency and memory are its own; this process only generates load and reads the sandbox's
request log. Figures, per database:

1. acknowledgement latency of internal events (202) at a fixed open-loop rate (default 200 events/s);
2. first card: dial sent -> the sandbox has applied the POST /call carrying SHOW, with sandbox latency L;
3. Phone API requests per call for an answered incoming call (3 phones), a missed one, an outgoing one;
4. a fault run: N calls with 5 % injected 503 and 1 % 429: calls complete, duplicates, lost, the
   sandbox's own 429s (the service's pacing exceeding MoySklad's limit), and peak resident memory;
5. CPU per event: the service process's utime+stime (from /proc) per PBX event of answered 3-phone calls
   sent closed-loop, until the sandbox holds every call ended, divided by the same process's CPU per
   `GET /healthz` in the same run (the ratio travels between machines; milliseconds do not);
6. the knee: the highest open-loop rate at which the 202's p99 stays within 25 ms.
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import click
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
        db.session.remove()
        db.engine.dispose()
    return numbers


@contextmanager
def _services(db_url: str, tmp: str, sandbox_url: str, workers: int, count: int):
    """`count` service processes on one database (each its own port and worker id)."""
    with ExitStack() as stack:
        started = [stack.enter_context(_service(db_url, tmp, sandbox_url, workers)) for _ in range(count)]
        yield [url for url, _ in started], [proc for _, proc in started]


@contextmanager
def _service(db_url: str, tmp: str, sandbox_url: str, workers: int):
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MS_")},
           "MS_DATABASE_URL": db_url, "MS_PORT": str(port), "MS_INSTANCE_DIR": tmp, "MS_LOG_DIR": tmp,
           "MS_WORKERS": str(workers), "MS_LOG_LEVEL": "WARNING",
           "MS_PHONE_API_URL": f"{sandbox_url}/api/phone/1.0", "MS_JSON_API_URL": f"{sandbox_url}/api/remap/1.2"}
    proc = subprocess.Popen([sys.executable, "-m", "msapp", "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/healthz")
        yield url, proc
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


def measure(kind: str, pg_url: str, calls: int, enterprises: int, rate: float, ack_seconds: float,
            latency_ms: int, workers: int, processes: int = 1, event_path_only: bool = False,
            waiting: int = 0) -> dict:
    """The section 10 figures; `waiting` jobs held an hour ahead (as behind an open breaker: an outage's
    backlog) are in the queue from the start."""
    result = {"database": kind if processes == 1 else f"{kind}, {processes} processes"}
    if waiting:
        result["database"] += f", {waiting} jobs waiting"
    with tempfile.TemporaryDirectory() as tmp, _sandbox() as sandbox_url:
        db_url, cleanup = _database(kind, pg_url, tmp)
        try:
            numbers = _prepare(db_url, tmp, sandbox_url, enterprises)
            if waiting:
                _hold_backlog(db_url, tmp, kind, waiting)
            with _services(db_url, tmp, sandbox_url, workers, processes) as (urls, procs):
                env = Env(sandbox_url, urls, procs, numbers, held=waiting)
                _ack_latency(env, 50, 2, tag="warm")  # first connections and caches: not counted
                result.update(_ack_latency(env, rate, ack_seconds))
                if processes == 1:
                    result.update(_cpu_ratio(env))
                    result.update(_knee(env))
                if event_path_only:
                    return result
                result.update(_first_card(env, latency_ms))
                result.update(_requests_per_call(env))
                result.update(_fault_run(env, calls, rate))
                result["rss_peak_mb"] = round(max(_rss_mb(p.pid) for p in procs), 1)
        finally:
            cleanup()
    return result


def _ack_latency(env: Env, rate: float, seconds: float, tag: str = "ack") -> dict:
    count = int(rate * seconds)
    calls = [(env.accounts[i % len(env.accounts)][0], ev) for i in range(count // 3 + 1)
             for ev in _call_events(f"{tag}-{i}")]
    events = _interleave([[c for c in calls[j:j + 3]] for j in range(0, len(calls), 3)])[:count]
    latencies = _open_loop(env, events, rate)
    drain = env.wait_idle()
    return {"ack_events": len(latencies), "ack_rate": rate, "ack_p50_ms": round(_pct(latencies, 50) * 1000, 2),
            "ack_p99_ms": round(_pct(latencies, 99) * 1000, 2), "ack_drain_s": round(drain, 1)}


def _cpu_ratio(env: Env, calls: int = 500, probes: int = 5000, senders: int = 4, rounds: int = 5) -> dict:
    """CPU of the service process per PBX event ÷ its CPU per `GET /healthz`, measured in one run.

    `rounds` rounds, each half the /healthz probes, the events, then the other half, back to back: both
    sides see the same machine, and a drift of its speed during the round cancels out of the ratio (the
    probes are centred on the events). The median round is reported, with the lowest and highest ratio
    (this shared 2-core box moves both by ±10 %).

    Events: `calls` answered calls ringing 3 phones (dial, answer, hangup: 3 events each), sent closed-loop
    by `senders` threads, counted until the sandbox holds every call ended (so the workers' MoySklad
    exchanges are in). /healthz: `probes` requests, closed-loop, same senders. CPU is utime + stime from
    /proc; the process's idle background (workers polling, housekeeping ticks) is in both, as in service.
    """
    pid, url = env.procs[0].pid, env.service_url
    tag = f"cpu{uuid.uuid4().hex[:6]}-"

    def healthz(client, _i):
        if client.get(f"{url}/healthz").status_code != 200:
            raise RuntimeError("/healthz did not answer 200")

    def probe(count: int) -> float:
        before = _cpu_seconds(pid)
        _senders(count, senders, healthz)
        return _cpu_seconds(pid) - before

    def round_of(tag: str) -> tuple:
        """CPU (s) per /healthz (half before the events, half after), and per event."""
        def call(client, i):
            number = env.accounts[i % len(env.accounts)][0]
            for body in _call_events(f"{tag}{i}"):
                env.event(client, number, body)

        env.wait_idle()
        first = probe(probes // 2)
        before, started = _cpu_seconds(pid), time.perf_counter()
        _senders(calls, senders, call)
        while env.ended(tag) < calls:
            if time.perf_counter() - started > 600:
                raise RuntimeError("the calls of the CPU run did not all end in the sandbox")
            time.sleep(0.05)
        per_event = (_cpu_seconds(pid) - before) / (3 * calls)
        env.wait_idle()
        return (first + probe(probes - probes // 2)) / probes, per_event

    env.wait_idle()
    idle_from, idle_cpu = time.perf_counter(), _cpu_seconds(pid)
    time.sleep(2.0)
    idle_rate = (_cpu_seconds(pid) - idle_cpu) / (time.perf_counter() - idle_from)
    runs = sorted((event / healthz, healthz, event) for healthz, event in
                  (round_of(f"{tag}{r}-") for r in range(rounds)))
    ratio, per_healthz, per_event = runs[len(runs) // 2]  # the median round
    return {"cpu_events": 3 * calls, "cpu_rounds": rounds, "cpu_per_event_ms": round(per_event * 1000, 3),
            "cpu_per_healthz_ms": round(per_healthz * 1000, 3), "cpu_ratio": round(ratio, 2),
            "cpu_ratio_min": round(runs[0][0], 2), "cpu_ratio_max": round(runs[-1][0], 2),
            "cpu_idle_percent": round(idle_rate * 100, 2)}


def _knee(env: Env, rates=(50, 100, 150, 200, 250, 300, 400), seconds: float = 5.0, limit_ms: float = 25.0) -> dict:
    """The highest open-loop rate (of `rates`) at which the 202's p99 is within `limit_ms`; it stops after two
    rates in a row over the limit. Each rate runs `seconds`, after the previous one's jobs drained."""
    runs, knee, over = {}, None, 0
    for rate in rates:
        env.wait_idle()
        r = _ack_latency(env, rate, seconds, tag=f"knee{rate}-{uuid.uuid4().hex[:6]}")
        runs[str(rate)] = [r["ack_p50_ms"], r["ack_p99_ms"]]
        if r["ack_p99_ms"] <= limit_ms:
            knee, over = rate, 0
        else:
            over += 1
            if over == 2:
                break
    return {"knee_rate": knee, "knee_limit_ms": limit_ms, "knee_runs": runs}


def _first_card(env: Env, latency_ms: int, samples: int = 40) -> dict:
    env.faults(latency_ms=latency_ms)
    number, _ = env.accounts[0]
    sent = {}
    session = requests.Session()
    mark = env.log()["total"]
    for i in range(samples):
        uid = f"card-{i}"
        sent[uid] = time.time()
        env.event(session, number, {"unique_id": uid, "direction": "in", "phone": CALLER,
                                    "event_type": "dial", "extensions": ["150"]})
        time.sleep(0.15)
    env.wait_idle()
    env.faults()
    shown = {}
    for row in env.log(mark)["requests"]:
        if row["method"] == "POST" and row["path"].endswith("/call") and row["status"] == 200:
            uid = json.loads(row["body"])["externalId"]
            if uid in sent:
                shown[uid] = row["done"] - sent[uid]
    values = list(shown.values())
    return {"card_latency_L_ms": latency_ms, "card_p50_ms": round(_pct(values, 50) * 1000, 1),
            "card_p99_ms": round(_pct(values, 99) * 1000, 1), "card_samples": len(values)}


def _requests_per_call(env: Env) -> dict:
    number, account = env.accounts[0]
    session = requests.Session()
    out = {}
    scenarios = {
        "incoming_answered_3_phones": _call_events("rpc-in"),
        "missed": [{"unique_id": "rpc-miss", "direction": "in", "phone": CALLER, "event_type": "dial",
                    "extensions": ["150", "151"]},
                   {"unique_id": "rpc-miss", "direction": "in", "phone": CALLER, "event_type": "hangup",
                    "call_status": "missed"}],
        "outgoing": [{"unique_id": "rpc-out", "direction": "out", "phone": CALLER, "extension": "151",
                      "event_type": kind, **({"call_status": "answered"} if kind == "hangup" else {})}
                     for kind in ("dial", "answer", "hangup")],
    }
    for name, events in scenarios.items():
        mark = env.log()["total"]
        for body in events:
            env.event(session, number, body)
            env.wait_idle()
        out[f"requests_{name}"] = sum(1 for r in env.log(mark)["requests"]
                                      if r["api"] == "phone" and r["account"] == account)
    return out


def _fault_run(env: Env, calls: int, rate: float) -> dict:
    env.faults(fail_rate=0.05, rate_429=0.01, retry_after_ms=500)
    before = env.log()
    expected = {}
    call_events = []
    for i in range(calls):
        number, account = env.accounts[i % len(env.accounts)]
        uid = f"soak-{i}"
        expected.setdefault(account, set()).add(uid)
        call_events.append([(number, ev) for ev in _call_events(uid)])
    peak = [0.0]

    def sample():
        peak[0] = max(peak[0], *(_rss_mb(p.pid, "VmRSS") for p in env.procs))

    started = time.time()
    _open_loop(env, _interleave(call_events), rate, sample=sample)
    drain = env.wait_idle(timeout=3600)
    elapsed = time.time() - started
    env.faults()
    after = env.log(before["total"])
    injected = sum(1 for r in after["requests"] if r["status"] in (503, 429))
    dupes = lost = unfinished = 0
    for account, uids in expected.items():
        seen = {}
        for call in env.calls(account):
            if call["externalId"].startswith("soak-"):
                seen.setdefault(call["externalId"], []).append(call)
        dupes += sum(len(v) - 1 for v in seen.values())
        lost += len(uids - set(seen))
        unfinished += sum(1 for v in seen.values() if not v[0]["endTime"] or v[0]["extension"] is None)
    ready = env.http.get(f"{env.service_url}/readyz", timeout=10).json()
    return {"fault_calls": calls, "fault_complete": calls - lost - unfinished, "fault_duplicates": dupes,
            "fault_lost": lost, "fault_unfinished": unfinished, "fault_injected": injected,
            "fault_own_429": after["own_429"] - before["own_429"], "fault_dead_jobs": ready.get("dead"),
            "fault_seconds": round(elapsed, 1), "fault_drain_s": round(drain, 1),
            "rss_during_mb": round(peak[0], 1)}


def measure_outage(kind: str, pg_url: str, seconds: float, calls: int, workers: int, processes: int) -> dict:
    """docs/design.md 10: `calls` calls during a Phone API outage of `seconds` (real time): requests sent to the
    failing MoySklad during it, and how long after it is back the last call is in MoySklad."""
    with tempfile.TemporaryDirectory() as tmp, _sandbox() as sandbox_url:
        db_url, cleanup = _database(kind, pg_url, tmp)
        try:
            numbers = _prepare(db_url, tmp, sandbox_url, 1)
            with _services(db_url, tmp, sandbox_url, workers, processes) as (urls, procs):
                env = Env(sandbox_url, urls, procs, numbers)
                return {"database": kind if processes == 1 else f"{kind}, {processes} processes",
                        **_outage_run(env, seconds, calls)}
        finally:
            cleanup()


def _outage_run(env: Env, seconds: float, calls: int) -> dict:
    number, account = env.accounts[0]
    session = requests.Session()
    mark = env.log()["total"]
    env.faults(fail_rate=1.0, fail_status=503, api="phone", account=account)
    started = time.time()
    for i in range(calls):  # spread over the outage, each a missed call (dial, then hangup)
        time.sleep(max(0.0, started + i * seconds / calls - time.time()))
        uid = f"outage-{i}"
        for body in ({"event_type": "dial", "extensions": ["150", "151"]},
                     {"event_type": "hangup", "call_status": "missed"}):
            env.event(session, number, {"unique_id": uid, "direction": "in", "phone": CALLER, **body})
    time.sleep(max(0.0, started + seconds - time.time()))
    env.faults()
    back = time.time()
    during = sum(1 for r in env.log(mark)["requests"] if r["account"] == account and r["status"] == 503)
    done = []
    while time.time() - back < 600:
        done = [c for c in env.calls(account) if c["externalId"].startswith("outage-") and c["endTime"]]
        if len({c["externalId"] for c in done}) == calls:
            break
        time.sleep(0.1)
    caught_up = time.time() - back
    ids = [c["externalId"] for c in env.calls(account) if c["externalId"].startswith("outage-")]
    ready = env.http.get(f"{env.service_url}/readyz", timeout=10).json()
    return {"outage_s": seconds, "outage_calls": calls, "outage_requests_during": during,
            "outage_catch_up_s": round(caught_up, 1), "outage_lost": calls - len(set(ids)),
            "outage_duplicates": len(ids) - len(set(ids)), "outage_dead_jobs": ready.get("dead")}


def measure_failover(pg_url: str, processes: int, workers: int, enterprises: int, seconds: float = 20.0,
                     calls_per_second: float = 20.0) -> dict:
    """docs/design.md 10: steady load on `processes` processes sharing PostgreSQL, SIGKILL of one mid-run: the
    largest dial-to-first-card delay around the kill, calls lost and duplicated, time to rebalance."""
    import psycopg2

    from msapp.queue.ownership import balanced, snapshot

    with tempfile.TemporaryDirectory() as tmp, _sandbox() as sandbox_url:
        db_url, cleanup = _database("postgresql", pg_url, tmp)
        try:
            numbers = _prepare(db_url, tmp, sandbox_url, enterprises)
            with _services(db_url, tmp, sandbox_url, workers, processes) as (urls, procs):
                env = Env(sandbox_url, list(urls), procs, numbers)
                conn = psycopg2.connect(db_url.replace("postgresql+psycopg2://", "postgresql://"))
                conn.autocommit = True
                try:
                    return {"database": f"postgresql, {processes} processes",
                            **_failover_run(env, conn, seconds, calls_per_second, snapshot, balanced)}
                finally:
                    conn.close()
        finally:
            cleanup()


def _failover_run(env: Env, conn, seconds: float, per_second: float, snapshot, balanced) -> dict:
    deadline = time.time() + 10
    while not balanced(*snapshot(conn)) and time.time() < deadline:
        time.sleep(0.1)
    session, dialed, killed, rebalanced = requests.Session(), {}, None, None
    started = time.time()
    n = 0
    while time.time() - started < seconds:
        if killed is not None and rebalanced is None and balanced(*snapshot(conn)):
            rebalanced = time.time() - killed
        if killed is None and time.time() - started >= seconds / 2:
            env.procs[0].send_signal(9)  # SIGKILL: no goodbye, no lock released by the process
            killed = time.time()
            env.service_urls = env.service_urls[1:]
        number, account = env.accounts[n % len(env.accounts)]
        uid = f"fo-{n}"
        dialed[uid] = (account, time.time())
        env.event(session, number, {"unique_id": uid, "direction": "in", "phone": CALLER, "event_type": "dial",
                                    "extensions": ["150"]})
        if n >= per_second:  # hang up the call dialled a second ago
            old = f"fo-{n - int(per_second)}"
            env.event(session, env.accounts[(n - int(per_second)) % len(env.accounts)][0],
                      {"unique_id": old, "direction": "in", "phone": CALLER, "event_type": "hangup",
                       "call_status": "missed"})
        n += 1
        time.sleep(max(0.0, started + n / per_second - time.time()))
    while rebalanced is None and time.time() - killed < 60:
        if balanced(*snapshot(conn)):
            rebalanced = time.time() - killed
        time.sleep(0.05)
    for uid in list(dialed)[-int(per_second):]:
        account = dialed[uid][0]
        number = next(num for num, acc in env.accounts if acc == account)
        env.event(session, number, {"unique_id": uid, "direction": "in", "phone": CALLER, "event_type": "hangup",
                                    "call_status": "missed"})
    env.wait_idle(120)
    shown, seen = {}, {}
    for row in env.log()["requests"]:
        if row["method"] == "POST" and row["path"].endswith("/call") and row["status"] == 200:
            uid = json.loads(row["body"])["externalId"]
            shown.setdefault(uid, row["done"])
    for _, account in env.accounts:
        for call in env.calls(account):
            seen[call["externalId"]] = seen.get(call["externalId"], 0) + 1
    around = [shown[u] - t for u, (_, t) in dialed.items() if u in shown and killed - 1 <= t <= killed + 5]
    before = [shown[u] - t for u, (_, t) in dialed.items() if u in shown and t < killed - 1]
    return {"failover_calls": len(dialed), "failover_blackout_s": round(max(around), 2) if around else None,
            "failover_card_p50_before_ms": round(_pct(before, 50) * 1000, 1),
            "failover_lost": sum(1 for u in dialed if u not in seen),
            "failover_duplicates": sum(c - 1 for c in seen.values()),
            "failover_rebalance_s": round(rebalanced, 2) if rebalanced is not None else None}


def report_failover(results: list) -> str:
    r = results[0]
    return "\n".join([
        f"| figure | target | {r['database']} |", "|---|---|---|",
        f"| card blackout after SIGKILL of one process (largest dial-to-card delay around the kill) | ≤ 3 s | "
        f"{r['failover_blackout_s']} s (p50 before the kill {r['failover_card_p50_before_ms']} ms) |",
        f"| calls lost / duplicated ({r['failover_calls']} calls) | 0 / 0 | "
        f"{r['failover_lost']} / {r['failover_duplicates']} |",
        f"| time until the survivors own every bucket | | {r['failover_rebalance_s']} s |"])


def measure_prune(kind: str, pg_url: str, rows: int) -> dict:
    """Retention on a journal of `rows` rows older than the retention period: how long each batch (one
    short write transaction) takes, which is the longest an event's commit can wait behind pruning."""
    from msapp.extensions import db
    from msapp.services import retention

    with tempfile.TemporaryDirectory() as tmp:
        db_url, cleanup = _database(kind, pg_url, tmp)
        try:
            app = _journal_app(db_url, tmp, kind, rows)
            with app.app_context():
                timings, started = [], time.perf_counter()
                real_commit = db.session.commit

                def timed_commit():  # the batch's transaction: from its DELETE to its COMMIT
                    real_commit()
                    timings.append(time.perf_counter() - mark[0])
                    mark[0] = time.perf_counter()

                mark = [time.perf_counter()]
                db.session.commit = timed_commit
                pause, retention.PAUSE = retention.PAUSE, 0.0  # time the transactions, not the pauses
                deleted = 0
                while True:
                    mark[0] = time.perf_counter()
                    done = retention.Retention(30).prune(budget=3600).get("integration_logs", 0)
                    deleted += done
                    if not done:
                        break
                elapsed = time.perf_counter() - started
                db.session.commit = real_commit
                retention.PAUSE = pause
                db.session.remove()
                db.engine.dispose()
            batches = [t for t in timings if t > 0]
            return {"database": kind, "prune_rows": deleted, "prune_seconds": round(elapsed, 1),
                    "prune_rows_per_s": round(deleted / elapsed),
                    "prune_batch_p50_ms": round(_pct(batches, 50) * 1000, 1),
                    "prune_batch_p99_ms": round(_pct(batches, 99) * 1000, 1),
                    "prune_batch_max_ms": round(max(batches) * 1000, 1)}
        finally:
            cleanup()


def measure_prune_ack(kind: str, pg_url: str, rows: int, rate: float, seconds: float, workers: int) -> dict:
    """The 202 latency at `rate` with nothing else going on, then while another process prunes a journal of
    `rows` old rows with the service's own code (batches and pauses as in service, without its 2 s budget)."""
    from msapp.extensions import db

    with tempfile.TemporaryDirectory() as tmp, _sandbox() as sandbox_url:
        db_url, cleanup = _database(kind, pg_url, tmp)
        try:
            numbers = _prepare(db_url, tmp, sandbox_url, 4)
            with _journal_app(db_url, tmp, kind, rows).app_context():
                db.session.remove()
                db.engine.dispose()
            with _services(db_url, tmp, sandbox_url, workers, 1) as (urls, procs):
                env = Env(sandbox_url, urls, procs, numbers)
                _ack_latency(env, rate, 5)  # warm-up (first connections, caches), not counted
                quiet = _ack_latency(env, rate, seconds)
                code = ("import sys; from msapp import create_app; from msapp.services.retention import Retention\n"
                        "app = create_app({'MS_DATABASE_URL': sys.argv[1], 'MS_INSTANCE_DIR': sys.argv[2], "
                        "'MS_LOG_DIR': sys.argv[2], 'MS_WORKERS': '0'})\n"
                        "with app.app_context(): print(sum(Retention(30).prune(budget=3600).values()))")
                pruner = subprocess.Popen([sys.executable, "-c", code, db_url, tmp], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True)
                time.sleep(0.5)
                busy = _ack_latency(env, rate, seconds)
                still = pruner.poll() is None
                pruner.terminate()
                pruner.wait(30)
            return {"database": kind, "rate": rate, "quiet_p50_ms": quiet["ack_p50_ms"],
                    "quiet_p99_ms": quiet["ack_p99_ms"], "pruning_p50_ms": busy["ack_p50_ms"],
                    "pruning_p99_ms": busy["ack_p99_ms"], "pruner_still_running_at_end": still}
        finally:
            cleanup()


def _quiet_app(db_url: str, tmp: str):
    """An app on the database without workers, logging warnings only (fills and drives the bench's data)."""
    from msapp import create_app

    return create_app({"MS_DATABASE_URL": db_url, "MS_INSTANCE_DIR": tmp, "MS_LOG_DIR": tmp, "MS_WORKERS": "0",
                       "MS_LOG_LEVEL": "WARNING"})


def _journal_app(db_url: str, tmp: str, kind: str, rows: int):
    """An app (no workers) on the database, migrated, with `rows` journal rows 40 days old in it."""
    from msapp.db.schema import upgrade_database
    from msapp.extensions import db

    app = _quiet_app(db_url, tmp)
    upgrade_database(app)
    with app.app_context():
        _fill_journal(db, kind, rows)
    return app


def _fill_journal(db, kind: str, rows: int) -> None:
    """`rows` journal rows 40 days old, written by the database itself (fast)."""
    from sqlalchemy import text

    if kind == "postgresql":
        db.session.execute(text(
            "INSERT INTO integration_logs (created_at, enterprise_number, integration_type, event_type, "
            "request_data, status) SELECT now() - interval '40 days', '1000', 'ms', 'event.call-event', "
            "'{\"unique_id\": \"x\"}'::jsonb, 'success' FROM generate_series(1, :n)"), {"n": rows})
        db.session.commit()
        db.session.execute(text("ANALYZE integration_logs"))  # as autovacuum would have, for a grown table
    else:
        db.session.execute(text(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :n) "
            "INSERT INTO integration_logs (created_at, enterprise_number, integration_type, event_type, "
            "request_data, status) SELECT datetime('now', '-40 days'), '1000', 'ms', 'event.call-event', "
            "'{\"unique_id\": \"x\"}', 'success' FROM n"), {"n": rows})
    db.session.commit()


def measure_backlog(kind: str, pg_url: str, jobs: int, workers: int) -> dict:
    """The queue's own pace on a backlog (what a long MoySklad outage leaves behind once it is back):
    `jobs` due jobs, each its own key, announced by no notify (as retries coming due and jobs released
    after an outage), and a handler that does nothing, drained by a WorkerPool of `workers` threads in
    this process (the service's idle poll). Jobs per second, this process's CPU per job, and one claim's
    CPU at the full backlog and on an empty queue (a claim's cost must not grow with the backlog)."""
    from msapp.db.schema import upgrade_database
    from msapp.extensions import db
    from msapp.queue.jobs import WorkerPool
    from msapp.queue.ownership import bucket_of

    with tempfile.TemporaryDirectory() as tmp:
        db_url, cleanup = _database(kind, pg_url, tmp)
        try:
            app = _quiet_app(db_url, tmp)
            upgrade_database(app)
            queue = app.extensions["ms"].queue
            queue.register("bench.noop", lambda job: None)
            with app.app_context():
                _fill_backlog(db, kind, jobs, bucket_of("1000"))
                claim_full = _claim_cpu(queue)
            pool = WorkerPool(app, queue, workers)  # the service's idle poll
            cpu, started = time.process_time(), time.perf_counter()
            pool.start()
            try:
                with app.app_context():
                    while queue.stats()["depth"]:
                        if time.perf_counter() - started > 1800:
                            raise RuntimeError("the backlog did not drain in 30 minutes")
                        time.sleep(0.05)
                    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            finally:
                pool.stop()
            with app.app_context():
                claim_empty = _claim_cpu(queue)
                db.session.remove()
                db.engine.dispose()
            return {"database": kind, "backlog_jobs": jobs, "backlog_workers": workers,
                    "backlog_seconds": round(elapsed, 1), "backlog_jobs_per_s": round(jobs / elapsed),
                    "backlog_cpu_per_job_ms": round(cpu / jobs * 1000, 3),
                    "claim_cpu_full_ms": round(claim_full * 1000, 3),
                    "claim_cpu_empty_ms": round(claim_empty * 1000, 3)}
        finally:
            cleanup()


def _claim_cpu(queue, claims: int = 20) -> float:
    """This thread's CPU per claim (each job handed back right away, uncounted, so the backlog stays)."""
    from msapp.queue.jobs import Defer

    spent = 0.0
    for _ in range(claims):
        started = time.thread_time()
        job = queue.claim()
        spent += time.thread_time() - started
        if job is not None:
            queue.fail(job, Defer(0.0, "bench: handed back"))
    return spent / claims


def _hold_backlog(db_url: str, tmp: str, kind: str, jobs: int) -> None:
    """`jobs` call syncs of enterprise 1000 due an hour from now, as an open breaker holds them."""
    from msapp.extensions import db
    from msapp.queue.ownership import bucket_of

    app = _quiet_app(db_url, tmp)
    with app.app_context():
        _fill_backlog(db, kind, jobs, bucket_of("1000"), ahead_s=3600.0, kind_="call.sync")
        db.session.remove()
        db.engine.dispose()


def _fill_backlog(db, kind: str, jobs: int, bucket: int, ahead_s: float = 0.0, kind_: str = "bench.noop") -> None:
    """`jobs` jobs of kind `kind_`, each its own key, due one millisecond apart over the `jobs` ms before
    `ahead_s` from now, written by the database itself (PostgreSQL: then ANALYZEd, as autovacuum would
    have)."""
    from sqlalchemy import text

    columns = ("INSERT INTO ms_jobs (kind, key, payload, enterprise_number, bucket, status, attempts, max_attempts, "
               "run_at, created_at, updated_at) ")
    if kind == "postgresql":
        db.session.execute(text(
            columns + "SELECT :k, 'backlog-' || i, '{}'::jsonb, '1000', :b, 'pending', 0, 10, "
            "t + :a * interval '1 second' - (:n - i) * interval '1 millisecond', t, t "
            "FROM generate_series(1, :n) AS i, (SELECT (now() AT TIME ZONE 'UTC')::timestamp AS t) AS now"),
            {"n": jobs, "b": bucket, "a": ahead_s, "k": kind_})
        db.session.commit()
        db.session.execute(text("ANALYZE ms_jobs"))
    else:
        db.session.execute(text(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :n) " + columns +
            "SELECT :k, 'backlog-' || i, '{}', '1000', :b, 'pending', 0, 10, "
            "strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%.3f seconds', :a - (:n - i) / 1000.0)), "
            "strftime('%Y-%m-%d %H:%M:%f', 'now'), strftime('%Y-%m-%d %H:%M:%f', 'now') FROM n"),
            {"n": jobs, "b": bucket, "a": ahead_s, "k": kind_})
    db.session.commit()


def report_backlog(results: list) -> str:
    lines = ["| database | due jobs | workers | drained in | jobs/s | CPU per job "
             "| one claim's CPU: full / empty queue |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['database']} | {r['backlog_jobs']} | {r['backlog_workers']} | {r['backlog_seconds']} s | "
                     f"{r['backlog_jobs_per_s']} | {r['backlog_cpu_per_job_ms']} ms | {r['claim_cpu_full_ms']} / "
                     f"{r['claim_cpu_empty_ms']} ms |")
    return "\n".join(lines)


def report_outage(results: list) -> str:
    head = "| figure | target | " + " | ".join(r["database"] for r in results) + " |"
    rows = [
        (f"{results[0]['outage_calls']} calls in a {results[0]['outage_s']:.0f} s outage: requests to the "
         "failing MoySklad during it", "≤ 40", lambda r: str(r["outage_requests_during"])),
        ("last call in MoySklad after it is back", "≤ 30 s", lambda r: f"{r['outage_catch_up_s']} s"),
        ("lost / duplicated / dead", "0 / 0 / 0",
         lambda r: f"{r['outage_lost']} / {r['outage_duplicates']} / {r['outage_dead_jobs']}"),
    ]
    lines = [head, "|" + "---|" * (2 + len(results))]
    for name, target, fmt in rows:
        lines.append(f"| {name} | {target} | " + " | ".join(fmt(r) for r in results) + " |")
    return "\n".join(lines)


def report(results: list, event_path_only: bool = False) -> str:
    rows = [
        ("internal event acknowledged (202), p50 / p99", "≤ 5 ms / ≤ 25 ms",
         lambda r: f"{r['ack_p50_ms']} ms / {r['ack_p99_ms']} ms at {r['ack_rate']:.0f}/s ({r['ack_events']} events)"),
        ("first card (sandbox applied SHOW) after a dial, p50", "≤ L + 30 ms",
         lambda r: f"{r['card_p50_ms']} ms with L = {r['card_latency_L_ms']} ms (p99 {r['card_p99_ms']} ms)"),
        ("Phone API requests: answered (3 phones) / missed / outgoing", "3 / 2 / 2",
         lambda r: f"{r['requests_incoming_answered_3_phones']} / {r['requests_missed']} / {r['requests_outgoing']}"),
        ("service CPU per event ÷ CPU per GET /healthz (same process, same run)", "≤ 4",
         lambda r: (f"{r['cpu_ratio']} ({r['cpu_per_event_ms']} ms ÷ {r['cpu_per_healthz_ms']} ms; median of "
                   f"{r['cpu_rounds']} rounds of {r['cpu_events']} events, {r['cpu_ratio_min']}–{r['cpu_ratio_max']})")
        if "cpu_ratio" in r else "(one process only)"),
        ("knee: highest rate with 202 p99 ≤ 25 ms", "≥ 200 events/s",
         lambda r: (f"{r['knee_rate']}/s (" + ", ".join(f"{k}/s: {v[1]} ms" for k, v in r["knee_runs"].items())
                    + ")") if "knee_runs" in r else "(one process only)"),
        ("calls with 5 % 503 and 1 % 429", "all complete, 0 duplicates, 0 lost",
         lambda r: f"{r['fault_complete']}/{r['fault_calls']} complete, {r['fault_duplicates']} duplicates, "
                   f"{r['fault_lost']} lost ({r['fault_injected']} faults injected, {r['fault_seconds']} s)"),
        ("MoySklad rate limit exceeded by the service's pacing", "never",
         lambda r: f"{r['fault_own_429']} own-limit 429s"),
        ("resident memory under that load (per process)", "≤ 150 MB",
         lambda r: f"{r['rss_during_mb']} MB (peak {r['rss_peak_mb']} MB)"),
    ]
    if event_path_only:
        rows = [rows[0], rows[3], rows[4]]
    head = "| figure | target | " + " | ".join(r["database"] for r in results) + " |"
    lines = [head, "|" + "---|" * (2 + len(results))]
    for name, target, fmt in rows:
        lines.append(f"| {name} | {target} | " + " | ".join(fmt(r) for r in results) + " |")
    return "\n".join(lines)


@click.command("bench")
@click.option("--db", "dbs", multiple=True, type=click.Choice(["sqlite", "postgresql"]),
              help="Databases to measure (default: sqlite, and postgresql when a URL is set)")
@click.option("--pg-url", envvar="MS_BENCH_DATABASE_URL", default=lambda: os.environ.get("MS_TEST_DATABASE_URL", ""),
              help="PostgreSQL URL (MS_BENCH_DATABASE_URL or MS_TEST_DATABASE_URL)")
@click.option("--calls", default=1000, show_default=True, help="Calls in the fault run")
@click.option("--soak", is_flag=True, help="The full run: 10,000 calls in the fault run")
@click.option("--enterprises", default=10, show_default=True, help="Enterprises (sandbox accounts) sharing the load")
@click.option("--rate", default=200.0, show_default=True, help="Events per second sent to the service")
@click.option("--ack-seconds", default=10.0, show_default=True, help="Length of the acknowledgement run")
@click.option("--latency-ms", default=50, show_default=True, help="Sandbox latency L for the first-card figure")
@click.option("--workers", default=4, show_default=True, help="MS_WORKERS of the service under test")
@click.option("--processes", default=1, show_default=True, help="Service processes sharing the database")
@click.option("--outage", type=float, default=None, metavar="SECONDS",
              help="Only the outage figure: 20 calls during a Phone API outage of SECONDS")
@click.option("--failover", is_flag=True, help="Only the failover figure: SIGKILL one of --processes (PostgreSQL)")
@click.option("--prune", type=int, default=None, metavar="ROWS",
              help="Only the retention figure: prune ROWS old journal rows, timing each batch")
@click.option("--backlog", type=click.IntRange(min=1), default=None, metavar="JOBS",
              help="Only the queue's pace on a backlog: drain JOBS due jobs (a handler doing nothing)")
@click.option("--waiting", type=click.IntRange(min=0), default=0, metavar="JOBS",
              help="JOBS call syncs held an hour ahead in the queue throughout (an outage's backlog)")
@click.option("--event-path", is_flag=True,
              help="Only the event path: the 202 at --rate, CPU per event ÷ per /healthz, and the knee")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the raw figures as JSON")
def bench(dbs, pg_url, calls, soak, enterprises, rate, ack_seconds, latency_ms, workers, processes, outage,
          failover, prune, backlog, waiting, event_path, json_out):
    """Measure the section 10 figures against the sandbox and print them as a Markdown table."""
    kinds = list(dbs) or (["sqlite", "postgresql"] if pg_url else ["sqlite"])
    if "postgresql" in kinds and not pg_url:
        raise click.UsageError("postgresql needs --pg-url or MS_BENCH_DATABASE_URL")
    if processes > 1 and "sqlite" in kinds:
        raise click.UsageError("several processes need PostgreSQL (--db postgresql)")
    if soak:
        calls = 10_000
    results = []
    if prune is not None and rate != 200.0:
        click.echo("| database | rate | 202 p50 / p99, quiet | 202 p50 / p99, while pruning |")
        click.echo("|---|---|---|---|")
        for kind in kinds:
            r = measure_prune_ack(kind, pg_url, prune, rate, ack_seconds, workers)
            results.append(r)
            click.echo(f"| {kind} | {rate:.0f}/s | {r['quiet_p50_ms']} / {r['quiet_p99_ms']} ms | "
                       f"{r['pruning_p50_ms']} / {r['pruning_p99_ms']} ms"
                       f"{'' if r['pruner_still_running_at_end'] else ' (pruning ended early)'} |")
        _write_json(json_out, results)
        return
    if prune is not None:
        for kind in kinds:
            click.echo(f"retention run on {kind}: {prune} old journal rows...", err=True)
            results.append(measure_prune(kind, pg_url, prune))
        click.echo("| database | rows deleted | seconds | rows/s | batch (one transaction) p50 / p99 / max |")
        click.echo("|---|---|---|---|---|")
        for r in results:
            click.echo(f"| {r['database']} | {r['prune_rows']} | {r['prune_seconds']} | {r['prune_rows_per_s']} | "
                       f"{r['prune_batch_p50_ms']} / {r['prune_batch_p99_ms']} / {r['prune_batch_max_ms']} ms |")
        _write_json(json_out, results)
        return
    if backlog is not None:
        for kind in kinds:
            click.echo(f"backlog run on {kind}: {backlog} due jobs, {workers} workers...", err=True)
            results.append(measure_backlog(kind, pg_url, backlog, workers))
        click.echo(report_backlog(results))
        _write_json(json_out, results)
        return
    if failover:
        if not pg_url or processes < 2:
            raise click.UsageError("--failover needs PostgreSQL (--pg-url) and --processes 2 or more")
        click.echo(f"failover run: {processes} processes, SIGKILL of one mid-run...", err=True)
        results.append(measure_failover(pg_url, processes, workers, enterprises))
        click.echo(report_failover(results))
        _write_json(json_out, results)
        return
    if outage is not None:
        for kind in kinds:
            click.echo(f"outage run on {kind}: 20 calls during {outage:.0f} s...", err=True)
            results.append(measure_outage(kind, pg_url, outage, 20, workers, processes))
        click.echo(report_outage(results))
        _write_json(json_out, results)
        return
    for kind in kinds:
        click.echo(f"measuring on {kind} ({calls} calls in the fault run, {enterprises} enterprises)...", err=True)
        results.append(measure(kind, pg_url, calls, enterprises, rate, ack_seconds, latency_ms, workers, processes,
                               event_path_only=event_path, waiting=waiting))
    click.echo(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
               f"load {rate:.0f} events/s, {workers} workers")
    click.echo(report(results, event_path_only=event_path))
    _write_json(json_out, results)


def _write_json(path, results: list) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
