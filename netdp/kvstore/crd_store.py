"""Cluster state as Kubernetes objects (``--kvstore crd``): identities, the ipcache and node registrations.

Objects (install/kubernetes/lanner-crds.yaml, group lanner.io, all cluster-scoped):

    LannerIdentity  "<id>"                  spec {identity, labels}   the number, reserved by creating it by name
    LannerIdentity  "l-<sha224>"            spec {identity, labels}   the label set's claim on one number
    LannerEndpoint  "<node>.<ip>-<prefix>"  spec {cidr, identity, node, pod}   one ipcache entry
    LannerNode      "<node>"                spec {ip, podCIDR, leaseTTLSeconds, renewTime, extra}   a node

Allocation is two creates by name, each refused with 409 when the name is taken: first the lowest number
not in use (taken: try the next), then the claim named by the label set's digest. A claim that already
exists wins: its number is the label set's, and the number just reserved is deleted again. So two agents
allocating the same labels at once agree (one claim can exist), and two label sets never share a number
(one object per number). Identities are permanent, as the etcd backend's are (``release`` keeps them).

Each agent lists and watches LannerNodes and LannerEndpoints with the reflector (lanner/k8s/reflector.py)
and applies the changes on one worker thread. Its own LannerNode is renewed every TTL/3; a node not
renewed within its TTL, measured on this agent's monotonic clock from the watch (crd_liveness.py), is gone:
its routes and ipcache entries leave this node's view at once, and its objects are deleted (any agent may
collect them; a delete carries the object's resourceVersion or uid as a precondition, so a node that came
back is not deleted). A clean stop deletes this node's objects (``close(revoke=True)``). Endpoints of a
node not (or no longer) registered are not in the view. A node whose LannerNode was collected while it
was cut off re-creates it and its endpoints at its next renewal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from datetime import datetime, timezone
from typing import Any, Mapping

from lanner.netdp.endpoint import FIRST_CLUSTER_IDENTITY
from lanner.netdp.identity import LAST_CLUSTER_IDENTITY, IdentityError
from lanner.netdp.kvstore.crd_liveness import NodeLiveness
from lanner.netdp.kvstore.store import IpcacheEntry, IpcacheListener, NodeInfo, NodeListener

log = logging.getLogger("lanner.netdp.crd_store")

GROUP, VERSION = "lanner.io", "v1alpha1"
IDENTITIES, ENDPOINTS, NODES = "lanneridentities", "lannerendpoints", "lannernodes"
KINDS = {IDENTITIES: "LannerIdentity", ENDPOINTS: "LannerEndpoint", NODES: "LannerNode"}
KIND_LABEL = "lanner.io/kind"  # "id", "claim", "endpoint" or "node"
NODE_LABEL = "lanner.io/node"  # on endpoints: the owning node (kubectl get lannerendpoints -l lanner.io/node=N)
ATTEMPTS = 64
TIMEOUT = (5, 15)


def claim_name(labels: Mapping[str, str]) -> str:
    canon = json.dumps(dict(sorted(labels.items())), separators=(",", ":"), sort_keys=True)
    return "l-" + hashlib.sha224(canon.encode()).hexdigest()


def endpoint_name(node: str, cidr: str) -> str:
    return f"{node}.{cidr.replace('/', '-')}".lower()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _entry(obj: dict) -> IpcacheEntry:
    spec = obj.get("spec") or {}
    return IpcacheEntry(cidr=str(spec["cidr"]), identity=int(spec["identity"]), node=str(spec.get("node", "")),
                        pod=spec.get("pod"))


def _node_info(obj: dict) -> NodeInfo:
    spec = obj.get("spec") or {}
    extra = {str(k): str(v) for k, v in (spec.get("extra") or {}).items()}
    return NodeInfo(name=obj["metadata"]["name"], ip=str(spec.get("ip", "")), pod_cidr=str(spec.get("podCIDR", "")),
                    extra=extra)


class CrdStore:
    """The cluster store over the Kubernetes API (``api``: a kubernetes ApiClient, closed with the store).

    ``watch=False`` gives the identity and object calls only (no view of other nodes, no heartbeat)."""

    def __init__(self, api: Any, node_name: str, *, lease_ttl_s: int = 10, watch: bool = True,
                 sync_timeout_s: float = 30.0) -> None:
        from kubernetes import client

        if not node_name:
            raise ValueError("CrdStore: node_name must not be empty")
        self.api = api
        self.objects = client.CustomObjectsApi(api)
        self.node = node_name
        self.lease_ttl_s = max(2, int(lease_ttl_s))
        self._lock = threading.RLock()
        self._ids: dict[int, dict[str, str]] = {}  # claimed identities known here (permanent)
        self._own: dict[str, IpcacheEntry] = {}  # this node's ipcache entries, as written
        self._remote: dict[str, dict[str, IpcacheEntry]] = {}  # cidr -> node -> entry, from the watch
        self._ep_meta: dict[str, tuple[str, str]] = {}  # endpoint object name -> (node, uid)
        self._view: dict[str, IpcacheEntry] = {}
        self._node_objs: dict[str, dict] = {}  # every LannerNode in the watch
        self._alive: dict[str, NodeInfo] = {}
        self._liveness = NodeLiveness(node_name)
        self._ip_listeners: list[IpcacheListener] = []
        self._node_listeners: list[NodeListener] = []
        self._node_obj: dict | None = None  # our LannerNode as last written
        self._stop = threading.Event()
        self._changes: queue.Queue = queue.Queue()
        self._reflectors: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._synced: set[str] = set()
        self._ready = threading.Event()
        self.stats = {"expired_nodes": 0, "collected_objects": 0, "renewals": 0, "renew_errors": 0}
        if watch:
            self._start_watches(sync_timeout_s)

    def describe(self) -> str:
        return f"crd {getattr(self.api.configuration, 'host', '?')}"

    # ------------------------------------------------------------------ identities
    def allocate(self, labels: Mapping[str, str]) -> int:
        labels = dict(labels)
        claim = claim_name(labels)
        for _ in range(ATTEMPTS):
            existing = self._get(IDENTITIES, claim)
            if existing is not None:
                number = int(existing["spec"]["identity"])
                break
            number = self._reserve(labels)
            if self._create(IDENTITIES, claim, {KIND_LABEL: "claim"}, {"identity": number, "labels": labels}):
                break
            self._delete(IDENTITIES, str(number))  # another agent claimed the label set meanwhile
        else:
            raise IdentityError(f"no identity for {labels} after {ATTEMPTS} attempts (the API server keeps refusing)")
        with self._lock:
            self._ids[number] = labels
        return number

    def _reserve(self, labels: dict[str, str]) -> int:
        """Create the lowest free "<id>" object; another agent taking it first (409) moves to the next."""
        taken = set(self._numbers())
        number = FIRST_CLUSTER_IDENTITY
        while number <= LAST_CLUSTER_IDENTITY:
            if number not in taken:
                if self._create(IDENTITIES, str(number), {KIND_LABEL: "id"}, {"identity": number, "labels": labels}):
                    return number
                taken.add(number)
            number += 1
        raise IdentityError(f"identities {FIRST_CLUSTER_IDENTITY}..{LAST_CLUSTER_IDENTITY} are all taken")

    def release(self, labels: Mapping[str, str]) -> None:
        """Identities are permanent (as with the etcd backend): other nodes' endpoints may still use it."""

    def labels_of(self, identity: int) -> dict[str, str] | None:
        with self._lock:
            if identity in self._ids:
                return dict(self._ids[identity])
        obj = self._get(IDENTITIES, str(identity))
        return dict(obj["spec"].get("labels") or {}) if obj is not None else None

    def identities(self) -> dict[int, dict[str, str]]:
        """The identities this node knows: its own allocations and every one the ipcache view uses (read
        once each: identities never change)."""
        with self._lock:
            missing = {e.identity for e in self._view.values()} - set(self._ids)
        for number in sorted(missing):
            try:
                labels = self.labels_of(number)
            except IdentityError as exc:
                log.warning("identity %d: %s (retried at the next sync)", number, exc)
                continue
            if labels is not None:
                with self._lock:
                    self._ids[number] = labels
        with self._lock:
            return {k: dict(v) for k, v in self._ids.items()}

    def claimed_identities(self) -> dict[int, dict[str, str]]:
        """Every claimed identity in the API and its labels (a list; a number reserved but never claimed is not one)."""
        return {int(o["spec"]["identity"]): dict(o["spec"].get("labels") or {})
                for o in self._list(IDENTITIES, f"{KIND_LABEL}=claim")}

    def _numbers(self) -> list[int]:
        return [int(o["metadata"]["name"]) for o in self._list(IDENTITIES, f"{KIND_LABEL}=id")]

    # ------------------------------------------------------------------ ipcache
    def upsert_ip(self, cidr: str, identity: int, pod: Mapping[str, object] | None = None) -> None:
        entry = IpcacheEntry(cidr=cidr, identity=int(identity), node=self.node, pod=dict(pod) if pod else None)
        with self._lock:
            if self._own.get(cidr) == entry:
                return  # written already (the CNI service, the datapath and ClusterNode each upsert a pod's IP)
        self._write_endpoint(entry)
        with self._lock:
            self._own[cidr] = entry
            changes = self._refresh([cidr])
        self._notify_ip(changes)

    def _write_endpoint(self, entry: IpcacheEntry) -> None:
        name = endpoint_name(self.node, entry.cidr)
        spec: dict[str, Any] = {"cidr": entry.cidr, "identity": entry.identity, "node": self.node}
        if entry.pod is not None:
            spec["pod"] = dict(entry.pod)
        labels = {KIND_LABEL: "endpoint", **({NODE_LABEL: self.node} if len(self.node) <= 63 else {})}
        if not self._create(ENDPOINTS, name, labels, spec):  # ours already: replace it (RBAC: update)
            obj = self._get(ENDPOINTS, name)
            if obj is None:
                raise IdentityError(f"{ENDPOINTS}/{name}: deleted while being updated")
            obj["spec"] = spec
            self._replace(ENDPOINTS, name, obj)

    def delete_ip(self, cidr: str) -> None:
        with self._lock:  # first: the watch's DELETED of an entry still ours would re-create it
            self._own.pop(cidr, None)
            changes = self._refresh([cidr])
        self._notify_ip(changes)
        self._delete(ENDPOINTS, endpoint_name(self.node, cidr))

    def ipcache(self) -> dict[str, int]:
        with self._lock:
            return {cidr: e.identity for cidr, e in self._view.items()}

    def ipcache_entries(self) -> dict[str, IpcacheEntry]:
        with self._lock:
            return dict(self._view)

    def _resolve(self, cidr: str) -> IpcacheEntry | None:
        """The view's entry for ``cidr``: this node's own, else one of a live node (the first by name)."""
        own = self._own.get(cidr)
        if own is not None:
            return own
        by_node = self._remote.get(cidr, {})
        return next((by_node[n] for n in sorted(by_node) if n != self.node and n in self._alive), None)

    def _refresh(self, cidrs: Any) -> list[tuple[str, IpcacheEntry | None]]:
        """Re-resolve ``cidrs`` (under the lock); the view's changes, for the listeners."""
        out = []
        for cidr in cidrs:
            new, old = self._resolve(cidr), self._view.get(cidr)
            if new == old:
                continue
            if new is None:
                del self._view[cidr]
            else:
                self._view[cidr] = new
            out.append((cidr, new))
        return out

    # ------------------------------------------------------------------ nodes
    def register_node(self, ip: str, pod_cidr: str, **extra: str) -> None:
        """Create (or take over) this node's LannerNode, then renew it every TTL/3 until ``close``."""
        spec = {"ip": ip, "podCIDR": pod_cidr, "leaseTTLSeconds": self.lease_ttl_s, "renewTime": _now(),
                "extra": {k: str(v) for k, v in extra.items()}}
        if self._create(NODES, self.node, {KIND_LABEL: "node"}, spec):
            obj = self._get(NODES, self.node)
        else:  # left by this node's previous run (or a second agent under one name: the last one wins)
            obj = self._get(NODES, self.node) or {}
            obj.update(spec=spec)
            obj = self._replace(NODES, self.node, obj)
        with self._lock:
            self._node_obj = obj
        if not any(t.name == "lanner-crd-renew" for t in self._threads):
            t = threading.Thread(target=self._renew_loop, name="lanner-crd-renew", daemon=True)
            t.start()
            self._threads.append(t)

    def nodes(self) -> dict[str, NodeInfo]:
        with self._lock:
            return dict(self._alive)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_ttl_s / 3):
            try:
                self._renew()
                self.stats["renewals"] += 1
            except Exception as exc:  # the API server away: the next period tries again
                self.stats["renew_errors"] += 1
                log.warning("renewing LannerNode %s: %s", self.node, exc)

    def _renew(self) -> None:
        from kubernetes.client.exceptions import ApiException

        with self._lock:
            obj = json.loads(json.dumps(self._node_obj))
        obj["spec"]["renewTime"] = _now()
        try:
            new = self._replace(NODES, self.node, obj, raw=True)
        except ApiException as exc:
            if exc.status == 409:  # our last write is not the newest version (someone edited it): take theirs
                current = self._get(NODES, self.node) or obj
                current["spec"] = obj["spec"]
                new = self._replace(NODES, self.node, current)
            elif exc.status == 404:  # collected while this node was cut off: come back with everything
                new = self._reregister(obj["spec"])
            else:
                raise IdentityError(f"{NODES}/{self.node}: HTTP {exc.status} {exc.reason}") from None
        with self._lock:
            self._node_obj = new

    def _reregister(self, spec: dict) -> dict:
        log.warning("LannerNode %s was deleted (another node took it for dead): re-creating it and its endpoints",
                    self.node)
        self._create(NODES, self.node, {KIND_LABEL: "node"}, spec)
        with self._lock:
            own = list(self._own.values())
        for entry in own:
            self._write_endpoint(entry)
        return self._get(NODES, self.node) or {"metadata": {"name": self.node}, "spec": spec}

    # ------------------------------------------------------------------ watches
    def _start_watches(self, timeout_s: float) -> None:
        from lanner.k8s.reflector import Reflector, ReflectorContext, Resource

        for plural in (NODES, ENDPOINTS):
            ctx = ReflectorContext(self.api, Resource(plural, f"/apis/{GROUP}/{VERSION}/{plural}"), self._changes.put,
                                   missing_poll_s=1.0, backoff_s=(0.2, 5.0))
            self._reflectors.append(Reflector(ctx))
            self._reflectors[-1].start()
        worker = threading.Thread(target=self._work, name="lanner-crd-store", daemon=True)
        worker.start()
        self._threads.append(worker)
        if self._ready.wait(timeout_s):
            return
        states = "; ".join(f"{r.ctx.resource.name} {r.stats.state}" + (f" ({r.stats.last_error})" if r.stats.last_error
                                                                       else "") for r in self._reflectors)
        self.close(revoke=False)
        raise IdentityError(f"{self.describe()}: lanner.io objects not listed within {timeout_s:.0f} s ({states}); "
                            "are the CRDs installed (kubectl apply -f install/kubernetes/lanner-crds.yaml) and the "
                            "agent's ClusterRole bound (install/kubernetes/clusterrole.yaml)?")

    def _work(self) -> None:
        """Apply the watches' changes in order, and expire silent nodes, on this one thread."""
        tick = min(0.5, self.lease_ttl_s / 6)
        while not self._stop.is_set():
            try:
                change = self._changes.get(timeout=tick)
            except queue.Empty:
                change = None
            try:
                if change is not None:
                    self._apply(change)
                self._expire()
            except Exception:  # a malformed object must not stop the store
                log.exception("applying %s", change)

    def _apply(self, change: Any) -> None:
        if change.type == "SYNCED":
            self._synced.add(change.resource)
            if self._synced >= {NODES, ENDPOINTS}:
                self._ready.set()
        elif change.resource == NODES:
            self._on_node(change.type, change.obj)
        else:
            self._on_endpoint(change.type, change.obj)

    def _on_endpoint(self, kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        entry = _entry(obj)
        with self._lock:
            by_node = self._remote.setdefault(entry.cidr, {})
            if kind == "DELETED":
                by_node.pop(entry.node, None)
                self._ep_meta.pop(name, None)
                if not by_node:
                    del self._remote[entry.cidr]
            else:
                by_node[entry.node] = entry
                self._ep_meta[name] = (entry.node, str(obj["metadata"].get("uid", "")))
            changes = self._refresh([entry.cidr])
            lost = self._own.get(entry.cidr) if kind == "DELETED" and entry.node == self.node else None
        self._notify_ip(changes)
        if lost is not None and not self._stop.is_set():  # deleted by someone else: still ours, so again
            log.warning("LannerEndpoint %s was deleted while this node still has it: re-creating it", name)
            self._write_endpoint(lost)

    def _on_node(self, kind: str, obj: dict) -> None:
        info = _node_info(obj)
        name, rv = info.name, str(obj["metadata"].get("resourceVersion", ""))
        with self._lock:
            if kind == "DELETED":
                self._node_objs.pop(name, None)
                self._liveness.forget(name)
                gone = self._alive.pop(name, None) is not None
                node_change = (name, None) if gone else None
            else:
                self._node_objs[name] = obj
                ttl = float((obj.get("spec") or {}).get("leaseTTLSeconds") or self.lease_ttl_s)
                fresh = self._liveness.saw(name, rv, ttl)
                node_change = (name, info) if fresh and self._alive.get(name) != info else None
                if fresh:
                    self._alive[name] = info
            changes = self._refresh(self._cidrs_of(name)) if node_change else []
        if node_change:
            self._notify_node(*node_change)
        self._notify_ip(changes)

    def _cidrs_of(self, node: str) -> list[str]:
        return [cidr for cidr, by_node in self._remote.items() if node in by_node]

    # ------------------------------------------------------------------ expiry
    def _expire(self) -> None:
        with self._lock:
            dead = self._liveness.expired()
            collect = []
            for name in dead:
                log.warning("node %s: not renewed for %.1f s (its TTL): gone; its routes and ipcache entries are "
                            "dropped and its objects deleted", name, self._liveness.silent_for(name) or 0)
                self._liveness.forget(name)
                self._alive.pop(name, None)
                obj = self._node_objs.get(name) or {}
                collect.append((name, str((obj.get("metadata") or {}).get("resourceVersion", "")),
                                [(ep, uid) for ep, (n, uid) in self._ep_meta.items() if n == name]))
            changes = [c for name in dead for c in self._refresh(self._cidrs_of(name))]
        for name in dead:
            self.stats["expired_nodes"] += 1
            self._notify_node(name, None)
        self._notify_ip(changes)
        for name, rv, endpoints in collect:
            self._collect(name, rv, endpoints)

    def _collect(self, node: str, node_rv: str, endpoints: list[tuple[str, str]]) -> None:
        """Delete a dead node's endpoints (by uid) and its LannerNode (only the version seen dead)."""
        try:
            for ep, uid in endpoints:
                self._delete(ENDPOINTS, ep, uid=uid)
            self._delete(NODES, node, resource_version=node_rv)
            self.stats["collected_objects"] += len(endpoints) + 1
        except IdentityError as exc:  # another agent collected first, or the node came back: both fine
            log.info("collecting node %s's objects: %s", node, exc)

    # ------------------------------------------------------------------ listeners
    def subscribe(self, on_ipcache: IpcacheListener | None = None, on_node: NodeListener | None = None) -> None:
        """Call the listeners for every current entry, then for every change (from the store's threads)."""
        with self._lock:
            if on_ipcache:
                self._ip_listeners.append(on_ipcache)
                for cidr, e in self._view.items():
                    on_ipcache(cidr, e)
            if on_node:
                self._node_listeners.append(on_node)
                for name, n in self._alive.items():
                    on_node(name, n)

    def _notify_ip(self, changes: list[tuple[str, IpcacheEntry | None]]) -> None:
        for cidr, entry in changes:
            for fn in list(self._ip_listeners):
                fn(cidr, entry)

    def _notify_node(self, name: str, info: NodeInfo | None) -> None:
        for fn in list(self._node_listeners):
            fn(name, info)

    def close(self, revoke: bool = True) -> None:
        """Stop renewing and watching; with ``revoke`` (a clean stop) delete this node's objects at once."""
        self._stop.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
        if revoke and self._node_obj is not None:
            try:
                self._revoke()
            except IdentityError as exc:
                log.warning("deleting this node's objects: %s", exc)
        for r in self._reflectors:
            r.close()
        self._reflectors.clear()
        self.api.close()

    def _revoke(self) -> None:
        with self._lock:
            names = {endpoint_name(self.node, c) for c in self._own}
            names |= {ep for ep, (n, _uid) in self._ep_meta.items() if n == self.node}
        for name in sorted(names):
            self._delete(ENDPOINTS, name)
        self._delete(NODES, self.node)
        self._node_obj = None

    # ------------------------------------------------------------------ the API
    def _create(self, plural: str, name: str, labels: dict[str, str], spec: dict[str, Any]) -> bool:
        """Create by name; False when the name is taken (409)."""
        from kubernetes.client.exceptions import ApiException

        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KINDS[plural], "metadata": {"name": name, "labels": labels},
                "spec": spec}
        try:
            self.objects.create_cluster_custom_object(GROUP, VERSION, plural, body, _request_timeout=TIMEOUT)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise IdentityError(f"{plural}/{name}: HTTP {exc.status} {exc.reason}") from None

    def _replace(self, plural: str, name: str, obj: dict, raw: bool = False) -> dict:
        """Update (the object's resourceVersion is the precondition); ``raw``: ApiException passes through."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.objects.replace_cluster_custom_object(GROUP, VERSION, plural, name, obj,
                                                              _request_timeout=TIMEOUT)
        except ApiException as exc:
            if raw:
                raise
            raise IdentityError(f"{plural}/{name}: HTTP {exc.status} {exc.reason}") from None

    def _get(self, plural: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.objects.get_cluster_custom_object(GROUP, VERSION, plural, name, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise IdentityError(f"{plural}/{name}: HTTP {exc.status} {exc.reason}") from None

    def _delete(self, plural: str, name: str, uid: str = "", resource_version: str = "") -> None:
        """Delete; 404 is fine. ``uid``/``resource_version``: only that object (a 409 then means it changed)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        body = None
        if uid or resource_version:
            body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid or None,
                                                                               resource_version=resource_version or None))
        try:
            self.objects.delete_cluster_custom_object(GROUP, VERSION, plural, name, body=body, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise IdentityError(f"{plural}/{name}: HTTP {exc.status} {exc.reason}") from None

    def _list(self, plural: str, selector: str) -> list[dict]:
        out = self.objects.list_cluster_custom_object(GROUP, VERSION, plural, label_selector=selector,
                                                      _request_timeout=TIMEOUT)
        return list(out.get("items") or [])
