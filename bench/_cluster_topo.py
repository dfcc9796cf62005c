"""Nodes as network namespaces on an underlay bridge, each with pods: the multi-node test bed.

Used by tests/test_netdp_routing.py and bench/multinode.py. Nothing is created in the root network
namespace: the underlay bridge lives in its own namespace, every node and pod in theirs, and
``ip_forward`` is set only inside node namespaces. ``cluster_topology`` deletes all of it on exit.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass, field
from typing import Iterator


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


@dataclass
class Pod:
    netns: str
    ip: str


@dataclass
class Node:
    name: str
    netns: str
    ip: str  # underlay address
    pod_cidr: str
    gateway: str  # the node-side address pods route through
    pods: list[Pod] = field(default_factory=list)


@contextlib.contextmanager
def cluster_topology(n_nodes: int = 2, pods_per_node: int = 1, tag: str | None = None,
                     underlay_net: str = "192.168.251", pod_net: str = "10.251", pod_bridge: bool = True,
                     node_netns: list[str] | None = None) -> Iterator[list[Node]]:
    """Nodes ``node1..N`` at ``<underlay_net>.i``, pod CIDR ``<pod_net>.i.0/24``, pods at ``.10, .11, ...``.

    Pods reach their own node's other pods and the node; routes to other nodes are the caller's job
    (netdp.routing.NodeRouter). The underlay namespace ``<tag>-u`` has ``<underlay_net>.254`` on its
    bridge (for a service all nodes reach, such as etcd). ``pod_bridge=False`` leaves pod networking to
    a CNI (no bridge, no gateway address, no pods); ``node_netns`` names existing namespaces to use as
    the nodes (the caller owns them).
    """
    tag = tag or f"lr{os.getpid() % 10000}"
    underlay = f"{tag}-u"
    created: list[str] = []
    nodes: list[Node] = []
    try:
        sh("ip", "netns", "add", underlay)
        created.append(underlay)
        sh("ip", "-n", underlay, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", underlay, "addr", "add", f"{underlay_net}.254/24", "dev", "br0")
        sh("ip", "-n", underlay, "link", "set", "br0", "up")
        sh("ip", "-n", underlay, "link", "set", "lo", "up")
        for i in range(1, n_nodes + 1):
            ns = node_netns[i - 1] if node_netns else f"{tag}-n{i}"
            node = Node(f"node{i}", ns, f"{underlay_net}.{i}", f"{pod_net}.{i}.0/24", f"{pod_net}.{i}.1")
            if not node_netns:
                sh("ip", "netns", "add", node.netns)
                created.append(node.netns)
            sh("ip", "-n", underlay, "link", "add", f"u{i}", "type", "veth", "peer", "name", "eth0", "netns", node.netns)
            sh("ip", "-n", underlay, "link", "set", f"u{i}", "master", "br0", "up")
            sh("ip", "-n", node.netns, "addr", "add", f"{node.ip}/24", "dev", "eth0")
            for dev in ("eth0", "lo"):
                sh("ip", "-n", node.netns, "link", "set", dev, "up")
            sh("ip", "netns", "exec", node.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            if not pod_bridge:
                nodes.append(node)
                continue
            sh("ip", "-n", node.netns, "link", "add", "podbr", "type", "bridge")
            sh("ip", "-n", node.netns, "addr", "add", f"{node.gateway}/24", "dev", "podbr")
            sh("ip", "-n", node.netns, "link", "set", "podbr", "up")
            for j in range(pods_per_node):
                pod = Pod(f"{tag}-p{i}-{j}", f"{pod_net}.{i}.{10 + j}")
                sh("ip", "netns", "add", pod.netns)
                created.append(pod.netns)
                sh("ip", "-n", node.netns, "link", "add", f"lxc{j}", "type", "veth", "peer", "name", "eth0",
                   "netns", pod.netns)
                sh("ip", "-n", node.netns, "link", "set", f"lxc{j}", "master", "podbr", "up")
                sh("ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
                for dev in ("eth0", "lo"):
                    sh("ip", "-n", pod.netns, "link", "set", dev, "up")
                sh("ip", "-n", pod.netns, "route", "add", "default", "via", node.gateway)
                node.pods.append(pod)
            nodes.append(node)
        yield nodes
    finally:
        for ns in reversed(created):
            sh("ip", "netns", "del", ns, check=False)


def ping(src_netns: str, dst: str, size: int = 56, count: int = 2) -> bool:
    r = sh("ip", "netns", "exec", src_netns, "ping", "-c", str(count), "-W", "1", "-i", "0.2", "-M", "do", "-s",
           str(size), dst, check=False)
    return r.returncode == 0
