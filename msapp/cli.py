"""Command line: check, migrate, serve, and enterprise management for standalone use.

Every failure a user can cause (bad setting, unreachable database, port taken) ends with one line on
stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading

import click
from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from msapp.errors import ApiError
from msapp.settings import SettingsError

log = logging.getLogger("msapp.cli")


def _fail(message: str, code: int = 1):
    click.echo(f"ms: {message}", err=True)
    sys.exit(code)


def _db_reason(exc: Exception) -> str:
    text = str(getattr(exc, "orig", exc) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _app():
    from msapp import create_app

    try:
        return create_app()
    except SettingsError as exc:
        _fail(f"invalid setting: {exc}", 2)
    except OSError as exc:
        _fail(f"cannot prepare instance or log directory: {exc}", 2)


@click.group()
def main():
    """ms: MoySklad telephony bridge."""


@main.command()
def check():
    """Validate settings and reach the database."""
    from msapp.db.schema import ping

    app = _app()
    try:
        ping(app)
    except SQLAlchemyError as exc:
        _fail(f"database unreachable: {_db_reason(exc)}", 2)
    click.echo("ok")


@main.command("migrate")
def migrate_cmd():
    """Create or upgrade the schema (never drops or alters platform tables)."""
    from msapp.db.schema import upgrade_database

    app = _app()
    try:
        upgrade_database(app)
    except SQLAlchemyError as exc:
        _fail(f"migration failed: {_db_reason(exc)}", 2)
    click.echo("database is up to date")


@main.command()
def serve():
    """Serve HTTP with waitress and run the worker pool until SIGTERM."""
    from msapp.queue import release_orphans
    from msapp.web.server import make_server

    app = _app()
    state = app.extensions["ms"]
    s = state.settings
    try:
        server = make_server(app, s.host, s.port)
    except OSError as exc:
        _fail(f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc}", 2)
    # The port is ours, so no other process with this worker id is alive: its running jobs are orphans.
    state.queue.worker_id = f"{socket.gethostname()}:{s.port}"
    with app.app_context():
        try:
            released = release_orphans(state.queue)
        except SQLAlchemyError as exc:
            _fail(f"database unreachable: {_db_reason(exc)}", 2)
    if released:
        log.warning("took back %s jobs left running by a previous process", released)
    from msapp.queue.ownership import SecondProcess, SqliteOwnership

    single = None  # held (referenced) for the process's life: its file lock is the SQLite rule
    try:
        if s.is_sqlite and s.workers:  # one process with workers per SQLite file: a second stops here
            from sqlalchemy.engine import make_url

            single = SqliteOwnership(make_url(s.database_url).database or "ms.db")
            single.start()
        state.pool.start()
    except SecondProcess as exc:
        _fail(str(exc), 2)

    def _stop(signum, _frame):
        log.info("signal %s: stopping workers", signum)
        threading.Thread(target=_shutdown, args=(state, server), daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("serving %s on http://%s:%s with %s workers", ", ".join(s.faces), s.host, s.port, s.workers)
    click.echo(f"serving on http://{s.host}:{s.port}")
    freeze_startup_objects()
    server.run()
    if single is not None:
        single.stop()


def freeze_startup_objects() -> None:
    """Keep what startup built (modules, the app, SQLAlchemy's tables and compiled statements: about
    100,000 objects) out of the cyclic garbage collector's walks (`gc.freeze`). A full collection stops
    every thread, the event path's included, for as long as it walks; startup's objects live as long as
    the process, so the collector has nothing to find among them (docs/benchmarks.md has the figures)."""
    from msapp import metrics

    gc.collect()  # garbage of startup is freed, not frozen
    gc.freeze()
    metrics.GC_FROZEN.set(gc.get_freeze_count())


def _shutdown(state, server) -> None:
    state.pool.stop(timeout=15)
    logging.shutdown()
    server.close()
    os._exit(0)


@main.group("enterprise")
def enterprise_group():
    """Manage enterprises (standalone use; on the platform its own tables are used)."""


def _with_app(fn):
    """Run fn inside an app context, turning expected failures into one-line errors."""

    def wrapper(*args, **kwargs):
        app = current_app._get_current_object() if current_app else _app()
        with app.app_context():
            try:
                return fn(*args, **kwargs)
            except ApiError as exc:
                _fail(exc.error + (f" ({exc.field})" if exc.field else ""))
            except SQLAlchemyError as exc:
                _fail(f"database error: {_db_reason(exc)}", 2)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _valid_number(number: str) -> str:
    if not number or len(number) > 32 or not all(c.isalnum() or c in "-_" for c in number):
        _fail("enterprise number must be letters, digits, '-' or '_' (at most 32)")
    return number


@enterprise_group.command("add")
@click.argument("number")
@click.option("--name", default="", help="Company name")
@_with_app
def enterprise_add(number, name):
    """Add an enterprise (its integration starts disabled)."""
    from msapp.db.models import Enterprise
    from msapp.extensions import db

    number = _valid_number(number)
    if db.session.get(Enterprise, number) is not None:
        _fail(f"enterprise {number} already exists")
    db.session.add(Enterprise(number=number, name=name or number, integrations_config={}))
    db.session.commit()
    click.echo(f"added {number}")


@enterprise_group.command("list")
@_with_app
def enterprise_list():
    """List enterprises and whether their integration is enabled."""
    from msapp.db.models import Enterprise
    from msapp.extensions import db
    from msapp.state import ms

    for ent in db.session.scalars(select(Enterprise).order_by(Enterprise.number)):
        cfg = ms().configs.of(ent)
        flag = "enabled" if cfg.get("enabled") else "disabled"
        click.echo(f"{ent.number}\t{ent.name or ''}\t{flag}")


@enterprise_group.command("show")
@click.argument("number")
@_with_app
def enterprise_show(number):
    """Show one enterprise's ms config (secrets masked)."""
    import json

    from msapp.redact import mask_tail
    from msapp.services.config_schema import public_view
    from msapp.state import ms

    ent = ms().configs.enterprise(number)
    out = {"number": ent.number, "name": ent.name, "secret": mask_tail(ent.secret),
           "ms": public_view(ms().configs.of(ent))}
    click.echo(json.dumps(out, ensure_ascii=False, indent=2))


