"""The process sensor's C fast path: loads ``lanner.sensors._fastproc`` (sensors/fastproc.c, built by
``make fastpath``) and hands it what it needs, so the ring -> JSON loop runs in C.

The C code defines no record layout: the offsets and sizes of the exec and exit records' fields come from
the object's BTF (``lanner.bpf.records.RecordLayout``, the decoder's layouts) and are passed at init. It
works on the agent's own process cache, counters and classes: of the cache's insert and exit it does the dict
updates and the parent's reference itself, and calls the cache's own ``_end`` and ``_evict`` for the rest. It
sends every record it does not handle exactly as the Python path would (clones, scripts, unknown parents,
duplicates, ...) to the Python path, in ring order. It renders the process JSON itself while no redaction
applies and no gRPC client needs protobuf (otherwise the batch takes the Python path): credentials and
namespaces (--enable-process-cred/ns) from the encoder's ``creds_parts``/``ns_part``, rendered once per
distinct value (the C memo's misses), and pods: with a pod resolver attached to the encoder, each batch's
distinct (netns inode, cgroup id) pairs of exec records are resolved once, before the C call (the Python
path asks once per process: the same answers while the resolver does not change within a batch), and the C
code renders a pod's process from the encoder's ``pod_parts``.

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
from lanner.exporter.encoder import signal_name
from lanner.exporter.pipeline import OutEvent
from lanner.process_cache import Process

EXEC_FIELDS = ("hdr.ktime", "key.pid", "tid", "ppid", "nspid", "parent.ktime", "flags", "cgroup_id", "exe_ino",
               "creds.uid", "creds.auid", "filename_len", "exe_len", "cwd_len", "args_len", "ns.net")  # X_*
PY_RENDER = False  # a pods-table value: this pair's processes are rendered by the Python encoder
EXIT_FIELDS = ("hdr.ktime", "key.pid", "key.ktime", "exit_code")  # fastproc.c T_*


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
    out: dict[str, tuple[int, int]] = {}
    names = iter(layout.names)
    pos = 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", layout.fmt):
        n = int(count) if count else 1
        if code == "x":
            pos += n
            continue
        size = n if code == "s" else struct.calcsize("<" + code)
        out[next(names)] = (pos, size)
        pos += size
    return out


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

        def slow(raw: bytes) -> list[OutEvent]:
            records = decoder.decode((raw,))
            if not records:  # an op the decoder does not know: not a record, as on the Python path
                self.counters.records -= 1
            return events.handle_records(records, False, time.monotonic_ns())

        def creds_ns(raw: bytes) -> tuple[tuple[Any, bytes, bytes], tuple[Any, bytes]]:
            """An exec's shared Creds and Namespaces with their JSON members (the C code's memo misses)."""
            c, n = decoder.creds_ns(raw)
            return (c, *self.encoder.creds_parts(c)), (n, self.encoder.ns_part(n))

        self._c = module.FastProc(
            tuple(ex[n] for n in EXEC_FIELDS), tuple(xt[n] for n in EXIT_FIELDS), decoder.exec_layout.tail_offset,
            struct.calcsize(decoder.exec_layout.fmt), struct.calcsize(decoder.exit_layout.fmt), _span(ex, "creds."),
            _span(ex, "ns."), ctx.node_name, Process, OutEvent, ctx.cache, ctx.cache._entries, ctx.cache._by_pid,
            ctx.counters.events, ctx.counters.by_binary, ctx.encoder, slow, creds_ns,
            [signal_name(i).encode() for i in range(128)], ctor_spec(Process, 17), ctor_spec(OutEvent, 4),
        )

    def usable(self, want_pb: bool) -> bool:
        """Whether this batch can take the C path (no protobuf wanted, no redaction)."""
        return not want_pb and self.encoder.renders_plain

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
                m = PY_RENDER if self.pods_in_python else parts(m)
                if m is None:  # a pod whose JSON the parts cannot express
                    m = PY_RENDER
            out[key] = m
        return out

    def handle(self, raws: list[bytes]) -> list[OutEvent]:
        self.counters.records += len(raws)
        pods = self.pods(raws)
        out = self._c.handle(raws, time.monotonic_ns(), self.encoder.clock.offset_ns, pods)
        cache = self.cache
        cache.stats.size = len(cache)  # as ProcessCache.insert leaves it
        return out
