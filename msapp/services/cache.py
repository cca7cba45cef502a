"""A small thread-safe TTL cache (per process) for MoySklad lookups that change rarely."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

_MISSING = object()


class TTLCache:
    def __init__(self, max_items: int = 20_000):
        self.max_items = max_items
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: Any = _MISSING) -> Any:
        with self._lock:
            item = self._data.get(key)
            if item is None or item[0] < time.monotonic():
                self._data.pop(key, None)
                return None if default is _MISSING else default
            self._data.move_to_end(key)
            return item[1]

    def set(self, key: Hashable, value: Any, ttl: float) -> None:
        with self._lock:
            self._data[key] = (time.monotonic() + ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)

    def drop(self, match: Callable[[Hashable], bool]) -> int:
        """Remove every key for which match(key) is true; return how many."""
        with self._lock:
            doomed = [k for k in self._data if match(k)]
            for k in doomed:
                del self._data[k]
            return len(doomed)
