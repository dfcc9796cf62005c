"""The TracingPolicy engine: policies in, precompiled generic BPF programs configured through maps.

``PolicyEngine`` loads nothing until the first policy: then generic_tp.bpf.o without its program creates the
shared maps (the process sensor's ``execve_map`` reused by fd), and each mechanism's object (generic_tp
instances, the syscall dispatcher, generic_uprobe, generic_kprobe, per-hook LSM/fentry instances) is loaded
when a hook first needs it, every map shared by fd. Adding a policy parses and validates it, compiles it to map
entries (:mod:`lanner.sensors.generic.compiler`), writes them, then attaches one link per hook with the hook id as
bpf_cookie. An object the kernel refuses costs the hooks it serves (LOAD_ERROR / PARTIALLY_ENABLED with the
verifier's reason), never the caller. See docs/policy-engine.md.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from lanner.bpf.objects import BpfError, BpfObject, Codec, Link
from lanner.bpf.records import RecordLayout
from lanner.bpf.ringbuf import RingBuffer
from lanner.exporter.api.gen.tetragon import sensors_pb2
from lanner.exporter.pipeline import OutEvent
from lanner.exporter.tracing import TracingEvents
from lanner.policy.errors import PolicyError
from lanner.policy.loader import load_policies
from lanner.policy.model import TracingPolicy
from lanner.policy.workloads import scope_of

from . import bpf_attach, status
from .abi import (
    GEN_OP, GEN_STR_HDR, GEN_STR_KEY32, GEN_STR_KEY64, GEN_STR_KEY128, GEN_STR_MAX, GEN_SYS_HOOKS, GEN_SYS_PF_ENTRIES,
    GHF_ENFORCE, GHF_SCOPED, GHF_SCOPED_CG, GSO_ENTER, GSO_ENTER_BUF, GSO_EXIT, GSO_EXIT_BUF, GST_SLOTS,
)
from .compiler import GST_NAMES, CompiledPolicy, Compiler, HookUnit
from .decoder import EventDecoder
from .loaded import FailedPolicy, HookMeta, LoadedPolicy
from .prefilter import HookPrefilter, SysPrefilterTable
from .scopes import WorkloadScopes
from .stacks import Stacks

log = logging.getLogger("lanner.sensors.generic.engine")

OBJ_DIR = Path(__file__).parent / "bpf" / "obj"
TP_OBJECT = OBJ_DIR / "generic_tp.bpf.o"
UPROBE_OBJECT = OBJ_DIR / "generic_uprobe.bpf.o"
KPROBE_OBJECT = OBJ_DIR / "generic_kprobe.bpf.o"  # loaded on the first kernel-function hook
LSM_OBJECT = OBJ_DIR / "generic_lsm.bpf.o"        # one instance per LSM hook (attach target set before load)
FMODRET_OBJECT = OBJ_DIR / "generic_fmodret.bpf.o"  # one instance per overridden function
FENTRY_OBJECT = OBJ_DIR / "generic_fentry.bpf.o"  # one instance per fentry/fexit function
TPBTF_OBJECT = OBJ_DIR / "generic_tpbtf.bpf.o"  # one instance per raw (BTF) tracepoint
SYS_OBJECT = OBJ_DIR / "generic_sys.bpf.o"  # the syscall dispatcher (sys_enter/sys_exit), loaded on the first syscall hook
# the dispatcher's programs per flavour (compiler.sys_dispatch): (enter, exit)
SYS_PROGRAMS = {"tp_btf": ("gen_sys_enter", "gen_sys_exit"), "raw_tp": ("gen_sys_enter_r", "gen_sys_exit_r")}
SHARED_MAPS = ("execve_map", "gen_hooks", "gen_int_set", "gen_str_set", "gen_str_set32", "gen_str_set64",
               "gen_str_set128", "gen_str_lpm", "gen_heap", "gen_inflight", "gen_stacks",
               "gen_ratelimit", "gen_stats", "gen_override", "gen_socktrack", "gen_scope", "gen_scope_cg", "events",
               "lanner_lost")
# A tracepoint takes a given BPF program once (the kernel refuses a second attach of the same program
# to the same event with EEXIST), so a second hook on an event already served runs on another loaded
# instance of generic_tp (same maps, by fd). At most this many hooks per tracepoint:
MAX_TP_INSTANCES = 64
SETTLE_WAIT_S = 5.0  # list() right after start waits this long for the start-up policies to load
# features this build attaches itself when the probe result does not mention them (attach errors are
# reported per hook); the rest are assumed absent unless the probe says otherwise
DEFAULT_FEATURES = {"tracepoint": True, "uprobe": True, "uretprobe": True, "send_signal": True, "raw_tp": True}

_INT_KEY = struct.Struct("<IIQ")
_STR_KEY = struct.Struct(f"<IBB{GEN_STR_MAX}s")
# Equal / matchBinaries In sets: a string of n bytes lives in the smallest map whose key (the first K bytes
# of the zero-padded struct gen_str, header 6 bytes) holds it (generic_core.bpf.h gen_str_in_set)
STR_BUCKETS = ((GEN_STR_KEY32, "gen_str_set32"), (GEN_STR_KEY64, "gen_str_set64"), (GEN_STR_KEY128, "gen_str_set128"))
_STR_HDR = GEN_STR_HDR


def _str_bucket(v: bytes) -> int | None:
    """The key size of the map holding v (None: gen_str_set, the whole struct)."""
    return next((k for k, _ in STR_BUCKETS if len(v) <= k - _STR_HDR), None)
ONE = b"\x01"


@dataclass(frozen=True)
class EngineContext:
    probe: dict[str, bool]
    execve_map_fd: int
    cache: Any  # lanner.process_cache.ProcessCache
    encoder: Any  # exporter.encoder.ProcessEventEncoder
    proto: Any  # exporter.grpc_api.ProtoEventEncoder
    node_name: str
    ringbuf_bytes: int = 4 << 20  # the engine's own ring, when no ring_fd is given
    # The agent's one ring: the policy programs write their records into the process sensor's ring buffer and
    # loss counters (shared by fd, as execve_map), so every record comes in kernel order through one reader
    # that dispatches by the header's op; -1: the engine has a ring of its own (tests driving it alone).
    ring_fd: int = -1
    lost_fd: int = -1


class _SysLink:
    """A hook registered with the syscall dispatcher (the one program on sys_enter/sys_exit): destroying it
    takes the hook out of the syscall's list, as destroying a link detaches a program."""

    def __init__(self, engine: "PolicyEngine", direction: int, nr: int, name: str, hook_id: int, prog: str,
                 kind: str) -> None:
        self.engine, self.direction, self.nr, self.hook_id, self.prog = engine, direction, nr, hook_id, prog
        self.description = f"{prog} -> {kind}/{'sys_exit' if direction else 'sys_enter'}[{name}] cookie {hook_id}"
        self._live = True

    def destroy(self) -> None:
        if self._live:
            self._live = False
            self.engine._sys_remove(self)


