"""Hot-path statements (an event's transaction, a job's claim, progress and finish) run on the driver
connection, through public APIs only: SQLAlchemy compiles each statement once per dialect and set of
columns written (db/compiled.py); this module binds the values and runs it. What it skips is
SQLAlchemy's per-execution machinery, most of an event's CPU (docs/benchmarks.md).

One way to open a transaction: `transaction()`. It joins this thread's session when the session has
work open (so ORM changes and these statements commit together), runs on a connection the caller owns
when given one, and otherwise takes a pooled connection (the thread's held one inside
`held_connection()`, which opens no transaction itself).

- PostgreSQL: a statement's constants are written into its SQL and the caller's values bound by
  position; each statement is PREPAREd once per connection at an idle moment (`Tx.ready`) and run by
  `EXECUTE` (`MS_PG_PREPARE=0` turns that off behind a pooler in transaction mode); statements whose
  result nobody reads (`Tx.later`) go to the server with the next statement or the commit.
- SQLite: writers queue on the process's writer lock (BEGIN IMMEDIATE); `later` statements wait for the
  next statement or the commit there too, so a forgotten flush fails on both databases alike.
- Driver errors are re-raised as SQLAlchemy's `DBAPIError`, and a lost connection is invalidated, so
  the 503 when the database is down and the pool's reconnect work as for any statement.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Optional

from sqlalchemy import exc as sa_exc

from msapp.db.compiled import _STATEMENTS, PREPARED, Prepared, expanded
from msapp.extensions import db

log = logging.getLogger("msapp.rawsql")


class Tx:
    """Statements on one driver connection: the session's (its transaction) or a pooled one (`transaction`)."""

    def __init__(self, dbapi, dialect, on_lost=None, explicit: bool = False, prepared: Optional[set] = None):
        self.dbapi = dbapi
        self.dialect = dialect
        self._on_lost = on_lost
        self.prepared = prepared  # PostgreSQL: the names PREPAREd on this connection (None: never here)
        self._batch = dialect.name == "postgresql"  # kept statements share one round trip
        self._pending: list = []
        # PostgreSQL on a connection in autocommit (`transaction`): psycopg2 would send BEGIN in a round
        # trip of its own before the first statement and COMMIT in another; here BEGIN rides with the
        # first statement and COMMIT with the last batch.
        self.explicit = explicit
        self.begun = False

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
        if self._pending and self._batch:  # the kept statements first, in the same round trip
            self._pending.append((self._text(prepared), params))
            return self._send(*self._joined()), prepared
        self.send_pending()
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
        """Run DML whose result nobody reads: it waits and goes with the next statement or the commit (on
        PostgreSQL in the same round trip). The same on both databases, so a caller that commits without
        `send_pending` loses the write on SQLite too, where the tests see it."""
        prepared = _STATEMENTS.get(stmt, keys, self.dialect)
        self._pending.append((self._text(prepared), prepared.parameters(values or {})))

    def send_pending(self) -> None:
        """Send the statements `later` kept: on PostgreSQL as one multi-statement execute (psycopg2 binds
        client-side: their positional parameters, one after the other); on SQLite one by one."""
        if not self._pending:
            return
        if self._batch:
            self._send(*self._joined()).close()
            return
        items, self._pending = self._pending, []
        for sql, params in items:
            self._send(sql, params).close()

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


def _wrap(exc: Exception, dialect, sql: Optional[str] = None, params=None, lost: bool = False):
    return sa_exc.DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost,
                                      dialect=dialect)


