"""The event path's figures: the 202's latency, CPU per event ÷ CPU per /healthz, the knee, the first
card, Phone API requests per call, and the fault run."""
from __future__ import annotations

import json
import tempfile
import time
import uuid

import requests

from msapp.tools.bench.common import (
    CALLER,
    Env,
    _ack_latency,
    _call_events,
    _cpu_seconds,
    _database,
    _interleave,
    _open_loop,
    _pct,
    _prepare,
    _rss_mb,
    _sandbox,
    _senders,
    _services,
)
from msapp.tools.bench.queue_runs import _hold_backlog


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