class EngineLoadError(RuntimeError):
    """The engine's own objects could not be loaded; the message names the object and the kernel's reason."""


def _reason(exc: BaseException) -> str:
    """One line for a failed load/attach: a BpfError's errno and verifier tail, else the first line."""
    if isinstance(exc, BpfError):
        return exc.reason()
    text = exc.strerror if isinstance(exc, OSError) and isinstance(exc.strerror, str) and exc.strerror else str(exc)
    return text.split("\n", 1)[0]


class PolicyEngine:
    """Policies in, generic programs configured through maps. Nothing is loaded until the first policy
    needs it (``_ensure_loaded``): an agent without policies runs none of this."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._lock = threading.RLock()
        self._policies: dict[tuple[str, str], LoadedPolicy] = {}
        self._failed: dict[tuple[str, str], FailedPolicy] = {}  # policies whose engine objects failed to load
        self._pending: set[tuple[str, str]] = set()  # start-up policies not added yet (TP_STATE_LOADING)
        self._settled = threading.Event()  # set once the start-up policies are loaded (or there are none)
        self._settled.set()
        self._meta: dict[int, HookMeta] = {}
        self._hook_ids = itertools.count(1)
        self._free_sets: list[int] = []
        self._next_set = 1
        self._ids = itertools.count(1)
        probe = dict(DEFAULT_FEATURES)
        probe.update({k: bool(v) for k, v in (ctx.probe or {}).items()})
        self.probe = probe
        self.tp: BpfObject | None = None  # generic_tp.bpf.o loaded without programs: owns every shared map
        self.up: BpfObject | None = None  # generic_uprobe, loaded on the first uprobe/usdt hook
        self.kp: BpfObject | None = None  # generic_kprobe, loaded on demand
        self._inst: dict[int, BpfObject] = {}  # id(link) -> the per-hook instance (LSM, fmod_ret) it owns
        self._ring: RingBuffer | None = None  # a reader of the events map, made on first use of .ring
        self._loaded = False
        self._tp_pool: list[BpfObject] = []  # generic_tp instances with the program (maps shared by fd)
        self._tp_busy: dict[tuple[str, str], set[int]] = {}  # tracepoint -> instances attached to it
        self._link_slot: dict[int, tuple[tuple[str, str], int]] = {}  # id(link) -> (tracepoint, instance)
        self.sys: BpfObject | None = None  # the syscall dispatcher (generic_sys), loaded on demand
        self._sys_kind: str | None = None
        self._sys_slots: dict[tuple[int, int], list[int]] = {}  # (direction, nr) -> hook ids by slot (0 free)
        self._sys_on: dict[int, int] = {}  # nr -> its gen_sys_on value (GSO_* bits)
        self._sys_links: dict[int, Link] = {}  # direction -> the dispatcher's link on sys_enter / sys_exit
        self._sys_count = 0  # hooks registered (each counts as a link in links())
        self._sys_pf = SysPrefilterTable(GEN_SYS_PF_ENTRIES)  # the entry lists' prefilters (prefilter.py)
        self._load_failures: dict[str, str] = {}  # object file -> why it failed, within one add (no retry storm)
        self._batch = 0  # depth of batch(): the failure memo lives as long as the outermost batch
        self._kept = False  # keep() pinned the attachments: close() leaves them attached
        # the pods (netns) and containers (cgroups) of workload-scoped policies; the agent feeds it its pod table.
        # The maps behind it exist once loaded; no scope is registered before that
        self._scope_keys = KeySet(None), KeySet(None)
        self.workloads = WorkloadScopes(*self._scope_keys, _host_netns())

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def ring(self) -> RingBuffer | None:
        """A reader of the ring the policy programs write to, for driving the engine alone (tests, benches).
        In the agent the ring is the process sensor's and the agent reads it (``ring_fd``): nothing reads it
        here, and no second mapping of it is made unless asked for."""
        if self._ring is None and self._loaded and self.tp is not None:
            self._ring = RingBuffer(self.tp.map("events"))
        return self._ring

    def _ensure_loaded(self) -> None:
        """Create the shared maps (generic_tp.bpf.o with no program: nothing for the verifier) and what reads
        them. Programs are loaded per mechanism when a hook needs them. Raises EngineLoadError."""
        if self._loaded:
            return
        try:
            tp = BpfObject.open(TP_OBJECT)
        except OSError as exc:
            raise EngineLoadError(f"the policy engine's maps ({TP_OBJECT.name}) could not be created: "
                                  f"{_reason(exc)}") from exc
        try:
            for prog in tp.programs.values():
                prog.set_autoload(False)
            tp.reuse_map("execve_map", self.ctx.execve_map_fd)
            if self.ctx.ring_fd >= 0:
                tp.reuse_map("events", self.ctx.ring_fd)
                tp.reuse_map("lanner_lost", self.ctx.lost_fd)
            else:
                tp.resize_map("events", self.ctx.ringbuf_bytes)
            tp.load()
            self.tp = tp
            self._bind_maps(tp)
        except BaseException as exc:
            tp.close()
            self.tp = None
            if isinstance(exc, (OSError, RuntimeError)):
                raise EngineLoadError(f"the policy engine's maps ({TP_OBJECT.name}) could not be created: "
                                      f"{_reason(exc)}") from exc
            raise
        log.info("policy engine loaded (%s maps)", TP_OBJECT.name)

    def _bind_maps(self, tp: BpfObject) -> None:
        self.hooks_map = tp.map("gen_hooks", key=Codec.struct("<I"))
        self.int_set = tp.map("gen_int_set")
        self.str_set = tp.map("gen_str_set")
        self.str_sets = {k: tp.map(name) for k, name in STR_BUCKETS}
        for k, m in self.str_sets.items():
            if m.key_size != k:
                raise RuntimeError(f"{TP_OBJECT}: {m.name} has {m.key_size}-byte keys, this engine expects {k}: "
                                   "rebuild with 'make bpf'")
        self.lpm = tp.map("gen_str_lpm")
        self.stats_map = tp.map("gen_stats", key=Codec.struct("<I"))
        if self.stats_map.value_size != 8 * GST_SLOTS:
            raise RuntimeError(f"{TP_OBJECT}: gen_stats has {self.stats_map.value_size} bytes per hook, this "
                               f"engine expects {8 * GST_SLOTS}: rebuild with 'make bpf'")
        self.lost_map = tp.map("lanner_lost", key=Codec.struct("<I"), value=Codec.struct("<Q"))
        self.socktrack = tp.map("gen_socktrack")
        self._socktrack_policy_off = next(m.bit_offset // 8 for m in tp.btf.struct("gen_socktrack_val").members
                                          if m.name == "policy")
        self._scope_keys[0].m, self._scope_keys[1].m = tp.map("gen_scope"), tp.map("gen_scope_cg")
        lay = RecordLayout.from_btf(tp.btf, "gen_hook")
        self._hook_layout = lay
        self._hook_struct = lay.struct
        self._hook_defaults = [b"" if f.endswith("s") else 0 for f in _fmt_items(lay.fmt)]
        self.decoder = EventDecoder(tp.btf)
        self.tracing = TracingEvents(self.decoder)
        self.stacks = Stacks(tp.map("gen_stacks"))  # Post kernelStackTrace / userStackTrace
        sock = tp.btf.struct("gen_sock_info")
        sock_fields = {m.name: (m.bit_offset // 8, tp.btf.sizeof(m.type_id)) for m in sock.members}
        self.compiler = Compiler(self.probe, lambda: next(self._hook_ids), self._alloc_set, sock_fields)
        self._loaded = True  # last: `loaded` is true from here on

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Several adds as one: an object that fails to load is tried once, not once per policy."""
        with self._lock:
            if not self._batch:
                self._load_failures.clear()
            self._batch += 1
            try:
                yield
            finally:
                self._batch -= 1

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
        with self.batch():
            for pol in policies:
                if (pol.name, pol.namespace or "") in self._policies:
                    raise ValueError(f"tracing policy {pol.name!r} already exists")
            try:
                self._ensure_loaded()
            except EngineLoadError as exc:  # listed as LOAD_ERROR; a later add (or a re-add) tries again
                self._fail(policies, str(exc))
                raise ValueError(f"tracing policy {policies[0].name!r} not loaded: {exc}") from None
            done: list[LoadedPolicy] = []
            try:
                for pol in policies:
                    self._failed.pop((pol.name, pol.namespace or ""), None)  # a re-add replaces a failed one
                    done.append(self._add_one(pol))
            except BaseException:
                for p in done:
                    self._unload(p)
                raise
            finally:
                for pol in policies:
                    self._pending.discard((pol.name, pol.namespace or ""))

    def _fail(self, policies: list[TracingPolicy], reason: str) -> None:
        for pol in policies:
            key = (pol.name, pol.namespace or "")
            self._failed[key] = FailedPolicy(next(self._ids), pol, reason.replace("; ", ", "))  # "; " joins a list's errors
            self._pending.discard(key)
            log.warning("tracing policy %s: LOAD_ERROR: %s", pol.name, reason)

    def _add_one(self, pol: TracingPolicy) -> LoadedPolicy:
        mode = pol.spec.settings.policy_mode
        enforce = mode != "monitor"
        compiled = self.compiler.compile(pol, enforce)
        p = LoadedPolicy(next(self._ids), pol, compiled, enforce, scope=scope_of(pol))
        for plan in compiled.hooks:
            for unit in plan.units:
                unit.config["policy"] = p.id  # gen_scope key, owner of the policy's gen_socktrack entries
                if p.scope is not None:  # every entry hook runs only for the scope's pods (gen_scope, gen_scope_cg)
                    unit.config["flags"] |= GHF_SCOPED | (GHF_SCOPED_CG if p.scope.container_selector else 0)
        self._policies[(p.name, p.namespace)] = p
        try:
            if p.scope is not None:
                self.workloads.register(p.id, p.scope)
            self._write_sets(compiled)
            for plan in compiled.hooks:
                for unit in plan.units:
                    self.hooks_map.update(unit.hook_id, self._pack_hook(unit.config))
                    self.stats_map.update(unit.hook_id, [b"\0" * self.stats_map.value_size] * self.stats_map.ncpus)
                    if unit.exit_id is not None:
                        self.hooks_map.update(unit.exit_id, self._pack_hook(unit.exit_config or {}))
                    self._meta[unit.hook_id] = HookMeta(p.name, plan, unit)
            self._attach(p)
        except BaseException as exc:
            self._unload(p)
            if isinstance(exc, (OSError, KeyError, struct.error)):
                raise ValueError(f"tracing policy {pol.name!r} could not be loaded: {exc}") from exc
            raise
        p.loading = False
        log.info("policy %s: %d of %d hooks attached, %d unavailable", p.name,
                 len(compiled.hooks) - len(p.attach_failed), len(compiled.hooks), len(compiled.unavailable))
        return p

    def _write_sets(self, c: CompiledPolicy) -> None:
        ints = [(_INT_KEY.pack(sid, 0, v), ONE) for sid, vals in c.int_sets.items() for v in vals]
        self.int_set.update_batch(ints)
        for k, entries in self._str_entries(c).items():
            (self.str_sets[k] if k else self.str_set).update_batch([(key, ONE) for key in entries])
        for sid, entries in c.lpm_sets.items():
            for bits, data in entries:
                self.lpm.update(_STR_KEY.pack(16 + bits, sid >> 8, sid & 0xFF, data), ONE)

    @staticmethod
    def _str_entries(c: CompiledPolicy) -> dict[int | None, list[bytes]]:
        """The policy's string-set keys by map (key size; None = gen_str_set)."""
        out: dict[int | None, list[bytes]] = {}
        for sid, vals in c.str_sets.items():
            for v in vals:
                k = _str_bucket(v)
                key = _STR_KEY.pack(0, sid >> 8, sid & 0xFF, v)
                out.setdefault(k, []).append(key[:k] if k else key)
        return out

    def _clear_sets(self, c: CompiledPolicy) -> None:
        self.int_set.delete_batch([_INT_KEY.pack(sid, 0, v) for sid, vals in c.int_sets.items() for v in vals])
        for k, entries in self._str_entries(c).items():
            (self.str_sets[k] if k else self.str_set).delete_batch(entries)
        for sid, entries in c.lpm_sets.items():
            for bits, data in entries:
                self.lpm.delete(_STR_KEY.pack(16 + bits, sid >> 8, sid & 0xFF, data))
        self._free_sets.extend(c.set_ids)
        c.set_ids = []

    def _tp_instance(self, tp: tuple[str, str]) -> int:
        """A generic_tp instance not yet attached to tracepoint ``tp`` (loaded on demand)."""
        busy = self._tp_busy.get(tp, set())
        for i in range(len(self._tp_pool)):
            if i not in busy:
                return i
        if len(self._tp_pool) >= MAX_TP_INSTANCES:
            raise OSError(f"more than {MAX_TP_INSTANCES} hooks on tracepoint {tp[0]}/{tp[1]}")
        obj = self._load_shared(TP_OBJECT)
        self._tp_pool.append(obj)
        log.debug("loaded generic_tp instance %d (tracepoint %s/%s)", len(self._tp_pool) - 1, *tp)
        return len(self._tp_pool) - 1

    def _shared(self, path: Path) -> BpfObject:
        """A fresh instance of a generic object with every map shared by fd (not yet loaded)."""
        assert self.tp is not None
        obj = BpfObject.open(path)
        try:
            for name in SHARED_MAPS:
                obj.reuse_map(name, self.tp.map(name).fd)
        except BaseException:
            obj.close()
            raise
        return obj

    def _load_shared(self, path: Path, configure: Callable[[BpfObject], None] | None = None,
                     memo: bool = True) -> BpfObject:
        """Load an instance of a generic object, maps shared. A failure raises an OSError naming the object
        with the verifier's last lines; with ``memo``, the same object is not tried again in this add/batch."""
        known = self._load_failures.get(path.name) if memo else None
        if known is not None:
            raise OSError(errno.E2BIG, known)
        obj = self._shared(path)
        try:
            if configure is not None:
                configure(obj)
            obj.load()
        except BaseException as exc:
            obj.close()
            if memo and isinstance(exc, OSError):
                self._load_failures[path.name] = _reason(exc)
                log.warning("policy engine: %s", self._load_failures[path.name])
            raise
        return obj

    def _kprobe_obj(self) -> BpfObject:
        if self.kp is None:
            self.kp = self._load_shared(KPROBE_OBJECT)
        return self.kp

    def _uprobe_obj(self) -> BpfObject:
        if self.up is None:
            self.up = self._load_shared(UPROBE_OBJECT)
        return self.up

    def _instance(self, path: Path, prog: str, target: str, hook_id: int | None) -> Link:
        """Load one instance of a BTF-attached generic program (LSM, fmod_ret) on ``target`` and attach it."""
        obj = self._shared(path)
        try:
            for name, other in obj.programs.items():
                if name != prog:
                    other.set_autoload(False)
            if hook_id is not None:
                obj.set_config(cfg_hook_id=hook_id)
            bpf_attach.set_attach_target(obj.program(prog), target)
            obj.load()
            p = obj.program(prog)
            link = p.attach_lsm() if prog == "generic_lsm" else p.attach_trace()
        except BaseException:
            obj.close()
            raise
        self._inst[id(link)] = obj
        return link

    # ------------------------------------------------------------------ the syscall dispatcher
    def _sys_obj(self, kind: str) -> BpfObject:
        if self.sys is None:
            def only(obj: BpfObject) -> None:
                for name, prog in obj.programs.items():
                    prog.set_autoload(name in SYS_PROGRAMS[kind])

            obj = self._load_shared(SYS_OBJECT, only)
            self.sys, self._sys_kind = obj, kind
            self._sys_on_map = obj.map("gen_sys_on", key=Codec.struct("<I"), value=Codec.struct("<I"))
            self._sys_list_map = obj.map("gen_sys_list", key=Codec.struct("<I"))
            self._sys_list = struct.Struct(f"<IIIHHQ{GEN_SYS_HOOKS}I")
            self._sys_pf.pf_map = obj.map("gen_sys_pf")
        elif self._sys_kind != kind:
            raise OSError(f"the syscall dispatcher is loaded as {self._sys_kind}, not {kind}")
        return self.sys

    def _sys_write(self, direction: int, nr: int) -> None:
        """Publish the hook list of (direction, nr): the inactive buffer, then flip the buffer bit."""
        slots = self._sys_slots.get((direction, nr), [])
        on = self._sys_on.get(nr, 0)
        present, buf_bit = (GSO_EXIT, GSO_EXIT_BUF) if direction else (GSO_ENTER, GSO_ENTER_BUF)
        nxt = 0 if on & buf_bit else 1
        ids = slots + [0] * (GEN_SYS_HOOKS - len(slots))
        pf, stale = self._sys_pf.list_fields(nr, slots) if direction == 0 else ((0, 0, 0, 0, 0), [])
        self._sys_list_map.update(nr * 4 + direction * 2 + nxt, self._sys_list.pack(len(slots), *pf, *ids))
        on = (on & ~(present | buf_bit)) | (present if slots else 0) | (buf_bit if nxt else 0)
        self._sys_on_map.update(nr, on)
        self._sys_on[nr] = on
        self._sys_pf.delete(stale)  # after the list that no longer needs them

    def _sys_add(self, kind: str, direction: int, nr: int, name: str, hook_id: int,
                 pf: HookPrefilter | None = None) -> "_SysLink":
        obj = self._sys_obj(kind)
        if pf is not None and direction == 0:
            self._sys_pf.of_hook[hook_id] = pf
        slots = self._sys_slots.setdefault((direction, nr), [])
        if 0 in slots:
            slots[slots.index(0)] = hook_id
        elif len(slots) < GEN_SYS_HOOKS:
            slots.append(hook_id)
        else:
            raise OSError(f"more than {GEN_SYS_HOOKS} hooks on syscall {name} "
                          f"({'exit' if direction else 'entry'})")
        prog = SYS_PROGRAMS[kind][direction]
        try:
            self._sys_write(direction, nr)
            if direction not in self._sys_links:
                p = obj.program(prog)
                self._sys_links[direction] = p.attach_trace() if kind == "tp_btf" else \
                    p.attach_raw_tracepoint("sys_exit" if direction else "sys_enter")
        except BaseException:
            slots[slots.index(hook_id)] = 0
            self._sys_trim(direction, nr)
            self._sys_pf.of_hook.pop(hook_id, None)
            raise
        self._sys_count += 1
        return _SysLink(self, direction, nr, name, hook_id, prog, kind)

    def _sys_trim(self, direction: int, nr: int) -> None:
        slots = self._sys_slots.get((direction, nr), [])
        while slots and slots[-1] == 0:
            slots.pop()
        if not slots:
            self._sys_slots.pop((direction, nr), None)
        self._sys_write(direction, nr)
        if not any(d == direction for d, _ in self._sys_slots):  # nothing left: no program on every syscall
            link = self._sys_links.pop(direction, None)
            if link is not None:
                link.destroy()
                if self.sys is not None and link in self.sys._links:
                    self.sys._links.remove(link)

    def _sys_remove(self, sl: "_SysLink") -> None:
        slots = self._sys_slots.get((sl.direction, sl.nr), [])
        if sl.hook_id in slots:
            slots[slots.index(sl.hook_id)] = 0
            self._sys_count -= 1
        self._sys_trim(sl.direction, sl.nr)
        if sl.direction == 0:
            self._sys_pf.of_hook.pop(sl.hook_id, None)

    def _attach_unit(self, unit: HookUnit) -> list[Link]:
        links: list[Link] = []
        try:
            # the enforcer (fmod_ret) first, then the exit half, then the entry: a decision is never stored
            # without the program that applies it, and an entry never without its exit
            enforcers = [t for t in unit.attach if t[0] == "fmodret"]
            entries = [t for t in unit.attach if t[0] != "fmodret"]
            for hid, targets in ((unit.hook_id, enforcers), (unit.exit_id, unit.exit_attach), (unit.hook_id, entries)):
                for t in targets:
                    if t[0] == "sys":
                        links.append(self._sys_add(t[1], t[2], t[3], t[4], hid, t[5] if len(t) > 5 else None))
                    elif t[0] == "tp":
                        tp = (t[1], t[2])
                        i = self._tp_instance(tp)
                        link = bpf_attach.attach_tracepoint(self._tp_pool[i].program("generic_tp"), t[1], t[2], hid)
                        self._tp_busy.setdefault(tp, set()).add(i)
                        self._link_slot[id(link)] = (tp, i)
                        links.append(link)
                    elif t[0] == "kprobe":
                        prog = self._kprobe_obj().program("generic_kretprobe" if t[2] else "generic_kprobe")
                        links.append(bpf_attach.attach_kprobe(prog, t[1], hid, retprobe=t[2]))
                    elif t[0] == "lsm":
                        links.append(self._instance(LSM_OBJECT, "generic_lsm", t[1], hid))
                    elif t[0] == "tp_btf":
                        links.append(self._instance(TPBTF_OBJECT, "generic_tp_btf", t[1], hid))
                    elif t[0] in ("fentry", "fexit"):
                        links.append(self._instance(FENTRY_OBJECT, f"generic_{t[0]}", t[1], hid))
                    elif t[0] == "fmodret":
                        try:
                            links.append(self._instance(FMODRET_OBJECT, "generic_fmodret", t[1], None))
                        except OSError as exc:
                            first = str(exc.strerror or exc).split("\n", 1)[0]
                            raise OSError(exc.errno, f"fmod_ret on {t[1]} refused by the kernel (it modifies only "
                                          "security_* functions and, with CONFIG_FUNCTION_ERROR_INJECTION, "
                                          f"error-injectable ones): {first}") from None
                    else:
                        prog = self._uprobe_obj().program("generic_uretprobe" if t[3] else "generic_uprobe")
                        links.append(bpf_attach.attach_uprobe(prog, t[1], t[2], hid, retprobe=t[3],
                                                              ref_ctr_offset=t[4] if len(t) > 4 else 0))
        except BaseException:
            self._destroy(links)
            raise
        return links

    def _attach(self, p: LoadedPolicy) -> None:
        p.attach_errors = []
        p.attach_failed = {}
        for plan in list(p.compiled.hooks):
            hook_links: list[Link] = []
            try:
                for unit in plan.units:
                    hook_links += self._attach_unit(unit)
            except OSError as exc:
                self._destroy(hook_links)
                first = _reason(exc)
                p.attach_errors.append(f"hook {plan.path} {plan.display}: attach failed: {first}")
                p.attach_failed[plan.path] = first
                continue
            except BaseException:  # anything else (an interrupt, a bug): no part of the hook stays attached
                self._destroy(hook_links)
                raise
            p.links += hook_links

    def _destroy(self, links: list[Link]) -> None:
        for link in links:
            link.destroy()
            slot = self._link_slot.pop(id(link), None)
            if slot is not None:
                self._tp_busy[slot[0]].discard(slot[1])
                if not self._tp_busy[slot[0]]:
                    del self._tp_busy[slot[0]]
            for obj in (*self._tp_pool, self.up, self.kp):
                if obj is not None and link in obj._links:
                    obj._links.remove(link)
            inst = self._inst.pop(id(link), None)
            if inst is not None:
                inst.close()

    def _unload(self, p: LoadedPolicy) -> None:
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
        self._forget_socks(p.id)
        if p.scope is not None:
            self.workloads.unregister(p.id)
        self._policies.pop((p.name, p.namespace), None)

    def _forget_socks(self, policy_id: int) -> None:
        """Remove the socks the policy tracked (TrackSock, returnArgAction): a sock freed without UntrackSock
        leaves its address behind, and the next sock there would be reported as the old owner's."""
        off = self._socktrack_policy_off
        stale = [k for k, v in self.socktrack.lookup_batch()
                 if int.from_bytes(bytes(v)[off:off + 4], "little") == policy_id]
        if stale:
            self.socktrack.delete_batch(stale)
            log.debug("policy %d: %d tracked socks forgotten", policy_id, len(stale))

    def delete(self, name: str, namespace: str = "") -> None:
        with self._lock:
            if self._failed.pop((name, namespace or ""), None) is not None:
                return
            p = self._policies.get((name, namespace or ""))
            if p is None:
                raise KeyError(f"tracing policy {name!r} not found")
            self._unload(p)

    def _retry(self, f: FailedPolicy) -> None:
        """Load a policy that failed for want of the engine's objects (configure enable=True)."""
        with self.batch():
            try:
                self._ensure_loaded()
            except EngineLoadError as exc:
                f.reason = str(exc).replace("; ", ", ")
                raise ValueError(f"tracing policy {f.name!r} not loaded: {exc}") from None
            del self._failed[(f.name, f.namespace)]
            self._add_one(f.policy)

    def configure(self, name: str, namespace: str, enable: bool | None, mode: int | None) -> None:
        with self._lock:
            failed = self._failed.get((name, namespace or ""))
            if failed is not None:
                if enable:
                    return self._retry(failed)
                raise ValueError(f"tracing policy {name!r} is not loaded ({failed.reason}): enable it to try "
                                 "loading it again, or delete it")
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

    def _hook_counters(self, unit: HookUnit) -> list[int]:
        """The GST_* counters of one hook, summed over CPUs (kernel map gen_stats)."""
        out = [0] * len(GST_NAMES)
        v = self.stats_map.lookup(unit.hook_id)
        for cpu in v or ():
            for i in range(len(out)):
                out[i] += int.from_bytes(cpu[8 * i:8 * i + 8], "little")
        return out

    def _kernel_memory(self, p: LoadedPolicy) -> int:
        """Bytes of the policy's entries in the shared maps (docs/policies.md, "Kernel memory")."""
        c = p.compiled
        units = [u for h in c.hooks for u in h.units]
        n_hooks = len(units) + sum(1 for u in units if u.exit_id is not None)
        return (n_hooks * status.elem_bytes(self.hooks_map)
                + len(units) * status.elem_bytes(self.stats_map)
                + sum(len(v) for v in c.int_sets.values()) * status.elem_bytes(self.int_set)
                + sum(len(keys) * status.elem_bytes(self.str_sets[k] if k else self.str_set)
                      for k, keys in self._str_entries(c).items())
                + sum(len(v) for v in c.lpm_sets.values()) * status.elem_bytes(self.lpm, lpm=True))

    def _hook_status(self, p: LoadedPolicy) -> tuple[list[str], list[int]]:
        """One line per hook of the policy (in policy order) and the policy's summed counters."""
        return status.hook_lines(p, self._hook_counters)

    def _policy_status(self, p: LoadedPolicy) -> Any:
        hooks, counts = self._hook_status(p)
        if p.scope is not None:
            pods, containers = self.workloads.selected(p.id)
            count = f"{containers} containers" if p.scope.container_selector else f"{pods} pods"
            hooks.insert(0, f"runs for {p.scope.describe()}: {count} on this node"
                         + ("" if self.workloads.synced else " (no pod source: the agent runs without "
                            "--enable-netdp, so no pod is known)"))
        return status.policy_status(p, hooks, counts, self._kernel_memory(p))

    def _loading(self) -> list[tuple[str, str]]:
        """Policies given at start that are not loaded yet."""
        return [k for k in list(self._pending) if k not in self._policies and k not in self._failed]

    def list(self) -> list:
        """Every policy's status. Does not wait for a load in progress (that policy is LOADING), except right
        after start: up to SETTLE_WAIT_S for the policies given at start, so a first list sees them loaded."""
        self._settled.wait(SETTLE_WAIT_S)
        out = [self._policy_status(p) for p in list(self._policies.values())]
        out += [status.failed_status(f) for f in list(self._failed.values())]
        out.sort(key=lambda st: st.id)
        out += [sensors_pb2.TracingPolicyStatus(name=n, namespace=ns, state=sensors_pb2.TP_STATE_LOADING,
                                                info="being loaded (given at start)") for n, ns in self._loading()]
        return out

    def states(self) -> dict[str, int]:
        """How many policies are in each state ("enabled", "load_error", ...), at once (no waiting)."""
        out: dict[str, int] = {}
        states = [status.state(p) for p in list(self._policies.values())]
        states += [sensors_pb2.TP_STATE_LOAD_ERROR] * len(self._failed)
        states += [sensors_pb2.TP_STATE_LOADING] * len(self._loading())
        for st in states:
            name = sensors_pb2.TracingPolicyState.Name(st).removeprefix("TP_STATE_").lower()
            out[name] = out.get(name, 0) + 1
        return out

    def problems(self, source: str | None = None) -> list[dict[str, str]]:
        """The policies not fully enabled (load_error, partially_enabled) and why, at once (no waiting);
        ``source``: only those loaded from that file."""
        out = []
        for p in list(self._policies.values()):
            state = status.state(p)
            if state in (sensors_pb2.TP_STATE_LOAD_ERROR, sensors_pb2.TP_STATE_PARTIALLY_ENABLED) and \
                    source in (None, p.policy.source):
                out.append({"name": p.name, "namespace": p.namespace, "error": "; ".join(p.errors()),
                            "state": sensors_pb2.TracingPolicyState.Name(state).removeprefix("TP_STATE_").lower()})
        out += [{"name": f.name, "namespace": f.namespace, "state": "load_error", "error": f.reason}
                for f in list(self._failed.values()) if source in (None, f.policy.source)]
        return out

    def expect(self, keys: list[tuple[str, str]]) -> None:
        """Policies given at start, about to be added in the background: LOADING until they are (``settle``)."""
        self._settled.clear()
        self._pending.update(keys)

    def settle(self) -> None:
        """The policies given at start are all added (or failed)."""
        self._pending.clear()
        self._settled.set()

    def counters(self, name: str, namespace: str = "") -> dict[str, int]:
        """All GST_* counters of a policy, summed over its hooks and CPUs (matched, post, signal,
        monitor_signal, nopost, rate_limited, post_lost)."""
        with self._lock:
            p = self._policies[(name, namespace or "")]
            return dict(zip(GST_NAMES, self._hook_status(p)[1]))

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
            ev = self.tracing.build(rec, m, self.ctx.encoder, self.ctx.cache, want_pb, self.stacks)
            if ev is not None:
                out.append(ev)
        self.stacks.release()  # the stacks this batch read: deleted from gen_stacks
        return out

    def sys_prefilter_stats(self) -> dict[str, int]:
        """The dispatcher's prefilter counters, all CPUs: ``calls`` (syscalls whose entry list has a prefilter),
        ``skipped`` (listed hooks not run: the string could not match), ``all`` (calls that ran every hook)."""
        with self._lock:
            if self.sys is None:
                return {"calls": 0, "skipped": 0, "all": 0}
            rows = self.sys.map("gen_sys_pf_stat", key=Codec.struct("<I"), value=Codec.struct("<QQQ")).lookup(0)
        sums = [sum(r[i] for r in rows or []) for i in range(3)]
        return dict(zip(("calls", "skipped", "all"), sums))

    def lost_total(self) -> dict[str, int]:
        return {"policy": self.lost_map.sum_percpu(GEN_OP)} if self.loaded else {}

    def programs(self) -> list[tuple[str, str, str, int]]:
        out = []
        for p in list(self._policies.values()):
            for link in p.links:
                prog = link.description.split(" -> ", 1)[0]
                if isinstance(link, _SysLink):
                    fd = self.sys.programs.get(prog) if self.sys is not None else None
                    out.append((f"policy:{p.name}", prog, link.description.split(" -> ", 1)[-1], fd.fd if fd else -1))
                    continue
                slot = self._link_slot.get(id(link))
                obj = self._tp_pool[slot[1]] if slot is not None else self._inst.get(id(link)) or (
                    self.kp if link.description.startswith("generic_k") else self.up)
                fd = obj.programs.get(prog) if obj is not None else None
                out.append((f"policy:{p.name}", prog, link.description.split(" -> ", 1)[-1], fd.fd if fd else -1))
        return out

    def links(self) -> int:
        """Attachments of policy hooks: links, plus hooks registered with the syscall dispatcher."""
        return sum(len(o.links) for o in (*self._tp_pool, self.up, self.kp, *self._inst.values())
                   if o is not None) + self._sys_count

    # ------------------------------------------------------------------ --keep-sensors-on-exit
    def keep(self, root: Path) -> int:
        """Pin every attachment under ``root`` (``policies/<namespace>_<name>/<n>``, the syscall dispatcher's
        links in ``engine/``) and the shared maps in ``engine/maps/``: the programs keep enforcing after this
        process exits; ``close`` then leaves them (and the maps' entries) as they are. Returns the links kept."""
        with self._lock:
            if not self.loaded:
                return 0
            assert self.tp is not None
            self._kept = True
            kept = 0
            for p in list(self._policies.values()):
                real = [link for link in p.links if not isinstance(link, _SysLink)]
                d = root / "policies" / (f"{p.namespace}_{p.name}" if p.namespace else p.name)
                for i, link in enumerate(real):
                    d.mkdir(parents=True, exist_ok=True)
                    kept += _keep_link(link, d / str(i))
            (root / "engine" / "maps").mkdir(parents=True, exist_ok=True)
            for direction, link in self._sys_links.items():
                kept += _keep_link(link, root / "engine" / ("sys_exit" if direction else "sys_enter"))
            sensor_maps = ("execve_map", "events", "lanner_lost") if self.ctx.ring_fd >= 0 else ("execve_map",)
            for name in SHARED_MAPS:
                if name not in sensor_maps:  # the process sensor's: pinned with it
                    self.tp.map(name).pin(str(root / "engine" / "maps" / name))
            return kept

    def close(self) -> None:
        with self._lock:
            for p in list(self._policies.values()):
                if not self._kept:  # kept: the maps stay as the running programs need them
                    self._destroy(p.links)
            self._policies.clear()
            self._meta.clear()
            if self._ring is not None:
                self._ring.close()
                self._ring = None
            self._loaded = False
            for link in self._sys_links.values():
                link.destroy()
            self._sys_links.clear()
            self._sys_slots.clear()
            self._sys_pf.clear()
            self._sys_count = 0
            for obj in (*self._inst.values(), self.kp, self.up, self.sys, *reversed(self._tp_pool), self.tp):
                if obj is not None:
                    obj.close()
            self.sys = None
            self._inst.clear()
            self.kp = None
            self.up = None
            self.tp = None
            self._tp_pool = []
            self._tp_busy.clear()
            self._link_slot.clear()
            self._failed.clear()
            self._pending.clear()
            self._settled.set()


def _keep_link(link: Link, path: Path) -> int:
    try:
        link.keep(str(path))
        return 1
    except OSError as exc:
        log.warning("cannot keep %s after exit: %s", link.description, _reason(exc))
        return 0


class KeySet:
    """A BPF hash map used as a set of keys (value 1): what WorkloadScopes writes. ``m`` is None until the
    engine is loaded; no scope registers before that, so nothing is written."""

    def __init__(self, m: Any) -> None:
        self.m = m

    def put(self, key: bytes) -> None:
        self.m.update(key, ONE)

    def drop(self, key: bytes) -> None:
        self.m.delete(key)


def _host_netns() -> int:
    """The host's network namespace inode (pid 1's where readable, else the kernel's initial one)."""
    from lanner.sensors import procfs

    return int(procfs.host_namespaces().net)


def _fmt_items(fmt: str) -> list[str]:
    """The value-producing items of a struct format ("<I3xQ16s" -> ["I", "Q", "16s"])."""
    import re

    return [m.group(0) for m in re.finditer(r"\d*[A-Za-z?]", fmt.lstrip("<>=!@")) if not m.group(0).endswith("x")]
