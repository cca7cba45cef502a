"""ms: the bridge between a cloud PBX (Asterisk) and MoySklad's telephony and CRM."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Optional

from flask import Flask, jsonify, request
from sqlalchemy import event
from werkzeug.exceptions import HTTPException

from msapp import logging_setup
from msapp import settings as settings_mod
from msapp.db import compiled
from msapp.db.reader import READER
from msapp.errors import ApiError
from msapp.extensions import db, migrate
from msapp.queue import JobQueue, WorkerPool
from msapp.redact import JsonText
from msapp.services import callflow, click_to_call
from msapp.services.admin import TEST_POPUP_KIND, AdminService
from msapp.services.analytics import Analytics
from msapp.services.analytics_rollup import Rollup
from msapp.services.breakers import Breakers
from msapp.services.callflow import CallSync
from msapp.services.config import ConfigStore
from msapp.services.customers import Customers
from msapp.services.directory import REFRESH_KIND, Directory
from msapp.services.events import SYNC_KIND
from msapp.services.lookups import Lookups
from msapp.services.moysklad_clients import MoySkladClients
from msapp.services.retention import TICK as RETENTION_TICK
from msapp.services.retention import Retention
from msapp.services.support import Support
from msapp.services.tasks import KIND as TASK_KIND
from msapp.services.tasks import Tasks
from msapp.state import MsState

MAX_BODY = 64 * 1024
MIGRATIONS_DIR = os.path.join(os.path.dirname(__file__), "db", "migrations")
log = logging.getLogger("msapp")


def create_app(config: Optional[Mapping[str, str]] = None) -> Flask:
    """Build the app. `config` overrides environment variables (same names, e.g. MS_DATABASE_URL)."""
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (config or {}).items() if v is not None})
    settings = settings_mod.load(env)

    app = Flask(__name__, instance_path=settings.instance_dir)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(settings),
        MAX_CONTENT_LENGTH=MAX_BODY,
        JSON_SORT_KEYS=False,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.public_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.admin_session_hours),
    )
    logging_setup.configure(settings.log_dir, settings.log_level)

    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR, render_as_batch=True)
    with app.app_context():
        if settings.is_sqlite:
            _sqlite_pragmas(db.engine)
        else:
            _ping_when_idle(db.engine)
            if settings.pg_prepare:
                compiled.prepare_on(db.engine)

    queue = JobQueue(lease_seconds=settings.job_lease_seconds, worker_id=env.get("MS_WORKER_ID"),
                     retry_horizon=settings.retry_horizon_seconds)
    configs = ConfigStore(settings.phone_api_url, settings.public_url)
    breakers = Breakers(queue)
    clients = MoySkladClients(settings, breakers)
    directory = Directory(app, clients, configs, queue, settings.lookup_timeout)
    customers = Customers(clients, directory)
    tasks = Tasks(clients, configs, customers, queue)
    queue.register(SYNC_KIND, CallSync(clients, configs, customers, tasks), max_attempts=12,
                   subject=callflow.SUBJECT)
    queue.register(TASK_KIND, tasks, max_attempts=8)
    queue.register(click_to_call.KIND, click_to_call.Originate(settings.originate_url, configs,
                                                                          settings.click_max_age), max_attempts=4)
    # a saved config may carry a fixed key: the refused-key pause ends, the next request tells
    configs.on_saved.append(lambda number: breakers.close(number, why="config saved", kind=("auth", "crm")))
    queue.register(TEST_POPUP_KIND, lambda job: admin_service.hide_test_popup(configs, job), max_attempts=5)
    admin_service = AdminService(clients, customers, queue, directory)
    queue.register(REFRESH_KIND, directory.refresh_job, max_attempts=3)
    pool = WorkerPool(app, queue, settings.workers)
    if not settings.is_sqlite:  # several processes may share PostgreSQL: buckets of enterprises each
        from msapp.queue.ownership import PgOwnership

        pool.ownership = PgOwnership(queue, pool.busy_buckets)
    pool.every(60.0, directory.refresh_stale)
    pool.every(1.0, breakers.refresh)
    pool.every(RETENTION_TICK, Retention(settings.retention_days).prune)
    pool.every(5.0, Rollup(configs).refresh)  # the analytics of calls that changed (at most 5 s late)
    app.extensions["ms"] = MsState(
        settings=settings,
        queue=queue,
        pool=pool,
        configs=configs,
        clients=clients,
        customers=customers,
        lookups=Lookups(app, configs, clients, customers, settings.lookup_timeout, directory=directory),
        admin=admin_service,
        directory=directory,
        breakers=breakers,
        support=Support(configs, clients),
        analytics=Analytics(directory),
    )

    from msapp.web.internal import bp as internal_bp
    from msapp.web.ops import bp as ops_bp
    from msapp.web.webhook import bp as webhook_bp

    app.register_blueprint(ops_bp)  # the probes, on every face
    if "internal" in settings.faces:
        app.register_blueprint(internal_bp)
    if "webhook" in settings.faces:
        app.register_blueprint(webhook_bp)
    if "admin" in settings.faces:
        from msapp.web import admin

        admin.register(app)
    _register_errors(app)

    from msapp.cli import enterprise_group

    app.cli.add_command(enterprise_group)
    return app


# JSON columns hold Cyrillic as text, not \\u escapes: the journal is read (and searched) by people. One
# encoder for the process (json.dumps with options builds a new one per call).
_encode = json.JSONEncoder(ensure_ascii=False).encode


def _json(value) -> str:
    """A JSON column's serializer; a journal value redaction already wrote as JSON is stored as written."""
    return str.__str__(value) if type(value) is JsonText else _encode(value)


