"""`bench --scale CALLS`: a platform's month of data, filled by the database itself (not the event path),
then what the admin reads of the largest enterprise: the analytics, and the support desk through its JSON
API; then the event path's 202 at 200/s while the desk's searches run in a loop, and while retention
prunes the day that fell out of the 30 (docs/benchmarks.md).

CALLS calls over the last 31 days across 10 enterprises, one holding a third; 75 % incoming (answered 80 %,
missed 16 %, busy 4 %), callers drawn from a pool per enterprise so that missed callers call again and
are called back. With them, as the service writes them: 5 journal rows per call (3 events, 2 MoySklad
exchanges) linked to the call, 1 row of another integration per 2 calls, a done sync job per call, a
callback task per missed call, a click per outgoing call. Every table is written in time order, as a
month of service writes it, so retention's deletes of the oldest day touch the pages they would in
service (a fill in random order made each pruned row a page of its own). The rollup is built by
`Rollup.rebuild` (timed: what the migration's first ticks do).
"""
from __future__ import annotations

import importlib
import random
import tempfile
import time
from contextlib import contextmanager
from datetime import timedelta

from msapp.tools.bench.common import _database, p50_p95_ms, release_db

_MIGRATION_0013 = importlib.import_module("msapp.db.migrations.versions.0013_support_desk")
_MIGRATION_0016 = importlib.import_module("msapp.db.migrations.versions.0016_task_closed_by")

BIG = "0100"
ENTERPRISES = [BIG] + [f"01{n:02d}" for n in range(1, 10)]
PG_FILL = """
INSERT INTO ms_calls (enterprise_number, unique_id, direction, phone, extensions, answered_extension, start_time,
    answer_time, end_time, call_status, record_url, notify, status, ms_call_id, external_id, create_attempted, shown,
    hidden,
    answer_sent, end_sent, sequence, customer_checked, customer_attempted, customer_created, order_attempted,
    task_queued, created_at, updated_at)
SELECT e, 'scale-' || g, dir, '+37529' || (1000000 + (random() * :phones)::int), jsonb_build_array(x1::text),
    CASE WHEN dir = 'in' AND st = 'answered' THEN x1::text END, t0,
    CASE WHEN st = 'answered' THEN t0 + (3 + random() * 37) * interval '1 second' END,
    t0 + (10 + random() * 600) * interval '1 second', st, NULL, true, 'ended', 'ms-' || g, 'scale-' || g, true,
    '[]', '[]',
    true, true, 0, false, false, false, false, false, t0, t0
FROM (SELECT g, CASE WHEN g % 3 = 0 THEN '0100' ELSE '01' || lpad((1 + g % 9)::text, 2, '0') END AS e,
             CASE WHEN random() < 0.75 THEN 'in' ELSE 'out' END AS dir,
             (SELECT CASE WHEN r < 0.80 THEN 'answered' WHEN r < 0.96 THEN 'missed' ELSE 'busy' END
              FROM (SELECT random() + g * 0 AS r) q) AS st,
             150 + (random() * 20)::int AS x1,
             (now() AT TIME ZONE 'UTC') - random() * interval '31 days' AS t0
      FROM generate_series(1, :n) g) s
ORDER BY t0
"""


