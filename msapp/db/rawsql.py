"""Hot-path statements run straight on the driver connection.

SQLAlchemy's execution of one statement (execution context, parameter processing, result wrapping)
costs about 100-150 µs of CPU; the driver's own `cursor.execute` about 10-20 µs. On the paths every PBX
event takes (the event's transaction, a job's claim, progress and finish) that difference was most of
the service's CPU per event (docs/benchmarks.md). Here only that per-statement machinery is skipped:

- the SQL is still SQLAlchemy's, compiled once per statement (and per set of columns written) from the
  models, for the engine's dialect;
- values are converted by SQLAlchemy's own type processors for that dialect (JSON is serialized by the
  engine's serializer; SQLite's naive datetimes are written by `isoformat`, SQLAlchemy's very text at a
  fifth of the cost), rows are converted back by them, and Python-side column defaults (`default=`,
  `onupdate=`) are filled in as SQLAlchemy would;
- on PostgreSQL a statement's own constants are written into its SQL when it is prepared, and the
  caller's values are bound by position (psycopg2 binds on the client, 1-2 µs per parameter);
- on PostgreSQL each statement is also PREPAREd once per connection (`ready()`, at the idle moments a
  transaction or a claim begins) and then run by `EXECUTE name(values)`: the server parsed and planned
  every statement on every execution, a quarter of its CPU per PBX event (docs/benchmarks.md);
- transactions: `transaction()` is one of its own on a pooled connection (BEGIN IMMEDIATE on SQLite,
  queued on the process's writer lock like every writer); `write()` joins the session's transaction
  when the thread's session has one open; `session_tx()` / `Tx.of()` run inside a session's or a
  Connection's transaction, which its owner commits;
- on PostgreSQL, statements whose result nobody reads (`Tx.later`) go to the server together with the
  next statement or the commit: one round trip for several;
- driver errors are re-raised as SQLAlchemy's `DBAPIError`, and a lost connection is invalidated, so
  error handling (the 503 when the database is down, the pool's reconnect) works as before.

Never mix it with the ORM on one row in one transaction: the session does not see what ran here.
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
from contextlib import contextmanager
from datetime import datetime
from typing import Optional

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite

from msapp.extensions import db

_PYFORMAT = re.compile(r"%\((\w+)\)s")
log = logging.getLogger("msapp.rawsql")
PREPARED = "ms_prepared"  # a pooled PostgreSQL connection's info: names PREPAREd on it (absent: never prepare)


class Prepared:
    """One statement compiled for one dialect: its SQL, how to bind values, how to read rows."""

    def __init__(self, stmt, dialect, column_keys: Optional[list] = None):
        compiled = stmt.compile(dialect=dialect, column_keys=column_keys)
        self.sql = compiled.string
        constants: dict = {}
        # PostgreSQL: the statement as the server keeps it (`name`, `prepare`) and how it is then run
        self.name = self.prepare = self.execute = None
        if compiled.positional:
            self.names = list(compiled.positiontup)
        else:  # psycopg2's pyformat: its constants written into the SQL, the rest sent as `%s` from a tuple
            constants = _constants(compiled, dialect)
            self.sql = _PYFORMAT.sub(lambda m: constants.get(m.group(1), "%s"), self.sql)
            self.names = [name for name in _PYFORMAT.findall(compiled.string) if name not in constants]
            self.name = "ms_" + hashlib.blake2b(self.sql.encode(), digest_size=10).hexdigest()
            self.prepare = f"PREPARE {self.name} AS {_numbered(self.sql)}"
            self.execute = f"EXECUTE {self.name}" + (f"({', '.join(['%s'] * len(self.names))})" if self.names else "")
        self.constants = frozenset(constants)
        # what is bound per execution (the constants above are not: nothing to default or convert)
        self.defaults = {k: v for k, v in compiled.construct_params(_check=False).items() if k not in constants}
        self.binds = {}
        for name, bind in compiled.binds.items():  # by compiled name: `status_1` for a constant
            if name in constants:
                continue
            proc = bind_processor(bind.type.dialect_impl(dialect), dialect)
            if proc is not None:
                self.binds[name] = proc
        # columns whose Python-side default SQLAlchemy would compute before executing (utcnow, False, ...)
        self.prefetch = [(col.key, col.default) for col in compiled.insert_prefetch]
        self.prefetch += [(col.key, col.onupdate) for col in compiled.update_prefetch]
        self.columns = [entry[0] for entry in compiled._result_columns]
        self.readers = [entry[3].dialect_impl(dialect).result_processor(dialect, None)
                        for entry in compiled._result_columns]
        self._renamed: dict = {}

    def parameters(self, values: dict):
        if self.constants and not self.constants.isdisjoint(values):  # it would be ignored: say so
            raise ValueError(f"values for constants of the statement: {sorted(self.constants & set(values))}")
        params = {**self.defaults, **values}
        for key, default in self.prefetch:
            if key not in values:
                params[key] = default.arg if default.is_scalar else default.arg(None)
        for key, proc in self.binds.items():
            if key in params:
                params[key] = proc(params[key])
        return tuple(params[name] for name in self.names)

    def row(self, raw: tuple) -> dict:
        return {name: (value if read is None or value is None else read(value))
                for name, read, value in zip(self.columns, self.readers, raw)}


def _numbered(sql: str) -> str:
    """psycopg2's SQL (`%s` a value, `%%` a percent sign) as the server's: `$1`, `$2`, ... and `%`."""
    count = 0

    def number(match) -> str:
        nonlocal count
        if match.group() == "%%":
            return "%"
        count += 1
        return f"${count}"

    return re.sub(r"%%|%s", number, sql)


def _constants(compiled, dialect) -> dict:
    """The SQL literal of each bind parameter that is a constant of the statement (`status == "pending"`,
    `attempts + 1`, `.values(status="running")`: SQLAlchemy's anonymous parameters, which no caller can
    name) and whose type can be written as one. psycopg2 binds client-side, 1-2 µs per parameter: most
    of a claim's cost of sending was its constants."""
    found = {}
    for name, bind in compiled.binds.items():
        if not bind.unique or bind.callable is not None or bind.value is None or bind.expanding:
            continue
        write = bind.type.dialect_impl(dialect).literal_processor(dialect)
        if write is not None and isinstance(bind.value, (str, int)):  # bool is an int
            found[name] = write(bind.value)
    return found


