"""Statements compiled once for the hot path (db/rawsql.py runs them): SQL per dialect and set of columns
written, values bound by SQLAlchemy's own type processors, rows read by its result processors, and on
PostgreSQL the registry of statements each connection PREPAREs (`PREPARED` in a pooled connection's
info) and the `EXECUTE` text that runs them. Public SQLAlchemy APIs only (tests/test_public_apis.py).
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
from datetime import datetime
from typing import Optional

from sqlalchemy import event
from sqlalchemy.dialects import sqlite

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
        self.defaults = {k: v for k, v in compiled.params.items() if k not in constants}
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
        returned = list(stmt.exported_columns)  # the SELECT's columns, or the RETURNING's
        self.columns = [col.key for col in returned]
        self.readers = [col.type.dialect_impl(dialect).result_processor(dialect, None) for col in returned]
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


_SAMPLES = (datetime(2026, 1, 2, 3, 4, 5, 678901), datetime(1999, 12, 31, 23, 59, 59))


def bind_processor(impl, dialect):
    """The type's bind processor for the dialect; on SQLite, a naive datetime written by `isoformat`: the
    same text as SQLAlchemy's storage format (`YYYY-MM-DD HH:MM:SS.ffffff`), which it %-formats from a dict
    at five times the cost, and a dozen timestamps go with every event. Used only where SQLAlchemy's own
    processor writes exactly that text for sample values (checked here, through its public API)."""
    slow = impl.bind_processor(dialect)
    if dialect.name != "sqlite" or not isinstance(impl, sqlite.DATETIME) or slow is None or \
            any(slow(v) != v.isoformat(" ", "microseconds") for v in _SAMPLES):
        return slow

    def fast(value):
        if type(value) is datetime and value.tzinfo is None:
            return value.isoformat(" ", "microseconds")
        return slow(value)  # a date, an aware datetime, None, or what it refuses

    return fast


class Statements:
    """Prepared statements by statement, dialect and set of columns written (every engine of one
    dialect here comes from create_app, with the same JSON serializer)."""

    MAX = 512  # statements kept per process (the service has a few dozen; a leak cannot grow without bound)

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
                while len(self._prepared) >= self.MAX:
                    self._prepared.pop(next(iter(self._prepared)))
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
