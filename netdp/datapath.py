"""The node's eBPF datapath: endpoints, ipcache, per-endpoint policy, conntrack and flow events.

``Datapath`` loads ``netdp/bpf/obj/datapath.bpf.o`` in the calling process's current network namespace
(the node's), pins its state maps under ``pin_dir`` (reusing them when they are already pinned, so an
agent restart keeps conntrack and policy), and attaches ``from_pod``/``to_pod`` to the host side of
each endpoint's veth. Map keys and values are encoded from the object's BTF (``datapath.h`` is the
only definition).

Identities are allocated by the caller (``store.allocate(pod_identity_labels(pod))``) and carried in
``Endpoint.identity``; the datapath writes the endpoint's ``/32`` into the store's ipcache and the BPF
ipcache, and compiles the NetworkPolicies against every identity the store knows (a namespaceSelector
against the namespace labels the API gives, ``set_network_policies(namespaces=...)``). ipBlock CIDRs get
node-local identities (``LOCAL_IDENTITY_FLAG | n``, Cilium's local scope) that live only in the BPF
ipcache, as do the node's own addresses (``host_ips``: identity host, always allowed into its pods).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanner.bpf import fs
from lanner.bpf import libbpf as L
from lanner.bpf.objects import BPF_TC_EGRESS, BPF_TC_INGRESS, BpfObject, Codec, Link, Map
from lanner.bpf.records import RecordLayout
from lanner.bpf.ringbuf import RingBuffer

from .endpoint import IDENTITY_HOST, Endpoint
from .flows import FlowDecoder, FlowReader
from .identity import IdentityStore, normalize_cidr, pod_identity_labels
from .netpolicy import CidrIdentities, NetworkPolicy, PolicyEntry, compile_endpoint, subjects_of

log = logging.getLogger("lanner.netdp.datapath")

DATAPATH_OBJECT = Path(__file__).parent / "bpf" / "obj" / "datapath.bpf.o"
PINNED_MAPS = ("netdp_endpoints", "netdp_ipcache", "netdp_policy", "netdp_ct", "netdp_config")
EP_INGRESS_ENFORCED, EP_EGRESS_ENFORCED, EP_HOST_ROUTING = 1 << 0, 1 << 1, 1 << 2  # NETDP_EP_* in datapath.h
SIOCGIFHWADDR = 0x8927
LOCAL_IDENTITY_FLAG = 1 << 24
TC_HANDLE, TC_PRIORITY = 0x4C4E, 1  # "LN"
DEFAULT_FLOW_RATE_LIMIT = 1000  # flow events per second for the node


class DatapathError(RuntimeError):
    """A datapath operation failed; the message names the endpoint or map."""


def struct_codec(btf: Any, name: str) -> Codec[dict[str, int]]:
    """A Codec for a C struct from BTF: encodes a dict by field name (missing fields are 0)."""
    layout = RecordLayout.from_btf(btf, name)
    st = layout.struct
    names = layout.names

    known = frozenset(names)

    def enc(d: Mapping[str, int]) -> bytes:
        if not known.issuperset(d):
            raise KeyError(f"struct {name} has no field {sorted(set(d) - known)[0]!r}")
        return st.pack(*[d.get(n, 0) for n in names])

    def dec(b: bytes) -> dict[str, int]:
        return dict(zip(names, st.unpack(b)))

    return Codec(layout.size, enc, dec)


def parse_mac(mac: str) -> bytes | None:
    """"aa:bb:cc:dd:ee:ff" -> 6 bytes; None for an empty or malformed address (host routing then stays off)."""
    try:
        b = bytes.fromhex(mac.replace(":", ""))
    except ValueError:
        return None
    return b if len(b) == 6 and any(b) else None


def interface_mac(ifindex: int) -> bytes | None:
    """The MAC of an interface of this netns, None when it has none or is gone."""
    try:
        name = socket.if_indextoname(ifindex)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", name.encode()))
    except OSError:
        return None
    mac = req[18:24]
    return mac if any(mac) else None


def _pin_matches(obj: BpfObject, name: str, pin: Path) -> bool:
    """Whether a pinned map has the key and value sizes this object's map has (from /proc fdinfo)."""
    fd = L.bpf_obj_get(str(pin).encode())
    if fd < 0:
        return True  # reuse_pinned_map reports the error with its errno
    try:
        info = dict(line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
                    if ":" in line)
    finally:
        os.close(fd)
    return (int(info.get("key_size", "-1")), int(info.get("value_size", "-1"))) == obj.map_sizes(name)


