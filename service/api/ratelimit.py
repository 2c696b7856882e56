"""Per-token write rate limit (sliding one-minute window, per API process)."""
from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque


class RateLimiter:
    """In memory: with several API processes each enforces the limit on its own share."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, key: str) -> int | None:
        """None when allowed (and counted); else the seconds to wait."""
        if self.per_minute <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            q = self._hits[key]
            while q and now - q[0] >= 60.0:
                q.popleft()
            if len(q) >= self.per_minute:
                return max(1, math.ceil(60.0 - (now - q[0])))
            q.append(now)
        return None
