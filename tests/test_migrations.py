"""Migrations create the schema on both databases and never touch existing platform tables."""
import sqlalchemy as sa

from msapp.extensions import db
from tests.conftest import dispose, make_app

OWN_TABLES = {"ms_calls", "ms_jobs", "ms_webhooks", "ms_workers", "ms_alembic_version", "ms_directory", "ms_breakers",
              "ms_clicks", "ms_tasks", "ms_config_history", "ms_click_cooldowns", "ms_auth_failures",
              "ms_auth_lockouts", "ms_call_hours", "ms_callbacks", "ms_analytics_marks",
              "ms_customer_names", "ms_call_journal"}


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from msapp import MIGRATIONS_DIR

    return ScriptDirectory(MIGRATIONS_DIR).get_current_head()


def _inspect(app):
    with app.app_context():
        insp = sa.inspect(db.engine)
        return {t: ({c["name"] for c in insp.get_columns(t)}, {i["name"] for i in insp.get_indexes(t)})
                for t in insp.get_table_names()}


def test_fresh_database_gets_all_tables(db_url, tmp_path):
    app = make_app(db_url, tmp_path)
    tables = _inspect(app)
    assert {"enterprises", "integration_logs"} | OWN_TABLES <= set(tables)
    assert "alembic_version" not in tables  # our version table never collides with the platform's
    with app.app_context():
        assert db.session.execute(sa.text("SELECT version_num FROM ms_alembic_version")).scalar() == head_revision()
    dispose(app)


def test_upgrade_twice_is_a_no_op(db_url, tmp_path):
    app = make_app(db_url, tmp_path)
    before = _inspect(app)
    dispose(app)
    app = make_app(db_url, tmp_path)
    assert _inspect(app) == before
    dispose(app)


PLATFORM_DDL = {
    "sqlite": [
        "CREATE TABLE enterprises (number TEXT PRIMARY KEY, name TEXT, secret TEXT, integrations_config JSON,"
        " is_enabled BOOLEAN DEFAULT 1, bot_token TEXT)",
        "CREATE INDEX ix_platform_ent_name ON enterprises (name)",
        "CREATE TABLE integration_logs (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TIMESTAMP,"
        " enterprise_number TEXT, integration_type TEXT, event_type TEXT, request_data JSON,"
        " response_data JSON, status TEXT, error_message TEXT, duration_ms INTEGER)",
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)",
        "INSERT INTO alembic_version VALUES ('platform_42')",
    ],
    "postgresql": [
        "CREATE TABLE enterprises (number TEXT PRIMARY KEY, name TEXT, secret TEXT, integrations_config JSONB,"
        " is_enabled BOOLEAN DEFAULT TRUE, bot_token TEXT)",
        "CREATE INDEX ix_platform_ent_name ON enterprises (name)",
        "CREATE TABLE integration_logs (id SERIAL PRIMARY KEY, created_at TIMESTAMPTZ DEFAULT now(),"
        " enterprise_number TEXT, integration_type TEXT, event_type TEXT, request_data JSONB,"
        " response_data JSONB, status TEXT, error_message TEXT, duration_ms INTEGER)",
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)",
        "INSERT INTO alembic_version VALUES ('platform_42')",
    ],
}
ROWS = [
    "INSERT INTO enterprises (number, name, secret, integrations_config, bot_token) VALUES "
    "('0367', 'Acme', 'sec', '{\"bitrix\": {\"x\": 1}, \"ms\": {\"enabled\": true,"
    " \"webhook_uuid\": \"6f1b9a9e-6a55-4c8e-9d1e-2f0d7b1c9a10\"}}', 'bot')",
    "INSERT INTO integration_logs (enterprise_number, integration_type, event_type, status, duration_ms)"
    " VALUES ('0367', 'bitrix', 'call', 'success', 12)",
    # journaled by an earlier version of the service: linked to their call by migration 0013
    "INSERT INTO integration_logs (enterprise_number, integration_type, event_type, request_data, status)"
    " VALUES ('0367', 'ms', 'event.dial', '{\"unique_id\": \"old-1\", \"phone\": \"+375291234567\"}', 'success')",
    "INSERT INTO integration_logs (enterprise_number, integration_type, event_type, request_data, status)"
    " VALUES ('0367', 'ms', 'ms.phone.call.create', '{\"unique_id\": \"old-1\", \"path\": \"/call\"}', 'success')",
    "INSERT INTO integration_logs (enterprise_number, integration_type, event_type, request_data, status)"
    " VALUES ('0367', 'bitrix', 'call', '{\"unique_id\": \"old-1\"}', 'success')",  # another integration's
    "INSERT INTO integration_logs (enterprise_number, integration_type, event_type, request_data, status)"
    " VALUES ('0367', 'ms', 'admin.login', '{\"address\": \"127.0.0.1\"}', 'success')",
]