@contextmanager
def transaction(atomic: bool = True, connection=None):
    """A transaction for the hot path's statements: committed at the end of the block, rolled back if it
    raises. Where it runs:

    - this thread's session has work open (a transaction, or changes not flushed yet) and `atomic`: in
      the session's transaction, the session's changes flushed first; both commit together at the end;
    - `connection` given (a SQLAlchemy Connection its caller owns, such as the queue's ownership
      connection): on it, in autocommit (`atomic` must be False);
    - else on a pooled connection, the thread's held one inside `held_connection()`. SQLite: BEGIN
      IMMEDIATE (queued on the process's writer lock). PostgreSQL: the connection in autocommit, BEGIN
      sent with the first statement and COMMIT with the last batch (psycopg2 would spend a round trip
      on each).

    `atomic=False`: no BEGIN; each statement, or batch sent together, is a transaction of its own (reads;
    a claim's one UPDATE)."""
    if connection is not None:
        if atomic:
            raise ValueError("a transaction on the caller's connection runs in autocommit: atomic=False")
        with _on_connection(connection) as tx:
            yield tx
        return
    session = db.session() if db.session.registry.has() else None
    if atomic and session is not None and (session.in_transaction() or session.new or session.dirty
                                           or session.deleted):
        with _in_session(session) as tx:
            yield tx
        return
    with _pooled(atomic) as tx:
        yield tx


@contextmanager
def _in_session(session):
    try:
        session.flush()  # the session's changes first: ours may depend on them (and it on ours, never)
        connection = session.connection()
        fairy = connection.connection
        tx = Tx(fairy.dbapi_connection, connection.dialect, connection.invalidate, prepared=fairy.info.get(PREPARED))
        yield tx
        tx.send_pending()
        session.commit()
    except BaseException:
        session.rollback()
        raise


@contextmanager
def _on_connection(connection):
    if connection.in_transaction():
        connection.commit()
    fairy = connection.connection
    dbapi = fairy.dbapi_connection
    dbapi.autocommit = True
    try:
        tx = Tx(dbapi, connection.dialect, connection.invalidate, prepared=fairy.info.get(PREPARED))
        tx.ready()
        yield tx
        tx.send_pending()
    finally:
        if not connection.invalidated:
            dbapi.autocommit = False


@contextmanager
def _pooled(atomic: bool):
    engine = db.engine
    dialect = engine.dialect
    held = getattr(_held, "on", False) and not getattr(_held, "busy", False)  # nested: a connection of its own
    fairy = getattr(_held, "fairy", None) if held else None
    if fairy is not None and fairy.dbapi_connection is None:  # invalidated by an earlier failure: a new one
        _release()
        fairy = None
    if fairy is None:
        try:
            fairy = engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:  # the database is down: as SQLAlchemy's own connect says it
            raise _wrap(exc, dialect, lost=True) from exc
        if held:
            _held.fairy = fairy
    explicit = dialect.name == "postgresql"
    if explicit:
        fairy.dbapi_connection.autocommit = True  # client-side only: the connection is idle
    tx = Tx(fairy.dbapi_connection, dialect, fairy.invalidate, explicit=explicit and atomic,
            prepared=fairy.info.get(PREPARED))
    if held:
        _held.busy = True
    try:
        tx.ready()
        if atomic and dialect.name == "sqlite":
            fairy.dbapi_connection.begin_immediate()
        yield tx
        if tx.explicit:
            tx.commit()
        else:  # SQLite; or PostgreSQL without `atomic`, each statement its own (autocommit)
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
        if held:
            _held.busy = False
        else:
            fairy.close()  # back to the pool (or, invalidated, replaced by it)


_held = threading.local()


@contextmanager
def held_connection():
    """Within the block this thread's pooled transactions (`transaction()`) run on one connection,
    checked out at the first and returned at the end; it opens no transaction itself, and between
    transactions the connection is idle. A transaction begun inside another gets a connection of its own."""
    _held.on = True
    try:
        yield
    finally:
        _held.on = False
        _release()


def _release() -> None:
    fairy, _held.fairy = getattr(_held, "fairy", None), None
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


def columns_of(values: dict) -> tuple:
    """The `keys` argument for values written by name: a stable order."""
    return tuple(sorted(values))