def measure_scale(kind: str, pg_url: str, calls: int, runs: int = 40, load_seconds: float = 20.0) -> dict:
    from sqlalchemy import text

    from msapp.extensions import db
    from msapp.services.analytics import Analytics, period_from
    from msapp.services.analytics_rollup import Rollup
    from msapp.tools.bench import scale_desk
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
                _fill_companions(db, kind)
                filled = time.perf_counter() - started
                index_seconds = _build_indexes(db, kind)
                backfill_seconds = _backfill_links(db, kind)
                closers_seconds = _backfill_closers(db, kind)
                configs = app.extensions["ms"].configs
                from msapp.db.models import Enterprise

                db.session.add_all(Enterprise(number=n, name=n, integrations_config={}) for n in ENTERPRISES)
                db.session.commit()
                started = time.perf_counter()
                big_calls = db.session.scalar(text("SELECT count(*) FROM ms_calls WHERE enterprise_number = :e"),
                                              {"e": BIG})
                Rollup(configs).rebuild(BIG)
                rebuilt = time.perf_counter() - started
                _settle(db, kind)
                sizes = _sizes(db, kind)
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
                    figures[name] = p50_p95_ms(timings)
                journal_rows = db.session.scalar(text("SELECT count(*) FROM integration_logs"))
                desk_requests = scale_desk.desk_requests(db, runs, big_calls)
                release_db()
            desk_app = scale_desk.desk_app(db_url, tmp)
            with desk_app.app_context():
                desk = scale_desk.time_desk(desk_app.test_client(), desk_requests)
                release_db()
            load = None
            if load_seconds:
                load = scale_desk.under_load(db_url, tmp, desk_requests, load_seconds)
            return {"database": kind, "calls": calls, "big_enterprise_calls": big_calls,
                    "journal_rows": journal_rows, "fill_seconds": round(filled, 1), "index_seconds": index_seconds,
                    "backfill_seconds": backfill_seconds, "closers_seconds": closers_seconds, "table_bytes": sizes,
                    "rebuild_seconds": round(rebuilt, 1), "analytics_ms": figures, "desk_ms": desk, "load": load}
        finally:
            cleanup()


def _settle(db, kind: str) -> None:
    """The database as a month of service leaves it, not as a bulk fill does: PostgreSQL's statistics and
    visibility map as autovacuum keeps them, and the fill's dirty pages written out (a checkpoint), so the
    202s measured next do not pay for the fill; SQLite's WAL folded into the database."""
    from sqlalchemy import text

    db.session.remove()  # no transaction of ours open: the checkpoint waits for none
    if kind == "postgresql":
        with db.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("VACUUM ANALYZE"))
            conn.execute(text("CHECKPOINT"))
        return
    raw = db.engine.raw_connection()  # outside a transaction (the engine's connections begin IMMEDIATE)
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()


SIZED = ("integration_logs", "ms_call_journal", "ms_calls", "ms_jobs", "ms_tasks", "ms_clicks", "ms_call_hours",
         "ms_callbacks")


def _sizes(db, kind: str) -> dict:
    """Bytes on disk per table of SIZED, its indexes (and PostgreSQL's TOAST) included."""
    from sqlalchemy import text

    if kind == "postgresql":
        query = "SELECT name, pg_total_relation_size(to_regclass(name)) FROM unnest(CAST(:names AS text[])) AS name"
        found = db.session.execute(text(query), {"names": list(SIZED)}).all()
    else:  # dbstat: every b-tree's pages; an index counts for its table
        found = db.session.execute(text("SELECT s.tbl_name, sum(d.pgsize) FROM dbstat d JOIN sqlite_schema s "
                                        "ON s.name = d.name GROUP BY s.tbl_name")).all()
    db.session.commit()
    return {name: int(size or 0) for name, size in found if name in SIZED}


INDEXES = {  # built after the fill as their migrations build them on a platform's tables: (name, table, columns, where)
    "0010": (("ix_ms_calls_enterprise_start", "ms_calls", "enterprise_number, start_time", None),
             ("ix_ms_calls_enterprise_phone", "ms_calls", "enterprise_number, phone", None)),
    "0013": tuple((name, table, ", ".join(columns), where) for name, table, columns, where in _MIGRATION_0013.PARTIAL),
    "0016": ((_MIGRATION_0016.NAME, "ms_tasks", ", ".join(_MIGRATION_0016.COLUMNS), _MIGRATION_0016.WHERE),
             (_MIGRATION_0016.CREATED, "ms_tasks", ", ".join(_MIGRATION_0016.CREATED_COLUMNS), None)),
}


def _drop_indexes(db) -> None:
    """The fill runs without the indexes of INDEXES; they are built after it, timed."""
    from sqlalchemy import text

    for indexes in INDEXES.values():
        for name, *_ in indexes:
            db.session.execute(text(f"DROP INDEX IF EXISTS {name}"))
    db.session.commit()


@contextmanager
def _as_migrations_run(db, kind: str):
    """A connection as the migrations' long steps run: in autocommit on PostgreSQL; on SQLite in a
    transaction committed at the end (the engine begins one whatever the isolation level says)."""
    with db.engine.connect() as conn:
        if kind == "postgresql":
            yield conn.execution_options(isolation_level="AUTOCOMMIT")
            return
        yield conn
        conn.commit()


