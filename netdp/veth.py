"""Pod interfaces: a veth pair from the agent's netns into the pod's, through pyroute2 netlink.

Layout (Cilium's): the pod gets ``IP/32`` on CNI_IFNAME, a link route to the gateway and a default route
via it; the gateway address lives on ``lanner_host`` in the node netns (a veth pair with ``lanner_net``), so the host side
of every veth answers ARP for it; the node routes ``IP/32`` to the host-side veth. Pod-to-pod traffic
is routed by the node (or redirected by the datapath's TC programs).

Host-side names are ``lxc`` + 12 hex digits of sha256(containerID/ifname): derived from the attachment, so
DEL and GC find the veth without any other record, and the alias ``lanner:<containerID>/<ifname>`` marks
it as ours.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

HOST_PREFIX = "lxc"
HOST_NAME_RE = re.compile(r"^lxc[0-9a-f]{12}$")
ALIAS_PREFIX = "lanner:"
GATEWAY_DEVICE = "lanner_host"


class VethError(Exception):
    pass


@dataclass(frozen=True)
class PodLink:
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_ifname: str
    pod_ifindex: int
    pod_mac: str
    mtu: int


def host_ifname(container_id: str, ifname: str) -> str:
    return HOST_PREFIX + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:12]


def _attr(msg, name: str):
    return msg.get_attr(name)


def ensure_gateway(gateway: str, device: str = GATEWAY_DEVICE) -> int:
    """The device holding ``gateway/32`` in this netns (created or reused); returns its ifindex.

    A veth pair ``<device>`` / ``<device minus _host>_net`` as Cilium's cilium_host/cilium_net (the
    kernel may lack the dummy driver); only the ``_host`` end carries the address.
    """
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=device)
        if not idx:
            peer = gateway_peer(device)
            ipr.link("add", ifname=device, kind="veth", peer={"ifname": peer})
            ipr.link("set", index=ipr.link_lookup(ifname=peer)[0], state="up")
            idx = ipr.link_lookup(ifname=device)
        index = idx[0]
        have = {_attr(a, "IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)}
        if gateway not in have:
            ipr.addr("add", index=index, address=gateway, prefixlen=32)
        ipr.link("set", index=index, state="up")
        return index


def gateway_peer(device: str) -> str:
    return (device[: -len("_host")] if device.endswith("_host") else device[:10]) + "_net"


def remove_gateway(device: str = GATEWAY_DEVICE) -> None:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=device)
        if idx:
            ipr.link("del", index=idx[0])  # the peer goes with it


_LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _open_netns(netns: str) -> IPRoute:
    """A netlink socket inside ``netns``: this thread enters it, opens the socket, and returns.

    setns(CLONE_NEWNET) affects only the calling thread and a socket keeps the netns it was created in,
    so this costs ~4 ms instead of pyroute2's ``IPRoute(netns=...)`` (a forked helper, ~12 ms per call).
    """
    try:
        target = os.open(netns, os.O_RDONLY)
    except OSError as exc:
        raise VethError(f"netns {netns}: {exc.strerror}") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _LIBC.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise VethError(f"cannot enter netns {netns}: {os.strerror(err)}")
        try:
            ipr = IPRoute()
            ipr.link_lookup(ifname="lo")  # the socket is bound now, in the pod's netns
        finally:
            if _LIBC.setns(own, CLONE_NEWNET) != 0:  # never seen; going on in the pod's netns would be worse
                os.write(2, b"lanner: cannot return to the agent's netns after entering a pod's; aborting\n")
                os.abort()
    finally:
        os.close(target)
        os.close(own)
    return ipr


def create(netns: str, pod_ifname: str, host_name: str, alias: str, ip: str, gateway: str, mtu: int) -> PodLink:
    """Create the pair and configure both ends. On failure nothing of it is left behind."""
    with _open_netns(netns) as pod:
        if pod.link_lookup(ifname=pod_ifname):
            raise VethError(f"interface {pod_ifname} already exists in netns {netns}")
        with IPRoute() as ipr:
            stale = ipr.link_lookup(ifname=host_name)
            if stale:  # left over from an ADD that crashed before its lease was completed
                ipr.link("del", index=stale[0])
            fd = os.open(netns, os.O_RDONLY)
            try:
                ipr.link("add", ifname=host_name, kind="veth", mtu=mtu,
                         peer={"ifname": pod_ifname, "net_ns_fd": fd, "mtu": mtu})
            except NetlinkError as exc:
                raise VethError(f"creating veth {host_name} <-> {netns}:{pod_ifname}: {exc}") from None
            finally:
                os.close(fd)
            try:
                hidx = ipr.link_lookup(ifname=host_name)[0]
                ipr.link("set", index=hidx, ifalias=alias)
                ipr.link("set", index=hidx, state="up")
                pidx = pod.link_lookup(ifname=pod_ifname)[0]
                pod.addr("add", index=pidx, address=ip, prefixlen=32)
                pod.link("set", index=pidx, state="up")
                pod.route("add", dst=f"{gateway}/32", oif=pidx, scope=253)  # scope link
                pod.route("add", dst="0.0.0.0/0", gateway=gateway, oif=pidx)
                ipr.route("replace", dst=f"{ip}/32", oif=hidx, scope=253)
                hmac = _attr(ipr.get_links(hidx)[0], "IFLA_ADDRESS")
                pmac = _attr(pod.get_links(pidx)[0], "IFLA_ADDRESS")
            except (NetlinkError, IndexError) as exc:
                delete(host_name)
                raise VethError(f"configuring {host_name} / {netns}:{pod_ifname}: {exc}") from None
    return PodLink(host_name, hidx, hmac, pod_ifname, pidx, pmac, mtu)


def delete(host_name: str) -> bool:
    """Delete the host side (the kernel removes the peer and the /32 route with it). False if absent."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=host_name)
        if not idx:
            return False
        try:
            ipr.link("del", index=idx[0])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
            return False
        return True


