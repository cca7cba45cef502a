"""`bench --scale CALLS`: a platform's month of calls, filled by the database itself (not the event path),
then the analytics of the largest enterprise read as the page reads them.

CALLS calls over the last 30 days across 10 enterprises, one holding a third; 75 % incoming (answered 80 %,
missed 16 %, busy 4 %), callers drawn from a pool per enterprise so that missed callers call again and
are called back. The rollup is built by `Rollup.rebuild` (timed: what the migration's first ticks do).
"""
from __future__ import annotations

import random
import tempfile
import time
from datetime import timedelta

from msapp.tools.bench.common import _database, _pct

BIG = "0100"
ENTERPRISES = [BIG] + [f"01{n:02d}" for n in range(1, 10)]
PG_FILL = """
INSERT INTO ms_calls (enterprise_number, unique_id, direction, phone, extensions, answered_extension, start_time,
    answer_time, end_time, call_status, record_url, notify, status, external_id, create_attempted, shown, hidden,
    answer_sent, end_sent, sequence, customer_checked, customer_attempted, customer_created, order_attempted,
    task_queued, created_at, updated_at)
SELECT e, 'scale-' || g, dir, '+37529' || (1000000 + (random() * :phones)::int), jsonb_build_array(x1::text),
    CASE WHEN dir = 'in' AND st = 'answered' THEN x1::text END, t0,
    CASE WHEN st = 'answered' THEN t0 + (3 + random() * 37) * interval '1 second' END,
    t0 + (10 + random() * 600) * interval '1 second', st, NULL, true, 'ended', 'scale-' || g, true, '[]', '[]',
    true, true, 0, false, false, false, false, false, t0, t0
FROM (SELECT g, CASE WHEN g % 3 = 0 THEN '0100' ELSE '01' || lpad((1 + g % 9)::text, 2, '0') END AS e,
             CASE WHEN random() < 0.75 THEN 'in' ELSE 'out' END AS dir,
             (SELECT CASE WHEN r < 0.80 THEN 'answered' WHEN r < 0.96 THEN 'missed' ELSE 'busy' END
              FROM (SELECT random() + g * 0 AS r) q) AS st,
             150 + (random() * 20)::int AS x1,
             (now() AT TIME ZONE 'UTC') - random() * interval '30 days' AS t0
      FROM generate_series(1, :n) g) s
"""


def measure_scale(kind: str, pg_url: str, calls: int, runs: int = 40) -> dict:
    from sqlalchemy import text

    from msapp.extensions import db
    from msapp.services.analytics import Analytics, period_from
    from msapp.services.analytics_rollup import Rollup
    from msapp.tools.bench.queue_runs import _quiet_app

    with tempfile.TemporaryDirectory() as tmp:
        db_url, cleanup = _database(kind, pg_url, tmp)
        try:
            from msapp.db.schema import upgrade_database

            app = _quiet_app(db_url, tmp)
            upgrade_database(app)
            with app.app_context():
                _drop_indexes(db)
                started = time.perf_counter()
                _fill(db, kind, calls)
                filled = time.perf_counter() - started
                index_seconds = _build_indexes(db, kind)
                configs = app.extensions["ms"].configs
                from msapp.db.models import Enterprise

                db.session.add_all(Enterprise(number=n, name=n, integrations_config={}) for n in ENTERPRISES)
                db.session.commit()
                started = time.perf_counter()
                big_calls = db.session.scalar(text("SELECT count(*) FROM ms_calls WHERE enterprise_number = :e"),
                                              {"e": BIG})
                Rollup(configs).rebuild(BIG)
                rebuilt = time.perf_counter() - started
                if kind == "postgresql":  # as autovacuum does after a month of inserts: statistics, visibility map
                    with db.engine.connect() as conn:
                        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
                from msapp.clock import utcnow

                figures = {}
                for name, args in (("30 days", {"period": "30d"}), ("7 days", {"period": "7d"}),
                                   ("today", {"period": "today"})):
                    period = period_from(args, _zone(), utcnow())
                    timings = []
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        Analytics().report(BIG, period)
                        timings.append(time.perf_counter() - t0)
                    figures[name] = (round(_pct(timings, 50) * 1000, 1), round(_pct(timings, 95) * 1000, 1))
                db.session.remove()
                db.engine.dispose()
            return {"database": kind, "calls": calls, "big_enterprise_calls": big_calls,
                    "fill_seconds": round(filled, 1), "index_seconds": index_seconds,
                    "rebuild_seconds": round(rebuilt, 1),
                    "analytics_ms": figures}
        finally:
            cleanup()


