"""The records every netdp part shares: a pod, its containers and its endpoint.

One definition, imported by the datapath (netdp.datapath), the CNI service (netdp.cni), the
identity store (netdp.identity) and the agent's enrichment (pod on every security event).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Reserved numeric identities (Cilium's numbering). Cluster identities start at FIRST_CLUSTER_IDENTITY.
IDENTITY_UNKNOWN = 0
IDENTITY_HOST = 1
IDENTITY_WORLD = 2
IDENTITY_UNMANAGED = 3
IDENTITY_HEALTH = 4
IDENTITY_INIT = 5
IDENTITY_REMOTE_NODE = 6
FIRST_CLUSTER_IDENTITY = 256


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str = ""
    image: str = ""


@dataclass(frozen=True)
class PodInfo:
    """What an event says about the pod a process runs in (Tetragon's ``pod`` object)."""

    namespace: str
    name: str
    uid: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    containers: tuple[ContainerInfo, ...] = ()
    workload: str = ""  # the pod's controller (a Deployment through its ReplicaSet), from the Kubernetes API
    workload_kind: str = ""  # "" with workload "": the pod is its own workload

    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class Endpoint:
    """One CNI attachment (containerID, ifname) and what the datapath keys on."""

    endpoint_id: int  # 1..65535, node-local
    container_id: str  # the sandbox id CNI_CONTAINERID
    ifname: str  # CNI_IFNAME inside the pod, e.g. eth0
    netns: str  # CNI_NETNS path at ADD time
    netns_inode: int  # st_ino of the netns: the join key for socket/process events
    host_ifname: str  # host side of the veth
    host_ifindex: int
    ipv4: str  # "10.x.y.z" (no prefix)
    mac: str  # pod-side MAC
    identity: int  # numeric security identity
    pod: PodInfo
    cgroup_ids: tuple[int, ...] = field(default=())  # cgroup v2 ids of the pod's containers, when known


class PodResolver(Protocol):
    """Looks up the pod of a process from what the kernel gives (netns inode or cgroup id)."""

    def pod_for_netns(self, netns_inode: int) -> PodInfo | None: ...

    def pod_for_cgroup(self, cgroup_id: int) -> PodInfo | None: ...

    def pod_for_ip(self, ipv4: str) -> PodInfo | None: ...