def bind_processor(impl, dialect):
    """The type's bind processor for the dialect; on SQLite, a naive datetime written by `isoformat`: the
    same text as SQLAlchemy's storage format (`YYYY-MM-DD HH:MM:SS.ffffff`), which it %-formats from a dict
    at five times the cost, and a dozen timestamps go with every event."""
    slow = impl.bind_processor(dialect)
    if dialect.name != "sqlite" or not isinstance(impl, sqlite.DATETIME) or \
            impl._storage_format != sqlite.DATETIME._storage_format:
        return slow

    def fast(value):
        if type(value) is datetime and value.tzinfo is None:
            return value.isoformat(" ", "microseconds")
        return slow(value)  # a date, an aware datetime, None, or what it refuses

    return fast


class Statements:
    """Prepared statements by statement, dialect and set of columns written (every engine of one
    dialect here comes from create_app, with the same JSON serializer)."""

    def __init__(self):
        self._prepared: dict = {}
        self._lock = threading.Lock()
        self.server: dict = {}  # PostgreSQL: PREPARE text by name, of every statement the server can keep
        self.refused: set = set()  # names the server would not PREPARE (run as plain SQL)
        self.texts: dict = {}  # the SQL of each name, for `expanded`

    def get(self, stmt, keys: Optional[tuple], dialect) -> Prepared:
        cache_key = (id(stmt), dialect.name, keys)
        found = self._prepared.get(cache_key)
        if found is None:
            found = Prepared(stmt, dialect, list(keys) if keys is not None else None)
            with self._lock:
                self._prepared[cache_key] = (found, stmt)  # holding stmt keeps its id() unique
                if found.name is not None and found.name not in self.refused:
                    self.server[found.name] = found.prepare
                    self.texts[found.name] = found.sql
        else:
            found = found[0]
        return found

    def to_prepare(self) -> list:
        with self._lock:
            return list(self.server.items())

    def refuse(self, name: str, exc: Exception) -> None:
        with self._lock:
            self.refused.add(name)
            text = self.server.pop(name, None)
        log.warning("statement %s not prepared, run as plain SQL: %s (%s)", name, str(exc).strip(), text)


