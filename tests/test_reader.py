"""db/reader.py: a reader's transaction on SQLite takes no writer lock and cannot write; the support
desk, the journal, the panel, the analytics and the admin door's check read that way, so the event
path's writers never queue behind the admin (docs/design.md 2)."""
import threading
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from msapp.clock import utcnow
from msapp.db.models import Call, Enterprise
from msapp.db.reader import read_only
from msapp.db.sqlite_lock import WRITE_LOCK
from msapp.extensions import db
from msapp.services.analytics import Analytics, period_from
from tests.conftest import ADMIN_TOKEN, dispose, make_app


@pytest.fixture
def enterprise(ctx):
    db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    return ctx


@pytest.fixture
def on_sqlite(tmp_path):
    """The writer lock is SQLite's (PostgreSQL's readers never wait for writers)."""
    app = make_app(f"sqlite:///{tmp_path / 'ms.db'}", tmp_path)
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
        db.session.commit()
        yield app
    dispose(app)


def while_a_writer_holds_the_lock(app, read, name: str = "the read") -> object:
    """Run `read()` in another thread while this one holds the process's writer lock; its result, or a
    failure when it waited for the lock (10 s)."""
    out = {}

    def run():
        with app.app_context():
            try:
                out["value"] = read()
            except Exception as exc:  # noqa: BLE001 - handed to the test
                out["error"] = exc

    with WRITE_LOCK:
        reader = threading.Thread(target=run, daemon=True)
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), f"{name} waited for the writer lock"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_reader_reads_while_a_writer_holds_the_lock(on_sqlite):
    def read():
        read_only()
        return db.session.scalar(text("SELECT name FROM enterprises WHERE number = '0367'"))

    assert while_a_writer_holds_the_lock(on_sqlite, read) == "Co"


def test_a_write_in_a_readers_transaction_fails_every_time_and_the_connection_writes_after(on_sqlite):
    read_only()
    db.session.scalar(text("SELECT count(*) FROM enterprises"))
    with pytest.raises(OperationalError, match="readonly"):
        db.session.execute(text("UPDATE enterprises SET name = 'X'"))
    db.session.rollback()
    db.session.execute(text("UPDATE enterprises SET name = 'Y'"))  # the same pooled connection, a writer again
    db.session.commit()
    assert db.session.scalar(text("SELECT name FROM enterprises")) == "Y"
    db.session.commit()


def test_a_reader_joins_a_transaction_already_open_as_it_is(enterprise):
    db.session.execute(text("UPDATE enterprises SET name = 'Z'"))
    read_only()  # the writer's transaction goes on: its write and the next are one
    db.session.execute(text("UPDATE enterprises SET name = name || '1'"))
    db.session.commit()
    assert db.session.scalar(text("SELECT name FROM enterprises")) == "Z1"
    db.session.commit()


def test_a_reader_on_postgresql_is_a_plain_transaction(enterprise, db_url):
    read_only()
    assert db.session.scalar(text("SELECT name FROM enterprises")) == "Co"
    db.session.commit()


def test_the_desk_the_journal_the_panel_and_the_analytics_read_without_the_lock(on_sqlite):
    state = on_sqlite.extensions["ms"]
    zone = ZoneInfo("Europe/Minsk")
    reads = {
        "search": lambda: state.support.search("0367")["total"],
        "timeline": lambda: _missing_call(state),
        "journal": lambda: state.admin.journal("0367", status="problems")["total"],
        "panel": lambda: state.admin.panel("0367")["calls_today"],
        "analytics": lambda: Analytics().report("0367", period_from({"period": "7d"}, zone, utcnow()))["enterprise"],
    }
    for name, read in reads.items():
        assert while_a_writer_holds_the_lock(on_sqlite, read, name) is not None


def _missing_call(state):
    from msapp.errors import ApiError

    with pytest.raises(ApiError):
        state.support.timeline("0367", "no-such-call")
    return "404"


PAGES = ("/ms-admin/api/calls/0367", "/ms-admin/api/calls/0367/r-1", "/ms-admin/calls?enterprise_number=0367",
         "/ms-admin/calls/0367/r-1", "/ms-admin/journal?enterprise_number=0367",
         "/ms-admin/analytics?enterprise_number=0367", "/ms-admin/api/analytics/0367?period=7d")


def test_the_desks_pages_and_api_answer_while_a_writer_holds_the_lock(on_sqlite):
    db.session.execute(Call.__table__.insert(), [{
        "enterprise_number": "0367", "unique_id": "r-1", "direction": "in", "phone": "+375296254070",
        "extensions": ["150"], "status": "ended", "call_status": "answered", "start_time": utcnow(),
        "created_at": utcnow(), "updated_at": utcnow()}])
    db.session.commit()
    client = on_sqlite.test_client()
    for path in PAGES:
        status = while_a_writer_holds_the_lock(
            on_sqlite, lambda path=path: client.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code,
            path)
        assert status == 200, path


def test_readyz_and_metrics_answer_while_a_writer_holds_the_lock(on_sqlite):
    """Probes poll them while the event path runs: the queue's figures are a reader's."""
    on_sqlite.extensions["ms"].queue.enqueue("test", "k", {})
    db.session.commit()
    client = on_sqlite.test_client()
    body = while_a_writer_holds_the_lock(on_sqlite, lambda: client.get("/readyz").get_json(), "/readyz")
    assert body["database"] == "ok" and body["depth"] == 1
    page = while_a_writer_holds_the_lock(on_sqlite, lambda: client.get("/metrics").get_data(as_text=True), "/metrics")
    assert "ms_queue_depth 1.0" in page
