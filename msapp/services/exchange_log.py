"""integration_logs: one row per inbound event and per MoySklad exchange, secrets redacted."""
from __future__ import annotations

from typing import Any, Optional

from ..extensions import db
from ..models import IntegrationLog
from ..redact import redact_obj, redact_text


def add(enterprise: Optional[str], event_type: str, request: Any = None, response: Any = None,
        error: Optional[str] = None) -> None:
    """Add a log row to the current session (committed with the caller's transaction)."""
    db.session.add(IntegrationLog(
        enterprise_number=enterprise, integration_type="ms", event_type=event_type[:100],
        request_data=redact_obj(request), response_data=redact_obj(response),
        status="error" if error else "success", error_message=redact_text(error)[:2000] if error else None))


def exchange_writer(enterprise: str, context: Optional[dict] = None):
    """An `on_exchange` callback for the clients: writes and commits one row per MoySklad exchange.

    Callers never hold a transaction across a MoySklad request, so committing here commits only this row.
    """

    def write(record: dict) -> None:
        request = {"method": record["method"], "path": record["path"], "params": record.get("params"),
                   "body": record.get("request"), **(context or {})}
        response = {"status": record.get("status"), "latency_ms": record.get("latency_ms"),
                    "body": _trim(record.get("response"))}
        add(enterprise, f"ms.{record['api']}.{record['event']}", request, response, record.get("error"))
        db.session.commit()

    return write


def _trim(value: Any) -> Any:
    """Keep list answers short in the journal (an employee list can be long)."""
    if isinstance(value, dict) and isinstance(value.get("rows"), list) and len(value["rows"]) > 5:
        return {**value, "rows": value["rows"][:5], "rows_omitted": len(value["rows"]) - 5}
    return value
