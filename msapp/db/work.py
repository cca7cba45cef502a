"""A unit of work: the rows a job (or a request) has decided to write, written together in one
transaction (docs/design.md 7). A job's work is written with its outcome, whatever the outcome; a
request writes its own with `commit`.
"""
from __future__ import annotations

from msapp.db import rawsql


class Work:
    """Inserts in the order they were added, and updates by row: a row updated twice is written once,
    with the later values winning. Statements are rawsql's (an update binds the row's id as `_id`)."""

    def __init__(self):
        self.inserts: list = []  # (statement, values, keys)
        self.updates: dict = {}  # (statement, row id) -> values

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates)

    def insert(self, stmt, values: dict, keys: tuple) -> None:
        self.inserts.append((stmt, values, keys))

    def update(self, stmt, row_id: int, values: dict) -> None:
        key = (stmt, row_id)
        self.updates[key] = {**self.updates.get(key, {}), **values}

    def write(self, tx: rawsql.Tx) -> None:
        """Add everything to `tx` (sent `later`: with its next statement or its commit) and forget it."""
        for (stmt, row_id), values in self.updates.items():
            tx.later(stmt, {**values, "_id": row_id}, keys=rawsql.columns_of(values))
        for stmt, values, keys in self.inserts:
            tx.later(stmt, values, keys)
        self.discard()

    def commit(self) -> None:
        """Write it now, in a transaction of its own (or the session's, when the session has work open)."""
        if self:
            with rawsql.transaction() as tx:
                self.write(tx)

    def discard(self) -> None:
        self.inserts = []
        self.updates = {}
