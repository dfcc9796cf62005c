"""The process sensor's C fast path: loads ``lanner.sensors._fastproc`` (sensors/fastproc.c, built by
``make fastpath``) and hands it what it needs, so the ring -> JSON loop runs in C.

The C code defines no record layout: the offsets and sizes of the exec, exit and clone records' fields come
from the object's BTF (``lanner.bpf.records.RecordLayout``, the decoder's layouts) and are passed at init. It
works on the agent's own process cache, counters and classes: of the cache's insert and exit it does the dict
updates and the parent's reference itself, and calls the cache's own ``_end`` and ``_evict`` for the rest. A
clone inserts its child as ``ProcessEvents._on_clone`` does (the parent's details, its own identity, flags
``clone``; no event). It sends every record it does not handle exactly as the Python path would (scripts,
unknown parents, duplicates, ...) to the Python path, in ring order. A module without ``PB`` or ``CLONE``
(built from an older fastproc.c) is refused: the agent runs the Python path and says to rebuild it. It renders
the process JSON itself while no redaction applies (otherwise the batch takes the Python path): credentials
and namespaces (--enable-process-cred/ns) from the encoder's ``creds_parts``/``ns_part``, rendered once per
distinct value (the C memo's misses), and pods: with a pod resolver attached to the encoder, each batch's
distinct (netns inode, cgroup id) pairs of exec records are resolved once, before the C call (the Python path
asks once per process: the same answers while the resolver does not change within a batch), and the C code
renders a pod's process from the encoder's ``pod_parts``.

While a gRPC client follows (``want_pb``) it also gives each event its ``GetEventsResponse`` bytes (OutEvent.pb),
the bytes ``ProtoEventEncoder`` gives: a process's ``tetragon.Process`` bytes are rendered in C from the same
values as its JSON and memoised on it (``Process.encoded_pb``), the protobuf of the credentials, namespaces and
pod members comes from ``ProtoPieces`` (wire.py's DictEncoder) once per distinct value, and a process
without them (rendered earlier, or its pod left to Python) gets them from ``ProtoEventEncoder.process_bytes``.
The batch comes back as an ``EventBatch`` whose ``run`` already holds those bytes framed as gRPC messages, so the
gRPC server does not walk the batch again to frame it.

Without the built module (or with ``LANNER_FASTPATH=0``) the agent runs the Python path and ``lanner status``
says so (``fastpath``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import time
from typing import Any

from lanner.bpf.records import RecordLayout
import orjson
from google.protobuf import json_format

from lanner.exporter.api.gen.tetragon import tetragon_pb2
from lanner.exporter.api.wire import DictEncoder
from lanner.exporter.encoder import signal_name
from lanner.exporter.grpc_api import ProtoEventEncoder
from lanner.exporter.pipeline import PB_NONE, EventBatch, OutEvent
from lanner.process_cache import Process

EXEC_FIELDS = ("hdr.ktime", "key.pid", "tid", "ppid", "nspid", "parent.ktime", "flags", "cgroup_id", "exe_ino",
               "creds.uid", "creds.auid", "filename_len", "exe_len", "cwd_len", "args_len", "ns.net")  # X_*
PY_RENDER = False  # a pods-table value: this pair's processes are rendered by the Python encoder
EXIT_FIELDS = ("hdr.ktime", "key.pid", "key.ktime", "exit_code")  # fastproc.c T_*
CLONE_FIELDS = ("hdr.ktime", "key.pid", "tid", "nspid", "parent.pid", "parent.ktime")  # fastproc.c C_*


def load_module() -> tuple[Any, str]:
    """(the C module or None, a line for ``lanner status``)."""
    if os.environ.get("LANNER_FASTPATH", "1") == "0":
        return None, "python (LANNER_FASTPATH=0)"
    try:
        from lanner.sensors import _fastproc  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"python (C fast path not built: `make fastpath`; {exc})"
    return _fastproc, "c"


def field_offsets(layout: RecordLayout) -> dict[str, tuple[int, int]]:
    """name -> (byte offset, size) of every field of a layout, from its struct format."""
    offsets = value_offsets(layout.fmt)
    assert len(offsets) == len(layout.names)
    return dict(zip(layout.names, offsets))


def value_offsets(fmt: str) -> list[tuple[int, int]]:
    """(byte offset, size) of each value a little-endian, unaligned struct format unpacks to, in order."""
    out: list[tuple[int, int]] = []
    pos = 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt):
        n = int(count) if count else 1
        if code == "x":
            pos += n
            continue
        size = n if code == "s" else struct.calcsize("<" + code)
        if code == "s":
            out.append((pos, size))
        else:
            out += [(pos + i * size, size) for i in range(n)]
            size *= n
        pos += size
    return out


def clone_offsets(decoder: Any) -> tuple[tuple[int, int], ...]:
    """(offset, size) of the clone record's fields the C code reads (the decoder's CloneRecord's), in its order."""
    offsets = field_offsets(decoder.clone_layout)
    return tuple(offsets[n] for n in CLONE_FIELDS)


