"""rawsql: the hot statements on the driver connection store and read exactly what SQLAlchemy would,
commit and roll back as promised, batch on PostgreSQL, and report a lost database as SQLAlchemy does."""
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import DBAPIError

from msapp.db import compiled, rawsql
from msapp.db.models import Call, IntegrationLog, Job
from msapp.extensions import db
from tests.conftest import dispose, make_app

CALLS, LOGS, JOBS = Call.__table__, IntegrationLog.__table__, Job.__table__
WHEN = datetime(2026, 11, 27, 10, 0, 0)  # microsecond 0: SQLite's text format must still carry .000000


@pytest.fixture
def sqlite_ctx(tmp_path):
    app = make_app(f"sqlite:///{tmp_path / 'ms.db'}", tmp_path)
    with app.app_context():
        yield app
    dispose(app)


@pytest.fixture
def pg_ctx(pg_schema, tmp_path):
    app = make_app(pg_schema.url, tmp_path)
    with app.app_context():
        yield app
    dispose(app)


def new_call(**over):
    values = dict(enterprise_number="0367", unique_id="r-1", direction="in", phone="+375296254070",
                  extensions=["150", "151"], shown=[], hidden=[], status="ringing", notify=True,
                  external_id="r-1", create_attempted=False, answer_sent=False, end_sent=False, sequence=0,
                  customer_checked=False, customer_attempted=False, customer_created=False, order_attempted=False,
                  task_queued=False, start_time=WHEN, created_at=WHEN, updated_at=WHEN)
    values.update(over)
    return values


def test_what_rawsql_writes_the_orm_reads_alike(ctx):
    values = new_call(answered_extension="151")
    with rawsql.transaction() as tx:
        row = tx.first(insert(CALLS).returning(*CALLS.c), values, keys=rawsql.columns_of(values))
    assert row["start_time"] == WHEN and row["extensions"] == ["150", "151"] and row["notify"] is True
    call = db.session.get(Call, row["id"])
    assert (call.start_time, call.extensions, call.notify, call.create_attempted) == (WHEN, ["150", "151"], True, False)
    db.session.commit()
    # and the other way round: an ORM write read back through rawsql
    db.session.add(Call(**new_call(unique_id="r-2", external_id="r-2", extensions=["доб. 7"])))
    db.session.commit()
    with rawsql.transaction(atomic=False) as tx:
        back = tx.first(select(CALLS).where(CALLS.c.unique_id == bindparam("_u")), {"_u": "r-2"})
    assert back["extensions"] == ["доб. 7"] and back["start_time"] == WHEN and back["answer_sent"] is False


def test_cyrillic_json_is_stored_as_text_and_defaults_are_filled(ctx):
    row = {"created_at": WHEN, "enterprise_number": "0367", "event_type": "x", "integration_type": "ms",
           "request_data": {"comment": "Входящий звонок"}, "response_data": None, "status": "success",
           "error_message": None}
    with rawsql.transaction() as tx:
        tx.later(insert(LOGS), row, rawsql.columns_of(row))
    stored = db.session.execute(select(LOGS.c.request_data.cast(db.Text))).scalar_one()
    assert "Входящий звонок" in stored
    db.session.commit()
    # onupdate: an UPDATE that does not name updated_at gets it, as SQLAlchemy would have set it
    with rawsql.transaction() as tx:
        tx.run(insert(CALLS), new_call(), keys=rawsql.columns_of(new_call()))
    with rawsql.transaction() as tx:
        tx.run(update(CALLS).where(CALLS.c.unique_id == bindparam("_u")), {"status": "ended", "_u": "r-1"},
               keys=("status",))
    assert db.session.execute(select(CALLS.c.updated_at)).scalar_one() > WHEN