@enterprise_group.command("set-secret")
@click.argument("number")
@_with_app
def enterprise_set_secret(number):
    """Set the enterprise secret (clientId for originate), read from stdin or a hidden prompt."""
    from msapp.extensions import db
    from msapp.state import ms

    ent = ms().configs.enterprise(number, lock=True)
    if sys.stdin.isatty():
        value = click.prompt("secret", hide_input=True, confirmation_prompt=True)
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value or len(value) > 256 or any(c.isspace() for c in value):
        _fail("secret must be 1-256 characters without spaces")
    ent.secret = value
    db.session.commit()
    click.echo(f"secret of {number} set")


@enterprise_group.command("configure")
@click.argument("number")
@click.argument("json_config")
@_with_app
def enterprise_configure(number, json_config):
    """Merge a JSON object into the ms config, e.g. '{"enabled": true}' ('-' reads stdin)."""
    import json

    from msapp.services.config_schema import public_view
    from msapp.state import ms

    raw = sys.stdin.read() if json_config == "-" else json_config
    try:
        payload = json.loads(raw)
    except ValueError:
        _fail("config must be a JSON object")
    cfg = ms().configs.save(number, payload, by="cli")
    click.echo(json.dumps(public_view(cfg), ensure_ascii=False, indent=2))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8081, show_default=True, type=click.IntRange(0, 65535))
@click.option("--seed", type=click.Path(exists=True, dir_okay=False), help="JSON seed (default: the demo data)")
def sandbox(host, port, seed):
    """Run the MoySklad sandbox alone (Phone API, JSON API, control API, cards page)."""
    from msapp.tools.sandbox import SandboxServer

    try:
        server = SandboxServer(host, port, seed)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 2)
    except ValueError as exc:
        _fail(f"bad seed file: {exc}", 2)
    keys = server.state.keys()["demo"]
    click.echo(f"sandbox on {server.url}  (cards page: {server.url}/sandbox/)")
    click.echo(f"  MS_PHONE_API_URL={server.phone_url}")
    click.echo(f"  MS_JSON_API_URL={server.json_url}")
    click.echo(f"  demo keys: GET {server.url}/sandbox/api/keys (phone key ends …{keys['phone_api_key'][-4:]})")
    server.server.run()


@main.command()
@click.option("--port", default=8024, show_default=True, type=click.IntRange(1, 65535))
@click.option("--sandbox-port", default=8081, show_default=True, type=click.IntRange(0, 65535))
@click.option("--once", is_flag=True, help="Exit after the calls instead of waiting for Ctrl-C")
@click.option("--pause", default=1.0, show_default=True, help="Seconds between call events")
def demo(port, sandbox_port, once, pause):
    """Run the sandbox and the service with a demo enterprise, and play a few calls."""
    from msapp.tools.demo import run_demo

    try:
        run_demo(port, sandbox_port, once, pause)
    except OSError as exc:
        _fail(f"cannot start the demo: {exc.strerror or exc}", 2)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def bench(ctx):
    """Measure the docs/design.md 10 figures against the sandbox (see --help)."""
    from msapp.tools.bench import bench as command

    command.main(args=ctx.args, prog_name="ms.sh bench", standalone_mode=True)
