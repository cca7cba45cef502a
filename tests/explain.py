"""Plans of the statements a piece of code runs: each must be index access, never a walk of a table.

PostgreSQL: EXPLAIN with sequential scans priced out (a plan that has no index keeps its Seq Scan).
SQLite: EXPLAIN QUERY PLAN says SEARCH, never SCAN, of a table or an index."""
import threading
from contextlib import contextmanager

from sqlalchemy import event, text

from msapp.extensions import db


@contextmanager
def selects():
    """The SELECTs this thread runs inside the block, with their parameters (in an app context); the
    service's own threads (workers, ticker) share the engine and are left out."""
    seen, me = [], threading.get_ident()

    def capture(conn, cursor, statement, parameters, context, executemany):
        if threading.get_ident() == me and statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)


def plans(seen: list, rows=None) -> list:
    """(statement, plan) of each statement seen. `rows(conn)`: adds rows (and statistics) first, in the
    transaction rolled back at the end, so the planner weighs a grown table, not a test's handful of rows.
    PostgreSQL plans with sequential scans priced out: a statement no index serves keeps its Seq Scan."""
    pg = db.engine.dialect.name == "postgresql"
    conn = db.session.connection()
    if rows is not None:
        rows(conn)
    if pg:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
    out = []
    for statement, parameters in seen:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute(("EXPLAIN " if pg else "EXPLAIN QUERY PLAN ") + statement, parameters)
        out.append((statement, "\n".join(str(row[0] if pg else row[-1]) for row in cursor.fetchall())))
    return out


def assert_index_access(seen: list, keyed: bool = False, rows=None) -> None:
    """Each statement's plan is index access; `keyed`: each index is also searched by a key after the
    enterprise (a lookup, not a walk of all the enterprise's rows). `rows`: as for `plans`."""
    pg = db.engine.dialect.name == "postgresql"
    for statement, plan in plans(seen, rows):
        if pg:
            assert "Seq Scan" not in plan and "Index" in plan, (statement, plan)
            enterprise_only = [line for line in plan.splitlines()
                               if "Index Cond: (enterprise_number = " in line and " AND " not in line]
        else:
            assert "SEARCH" in plan and not any(walks_a_table(line) for line in plan.splitlines()), (statement, plan)
            enterprise_only = [line for line in plan.splitlines() if line.endswith("(enterprise_number=?)")]
        assert not (keyed and enterprise_only), (statement, plan)
    db.session.rollback()


def walks_a_table(sqlite_line: str) -> bool:
    """SQLite's plan line for a walk of a whole table or index (not of a subquery's rows or a constant)."""
    return sqlite_line.startswith("SCAN ") and not sqlite_line.startswith(("SCAN CONSTANT ROW", "SCAN (",
                                                                            "SCAN anon_"))
