"""Tracing-policy events (the generic programs' struct gen_event records) -> Tetragon JSON / protobuf.

The generic sensor unpacks a record (lanner.sensors.generic.decoder: one ``unpack_from``, fields by their
BTF layout); this turns it into ``process_kprobe`` / ``process_tracepoint`` / ``process_lsm`` /
``process_uprobe`` / ``process_usdt``. The process and parent come from the process cache and are rendered
by the shared encoder (memoised fragments), so per event only the args are built here. Each argument type
(generic.h ``enum gen_arg_type``, by name) has its renderer.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any, Callable, Mapping, Protocol

import orjson

from lanner.bpf.records import RecordLayout
from lanner.exporter.encoder import SECUREBITS, cap_names
from lanner.exporter.pipeline import OutEvent
from lanner.policy.names import ACTION_NUMBERS, CAPABILITIES, IP_PROTOCOLS, TCP_STATES

ACTION_NAMES = {0: "KPROBE_ACTION_POST", **{v: f"KPROBE_ACTION_{k.upper()}" for k, v in ACTION_NUMBERS.items()}}

_PROTO_NAMES = {v: k for k, v in IP_PROTOCOLS.items()}
_STATE_NAMES = {v: k for k, v in TCP_STATES.items()}
_CAP_NAMES = {v: k for k, v in CAPABILITIES.items()}
# kernel taint bit -> Tetragon's TaintedBitsType name (its value is the bit's mask)
_TAINTS = {0: "TAINT_PROPRIETARY_MODULE", 1: "TAINT_FORCED_MODULE", 2: "TAINT_FORCED_UNLOAD_MODULE",
           10: "TAINT_STAGED_MODULE", 12: "TAINT_OUT_OF_TREE_MODULE", 13: "TAINT_UNSIGNED_MODULE",
           15: "TAINT_KERNEL_LIVE_PATCH_MODULE", 18: "TAINT_TEST_MODULE"}
_SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET", 6: "SOCK_DCCP",
               10: "SOCK_PACKET"}
# enum bpf_prog_type / bpf_map_type (uapi/linux/bpf.h), perf_type_id (uapi/linux/perf_event.h); a number past
# the table is printed as such (Tetragon's tables stop at BPF_PROG_TYPE_SYSCALL and BPF_MAP_TYPE_BLOOM_FILTER)
_BPF_PROG_TYPES = (
    "UNSPEC", "SOCKET_FILTER", "KPROBE", "SCHED_CLS", "SCHED_ACT", "TRACEPOINT", "XDP", "PERF_EVENT", "CGROUP_SKB",
    "CGROUP_SOCK", "LWT_IN", "LWT_OUT", "LWT_XMIT", "SOCK_OPS", "SK_SKB", "CGROUP_DEVICE", "SK_MSG", "RAW_TRACEPOINT",
    "CGROUP_SOCK_ADDR", "LWT_SEG6LOCAL", "LIRC_MODE2", "SK_REUSEPORT", "FLOW_DISSECTOR", "CGROUP_SYSCTL",
    "RAW_TRACEPOINT_WRITABLE", "CGROUP_SOCKOPT", "TRACING", "STRUCT_OPS", "EXT", "LSM", "SK_LOOKUP", "SYSCALL",
    "NETFILTER")
_BPF_MAP_TYPES = (
    "UNSPEC", "HASH", "ARRAY", "PROG_ARRAY", "PERF_EVENT_ARRAY", "PERCPU_HASH", "PERCPU_ARRAY", "STACK_TRACE",
    "CGROUP_ARRAY", "LRU_HASH", "LRU_PERCPU_HASH", "LPM_TRIE", "ARRAY_OF_MAPS", "HASH_OF_MAPS", "DEVMAP", "SOCKMAP",
    "CPUMAP", "XSKMAP", "SOCKHASH", "CGROUP_STORAGE", "REUSEPORT_SOCKARRAY", "PERCPU_CGROUP_STORAGE", "QUEUE",
    "STACK", "SK_STORAGE", "DEVMAP_HASH", "STRUCT_OPS", "RINGBUF", "INODE_STORAGE", "TASK_STORAGE", "BLOOM_FILTER",
    "USER_RINGBUF", "CGRP_STORAGE", "ARENA")
# the fixed perf event types; dynamic PMUs (kprobe, uprobe, ...: /sys/bus/event_source/devices/*/type) are printed
# as their number (Tetragon names the first one, 6, PERF_TYPE_MAX)
_PERF_TYPES = ("HARDWARE", "SOFTWARE", "TRACEPOINT", "HW_CACHE", "RAW", "BREAKPOINT")


def _enum_name(prefix: str, names: tuple[str, ...], v: int) -> str:
    return prefix + names[v] if v < len(names) else str(v)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _nonzero(d: dict[str, Any]) -> dict[str, Any]:
    """protojson leaves out zero scalars and empty strings (uint64 values are strings there)."""
    return {k: v for k, v in d.items() if v not in (0, "", "0")}


def permission(mode: int) -> str:
    """ls-style permission string of an i_mode (Tetragon's file_arg.permission)."""
    kind = {0o040000: "d", 0o120000: "l", 0o020000: "c", 0o060000: "b", 0o010000: "p", 0o140000: "s"}.get(
        mode & 0o170000, "-")
    bits = "".join(c if mode >> (8 - i) & 1 else "-" for i, c in enumerate("rwxrwxrwx"))
    return kind + bits


def _addr(raw: bytes, family: int) -> str:
    if family == 2:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == 10:
        return str(ipaddress.IPv6Address(raw[:16]))
    return ""
FAMILY_NAMES = {0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET"}
_S32 = {"int", "sint32", "int32", "int8", "sint8", "int16", "sint16"}
_U32 = {"uint32", "uint8", "uint16"}
_S64 = {"long", "int64", "sint64"}


def _signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def int_arg(plan: ArgPlanLike, v: int) -> dict[str, Any]:
    t = plan.type
    if t in _S32:
        return {"int_arg": _signed(v, 32)}
    if t in _U32:
        return {"uint_arg": v & 0xFFFFFFFF}
    if t in _S64:
        return {"long_arg": _signed(v, 64)}
    if t == "syscall64":
        return {"syscall_id": {"id": v & 0xFFFFFFFF, "abi": "x64"}}
    if t == "auto" or t == "int":
        return {"int_arg": _signed(v, 32)}
    return {"size_arg": str(v & ((1 << 64) - 1))}  # uint64/ulong/size_t: protojson writes uint64 as a string


class ArgPlanLike(Protocol):
    """How one argument is reported (lanner.sensors.generic.compiler.ArgPlan)."""

    type: str
    gen_type: int
    label: str | None


class EventLayout(Protocol):
    """Where a gen_event record's fields are (lanner.sensors.generic.decoder.EventDecoder)."""

    i_ktime: int
    i_pid: int
    i_pktime: int
    i_tid: int
    i_action: int
    i_flags: int
    i_ret: int
    i_trunc: int
    i_kstack: int
    i_ustack: int
    i_vals: list[int]
    i_aux: list[int]
    i_lens: list[int]
    i_str: list[int]
    sock: RecordLayout
    cred: RecordLayout
    userns: RecordLayout
    bpf_attr: RecordLayout
    bpf_map: RecordLayout
    perf: RecordLayout
    arg_types: Mapping[str, int]
    event_flags: Mapping[str, int]

    def record(self, lay: RecordLayout, raw: bytes) -> dict[str, Any]: ...


Rendered = dict[str, Any] | None
Renderer = Callable[["TracingEvents", tuple, int, "ArgPlanLike"], Rendered]


def _text(ev: "TracingEvents", rec: tuple, i: int) -> str:
    d = ev.dec
    return rec[d.i_str[i]][:rec[d.i_lens[i]]].decode("utf-8", "replace")


def _raw(ev: "TracingEvents", rec: tuple, i: int) -> bytes:
    d = ev.dec
    return rec[d.i_str[i]][:rec[d.i_lens[i]]]


def _int(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    v = rec[ev.dec.i_vals[i]]
    if plan.type == "capability":
        c = _signed(v, 32)
        return {"capability_arg": {"value": c, "name": _CAP_NAMES.get(c, str(c))}}
    return int_arg(plan, v)


def _string(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    return {"string_arg": _text(ev, rec, i)}


def _fd(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    if rec[ev.dec.i_lens[i]]:
        return {"file_arg": {"path": _text(ev, rec, i)}}
    return {"int_arg": _signed(rec[ev.dec.i_vals[i]], 32)}


def _bytes(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    data = base64.b64encode(_raw(ev, rec, i)).decode()
    if rec[ev.dec.i_trunc] & (1 << i):
        return {"truncated_bytes_arg": {"bytes_arg": data, "orig_size": str(rec[ev.dec.i_aux[i]])}}
    return {"bytes_arg": data}


def _sockaddr(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    raw = _raw(ev, rec, i)
    v = rec[ev.dec.i_vals[i]]
    addr = str(ipaddress.ip_address(raw)) if len(raw) in (4, 16) else ""
    return {"sockaddr_arg": {"family": FAMILY_NAMES.get(v, str(v)), "addr": addr, "port": rec[ev.dec.i_aux[i]]}}


def _path_like(key: str, with_mode: bool) -> Renderer:
    def render(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
        body: dict[str, Any] = {"path": _text(ev, rec, i)}
        v = rec[ev.dec.i_vals[i]]
        if with_mode and v:
            body["permission"] = permission(v)
        return {key: body}
    return render


def _sock(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    return {"sock_arg": ev.sock(_raw(ev, rec, i), False)}


def _skb(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    return {"skb_arg": ev.sock(_raw(ev, rec, i), True)}


def _cred(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    r = ev.dec.record(ev.dec.cred, _raw(ev, rec, i))
    out: dict[str, Any] = {k: r[k] for k in ("uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid")}
    bits = [SECUREBITS[b] for b in range(len(SECUREBITS)) if r["securebits"] >> b & 1]
    if bits:
        out["securebits"] = bits
    caps = {k: cap_names(r[f"cap_{k}"]) for k in ("permitted", "effective", "inheritable")}
    out["caps"] = {k: v for k, v in caps.items() if v}
    out["user_ns"] = {"ns": {"inum": r["userns_inum"]}}
    return {"process_credentials_arg": out}


def _userns(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    r = ev.dec.record(ev.dec.userns, _raw(ev, rec, i))
    return {"user_ns_arg": {"level": r["level"], "uid": r["owner"], "gid": r["group"], "ns": {"inum": r["inum"]}}}


def _module(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    mod: dict[str, Any] = {"name": _text(ev, rec, i)}
    sig = rec[ev.dec.i_aux[i]]
    if sig in (0, 1):
        mod["signature_ok"] = bool(sig)
    v = rec[ev.dec.i_vals[i]]
    taints = [name for bit, name in _TAINTS.items() if v >> bit & 1]
    if taints:
        mod["tainted"] = taints
    return {"module_arg": mod}


def _bpf_attr(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    r = ev.dec.record(ev.dec.bpf_attr, _raw(ev, rec, i))
    return {"bpf_attr_arg": _nonzero({
        "ProgType": _enum_name("BPF_PROG_TYPE_", _BPF_PROG_TYPES, r["prog_type"]),
        "InsnCnt": r["insn_cnt"], "ProgName": _cstr(r["prog_name"])})}


def _bpf_map(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    r = ev.dec.record(ev.dec.bpf_map, _raw(ev, rec, i))
    return {"bpf_map_arg": _nonzero({
        "MapType": _enum_name("BPF_MAP_TYPE_", _BPF_MAP_TYPES, r["map_type"]), "KeySize": r["key_size"],
        "ValueSize": r["value_size"], "MaxEntries": r["max_entries"], "MapName": _cstr(r["name"])})}


def _perf_event(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    r = ev.dec.record(ev.dec.perf, _raw(ev, rec, i))
    return {"perf_event_arg": _nonzero({
        "KprobeFunc": _cstr(r["kprobe_func"]), "Type": _enum_name("PERF_TYPE_", _PERF_TYPES, r["type"]),
        "Config": str(r["config"]), "ProbeOffset": str(r["probe_offset"])})}


def _netdev(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    return {"net_dev_arg": {"name": _text(ev, rec, i)}}


def _other(ev: "TracingEvents", rec: tuple, i: int, plan: ArgPlanLike) -> Rendered:
    """GA_NONE and a type this exporter does not know: a ``nop`` argument is left out, others print as int."""
    return None if plan.type == "nop" else {"int_arg": _signed(rec[ev.dec.i_vals[i]], 32)}


# generic.h enum gen_arg_type, by name -> how the argument is written
RENDERERS: Mapping[str, Renderer] = {
    "GA_INT": _int, "GA_USTR": _string, "GA_KSTR": _string, "GA_DATALOC": _string, "GA_INLINE_STR": _string,
    "GA_FD": _fd, "GA_UBUF": _bytes, "GA_IOVEC": _bytes, "GA_IOV_ITER": _bytes, "GA_USOCKADDR": _sockaddr,
    "GA_KSOCKADDR": _sockaddr, "GA_FILE": _path_like("file_arg", True), "GA_PATH": _path_like("path_arg", True),
    "GA_BINPRM": _path_like("linux_binprm_arg", True), "GA_DENTRY": _path_like("file_arg", False),
    "GA_KIOCB": _path_like("file_arg", True), "GA_SOCK": _sock, "GA_SOCKET": _sock, "GA_SKB": _skb,
    "GA_CRED": _cred, "GA_USERNS": _userns, "GA_MODULE": _module, "GA_LOAD_INFO": _module,
    "GA_BPF_ATTR": _bpf_attr, "GA_BPF_MAP": _bpf_map, "GA_PERF_EVENT": _perf_event, "GA_NETDEV": _netdev,
}


class TracingEvents:
    """The Tetragon rendering of one generic object's event records (its BTF's layout and enum values)."""

    def __init__(self, dec: EventLayout) -> None:
        self.dec = dec
        missing = set(RENDERERS) - set(dec.arg_types)
        if missing:
            raise KeyError(f"the generic object's enum gen_arg_type lacks {sorted(missing)}")
        self._render: dict[int, Renderer] = {dec.arg_types[n]: fn for n, fn in RENDERERS.items()}
        self._ga_sock = dec.arg_types["GA_SOCK"]
        f = dec.event_flags
        self._f_return, self._f_kstack, self._f_ustack = f["GEF_RETURN"], f["GEF_KSTACK"], f["GEF_USTACK"]

    def sock(self, raw: bytes, skb: bool) -> dict[str, Any]:
        r = self.dec.record(self.dec.sock, raw)
        fam = r["family"]
        out: dict[str, Any] = {"family": FAMILY_NAMES.get(fam, str(fam))}
        saddr, daddr = _addr(r["saddr"], fam), _addr(r["daddr"], fam)
        protocol = _PROTO_NAMES.get(r["protocol"], str(r["protocol"]))
        if skb:
            out.update(len=r["len"], priority=r["priority"], mark=r["mark"], saddr=saddr, daddr=daddr,
                       sport=r["sport"], dport=r["dport"], proto=r["protocol"], protocol=protocol)
        else:
            out.update(type=_SOCK_TYPES.get(r["type"], str(r["type"])), protocol=protocol, mark=r["mark"],
                       priority=r["priority"], saddr=saddr, daddr=daddr, sport=r["sport"], dport=r["dport"],
                       cookie=str(r["cookie"]), state=_STATE_NAMES.get(r["state"], str(r["state"])))
        return {k: v for k, v in out.items() if v not in (0, "", "0")}

    def ret_sock(self, rec: tuple, slot: int) -> dict[str, Any]:
        """A sock return value, read at the return into the slot after the args (GHF_RET_SOCK); NULL: int 0."""
        d = self.dec
        n = rec[d.i_lens[slot]] if rec[d.i_ret] else 0
        return {"sock_arg": self.sock(rec[d.i_str[slot]][:n], False)} if n else {"int_arg": 0}

    def args(self, rec: tuple, plans: list) -> list[dict[str, Any]]:
        out = []
        render = self._render
        for i, plan in enumerate(plans):
            a = render.get(plan.gen_type, _other)(self, rec, i, plan)
            if a is None:
                continue
            if plan.label:
                a["label"] = plan.label
            out.append(a)
        return out

    def build(self, rec: tuple, meta: Any, encoder: Any, cache: Any, want_pb: bool,
              stacks: Any = None) -> OutEvent | None:
        """``meta``: the engine's _HookMeta (policy name, plan, unit); ``stacks``: lanner.sensors.generic.stacks
        .Stacks (the stack traces of Post kernelStackTrace / userStackTrace)."""
        d = self.dec
        pid, pktime = rec[d.i_pid], rec[d.i_pktime]
        proc = cache.resolve(pid, pktime)
        parent = cache.get(proc.parent_key) if proc is not None and proc.parent_key else None
        body: dict[str, Any] = {}
        body["process"] = encoder.process_fragment(proc) if proc is not None else {"pid": pid, "tid": rec[d.i_tid]}
        if parent is not None:
            body["parent"] = encoder.process_fragment(parent)
        kind = meta.unit.event_kind
        _hook_fields(body, kind, meta.unit)
        self._body(body, rec, meta, encoder, stacks)
        doc = {kind: body, "node_name": encoder.node, "time": encoder.clock.rfc3339(rec[d.i_ktime])}
        line = orjson.dumps(doc)
        pb = _proto(line) if want_pb else None
        return OutEvent(kind, proc, parent, line, policy_name=meta.policy_name, pb=pb)

    def _body(self, body: dict[str, Any], rec: tuple, meta: Any, encoder: Any, stacks: Any) -> None:
        """args, return, action, stack traces, policy name, message and tags, in Tetragon's field order."""
        d, plan = self.dec, meta.plan
        args = self.args(rec, plan.args)
        if args:
            pods = getattr(encoder, "pod_resolver", None)
            if pods is not None and hasattr(pods, "pod_for_ip"):
                name_socket_pods(args, pods.pod_for_ip)
            body["args"] = args
        flags = rec[d.i_flags]
        if flags & self._f_return and plan.ret is not None:
            r = self.ret_sock(rec, len(plan.args)) if plan.ret.gen_type == self._ga_sock else \
                int_arg(plan.ret, rec[d.i_ret] & ((1 << 64) - 1))
            if plan.ret.label:
                r["label"] = plan.ret.label
            body["return"] = r
            if plan.return_action:
                body["return_action"] = f"KPROBE_ACTION_{plan.return_action.upper()}"
        body["action"] = ACTION_NAMES.get(rec[d.i_action], "KPROBE_ACTION_POST")
        if flags & self._f_kstack and stacks is not None:
            trace = stacks.kernel_trace(rec[d.i_kstack])
            if trace:
                body["kernel_stack_trace"] = trace
        body["policy_name"] = meta.policy_name
        if plan.message:
            body["message"] = plan.message
        if plan.tags:
            body["tags"] = list(plan.tags)
        if flags & self._f_ustack and stacks is not None:
            trace = stacks.user_trace(rec[d.i_ustack], rec[d.i_tid])
            if trace:
                body["user_stack_trace"] = trace


def _hook_fields(body: dict[str, Any], kind: str, unit: Any) -> None:
    """What names the hook in each event kind: function, tracepoint, USDT probe or uprobe."""
    if kind in ("process_kprobe", "process_lsm"):
        body["function_name"] = unit.function_name
    elif kind == "process_tracepoint":
        body["subsys"] = unit.subsys
        body["event"] = unit.event
    elif kind == "process_usdt":
        body["path"] = unit.path
        body["provider"] = unit.subsys
        body["name"] = unit.event
    else:
        body["path"] = unit.path
        if unit.symbol:
            body["symbol"] = unit.symbol
        body["offset"] = str(unit.offset)


def _proto(line: bytes) -> bytes:
    """The event as GetEventsResponse protobuf bytes (from its JSON: one encoding to keep right)."""
    from google.protobuf import json_format

    from lanner.exporter.api.gen.tetragon import events_pb2

    return json_format.ParseDict(orjson.loads(line), events_pb2.GetEventsResponse(),
                                 ignore_unknown_fields=True).SerializeToString()

def name_socket_pods(args: list[dict[str, Any]], pod_for_ip: Any) -> None:
    """Socket arguments whose destination is a pod of this node name it: ``dst_pod`` in sock_arg/skb_arg
    (by daddr), ``pod`` in sockaddr_arg (by addr). lanner fields: Tetragon's protobuf ignores them."""
    for a in args:
        for key, addr_key, pod_key in (("sock_arg", "daddr", "dst_pod"), ("skb_arg", "daddr", "dst_pod"),
                                       ("sockaddr_arg", "addr", "pod")):
            body = a.get(key)
            if body is None or not body.get(addr_key):
                continue
            pod = pod_for_ip(body[addr_key])
            if pod is not None:
                body[pod_key] = {"namespace": pod.namespace, "name": pod.name}