def addr_u32(ip: str) -> int:
    """Dotted quad -> the u32 whose memory holds the address in network order."""
    return int.from_bytes(socket.inet_aton(ip), "little")


_IPV4 = Codec(4, socket.inet_aton, socket.inet_ntoa)
_U32, _U64 = Codec.struct("<I"), Codec.struct("<Q")


@dataclass
class _EndpointState:
    ep: Endpoint
    links: list[Link] = field(default_factory=list)
    flags: int = 0
    host_mac: bytes | None = None  # the host side of the veth, read when the endpoint is added
    policy_keys: dict[PolicyEntry, int] = field(default_factory=dict)  # entry -> cookie


class Datapath:
    def __init__(self, pin_dir: Path, store: IdentityStore, *, flow_rate_limit: int = DEFAULT_FLOW_RATE_LIMIT,
                 flow_rate_burst: int = 0, node_name: str = "", ring_bytes: int = 1 << 20,
                 host_ips: Sequence[str] = (), policy_map_entries: int = 262144,
                 host_routing: bool = True, object_path: Path = DATAPATH_OBJECT) -> None:
        if flow_rate_limit < 0 or flow_rate_burst < 0:
            raise ValueError("flow_rate_limit and flow_rate_burst must be >= 0")
        self.store = store
        self.node_name = node_name or socket.gethostname()
        self._lock = threading.RLock()
        self._pinned: list[Path] = []
        self._endpoints: dict[int, _EndpointState] = {}
        self._by_ip: dict[str, Endpoint] = {}
        self._policies: list[NetworkPolicy] = []
        self._namespaces: dict[str, dict[str, str]] | None = None  # namespace labels from the API (None: unknown)
        self._cidr_ids: dict[str, int] = {}
        self._cookies: dict[str, int] = {}  # "namespace/name" -> policy cookie (never reused while running)
        self._cookie_names: dict[int, str] = {}
        self._host_ips: dict[str, int] = {normalize_cidr(ip): IDENTITY_HOST for ip in host_ips}
        self._bpf_ipcache: dict[str, int] = {}
        self._flows: FlowReader | None = None
        # cluster mode: a pod on another node by address, so flow events can name it (netdp.cluster)
        self.remote_endpoint_of: Callable[[str], Endpoint | None] | None = None
        self.pin_dir = fs.pin_dir(pin_dir)
        self._created_dir = not any(self.pin_dir.iterdir())
        obj = BpfObject.open(object_path)
        try:
            obj.set_config(flow_rate_limit=flow_rate_limit, flow_rate_burst=flow_rate_burst,
                           host_routing=int(host_routing))
            obj.resize_map("events", ring_bytes)
            obj.resize_map("netdp_policy", policy_map_entries)  # a reused pin keeps its own size
            reused = []
            for name in PINNED_MAPS:
                p = self.pin_dir / name
                if p.exists() and not _pin_matches(obj, name, p):
                    # left by a lanner whose map layout differs: its state cannot be read by these programs.
                    # The agent re-adds endpoints and policies at start; established flows are checked again.
                    log.warning("pinned map %s has another layout (an older lanner?): replacing it", p)
                    p.unlink()
                if p.exists():
                    obj.reuse_pinned_map(name, str(p))
                    reused.append(name)
            obj.load()
            for name in PINNED_MAPS:
                if name not in reused:
                    p = self.pin_dir / name
                    obj.map(name).pin(str(p))
                    self._pinned.append(p)
        except BaseException:
            obj.close()
            self._unpin()
            raise
        self._obj = obj
        btf = obj.btf
        self._m_endpoints: Map = obj.map("netdp_endpoints", _IPV4, struct_codec(btf, "endpoint_info"))
        self._m_ipcache: Map = obj.map("netdp_ipcache", struct_codec(btf, "ipcache_key"), struct_codec(btf, "ipcache_value"))
        self._m_policy: Map = obj.map("netdp_policy", struct_codec(btf, "policy_key"), struct_codec(btf, "policy_value"))
        self._m_ct: Map = obj.map("netdp_ct", struct_codec(btf, "ct_key"), struct_codec(btf, "ct_entry"))
        self._m_config: Map = obj.map("netdp_config", _U32, struct_codec(btf, "netdp_config"))
        # the policy revision established flows were last checked against: a new one for this run (the
        # programs re-check every established flow once), moving on from a reused pin's
        if "netdp_config" not in reused:
            self._m_config.update(0, {"policy_rev": int.from_bytes(os.urandom(4), "little")})
        self._policy_rev = 0
        self._bump_policy_rev()
        self._decoder = FlowDecoder.from_btf(btf)
        if reused:
            log.info("reusing pinned maps %s from %s", ", ".join(reused), self.pin_dir)
        for k, v in self._m_ipcache.items():
            ip = socket.inet_ntoa(struct.pack("<I", k["addr"]))
            self._bpf_ipcache[f"{ip}/{k['prefixlen']}"] = v["identity"]
        self._orphan_policy: dict[tuple[int, int, int, int, int, int], int] = {}  # (endpoint id, *entry)
        if "netdp_policy" in reused:  # entries of endpoints from the previous run: replaced as they are re-added
            for k, v in self._m_policy.lookup_batch():
                self._orphan_policy[(k["endpoint_id"], k["identity"], k["direction"], k["proto"], k["dport"],
                                     k["dport_plen"])] = v["cookie"]
        self._sync_ipcache()

    # ------------------------------------------------------------------------------------------
    # endpoints

    def add_endpoint(self, ep: Endpoint) -> None:
        """Write the endpoint map and ipcache, attach the TC programs, apply the policies. Idempotent."""
        if not 1 <= ep.endpoint_id <= 0xFFFF:
            raise DatapathError(f"endpoint {ep.container_id}: endpoint_id {ep.endpoint_id} is not in 1..65535")
        if not ep.host_ifindex > 0:
            raise DatapathError(f"endpoint {ep.endpoint_id}: host_ifindex {ep.host_ifindex} is not an interface index")
        try:
            ipaddress.IPv4Address(ep.ipv4)
        except ValueError:
            raise DatapathError(f"endpoint {ep.endpoint_id}: ipv4 {ep.ipv4!r} is not an IPv4 address") from None
        with self._lock:
            self._require_open()
            old = self._endpoints.get(ep.endpoint_id)
            if old is not None and (old.ep.ipv4 != ep.ipv4 or old.ep.host_ifindex != ep.host_ifindex):
                self.remove_endpoint(old.ep)
                old = None
            other = self._by_ip.get(ep.ipv4)
            if other is not None and other.endpoint_id != ep.endpoint_id:
                raise DatapathError(f"endpoint {ep.endpoint_id}: ipv4 {ep.ipv4} belongs to endpoint {other.endpoint_id}")
            st = old or _EndpointState(ep)
            st.ep = ep
            st.host_mac = interface_mac(ep.host_ifindex)
            if old is None:
                st.policy_keys = {k[1:]: c for k, c in self._orphan_policy.items() if k[0] == ep.endpoint_id}
                self._orphan_policy = {k: c for k, c in self._orphan_policy.items() if k[0] != ep.endpoint_id}
            self._endpoints[ep.endpoint_id] = st
            self._by_ip[ep.ipv4] = ep
            try:
                self.store.upsert_ip(f"{ep.ipv4}/32", ep.identity)
                self._sync_ipcache()
                self._apply_policies()  # writes the endpoint entry with its enforcement flags
                if not st.links:
                    st.links = self._attach(ep.host_ifindex)
            except BaseException:
                self.remove_endpoint(ep)
                raise

    def _attach(self, ifindex: int) -> list[Link]:
        """Attach both programs. ``replace``: a filter of ours left on the device by a previous run is
        replaced in place, so no detach is tried first (on a fresh veth that would fail twice: no qdisc,
        no filter)."""
        links = []
        try:
            for prog, ingress in (("from_pod", True), ("to_pod", False)):
                links.append(self._obj.program(prog).attach_tc(ifindex, ingress=ingress, priority=TC_PRIORITY,
                                                               handle=TC_HANDLE, replace=True))
        except BaseException:
            for link in links:
                link.destroy()
            raise
        return links

    @staticmethod
    def _detach_stale(ifindex: int, point: int) -> None:
        """Remove our filter left on the device by a previous run (TC filters outlive their process)."""
        hook = L.bpf_tc_hook(sz=ctypes.sizeof(L.bpf_tc_hook), ifindex=ifindex, attach_point=point)
        opts = L.bpf_tc_opts(sz=ctypes.sizeof(L.bpf_tc_opts), handle=TC_HANDLE, priority=TC_PRIORITY)
        with L.log_capture.capture():  # the kernel's "no such filter" is the usual answer: keep it quiet
            L.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))

    def remove_endpoint(self, ep: Endpoint) -> None:
        """Detach, delete the endpoint's map entries and ipcache entry. Idempotent."""
        with self._lock:
            if self._obj is None:
                return
            st = self._endpoints.pop(ep.endpoint_id, None)
            links = st.links if st else []
            for link in links:
                link.destroy()
            ip = st.ep.ipv4 if st else ep.ipv4
            if self._by_ip.get(ip) is not None and self._by_ip[ip].endpoint_id == ep.endpoint_id:
                del self._by_ip[ip]
            if ip not in self._by_ip:
                self._m_endpoints.delete(ip)
            if st and st.policy_keys:
                self._m_policy.delete_batch([self._policy_key(ep.endpoint_id, k) for k in st.policy_keys])
            if st is None:  # not added since this datapath opened: what a previous run left for it
                orphans = [k for k in self._orphan_policy if k[0] == ep.endpoint_id]
                self._m_policy.delete_batch([self._policy_key(ep.endpoint_id, k[1:]) for k in orphans])
                for k in orphans:
                    del self._orphan_policy[k]
                if ep.host_ifindex > 0:
                    for point in (BPF_TC_INGRESS, BPF_TC_EGRESS):
                        self._detach_stale(ep.host_ifindex, point)
            if ip not in self._by_ip:
                self.store.delete_ip(f"{ip}/32")
            self._sync_ipcache()
            if self._policies:
                self._apply_policies()

    def endpoints(self) -> list[Endpoint]:
        with self._lock:
            return [st.ep for st in self._endpoints.values()]

    def _local_or_remote_endpoint(self, ipv4: str) -> Endpoint | None:
        """For events: a local endpoint, else a pod another node published (cluster mode)."""
        ep = self.endpoint_for_ip(ipv4)
        if ep is None and self.remote_endpoint_of is not None:
            ep = self.remote_endpoint_of(ipv4)
        return ep

    def endpoint_for_ip(self, ipv4: str) -> Endpoint | None:
        return self._by_ip.get(ipv4)

    # ------------------------------------------------------------------------------------------
    # policy

    def set_network_policies(self, policies: Sequence[NetworkPolicy],
                             namespaces: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Replace the policy set (and, when given, every namespace's labels as the API has them: what
        a namespaceSelector matches; None keeps the current ones) and recompile every endpoint's policy map.

        Everything is compiled and checked against the map sizes first: a set that does not fit
        raises DatapathError and leaves the previous policies in force."""
        with self._lock:
            self._require_open()
            policies = list(policies)
            nsl = self._namespaces if namespaces is None else {n: dict(v) for n, v in namespaces.items()}
            cidr_ids = self._cidr_identities_for(policies)
            plan = self._compile(policies, cidr_ids, nsl)
            self._policies = policies
            self._namespaces = nsl
            self._cidr_ids = cidr_ids
            self._sync_ipcache(remove=False)  # new CIDR identities first, stale ones after the policy moved
            self._apply(plan)
            self._sync_ipcache()

    def sync(self) -> None:
        """Pick up changes another writer made to the store (a cluster backend's watch calls this):
        mirror its ipcache into the BPF ipcache and recompile policies against its identities."""
        with self._lock:
            self._require_open()
            self._sync_ipcache(remove=False)
            self._apply_policies()
            self._sync_ipcache()

    def _cidr_identities_for(self, policies: Sequence[NetworkPolicy]) -> dict[str, int]:
        wanted: set[str] = set()
        for pol in policies:
            wanted |= pol.cidrs()
        ids = {c: i for c, i in self._cidr_ids.items() if c in wanted}
        used = set(ids.values())
        n = 1
        for cidr in sorted(wanted - set(ids)):
            while LOCAL_IDENTITY_FLAG | n in used:
                n += 1
            ids[cidr] = LOCAL_IDENTITY_FLAG | n
            used.add(ids[cidr])
        room = self._m_ipcache.max_entries - len(self.store.ipcache()) - len(self._host_ips)
        if len(ids) > room:
            raise DatapathError(f"policies name {len(ids)} CIDRs; the ipcache map has room for {room}")
        return ids

    def _identities(self) -> dict[int, dict[str, str]]:
        """Every identity's labels: the store's, plus the local endpoints' (a store may list none)."""
        list_fn = getattr(self.store, "identities", None)
        out: dict[int, dict[str, str]] = dict(list_fn()) if callable(list_fn) else {}
        if not callable(list_fn):
            for ident in set(self.store.ipcache().values()):
                labels = self.store.labels_of(ident)
                if labels is not None:
                    out[ident] = labels
        for st in self._endpoints.values():
            out.setdefault(st.ep.identity, pod_identity_labels(st.ep.pod))
        return out

    @staticmethod
    def _policy_key(endpoint_id: int, k: PolicyEntry) -> dict[str, int]:
        ident, direction, proto, port, plen = k
        return {"identity": ident, "endpoint_id": endpoint_id, "direction": direction, "proto": proto, "dport": port,
                "dport_plen": plen}

    def _cookie(self, origin: str) -> int:
        c = self._cookies.get(origin)
        if c is None:
            c = self._cookies[origin] = len(self._cookies) + 1
            self._cookie_names[c] = origin
        return c

    def policy_of_cookie(self, cookie: int) -> str | None:
        """The policy ("namespace/name") behind a policy map entry's cookie."""
        return self._cookie_names.get(cookie)

    def _compile(self, policies: Sequence[NetworkPolicy], cidr_ids: Mapping[str, int],
                 namespaces: Mapping[str, Mapping[str, str]] | None = None) -> dict[int, tuple[int, dict]]:
        """Endpoint id -> (flags, policy entries with their cookies), checked to fit the policy map."""
        subjects = subjects_of(self._identities(), namespaces) if policies else {}
        cidrs = CidrIdentities(dict(cidr_ids))
        plan: dict[int, tuple[int, dict]] = {}
        peak = sum(len(st.policy_keys) for st in self._endpoints.values())
        for epid, st in self._endpoints.items():
            ep = st.ep
            comp = compile_endpoint(policies, ep.pod.namespace, ep.pod.label_dict(), subjects, cidrs)
            flags = (EP_INGRESS_ENFORCED if comp.ingress_enforced else 0) | \
                (EP_EGRESS_ENFORCED if comp.egress_enforced else 0)
            plan[epid] = (flags, {k: self._cookie(o) for k, o in comp.origins.items()})
            peak += len(comp.entries - st.policy_keys.keys())  # added before the stale ones are removed
        if peak > self._m_policy.max_entries:
            raise DatapathError(f"policies need {peak} policy map entries at peak; "
                                f"the map holds {self._m_policy.max_entries}")
        return plan

    def _apply(self, plan: Mapping[int, tuple[int, dict]]) -> None:
        for epid, (flags, new) in plan.items():
            st = self._endpoints[epid]
            ep = st.ep
            old = st.policy_keys
            add = {k: c for k, c in new.items() if old.get(k) != c}
            stale = [k for k in old if k not in new]
            # order: allow first, then enforce, then remove what no longer applies (no transient drops)
            self._m_policy.update_batch([(self._policy_key(epid, k), {"cookie": c}) for k, c in sorted(add.items())])
            st.policy_keys = {**old, **add}
            mac = parse_mac(ep.mac)
            routed = mac is not None and st.host_mac is not None
            value = {"ifindex": ep.host_ifindex, "identity": ep.identity, "endpoint_id": epid,
                     "flags": flags | (EP_HOST_ROUTING if routed else 0),
                     "port_plens": self._port_plens(st.policy_keys),
                     "mac": mac or bytes(6), "host_mac": st.host_mac or bytes(6)}
            self._m_endpoints.update(ep.ipv4, value)
            st.flags = flags
            if stale:
                self._m_policy.delete_batch([self._policy_key(epid, k) for k in stale])
            st.policy_keys = new
            if self._port_plens(new) != value["port_plens"]:  # fewer block sizes left to look up
                self._m_endpoints.update(ep.ipv4, {**value, "port_plens": self._port_plens(new)})
        if plan:
            self._bump_policy_rev()

    def _bump_policy_rev(self) -> None:
        """After any change that can alter a verdict (policy entries, enforcement flags, the ipcache):
        established flows are checked against the policy again on their next packet. Until then the
        programs pass them on one conntrack lookup. Called after the change is complete."""
        cur = self._m_config.lookup(0)  # another datapath on the same pins may have moved it meanwhile
        self._policy_rev = ((cur["policy_rev"] if cur else self._policy_rev) + 1) & 0xFFFFFFFF
        self._m_config.update(0, {"policy_rev": self._policy_rev})

    @staticmethod
    def _port_plens(entries: Mapping[PolicyEntry, int]) -> int:
        """Which port-block prefix lengths the program must look up for this endpoint."""
        mask = 0
        for e in entries:
            mask |= 1 << e[4]
        return mask

    def _apply_policies(self) -> None:
        self._apply(self._compile(self._policies, self._cidr_ids, self._namespaces))

    def policy_entries(self, endpoint_id: int) -> int:
        """How many policy map entries an endpoint has."""
        with self._lock:
            st = self._endpoints.get(endpoint_id)
            return len(st.policy_keys) if st else 0

    # ------------------------------------------------------------------------------------------
    # ipcache

    def _sync_ipcache(self, remove: bool = True) -> None:
        want = dict(self._cidr_ids)  # keys are normalized: by the policy parser, normalize_cidr and the store
        want.update(self._host_ips)
        want.update(self.store.ipcache())
        changed = [(c, i) for c, i in want.items() if self._bpf_ipcache.get(c) != i]
        self._m_ipcache.update_batch([(self._lpm_key(c), {"identity": i}) for c, i in changed])
        self._bpf_ipcache.update(changed)
        stale = [c for c in self._bpf_ipcache if c not in want] if remove else []
        for cidr in stale:
            self._m_ipcache.delete(self._lpm_key(cidr))
            del self._bpf_ipcache[cidr]
        if changed or stale:
            self._bump_policy_rev()

    @staticmethod
    def _lpm_key(cidr: str) -> dict[str, int]:
        addr, _, plen = cidr.partition("/")
        return {"prefixlen": int(plen) if plen else 32, "addr": addr_u32(addr)}

    def identity_of_ip(self, ipv4: str) -> int | None:
        """What the BPF ipcache says for one address (longest prefix), None on a miss (world)."""
        v = self._m_ipcache.lookup({"prefixlen": 32, "addr": addr_u32(ipv4)})
        return v["identity"] if v else None

    def set_host_ips(self, ips: Sequence[str]) -> None:
        """The node's own addresses (the gateway, node IPs): identity host in the ipcache."""
        with self._lock:
            self._require_open()
            self._host_ips = {normalize_cidr(ip): IDENTITY_HOST for ip in ips}
            self._sync_ipcache()

    def cidr_identities(self) -> dict[str, int]:
        return dict(self._cidr_ids)

    # ------------------------------------------------------------------------------------------
    # flows, conntrack

    def flows(self) -> FlowReader:
        """The flow event reader (one per datapath)."""
        with self._lock:
            self._require_open()
            if self._flows is None:
                ring = RingBuffer(self._obj.map("events"))
                self._flows = FlowReader(ring, self._decoder, self._obj.map("netdp_stats", _U32, _U64),
                                         self._obj.map("lanner_lost", _U32, _U64), self._local_or_remote_endpoint,
                                         self.node_name, self.policy_of_cookie)
            return self._flows

    def conntrack(self) -> list[tuple[dict[str, int], dict[str, int]]]:
        with self._lock:
            self._require_open()
            return self._m_ct.lookup_batch()

    # ------------------------------------------------------------------------------------------
    # teardown

    def _require_open(self) -> None:
        if getattr(self, "_obj", None) is None:
            raise DatapathError("the datapath is closed")

    def _unpin(self) -> None:
        for p in self._pinned:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        self._pinned = []
        if getattr(self, "_created_dir", False):
            try:
                self.pin_dir.rmdir()
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                    raise

    def close(self) -> None:
        """Detach every program this datapath attached and unpin every map it pinned."""
        with self._lock:
            if getattr(self, "_obj", None) is None:
                return
            if self._flows is not None:
                self._flows.close()
                self._flows = None
            for st in self._endpoints.values():
                for link in st.links:
                    link.destroy()
            self._endpoints.clear()
            self._by_ip.clear()
            self._obj.close()
            self._obj = None  # type: ignore[assignment]
            self._unpin()

    def __enter__(self) -> "Datapath":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
