"""Workload scoping: which pods (and containers) a scoped TracingPolicy runs for.

Tetragon runs a TracingPolicyNamespaced only for the pods of its namespace, a policy with
``spec.podSelector`` only for the pods the selector picks, and ``spec.containerSelector`` narrows those pods
to some of their containers; host processes are outside unless ``hostSelector: {}``. lanner decides this in
the kernel: a scoped hook (``GHF_SCOPED``) runs only when the current task's network namespace inode is in
the ``gen_scope`` map under the policy's id (every process of a pod shares the pod's netns, which the CNI
service learns at ADD) or, for a container scope (``GHF_SCOPED_CG``), when its cgroup v2 id is in
``gen_scope_cg`` (a container's cgroup, learned from the runtime when the container's first process shows).

``WorkloadScopes`` keeps those map entries in step with the node's pods: ``sync(pods)`` whenever the pod
table changes (ADD, DEL, labels or containers learned later), ``register``/``unregister`` as policies come
and go. Nothing here runs per event.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from lanner.policy.model import LabelSelector, TracingPolicy

log = logging.getLogger("lanner.policy.workloads")

SCOPE_KEY = struct.Struct("<II")  # struct gen_scope_key {scope, netns}
SCOPE_CG_KEY = struct.Struct("<IIQ")  # struct gen_scope_cg_key {scope, pad, cgroup}


@dataclass(frozen=True)
class Container:
    """A container as scoping sees it."""

    name: str
    repo: str  # the image repository (the image reference without tag or digest)
    cgroup: int  # cgroup v2 id (what bpf_get_current_cgroup_id returns); 0: unknown, never selected


@dataclass(frozen=True)
class Workload:
    """A pod as scoping sees it."""

    namespace: str
    labels: Mapping[str, str]
    netns: int  # the pod's network namespace inode (0: unknown, never selected)
    containers: tuple[Container, ...] = ()  # those whose cgroup is known


@dataclass(frozen=True)
class WorkloadScope:
    """The pods (and containers) one policy runs for."""

    namespace: str | None  # TracingPolicyNamespaced's namespace; None: every namespace
    pod_selector: LabelSelector | None  # None: every pod (of the namespace)
    host: bool = False  # spec.hostSelector: {}: the host's processes too
    container_selector: LabelSelector | None = None  # None: every process of the selected pods

    def selects(self, w: Workload) -> bool:
        if self.namespace is not None and w.namespace != self.namespace:
            return False
        return self.pod_selector is None or label_selector_matches(self.pod_selector, w.labels)

    def selects_container(self, c: Container) -> bool:
        return self.container_selector is None or label_selector_matches(
            self.container_selector, {"name": c.name, "repo": c.repo})

    def describe(self) -> str:
        parts = [f"namespace {self.namespace}" if self.namespace is not None else "every namespace"]
        if self.pod_selector is not None:
            parts.append(f"podSelector {describe_selector(self.pod_selector)}")
        if self.container_selector is not None:
            parts.append(f"containerSelector {describe_selector(self.container_selector)}")
        if self.host:
            parts.append("and the host (hostSelector {})")
        return ", ".join(parts)


def scope_of(policy: TracingPolicy) -> WorkloadScope | None:
    """The policy's workload scope; None for a policy that runs for every process."""
    spec = policy.spec
    if not policy.namespaced and spec.pod_selector is None and spec.container_selector is None:
        return None
    return WorkloadScope(policy.namespace if policy.namespaced else None, spec.pod_selector,
                         host=spec.host_selector is not None, container_selector=spec.container_selector)


def image_repo(image: str) -> str:
    """``docker.io/library/nginx:1.25`` / ``...@sha256:..`` -> ``docker.io/library/nginx``."""
    image = image.split("@", 1)[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > slash else image


def label_selector_matches(sel: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes semantics: matchLabels and every matchExpressions entry must hold; ``{}`` selects all."""
    if any(labels.get(k) != v for k, v in sel.match_labels.items()):
        return False
    for r in sel.match_expressions:
        present = r.key in labels
        ok = {"In": present and labels.get(r.key) in r.values,
              "NotIn": not present or labels.get(r.key) not in r.values,
              "Exists": present, "DoesNotExist": not present}.get(r.operator, False)
        if not ok:
            return False
    return True


def describe_selector(sel: LabelSelector) -> str:
    if sel.is_empty:
        return "{} (every pod)"
    terms = [f"{k}={v}" for k, v in sorted(sel.match_labels.items())]
    terms += [f"{r.key} {r.operator} ({','.join(r.values)})" if r.values else f"{r.key} {r.operator}"
              for r in sel.match_expressions]
    return ",".join(terms)


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


__all__ = ["SCOPE_CG_KEY", "SCOPE_KEY", "Container", "KeyMap", "Workload", "WorkloadScope", "WorkloadScopes",
           "describe_selector", "image_repo", "label_selector_matches", "scope_of"]