def _engine_options(settings) -> dict:
    if settings.is_sqlite:
        from msapp.db.sqlite_lock import LockingConnection

        return {"json_serializer": _json,
                "connect_args": {"timeout": 30, "check_same_thread": False, "factory": LockingConnection}}
    return {
        "json_serializer": _json,
        "pool_pre_ping": False,  # a round trip per checkout: see _ping_when_idle
        "pool_size": settings.workers + 8,
        "max_overflow": 16,
        # keepalives: a connection to a vanished database host fails in seconds, not minutes
        "connect_args": {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                         "keepalives_count": 3},
    }


IDLE_PING_SECONDS = 1.0


def _ping_when_idle(engine) -> None:
    """Check a pooled PostgreSQL connection before use only when it sat idle for over a second.

    `pool_pre_ping` checks on every checkout: a round trip per transaction, about five per PBX event.
    A database restart leaves every pooled connection idle and dead, so the idle ones are checked (a
    dead one is replaced at once: the pool retries the checkout on DisconnectionError); a connection
    that dies while in busy use fails its statement, which invalidates the whole pool.
    """
    import time

    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, record, _proxy):
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure: a new connection
            raise DisconnectionError(str(exc)) from exc
        if not alive:
            raise DisconnectionError("ping failed")


def _sqlite_pragmas(engine) -> None:
    """WAL, a busy timeout, and BEGIN IMMEDIATE (queued on a process lock: see sqlite_lock), or for a
    reader's transaction (db/reader.py) a DEFERRED one outside the lock."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        if conn.get_execution_options().get(READER):
            conn.connection.dbapi_connection.begin_reading()
        else:
            conn.connection.dbapi_connection.begin_immediate()


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(exc.body()), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        messages = {413: f"body is larger than {MAX_BODY // 1024} KiB", 404: "not found",
                    405: "method not allowed"}
        return jsonify({"error": messages.get(exc.code, exc.description or exc.name)}), exc.code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        from msapp.redact import redact_text

        log.exception("unhandled error on %s %s", request.method, redact_text(request.path))
        db.session.rollback()
        if _is_database_down(exc):
            return jsonify({"error": "database unavailable, try again"}), 503
        return jsonify({"error": "internal error"}), 500


def _is_database_down(exc: Exception) -> bool:
    from sqlalchemy.exc import DBAPIError

    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated or "connect" in str(exc).lower())
