"""Transactions that only read (the admin's pages and the support desk) and say so.

On SQLite every transaction of this process begins IMMEDIATE behind the process's writer lock
(db/sqlite_lock.py), so an admin search of 10 ms would hold the event path's writers for 10 ms. A
reader's transaction instead begins DEFERRED, outside the lock: in WAL mode it reads one snapshot while
the writers go on. It runs under `PRAGMA query_only`, so a write in it fails at once, on every run, rather
than by chance when another writer got in first. On PostgreSQL readers never wait for writers: the
transaction is a plain one there.
"""
from __future__ import annotations

from msapp.extensions import db

READER = "ms_reader"  # the execution option the engine's "begin" listener reads (msapp._sqlite_pragmas)


def read_only() -> None:
    """This thread's session's next transaction only reads, until its commit or rollback. Joins, as it
    is, a transaction already open."""
    if not db.session().in_transaction():
        db.session.connection(execution_options={READER: True})
