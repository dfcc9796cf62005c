"""The TracingPolicy engine: policies in, precompiled generic BPF programs configured through maps.

``PolicyEngine`` loads policy/bpf/obj/generic_tp.bpf.o and generic_uprobe.bpf.o once (sharing every map,
including the process sensor's ``execve_map`` by fd). Adding a policy parses and validates it, compiles
it to map entries (:mod:`lanner.policy.compiler`), writes them, then attaches one link per hook with
the hook id as bpf_cookie. See docs/policy-engine.md.
"""

from __future__ import annotations

import itertools
import logging
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanner.bpf.objects import BpfObject, Codec, Link
from lanner.bpf.records import RecordLayout
from lanner.bpf.ringbuf import RingBuffer
from lanner.exporter.api.gen.tetragon import sensors_pb2
from lanner.exporter.pipeline import OutEvent

from . import bpf_attach
from .compiler import GEN_STR_MAX, GHF_ENFORCE, CompiledPolicy, Compiler, HookPlan, HookUnit
from .errors import PolicyError
from .events import EventDecoder, build_event
from .loader import load_policies
from .model import TracingPolicy

log = logging.getLogger("lanner.policy.engine")

OBJ_DIR = Path(__file__).parent / "bpf" / "obj"
TP_OBJECT = OBJ_DIR / "generic_tp.bpf.o"
UPROBE_OBJECT = OBJ_DIR / "generic_uprobe.bpf.o"
GEN_OP = 9
SHARED_MAPS = ("execve_map", "gen_hooks", "gen_int_set", "gen_str_set", "gen_str_lpm", "gen_heap", "gen_inflight",
               "gen_ratelimit", "gen_stats", "events", "lanner_lost")
# features this build attaches itself when the probe result does not mention them (attach errors are
# reported per hook); the rest are assumed absent unless the probe says otherwise
DEFAULT_FEATURES = {"tracepoint": True, "uprobe": True, "uretprobe": True, "send_signal": True, "raw_tp": True}

_INT_KEY = struct.Struct("<IIQ")
_STR_KEY = struct.Struct(f"<IBB{GEN_STR_MAX}s")
ONE = b"\x01"


@dataclass(frozen=True)
class EngineContext:
    probe: dict[str, bool]
    execve_map_fd: int
    cache: Any  # lanner.process_cache.ProcessCache
    encoder: Any  # exporter.encoder.ProcessEventEncoder
    proto: Any  # exporter.grpc_api.ProtoEventEncoder
    node_name: str
    ringbuf_bytes: int = 4 << 20


@dataclass
class _HookMeta:
    policy_name: str
    plan: HookPlan
    unit: HookUnit


@dataclass
class _Policy:
    id: int
    policy: TracingPolicy
    compiled: CompiledPolicy
    enforce: bool
    enabled: bool = True
    links: list[Link] = field(default_factory=list)
    attach_errors: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def namespace(self) -> str:
        return self.policy.namespace or ""

    def errors(self) -> list[str]:
        return self.compiled.unavailable + self.attach_errors


