"""SQLite writers of one process take turns on a Python lock instead of SQLite's busy handler.

Every transaction starts with BEGIN IMMEDIATE (so concurrent writers wait rather than fail). SQLite's
busy handler waits by sleeping in growing steps (up to 100 ms), so under load a waiting thread sleeps
long after the lock is free. Threads of one process therefore queue on a lock handed over the moment
the holder's COMMIT or ROLLBACK has finished; the busy handler still arbitrates between processes.
"""
from __future__ import annotations

import sqlite3
import threading

WRITE_LOCK = threading.RLock()


class LockingConnection(sqlite3.Connection):
    """A sqlite3 connection that holds WRITE_LOCK from its BEGIN until its COMMIT/ROLLBACK/close."""

    _holds = 0

    def begin_immediate(self) -> None:
        WRITE_LOCK.acquire()
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            WRITE_LOCK.release()
            raise
        self._holds += 1

    def _release(self) -> None:
        while self._holds:
            self._holds -= 1
            WRITE_LOCK.release()

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
            self._release()
