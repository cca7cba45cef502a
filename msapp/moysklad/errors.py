"""One error type for both APIs, and the one place that decides what is retried and after how long."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from msapp.moysklad.transport import NetworkError

RETRY_CODES = {1065, 1073, 1095, 1049, 1074}  # concurrent modification, parallel/rate limits, maintenance
AUTH_MESSAGES = {
    401: "MoySklad refused the credentials (wrong key or token, or the user is blocked)",
    403: "MoySklad denied access (no permission for this operation)",
}
CODE_MESSAGES = {
    55008: "Phone API is not enabled in this MoySklad account (no telephony solution installed)",
    1056: "MoySklad authentication error",
}


@dataclass
class MoySkladError(Exception):
    """A failed MoySklad exchange: HTTP status (0 = no answer), MoySklad error codes and messages."""

    status: int
    message: str
    codes: list = field(default_factory=list)
    retry_after: Optional[float] = None  # seconds, from X-Lognex-Retry-After (ms) or Retry-After (s)
    api: str = ""
    network: bool = False

    def __post_init__(self):
        super().__init__(self.message)

    def __str__(self) -> str:
        codes = f" codes={self.codes}" if self.codes else ""
        return f"{self.api or 'moysklad'} HTTP {self.status}{codes}: {self.message}"

    @property
    def explanation(self) -> str:
        """A sentence an admin can act on."""
        for code in self.codes:
            if code in CODE_MESSAGES:
                return CODE_MESSAGES[code]
        if self.network:
            return f"MoySklad did not answer in time or could not be reached ({self.message})"
        return AUTH_MESSAGES.get(self.status, self.message)

    @classmethod
    def from_response(cls, resp, api: str) -> MoySkladError:
        """From an answer (`transport.Answer`): its errors' codes and texts, and when to try again."""
        codes, messages = [], []
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("errors"), list):
            for item in body["errors"][:10]:
                if not isinstance(item, dict):
                    continue
                if isinstance(item.get("code"), int):
                    codes.append(item["code"])
                text = item.get("error") or item.get("error_message")
                if text:
                    messages.append(str(text)[:300])
        message = "; ".join(messages) or resp.reason or f"HTTP {resp.status_code}"
        return cls(resp.status_code, message, codes, retry_after_seconds(resp.headers), api)


def retry_after_seconds(headers) -> Optional[float]:
    """X-Lognex-Retry-After is in milliseconds; Retry-After in seconds."""
    for name, scale in (("X-Lognex-Retry-After", 0.001), ("Retry-After", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue
        if 0 <= value <= 3600:
            return value
    return None


class RetryPolicy:
    """Is a failure worth retrying, and after how long (None = let the queue's backoff decide)?"""

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, MoySkladError):
            if exc.network or exc.status >= 500 or exc.status == 429:
                return True
            return any(code in RETRY_CODES for code in exc.codes)
        return isinstance(exc, NetworkError)

    def wait(self, exc: BaseException) -> Optional[float]:
        if isinstance(exc, MoySkladError):
            if exc.retry_after is not None:
                return exc.retry_after
            if 1095 in exc.codes:
                return 60.0
        return None

    def as_job_error(self, exc: MoySkladError) -> Exception:
        """Translate for the job queue: Retry (after MoySklad's wait, else the queue's backoff; the job
        lives until the retry horizon), or Permanent."""
        from msapp.queue import Permanent, Retry

        if not self.retryable(exc):
            return Permanent(str(exc))
        return Retry(self.wait(exc), str(exc))