def _rows(app):
    with app.app_context():
        out = {}
        for table, order in (("enterprises", "number"), ("integration_logs", "id"), ("alembic_version", "1")):
            rows = db.session.execute(sa.text(f"SELECT * FROM {table} ORDER BY {order}")).all()
            out[table] = [tuple(str(v) for v in r) for r in rows]
        return out


def test_existing_platform_tables_are_left_unchanged(db_url, tmp_path):
    kind = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.begin() as conn:
        for stmt in PLATFORM_DDL[kind] + ROWS:
            conn.execute(sa.text(stmt))
    engine.dispose()
    from msapp import create_app

    app = create_app({"MS_DATABASE_URL": db_url, "MS_INSTANCE_DIR": str(tmp_path / "i"),
                      "MS_LOG_DIR": str(tmp_path / "l"), "MS_WORKERS": "0"})
    before_schema = {t: v for t, v in _inspect(app).items() if t not in OWN_TABLES}
    before_rows = _rows(app)
    from msapp.db.schema import upgrade_database

    upgrade_database(app)
    after = _inspect(app)
    assert {t: v for t, v in after.items() if t not in OWN_TABLES} == before_schema
    assert OWN_TABLES <= set(after)
    assert _rows(app) == before_rows
    # the config written by the old service is found by its webhook uuid after the migration
    with app.app_context():
        found = app.extensions["ms"].configs.find_by_webhook("6f1b9a9e-6a55-4c8e-9d1e-2f0d7b1c9a10")
        assert found and found[0].number == "0367"
        # the old journal's rows of a call are its story (the support desk reads them by ms_call_journal)
        linked = db.session.execute(sa.text("SELECT l.event_type FROM ms_call_journal j JOIN integration_logs l"
                                            " ON l.id = j.log_id WHERE j.enterprise_number = '0367'"
                                            " AND j.unique_id = 'old-1' ORDER BY j.log_id")).scalars().all()
        assert linked == ["event.dial", "ms.phone.call.create"]
    dispose(app)


def test_0016_fills_who_closed_the_tasks_closed_before(db_url, tmp_path):
    """Tasks a call closed before 0016 get the closing extension from their call: the one that answered
    an incoming call, the one that dialled an outgoing one; others stay empty."""
    from flask_migrate import downgrade, upgrade

    app = make_app(db_url, tmp_path)
    directory = app.extensions["migrate"].directory
    with app.app_context():
        downgrade(directory=directory, revision="0015")
        calls = [("in-1", "in", "151", '["150", "151"]'), ("out-1", "out", None, '["152"]')]
        for uid, direction, answered, exts in calls:
            db.session.execute(sa.text(
                "INSERT INTO ms_calls (enterprise_number, unique_id, direction, phone, extensions, answered_extension,"
                " status, call_status, notify, create_attempted, shown, hidden, answer_sent, end_sent, sequence,"
                " customer_checked, customer_attempted, customer_created, order_attempted, task_queued, created_at,"
                " updated_at) VALUES ('0367', :uid, :direction, '+375291000001', :exts, :answered, 'ended', 'answered',"
                " true, true, '[]', '[]', true, true, 0, false, false, false, false, false, :at, :at)"),
                {"uid": uid, "direction": direction, "answered": answered, "exts": exts, "at": "2026-12-01 10:00:00"})
        for n, (reason, by_call) in enumerate([("reached", "in-1"), ("reached", "out-1"), ("person", None)]):
            db.session.execute(sa.text(
                "INSERT INTO ms_tasks (enterprise_number, phone, state, create_attempted, marker, missed, note_added,"
                " created_at, updated_at, closed_at, closed_reason, closed_by_call) VALUES ('0367', :phone, 'closed',"
                " true, :marker, '[]', false, :at, :at, :at, :reason, :by_call)"),
                {"phone": f"+37529100000{n}", "marker": f"m{n}", "at": "2026-12-01 11:00:00", "reason": reason,
                 "by_call": by_call})
        db.session.commit()
        upgrade(directory=directory)
        closed = db.session.execute(sa.text("SELECT closed_by_call, closed_by_ext FROM ms_tasks ORDER BY id")).all()
        db.session.commit()
    assert [tuple(row) for row in closed] == [("in-1", "151"), ("out-1", "152"), (None, None)]
    indexes = _inspect(app)["ms_tasks"][1]
    assert {"ix_ms_tasks_closed_by", "ix_ms_tasks_created"} <= indexes and "ix_ms_tasks_closed" not in indexes
    dispose(app)
