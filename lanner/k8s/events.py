"""Kubernetes Events about policies, one per node: why a policy failed to load, or was skipped, on this node.

Each node reports only its own outcome, on the policy object itself (``involvedObject``), so
``kubectl describe tgtp NAME`` lists every node's reason; no node writes a shared status object.
Events are rate-limited per (policy uid, reason): the same one at most every ``interval_s``; a changed
message (the policy was edited, the error differs) goes out at once. Posting happens in a thread of
its own, so a slow or unreachable API server never delays loading policies; a full queue drops.
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("lanner.k8s")

COMPONENT = "lanner"
QUEUE_MAX = 256


@dataclass(frozen=True)
class EventContext:
    api: Any  # kubernetes.client.ApiClient
    node_name: str
    interval_s: float = 60.0


@dataclass
class EventStats:
    posted: int = 0
    limited: int = 0  # held back by the rate limit
    failed: int = 0
    last_error: str = ""
    recent: list[tuple[str, str, str]] = field(default_factory=list)  # (policy key, reason, message), newest last


class EventRecorder:
    def __init__(self, ctx: EventContext) -> None:
        self.ctx = ctx
        self.stats = EventStats()
        self._last: dict[tuple[str, str], tuple[float, str]] = {}  # (uid, reason) -> (monotonic, message)
        self._queue: queue.Queue[dict | None] = queue.Queue(QUEUE_MAX)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lanner-k8s-events", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout=5)
            self._thread = None

    def record(self, obj: dict, warning: bool, reason: str, message: str) -> bool:
        """Queue an Event on ``obj`` (a policy as read from the API); False when rate-limited or full."""
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        now = time.monotonic()
        last = self._last.get((uid, reason))
        if last is not None and last[1] == message and now - last[0] < self.ctx.interval_s:
            self.stats.limited += 1
            return False
        self._last[(uid, reason)] = (now, message)
        try:
            self._queue.put_nowait(self._body(obj, warning, reason, message))
        except queue.Full:
            self.stats.failed += 1
            return False
        return True

    def forget(self, uid: str) -> None:
        """The policy is gone: a new one of the same name reports afresh."""
        for k in [k for k in self._last if k[0] == uid]:
            del self._last[k]

    def _body(self, obj: dict, warning: bool, reason: str, message: str) -> dict:
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or ""
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {"apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""), "name": meta.get("name"),
                    "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
        if ns:
            involved["namespace"] = ns
        return {
            "apiVersion": "v1", "kind": "Event",
            # a cluster-scoped object's Events live in "default", as a Node's do
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": ns or "default"},
            "involvedObject": involved, "reason": reason, "type": "Warning" if warning else "Normal",
            "message": f"node {self.ctx.node_name}: {message}"[:1024],
            "source": {"component": COMPONENT, "host": self.ctx.node_name},
            "reportingComponent": COMPONENT, "reportingInstance": self.ctx.node_name,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }

    def _run(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.ctx.api)
        while True:
            body = self._queue.get()
            if body is None:
                return
            try:
                core.create_namespaced_event(body["metadata"]["namespace"], body, _request_timeout=(5, 10))
                self.stats.posted += 1
                inv = body["involvedObject"]
                self.stats.recent = (self.stats.recent + [(f"{inv.get('namespace', '')}/{inv['name']}",
                                                           body["reason"], body["message"])])[-20:]
            except Exception as exc:  # RBAC, unreachable: counted, never retried (the next change reports again)
                self.stats.failed += 1
                self.stats.last_error = str(getattr(exc, "reason", "") or exc).splitlines()[0][:200]
                log.warning("Event %s on %s not posted: %s", body["reason"], body["involvedObject"]["name"],
                            self.stats.last_error)