def ctor_spec(cls: type, npos: int) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """What the C code needs to build a slotted dataclass without its generated ``__init__``: every field's name
    (its slot) and the defaults of the fields after the ``npos`` it is given."""
    fs = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or not hasattr(cls, "__slots__"):
        raise TypeError(f"{cls.__name__}: a slotted dataclass without __post_init__ expected")
    rest = fs[npos:]
    if any(f.default is dataclasses.MISSING for f in rest):
        raise TypeError(f"{cls.__name__}: a field after the first {npos} has no plain default")
    return tuple(f.name for f in fs), tuple(f.default for f in rest)


def _span(offsets: dict[str, tuple[int, int]], prefix: str) -> tuple[int, int]:
    """(offset, length) of the bytes a nested struct's fields cover."""
    parts = [v for k, v in offsets.items() if k.startswith(prefix)]
    start = min(o for o, _ in parts)
    return start, max(o + s for o, s in parts) - start


class ProtoPieces:
    """The protobuf of what the C code splices into a process's ``tetragon.Process`` bytes, encoded from the same
    JSON as its JSON pieces (as ``ProtoEventEncoder.process_bytes`` encodes a whole process's JSON), once per
    distinct value: the credentials' and namespaces' members, a pod split where its container's pid goes."""

    def __init__(self) -> None:
        self._process = DictEncoder(tetragon_pb2.Process.DESCRIPTOR)
        self._pod = DictEncoder(tetragon_pb2.Pod.DESCRIPTOR)
        self._container = DictEncoder(tetragon_pb2.Container.DESCRIPTOR)

    def members(self, members: bytes) -> bytes:
        """The Process fields of JSON members as the encoder splices them (',"cap":{...}' or b"")."""
        if not members:
            return b""
        d = orjson.loads(b"{" + members[1:] + b"}")
        try:
            return self._process.encode(d)
        except (TypeError, KeyError, ValueError):  # as process_bytes: protobuf's own parser
            return json_format.ParseDict(d, tetragon_pb2.Process()).SerializeToString()

    def pod(self, pod: dict, docker_json: bytes) -> tuple[bytes, bytes | None, bytes, bytes] | None:
        """(the Pod fields before its container, the container's fields without its pid or None without a
        container, the Pod fields after it, the Process ``docker`` field or b""); None when the container's pid
        would not be its last field (the C code appends it)."""
        by_name = tetragon_pb2.Pod.DESCRIPTOR.fields_by_name
        c_by_name = tetragon_pb2.Container.DESCRIPTOR.fields_by_name
        number = by_name["container"].number
        c = pod.get("container")
        if c is not None and any(c_by_name[k].number > c_by_name["pid"].number for k in c):
            return None
        head = self._pod.encode({k: v for k, v in pod.items() if by_name[k].number < number})
        tail = self._pod.encode({k: v for k, v in pod.items() if by_name[k].number > number})
        body = None if c is None else self._container.encode({k: v for k, v in c.items() if k != "pid"})
        docker = self._process.encode({"docker": orjson.loads(docker_json)}) if docker_json else b""
        return head, body, tail, docker