CALL_INDEXES = (("ix_ms_calls_enterprise_start", "enterprise_number, start_time"),
                ("ix_ms_calls_enterprise_phone", "enterprise_number, phone"))


def _drop_indexes(db) -> None:
    """The fill runs without migration 0010's indexes on ms_calls; they are built after it, timed."""
    from sqlalchemy import text

    for name, _ in CALL_INDEXES:
        db.session.execute(text(f"DROP INDEX IF EXISTS {name}"))
    db.session.commit()


def _build_indexes(db, kind: str) -> float:
    """Seconds to build the two indexes as the migration does (PostgreSQL: CONCURRENTLY, in autocommit)."""
    from sqlalchemy import text

    started = time.perf_counter()
    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for name, columns in CALL_INDEXES:
            concurrently = "CONCURRENTLY " if kind == "postgresql" else ""
            conn.execute(text(f"CREATE INDEX {concurrently}{name} ON ms_calls ({columns})"))
    return round(time.perf_counter() - started, 1)


def _zone():
    from zoneinfo import ZoneInfo

    return ZoneInfo("Europe/Minsk")


def _fill(db, kind: str, calls: int) -> None:
    from sqlalchemy import text

    phones = max(1000, calls // 15)  # about 15 calls per caller in the month
    if kind == "postgresql":
        db.session.execute(text(PG_FILL), {"n": calls, "phones": phones})
        db.session.commit()
        return
    from msapp.clock import utcnow
    from msapp.db.models import Call

    rng, now, batch = random.Random(1), utcnow(), []
    for g in range(1, calls + 1):
        start = now - timedelta(seconds=rng.random() * 30 * 86400)
        r, direction, ext = rng.random(), "in" if rng.random() < 0.75 else "out", str(150 + rng.randint(0, 20))
        status = "answered" if r < 0.8 else "missed" if r < 0.96 else "busy"
        answer = start + timedelta(seconds=3 + rng.random() * 37) if status == "answered" else None
        batch.append({"enterprise_number": BIG if g % 3 == 0 else f"01{1 + g % 9:02d}", "unique_id": f"scale-{g}",
                      "direction": direction, "phone": f"+37529{1000000 + rng.randint(0, phones)}",
                      "extensions": [ext], "answered_extension": ext if direction == "in" and answer else None,
                      "start_time": start, "answer_time": answer,
                      "end_time": start + timedelta(seconds=10 + rng.random() * 600), "call_status": status,
                      "status": "ended", "created_at": start, "updated_at": start})
        if len(batch) == 20000:
            db.session.execute(Call.__table__.insert(), batch)
            batch = []
    if batch:
        db.session.execute(Call.__table__.insert(), batch)
    db.session.commit()


def report_scale(results: list) -> str:
    lines = ["| database | calls (largest enterprise) | fill | indexes of 0010 | rollup rebuild (largest) | "
             "analytics p50 / p95: 30 days | 7 days | today |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["analytics_ms"]
        lines.append(f"| {r['database']} | {r['calls']:,} ({r['big_enterprise_calls']:,}) | {r['fill_seconds']} s | "
                     f"{r['index_seconds']} s | {r['rebuild_seconds']} s | {a['30 days'][0]} / {a['30 days'][1]} ms | "
                     f"{a['7 days'][0]} / {a['7 days'][1]} ms | {a['today'][0]} / {a['today'][1]} ms |")
    return "\n".join(lines)
