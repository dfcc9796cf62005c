"""Cluster mode: this node's part of a multi-node netdp, with its state in etcd or in Kubernetes objects.

``ClusterNode`` joins the pieces the single-node runtime does not have:

- the cluster store (``kvstore.store.open_store``: ``EtcdStore`` for ``--kvstore etcd``, ``CrdStore`` for
  ``--kvstore crd``): identities every node agrees on, the cluster-wide ipcache, node registrations, all
  expiring when this node stops renewing them (an etcd lease; a LannerNode renewed every TTL/3);
- routing (``NodeRouter``): native routes or the VXLAN overlay to every other node's pod CIDR;
- the BPF side: each change another node makes to the ipcache or to identities triggers
  ``Datapath.sync()`` (debounced on one worker thread), so remote pods' identities reach this
  node's ipcache and policy maps;
- remote pods in events: local endpoints are published with their pod (namespace, name, labels), so
  flow events on other nodes name them.

The runtime uses ``store`` in place of the local file store, ``pod_mtu()`` for pod interfaces, adds
this object as an endpoint sink (``add_endpoint``/``remove_endpoint``) and calls ``attach(datapath)``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lanner.netdp.endpoint import Endpoint, PodInfo
from lanner.netdp.kvstore.store import ClusterStore, IpcacheEntry, open_store
from lanner.netdp.routing import LocalNode, Mode, NodeRouter

log = logging.getLogger("lanner.netdp.cluster")

SYNC_DEBOUNCE_S = 0.02


@dataclass(frozen=True)
class ClusterConfig:
    etcd_endpoint: str  # http://HOST:PORT of an etcd member (--kvstore etcd)
    node_name: str
    node_ip: str  # this node's underlay address (what other nodes route to)
    pod_cidr: str
    underlay_device: str
    routing: Mode = "native"
    lease_ttl_s: int = 10
    prefix: str = "lanner/"
    kvstore: str = "etcd"  # or "crd": the Kubernetes API
    kubeconfig: Path | None = None  # --kvstore crd: --k8s-kubeconfig-path; None: in-cluster config


class ClusterNode:
    def __init__(self, cfg: ClusterConfig, ipr: Any | None = None,
                 store_factory: Callable[[ClusterConfig], ClusterStore] = open_store) -> None:
        from pyroute2 import IPRoute

        self.cfg = cfg
        self._own_ipr = ipr is None
        self._ipr = ipr if ipr is not None else IPRoute()
        self.store: ClusterStore | None = None
        self._syncer: threading.Thread | None = None
        self._stop = threading.Event()
        self.router = NodeRouter(LocalNode(cfg.node_name, cfg.node_ip, cfg.pod_cidr, cfg.underlay_device,
                                           cfg.routing), self._ipr)
        self._datapath: Any = None
        self._dirty = threading.Event()
        self.last_sync_monotonic = 0.0
        try:
            self.store = store_factory(cfg)
            extra = self.router.setup()
            self.store.subscribe(on_node=self.router.on_node)
            self.store.register_node(cfg.node_ip, cfg.pod_cidr, **extra)
        except BaseException:
            self.close()
            raise
        log.info("cluster node %s (%s, pods %s, %s routing) registered in %s", cfg.node_name, cfg.node_ip,
                 cfg.pod_cidr, cfg.routing, self.store.describe())

    def pod_mtu(self) -> int:
        return self.router.pod_mtu()

    # -- the datapath -----------------------------------------------------------------------------
    def attach(self, datapath: Any) -> None:
        """Keep ``datapath``'s ipcache and policies in step with the cluster, and name remote pods."""
        self._datapath = datapath
        if hasattr(datapath, "remote_endpoint_of"):
            datapath.remote_endpoint_of = self.remote_endpoint
        self._syncer = threading.Thread(target=self._sync_loop, name="netdp-cluster-sync", daemon=True)
        self._syncer.start()
        self.store.subscribe(on_ipcache=lambda _cidr, _entry: self._dirty.set())
        self._dirty.set()

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            if not self._dirty.wait(0.5):
                continue
            time.sleep(SYNC_DEBOUNCE_S)  # a burst of changes becomes one sync
            self._dirty.clear()
            dp = self._datapath
            if dp is None:
                continue
            try:
                dp.sync()
                self.last_sync_monotonic = time.monotonic()
            except Exception as exc:
                log.error("syncing the datapath with the cluster store: %s", exc)

    def remote_endpoint(self, ipv4: str) -> Endpoint | None:
        """A pod on another node, as far as events need it (its pod and identity)."""
        entry: IpcacheEntry | None = self.store.ipcache_entries().get(f"{ipv4}/32")
        if entry is None or entry.node == self.cfg.node_name or not entry.pod:
            return None
        pod = entry.pod
        labels = tuple(sorted((str(k), str(v)) for k, v in dict(pod.get("labels") or {}).items()))
        return Endpoint(endpoint_id=0, container_id="", ifname="", netns="", netns_inode=0, host_ifname="",
                        host_ifindex=0, ipv4=ipv4, mac="", identity=entry.identity,
                        pod=PodInfo(namespace=str(pod.get("namespace", "")), name=str(pod.get("name", "")),
                                    uid=str(pod.get("uid", "")), labels=labels))

    # -- an endpoint sink of the CNI service ------------------------------------------------------
    def add_endpoint(self, ep: Endpoint) -> None:
        """Publish the pod with its ipcache entry so other nodes' events can name it."""
        pod = {"namespace": ep.pod.namespace, "name": ep.pod.name, "uid": ep.pod.uid, "labels": ep.pod.label_dict(),
               "node": self.cfg.node_name}
        self.store.upsert_ip(f"{ep.ipv4}/32", ep.identity, pod=pod)

    def remove_endpoint(self, ep: Endpoint) -> None:
        pass  # the CNI service deletes the ipcache entry itself

    def status(self) -> dict:
        return {"kvstore": self.store.describe(), "node": self.cfg.node_name, "routing": self.cfg.routing,
                "nodes": sorted(self.store.nodes()), "routed_nodes": sorted(self.router.routed_nodes()),
                "ipcache_entries": len(self.store.ipcache())}

    def close(self, revoke: bool = True) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(timeout=2)
        try:
            if self.store is not None:
                self.store.close(revoke=revoke)
        finally:
            self.router.close()
            if self._own_ipr:
                self._ipr.close()
