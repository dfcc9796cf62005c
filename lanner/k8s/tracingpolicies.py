"""TracingPolicy and TracingPolicyNamespaced objects from the API, applied to this node's policy engine.

The engine keys policies by (name, namespace): a cluster-scoped TracingPolicy has namespace "", so it
coexists with TracingPolicyNamespaced objects of the same name, and those with each other across
namespaces. An object is (re)loaded when it is new or its ``metadata.generation`` changed (a spec
edit); a label or annotation edit leaves the generation and the loaded programs alone. A policy whose
``spec.nodeSelector`` does not select this node's labels is not loaded and listed as ``skipped``; a
Node relabel loads or unloads it. Until this node's Node object has been read, policies with a
nodeSelector wait (so they are not loaded only to be unloaded). A policy the engine refuses is listed
as ``load_error`` with the reason; refusals, partial loads and skips are also reported as Events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import yaml

from .reflector import ADDED, DELETED, MODIFIED, SYNCED, Change

log = logging.getLogger("lanner.k8s")

Key = tuple[str, str]  # (name, namespace) as the engine keys policies; namespace "" for TracingPolicy


@dataclass(frozen=True)
class PolicyControllerContext:
    node_name: str
    engine: Callable[[], Any]  # the policy engine (made on first need)
    report: Callable[[dict, bool, str, str], Any]  # (object, warning, reason, message): an Event


@dataclass
class _Entry:
    obj: dict
    generation: int
    state: str  # loaded, skipped, refused, waiting
    reason: str = ""


@dataclass
class PolicyStats:
    loads: int = 0
    unloads: int = 0
    skips: int = 0
    refusals: int = 0
    unchanged: int = 0  # edits that left metadata.generation alone (labels, annotations)


@dataclass
class _NodeView:
    labels: dict[str, str] = field(default_factory=dict)
    known: bool = False  # the Node has been listed (it may not exist: then no labels)


def key_of(obj: dict) -> Key:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or "" if obj.get("kind") == "TracingPolicyNamespaced" else ""
    return str(meta.get("name", "")), ns


def source_of(obj: dict) -> str:
    name, ns = key_of(obj)
    return f"k8s:{obj.get('kind', 'TracingPolicy')}/{ns + '/' if ns else ''}{name}"


def selector_matches(sel: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics on the raw object; None or {} selects every node."""
    if not sel:
        return True
    if any(labels.get(k) != v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    for r in sel.get("matchExpressions") or []:
        key, op, values = r.get("key", ""), r.get("operator", ""), r.get("values") or []
        present = key in labels
        ok = {"In": present and labels.get(key) in values, "NotIn": not present or labels.get(key) not in values,
              "Exists": present, "DoesNotExist": not present}.get(op, False)
        if not ok:
            return False
    return True


def to_yaml(obj: dict) -> str:
    """The policy document the engine reads: kind, name, namespace and spec of the API object."""
    meta = obj.get("metadata") or {}
    name, ns = key_of(obj)
    doc: dict[str, Any] = {"apiVersion": obj.get("apiVersion", "cilium.io/v1alpha1"),
                           "kind": obj.get("kind", "TracingPolicy"), "metadata": {"name": name}, "spec": obj.get("spec") or {}}
    if ns:
        doc["metadata"]["namespace"] = ns
    if meta.get("labels"):
        doc["metadata"]["labels"] = dict(meta["labels"])
    return yaml.safe_dump(doc, sort_keys=False)


class PolicyController:
    """Applies changes from the TracingPolicy(Namespaced) reflectors and this node's Node reflector."""

    def __init__(self, ctx: PolicyControllerContext) -> None:
        self.ctx = ctx
        self.stats = PolicyStats()
        self._entries: dict[Key, _Entry] = {}
        self._node = _NodeView()

    # ------------------------------------------------------------------ changes
    def on_policy(self, change: Change) -> None:
        if change.type == SYNCED:
            return
        key = key_of(change.obj)
        if change.type == DELETED:
            self._remove(key, change.obj)
        elif change.type in (ADDED, MODIFIED):
            self._apply(key, change.obj)

    def on_node(self, change: Change) -> None:
        if change.type == SYNCED:
            first = not self._node.known
            self._node.known = True
            if first:
                self._reevaluate()
            return
        labels = {} if change.type == DELETED else dict((change.obj.get("metadata") or {}).get("labels") or {})
        if labels != self._node.labels:
            self._node.labels = labels
            if self._node.known:
                self._reevaluate()

    def _reevaluate(self) -> None:
        for key, e in list(self._entries.items()):
            if (e.obj.get("spec") or {}).get("nodeSelector") is not None:
                self._apply(key, e.obj, force=False)

    # ------------------------------------------------------------------ one policy
    def _apply(self, key: Key, obj: dict, force: bool = False) -> None:
        gen = int((obj.get("metadata") or {}).get("generation") or 0)
        old = self._entries.get(key)
        sel = (obj.get("spec") or {}).get("nodeSelector")
        if sel is not None and not self._node.known:
            self._entries[key] = _Entry(obj, gen, "waiting", "waiting for this node's labels")
            return
        want = selector_matches(sel, self._node.labels)
        if old is not None and old.generation == gen and (old.state != "skipped") == want \
                and old.state not in ("waiting",):
            old.obj = obj  # labels/annotations only: nothing to reload
            self.stats.unchanged += 1
            return
        if old is not None and old.state == "loaded":
            self._unload(key)
        if not want:
            why = f"spec.nodeSelector does not select node {self.ctx.node_name}"
            self._entries[key] = _Entry(obj, gen, "skipped", why)
            self.stats.skips += 1
            log.info("tracing policy %s: skipped on this node (%s)", source_of(obj), why)
            self.ctx.report(obj, False, "PolicySkipped", why)
            return
        self._load(key, obj, gen)

    def _load(self, key: Key, obj: dict, gen: int) -> None:
        engine = self.ctx.engine()
        source = source_of(obj)
        try:
            engine.add(to_yaml(obj), source=source)
        except (ValueError, OSError) as exc:
            reason = str(exc).split("\n", 1)[0]
            self._entries[key] = _Entry(obj, gen, "refused", reason)
            self.stats.refusals += 1
            log.warning("tracing policy %s not loaded: %s", source, reason)
            self.ctx.report(obj, True, "PolicyLoadError", reason)
            return
        self._entries[key] = _Entry(obj, gen, "loaded")
        self.stats.loads += 1
        log.info("tracing policy %s loaded (generation %d)", source, gen)
        for bad in engine.problems(source=source):
            reason = "PolicyLoadError" if bad["state"] == "load_error" else "PolicyPartiallyEnabled"
            self.ctx.report(obj, True, reason, f"{bad['state']}: {bad['error']}")

    def _unload(self, key: Key) -> None:
        try:
            self.ctx.engine().delete(*key)
            self.stats.unloads += 1
        except KeyError:  # deleted through the gRPC API meanwhile
            pass

    def _remove(self, key: Key, obj: dict) -> None:
        e = self._entries.pop(key, None)
        if e is not None and e.state == "loaded":
            self._unload(key)
            log.info("tracing policy %s unloaded (deleted from the API)", source_of(obj))

    # ------------------------------------------------------------------ status
    def statuses(self) -> list[Any]:
        """TracingPolicyStatus of the policies the engine does not hold: skipped, refused, waiting."""
        from lanner.exporter.api.gen.tetragon import sensors_pb2

        state = {"skipped": sensors_pb2.TP_STATE_SKIPPED, "refused": sensors_pb2.TP_STATE_LOAD_ERROR,
                 "waiting": sensors_pb2.TP_STATE_LOADING}
        out = []
        for (name, ns), e in list(self._entries.items()):
            if e.state in state:
                out.append(sensors_pb2.TracingPolicyStatus(
                    name=name, namespace=ns, state=state[e.state], error=e.reason if e.state == "refused" else "",
                    info=f"from the Kubernetes API ({e.obj.get('kind')}, generation {e.generation}): "
                         f"{'not loaded: ' if e.state == 'refused' else ''}{e.reason}"))
        return out

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in list(self._entries.values()):
            out[e.state] = out.get(e.state, 0) + 1
        return out
