"""Build MoySklad clients for one enterprise: URLs from settings, keys from its config, shared limits."""
from __future__ import annotations

import time
from typing import Optional

from ..errors import ApiError
from ..moysklad import JsonApi, Limiter, PhoneApi
from ..settings import Settings
from . import exchange_log
from .cache import TTLCache

EMPLOYEES_TTL = 600.0


AUTH_PAUSE = 300.0  # after MoySklad refuses an enterprise's credentials, ask again this much later


class MoySkladClients:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.limiter = Limiter(json_budget=settings.json_api_budget)
        self.cache = TTLCache()
        self._paused: dict[str, tuple[float, str]] = {}

    # -- refused credentials: one probe per pause, not one failing request per call -------------------
    def pause(self, number: str, reason: str, seconds: float = AUTH_PAUSE) -> None:
        self._paused[number] = (time.monotonic() + seconds, reason)

    def paused(self, number: str) -> Optional[tuple[float, str]]:
        """(seconds left, reason) while the enterprise's MoySklad traffic is paused, else None."""
        found = self._paused.get(number)
        if found is None:
            return None
        left = found[0] - time.monotonic()
        if left <= 0:
            return None  # half-open: the next request probes; success clears it, refusal pauses again
        return left, found[1]

    def resume(self, number: str) -> None:
        self._paused.pop(number, None)

    def phone(self, number: str, cfg: dict, **kw) -> PhoneApi:
        """The Phone API client of one enterprise (its key; URL from settings; shared limits)."""
        return self._client(PhoneApi, self.settings.phone_api_url, number, cfg, "integration_code",
                            "the Phone API key (integration_code) is not set", **kw)

    def json(self, number: str, cfg: dict, **kw) -> JsonApi:
        """The JSON API client of one enterprise (its token; URL from settings; shared limits)."""
        return self._client(JsonApi, self.settings.json_api_url, number, cfg, "api_token",
                            "the JSON API token (api_token) is not set", **kw)

    def _client(self, cls, url: str, number: str, cfg: dict, secret_field: str, missing: str, *,
                max_wait: float = 2.0, timeout: Optional[tuple] = None, log: bool = True,
                context: Optional[dict] = None):
        if not cfg.get(secret_field):
            raise ApiError(400, missing, secret_field)
        return cls(url, cfg[secret_field], enterprise=number, limiter=self.limiter, max_wait=max_wait,
                   timeout=timeout or (3.05, 10.0),
                   on_exchange=exchange_log.exchange_writer(number, context) if log else None)

    def employees(self, number: str, cfg: dict, refresh: bool = False) -> list[dict]:
        """Phone API employees with extensions (cached 10 minutes)."""
        key = (number, "employees")
        if not refresh:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        rows = self.phone(number, cfg).employees()
        self.cache.set(key, rows, EMPLOYEES_TTL)
        return rows

    def employee_for_extension(self, number: str, cfg: dict, extension: Optional[str]) -> Optional[dict]:
        if not extension:
            return None
        return next((e for e in self.employees(number, cfg) if e["extension"] == extension), None)

    def forget(self, number: str, kind: Optional[str] = None) -> None:
        """Drop cached answers of one enterprise (all, or one kind such as "employees" or "customer")."""
        self.cache.drop(lambda k: k[0] == number and (kind is None or k[1] == kind))