def test_a_failing_block_commits_nothing(ctx):
    with pytest.raises(RuntimeError):
        with rawsql.transaction() as tx:
            tx.run(insert(CALLS), new_call(), keys=rawsql.columns_of(new_call()))
            tx.later(insert(CALLS), new_call(unique_id="r-9"), keys=rawsql.columns_of(new_call()))
            raise RuntimeError("the caller failed")
    assert db.session.execute(select(CALLS.c.id)).all() == []


def test_later_statements_keep_their_order_and_their_errors(ctx):
    """On PostgreSQL `later` statements share one execute; their order holds, and an error in any of them
    fails the transaction (nothing of it is kept)."""
    with rawsql.transaction() as tx:
        tx.later(insert(CALLS), new_call(), keys=rawsql.columns_of(new_call()))
        tx.later(update(CALLS).where(CALLS.c.unique_id == bindparam("_u")), {"status": "answered", "_u": "r-1"},
                 keys=("status",))
        seen = tx.first(select(CALLS.c.status).where(CALLS.c.unique_id == bindparam("_u")), {"_u": "r-1"})
    assert seen == {"status": "answered"}
    with pytest.raises(DBAPIError):
        with rawsql.transaction() as tx:
            tx.later(insert(CALLS), new_call(unique_id="r-3", external_id="r-3"), keys=rawsql.columns_of(new_call()))
            tx.later(insert(CALLS), new_call(), keys=rawsql.columns_of(new_call()))  # r-1 again: unique key
    db.session.commit()
    assert sorted(u for (u,) in db.session.execute(select(CALLS.c.unique_id))) == ["r-1"]


def test_a_statements_constants_reach_the_database_as_written(ctx):
    """On PostgreSQL a statement's own constants are written into its SQL (only the caller's values are
    bound): a quote, a percent sign or a placeholder's look-alike in a constant, and the caller's values
    around them, must still arrive as they were, alone and in a batch."""
    odd = "it's 100%% %s %(x)s"
    stmt = update(CALLS).where(CALLS.c.unique_id == bindparam("_u"), CALLS.c.status == "ringing") \
        .values(record_url=odd, sequence=CALLS.c.sequence + 1, last_error=bindparam("_why"))
    read = select(CALLS.c.record_url, CALLS.c.last_error, CALLS.c.sequence, CALLS.c.notify) \
        .where(CALLS.c.unique_id == bindparam("_u"), CALLS.c.notify.is_(True))
    with rawsql.held_connection():  # the second time on PostgreSQL: PREPAREd (the server's `$1` and `%`), by EXECUTE
        for unique_id in ("r-1", "r-2"):
            with rawsql.transaction() as tx:
                tx.run(insert(CALLS), new_call(unique_id=unique_id), keys=rawsql.columns_of(new_call()))
                tx.later(stmt, {"_u": unique_id, "_why": "100% %(x)s"})
                row = tx.first(read, {"_u": unique_id})
            assert row == {"record_url": odd, "last_error": "100% %(x)s", "sequence": 1, "notify": True}
    prepared = compiled._STATEMENTS.get(stmt, None, db.engine.dialect)
    if db.engine.dialect.name == "postgresql":
        # the constants ("ringing", 1, the URL) are in the SQL; updated_at is the model's onupdate
        assert prepared.names == ["_why", "updated_at", "_u"]
        with pytest.raises(ValueError, match="constants of the statement"):  # a value that would be ignored
            prepared.parameters({"_u": "r-1", "_why": "x", "status_1": "answered"})


@pytest.mark.parametrize("open_work", ["new object", "flushed write"])
def test_a_transaction_joins_the_session_when_it_has_work_open(ctx, open_work):
    """A worker step that left ORM work open (on SQLite a flushed write holds BEGIN IMMEDIATE: a second
    writer in the thread would wait for itself): the transaction is the session's; both commit together."""
    db.session.add(Call(**new_call()))
    if open_work == "flushed write":
        db.session.flush()
    with rawsql.transaction() as tx:
        tx.later(update(CALLS).where(CALLS.c.unique_id == bindparam("_u")), {"status": "ended", "_u": "r-1"},
                 keys=("status",))
    db.session.rollback()  # nothing left to roll back: both are committed
    assert db.session.execute(select(CALLS.c.status)).scalar_one() == "ended"


