"""Workload scoping: which pods a TracingPolicyNamespaced or a ``spec.podSelector`` policy runs for.

Tetragon runs a TracingPolicyNamespaced only for the pods of its namespace and a policy with
``spec.podSelector`` only for the pods the selector picks; host processes are outside both. lanner
decides this in the kernel: a scoped hook (``GHF_SCOPED``) runs only when the current task's network
namespace inode is in the ``gen_scope`` map under the policy's scope id. Every process of a pod shares the
pod's netns, which the CNI service learns at ADD.

``WorkloadScopes`` keeps those map entries in step with the node's pods: ``sync(pods)`` whenever the pod
table changes (ADD, DEL, labels learned later), ``register``/``unregister`` as policies come and go.
Nothing here runs per event.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from lanner.policy.model import LabelSelector, TracingPolicy

log = logging.getLogger("lanner.policy.workloads")

SCOPE_KEY = struct.Struct("<II")  # struct gen_scope_key {scope, netns}


@dataclass(frozen=True)
class Workload:
    """A pod as scoping sees it."""

    namespace: str
    labels: Mapping[str, str]
    netns: int  # the pod's network namespace inode (0: unknown, never selected)


@dataclass(frozen=True)
class WorkloadScope:
    """The pods one policy runs for."""

    namespace: str | None  # TracingPolicyNamespaced's namespace; None: every namespace
    pod_selector: LabelSelector | None  # None: every pod (of the namespace)
    host: bool = False  # spec.hostSelector: {} beside a podSelector: the host's processes too

    def selects(self, w: Workload) -> bool:
        if self.namespace is not None and w.namespace != self.namespace:
            return False
        return self.pod_selector is None or label_selector_matches(self.pod_selector, w.labels)

    def describe(self) -> str:
        parts = [f"namespace {self.namespace}" if self.namespace is not None else "every namespace"]
        if self.pod_selector is not None:
            parts.append(f"podSelector {describe_selector(self.pod_selector)}")
        if self.host:
            parts.append("and the host (hostSelector {})")
        return ", ".join(parts)


def scope_of(policy: TracingPolicy) -> WorkloadScope | None:
    """The policy's pod scope; None for a policy that runs for every process."""
    if not policy.namespaced and policy.spec.pod_selector is None:
        return None
    return WorkloadScope(policy.namespace if policy.namespaced else None, policy.spec.pod_selector,
                         host=policy.spec.host_selector is not None)


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


class WorkloadScopes:
    """The ``gen_scope`` entries of every scoped policy. ``write``/``erase`` take a packed key."""

    def __init__(self, write: Callable[[bytes], None], erase: Callable[[bytes], None], host_netns: int = 0) -> None:
        self._write = write
        self.host_netns = host_netns  # the host's network namespace inode (pid 1's): hostSelector's processes
        self._erase = erase
        self._lock = threading.Lock()
        self._scopes: dict[int, WorkloadScope] = {}
        self._pods: list[Workload] = []
        self._entries: dict[int, set[int]] = {}  # scope id -> netns inodes in the map
        self.synced = False  # a pod source has reported at least once

    def register(self, scope_id: int, scope: WorkloadScope) -> None:
        """Add a policy's scope; its current pods are in the map when this returns."""
        with self._lock:
            self._scopes[scope_id] = scope
            self._entries.setdefault(scope_id, set())
            self._apply(scope_id)

    def unregister(self, scope_id: int) -> None:
        with self._lock:
            self._scopes.pop(scope_id, None)
            for netns in self._entries.pop(scope_id, set()):
                self._erase_quiet(scope_id, netns)

    def sync(self, pods: Iterable[Workload]) -> None:
        """The node's pods now (all of them): bring every scope's entries in line."""
        with self._lock:
            self._pods = [p for p in pods if p.netns]
            self.synced = True
            for scope_id in list(self._scopes):
                self._apply(scope_id)

    def selected(self, scope_id: int) -> int:
        """How many pods' network namespaces the scope's hooks run for now (the host's not counted)."""
        with self._lock:
            return len(self._entries.get(scope_id, set()) - {self.host_netns})

    def _apply(self, scope_id: int) -> None:
        scope = self._scopes[scope_id]
        want = {p.netns for p in self._pods if scope.selects(p)}
        if scope.host and self.host_netns:
            want.add(self.host_netns)
        have = self._entries[scope_id]
        for netns in sorted(want - have):
            self._write(SCOPE_KEY.pack(scope_id, netns))
            have.add(netns)
        for netns in sorted(have - want):
            self._erase_quiet(scope_id, netns)
            have.discard(netns)
        if want or have:
            log.debug("scope %d (%s): %d pods", scope_id, scope.describe(), len(have))

    def _erase_quiet(self, scope_id: int, netns: int) -> None:
        try:
            self._erase(SCOPE_KEY.pack(scope_id, netns))
        except (OSError, KeyError) as exc:  # already gone: the goal is its absence
            log.debug("scope %d netns %d: %s", scope_id, netns, exc)


__all__ = ["SCOPE_KEY", "Workload", "WorkloadScope", "WorkloadScopes", "describe_selector",
           "label_selector_matches", "scope_of"]
