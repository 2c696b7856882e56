"""A bounded, thread-safe least-recently-used cache: the one per-process cache the service and workers share."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

#: what ``peek`` returns for a key it does not hold (None may be a cached value)
MISSING = object()


class LRU:
    """At most ``size`` entries; the least recently used goes first, through ``close`` when given."""

    def __init__(self, size: int, close: Callable[[Any], None] | None = None):
        self.size, self._close = size, close
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make: Callable[[], Any]):
        """The cached value, else ``make()`` (called outside the lock) cached and returned.

        Two threads may make the same key at once: the first one cached wins, and the other value is
        closed (an open file must not be dropped unclosed).
        """
        value = self.peek(key)
        if value is not MISSING:
            return value
        value = make()
        with self._lock:
            kept = self._items.get(key, MISSING)
            if kept is MISSING:
                self._items[key] = value
                self._evict()
                return value
            self._items.move_to_end(key)
        if self._close:
            self._close(value)
        return kept

    def peek(self, key):
        """The cached value, or MISSING."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return MISSING

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            self._evict()

    def _evict(self) -> None:
        while len(self._items) > self.size:
            _, old = self._items.popitem(last=False)
            if self._close:
                self._close(old)
