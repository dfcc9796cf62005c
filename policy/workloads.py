"""Workload scoping: which pods (and containers) a scoped TracingPolicy runs for.

Tetragon runs a TracingPolicyNamespaced only for the pods of its namespace, a policy with
``spec.podSelector`` only for the pods the selector picks, and ``spec.containerSelector`` narrows those pods
to some of their containers; host processes are outside unless ``hostSelector: {}``. lanner decides this in
the kernel: a scoped hook (``GHF_SCOPED``) runs only when the current task's network namespace inode is in
the ``gen_scope`` map under the policy's id (every process of a pod shares the pod's netns, which the CNI
service learns at ADD) or, for a container scope (``GHF_SCOPED_CG``), when its cgroup v2 id is in
``gen_scope_cg`` (a container's cgroup, learned from the runtime when the container's first process shows).

What a scope selects is decided here, without the kernel; the map entries that carry it there are
sensors/generic/scopes.py's (``WorkloadScopes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .model import LabelSelector, TracingPolicy


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


__all__ = ["Container", "Workload", "WorkloadScope", "describe_selector", "image_repo", "label_selector_matches",
           "scope_of"]
