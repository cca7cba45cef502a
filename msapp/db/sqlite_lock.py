"""SQLite writers of one process take turns on a Python lock instead of SQLite's busy handler.

Every transaction starts with BEGIN IMMEDIATE (so concurrent writers wait rather than fail). SQLite's
busy handler waits by sleeping in growing steps (up to 100 ms), so under load a waiting thread sleeps
long after the lock is free. Threads of one process therefore queue on a lock handed over the moment
the holder's COMMIT or ROLLBACK has finished; the busy handler still arbitrates between processes.
A reader's transaction (db/reader.py) takes no lock: DEFERRED, under `PRAGMA query_only`.
"""
from __future__ import annotations

import sqlite3
import threading

WRITE_LOCK = threading.RLock()


class LockingConnection(sqlite3.Connection):
    """A sqlite3 connection that holds WRITE_LOCK from its BEGIN IMMEDIATE until its COMMIT/ROLLBACK/close."""

    _holds = 0
    _reading = False

    def begin_immediate(self) -> None:
        WRITE_LOCK.acquire()
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            WRITE_LOCK.release()
            raise
        self._holds += 1

    def begin_reading(self) -> None:
        """A transaction that reads one snapshot, outside the writer lock; any write in it fails."""
        self.execute("PRAGMA query_only = ON")
        self._reading = True
        self.execute("BEGIN")

    def _release(self, closing: bool = False) -> None:
        while self._holds:
            self._holds -= 1
            WRITE_LOCK.release()
        if self._reading:
            self._reading = False
            if not closing:
                self.execute("PRAGMA query_only = OFF")

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release(closing=True)
