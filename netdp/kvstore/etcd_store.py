"""Cluster state in etcd: identities, the ipcache and node registrations, shared by every agent.

Key layout under ``<prefix>`` (default ``lanner/``), as Cilium's kvstore mode keeps it:

    identities/labels/<sha256 of the label set>  -> numeric id            (permanent)
    identities/id/<id>                           -> the label set (JSON)  (permanent)
    identities/refs/<id>/<node>                  -> ""                    (this node's lease)
    ipcache/<cidr>                               -> {identity, node, pod} (the owning node's lease)
    nodes/<name>                                 -> {ip, pod_cidr, ...}   (that node's lease)

Identities are allocated with one compare-and-swap transaction that creates both identity keys only
if neither exists, so two agents allocating the same label set at once agree on one id, and two
label sets never share one. Everything a node publishes about itself hangs on its lease: when an
agent dies, etcd expires the lease and every watcher sees the node's entries deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Mapping

from lanner.netdp.endpoint import FIRST_CLUSTER_IDENTITY
from lanner.netdp.kvstore.etcd import EtcdClient, EtcdError, Watch, WatchEvent
from lanner.netdp.kvstore.store import IpcacheEntry, IpcacheListener, NodeInfo, NodeListener

log = logging.getLogger("lanner.netdp.etcd_store")

MAX_IDENTITY = 65535
ALLOCATE_ATTEMPTS = 64


def canonical_labels(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"), sort_keys=True)


def labels_digest(labels: Mapping[str, str]) -> str:
    return hashlib.sha256(canonical_labels(labels).encode()).hexdigest()


class EtcdStore:
    """The cluster backend of netdp's IdentityStore, plus node registrations and change watches."""

    def __init__(self, client: EtcdClient, node_name: str, *, prefix: str = "lanner/", lease_ttl_s: int = 10) -> None:
        if not node_name:
            raise ValueError("EtcdStore: node_name must not be empty")
        self.client = client
        self.node_name = node_name
        self.prefix = prefix.rstrip("/") + "/"
        self.lease_ttl_s = max(2, int(lease_ttl_s))
        self._lock = threading.RLock()
        self._refs: dict[int, int] = {}  # identity -> local reference count
        self._owned: dict[str, bytes] = {}  # keys this node publishes on its lease
        self._ipcache: dict[str, IpcacheEntry] = {}
        self._nodes: dict[str, NodeInfo] = {}
        self._ip_listeners: list[IpcacheListener] = []
        self._node_listeners: list[NodeListener] = []
        self._watches: list[Watch] = []
        self._stop = threading.Event()
        self._lease = client.grant(self.lease_ttl_s)
        self._keeper = threading.Thread(target=self._keep_alive, name="etcd-lease", daemon=True)
        self._keeper.start()
        self._start_watches()

    # -- keys -------------------------------------------------------------------------------------
    def _k(self, *parts: object) -> str:
        return self.prefix + "/".join(str(p) for p in parts)

    # -- identities (IdentityStore) ---------------------------------------------------------------
    def allocate(self, labels: Mapping[str, str]) -> int:
        """The cluster-wide id of this label set, allocating it if no agent has yet."""
        digest = labels_digest(labels)
        identity = self._lookup_or_create(digest, canonical_labels(labels))
        with self._lock:
            self._refs[identity] = self._refs.get(identity, 0) + 1
            if self._refs[identity] == 1:
                self._publish(self._k("identities", "refs", identity, self.node_name), b"")
        return identity

    def _lookup_or_create(self, digest: str, canon: str) -> int:
        label_key = self._k("identities", "labels", digest)
        for _ in range(ALLOCATE_ATTEMPTS):
            kv = self.client.get(label_key)
            if kv is not None:
                return int(kv.value)
            used, _rev = self.client.get_prefix(self._k("identities", "id") + "/")
            taken = {int(k.key.rsplit("/", 1)[1]) for k in used}
            candidate = next((i for i in range(max(taken, default=FIRST_CLUSTER_IDENTITY - 1) + 1, MAX_IDENTITY + 1)
                              if i not in taken), None)
            if candidate is None:
                candidate = next((i for i in range(FIRST_CLUSTER_IDENTITY, MAX_IDENTITY + 1) if i not in taken), None)
            if candidate is None:
                raise EtcdError(f"identity space {FIRST_CLUSTER_IDENTITY}..{MAX_IDENTITY} is exhausted")
            if self.client.create_all({label_key: str(candidate), self._k("identities", "id", candidate): canon}):
                log.info("allocated identity %d for %s", candidate, canon)
                return candidate
            # Lost a race: either another agent created this label set (the next read returns its id)
            # or took the candidate id for another label set (the next read picks a higher one).
        raise EtcdError(f"could not allocate an identity for {canon} after {ALLOCATE_ATTEMPTS} attempts")

    def release(self, labels: Mapping[str, str]) -> None:
        kv = self.client.get(self._k("identities", "labels", labels_digest(labels)))
        if kv is None:
            return
        identity = int(kv.value)
        with self._lock:
            n = self._refs.get(identity, 0) - 1
            if n > 0:
                self._refs[identity] = n
                return
            self._refs.pop(identity, None)
            self._unpublish(self._k("identities", "refs", identity, self.node_name))

    def labels_of(self, identity: int) -> dict[str, str] | None:
        kv = self.client.get(self._k("identities", "id", identity))
        return json.loads(kv.value) if kv is not None else None

    def identities(self) -> dict[int, dict[str, str]]:
        kvs, _rev = self.client.get_prefix(self._k("identities", "id") + "/")
        return {int(kv.key.rsplit("/", 1)[1]): json.loads(kv.value) for kv in kvs}

    # -- ipcache (IdentityStore) ------------------------------------------------------------------
    def upsert_ip(self, cidr: str, identity: int, pod: Mapping[str, object] | None = None) -> None:
        doc = {"identity": int(identity), "node": self.node_name}
        if pod is not None:
            doc["pod"] = dict(pod)
        self._publish(self._k("ipcache", cidr.replace("/", "_")), json.dumps(doc).encode())

    def delete_ip(self, cidr: str) -> None:
        self._unpublish(self._k("ipcache", cidr.replace("/", "_")))

    def ipcache(self) -> dict[str, int]:
        with self._lock:
            return {cidr: e.identity for cidr, e in self._ipcache.items()}

    def ipcache_entries(self) -> dict[str, IpcacheEntry]:
        with self._lock:
            return dict(self._ipcache)

    # -- nodes ------------------------------------------------------------------------------------
    def register_node(self, ip: str, pod_cidr: str, **extra: str) -> None:
        doc = {"ip": ip, "pod_cidr": pod_cidr, **extra}
        self._publish(self._k("nodes", self.node_name), json.dumps(doc).encode())

    def nodes(self) -> dict[str, NodeInfo]:
        with self._lock:
            return dict(self._nodes)

    def describe(self) -> str:
        return f"etcd {self.client.endpoint}"

    # -- change notification ----------------------------------------------------------------------
    def subscribe(self, on_ipcache: IpcacheListener | None = None, on_node: NodeListener | None = None) -> None:
        """Call the listeners for every current entry, then for every change (from a watch thread)."""
        with self._lock:
            if on_ipcache:
                self._ip_listeners.append(on_ipcache)
                for cidr, e in self._ipcache.items():
                    on_ipcache(cidr, e)
            if on_node:
                self._node_listeners.append(on_node)
                for name, n in self._nodes.items():
                    on_node(name, n)

    def _start_watches(self) -> None:
        ip_prefix = self._k("ipcache") + "/"
        node_prefix = self._k("nodes") + "/"
        kvs, rev = self.client.get_prefix(ip_prefix)
        for kv in kvs:
            self._on_ipcache(WatchEvent("PUT", kv.key, kv.value, kv.mod_revision))
        nkvs, nrev = self.client.get_prefix(node_prefix)
        for kv in nkvs:
            self._on_node(WatchEvent("PUT", kv.key, kv.value, kv.mod_revision))
        self._watches.append(self.client.watch_prefix(ip_prefix, rev + 1, lambda evs: [self._on_ipcache(e) for e in evs]))
        self._watches.append(self.client.watch_prefix(node_prefix, nrev + 1, lambda evs: [self._on_node(e) for e in evs]))
        for w in self._watches:
            w.ready.wait(5)

    def _on_ipcache(self, ev: WatchEvent) -> None:
        cidr = ev.key.rsplit("/", 1)[1].replace("_", "/")
        entry = None
        if ev.kind != "DELETE":
            doc = json.loads(ev.value)
            entry = IpcacheEntry(cidr=cidr, identity=int(doc["identity"]), node=doc.get("node", ""), pod=doc.get("pod"))
        with self._lock:
            if entry is None:
                self._ipcache.pop(cidr, None)
            else:
                self._ipcache[cidr] = entry
            listeners = list(self._ip_listeners)
        for fn in listeners:
            fn(cidr, entry)

    def _on_node(self, ev: WatchEvent) -> None:
        name = ev.key.rsplit("/", 1)[1]
        info = None
        if ev.kind != "DELETE":
            doc = json.loads(ev.value)
            extra = {k: str(v) for k, v in doc.items() if k not in ("ip", "pod_cidr")}
            info = NodeInfo(name=name, ip=doc["ip"], pod_cidr=doc["pod_cidr"], extra=extra)
        with self._lock:
            if info is None:
                self._nodes.pop(name, None)
            else:
                self._nodes[name] = info
            listeners = list(self._node_listeners)
        for fn in listeners:
            fn(name, info)

    # -- the lease --------------------------------------------------------------------------------
    def _publish(self, key: str, value: bytes) -> None:
        with self._lock:
            self._owned[key] = value
            lease = self._lease
        self.client.put(key, value, lease=lease)

    def _unpublish(self, key: str) -> None:
        with self._lock:
            self._owned.pop(key, None)
        self.client.delete(key)

    def _keep_alive(self) -> None:
        period = self.lease_ttl_s / 3
        while not self._stop.wait(period):
            try:
                if self.client.keepalive(self._lease) > 0:
                    continue
                # The lease expired (etcd unreachable for longer than the TTL): take a new one and
                # publish everything again, so this node reappears for the others.
                with self._lock:
                    self._lease = self.client.grant(self.lease_ttl_s)
                    owned = dict(self._owned)
                log.warning("etcd lease expired; re-published %d keys on a new lease", len(owned))
                for key, value in owned.items():
                    self.client.put(key, value, lease=self._lease)
            except EtcdError as exc:
                log.warning("etcd keep-alive: %s", exc)

    def close(self, revoke: bool = True) -> None:
        """Stop watching; with ``revoke`` (a clean shutdown) drop this node's entries at once."""
        self._stop.set()
        for w in self._watches:
            w.close()
        self._keeper.join(timeout=2)
        if revoke:
            try:
                self.client.revoke(self._lease)
            except EtcdError as exc:
                log.warning("etcd revoke: %s", exc)
