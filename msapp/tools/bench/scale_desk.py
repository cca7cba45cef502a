"""`bench --scale`, the support desk's part: each desk operation through the admin JSON API on the filled
database, then the event path's 202 at 200/s quiet, while a client loops the desk's requests (of the
events' process, and of an admin-only process beside it), and across retention's tick
(docs/benchmarks.md). The fill is scale.py's.
"""
from __future__ import annotations

import secrets
import time
from datetime import timedelta

from msapp.tools.bench.common import p50_p95_ms, release_db
from msapp.tools.bench.scale import BIG

ADMIN_TOKEN = secrets.token_urlsafe(24)  # this run's only
DESK_OPS = ("by phone", "by unique_id", "by MoySklad id", "first page", "page 200", "one day", "timeline")


def desk_requests(db, runs: int, big_calls: int) -> dict:
    """Per operation of the desk, `runs` request paths of the admin JSON API, each with another key; page
    200 is the one after the 9,950 newest calls (of fewer: the middle one's)."""
    from sqlalchemy import text

    from msapp.clock import utcnow

    picked = db.session.execute(text("SELECT unique_id, phone, ms_call_id FROM ms_calls WHERE enterprise_number = :e "
                                     "ORDER BY random() LIMIT :n"), {"e": BIG, "n": runs}).all()
    start, last = db.session.execute(text("SELECT start_time, id FROM ms_calls WHERE enterprise_number = :e "
                                          "ORDER BY start_time DESC, id DESC LIMIT 1 OFFSET :o"),
                                   {"e": BIG, "o": min(9949, big_calls // 2)}).one()
    if isinstance(start, str):  # SQLite answers text to a raw statement
        from datetime import datetime

        start = datetime.fromisoformat(start)
    db.session.commit()
    base = f"/ms-admin/api/calls/{BIG}"
    days = [(utcnow() - timedelta(days=3 + i % 20)).strftime("%Y-%m-%d") for i in range(runs)]
    return {
        "by phone": [f"{base}?q=%2B{p[1][1:]}" for p in picked],
        "by unique_id": [f"{base}?q={p[0]}" for p in picked],
        "by MoySklad id": [f"{base}?q={p[2]}" for p in picked],
        "first page": [base] * runs,
        "page 200": [f"{base}?before={start.isoformat()}~{last}"] * runs,
        "one day": [f"{base}?from={d}&to={d}" for d in days],
        "timeline": [f"{base}/{p[0]}" for p in picked],
    }


def time_desk(client, requests_by_op: dict) -> dict:
    """Median and p95 (ms) of each operation, through the app's own JSON API (no sockets)."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    out = {}
    for name, paths in requests_by_op.items():
        timings = []
        for path in paths:
            t0 = time.perf_counter()
            r = client.get(path, headers=headers)
            timings.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"{path}: {r.status_code} {r.get_data(as_text=True)[:200]}")
        out[name] = p50_p95_ms(timings)
    return out


ROUNDS = 2  # of each shape of the desk under load, alternating: one process, the desk apart, one, apart ...


def under_load(db_url: str, tmp: str, requests_by_op: dict, seconds: float, rate: float = 200.0) -> dict:
    """The service on the filled database: the 202 at `rate` quiet, then while a client loops the desk's
    requests over HTTP, in alternating rounds of two shapes (the service's own retention off for all):
    the desk asked of the process that takes the events ("one process"), and of an admin-only process
    beside it (`MS_FACES=admin`, `MS_WORKERS=0`: "desk apart"); then across retention's first tick in a
    service with it on. The client runs in a process of its own, so that the senders' process does only
    the sending (docs/benchmarks.md: no difference measured at 300 k on PostgreSQL)."""
    import requests as http

    from msapp.tools.bench.common import Env, _ack_latency, _sandbox, _service

    quiet_service = {"MS_ADMIN_TOKEN": ADMIN_TOKEN, "MS_RETENTION_DAYS": "0"}
    with _sandbox() as sandbox_url:
        keys = http.post(f"{sandbox_url}/sandbox/api/accounts", json={"name": "scale"}, timeout=5).json()
        app = desk_app(db_url, tmp)
        with app.app_context():
            app.extensions["ms"].configs.save(BIG, {"enabled": True, "integration_code": keys["phone_api_key"],
                                                    "api_token": keys["json_api_token"]})
        with _service(db_url, tmp, sandbox_url, 4, quiet_service) as (url, proc):
            env = Env(sandbox_url, [url], [proc], [(BIG, "scale")])
            _ack_latency(env, 50, 2, tag="warm")
            out = {"quiet": _ack_latency(env, rate, seconds, tag="quiet"), "searching": {}}
            paths = [p for name in DESK_OPS for p in requests_by_op[name]]
            desk_alone = {**quiet_service, "MS_FACES": "admin", "MS_PUBLIC_URL": url}
            with _service(db_url, tmp, sandbox_url, 0, desk_alone) as (admin_url, _):
                for i, (shape, desk_url) in enumerate((("one process", url), ("desk apart", admin_url)) * ROUNDS):
                    out["searching"].setdefault(shape, []).append(
                        _while_searching(env, desk_url, paths, rate, seconds, tag=f"search{i}"))
        out.update(_while_service_prunes(app, db_url, tmp, sandbox_url, rate, seconds))
        with app.app_context():
            release_db()
    return out


def _while_searching(env, desk_url: str, paths: list, rate: float, seconds: float, tag: str) -> dict:
    """The 202 at `rate` while a client in a process of its own loops `paths` on `desk_url`."""
    import multiprocessing

    from msapp.tools.bench.common import _ack_latency

    spawn = multiprocessing.get_context("spawn")
    stop, results = spawn.Event(), spawn.Queue()
    searcher = spawn.Process(target=search_loop, args=(desk_url, ADMIN_TOKEN, paths, stop, results), daemon=True)
    searcher.start()
    ack = _ack_latency(env, rate, seconds, tag=tag)
    stop.set()
    timings = results.get(timeout=120)
    searcher.join(60)
    p50, p95 = p50_p95_ms(timings)
    return {**ack, "searches": {"count": len(timings), "p50_ms": p50, "p95_ms": p95}}


def search_loop(url: str, token: str, paths: list, stop, results) -> None:
    """The desk's requests one after another until `stop`; their durations (s) go to `results`."""
    import requests as http

    session, timings = http.Session(), []
    session.headers["Authorization"] = f"Bearer {token}"
    while not stop.is_set():
        for path in paths:
            t0 = time.perf_counter()
            session.get(url + path, timeout=30).raise_for_status()
            timings.append(time.perf_counter() - t0)
            if stop.is_set():
                break
    results.put(timings)


def _while_service_prunes(app, db_url: str, tmp: str, sandbox_url: str, rate: float, seconds: float) -> dict:
    """The 202 across the first retention tick of a service (MS_RETENTION_DAYS 30: 2 s of pruning, as
    every minute in service), which its ticker runs retention.TICK seconds after start: the sending starts
    so that the tick falls a quarter into it. Pruned: the old rows that one tick removed."""
    from msapp.services import retention
    from msapp.tools.bench.common import Env, _ack_latency, _service

    before = _old_rows(app)
    with _service(db_url, tmp, sandbox_url, 4, {"MS_ADMIN_TOKEN": ADMIN_TOKEN}) as (url, proc):
        started = time.monotonic()
        env = Env(sandbox_url, [url], [proc], [(BIG, "scale")])
        time.sleep(max(0.0, started + retention.TICK - seconds / 4 - time.monotonic()))
        busy = _ack_latency(env, rate, seconds, tag="prune")
    after = _old_rows(app, cutoff=before["cutoff"])
    rows = {name: count - after[name] for name, count in before.items() if name != "cutoff"}
    return {"pruning": busy, "pruned": {"rows": sum(rows.values()), "tables": rows}}


def _old_rows(app, cutoff=None) -> dict:
    """Per table of retention's walks, the rows older than `cutoff` (default: 30 days ago) that it deletes."""
    from sqlalchemy import func, select

    from msapp.clock import utcnow
    from msapp.extensions import db
    from msapp.services.retention import _walks

    cutoff = cutoff or utcnow() - timedelta(days=30)
    with app.app_context():
        counts = {walk.name: db.session.scalar(select(func.count()).select_from(walk.table).where(walk.old(cutoff)))
                  for walk in _walks()}
        db.session.commit()
    return {**counts, "cutoff": cutoff}


def desk_app(db_url: str, tmp: str):
    """The bench's quiet app, with this run's admin token (the desk's JSON API asks for it)."""
    from msapp.tools.bench.queue_runs import _quiet_app

    return _quiet_app(db_url, tmp, MS_ADMIN_TOKEN=ADMIN_TOKEN)


def report_desk(results: list) -> str:
    lines = ["| database | calls (largest) | journal rows | " + " | ".join(DESK_OPS) + " |",
             "|---|---|---|" + "---|" * len(DESK_OPS)]
    for r in results:
        d = r["desk_ms"]
        lines.append(f"| {r['database']} | {r['calls']:,} ({r['big_enterprise_calls']:,}) | {r['journal_rows']:,} | "
                     + " | ".join(f"{d[name][0]} / {d[name][1]}" for name in DESK_OPS) + " |")
    lines += ["", "| database | 202 p50 / p99 quiet | while searching, one process (searches: count, p50 / p95) | "
              "while searching, the desk apart (same) | across retention's tick | rows one tick pruned |",
              "|---|---|---|---|---|---|"]
    for r in results:
        load = r.get("load")
        if not load:
            continue
        q, p = load["quiet"], load["pruning"]
        shapes = {shape: "; ".join(f"{a['ack_p50_ms']} / {a['ack_p99_ms']} ms ({a['searches']['count']:,}, "
                                   f"{a['searches']['p50_ms']} / {a['searches']['p95_ms']} ms)" for a in rounds)
                  for shape, rounds in load["searching"].items()}
        lines.append(f"| {r['database']} | {q['ack_p50_ms']} / {q['ack_p99_ms']} ms | {shapes['one process']} | "
                     f"{shapes['desk apart']} | {p['ack_p50_ms']} / {p['ack_p99_ms']} ms | "
                     f"{load['pruned']['rows']:,} |")
    return "\n".join(lines)