def _build_indexes(db, kind: str) -> dict:
    """Seconds per migration to build its indexes as it does (PostgreSQL: CONCURRENTLY)."""
    from sqlalchemy import text

    seconds = {}
    with _as_migrations_run(db, kind) as conn:
        for revision, indexes in INDEXES.items():
            started = time.perf_counter()
            for name, table, columns, where in indexes:
                concurrently = "CONCURRENTLY " if kind == "postgresql" else ""
                conn.execute(text(f"CREATE INDEX {concurrently}{name} ON {table} ({columns})"
                                  + (f" WHERE {where}" if where else "")))
            if kind != "postgresql":
                conn.commit()  # each migration's indexes timed with their commit
            seconds[revision] = round(time.perf_counter() - started, 1)
    return seconds


def _backfill_links(db, kind: str) -> float:
    """Seconds for migration 0013 to link the filled journal's rows to their calls, with its own walk."""
    from sqlalchemy import text

    return _timed_step(db, kind, lambda conn: _MIGRATION_0013._backfill(conn, text(_MIGRATION_0013.BACKFILL[kind])))


def _backfill_closers(db, kind: str) -> float:
    """Seconds for migration 0016 to fill in who closed each filled task, from its closing call."""
    return _timed_step(db, kind, _MIGRATION_0016.backfill)


def _timed_step(db, kind: str, step) -> float:
    """Seconds for a migration's long step, `step(conn)`, on a connection as the migrations run it."""
    db.session.remove()
    started = time.perf_counter()
    with _as_migrations_run(db, kind) as conn:
        step(conn)
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
    ages = sorted((rng.random() * 31 * 86400 for _ in range(calls)), reverse=True)  # oldest first
    for g, age in enumerate(ages, start=1):
        start = now - timedelta(seconds=age)
        r, direction, ext = rng.random(), "in" if rng.random() < 0.75 else "out", str(150 + rng.randint(0, 20))
        status = "answered" if r < 0.8 else "missed" if r < 0.96 else "busy"
        answer = start + timedelta(seconds=3 + rng.random() * 37) if status == "answered" else None
        batch.append({"enterprise_number": BIG if g % 3 == 0 else f"01{1 + g % 9:02d}", "unique_id": f"scale-{g}",
                      "direction": direction, "phone": f"+37529{1000000 + rng.randint(0, phones)}",
                      "extensions": [ext], "answered_extension": ext if direction == "in" and answer else None,
                      "start_time": start, "answer_time": answer,
                      "end_time": start + timedelta(seconds=10 + rng.random() * 600), "call_status": status,
                      "status": "ended", "ms_call_id": f"ms-{g}", "created_at": start, "updated_at": start})
        if len(batch) == 20000:
            db.session.execute(Call.__table__.insert(), batch)
            batch = []
    if batch:
        db.session.execute(Call.__table__.insert(), batch)
    db.session.commit()


