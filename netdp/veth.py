"""Pod interfaces: a veth pair from the agent's netns into the pod's, over netlink.

ADD, DEL and the lookups on their path build their few rtnetlink messages with ``struct`` on plain
sockets (``Rtnl``): pyroute2 spent ~0.6 ms of Python per request there. The rarely used rest (gateway
device, GC's listing, CHECK) goes through pyroute2.

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
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

HOST_PREFIX = "lxc"
HOST_NAME_RE = re.compile(r"^lxc[0-9a-f]{12}$")
ALIAS_PREFIX = "lanner:"
GATEWAY_DEVICE = "lanner_host"
T = TypeVar("T")


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

# ---------------------------------------------------------------------------------------------- raw rtnetlink
# ADD's few requests are built with struct and sent on plain netlink sockets: pyroute2 costs ~0.6 ms of
# Python per request (message objects, an asyncio loop per call), these cost tens of microseconds.
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 20, 24
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD = 1, 3, 4, 5, 18, 20, 28
IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS = 29, 1 << 3
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
NLA_F_NESTED = 0x8000
REPLY_TIMEOUT_S = 10.0  # the kernel answers at once; a hang must not block the CNI service forever
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTN_UNICAST = 254, 3, 0, 253, 1
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLA = struct.Struct("=HH")


class NetlinkFailure(OSError):
    """A request the kernel refused; ``errno`` is the kernel's answer."""


def _nla(kind: int, payload: bytes) -> bytes:
    n = _NLA.size + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * (-n & 3)


def _nla_str(kind: int, text: str) -> bytes:
    return _nla(kind, text.encode() + b"\0")


def _nla_u32(kind: int, value: int) -> bytes:
    return _nla(kind, struct.pack("=I", value))


def _ifinfo(index: int = 0, up: bool = False) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)