class PolicyEngine:
    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._lock = threading.RLock()
        self._policies: dict[tuple[str, str], _Policy] = {}
        self._meta: dict[int, _HookMeta] = {}
        self._hook_ids = itertools.count(1)
        self._free_sets: list[int] = []
        self._next_set = 1
        self._ids = itertools.count(1)
        probe = dict(DEFAULT_FEATURES)
        probe.update({k: bool(v) for k, v in (ctx.probe or {}).items()})
        self.probe = probe
        self.tp = BpfObject.open(TP_OBJECT)
        self.up: BpfObject | None = None
        self.ring: RingBuffer | None = None
        try:
            self.tp.reuse_map("execve_map", ctx.execve_map_fd)
            self.tp.resize_map("events", ctx.ringbuf_bytes)
            self.tp.load()
            self.up = BpfObject.open(UPROBE_OBJECT)
            for name in SHARED_MAPS:
                self.up.reuse_map(name, self.tp.map(name).fd)
            self.up.load()
            self.hooks_map = self.tp.map("gen_hooks", key=Codec.struct("<I"))
            self.int_set = self.tp.map("gen_int_set")
            self.str_set = self.tp.map("gen_str_set")
            self.lpm = self.tp.map("gen_str_lpm")
            self.stats_map = self.tp.map("gen_stats", key=Codec.struct("<I"))
            self.lost_map = self.tp.map("lanner_lost", key=Codec.struct("<I"), value=Codec.struct("<Q"))
            lay = RecordLayout.from_btf(self.tp.btf, "gen_hook")
            self._hook_layout = lay
            self._hook_struct = lay.struct
            self._hook_defaults = [b"" if f.endswith("s") else 0 for f in _fmt_items(lay.fmt)]
            self.decoder = EventDecoder(self.tp.btf)
            self.ring = RingBuffer(self.tp.map("events"))
            self.compiler = Compiler(self.probe, lambda: next(self._hook_ids), self._alloc_set)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ ids and encodings
    def _alloc_set(self) -> int:
        if self._free_sets:
            return self._free_sets.pop()
        if self._next_set > 0xFFFF:
            raise ValueError("out of value-set ids (65535 in use)")
        sid = self._next_set
        self._next_set += 1
        return sid

    def _pack_hook(self, cfg: dict[str, Any]) -> bytes:
        vals = list(self._hook_defaults)
        index = self._hook_layout.index
        for k, v in cfg.items():
            vals[index(k)] = v
        return self._hook_struct.pack(*vals)

    # ------------------------------------------------------------------ PolicyManager API
    def add(self, yaml_text: str, source: str = "grpc") -> None:
        try:
            policies = load_policies(yaml_text, source)
        except PolicyError as exc:
            raise ValueError(str(exc)) from None
        with self._lock:
            for pol in policies:
                if (pol.name, pol.namespace or "") in self._policies:
                    raise ValueError(f"tracing policy {pol.name!r} already exists")
            done: list[_Policy] = []
            try:
                for pol in policies:
                    done.append(self._add_one(pol))
            except BaseException:
                for p in done:
                    self._unload(p)
                raise

    def _add_one(self, pol: TracingPolicy) -> _Policy:
        mode = pol.spec.settings.policy_mode
        enforce = mode != "monitor"
        compiled = self.compiler.compile(pol, enforce)
        p = _Policy(next(self._ids), pol, compiled, enforce)
        self._policies[(p.name, p.namespace)] = p
        try:
            self._write_sets(compiled)
            for plan in compiled.hooks:
                for unit in plan.units:
                    self.hooks_map.update(unit.hook_id, self._pack_hook(unit.config))
                    self.stats_map.update(unit.hook_id, [b"\0" * 32] * self.stats_map.ncpus)
                    if unit.exit_id is not None:
                        self.hooks_map.update(unit.exit_id, self._pack_hook(unit.exit_config or {}))
                    self._meta[unit.hook_id] = _HookMeta(p.name, plan, unit)
            self._attach(p)
        except BaseException as exc:
            self._unload(p)
            if isinstance(exc, (OSError, KeyError, struct.error)):
                raise ValueError(f"tracing policy {pol.name!r} could not be loaded: {exc}") from exc
            raise
        log.info("policy %s: %d hooks loaded, %d unavailable", p.name, len(compiled.hooks), len(p.errors()))
        return p

    def _write_sets(self, c: CompiledPolicy) -> None:
        ints = [(_INT_KEY.pack(sid, 0, v), ONE) for sid, vals in c.int_sets.items() for v in vals]
        self.int_set.update_batch(ints)
        strs = [(_STR_KEY.pack(0, sid >> 8, sid & 0xFF, v), ONE) for sid, vals in c.str_sets.items() for v in vals]
        self.str_set.update_batch(strs)
        for sid, entries in c.lpm_sets.items():
            for bits, data in entries:
                self.lpm.update(_STR_KEY.pack(16 + bits, sid >> 8, sid & 0xFF, data), ONE)

    def _clear_sets(self, c: CompiledPolicy) -> None:
        self.int_set.delete_batch([_INT_KEY.pack(sid, 0, v) for sid, vals in c.int_sets.items() for v in vals])
        self.str_set.delete_batch([_STR_KEY.pack(0, sid >> 8, sid & 0xFF, v)
                                   for sid, vals in c.str_sets.items() for v in vals])
        for sid, entries in c.lpm_sets.items():
            for bits, data in entries:
                self.lpm.delete(_STR_KEY.pack(16 + bits, sid >> 8, sid & 0xFF, data))
        self._free_sets.extend(c.set_ids)
        c.set_ids = []

    def _attach_unit(self, unit: HookUnit) -> list[Link]:
        links: list[Link] = []
        assert self.up is not None
        try:
            for hid, targets in ((unit.exit_id, unit.exit_attach), (unit.hook_id, unit.attach)):
                for t in targets:
                    if t[0] == "tp":
                        links.append(bpf_attach.attach_tracepoint(self.tp.program("generic_tp"), t[1], t[2], hid))
                    else:
                        prog = self.up.program("generic_uretprobe" if t[3] else "generic_uprobe")
                        links.append(bpf_attach.attach_uprobe(prog, t[1], t[2], hid, retprobe=t[3]))
        except BaseException:
            self._destroy(links)
            raise
        return links

    def _attach(self, p: _Policy) -> None:
        p.attach_errors = []
        for plan in list(p.compiled.hooks):
            hook_links: list[Link] = []
            try:
                for unit in plan.units:
                    hook_links += self._attach_unit(unit)
            except OSError as exc:
                self._destroy(hook_links)
                first = str(exc).split("\n", 1)[0]
                p.attach_errors.append(f"hook {plan.path} {plan.display}: attach failed: {first}")
                continue
            p.links += hook_links

    def _destroy(self, links: list[Link]) -> None:
        for link in links:
            link.destroy()
            for obj in (self.tp, self.up):
                if obj is not None and link in obj._links:
                    obj._links.remove(link)

    def _unload(self, p: _Policy) -> None:
        self._destroy(p.links)
        p.links = []
        for plan in p.compiled.hooks:
            for unit in plan.units:
                for hid in (unit.hook_id, unit.exit_id):
                    if hid is not None:
                        self.hooks_map.delete(hid)
                        self.stats_map.delete(hid)
                self._meta.pop(unit.hook_id, None)
        self._clear_sets(p.compiled)
        self._policies.pop((p.name, p.namespace), None)

    def delete(self, name: str, namespace: str = "") -> None:
        with self._lock:
            p = self._policies.get((name, namespace or ""))
            if p is None:
                raise KeyError(f"tracing policy {name!r} not found")
            self._unload(p)

    def configure(self, name: str, namespace: str, enable: bool | None, mode: int | None) -> None:
        with self._lock:
            p = self._policies.get((name, namespace or ""))
            if p is None:
                raise KeyError(f"tracing policy {name!r} not found")
            if mode is not None and mode in (sensors_pb2.TP_MODE_ENFORCE, sensors_pb2.TP_MODE_MONITOR):
                p.enforce = mode == sensors_pb2.TP_MODE_ENFORCE
                for plan in p.compiled.hooks:
                    for unit in plan.units:
                        unit.config["flags"] = (unit.config["flags"] & ~GHF_ENFORCE) | (GHF_ENFORCE if p.enforce else 0)
                        self.hooks_map.update(unit.hook_id, self._pack_hook(unit.config))
            elif mode is not None:
                raise ValueError(f"unsupported policy mode {mode}")
            if enable is not None and enable != p.enabled:
                if enable:
                    self._attach(p)
                else:
                    self._destroy(p.links)
                    p.links = []
                p.enabled = enable

    def _stats(self, p: _Policy) -> tuple[int, int]:
        post = sig = 0
        for plan in p.compiled.hooks:
            for unit in plan.units:
                v = self.stats_map.lookup(unit.hook_id)
                if v:
                    for cpu in v:
                        post += int.from_bytes(cpu[8:16], "little")
                        sig += int.from_bytes(cpu[16:24], "little")
        return post, sig

    def list(self) -> list:
        out = []
        with self._lock:
            for p in self._policies.values():
                errors = p.errors()
                if not p.enabled:
                    state = sensors_pb2.TP_STATE_DISABLED
                elif not p.links and (errors or p.compiled.hooks):
                    state = sensors_pb2.TP_STATE_LOAD_ERROR
                elif errors:
                    state = sensors_pb2.TP_STATE_PARTIALLY_ENABLED
                else:
                    state = sensors_pb2.TP_STATE_ENABLED
                sensors = sorted({"generic_uprobe" if h.kind == "uprobe" else "generic_tracepoint"
                                  for h in p.compiled.hooks})
                mode = sensors_pb2.TP_MODE_ENFORCE if p.enforce else sensors_pb2.TP_MODE_MONITOR
                if not p.compiled.enforcing:
                    mode = sensors_pb2.TP_MODE_MONITOR_ONLY if p.enforce else mode
                nunits = sum(len(h.units) for h in p.compiled.hooks)
                mem = nunits * (self.hooks_map.value_size + 4) * 2 + \
                    sum(len(v) for v in p.compiled.int_sets.values()) * 24 + \
                    sum(len(v) for v in p.compiled.str_sets.values()) * 264 + \
                    sum(len(v) for v in p.compiled.lpm_sets.values()) * 300
                post, sig = self._stats(p)
                st = sensors_pb2.TracingPolicyStatus(
                    id=p.id, name=p.name, namespace=p.namespace, sensors=sensors, error="; ".join(errors),
                    state=state, mode=mode, kernel_memory_bytes=mem)
                st.stats.action_counters.post = post
                if p.enforce:
                    st.stats.action_counters.signal = sig
                else:
                    st.stats.action_counters.monitor_signal = sig
                out.append(st)
        return out

    def status(self, name: str, namespace: str = "") -> Any:
        return next(s for s in self.list() if s.name == name and s.namespace == namespace)

    # ------------------------------------------------------------------ events
    def handle(self, raws: list[bytes], want_pb: bool) -> list[OutEvent]:
        dec = self.decoder
        unpack = dec.st.unpack_from
        out: list[OutEvent] = []
        meta = self._meta
        for raw in raws:
            if len(raw) < dec.size or raw[0] != GEN_OP:
                continue
            rec = unpack(raw)
            m = meta.get(rec[dec.i_hook])
            if m is None:  # policy deleted since
                continue
            ev = build_event(dec, rec, m, self.ctx.encoder, self.ctx.cache, want_pb)
            if ev is not None:
                out.append(ev)
        return out

    def lost_total(self) -> dict[str, int]:
        return {"policy": self.lost_map.sum_percpu(GEN_OP)}

    def programs(self) -> list[tuple[str, str, str, int]]:
        out = []
        for p in self._policies.values():
            for link in p.links:
                prog = link.description.split(" -> ", 1)[0]
                fd = (self.tp.programs.get(prog) or (self.up.programs.get(prog) if self.up else None))
                out.append((f"policy:{p.name}", prog, link.description.split(" -> ", 1)[-1], fd.fd if fd else -1))
        return out

    def links(self) -> int:
        return sum(len(o.links) for o in (self.tp, self.up) if o is not None)

    def close(self) -> None:
        with self._lock:
            for p in list(self._policies.values()):
                self._destroy(p.links)
            self._policies.clear()
            self._meta.clear()
            if self.ring is not None:
                self.ring.close()
                self.ring = None
            for obj in (self.up, self.tp):
                if obj is not None:
                    obj.close()
            self.up = None


def _fmt_items(fmt: str) -> list[str]:
    """The value-producing items of a struct format ("<I3xQ16s" -> ["I", "Q", "16s"])."""
    import re

    return [m.group(0) for m in re.finditer(r"\d*[A-Za-z?]", fmt.lstrip("<>=!@")) if not m.group(0).endswith("x")]
