"""integration_logs: one row per inbound event and per MoySklad exchange, secrets redacted.

A row that carries a call's unique_id (an event, an exchange made for a call) is linked to the call in
`ms_call_journal` by the same statement (PostgreSQL) or the next one in the same transaction (SQLite), so
the support desk reads a call's story by an index of ours (docs/design.md 5.4)."""
from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import bindparam, func, insert, select

from msapp.clock import utcnow
from msapp.db import rawsql
from msapp.db.models import CallJournal, IntegrationLog
from msapp.db.work import Work
from msapp.extensions import db
from msapp.redact import redact_for_json, redact_text

_LOGS, _LINKS = IntegrationLog.__table__, CallJournal.__table__
_INSERT = insert(_LOGS)  # values bound at execution (hot path)
_KEYS = ("created_at", "enterprise_number", "error_message", "event_type", "integration_type", "request_data",
         "response_data", "status")
_LINK_COLUMNS = ["log_id", "enterprise_number", "unique_id"]
_PLAIN = [(_INSERT, _KEYS, True)]  # (statement, keys, bound to the row's values)
_LINKED: dict = {}  # by dialect: the statements that write a row and its link


def _linked(dialect: str) -> list:
    """PostgreSQL: one statement (the row inserted in a CTE, the link from its RETURNING). SQLite: the row,
    then the link from the row just inserted on this connection (`last_insert_rowid()`)."""
    found = _LINKED.get(dialect)
    if found is None:
        uid = _LOGS.c.request_data["unique_id"].as_string()
        if dialect == "postgresql":
            row = (insert(_LOGS).values({k: bindparam(k, type_=_LOGS.c[k].type) for k in _KEYS})
                   .returning(_LOGS.c.id, _LOGS.c.enterprise_number, uid.label("unique_id")).cte("journaled"))
            found = [(insert(_LINKS).from_select(_LINK_COLUMNS, select(row.c.id, row.c.enterprise_number,
                                                                       row.c.unique_id)), None, True)]
        else:
            last = select(_LOGS.c.id, _LOGS.c.enterprise_number, uid).where(_LOGS.c.id == func.last_insert_rowid())
            found = [(_INSERT, _KEYS, True), (insert(_LINKS).from_select(_LINK_COLUMNS, last), None, False)]
        _LINKED[dialect] = found
    return found


def add(enterprise: Optional[str], event_type: str, request: Any = None, response: Any = None,
        error: Optional[str] = None, *, work: Optional[Work] = None, tx: Optional[rawsql.Tx] = None,
        conn=None) -> None:
    """Journal one row: with `work` (written when it is), in `tx` (rawsql), in `conn` (a SQLAlchemy
    Connection), or else in this thread's session; the caller commits."""
    row = dict(created_at=utcnow(), enterprise_number=enterprise, integration_type="ms", event_type=event_type[:100],
               request_data=redact_for_json(request), response_data=redact_for_json(response),
               status="error" if error else "success", error_message=redact_text(error)[:2000] if error else None)
    uid = request.get("unique_id") if isinstance(request, dict) else None
    statements = _PLAIN
    if enterprise and isinstance(uid, str) and uid:
        statements = _linked((tx or conn or db.engine).dialect.name)
    for stmt, keys, with_row in statements:
        values = row if with_row else {}
        if work is not None:
            work.insert(stmt, values, keys)
        elif tx is not None:
            tx.later(stmt, values, keys)
        elif conn is not None:
            conn.execute(stmt, values)
        else:
            db.session.execute(stmt, values)


def recorder(work: Work, enterprise: str, context: Optional[dict] = None):
    """An `on_exchange` callback for the clients: one journal row per MoySklad exchange, kept in `work`
    (a job's is written with its outcome, so a request costs no write transaction of its own)."""

    def record(exchange: dict) -> None:
        request = {"method": exchange["method"], "path": exchange["path"], "params": exchange.get("params"),
                   "body": exchange.get("request"), **(context or {})}
        response = {"status": exchange.get("status"), "latency_ms": exchange.get("latency_ms"),
                    "body": _trim(exchange.get("response"))}
        add(enterprise, f"ms.{exchange['api']}.{exchange['event']}", request, response, exchange.get("error"),
            work=work)

    return record


def _trim(value: Any) -> Any:
    """Keep list answers short in the journal (an employee list can be long)."""
    if isinstance(value, dict) and isinstance(value.get("rows"), list) and len(value["rows"]) > 5:
        return {**value, "rows": value["rows"][:5], "rows_omitted": len(value["rows"]) - 5}
    return value