def _attrs(data: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i + _NLA.size <= len(data):
        n, kind = _NLA.unpack_from(data, i)
        if n < _NLA.size:
            break
        out[kind & 0x3FFF] = data[i + _NLA.size:i + n]
        i += (n + 3) & ~3
    return out


class Rtnl:
    """One NETLINK_ROUTE socket (in the netns it was created in) sending requests as batches.

    ``call`` sends every message in one sendmsg and waits for each one's answer; the kernel executes them
    in order. Answers are matched by sequence number, so one left over from an earlier failure is skipped.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            self.sock.bind((0, 0))
            self.sock.settimeout(REPLY_TIMEOUT_S)
        except OSError:
            self.sock.close()
            raise
        self.seq = 0
        self.lock = threading.Lock()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, *msgs: tuple[int, int, bytes]) -> list[bytes | NetlinkFailure]:
        """(type, flags, body) per message -> per message: the reply payload (b"" for a bare ack) or the
        NetlinkFailure the kernel answered with. Requests after a failed one are still executed."""
        with self.lock:
            frames, seqs = [], []
            for kind, flags, body in msgs:
                self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
                seqs.append(self.seq)
                frames.append(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK,
                                             self.seq, 0) + body)
            self.sock.send(b"".join(frames))
            want = {s: i for i, s in enumerate(seqs)}
            out: list[bytes | NetlinkFailure | None] = [None] * len(msgs)
            pending = len(msgs)
            while pending:
                data = self.sock.recv(1 << 16)
                i = 0
                while i + _NLMSGHDR.size <= len(data):
                    n, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, i)
                    if n < _NLMSGHDR.size:
                        break
                    slot = want.get(seq)
                    if slot is not None:
                        body = data[i + _NLMSGHDR.size:i + n]
                        if kind == NLMSG_ERROR:  # the ack (error 0) or the failure: the last answer
                            err = -struct.unpack_from("=i", body)[0]
                            if err:
                                out[slot] = NetlinkFailure(err, os.strerror(err))
                            elif out[slot] is None:
                                out[slot] = b""
                            del want[seq]
                            pending -= 1
                        else:  # a reply (GET); its ack follows
                            out[slot] = body
                    i += (n + 3) & ~3
            return out  # type: ignore[return-value]

    def one(self, kind: int, flags: int, body: bytes) -> bytes:
        res = self.call((kind, flags, body))[0]
        if isinstance(res, NetlinkFailure):
            raise res
        return res

    def getlink(self, name: str) -> tuple[int, dict[int, bytes]] | None:
        """(ifindex, attributes) of the link called ``name``, or None."""
        try:
            body = self.one(RTM_GETLINK, 0, _ifinfo() + _nla_str(IFLA_IFNAME, name)
                            + _nla_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))
        except NetlinkFailure as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        _fam, _type, index, _flags, _change = _IFINFOMSG.unpack_from(body)
        return index, _attrs(body[_IFINFOMSG.size:])

    def dellink(self, name: str) -> bool:
        try:
            self.one(RTM_DELLINK, 0, _ifinfo() + _nla_str(IFLA_IFNAME, name))
        except NetlinkFailure as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise
        return True


def _in_netns(netns: str, make: Callable[[], T]) -> T:
    """Run ``make()`` with this thread inside ``netns`` and return its result (e.g. a socket, which keeps
    the netns it was created in). setns(CLONE_NEWNET) affects only the calling thread."""
    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise VethError(f"netns {netns}: {exc.strerror}") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _LIBC.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise VethError(f"cannot enter netns {netns}: {os.strerror(err)}")
        try:
            return make()
        finally:
            if _LIBC.setns(own, CLONE_NEWNET) != 0:  # never seen; going on in the pod's netns would be worse
                os.write(2, b"lanner: cannot return to the agent's netns after entering a pod's; aborting\n")
                os.abort()
    finally:
        os.close(target)
        os.close(own)


def _open_netns(netns: str) -> IPRoute:
    """A pyroute2 socket inside ``netns`` (CHECK): this thread enters it, opens the socket, and returns.
    ~4 ms instead of pyroute2's ``IPRoute(netns=...)`` (a forked helper, ~12 ms per call)."""
    def make() -> IPRoute:
        ipr = IPRoute()
        ipr.link_lookup(ifname="lo")  # the socket is bound now, in the pod's netns
        return ipr
    return _in_netns(netns, make)


def _random_mac() -> bytes:
    """A random unicast, locally administered MAC (what the kernel gives a veth end without one)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return bytes(b)


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{x:02x}" for x in raw)


def _addr_msg(index: int, ip: str) -> tuple[int, int, bytes]:
    a = socket.inet_aton(ip)
    return (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
            _IFADDRMSG.pack(socket.AF_INET, 32, 0, RT_SCOPE_UNIVERSE, index) + _nla(IFA_LOCAL, a) + _nla(IFA_ADDRESS, a))


def _route_msg(flags: int, dst: str, plen: int, oif: int, scope: int, gateway: str | None = None
               ) -> tuple[int, int, bytes]:
    body = _RTMSG.pack(socket.AF_INET, plen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
    if plen:
        body += _nla(RTA_DST, socket.inet_aton(dst))
    if gateway is not None:
        body += _nla(RTA_GATEWAY, socket.inet_aton(gateway))
    return RTM_NEWROUTE, flags, body + _nla_u32(RTA_OIF, oif)


def create(netns: str, pod_ifname: str, host_name: str, alias: str, ip: str, gateway: str, mtu: int) -> PodLink:
    """Create the pair and configure both ends. On failure nothing of it is left behind.

    Five netlink round trips: the pair is created with the host end up, the MTU, the pod end's name, MAC
    and netns in one request; one lookup of the host end (its ifindex, MAC and, as IFLA_LINK, the pod end's
    ifindex); the alias; the pod end's state (up), address and two routes in one batch on a socket opened
    inside the pod netns; the node's /32 route.
    """
    # a socket per call, not one kept open: a netlink socket pins its netns, which must go when deleted
    with Rtnl() as node, _in_netns(netns, Rtnl) as pod:
        pmac = _random_mac()
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise VethError(f"netns {netns}: {exc.strerror}") from None
        try:
            # the pod end cannot come up in this request (the kernel opens it before the pair is linked:
            # ENOTCONN); it is set up in the pod netns below, with its address and routes
            peer = _ifinfo() + _nla_str(IFLA_IFNAME, pod_ifname) + _nla_u32(IFLA_NET_NS_FD, fd) \
                + _nla_u32(IFLA_MTU, mtu) + _nla(IFLA_ADDRESS, pmac)
            linkinfo = _nla(IFLA_LINKINFO | NLA_F_NESTED, _nla_str(IFLA_INFO_KIND, "veth") + _nla(
                IFLA_INFO_DATA | NLA_F_NESTED, _nla(VETH_INFO_PEER, peer)))
            req = (RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                   _ifinfo(up=True) + _nla_str(IFLA_IFNAME, host_name) + _nla_u32(IFLA_MTU, mtu) + linkinfo)
            res = node.call(req)[0]
            if isinstance(res, NetlinkFailure) and res.errno == errno.EEXIST:
                if pod.getlink(pod_ifname) is not None:
                    raise VethError(f"interface {pod_ifname} already exists in netns {netns}")
                # the host name is taken: left over from an ADD that crashed before its lease was completed
                node.dellink(host_name)
                res = node.call(req)[0]
            if isinstance(res, NetlinkFailure):
                raise VethError(f"creating veth {host_name} <-> {netns}:{pod_ifname}: {res.strerror}")
        finally:
            os.close(fd)
        try:
            found = node.getlink(host_name)
            if found is None:
                raise VethError(f"veth {host_name} vanished right after it was created")
            hidx, attrs = found
            pidx = struct.unpack("=i", attrs[IFLA_LINK])[0]
            hmac = _mac_text(attrs.get(IFLA_ADDRESS, b""))
            node.one(RTM_NEWLINK, 0, _ifinfo(hidx) + _nla_str(IFLA_IFALIAS, alias))
            for r in pod.call((RTM_NEWLINK, 0, _ifinfo(pidx, up=True)), _addr_msg(pidx, ip),
                              _route_msg(NLM_F_CREATE | NLM_F_EXCL, gateway, 32, pidx, RT_SCOPE_LINK),
                              _route_msg(NLM_F_CREATE | NLM_F_EXCL, "0.0.0.0", 0, pidx, RT_SCOPE_UNIVERSE, gateway)):
                if isinstance(r, NetlinkFailure):
                    raise r
            node.one(*_route_msg(NLM_F_CREATE | NLM_F_REPLACE, ip, 32, hidx, RT_SCOPE_LINK))
        except (OSError, KeyError, VethError) as exc:
            try:
                node.dellink(host_name)
            except OSError:
                pass
            msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise VethError(f"configuring {host_name} / {netns}:{pod_ifname}: {msg}") from None
    return PodLink(host_name, hidx, hmac, pod_ifname, pidx, _mac_text(pmac), mtu)


def delete(host_name: str) -> bool:
    """Delete the host side (the kernel removes the peer and the /32 route with it). False if absent."""
    with Rtnl() as node:
        return node.dellink(host_name)


def host_link(host_name: str) -> tuple[int, str] | None:
    """(ifindex, alias) of a host-side veth, or None."""
    with Rtnl() as node:
        found = node.getlink(host_name)
    if found is None:
        return None
    return found[0], found[1].get(IFLA_IFALIAS, b"").rstrip(b"\0").decode(errors="replace")


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
