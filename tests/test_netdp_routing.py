"""Pod routing between nodes (issue 7): nodes are network namespaces joined by an underlay bridge.

Each "node" netns has an underlay address, a pod CIDR and one pod (a netns with a veth to the node).
NodeRouter programs the routes (native) or the VXLAN overlay from the node registrations, directly or
through a real etcd. Everything lives in namespaces the test creates and deletes.
"""

from __future__ import annotations

import os
import time

import pytest
from pyroute2 import NetNS

from lanner.netdp.kvstore.etcd import EtcdClient
from lanner.netdp.kvstore.etcd_store import EtcdStore, NodeInfo
from lanner.netdp.routing import VXLAN_IFNAME, VXLAN_OVERHEAD, LocalNode, NodeRouter, RoutingError
from bench._cluster_topo import Node, cluster_topology, ping, sh
from bench._etcd import start_etcd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def cluster():
    with cluster_topology(2, 1) as nodes:
        yield nodes


def _routers(nodes: list[Node], mode: str) -> tuple[list[NodeRouter], list[NetNS], list[NodeInfo]]:
    handles = [NetNS(n.netns) for n in nodes]
    routers = [NodeRouter(LocalNode(n.name, n.ip, n.pod_cidr, "eth0", mode), h) for n, h in zip(nodes, handles)]
    infos = [NodeInfo(n.name, n.ip, n.pod_cidr, r.setup()) for n, r in zip(nodes, routers)]
    return routers, handles, infos


@pytest.mark.parametrize("mode", ["native", "vxlan"])
def test_pods_on_two_nodes_reach_each_other(cluster, mode):
    a, b = cluster
    assert not ping(a.pods[0].netns, b.pods[0].ip, count=1)  # no route yet: the test can fail
    routers, handles, infos = _routers(cluster, mode)
    try:
        for r in routers:
            for info in infos:
                r.on_node(info.name, info)
        assert set(routers[0].routed_nodes()) == {"node2"}
        assert ping(a.pods[0].netns, b.pods[0].ip) and ping(b.pods[0].netns, a.pods[0].ip)
        if mode == "vxlan":
            assert routers[0].pod_mtu() == 1500 - VXLAN_OVERHEAD
            mtu = sh("ip", "-n", a.netns, "-o", "link", "show", VXLAN_IFNAME).stdout
            assert f"mtu {1500 - VXLAN_OVERHEAD}" in mtu
            # A full-size packet for the overlay MTU passes with DF set; the traffic really is
            # encapsulated: the underlay's route table has no pod CIDR route.
            assert ping(a.pods[0].netns, b.pods[0].ip, size=1500 - VXLAN_OVERHEAD - 28)
            assert "10.251.2.0/24 via 10.251.2.0 dev lanner_vxlan" in sh("ip", "-n", a.netns, "route").stdout
        else:
            assert "10.251.2.0/24 via 192.168.251.2 dev eth0" in sh("ip", "-n", a.netns, "route").stdout
        # The other node leaves: its routes go and the pods are cut off again.
        routers[0].on_node("node2", None)
        assert not ping(a.pods[0].netns, b.pods[0].ip, count=1)
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
        assert ping(cluster[0].pods[0].netns, cluster[1].pods[0].ip)
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