def host_link(host_name: str) -> tuple[int, str] | None:
    """(ifindex, alias) of a host-side veth, or None."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=host_name)
        if not idx:
            return None
        return idx[0], _attr(ipr.get_links(idx[0])[0], "IFLA_IFALIAS") or ""


def ours() -> list[str]:
    """Host-side veths this service created: lxc<12 hex> whose alias is ours (or unset: crashed mid-create)."""
    out = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = _attr(link, "IFLA_IFNAME") or ""
            info = _attr(link, "IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            alias = _attr(link, "IFLA_IFALIAS") or ""
            if kind == "veth" and HOST_NAME_RE.match(name) and (not alias or alias.startswith(ALIAS_PREFIX)):
                out.append(name)
    return out


def check(netns: str, pod_ifname: str, ip: str, gateway: str, mtu: int) -> list[str]:
    """What differs between the pod's interface and what ADD configured (empty: all as expected)."""
    problems: list[str] = []
    try:
        pod = _open_netns(netns)
    except VethError as exc:
        return [str(exc)]
    with pod:
        idx = pod.link_lookup(ifname=pod_ifname)
        if not idx:
            return [f"interface {pod_ifname} missing in netns {netns}"]
        link = pod.get_links(idx[0])[0]
        if _attr(link, "IFLA_MTU") != mtu:
            problems.append(f"{pod_ifname} mtu is {_attr(link, 'IFLA_MTU')}, expected {mtu}")
        if _attr(link, "IFLA_OPERSTATE") == "DOWN":
            problems.append(f"{pod_ifname} is down")
        addrs = {(_attr(a, "IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=idx[0], family=2)}
        if (ip, 32) not in addrs:
            problems.append(f"{pod_ifname} lacks address {ip}/32 (has {sorted(addrs)})")
        defaults = [r for r in pod.get_routes(family=2, table=254)
                    if r["dst_len"] == 0 and _attr(r, "RTA_OIF") == idx[0]]
        if not any(_attr(r, "RTA_GATEWAY") == gateway for r in defaults):
            problems.append(f"no default route via {gateway} on {pod_ifname}")
    return problems
