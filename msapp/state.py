"""The service objects one app holds (settings, queue, workers, config store)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from flask import current_app

from msapp.queue import JobQueue, WorkerPool
from msapp.services.config import ConfigStore
from msapp.settings import Settings


@dataclass
class MsState:
    settings: Settings
    queue: JobQueue
    pool: WorkerPool
    configs: ConfigStore
    clients: Optional[Any] = None  # services.moysklad_clients.MoySkladClients
    customers: Optional[Any] = None  # services.customers.Customers
    lookups: Optional[Any] = None  # services.lookups.Lookups
    admin: Optional[Any] = None  # services.admin.AdminService
    directory: Optional[Any] = None  # services.directory.Directory
    breakers: Optional[Any] = None  # services.breakers.Breakers
    support: Optional[Any] = None  # services.support.Support
    analytics: Optional[Any] = None  # services.analytics.Analytics
    # a loopback peer sent X-Forwarded-For while MS_TRUSTED_PROXIES is unset (security.client_of)
    untrusted_proxy_seen: bool = False


def ms() -> MsState:
    """The MsState of the current app."""
    return current_app.extensions["ms"]
