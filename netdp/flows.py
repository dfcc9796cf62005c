"""Flow events from the datapath's ring buffer, decoded to export JSON.

The record layout comes from the object's BTF (``struct flow_event`` in ``netdp/bpf/datapath.h``).
An event is a dict with a top-level ``flow`` key, as Tetragon events have ``process_exec``::

    {"flow": {"time": ..., "node_name": ..., "verdict": "DROPPED", "reason": "policy-denied",
              "direction": "ingress", "protocol": "TCP", "tcp_flags": "SYN",
              "src": {"ip": ..., "port": ..., "identity": ..., "pod": {"namespace", "name", "labels"}},
              "dst": {...}, "endpoint_id": ..., "ifindex": ..., "length": ...,
              "policy": "ns/name"},   # the policy whose entry allowed a new flow
     "node_name": ..., "time": ...}

``pod`` is present on src/dst when the address is a local endpoint.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass

from lanner.bpf.btf import Btf
from lanner.bpf.objects import Map
from lanner.bpf.records import RecordLayout
from lanner.bpf.ringbuf import RingBuffer
from lanner.exporter.encoder import KtimeClock

from .endpoint import Endpoint

OP_FLOW = 1  # NETDP_OP_FLOW
VERDICTS = {1: "FORWARDED", 2: "DROPPED"}
REASONS = {1: "no-policy", 2: "policy-allowed", 3: "policy-denied", 4: "spoofed-source"}
DIRECTIONS = {0: "ingress", 1: "egress"}
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}
TCP_FLAGS = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"))
STAT_SLOTS = {"rate_limited": 0, "emitted": 1, "new_flows": 2, "drops": 3, "replies": 4,
              "redirects": 5}  # NETDP_STAT_*

_FIELDS = ("op", "verdict", "reason", "direction", "ifindex", "ktime", "saddr", "daddr", "sport", "dport", "proto",
           "tcp_flags", "endpoint_id", "src_identity", "dst_identity", "len", "policy_cookie")
_U32 = struct.Struct("<I")


def ip_of(addr: int) -> str:
    """A network-order address read as a little-endian u32 -> dotted quad."""
    return socket.inet_ntoa(_U32.pack(addr))


def tcp_flag_names(flags: int) -> str:
    return "|".join(name for bit, name in TCP_FLAGS if flags & bit)


@dataclass(frozen=True)
class FlowDecoder:
    layout: RecordLayout
    idx: tuple[int, ...]

    @classmethod
    def from_btf(cls, btf: Btf) -> "FlowDecoder":
        layout = RecordLayout.from_btf(btf, "flow_event")
        return cls(layout, layout.indexes(*_FIELDS))

    def decode(self, raw: bytes) -> dict[str, int] | None:
        if len(raw) < self.layout.size:
            return None
        vals = self.layout.struct.unpack_from(raw)
        rec = {name: vals[i] for name, i in zip(_FIELDS, self.idx)}
        return rec if rec["op"] == OP_FLOW else None


def _peer(ip: str, port: int, identity: int, ep: Endpoint | None) -> dict:
    out: dict = {"ip": ip, "port": port, "identity": identity}
    if ep is not None:
        out["pod"] = {"namespace": ep.pod.namespace, "name": ep.pod.name, "labels": ep.pod.label_dict()}
    return out


class FlowReader:
    """Reads flow events; ``poll()`` returns export dicts, ``lost()`` counts what never arrived."""

    def __init__(self, ring: RingBuffer, decoder: FlowDecoder, stats: Map, ring_lost: Map,
                 endpoint_of: Callable[[str], Endpoint | None], node_name: str,
                 policy_of: Callable[[int], str | None] = lambda cookie: None) -> None:
        self._ring = ring
        self._decoder = decoder
        self._stats = stats
        self._ring_lost = ring_lost
        self._endpoint_of = endpoint_of
        self._policy_of = policy_of
        self._clock = KtimeClock()
        self.node_name = node_name

    def fileno(self) -> int:
        return self._ring.fileno()

    def wait(self, timeout: float) -> bool:
        return self._ring.wait(timeout)

    def to_event(self, r: dict[str, int]) -> dict:
        t = self._clock.rfc3339(r["ktime"])
        src, dst = ip_of(r["saddr"]), ip_of(r["daddr"])
        flow = {
            "time": t,
            "node_name": self.node_name,
            "verdict": VERDICTS.get(r["verdict"], str(r["verdict"])),
            "reason": REASONS.get(r["reason"], str(r["reason"])),
            "direction": DIRECTIONS.get(r["direction"], str(r["direction"])),
            "protocol": PROTOCOLS.get(r["proto"], str(r["proto"])),
            "src": _peer(src, r["sport"], r["src_identity"], self._endpoint_of(src)),
            "dst": _peer(dst, r["dport"], r["dst_identity"], self._endpoint_of(dst)),
            "endpoint_id": r["endpoint_id"],
            "ifindex": r["ifindex"],
            "length": r["len"],
        }
        if r["proto"] == 6:
            flow["tcp_flags"] = tcp_flag_names(r["tcp_flags"])
        if r["policy_cookie"]:
            policy = self._policy_of(r["policy_cookie"])
            if policy:
                flow["policy"] = policy
        return {"flow": flow, "node_name": self.node_name, "time": t}

    def poll(self, max_records: int = 4096) -> list[dict]:
        """Every flow event queued now (without waiting)."""
        out = []
        for raw in self._ring.read_batch(max_records):
            r = self._decoder.decode(raw)
            if r is not None:
                out.append(self.to_event(r))
        return out

    def stat(self, name: str) -> int:
        return self._stats.sum_percpu(STAT_SLOTS[name])

    def stats(self) -> dict[str, int]:
        return {name: self.stat(name) for name in STAT_SLOTS}

    def rate_limited(self) -> int:
        return self.stat("rate_limited")

    def ring_lost(self) -> int:
        return self._ring_lost.sum_percpu(OP_FLOW)

    def lost(self) -> int:
        """Flow events not delivered: over the rate limit plus ring-buffer reservations that failed."""
        return self.rate_limited() + self.ring_lost()

    def close(self) -> None:
        self._ring.close()


class FlowSensor:
    """The datapath's flow reader as a sensor unit (sensors.base.Sensor): polled (its ring is the datapath's own),
    its events exported as JSON lines that skip the process filters (a flow is no process event)."""

    name = "flow"
    ops: frozenset[int] = frozenset()

    def __init__(self, runtime: Any, node_name: str, clock: KtimeClock) -> None:
        self.runtime = runtime  # lanner.netdp.runtime.NetdpRuntime
        self.node_name = node_name
        self.clock = clock

    def handle(self, raws: list, want_pb: bool) -> list:
        return []

    def poll(self) -> list[bytes]:
        from lanner.exporter.flowjson import flow_lines

        flows = self.runtime.poll_flows()
        return flow_lines(flows, self.node_name, self.clock) if flows else []

    def lost(self) -> dict[str, int]:
        return {}  # its own ring's losses and rate limiting are in the netdp status (flows: lost)

    def programs(self) -> list[tuple[str, str, str, int]]:
        return []

    def close(self) -> None:
        self.runtime.close()
