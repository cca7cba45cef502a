"""The queue at scale: retention's pruning (alone and under load) and the pace on a backlog."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from msapp.tools.bench.common import (
    Env,
    _ack_latency,
    _database,
    _pct,
    _prepare,
    _sandbox,
    _services,
    release_db,
)


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
                release_db()
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

    with tempfile.TemporaryDirectory() as tmp, _sandbox() as sandbox_url:
        db_url, cleanup = _database(kind, pg_url, tmp)
        try:
            numbers = _prepare(db_url, tmp, sandbox_url, 4)
            with _journal_app(db_url, tmp, kind, rows).app_context():
                release_db()
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


def _quiet_app(db_url: str, tmp: str, **settings: str):
    """An app on the database without workers, logging warnings only (fills and drives the bench's data);
    `settings`: more MS_* settings."""
    from msapp import create_app

    return create_app({"MS_DATABASE_URL": db_url, "MS_INSTANCE_DIR": tmp, "MS_LOG_DIR": tmp, "MS_WORKERS": "0",
                       "MS_LOG_LEVEL": "WARNING", **settings})


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
    from msapp.queue import WorkerPool
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
                release_db()
            return {"database": kind, "backlog_jobs": jobs, "backlog_workers": workers,
                    "backlog_seconds": round(elapsed, 1), "backlog_jobs_per_s": round(jobs / elapsed),
                    "backlog_cpu_per_job_ms": round(cpu / jobs * 1000, 3),
                    "claim_cpu_full_ms": round(claim_full * 1000, 3),
                    "claim_cpu_empty_ms": round(claim_empty * 1000, 3)}
        finally:
            cleanup()


def _claim_cpu(queue, claims: int = 20) -> float:
    """This thread's CPU per claim (each job handed back right away, uncounted, so the backlog stays)."""
    from msapp.queue import Defer

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
        release_db()


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
