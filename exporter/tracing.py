"""Policy event records (struct gen_event, from the object's BTF) -> Tetragon JSON / protobuf.

One ``unpack_from`` per record; the process and parent come from the process cache and are rendered
by the shared encoder (memoised fragments), so per event only the args are built here.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

import orjson

from lanner.bpf.records import RecordLayout
from lanner.exporter.encoder import SECUREBITS, cap_names
from lanner.exporter.pipeline import OutEvent

from lanner.sensors.generic.compiler import (
    ACTION_NAMES, GA_BINPRM, GA_BPF_ATTR, GA_BPF_MAP, GA_CRED, GA_DATALOC, GA_DENTRY, GA_FD, GA_FILE, GA_INLINE_STR,
    GA_INT, GA_IOV_ITER, GA_IOVEC, GA_KIOCB, GA_KSOCKADDR, GA_KSTR, GA_LOAD_INFO, GA_MODULE, GA_NETDEV, GA_PATH,
    GA_PERF_EVENT, GA_SKB, GA_SOCK, GA_SOCKET, GA_UBUF, GA_USERNS, GA_USOCKADDR, GA_USTR,
    GEN_MAX_ARGS, ArgPlan,
)
from lanner.policy.names import CAPABILITIES, IP_PROTOCOLS, TCP_STATES

GEF_RETURN, GEF_NOPROC = 1, 2
GEF_KSTACK, GEF_USTACK = 32, 64  # generic.h: kstack / ustack hold stack ids
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


def int_arg(plan: ArgPlan, v: int) -> dict[str, Any]:
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


class EventDecoder:
    def __init__(self, btf: Any) -> None:
        lay = RecordLayout.from_btf(btf, "gen_event")
        self.size = lay.size
        self.st = lay.struct
        ix = lay.index
        self.i_op = ix("hdr.op")
        self.i_ktime = ix("hdr.ktime")
        self.i_pid, self.i_pktime = ix("key.pid"), ix("key.ktime")
        self.i_hook, self.i_tid, self.i_sel, self.i_action = ix("hook_id"), ix("tid"), ix("selector"), ix("action")
        self.i_flags, self.i_ret, self.i_trunc = ix("flags"), ix("ret"), ix("trunc")
        self.i_kstack, self.i_ustack = ix("kstack"), ix("ustack")
        self.i_vals = [ix(f"vals[{i}]") for i in range(GEN_MAX_ARGS)]
        self.i_aux = [ix(f"aux[{i}]") for i in range(GEN_MAX_ARGS)]
        self.i_lens = [ix(f"lens[{i}]") for i in range(GEN_MAX_ARGS)]
        self.i_str = [ix(f"str[{i}].s") for i in range(GEN_MAX_ARGS)]
        # the typed kernel arguments' records in str[i] (generic.h), decoded by their BTF layouts
        self.sock = RecordLayout.from_btf(btf, "gen_sock_info")
        self.cred = RecordLayout.from_btf(btf, "gen_cred_info")
        self.userns = RecordLayout.from_btf(btf, "gen_userns_info")
        self.bpf_attr = RecordLayout.from_btf(btf, "gen_bpf_attr_info")
        self.bpf_map = RecordLayout.from_btf(btf, "gen_bpf_map_info")
        self.perf = RecordLayout.from_btf(btf, "gen_perf_event_info")

    def _record(self, lay: RecordLayout, raw: bytes) -> dict[str, Any]:
        return dict(zip(lay.names, lay.struct.unpack_from(raw.ljust(lay.size, b"\0"))))

    def _sock(self, raw: bytes, skb: bool) -> dict[str, Any]:
        r = self._record(self.sock, raw)
        fam = r["family"]
        fam_name = FAMILY_NAMES.get(fam, str(fam))
        out: dict[str, Any] = {"family": fam_name}
        if skb:
            out.update(len=r["len"], priority=r["priority"], mark=r["mark"], saddr=_addr(r["saddr"], fam),
                       daddr=_addr(r["daddr"], fam), sport=r["sport"], dport=r["dport"], proto=r["protocol"],
                       protocol=_PROTO_NAMES.get(r["protocol"], str(r["protocol"])))
        else:
            out.update(type=_SOCK_TYPES.get(r["type"], str(r["type"])),
                       protocol=_PROTO_NAMES.get(r["protocol"], str(r["protocol"])), mark=r["mark"],
                       priority=r["priority"], saddr=_addr(r["saddr"], fam), daddr=_addr(r["daddr"], fam),
                       sport=r["sport"], dport=r["dport"], cookie=str(r["cookie"]),
                       state=_STATE_NAMES.get(r["state"], str(r["state"])))
        return {k: v for k, v in out.items() if v not in (0, "", "0")}

    def _cred(self, raw: bytes) -> dict[str, Any]:
        r = self._record(self.cred, raw)
        out: dict[str, Any] = {k: r[k] for k in ("uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid")}
        bits = [SECUREBITS[i] for i in range(len(SECUREBITS)) if r["securebits"] >> i & 1]
        if bits:
            out["securebits"] = bits
        caps = {k: cap_names(r[f"cap_{k}"]) for k in ("permitted", "effective", "inheritable")}
        out["caps"] = {k: v for k, v in caps.items() if v}
        out["user_ns"] = {"ns": {"inum": r["userns_inum"]}}
        return out

    def ret_sock(self, rec: tuple, slot: int) -> dict[str, Any]:
        """A sock return value, read at the return into the slot after the args (GHF_RET_SOCK); NULL: int 0."""
        n = rec[self.i_lens[slot]] if rec[self.i_ret] else 0
        return {"sock_arg": self._sock(rec[self.i_str[slot]][:n], False)} if n else {"int_arg": 0}

    def args(self, rec: tuple, plans: list[ArgPlan]) -> list[dict[str, Any]]:
        out = []
        trunc = rec[self.i_trunc]
        for i, plan in enumerate(plans):
            v = rec[self.i_vals[i]]
            n = rec[self.i_lens[i]]
            g = plan.gen_type
            if g == GA_INT and plan.type == "capability":
                c = _signed(v, 32)
                a = {"capability_arg": {"value": c, "name": _CAP_NAMES.get(c, str(c))}}
            elif g == GA_INT:
                a = int_arg(plan, v)
            elif g in (GA_USTR, GA_KSTR, GA_DATALOC, GA_INLINE_STR):
                a = {"string_arg": rec[self.i_str[i]][:n].decode("utf-8", "replace")}
            elif g == GA_FD:
                a = {"file_arg": {"path": rec[self.i_str[i]][:n].decode("utf-8", "replace")}} if n else \
                    {"int_arg": _signed(v, 32)}
            elif g in (GA_UBUF, GA_IOVEC, GA_IOV_ITER):
                data = base64.b64encode(rec[self.i_str[i]][:n]).decode()
                size = rec[self.i_aux[i]]
                a = {"truncated_bytes_arg": {"bytes_arg": data, "orig_size": str(size)}} if trunc & (1 << i) \
                    else {"bytes_arg": data}
            elif g == GA_USOCKADDR:
                raw = rec[self.i_str[i]][:n]
                addr = str(ipaddress.ip_address(raw)) if n in (4, 16) else ""
                a = {"sockaddr_arg": {"family": FAMILY_NAMES.get(v, str(v)), "addr": addr,
                                      "port": rec[self.i_aux[i]]}}
            elif g in (GA_FILE, GA_PATH, GA_BINPRM, GA_DENTRY, GA_KIOCB):
                key = {GA_FILE: "file_arg", GA_PATH: "path_arg", GA_BINPRM: "linux_binprm_arg",
                       GA_DENTRY: "file_arg", GA_KIOCB: "file_arg"}[g]
                body: dict[str, Any] = {"path": rec[self.i_str[i]][:n].decode("utf-8", "replace")}
                if g != GA_DENTRY and v:
                    body["permission"] = permission(v)
                a = {key: body}
            elif g in (GA_SOCK, GA_SOCKET):
                a = {"sock_arg": self._sock(rec[self.i_str[i]][:n], False)}
            elif g == GA_SKB:
                a = {"skb_arg": self._sock(rec[self.i_str[i]][:n], True)}
            elif g == GA_KSOCKADDR:
                raw = rec[self.i_str[i]][:n]
                addr = str(ipaddress.ip_address(raw)) if n in (4, 16) else ""
                a = {"sockaddr_arg": {"family": FAMILY_NAMES.get(v, str(v)), "addr": addr,
                                      "port": rec[self.i_aux[i]]}}
            elif g == GA_CRED:
                a = {"process_credentials_arg": self._cred(rec[self.i_str[i]][:n])}
            elif g == GA_USERNS:
                r = self._record(self.userns, rec[self.i_str[i]][:n])
                a = {"user_ns_arg": {"level": r["level"], "uid": r["owner"], "gid": r["group"],
                                     "ns": {"inum": r["inum"]}}}
            elif g in (GA_MODULE, GA_LOAD_INFO):
                mod: dict[str, Any] = {"name": rec[self.i_str[i]][:n].decode("utf-8", "replace")}
                sig = rec[self.i_aux[i]]
                if sig in (0, 1):
                    mod["signature_ok"] = bool(sig)
                taints = [name for bit, name in _TAINTS.items() if v >> bit & 1]
                if taints:
                    mod["tainted"] = taints
                a = {"module_arg": mod}
            elif g == GA_BPF_ATTR:
                r = self._record(self.bpf_attr, rec[self.i_str[i]][:n])
                a = {"bpf_attr_arg": _nonzero({
                    "ProgType": _enum_name("BPF_PROG_TYPE_", _BPF_PROG_TYPES, r["prog_type"]),
                    "InsnCnt": r["insn_cnt"], "ProgName": _cstr(r["prog_name"])})}
            elif g == GA_BPF_MAP:
                r = self._record(self.bpf_map, rec[self.i_str[i]][:n])
                a = {"bpf_map_arg": _nonzero({
                    "MapType": _enum_name("BPF_MAP_TYPE_", _BPF_MAP_TYPES, r["map_type"]), "KeySize": r["key_size"],
                    "ValueSize": r["value_size"], "MaxEntries": r["max_entries"], "MapName": _cstr(r["name"])})}
            elif g == GA_PERF_EVENT:
                r = self._record(self.perf, rec[self.i_str[i]][:n])
                a = {"perf_event_arg": _nonzero({
                    "KprobeFunc": _cstr(r["kprobe_func"]), "Type": _enum_name("PERF_TYPE_", _PERF_TYPES, r["type"]),
                    "Config": str(r["config"]), "ProbeOffset": str(r["probe_offset"])})}
            elif g == GA_NETDEV:
                a = {"net_dev_arg": {"name": rec[self.i_str[i]][:n].decode("utf-8", "replace")}}
            elif plan.type == "nop":
                continue
            else:
                a = {"int_arg": _signed(v, 32)}
            if plan.label:
                a["label"] = plan.label
            out.append(a)
        return out


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


def build_event(dec: EventDecoder, rec: tuple, meta: Any, encoder: Any, cache: Any, want_pb: bool,
                stacks: Any = None) -> OutEvent | None:
    """``meta``: engine._HookMeta (policy name, plan, unit); ``stacks``: lanner.sensors.generic.stacks.Stacks (the stack
    traces of Post kernelStackTrace / userStackTrace)."""
    pid, pktime = rec[dec.i_pid], rec[dec.i_pktime]
    proc = cache.resolve(pid, pktime)
    parent = cache.get(proc.parent_key) if proc is not None and proc.parent_key else None
    plan, unit = meta.plan, meta.unit
    body: dict[str, Any] = {}
    body["process"] = encoder.process_fragment(proc) if proc is not None else {"pid": pid, "tid": rec[dec.i_tid]}
    if parent is not None:
        body["parent"] = encoder.process_fragment(parent)
    kind = unit.event_kind
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
    args = dec.args(rec, plan.args)
    if args:
        pods = getattr(encoder, "pod_resolver", None)
        if pods is not None and hasattr(pods, "pod_for_ip"):
            name_socket_pods(args, pods.pod_for_ip)
        body["args"] = args
    if rec[dec.i_flags] & GEF_RETURN and plan.ret is not None:
        r = dec.ret_sock(rec, len(plan.args)) if plan.ret.gen_type == GA_SOCK else \
            int_arg(plan.ret, rec[dec.i_ret] & ((1 << 64) - 1))
        if plan.ret.label:
            r["label"] = plan.ret.label
        body["return"] = r
        if plan.return_action:
            body["return_action"] = f"KPROBE_ACTION_{plan.return_action.upper()}"
    body["action"] = ACTION_NAMES.get(rec[dec.i_action], "KPROBE_ACTION_POST")
    flags = rec[dec.i_flags]
    if flags & GEF_KSTACK and stacks is not None:
        trace = stacks.kernel_trace(rec[dec.i_kstack])
        if trace:
            body["kernel_stack_trace"] = trace
    body["policy_name"] = meta.policy_name
    if plan.message:
        body["message"] = plan.message
    if plan.tags:
        body["tags"] = list(plan.tags)
    if flags & GEF_USTACK and stacks is not None:
        trace = stacks.user_trace(rec[dec.i_ustack], rec[dec.i_tid])
        if trace:
            body["user_stack_trace"] = trace
    t = encoder.clock.rfc3339(rec[dec.i_ktime])
    doc = {kind: body, "node_name": encoder.node, "time": t}
    line = orjson.dumps(doc)
    pb = None
    if want_pb:
        from google.protobuf import json_format

        from lanner.exporter.api.gen.tetragon import events_pb2

        pb = json_format.ParseDict(orjson.loads(line), events_pb2.GetEventsResponse(),
                                   ignore_unknown_fields=True).SerializeToString()
    return OutEvent(kind, proc, parent, line, policy_name=meta.policy_name, pb=pb)