_STATEMENTS = Statements()
_EXECUTE = re.compile(r"EXECUTE (ms_[0-9a-f]+)(\(.*?\))?(?=;|$)", re.S)


def prepare_on(engine) -> None:
    """PostgreSQL: statements run on `engine`'s connections are PREPAREd on each (`Tx.ready`)."""
    event.listen(engine, "connect", _new_connection)


def prepares(engine) -> bool:
    return event.contains(engine, "connect", _new_connection)


def _new_connection(_dbapi_conn, record) -> None:
    record.info[PREPARED] = set()  # nothing PREPAREd on it yet


def expanded(sql: str) -> str:
    """`sql` as sent, each `EXECUTE name(...)` written as the statement it runs (errors, tests)."""
    return _EXECUTE.sub(lambda m: _STATEMENTS.texts.get(m.group(1), m.group()), sql)


class Tx:
    """Statements on one driver connection: the session's (its transaction) or a pooled one (`transaction`)."""

    def __init__(self, dbapi, dialect, on_lost=None, explicit: bool = False, prepared: Optional[set] = None):
        self.dbapi = dbapi
        self.dialect = dialect
        self._on_lost = on_lost
        self.prepared = prepared  # PostgreSQL: the names PREPAREd on this connection (None: never here)
        self._batch = dialect.name == "postgresql"  # SQLite runs in-process: nothing to save by waiting
        self._pending: list = []
        # PostgreSQL on a connection in autocommit (`transaction`): psycopg2 would send BEGIN in a round
        # trip of its own before the first statement and COMMIT in another; here BEGIN rides with the
        # first statement and COMMIT with the last batch.
        self.explicit = explicit
        self.begun = False

    @classmethod
    def of(cls, connection) -> Tx:
        """The driver connection under a SQLAlchemy Connection, in its transaction (begun here if it has
        none, so that the caller's `connection.commit()` commits what ran here)."""
        if not connection.in_transaction():
            connection.begin()
        fairy = connection.connection
        return cls(fairy.dbapi_connection, connection.dialect, connection.invalidate,
                   prepared=fairy.info.get(PREPARED))

    def ready(self) -> None:
        """PREPARE on this connection the statements it does not have yet. Only on an idle connection in
        autocommit (a transaction's or a claim's start): each is a round trip of its own, once per
        connection and statement, so a failure aborts no transaction and leaves nothing half known."""
        known = self.prepared
        if known is None or len(known) >= len(_STATEMENTS.server):
            return
        for name, text in _STATEMENTS.to_prepare():
            if name in known:
                continue
            cursor = self.dbapi.cursor()
            try:
                cursor.execute(text)
                known.add(name)
            except self.dialect.loaded_dbapi.Error as exc:
                code = getattr(exc, "pgcode", None) or ""
                if code == "42P05":  # duplicate_prepared_statement: it is here already
                    known.add(name)
                elif self.dialect.is_disconnect(exc, self.dbapi, cursor):
                    if self._on_lost is not None:
                        self._on_lost(exc)
                    raise _wrap(exc, self.dialect, text, None, True) from exc
                elif code.startswith("42"):  # the server cannot keep this one (e.g. a value of no known type)
                    _STATEMENTS.refuse(name, exc)
                # anything else (a timeout, ...): plain SQL this time, tried again at the next idle moment
            finally:
                cursor.close()

    def _text(self, prepared: Prepared) -> str:
        known = self.prepared
        return prepared.execute if known is not None and prepared.name in known else prepared.sql

    def _cursor(self, stmt, values: Optional[dict], keys: Optional[tuple]):
        prepared = _STATEMENTS.get(stmt, keys, self.dialect)
        params = prepared.parameters(values or {})
        if self._pending:  # the kept statements first, in the same round trip; the cursor shows this one
            self._pending.append((self._text(prepared), params))
            return self._send(*self._joined()), prepared
        return self._send(self._text(prepared), params), prepared

    def _send(self, sql: str, params):
        if self.explicit and not self.begun:
            sql, self.begun = "BEGIN;\n" + sql, True
        cursor = self.dbapi.cursor()
        try:
            cursor.execute(sql, params)
        except self.dialect.loaded_dbapi.Error as exc:
            lost = self.dialect.is_disconnect(exc, self.dbapi, cursor)
            cursor.close()
            if self.prepared is not None and getattr(exc, "pgcode", None) == "26000":
                # a statement PREPAREd here is gone (DEALLOCATE; a pooler handing us another server
                # connection): this connection is not what we know of it, so it is dropped, as a lost one
                log.warning("a prepared statement is gone from its connection (a pooler in transaction mode? "
                            "set MS_PG_PREPARE=0): the connection is replaced")
                lost = True
            if lost and self._on_lost is not None:
                self._on_lost(exc)
            raise _wrap(exc, self.dialect, expanded(sql), params, lost) from exc
        return cursor

    def later(self, stmt, values: Optional[dict] = None, keys: Optional[tuple] = None) -> None:
        """Run DML whose result nobody reads. PostgreSQL: it waits and goes to the server together with
        the next statement or the commit (one round trip for several); SQLite: at once."""
        if not self._batch:
            self.run(stmt, values, keys)
            return
        prepared = _STATEMENTS.get(stmt, keys, self.dialect)
        self._pending.append((self._text(prepared), prepared.parameters(values or {})))

    def send_pending(self) -> None:
        """Send the statements `later` kept, as one multi-statement execute (psycopg2 binds client-side:
        their positional parameters, one after the other)."""
        if self._pending:
            self._send(*self._joined()).close()

    def commit(self) -> None:
        """Explicit mode: the statements still kept and COMMIT, in one round trip."""
        if self._pending:
            sql, params = self._joined()
            self._send(sql + ";\nCOMMIT", params).close()
        elif self.begun:
            self._send("COMMIT", None).close()
        self.begun = False

    def _joined(self) -> tuple:
        items, self._pending = self._pending, []
        if len(items) == 1:
            return items[0]
        return ";\n".join(sql for sql, _ in items), sum((values for _, values in items), ())

    def first(self, stmt, values: Optional[dict] = None, keys: Optional[tuple] = None) -> Optional[dict]:
        """The first row of `stmt` (a SELECT, or DML with RETURNING) as a dict, or None."""
        cursor, prepared = self._cursor(stmt, values, keys)
        try:
            raw = cursor.fetchone()
        finally:
            cursor.close()
        return None if raw is None else prepared.row(raw)

    def run(self, stmt, values: Optional[dict] = None, keys: Optional[tuple] = None) -> int:
        """Run DML without RETURNING; the number of rows it touched."""
        cursor, _ = self._cursor(stmt, values, keys)
        try:
            return cursor.rowcount
        finally:
            cursor.close()

    def execute(self, stmt, values: dict) -> None:
        """`Connection.execute(stmt, values)` for an INSERT/UPDATE whose columns are the keys of `values`
        (a journal row: nobody reads its result, so it goes `later`)."""
        self.later(stmt, values, columns_of(values))


