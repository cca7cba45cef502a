"""integration_logs: one row per inbound event and per MoySklad exchange, secrets redacted."""
from __future__ import annotations

import threading
from typing import Any, Optional

from sqlalchemy import insert

from msapp.clock import utcnow
from msapp.db import rawsql
from msapp.db.models import IntegrationLog
from msapp.redact import redact_for_json, redact_text

_INSERT = insert(IntegrationLog.__table__)  # values bound at execution (hot path)
_KEYS = ("created_at", "enterprise_number", "error_message", "event_type", "integration_type", "request_data",
         "response_data", "status")


def add(enterprise: Optional[str], event_type: str, request: Any = None, response: Any = None,
        error: Optional[str] = None, conn=None) -> None:
    """Add a log row to the current session (committed with the caller's transaction), or to `conn`."""
    row = dict(created_at=utcnow(), enterprise_number=enterprise, integration_type="ms", event_type=event_type[:100],
               request_data=redact_for_json(request), response_data=redact_for_json(response),
               status="error" if error else "success", error_message=redact_text(error)[:2000] if error else None)
    if conn is not None:
        conn.execute(_INSERT, row)
    else:
        rawsql.session_tx().run(_INSERT, row, keys=_KEYS)


_pending = threading.local()


def exchange_writer(enterprise: str, context: Optional[dict] = None):
    """An `on_exchange` callback for the clients: keeps one row per MoySklad exchange for `flush()`.

    Rows are not written at once: the caller writes them in the same commit as the progress they
    describe (callflow's `_save`), or after the job ends either way (`JobQueue.run_one`), so a
    request costs one write transaction, not two.
    """

    def write(record: dict) -> None:
        request = {"method": record["method"], "path": record["path"], "params": record.get("params"),
                   "body": record.get("request"), **(context or {})}
        response = {"status": record.get("status"), "latency_ms": record.get("latency_ms"),
                    "body": _trim(record.get("response"))}
        rows = getattr(_pending, "rows", None)
        if rows is None:
            rows = _pending.rows = []
        rows.append((enterprise, f"ms.{record['api']}.{record['event']}", request, response, record.get("error")))

    return write


def flush(tx=None) -> None:
    """Add the exchanges kept by this thread to the session's transaction, or to `tx` (a rawsql.Tx); the
    caller commits."""
    rows = getattr(_pending, "rows", None)
    if rows:
        _pending.rows = []
        for row in rows:
            add(*row, conn=tx)


def discard() -> None:
    _pending.rows = []


def _trim(value: Any) -> Any:
    """Keep list answers short in the journal (an employee list can be long)."""
    if isinstance(value, dict) and isinstance(value.get("rows"), list) and len(value["rows"]) > 5:
        return {**value, "rows": value["rows"][:5], "rows_omitted": len(value["rows"]) - 5}
    return value
