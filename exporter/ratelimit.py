"""Export rate limit (``--export-rate-limit``, events per minute).

A token bucket refilled at N/60 tokens per second, holding at most N (one minute's worth, so a quiet
minute allows a burst of N). Events beyond it are dropped from the export and counted; the agent turns
the count into ``rate_limit_info`` events, so the export itself says how much it lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class ExportRateLimiter:
    per_minute: int
    clock: Callable[[], float] = time.monotonic
    dropped_total: int = 0
    dropped_unreported: int = 0
    _tokens: float = field(init=False)
    _last: float = field(init=False)

    def __post_init__(self) -> None:
        if self.per_minute < 0:
            raise ValueError("export rate limit must be >= 0 events per minute (or -1 for none)")
        self._tokens = float(self.per_minute)
        self._last = self.clock()

    def admit(self, n: int) -> int:
        """How many of the next ``n`` events may be exported; the rest are counted as dropped."""
        now = self.clock()
        self._tokens = min(float(self.per_minute), self._tokens + (now - self._last) * self.per_minute / 60.0)
        self._last = now
        ok = min(n, int(self._tokens))
        self._tokens -= ok
        dropped = n - ok
        self.dropped_total += dropped
        self.dropped_unreported += dropped
        return ok

    def take_report(self) -> int:
        """Drops since the last report (and reset), for one ``rate_limit_info`` event."""
        n, self.dropped_unreported = self.dropped_unreported, 0
        return n