def test_a_later_statement_goes_with_the_next_one_or_the_commit_on_both_databases(ctx):
    """`later` waits for the next statement (which sees its write) or the commit, on SQLite as on
    PostgreSQL; a block that raises writes none of it."""
    with rawsql.transaction() as tx:
        tx.later(insert(CALLS), new_call(unique_id="kept"), keys=rawsql.columns_of(new_call()))
        assert tx.first(select(CALLS.c.unique_id).where(CALLS.c.unique_id == "kept")) == {"unique_id": "kept"}
        tx.later(insert(CALLS), new_call(unique_id="at-commit"), keys=rawsql.columns_of(new_call()))
    with pytest.raises(RuntimeError, match="the block failed"):
        with rawsql.transaction() as tx:
            tx.later(insert(CALLS), new_call(unique_id="lost"), keys=rawsql.columns_of(new_call()))
            raise RuntimeError("the block failed")
    assert sorted(db.session.scalars(select(CALLS.c.unique_id))) == ["at-commit", "kept"]


def test_a_transaction_on_a_given_connection_runs_in_autocommit(ctx):
    """The queue's claim runs on a connection it owns: each statement its own transaction."""
    with pytest.raises(ValueError, match="autocommit"):
        with rawsql.transaction(connection=object()):
            pass
    with db.engine.connect() as conn:
        with rawsql.transaction(atomic=False, connection=conn) as tx:
            tx.run(insert(CALLS), new_call(unique_id="own"), keys=rawsql.columns_of(new_call()))
        assert not conn.in_transaction()
    assert db.session.scalars(select(CALLS.c.unique_id)).all() == ["own"]


@pytest.mark.postgres
def test_a_lost_connection_is_a_dbapi_error_and_the_next_transaction_works(pg_ctx):
    with pytest.raises(DBAPIError) as caught:
        with rawsql.transaction() as tx:
            pid = tx.first(select(db.func.pg_backend_pid().label("pid")))["pid"]
            with db.engine.connect() as other:
                other.execute(select(db.func.pg_terminate_backend(pid)))
            tx.first(select(CALLS.c.id))
    assert caught.value.connection_invalidated
    with rawsql.transaction() as tx:  # the pool replaced the dead connection
        assert tx.first(select(db.func.count().label("n")).select_from(JOBS)) == {"n": 0}


def test_pinned_transactions_share_one_connection_and_give_it_back(ctx):
    """A job's transactions (`pinned`) run on one pooled connection, each committed on its own; one begun
    inside another gets its own connection; at the end of the block the connection is back in the pool."""
    pool = db.engine.pool
    with rawsql.held_connection():
        with rawsql.transaction() as first:
            first.run(insert(CALLS), new_call(), keys=rawsql.columns_of(new_call()))
            with rawsql.transaction(atomic=False) as inner:
                assert inner.dbapi is not first.dbapi
                assert inner.first(select(db.func.count().label("n")).select_from(CALLS)) == {"n": 0}
        with rawsql.transaction(atomic=False) as second:
            assert second.dbapi is first.dbapi
            assert second.first(select(db.func.count().label("n")).select_from(CALLS)) == {"n": 1}
        assert pool.checkedout() == 1
    assert pool.checkedout() == 0
    with pytest.raises(RuntimeError):  # a failure rolls back its transaction and keeps the connection usable
        with rawsql.held_connection():
            with rawsql.transaction() as tx:
                tx.run(insert(CALLS), new_call(unique_id="r-2", external_id="r-2"),
                       keys=rawsql.columns_of(new_call()))
                raise RuntimeError("the step failed")
    assert pool.checkedout() == 0
    assert db.session.execute(select(CALLS.c.unique_id)).scalars().all() == ["r-1"]


