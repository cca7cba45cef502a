"""Fixtures: a fresh database per test (SQLite always, PostgreSQL when MS_TEST_DATABASE_URL is set)."""
from __future__ import annotations

import os
import socket
import time
import uuid

import pytest

from msapp import create_app
from msapp.db.schema import upgrade_database
from msapp.extensions import db

PG_URL = os.environ.get("MS_TEST_DATABASE_URL", "")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ADMIN_TOKEN = "test-admin-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_available() -> str | None:
    """None if PostgreSQL can be used, else the reason it cannot."""
    if not PG_URL:
        return "MS_TEST_DATABASE_URL is not set"
    import psycopg2

    try:
        psycopg2.connect(PG_URL, connect_timeout=3).close()
    except psycopg2.Error as exc:
        return f"PostgreSQL at MS_TEST_DATABASE_URL is unreachable: {str(exc).strip()}"
    return None


_PG_REASON = _pg_available()


class PgSchema:
    """A throwaway schema on the test PostgreSQL; its URL puts it first on the search_path."""

    def __init__(self):
        import psycopg2

        self.name = "t_" + uuid.uuid4().hex[:12]
        self._conn = psycopg2.connect(PG_URL)
        self._conn.autocommit = True
        with self._conn.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{self.name}"')
        sep = "&" if "?" in PG_URL else "?"
        self.url = f"{PG_URL}{sep}options=-csearch_path%3D{self.name}"

    def execute(self, sql: str, params=None):
        with self._conn.cursor() as cur:
            cur.execute(f'SET search_path TO "{self.name}"')
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def drop(self):
        with self._conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
        self._conn.close()

    def reconnect_and_drop(self):
        """Drop after PostgreSQL was restarted under this object's connection."""
        import psycopg2

        for _ in range(50):
            try:
                self._conn = psycopg2.connect(PG_URL)
                self._conn.autocommit = True
                break
            except psycopg2.OperationalError:
                time.sleep(0.2)
        self.drop()


def require_pg():
    if _PG_REASON:
        if IN_CI:
            pytest.fail(f"PostgreSQL tests must run in CI: {_PG_REASON}")
        pytest.skip(_PG_REASON)


@pytest.fixture(autouse=True)
def _real_clock():
    """Tests may compress time with msapp.clock.advance(); every test starts and ends on the real clock."""
    from msapp import clock

    clock.reset()
    yield
    clock.reset()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A URL of an empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ms.db'}"
        return
    require_pg()
    schema = PgSchema()
    try:
        yield schema.url
    finally:
        schema.drop()


@pytest.fixture
def pg_schema():
    require_pg()
    schema = PgSchema()
    yield schema
    schema.drop()


def make_app(db_url: str, tmp_path, **overrides):
    config = {
        "MS_DATABASE_URL": db_url,
        "MS_INSTANCE_DIR": str(tmp_path / "instance"),
        "MS_LOG_DIR": str(tmp_path / "logs"),
        "MS_WORKERS": "0",
        "MS_ADMIN_TOKEN": ADMIN_TOKEN,
        "MS_PUBLIC_URL": "https://bot.example.by",
    }
    config.update({k: str(v) for k, v in overrides.items()})
    app = create_app(config)
    app.config["TESTING"] = True
    upgrade_database(app)
    return app


def dispose(app):
    app.extensions["ms"].pool.stop()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def app(db_url, tmp_path):
    app = make_app(db_url, tmp_path)
    yield app
    dispose(app)


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def sandbox_server():
    from msapp.tools.sandbox import SandboxServer

    server = SandboxServer().start()
    yield server
    server.stop()


@pytest.fixture
def sandbox(sandbox_server):
    """The MoySklad sandbox on a real socket, reset to its seed for each test."""
    sandbox_server.state.reset()
    return sandbox_server


@pytest.fixture
def pbx():
    """The PBX's originate service (click-to-call), recording each request."""
    from tests.service_harness import FakeOriginate

    fake = FakeOriginate()
    yield fake
    fake.stop()


def statement_work(stmt, values: dict, keys: tuple | None = None) -> int:
    """What running `stmt` (through rawsql, as the product does) costs the database, rolled back: SQLite,
    its virtual machine's steps; PostgreSQL, the rows every node of its plan produced (EXPLAIN ANALYZE),
    sub-plans and their loops included. A cost that grows with a table's size shows here, untimed."""
    from msapp.db import compiled

    dialect = db.engine.dialect
    prepared = compiled._STATEMENTS.get(stmt, keys, dialect)  # keys: the columns an UPDATE sets
    params = prepared.parameters(values)
    fairy = db.engine.raw_connection()
    try:
        cursor = fairy.dbapi_connection.cursor()
        if dialect.name == "sqlite":
            steps = [0]

            def step():
                steps[0] += 1

            cursor.execute("BEGIN")
            fairy.dbapi_connection.set_progress_handler(step, 1)
            cursor.execute(prepared.sql, params)
            cursor.fetchall()
            fairy.dbapi_connection.set_progress_handler(None, 1)
            return steps[0]
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + prepared.sql, params)

        def rows(node: dict) -> int:
            return node["Actual Rows"] * node["Actual Loops"] + sum(rows(n) for n in node.get("Plans", []))

        return rows(cursor.fetchone()[0][0]["Plan"])
    finally:
        fairy.rollback()
        fairy.close()


@pytest.fixture
def http(monkeypatch):
    """The process's MoySklad and PBX transport replaced by a FakeTransport (tests/fake_http.py)."""
    from msapp.moysklad import transport
    from tests.fake_http import FakeTransport

    fake = FakeTransport()
    monkeypatch.setattr(transport, "_process", fake)
    return fake