def session_tx() -> Tx:
    """The session's current transaction (begun if needed; the session commits it)."""
    return Tx.of(db.session.connection())


def _wrap(exc: Exception, dialect, sql: Optional[str] = None, params=None, lost: bool = False):
    return sa_exc.DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost,
                                      dialect=dialect)


@contextmanager
def transaction(write: bool = True):
    """A transaction of its own on a pooled driver connection, without the session: committed at the end
    of the block, rolled back if it raises. SQLite: BEGIN IMMEDIATE (queued on the process's writer lock,
    as every writer). PostgreSQL: the connection in autocommit, BEGIN sent with the first statement and
    COMMIT with the last batch (psycopg2 would spend a round trip on each). `write=False`: no BEGIN
    (each statement is its own read)."""
    engine = db.engine
    dialect = engine.dialect
    if write and dialect.name == "sqlite" and db.session.registry.has() and db.session().in_transaction():
        # the session's own BEGIN IMMEDIATE would make this one wait for the busy timeout (30 s); a read
        # (no BEGIN) does not wait for a writer under WAL
        raise RuntimeError("rawsql.transaction() while this thread's session holds a SQLite transaction")
    pin = getattr(_pinned, "on", False) and not getattr(_pinned, "busy", False)  # nested: a connection of its own
    fairy = getattr(_pinned, "fairy", None) if pin else None
    if fairy is not None and fairy.dbapi_connection is None:  # invalidated by an earlier failure: a new one
        _unpin()
        fairy = None
    if fairy is None:
        try:
            fairy = engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:  # the database is down: as SQLAlchemy's own connect says it
            raise _wrap(exc, dialect, lost=True) from exc
        if pin:
            _pinned.fairy = fairy
    explicit = dialect.name == "postgresql"
    if explicit:
        fairy.dbapi_connection.autocommit = True  # client-side only: the connection is idle
    tx = Tx(fairy.dbapi_connection, dialect, fairy.invalidate, explicit=explicit and write,
            prepared=fairy.info.get(PREPARED))
    if pin:
        _pinned.busy = True
    try:
        tx.ready()
        if write and dialect.name == "sqlite":
            fairy.dbapi_connection.begin_immediate()
        yield tx
        if tx.explicit:
            tx.commit()
        else:  # SQLite; or a PostgreSQL read, each statement its own (autocommit)
            tx.send_pending()
            fairy.commit()
    except dialect.loaded_dbapi.Error as exc:  # BEGIN or COMMIT failed
        lost = dialect.is_disconnect(exc, fairy.dbapi_connection, None)
        _rollback(fairy, tx, exc if lost else None)
        raise _wrap(exc, dialect, "COMMIT", lost=lost) from exc
    except BaseException:
        _rollback(fairy, tx, None)
        raise
    finally:
        if explicit and fairy.dbapi_connection is not None:
            fairy.dbapi_connection.autocommit = False
        if pin:
            _pinned.busy = False
        else:
            fairy.close()  # back to the pool (or, invalidated, replaced by it)


