"""The one error type a request handler raises to answer `{"error": ..., "field": ...}`."""
from __future__ import annotations

from typing import Optional


class ApiError(Exception):
    """An answer to the client: HTTP status, a message, and the offending field if there is one."""

    def __init__(self, status: int, error: str, field: Optional[str] = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.field = field

    def body(self) -> dict:
        out = {"error": self.error}
        if self.field:
            out["field"] = self.field
        return out


class ValidationFailed(ApiError):
    """Bad input on one or more fields; `errors` maps field -> message (the first one is the answer)."""

    def __init__(self, errors: dict[str, str]):
        field, message = next(iter(errors.items()))
        super().__init__(400, message, field)
        self.errors = errors

    def body(self) -> dict:
        out = super().body()
        if len(self.errors) > 1:
            out["errors"] = self.errors
        return out
