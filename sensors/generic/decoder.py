"""The generic programs' event record (struct gen_event) as the object's BTF lays it out.

One ``unpack_from`` per record gives a tuple; this says where each field is in it, which typed records an
argument's bytes hold (struct gen_sock_info, gen_cred_info, ...), and the event flags and argument types
(generic.h enums) by name. What the fields become on the wire is lanner.exporter.tracing's.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from lanner.bpf.records import RecordLayout


class EventDecoder:
    """Indexes into one unpacked struct gen_event, and the layouts of the records its strings carry."""

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
        nargs = btf.enum("gen_limits")["GEN_MAX_ARGS"]
        self.i_vals = [ix(f"vals[{i}]") for i in range(nargs)]
        self.i_aux = [ix(f"aux[{i}]") for i in range(nargs)]
        self.i_lens = [ix(f"lens[{i}]") for i in range(nargs)]
        self.i_str = [ix(f"str[{i}].s") for i in range(nargs)]
        # the typed kernel arguments' records in str[i] (generic.h), decoded by their BTF layouts
        self.sock = RecordLayout.from_btf(btf, "gen_sock_info")
        self.cred = RecordLayout.from_btf(btf, "gen_cred_info")
        self.userns = RecordLayout.from_btf(btf, "gen_userns_info")
        self.bpf_attr = RecordLayout.from_btf(btf, "gen_bpf_attr_info")
        self.bpf_map = RecordLayout.from_btf(btf, "gen_bpf_map_info")
        self.perf = RecordLayout.from_btf(btf, "gen_perf_event_info")
        self.arg_types: Mapping[str, int] = MappingProxyType(btf.enum("gen_arg_type"))  # GA_INT -> 1, ...
        self.event_flags: Mapping[str, int] = MappingProxyType(btf.enum("gen_event_flags"))  # GEF_RETURN -> 1, ...

    @staticmethod
    def record(lay: RecordLayout, raw: bytes) -> dict[str, Any]:
        """One typed argument record (its bytes may be short: zero padded) as {field: value}."""
        return dict(zip(lay.names, lay.struct.unpack_from(raw.ljust(lay.size, b"\0"))))
