"""integration_logs: one row per inbound event and per MoySklad exchange, secrets redacted."""
from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import insert

from msapp.clock import utcnow
from msapp.db import rawsql
from msapp.db.models import IntegrationLog
from msapp.db.work import Work
from msapp.extensions import db
from msapp.redact import redact_for_json, redact_text

_INSERT = insert(IntegrationLog.__table__)  # values bound at execution (hot path)
_KEYS = ("created_at", "enterprise_number", "error_message", "event_type", "integration_type", "request_data",
         "response_data", "status")


def add(enterprise: Optional[str], event_type: str, request: Any = None, response: Any = None,
        error: Optional[str] = None, *, work: Optional[Work] = None, tx: Optional[rawsql.Tx] = None,
        conn=None) -> None:
    """Journal one row: with `work` (written when it is), in `tx` (rawsql), in `conn` (a SQLAlchemy
    Connection), or else in this thread's session; the caller commits."""
    row = dict(created_at=utcnow(), enterprise_number=enterprise, integration_type="ms", event_type=event_type[:100],
               request_data=redact_for_json(request), response_data=redact_for_json(response),
               status="error" if error else "success", error_message=redact_text(error)[:2000] if error else None)
    if work is not None:
        work.insert(_INSERT, row, _KEYS)
    elif tx is not None:
        tx.later(_INSERT, row, _KEYS)
    elif conn is not None:
        conn.execute(_INSERT, row)
    else:
        db.session.execute(_INSERT, row)


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
