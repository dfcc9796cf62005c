"""Pod routing between nodes (issue 7): nodes are network namespaces joined by an underlay bridge.

Each "node" netns has an underlay address, a pod CIDR and one pod (a netns with a veth to the node).
NodeRouter programs the routes (native) or the VXLAN overlay from the node registrations, directly or
through a real etcd. Everything lives in namespaces the test creates and deletes.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

import pytest
from pyroute2 import NetNS

from lanner.netdp.kvstore.etcd import EtcdClient
from lanner.netdp.kvstore.etcd_store import EtcdStore, NodeInfo
from lanner.netdp.routing import VXLAN_IFNAME, VXLAN_OVERHEAD, LocalNode, NodeRouter, RoutingError
from tests.etcd_harness import start_etcd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


@dataclass
class Node:
    name: str
    netns: str
    pod_netns: str
    ip: str
    pod_cidr: str
    pod_ip: str


@pytest.fixture
def cluster():
    tag = f"{os.getpid() % 10000}"
    underlay = f"lr{tag}-u"
    nodes = [Node(f"node{i}", f"lr{tag}-n{i}", f"lr{tag}-p{i}", f"192.168.251.{i}", f"10.251.{i}.0/24",
                  f"10.251.{i}.10") for i in (1, 2)]
    created: list[str] = []
    try:
        sh("ip", "netns", "add", underlay); created.append(underlay)
        sh("ip", "-n", underlay, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", underlay, "link", "set", "br0", "up")
        for i, n in enumerate(nodes, 1):
            for ns in (n.netns, n.pod_netns):
                sh("ip", "netns", "add", ns); created.append(ns)
            sh("ip", "-n", underlay, "link", "add", f"u{i}", "type", "veth", "peer", "name", "eth0", "netns", n.netns)
            sh("ip", "-n", underlay, "link", "set", f"u{i}", "master", "br0", "up")
            sh("ip", "-n", n.netns, "addr", "add", f"{n.ip}/24", "dev", "eth0")
            sh("ip", "-n", n.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", n.netns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", n.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            gw = n.pod_cidr.replace(".0/24", ".1")
            sh("ip", "-n", n.netns, "link", "add", "lxc0", "type", "veth", "peer", "name", "eth0", "netns", n.pod_netns)
            sh("ip", "-n", n.netns, "addr", "add", f"{gw}/24", "dev", "lxc0")
            sh("ip", "-n", n.netns, "link", "set", "lxc0", "up")
            sh("ip", "-n", n.pod_netns, "addr", "add", f"{n.pod_ip}/24", "dev", "eth0")
            sh("ip", "-n", n.pod_netns, "link", "set", "eth0", "up")
            sh("ip", "-n", n.pod_netns, "link", "set", "lo", "up")
            sh("ip", "-n", n.pod_netns, "route", "add", "default", "via", gw)
        yield nodes
    finally:
        for ns in reversed(created):
            sh("ip", "netns", "del", ns, check=False)


def ping(src_netns: str, dst: str, size: int = 56, count: int = 2) -> bool:
    r = sh("ip", "netns", "exec", src_netns, "ping", "-c", str(count), "-W", "1", "-i", "0.2", "-M", "do", "-s",
           str(size), dst, check=False)
    return r.returncode == 0


def _routers(nodes: list[Node], mode: str) -> tuple[list[NodeRouter], list[NetNS], list[NodeInfo]]:
    handles = [NetNS(n.netns) for n in nodes]
    routers = [NodeRouter(LocalNode(n.name, n.ip, n.pod_cidr, "eth0", mode), h) for n, h in zip(nodes, handles)]
    infos = [NodeInfo(n.name, n.ip, n.pod_cidr, r.setup()) for n, r in zip(nodes, routers)]
    return routers, handles, infos


@pytest.mark.parametrize("mode", ["native", "vxlan"])
def test_pods_on_two_nodes_reach_each_other(cluster, mode):
    a, b = cluster
    assert not ping(a.pod_netns, b.pod_ip, count=1)  # no route yet: the test can fail
    routers, handles, infos = _routers(cluster, mode)
    try:
        for r in routers:
            for info in infos:
                r.on_node(info.name, info)
        assert set(routers[0].routed_nodes()) == {"node2"}
        assert ping(a.pod_netns, b.pod_ip) and ping(b.pod_netns, a.pod_ip)
        if mode == "vxlan":
            assert routers[0].pod_mtu() == 1500 - VXLAN_OVERHEAD
            mtu = sh("ip", "-n", a.netns, "-o", "link", "show", VXLAN_IFNAME).stdout
            assert f"mtu {1500 - VXLAN_OVERHEAD}" in mtu
            # A full-size packet for the overlay MTU passes with DF set; the traffic really is
            # encapsulated: the underlay's route table has no pod CIDR route.
            assert ping(a.pod_netns, b.pod_ip, size=1500 - VXLAN_OVERHEAD - 28)
            assert "10.251.2.0/24 via 10.251.2.0 dev lanner_vxlan" in sh("ip", "-n", a.netns, "route").stdout
        else:
            assert "10.251.2.0/24 via 192.168.251.2 dev eth0" in sh("ip", "-n", a.netns, "route").stdout
        # The other node leaves: its routes go and the pods are cut off again.
        routers[0].on_node("node2", None)
        assert not ping(a.pod_netns, b.pod_ip, count=1)
    finally:
        for r in routers:
            r.close()
        for h in handles:
            h.close()
    assert VXLAN_IFNAME not in sh("ip", "-n", a.netns, "link").stdout


def test_routes_follow_node_registrations_in_etcd(cluster, tmp_path):
    server = start_etcd(tmp_path)
    stores: list[EtcdStore] = []
    routers, handles = [], []
    try:
        for n in cluster:
            h = NetNS(n.netns)
            handles.append(h)
            r = NodeRouter(LocalNode(n.name, n.ip, n.pod_cidr, "eth0", "vxlan"), h)
            routers.append(r)
            extra = r.setup()
            s = EtcdStore(EtcdClient(server.endpoint), n.name, prefix="routing/", lease_ttl_s=2)
            stores.append(s)
            s.subscribe(on_node=r.on_node)
            s.register_node(n.ip, n.pod_cidr, **extra)
        deadline = time.monotonic() + 3
        while not all(r.routed_nodes() for r in routers) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert set(routers[0].routed_nodes()) == {"node2"} and set(routers[1].routed_nodes()) == {"node1"}
        assert ping(cluster[0].pod_netns, cluster[1].pod_ip)
        # node2's agent stops cleanly: its registration is revoked and node1 drops the routes.
        stores[1].close()
        deadline = time.monotonic() + 3
        while routers[0].routed_nodes() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert routers[0].routed_nodes() == {}
    finally:
        for s in stores:
            s.close(revoke=False)
        for r in routers:
            r.close()
        for h in handles:
            h.close()
        server.stop()


def test_bad_configuration_is_named(cluster):
    h = NetNS(cluster[0].netns)
    try:
        with pytest.raises(RoutingError, match="underlay device 'nope'"):
            NodeRouter(LocalNode("node1", "192.168.251.1", "10.251.1.0/24", "nope"), h)
        with pytest.raises(RoutingError, match="routing mode 'geneve'"):
            NodeRouter(LocalNode("node1", "192.168.251.1", "10.251.1.0/24", "eth0", "geneve"), h)  # type: ignore[arg-type]
        with pytest.raises(RoutingError, match="node node1"):
            NodeRouter(LocalNode("node1", "192.168.251.1", "10.251.1.5/24", "eth0"), h)
    finally:
        h.close()
