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

import json
import os
import sys

import click

from msapp.tools.bench.common import environment
from msapp.tools.bench.event_path import measure
from msapp.tools.bench.outages import measure_failover, measure_outage, report_failover
from msapp.tools.bench.queue_runs import measure_backlog, measure_prune, measure_prune_ack, report_backlog
from msapp.tools.bench.scale import measure_scale, report_scale
from msapp.tools.bench.scale_desk import report_desk


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
@click.option("--scale", type=click.IntRange(min=1000), default=None, metavar="CALLS",
              help="Only a month of CALLS calls (one enterprise a third): the analytics read at that size")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the raw figures as JSON")
def bench(dbs, pg_url, calls, soak, enterprises, rate, ack_seconds, latency_ms, workers, processes, outage,
          failover, prune, backlog, waiting, event_path, scale, json_out):
    """Measure the figures of docs/design.md 10 against the sandbox and print them as a Markdown table."""
    click.echo(f"versions: {environment()}")
    kinds = list(dbs) or (["sqlite", "postgresql"] if pg_url else ["sqlite"])
    if "postgresql" in kinds and not pg_url:
        raise click.UsageError("postgresql needs --pg-url or MS_BENCH_DATABASE_URL")
    if processes > 1 and "sqlite" in kinds:
        raise click.UsageError("several processes need PostgreSQL (--db postgresql)")
    if soak:
        calls = 10_000
    results = []
    if scale is not None:
        for kind in kinds:
            click.echo(f"scale run on {kind}: {scale} calls over 31 days...", err=True)
            results.append(measure_scale(kind, pg_url, scale, load_seconds=ack_seconds))
        click.echo(report_scale(results))
        click.echo("")
        click.echo(report_desk(results))
        _write_json(json_out, results)
        return
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
            json.dump({"versions": environment(), "results": results}, fh, indent=2)