@pytest.mark.postgres
def test_a_pinned_connection_lost_is_replaced_at_the_next_transaction(pg_ctx):
    with rawsql.held_connection():
        with pytest.raises(DBAPIError):
            with rawsql.transaction() as tx:
                pid = tx.first(select(db.func.pg_backend_pid().label("pid")))["pid"]
                with db.engine.connect() as other:
                    other.execute(select(db.func.pg_terminate_backend(pid)))
                tx.first(select(CALLS.c.id))
        with rawsql.transaction(atomic=False) as tx:
            assert tx.first(select(db.func.pg_backend_pid().label("pid")))["pid"] != pid
    assert db.engine.pool.checkedout() == 0


@given(st.one_of(st.none(), st.datetimes(), st.datetimes(timezones=st.just(UTC)), st.dates()))
def test_sqlite_timestamps_are_written_as_sqlalchemy_writes_them(value):
    """rawsql writes a naive datetime with `isoformat` on SQLite; SQLite compares timestamps as text, so it
    must be SQLAlchemy's text to the character (the ORM's rows and rawsql's meet in one column)."""
    from sqlalchemy import DateTime
    from sqlalchemy.dialects import sqlite

    dialect = sqlite.dialect()
    impl = DateTime().dialect_impl(dialect)
    assert compiled.bind_processor(impl, dialect)(value) == impl.bind_processor(dialect)(value)


def _prepared_here(tx) -> set:
    cursor = tx.dbapi.cursor()
    cursor.execute("SELECT name FROM pg_prepared_statements")
    names = {name for (name,) in cursor.fetchall()}
    cursor.close()
    return names


@pytest.mark.postgres
def test_postgresql_prepares_each_statement_once_per_connection(pg_ctx, monkeypatch):
    """The server parsed and planned every statement at every execution (half its CPU per PBX event): a
    statement is PREPAREd on a connection at the next idle moment after its first use, then run by
    EXECUTE, reading and writing as before, in the transaction's same round trips."""
    sent, real = [], rawsql.Tx._send
    monkeypatch.setattr(rawsql.Tx, "_send", lambda self, sql, params: sent.append(sql) or real(self, sql, params))
    stmt = insert(CALLS).returning(CALLS.c.id, CALLS.c.extensions, CALLS.c.start_time)
    journal = insert(LOGS)
    rows = []
    with rawsql.held_connection():
        for unique_id in ("p-1", "p-2", "p-3"):
            with rawsql.transaction() as tx:
                rows.append(tx.first(stmt, new_call(unique_id=unique_id, external_id=unique_id),
                                     keys=rawsql.columns_of(new_call())))
                tx.later(journal, {"event_type": "x", "request_data": {"доб": ["150"]}}, ("event_type", "request_data"))
                names = _prepared_here(tx)
    first = compiled._STATEMENTS.get(stmt, rawsql.columns_of(new_call()), db.engine.dialect)
    log_row = compiled._STATEMENTS.get(journal, ("event_type", "request_data"), db.engine.dialect)
    assert {first.name, log_row.name} <= names
    assert sent[0].startswith("INSERT INTO ms_calls") and "INSERT INTO integration_logs" in sent[1]
    assert sent[2] == first.execute and sent[3] == f"{log_row.execute};\nCOMMIT"
    assert sent[4:] == sent[2:4] and len(sent) == 6  # the third: the same two round trips, nothing PREPAREd again
    assert [r["extensions"] for r in rows] == [["150", "151"]] * 3 and {r["start_time"] for r in rows} == {WHEN}
    assert compiled.expanded(sent[3]) == f"{log_row.sql};\nCOMMIT"
    assert db.session.execute(select(LOGS.c.request_data)).scalars().all() == [{"доб": ["150"]}] * 3


