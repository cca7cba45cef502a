"""Build MoySklad clients for one enterprise: URLs from settings, keys from its config, shared limits."""
from __future__ import annotations

from typing import Optional

from msapp.db.work import Work
from msapp.errors import ApiError
from msapp.moysklad import JsonApi, Limiter, PhoneApi
from msapp.services import exchange_log
from msapp.services.cache import TTLCache
from msapp.settings import Settings


class MoySkladClients:
    def __init__(self, settings: Settings, breakers=None):
        self.settings = settings
        self.limiter = Limiter(json_budget=settings.json_api_budget)
        self.cache = TTLCache()
        self.breakers = breakers  # services.breakers.Breakers: outages and refused keys, per enterprise and API

    def phone(self, number: str, cfg: dict, work: Optional[Work], **kw) -> PhoneApi:
        """The Phone API client of one enterprise (its key; URL from settings; shared limits); its exchanges
        are journaled in `work` (None: not journaled)."""
        return self._client(PhoneApi, self.settings.phone_api_url, number, cfg, work, "integration_code",
                            "the Phone API key (integration_code) is not set", **kw)

    def json(self, number: str, cfg: dict, work: Optional[Work], **kw) -> JsonApi:
        """The JSON API client of one enterprise (its token; URL from settings; shared limits); its exchanges
        are journaled in `work` (None: not journaled)."""
        return self._client(JsonApi, self.settings.json_api_url, number, cfg, work, "api_token",
                            "the JSON API token (api_token) is not set", **kw)

    def _client(self, cls, url: str, number: str, cfg: dict, work: Optional[Work], secret_field: str, missing: str,
                *, max_wait: float = 2.0, timeout: Optional[tuple] = None, context: Optional[dict] = None,
                gate: bool = True):
        """`context`: added to each journal row's request (the call's unique_id); `gate=False`: send even
        while the enterprise's breaker is open (its answer still counts)."""
        if not cfg.get(secret_field):
            raise ApiError(400, missing, secret_field)
        return cls(url, cfg[secret_field], enterprise=number, limiter=self.limiter, max_wait=max_wait,
                   timeout=timeout or (3.05, 10.0), breaker=self.breakers, gate=gate,
                   on_exchange=exchange_log.recorder(work, number, context) if work is not None else None)

    def forget(self, number: str, kind: Optional[str] = None) -> None:
        """Drop cached answers of one enterprise (all, or one kind such as "organizations" or "customer")."""
        self.cache.drop(lambda k: k[0] == number and (kind is None or k[1] == kind))
