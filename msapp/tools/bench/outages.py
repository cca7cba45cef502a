"""A MoySklad outage during calls, and the failover when one of several processes is killed."""
from __future__ import annotations

import json
import tempfile
import time

import requests

from msapp.tools.bench.common import CALLER, Env, _database, _pct, _prepare, _sandbox, _services


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