@pytest.mark.postgres
def test_a_statement_the_server_cannot_prepare_runs_as_plain_sql(pg_ctx):
    """`$1 IS NULL` has no type the server could give `$1`: refused once, it still runs, as plain SQL."""
    from sqlalchemy import String

    stmt = select(bindparam("x", type_=String).is_(None).label("x"))
    with rawsql.held_connection():
        for _ in range(3):
            with rawsql.transaction(atomic=False) as tx:
                assert tx.first(stmt, {"x": "a'b"}) == {"x": False}
    name = compiled._STATEMENTS.get(stmt, None, db.engine.dialect).name
    assert name in compiled._STATEMENTS.refused and name not in compiled._STATEMENTS.server


@pytest.mark.postgres
def test_a_prepared_statement_gone_fails_once_and_is_prepared_again(pg_ctx):
    """A statement DEALLOCATEd behind rawsql's back (a pooler that shares server connections does that):
    the transaction that meets it fails as with a lost connection (a 503: try again), the connection is
    replaced, and on the new one the statement is PREPAREd again."""
    stmt = select(db.func.count(CALLS.c.id).label("n")).where(CALLS.c.unique_id == bindparam("_u"))
    with rawsql.held_connection():
        for _ in range(2):
            with rawsql.transaction(atomic=False) as tx:
                tx.first(stmt, {"_u": "x"})
        with rawsql.transaction(atomic=False) as tx:
            assert compiled._STATEMENTS.get(stmt, None, db.engine.dialect).name in _prepared_here(tx)
            tx.dbapi.cursor().execute("DEALLOCATE ALL")
        with pytest.raises(DBAPIError, match="does not exist") as caught:
            with rawsql.transaction(atomic=False) as tx:
                tx.first(stmt, {"_u": "x"})
        assert "FROM ms_calls" in caught.value.statement  # the statement, not its EXECUTE
        assert caught.value.connection_invalidated
        with rawsql.transaction(atomic=False) as tx:
            assert tx.first(stmt, {"_u": "x"}) == {"n": 0}
            assert compiled._STATEMENTS.get(stmt, None, db.engine.dialect).name in _prepared_here(tx)


@pytest.mark.postgres
def test_ms_pg_prepare_0_prepares_nothing(pg_schema, tmp_path, monkeypatch):
    """Behind a pooler in transaction mode (PgBouncer) a session's prepared statements are not there:
    MS_PG_PREPARE=0 runs every statement as plain SQL."""
    app = make_app(pg_schema.url, tmp_path, MS_PG_PREPARE="0")
    sent, real = [], rawsql.Tx._send
    monkeypatch.setattr(rawsql.Tx, "_send", lambda self, sql, params: sent.append(sql) or real(self, sql, params))
    try:
        with app.app_context(), rawsql.held_connection():
            for _ in range(3):
                with rawsql.transaction(atomic=False) as tx:
                    assert tx.first(select(db.func.count(JOBS.c.id).label("n"))) == {"n": 0}
            assert not _prepared_here(tx) and not [sql for sql in sent if "EXECUTE" in sql]
    finally:
        dispose(app)


def test_a_journal_value_is_written_as_the_scan_encoded_it(ctx):
    """A journal value with nothing to mask reaches its JSON column as the text redaction's scan wrote
    (not encoded a second time), and reads back as it was; one with a secret is masked and encoded."""
    from msapp import redact
    from msapp.services import exchange_log

    request = {"body": {"name": "Иван", "phones": ["+375 29 625-40-70"], "n": 1.5, "ok": True, "none": None}}
    response = {"status": 200, "headers": {"Lognex-Phone-Auth-Token": "k" * 40}}
    assert isinstance(redact.redact_for_json(request), redact.JsonText)
    with rawsql.transaction() as tx:
        exchange_log.add("0367", "ms.phone.call.create", request, response, tx=tx)
    row = db.session.execute(select(LOGS.c.request_data, LOGS.c.response_data)).one()
    assert row.request_data == request
    assert row.response_data == {"status": 200, "headers": {"Lognex-Phone-Auth-Token": redact.MASK}}
