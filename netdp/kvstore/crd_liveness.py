"""Which nodes of the CRD backend are alive, judged on this agent's own monotonic clock.

Every agent renews its ``LannerNode`` object a few times per TTL (a new ``spec.renewTime``, so a new
``resourceVersion``). A watcher notes, on its own ``time.monotonic()``, when it last saw each node's
object change; a node whose object has not changed for longer than that node's TTL
(``spec.leaseTTLSeconds``, the owner's own setting) is gone. Wall clocks are never compared (nodes'
clocks may disagree; ``renewTime`` is for people reading the object). Silence is only trusted while the
watch itself is proven live: this agent's own renewals must have come back through it within its TTL.
An agent that lost the API server therefore declares nobody gone; it does not tear down the cluster. And
when its own renewals come back after such a gap (the API server, or this agent's watch, was away), every
node gets a fresh TTL from that moment: their renewals during the gap could not be seen either.
"""

from __future__ import annotations

import time
from typing import Callable


class NodeLiveness:
    """Last sighting per node: (resourceVersion, monotonic time seen, TTL in seconds)."""

    def __init__(self, me: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.me = me
        self._clock = clock
        self._seen: dict[str, tuple[str, float, float]] = {}

    def saw(self, name: str, resource_version: str, ttl_s: float) -> bool:
        """Note a version of ``name``'s object; True when it is new (a renewal or an edit)."""
        old = self._seen.get(name)
        if old is not None and old[0] == resource_version:
            return False
        now = self._clock()
        if name == self.me and (old is None or now - old[1] > old[2]):
            self._seen = {n: (rv, now, ttl) for n, (rv, _t, ttl) in self._seen.items()}  # after a gap: a fresh TTL
        self._seen[name] = (resource_version, now, float(ttl_s))
        return True

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)

    def watch_live(self) -> bool:
        """This node's own renewal came through the watch within its TTL."""
        own = self._seen.get(self.me)
        return own is not None and self._clock() - own[1] <= own[2]

    def silent_for(self, name: str) -> float | None:
        seen = self._seen.get(name)
        return None if seen is None else self._clock() - seen[1]

    def expired(self) -> list[str]:
        """Other nodes not renewed within their TTL (none while this node's own watch is not live)."""
        if not self.watch_live():
            return []
        now = self._clock()
        return sorted(n for n, (_rv, t, ttl) in self._seen.items() if n != self.me and now - t > ttl)
