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
from lanner.exporter.pipeline import OutEvent

from .compiler import (
    ACTION_NAMES, GA_DATALOC, GA_FD, GA_INLINE_STR, GA_INT, GA_IOVEC, GA_KSTR, GA_UBUF, GA_USOCKADDR, GA_USTR,
    GEN_MAX_ARGS, ArgPlan,
)

GEF_RETURN, GEF_NOPROC = 1, 2
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
        self.i_vals = [ix(f"vals[{i}]") for i in range(GEN_MAX_ARGS)]
        self.i_aux = [ix(f"aux[{i}]") for i in range(GEN_MAX_ARGS)]
        self.i_lens = [ix(f"lens[{i}]") for i in range(GEN_MAX_ARGS)]
        self.i_str = [ix(f"str[{i}].s") for i in range(GEN_MAX_ARGS)]

    def args(self, rec: tuple, plans: list[ArgPlan]) -> list[dict[str, Any]]:
        out = []
        trunc = rec[self.i_trunc]
        for i, plan in enumerate(plans):
            v = rec[self.i_vals[i]]
            n = rec[self.i_lens[i]]
            g = plan.gen_type
            if g == GA_INT:
                a = int_arg(plan, v)
            elif g in (GA_USTR, GA_KSTR, GA_DATALOC, GA_INLINE_STR):
                a = {"string_arg": rec[self.i_str[i]][:n].decode("utf-8", "replace")}
            elif g == GA_FD:
                a = {"file_arg": {"path": rec[self.i_str[i]][:n].decode("utf-8", "replace")}} if n else \
                    {"int_arg": _signed(v, 32)}
            elif g in (GA_UBUF, GA_IOVEC):
                data = base64.b64encode(rec[self.i_str[i]][:n]).decode()
                size = rec[self.i_aux[i]]
                a = {"truncated_bytes_arg": {"bytes_arg": data, "orig_size": str(size)}} if trunc & (1 << i) \
                    else {"bytes_arg": data}
            elif g == GA_USOCKADDR:
                raw = rec[self.i_str[i]][:n]
                addr = str(ipaddress.ip_address(raw)) if n in (4, 16) else ""
                a = {"sockaddr_arg": {"family": FAMILY_NAMES.get(v, str(v)), "addr": addr,
                                      "port": rec[self.i_aux[i]]}}
            else:
                a = {"int_arg": _signed(v, 32)}
            if plan.label:
                a["label"] = plan.label
            out.append(a)
        return out


def build_event(dec: EventDecoder, rec: tuple, meta: Any, encoder: Any, cache: Any, want_pb: bool) -> OutEvent | None:
    """``meta``: engine._HookMeta (policy name, plan, unit)."""
    pid, pktime = rec[dec.i_pid], rec[dec.i_pktime]
    proc = cache.resolve(pid, pktime)
    parent = cache.get(proc.parent_key) if proc is not None and proc.parent_key else None
    plan, unit = meta.plan, meta.unit
    body: dict[str, Any] = {}
    body["process"] = encoder.process_fragment(proc) if proc is not None else {"pid": pid, "tid": rec[dec.i_tid]}
    if parent is not None:
        body["parent"] = encoder.process_fragment(parent)
    kind = unit.event_kind
    if kind == "process_kprobe":
        body["function_name"] = unit.function_name
    elif kind == "process_tracepoint":
        body["subsys"] = unit.subsys
        body["event"] = unit.event
    else:
        body["path"] = unit.path
        if unit.symbol:
            body["symbol"] = unit.symbol
        body["offset"] = str(unit.offset)
    args = dec.args(rec, plan.args)
    if args:
        body["args"] = args
    if rec[dec.i_flags] & GEF_RETURN and plan.ret is not None:
        r = int_arg(plan.ret, rec[dec.i_ret] & ((1 << 64) - 1))
        if plan.ret.label:
            r["label"] = plan.ret.label
        body["return"] = r
    body["action"] = ACTION_NAMES.get(rec[dec.i_action], "KPROBE_ACTION_POST")
    body["policy_name"] = meta.policy_name
    if plan.message:
        body["message"] = plan.message
    if plan.tags:
        body["tags"] = list(plan.tags)
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