class FastPath:
    """The C loop bound to one ProcessEvents (its cache, counters, encoder) and one decoder."""

    def __init__(self, module: Any, decoder: Any, events: Any, pods_in_python: bool = False) -> None:
        """``pods_in_python``: processes in pods are rendered by the encoder's process_json (called from C once
        per such process) instead of from pod parts in C (a measuring switch: bench/pipeline_breakdown.py)."""
        ex, xt = field_offsets(decoder.exec_layout), field_offsets(decoder.exit_layout)
        ctx = events.ctx
        self.events = events
        self.encoder = ctx.encoder
        self.counters = ctx.counters
        self.cache = ctx.cache
        self.pods_in_python = pods_in_python
        # exporter.grpc_api.ProtoEventEncoder: the context's, or one of our own (a context without one: tests)
        self.proto = ctx.proto if ctx.proto is not None else ProtoEventEncoder(ctx.encoder, ctx.node_name)
        if not getattr(module, "PB", 0):  # ProcessSensor.bind: the Python path, "rebuild it"
            raise TypeError("a module built from an older fastproc.c (no protobuf)")
        if not getattr(module, "CLONE", 0):  # its FastProc takes no clone layout
            raise TypeError("a module built from an older fastproc.c (no clones)")
        if not getattr(module, "RUN", 0):  # its FastProc frames no gRPC run
            raise TypeError("a module built from an older fastproc.c (no gRPC run)")
        self._want_pb = False  # the batch's, for the records the C code hands back (slow)
        self._pod_pb: dict[bytes, Any] = {}  # a pod's JSON -> its protobuf pieces (ProtoPieces.pod)
        self.pieces = ProtoPieces()
        members = self.pieces.members

        def slow(raw: bytes) -> list[OutEvent]:
            records = decoder.decode((raw,))
            if not records:  # an op the decoder does not know: not a record, as on the Python path
                self.counters.records -= 1
            return events.handle_records(records, self._want_pb, time.monotonic_ns())

        def creds_ns(raw: bytes) -> tuple[tuple[Any, bytes, bytes, bytes, bytes], tuple[Any, bytes, bytes]]:
            """An exec's shared Creds and Namespaces with their JSON members and those members' protobuf fields
            (the C code's memo misses: once per distinct value)."""
            c, n = decoder.creds_ns(raw)
            cap, pc = self.encoder.creds_parts(c)
            ns = self.encoder.ns_part(n)
            return (c, cap, pc, members(cap), members(pc)), (n, ns, members(ns))

        self._c = module.FastProc(
            tuple(ex[n] for n in EXEC_FIELDS), tuple(xt[n] for n in EXIT_FIELDS), clone_offsets(decoder),
            decoder.exec_layout.tail_offset, struct.calcsize(decoder.exec_layout.fmt),
            struct.calcsize(decoder.exit_layout.fmt), struct.calcsize(decoder.clone_layout.fmt), _span(ex, "creds."),
            _span(ex, "ns."), ctx.node_name, Process, OutEvent, ctx.cache, ctx.cache._entries, ctx.cache._by_pid,
            ctx.counters.events, ctx.counters.by_binary, ctx.encoder, slow, creds_ns,
            [signal_name(i).encode() for i in range(128)], ctor_spec(Process, 17), ctor_spec(OutEvent, 4),
            self.proto.process_bytes,
        )

    def usable(self, want_pb: bool) -> bool:
        """Whether this batch can take the C path (protobuf wanted or not): no redaction applies."""
        return self.encoder.renders_plain

    def pods(self, raws: list[bytes]) -> dict[tuple[int, int], Any] | None:
        """(netns inode, cgroup id) -> the encoder's pod parts, None (a host process) or PY_RENDER, for every
        pair of the batch's exec records; None without a resolver."""
        resolver = self.encoder.pod_resolver
        if resolver is None:
            return None
        out: dict[tuple[int, int], Any] = {}
        parts = self.encoder.pod_parts
        for key in self._c.pod_keys(raws):
            m = resolver.match(*key)
            if m is not None:
                m = None if self.pods_in_python else parts(m)
                m = PY_RENDER if m is None else self._with_pod_pb(m)  # None: a pod the parts cannot express
            out[key] = m
        return out

    def _with_pod_pb(self, parts: tuple) -> Any:
        """The encoder's pod parts with the pod's protobuf pieces added (what fastproc.c takes), memoised by the
        pod's JSON; PY_RENDER when they cannot be split."""
        head, tail, docker, d = parts
        key = head + b"\0" + tail + b"\0" + docker
        pb = self._pod_pb.get(key)
        if pb is None:
            pb = self.pieces.pod(d, docker) or PY_RENDER
            if len(self._pod_pb) >= 1024:
                self._pod_pb.clear()
            self._pod_pb[key] = pb
        return PY_RENDER if pb is PY_RENDER else (*parts, *pb)

    def handle(self, raws: list[bytes], want_pb: int = PB_NONE) -> list[OutEvent]:
        """The batch's events; with ``want_pb`` (``usable`` said yes) an EventBatch whose run holds their
        GetEventsResponse bytes as gRPC messages, and with PB_EVENTS each event's bytes too (OutEvent.pb)."""
        self.counters.records += len(raws)
        pods = self.pods(raws)
        self._want_pb = want_pb
        out = self._c.handle(raws, time.monotonic_ns(), self.encoder.clock.offset_ns, pods, want_pb)
        cache = self.cache
        cache.stats.size = len(cache)  # as ProcessCache.insert leaves it
        return EventBatch(out, self._c.take_run()) if want_pb else out
