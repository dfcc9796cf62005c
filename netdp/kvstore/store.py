"""What ClusterNode needs of a cluster store, whichever backend keeps the state (etcd or Kubernetes CRDs).

A cluster store is netdp's ``IdentityStore`` (identities every node agrees on, the cluster-wide ipcache)
plus node registrations, change notification and expiry of a node that stops renewing its presence.
:func:`open_store` builds the backend ``--kvstore`` names; both kinds give the same methods, so
``netdp.cluster.ClusterNode`` and the routing code never know which one they talk to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ip: str
    pod_cidr: str
    extra: Mapping[str, str] = field(default_factory=dict)  # e.g. {"routing": "vxlan", "vxlan_mac": ...}


@dataclass(frozen=True)
class IpcacheEntry:
    cidr: str
    identity: int
    node: str
    pod: Mapping[str, object] | None = None  # {namespace, name, labels} for a pod IP


IpcacheListener = Callable[[str, "IpcacheEntry | None"], None]
NodeListener = Callable[[str, "NodeInfo | None"], None]


class ClusterStore(Protocol):
    """The store interface of cluster mode (implemented by EtcdStore and CrdStore)."""

    def allocate(self, labels: Mapping[str, str]) -> int: ...

    def release(self, labels: Mapping[str, str]) -> None: ...

    def labels_of(self, identity: int) -> dict[str, str] | None: ...

    def identities(self) -> dict[int, dict[str, str]]: ...

    def upsert_ip(self, cidr: str, identity: int, pod: Mapping[str, object] | None = None) -> None: ...

    def delete_ip(self, cidr: str) -> None: ...

    def ipcache(self) -> dict[str, int]: ...

    def ipcache_entries(self) -> dict[str, IpcacheEntry]: ...

    def register_node(self, ip: str, pod_cidr: str, **extra: str) -> None: ...

    def nodes(self) -> dict[str, NodeInfo]: ...

    def subscribe(self, on_ipcache: IpcacheListener | None = None, on_node: NodeListener | None = None) -> None: ...

    def describe(self) -> str: ...

    def close(self, revoke: bool = True) -> None: ...


def open_store(cfg: Any) -> ClusterStore:
    """The backend ``cfg.kvstore`` names (a ``netdp.cluster.ClusterConfig``), connected and watching."""
    if cfg.kvstore == "etcd":
        from lanner.netdp.kvstore.etcd import EtcdClient
        from lanner.netdp.kvstore.etcd_store import EtcdStore

        return EtcdStore(EtcdClient(cfg.etcd_endpoint), cfg.node_name, prefix=cfg.prefix, lease_ttl_s=cfg.lease_ttl_s)
    if cfg.kvstore == "crd":
        from lanner.k8s.client import K8sConfig, make_api_client
        from lanner.netdp.kvstore.crd_store import CrdStore

        try:
            api = make_api_client(K8sConfig(node_name=cfg.node_name, kubeconfig=cfg.kubeconfig))
        except Exception as exc:  # kubernetes.config.ConfigException, OSError: no kubeconfig, not in a pod
            where = f"--k8s-kubeconfig-path {cfg.kubeconfig}" if cfg.kubeconfig else "the in-cluster config"
            raise ValueError(f"--kvstore crd: cannot use {where} ({exc}); outside a pod give "
                             "--k8s-kubeconfig-path FILE") from None
        return CrdStore(api, cfg.node_name, lease_ttl_s=cfg.lease_ttl_s, watch=True)
    raise ValueError(f"--kvstore {cfg.kvstore!r}: not a cluster store (etcd or crd)")
