"""Pod routing between nodes: native routes or a VXLAN overlay, driven by the cluster's node list.

Every node owns a pod CIDR and registers ``(node IP, pod CIDR)`` in the cluster store. Each agent
turns the other nodes' registrations into kernel routes in its own (node) network namespace:

- ``native``: ``<their pod CIDR> via <their node IP>`` on the underlay, for nodes that share an L2
  segment (or a fabric that routes pod CIDRs).
- ``vxlan``: one VXLAN device per node (VNI 2, UDP 8472, learning off), addressed with the network
  address of the node's pod CIDR (its VTEP address, as flannel does). For every other node: a
  permanent neighbour entry (their VTEP address -> their VXLAN MAC), an FDB entry (their MAC -> their
  node IP) and a route ``<their pod CIDR> via <their VTEP> dev lanner_vxlan onlink``. Pod MTU is the
  underlay's minus the 50-byte VXLAN overhead (``pod_mtu``).

Identity does not travel in the packet: every node's BPF ipcache holds the remote pods' identities
from the store, so the receiving node resolves the source pod's identity from its address (no SNAT).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

from lanner.netdp.kvstore.etcd_store import NodeInfo

log = logging.getLogger("lanner.netdp.routing")

VXLAN_IFNAME = "lanner_vxlan"
VXLAN_VNI = 2
VXLAN_PORT = 8472
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
RT_PROTO_LANNER = 196  # routes this module owns carry this protocol number (a free one in rt_protos)
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 4

Mode = Literal["native", "vxlan"]


class RoutingError(RuntimeError):
    """A routing setup step failed; the message names the device, route or node."""


@dataclass(frozen=True)
class LocalNode:
    name: str
    ip: str  # the node's underlay address
    pod_cidr: str
    underlay_ifname: str  # the device that carries node-to-node traffic
    mode: Mode = "native"


def vtep_address(pod_cidr: str) -> str:
    return str(ipaddress.ip_network(pod_cidr, strict=True).network_address)


class NodeRouter:
    """Keeps this node's routes to every other node's pod CIDR in step with the node list.

    ``ipr`` is a pyroute2 ``IPRoute`` or ``NetNS`` handle for the node's network namespace.
    """

    def __init__(self, local: LocalNode, ipr: Any) -> None:
        if local.mode not in ("native", "vxlan"):
            raise RoutingError(f"routing mode {local.mode!r}: expected 'native' or 'vxlan'")
        try:
            ipaddress.ip_network(local.pod_cidr, strict=True)
            ipaddress.ip_address(local.ip)
        except ValueError as exc:
            raise RoutingError(f"node {local.name}: {exc}") from None
        self.local = local
        self._ipr = ipr
        self._lock = threading.Lock()
        self._routes: dict[str, NodeInfo] = {}  # node name -> the registration its routes were made from
        links = ipr.link_lookup(ifname=local.underlay_ifname)
        if not links:
            raise RoutingError(f"underlay device {local.underlay_ifname!r} does not exist on node {local.name}")
        self._underlay_index = links[0]
        self._underlay_mtu = int(ipr.get_links(self._underlay_index)[0].get_attr("IFLA_MTU"))
        self._vxlan_index: int | None = None
        self.vxlan_mac = ""

    # -- set-up -----------------------------------------------------------------------------------
    def setup(self) -> dict[str, str]:
        """Create what this node's mode needs; returns the extra fields to publish with the node."""
        if self.local.mode == "native":
            return {"routing": "native"}
        ipr = self._ipr
        for idx in ipr.link_lookup(ifname=VXLAN_IFNAME):
            ipr.link("del", index=idx)  # a leftover from a crashed agent: start clean
        try:
            ipr.link("add", ifname=VXLAN_IFNAME, kind="vxlan", vxlan_id=VXLAN_VNI, vxlan_local=self.local.ip,
                     vxlan_port=VXLAN_PORT, vxlan_learning=0, vxlan_link=self._underlay_index,
                     mtu=self._underlay_mtu - VXLAN_OVERHEAD)
        except Exception as exc:  # pyroute2's NetlinkError
            raise RoutingError(f"creating {VXLAN_IFNAME} on node {self.local.name}: {exc}") from exc
        idx = ipr.link_lookup(ifname=VXLAN_IFNAME)[0]
        self._vxlan_index = idx
        ipr.addr("add", index=idx, address=vtep_address(self.local.pod_cidr), prefixlen=32)
        ipr.link("set", index=idx, state="up")
        self.vxlan_mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        return {"routing": "vxlan", "vxlan_mac": self.vxlan_mac}

    def pod_mtu(self) -> int:
        """The MTU pods on this node must use so their packets fit the underlay."""
        return self._underlay_mtu - (VXLAN_OVERHEAD if self.local.mode == "vxlan" else 0)

    # -- node list --------------------------------------------------------------------------------
    def on_node(self, name: str, info: NodeInfo | None) -> None:
        """A store listener: a node appeared, changed (``info``) or went away (``None``)."""
        if name == self.local.name:
            return
        with self._lock:
            old = self._routes.pop(name, None)
            if old is not None:
                self._remove(old)
            if info is not None:
                try:
                    self._add(info)
                except Exception as exc:
                    log.error("routes to node %s (%s, pods %s): %s", name, info.ip, info.pod_cidr, exc)
                    return
                self._routes[name] = info

    def routed_nodes(self) -> dict[str, NodeInfo]:
        with self._lock:
            return dict(self._routes)

    def _add(self, info: NodeInfo) -> None:
        ipr = self._ipr
        if self.local.mode == "native":
            ipr.route("replace", dst=info.pod_cidr, gateway=info.ip, oif=self._underlay_index, proto=RT_PROTO_LANNER)
            return
        mac = info.extra.get("vxlan_mac", "")
        if not mac:
            raise RoutingError(f"node {info.name} registered without a vxlan_mac: it does not run the VXLAN overlay")
        vtep = vtep_address(info.pod_cidr)
        ipr.neigh("replace", dst=vtep, lladdr=mac, ifindex=self._vxlan_index, state=NUD_PERMANENT)
        try:  # pyroute2's fdb "replace" is refused for VXLAN devices: delete, then append
            ipr.fdb("del", ifindex=self._vxlan_index, lladdr=mac)
        except Exception:
            pass
        ipr.fdb("append", ifindex=self._vxlan_index, lladdr=mac, dst=info.ip)
        ipr.route("replace", dst=info.pod_cidr, gateway=vtep, oif=self._vxlan_index, flags=RTNH_F_ONLINK,
                  proto=RT_PROTO_LANNER)

    def _remove(self, info: NodeInfo) -> None:
        ipr = self._ipr
        for action in (lambda: ipr.route("del", dst=info.pod_cidr, proto=RT_PROTO_LANNER),):
            try:
                action()
            except Exception:  # already gone
                pass
        if self.local.mode == "vxlan" and self._vxlan_index is not None:
            mac = info.extra.get("vxlan_mac", "")
            for action in (
                lambda: ipr.fdb("del", ifindex=self._vxlan_index, lladdr=mac, dst=info.ip),
                lambda: ipr.neigh("del", dst=vtep_address(info.pod_cidr), lladdr=mac, ifindex=self._vxlan_index),
            ):
                try:
                    action()
                except Exception:
                    pass

    def close(self) -> None:
        """Remove every route, neighbour and device this router made."""
        with self._lock:
            for info in self._routes.values():
                self._remove(info)
            self._routes.clear()
            if self._vxlan_index is not None:
                try:
                    self._ipr.link("del", index=self._vxlan_index)
                except Exception:
                    pass
                self._vxlan_index = None