_pinned = threading.local()


@contextmanager
def pinned():
    """Within the block every `transaction()` of this thread runs on one pooled connection, checked out
    at its first use and returned at the end (a job's read, guards and outcome were a checkout and a
    check-in each: a tenth of a worker's CPU). Between transactions the connection is idle (no
    transaction open); a transaction begun inside another gets a connection of its own."""
    _pinned.on = True
    try:
        yield
    finally:
        _pinned.on = False
        _unpin()


def _unpin() -> None:
    fairy, _pinned.fairy = getattr(_pinned, "fairy", None), None
    if fairy is not None:
        fairy.close()


def _rollback(fairy, tx: Tx, lost: Optional[Exception]) -> None:
    if fairy.dbapi_connection is None:  # invalidated already: a statement found the connection lost
        return
    if lost is not None:
        fairy.invalidate(lost)
        return
    try:
        if tx.begun:  # explicit mode: psycopg2 in autocommit knows of no transaction to roll back
            cursor = fairy.dbapi_connection.cursor()
            cursor.execute("ROLLBACK")
            cursor.close()
            tx.begun = False
        else:
            fairy.rollback()
    except Exception as exc:  # noqa: BLE001 - the connection is gone: drop it, the pool opens another
        fairy.invalidate(exc)


@contextmanager
def write():
    """Where a worker writes: the session's transaction if this thread's session has one open or changes
    waiting to be flushed (its work then commits together with these writes, after it), else a
    transaction of its own (`transaction`)."""
    session = db.session()
    if not (session.in_transaction() or session.new or session.dirty or session.deleted):
        with transaction() as tx:
            yield tx
        return
    try:
        session.flush()  # the session's changes first: ours may depend on them (and it on ours, never)
        tx = session_tx()
        yield tx
        tx.send_pending()
        session.commit()
    except BaseException:
        session.rollback()
        raise


def columns_of(values: dict) -> tuple:
    """The `keys` argument for values written by name: a stable order."""
    return tuple(sorted(values))