def report_scale(results: list) -> str:
    lines = ["| database | calls (largest enterprise) | fill | indexes of 0010 | 0013: partial indexes, links "
             "back-filled | 0016: index, closers back-filled | rollup rebuild (largest) | "
             "analytics p50 / p95: 30 days | 7 days | today |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    disk = ["| database | calls | " + " | ".join(SIZED) + " | bytes per call, all (the journal's 'ms' rows only) |",
            "|---|---|" + "---|" * len(SIZED) + "---|"]
    for r in results:
        a, built = r["analytics_ms"], r["index_seconds"]
        lines.append(f"| {r['database']} | {r['calls']:,} ({r['big_enterprise_calls']:,}) | {r['fill_seconds']} s | "
                     f"{built['0010']} s | {built['0013']} s, {r['backfill_seconds']} s | {built['0016']} s, "
                     f"{r['closers_seconds']} s | "
                     f"{r['rebuild_seconds']} s | "
                     f"{a['30 days'][0]} / {a['30 days'][1]} ms | {a['7 days'][0]} / {a['7 days'][1]} ms | "
                     f"{a['today'][0]} / {a['today'][1]} ms |")
        sizes = r["table_bytes"]
        ours = sum(sizes.values()) - sizes.get("integration_logs", 0) * (1 - JOURNAL_SHARE)
        disk.append(f"| {r['database']} | {r['calls']:,} | " + " | ".join(f"{sizes.get(t, 0) / 2**20:,.0f} MB"
                                                                         for t in SIZED)
                    + f" | {sum(sizes.values()) / r['calls']:,.0f} ({ours / r['calls']:,.0f}) |")
    return "\n".join(lines + [""] + disk)


JOURNAL = (("0", "event.dial"), ("1", "ms.phone.call.create"), ("30", "event.answer"),
           ("31", "ms.phone.call.update"), ("200", "event.hangup"))  # seconds after the start, kind
JOURNAL_SHARE = len(JOURNAL) / (len(JOURNAL) + 0.5)  # of integration_logs' rows, the service's (by count)
COMPANIONS = {
    "postgresql": [
        "INSERT INTO integration_logs (created_at, enterprise_number, integration_type, event_type, request_data, "
        "response_data, status) SELECT c.start_time + k.s::int * interval '1 second', c.enterprise_number, 'ms', "
        "k.ev, jsonb_build_object('unique_id', c.unique_id, 'phone', c.phone, 'event_type', k.ev, 'extensions', "
        "c.extensions), jsonb_build_object('status', 200, 'latency_ms', 80), 'success' FROM ms_calls c "
        "CROSS JOIN (VALUES {journal}) AS k(s, ev) ORDER BY c.id, k.s::int",
        "INSERT INTO integration_logs (created_at, enterprise_number, integration_type, event_type, request_data, "
        "status) SELECT c.start_time, c.enterprise_number, 'bitrix', 'call', jsonb_build_object('call', c.unique_id), "
        "'success' FROM ms_calls c WHERE c.id % 2 = 0 ORDER BY c.id",
    ],
    "sqlite": [
        "WITH k(s, ev) AS (VALUES {journal}) INSERT INTO integration_logs (created_at, enterprise_number, "
        "integration_type, event_type, request_data, response_data, status) SELECT "
        "strftime('%Y-%m-%d %H:%M:%f', c.start_time, '+' || k.s || ' seconds'), c.enterprise_number, 'ms', k.ev, "
        "json_object('unique_id', c.unique_id, 'phone', c.phone, 'event_type', k.ev, 'extensions', "
        "json(c.extensions)), json_object('status', 200, 'latency_ms', 80), 'success' FROM ms_calls c, k "
        "ORDER BY c.id, CAST(k.s AS integer)",
        "INSERT INTO integration_logs (created_at, enterprise_number, integration_type, event_type, request_data, "
        "status) SELECT c.start_time, c.enterprise_number, 'bitrix', 'call', json_object('call', c.unique_id), "
        "'success' FROM ms_calls c WHERE c.id % 2 = 0 ORDER BY c.id",
    ],
    "both": [
        "INSERT INTO ms_jobs (enterprise_number, key, kind, payload, status, attempts, max_attempts, run_at, "
        "created_at, updated_at) SELECT enterprise_number, 'call:' || enterprise_number || ':' || unique_id, "
        "'call.sync', '{}', 'done', 1, 10, start_time, start_time, end_time FROM ms_calls ORDER BY id",
        "INSERT INTO ms_tasks (enterprise_number, phone, state, task_id, create_attempted, marker, missed, "
        "note_added, created_at, updated_at, closed_at, closed_reason, closed_by_call) SELECT enterprise_number, "
        "phone, 'closed', 'task-' || id, true, 'm' || id, '[]', true, end_time, end_time, end_time, 'reached', "
        "unique_id FROM ms_calls "
        "WHERE call_status = 'missed' ORDER BY id",
        "INSERT INTO ms_clicks (enterprise_number, extension, destination, client_address, outcome, created_at) "
        "SELECT enterprise_number, '150', phone, '127.0.0.1', 'queued', start_time FROM ms_calls "
        "WHERE direction = 'out' ORDER BY id",
    ],
}


def _fill_companions(db, kind: str) -> None:
    """What the service writes beside its calls, in proportion (see the module's docstring): bulk SQL."""
    from sqlalchemy import text

    journal = ", ".join(f"('{seconds}', '{event}')" for seconds, event in JOURNAL)
    for statement in COMPANIONS[kind] + COMPANIONS["both"]:
        db.session.execute(text(statement.replace("{journal}", journal)))
        db.session.commit()
