"""The kernel side of workload scoping: the ``gen_scope`` (netns) and ``gen_scope_cg`` (cgroup) map entries of
every scoped policy, kept in step with the node's pods.

A scoped hook (``GHF_SCOPED``) runs only when the current task's network namespace inode is in ``gen_scope``
under the policy's id, or, for a container scope (``GHF_SCOPED_CG``), when its cgroup v2 id is in
``gen_scope_cg``. Which pods a scope selects is policy/workloads.py's. ``sync(pods)`` whenever the pod table
changes (ADD, DEL, labels or containers learned later), ``register``/``unregister`` as policies come and go.
Nothing here runs per event.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterable
from typing import Protocol

from lanner.policy.workloads import Workload, WorkloadScope

log = logging.getLogger("lanner.sensors.generic.scopes")

SCOPE_KEY = struct.Struct("<II")  # struct gen_scope_key {scope, netns}
SCOPE_CG_KEY = struct.Struct("<IIQ")  # struct gen_scope_cg_key {scope, pad, cgroup}


class KeyMap(Protocol):
    """Where a scope's keys go (a BPF hash map of set keys)."""

    def put(self, key: bytes) -> None: ...

    def drop(self, key: bytes) -> None: ...


class WorkloadScopes:
    """The ``gen_scope`` (netns) and ``gen_scope_cg`` (cgroup) entries of every scoped policy."""

    def __init__(self, netns_map: KeyMap, cgroup_map: KeyMap, host_netns: int = 0) -> None:
        self._maps = {"netns": netns_map, "cgroup": cgroup_map}
        self.host_netns = host_netns  # the host's network namespace inode (pid 1's): hostSelector's processes
        self._lock = threading.Lock()
        self._scopes: dict[int, WorkloadScope] = {}
        self._pods: list[Workload] = []
        self._entries: dict[int, dict[str, set[int]]] = {}  # scope id -> kind -> values in the map
        self.synced = False  # a pod source has reported at least once

    def register(self, scope_id: int, scope: WorkloadScope) -> None:
        """Add a policy's scope; its current pods are in the maps when this returns."""
        with self._lock:
            self._scopes[scope_id] = scope
            self._entries.setdefault(scope_id, {"netns": set(), "cgroup": set()})
            self._apply(scope_id)

    def unregister(self, scope_id: int) -> None:
        with self._lock:
            self._scopes.pop(scope_id, None)
            for kind, values in self._entries.pop(scope_id, {}).items():
                for v in values:
                    self._drop(kind, scope_id, v)

    def sync(self, pods: Iterable[Workload]) -> None:
        """The node's pods now (all of them): bring every scope's entries in line."""
        with self._lock:
            self._pods = [p for p in pods if p.netns]
            self.synced = True
            for scope_id in list(self._scopes):
                self._apply(scope_id)

    def selected(self, scope_id: int) -> tuple[int, int]:
        """(pods, containers) whose processes the scope's hooks run for now (the host not counted)."""
        with self._lock:
            e = self._entries.get(scope_id, {"netns": set(), "cgroup": set()})
            return len(e["netns"] - {self.host_netns}), len(e["cgroup"])

    def _want(self, scope: WorkloadScope) -> dict[str, set[int]]:
        pods = [p for p in self._pods if scope.selects(p)]
        netns: set[int] = set()
        cgroups: set[int] = set()
        if scope.container_selector is None:
            netns = {p.netns for p in pods}
        else:
            cgroups = {c.cgroup for p in pods for c in p.containers if c.cgroup and scope.selects_container(c)}
        if scope.host and self.host_netns:
            netns.add(self.host_netns)
        return {"netns": netns, "cgroup": cgroups}

    def _apply(self, scope_id: int) -> None:
        want = self._want(self._scopes[scope_id])
        for kind, have in self._entries[scope_id].items():
            for v in sorted(want[kind] - have):
                self._maps[kind].put(self._key(kind, scope_id, v))
                have.add(v)
            for v in sorted(have - want[kind]):
                self._drop(kind, scope_id, v)
                have.discard(v)

    @staticmethod
    def _key(kind: str, scope_id: int, value: int) -> bytes:
        return SCOPE_KEY.pack(scope_id, value) if kind == "netns" else SCOPE_CG_KEY.pack(scope_id, 0, value)

    def _drop(self, kind: str, scope_id: int, value: int) -> None:
        try:
            self._maps[kind].drop(self._key(kind, scope_id, value))
        except (OSError, KeyError) as exc:  # already gone: the goal is its absence
            log.debug("scope %d %s %d: %s", scope_id, kind, value, exc)


__all__ = ["SCOPE_CG_KEY", "SCOPE_KEY", "KeyMap", "WorkloadScopes"]
