"""The pure half of the policy fuzzer: one YAML text through load -> validate -> compile -> pack, no kernel.

:class:`PurePath` runs a text exactly as ``PolicyEngine.add`` would up to the first kernel call: ``load_policies``,
then :class:`lanner.sensors.generic.compiler.Compiler` with the engine's probe dict and a fake id allocator, then every
``gen_hook`` value packed with the layout the engine reads from the generic object's BTF and every value-set key
packed as the engine writes it. The outcome is one of:

* ``accepted``  every document loaded and compiled (hooks the kernel cannot serve are listed, with a reason);
* ``rejected``  a :class:`PolicyError` whose every problem names where: a field path from the document's root
  (``spec.kprobes[0].selectors[1].matchArgs[0].index``), or a line and column for unparsable YAML;
* ``no-path``   a rejection with a problem that names no place (a bug: must never happen);
* ``crash``     any other exception (KeyError, TypeError, RecursionError, struct.error ...), including one the
  compiler's catch-all turned into a hook's "cannot be compiled: KeyError(...)" reason, a value that does
  not fit the ``gen_hook`` field it goes to, or a run over the time limit (CPU time; a bug: must never happen).
"""

from __future__ import annotations

import re
import signal
import struct
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from lanner.sensors.generic.compiler import CompiledPolicy, Compiler, Ignored, Unavailable
from lanner.sensors.generic.engine import _INT_KEY, _STR_KEY, DEFAULT_FEATURES, TP_OBJECT, PolicyEngine, _fmt_items
from lanner.policy.errors import PolicyError
from lanner.policy.loader import load_policies
from lanner.policy.model import TracingPolicy

ACCEPTED, REJECTED, NO_PATH, CRASH = "accepted", "rejected", "no-path", "crash"
# the probe of the kernel-path tests on this host (tests/test_policy_engine.py), and one of a kernel with every
# mechanism (the Debian guests and more), so that the kprobe, fentry, LSM and fmod_ret compilers run too
HOST_PROBE = {"tracepoint": True, "raw_tp": True, "tp_btf": True, "uprobe": True, "uretprobe": True,
              "send_signal": True, "kprobe": False, "kretprobe": False, "fentry": False, "fexit": False,
              "fmod_ret": False, "lsm": False, "override_return": False}
FULL_PROBE = {k: True for k in HOST_PROBE}
PROBES = (HOST_PROBE, FULL_PROBE)
# a path from the document's root: keys joined by "." (a key may be any text but empty), [i] and [key] items
# a path from the document's root: keys joined by "." with [i] and [key] items (a key is any text, "[" and "]"
# included, but never empty: an empty key is written [""]), so neither the first nor the last character is a "."
FIELD_PATH = re.compile(r"^[^.](?:.*[^.])?$", re.S)
DOCUMENT_PROBLEMS = ("invalid YAML at line ", "a policy document must be a mapping")


class FuzzTimeout(BaseException):
    """A run took longer than its limit (a BaseException, so that no ``except Exception`` swallows it)."""


@dataclass(frozen=True)
class Outcome:
    kind: str  # ACCEPTED, REJECTED, NO_PATH or CRASH
    detail: str  # the first problem, the unlocated problem, or the exception
    trace: str = ""  # the traceback of a crash
    policies: tuple[TracingPolicy, ...] = ()
    units: int = 0  # hook units (gen_hook entries + attachments) of an accepted text, with the first probe
    unavailable: tuple[str, ...] = ()  # the hooks the first probe's kernel cannot serve, and why


@dataclass
class _Allocator:
    """Hook and set ids as the engine hands them out (sets: 16 bits)."""

    next_hook: int = 1
    next_set: int = 1

    def hook(self) -> int:
        self.next_hook += 1
        return self.next_hook - 1

    def set(self) -> int:
        if self.next_set > 0xFFFF:
            raise ValueError("out of value-set ids (65535 in use)")
        self.next_set += 1
        return self.next_set - 1


class _Internal(Exception):
    """A hook's compilation failed with an exception that is no Unavailable reason; ``trace`` is its traceback."""

    def __init__(self, trace: str) -> None:
        super().__init__(trace)
        self.trace = trace


class _RecordingCompiler(Compiler):
    """The engine's compiler, recording what its per-hook catch-all would turn into "cannot be compiled"."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.internal: list[str] = []

    def _hook(self, *args: Any, **kw: Any) -> Any:
        try:
            return super()._hook(*args, **kw)
        except (Unavailable, Ignored):
            raise
        except Exception:
            self.internal.append(traceback.format_exc())
            raise


@dataclass
class HookPacker:
    """Packs ``gen_hook`` values as ``PolicyEngine._pack_hook`` does, with the layout of the generic object's BTF
    (read from the ELF file: nothing is loaded into the kernel)."""

    names: tuple[str, ...] = ()
    layout: struct.Struct = field(default_factory=lambda: struct.Struct("<"))
    defaults: list[Any] = field(default_factory=list)
    sock_fields: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_object(cls) -> "HookPacker":
        from lanner.bpf.objects import BpfObject
        from lanner.bpf.records import RecordLayout

        with BpfObject.open(TP_OBJECT) as obj:
            lay = RecordLayout.from_btf(obj.btf, "gen_hook")
            sock = obj.btf.struct("gen_sock_info")
            socks = {m.name: (m.bit_offset // 8, obj.btf.sizeof(m.type_id)) for m in sock.members}
        return cls(lay.names, lay.struct, [b"" if f.endswith("s") else 0 for f in _fmt_items(lay.fmt)], socks)

    def __post_init__(self) -> None:
        self.positions = {name: i for i, name in enumerate(self.names)}

    def pack(self, cfg: dict[str, Any]) -> bytes:
        vals = list(self.defaults)
        for k, v in cfg.items():
            if k not in self.positions:
                raise KeyError(f"gen_hook has no field {k!r}")
            vals[self.positions[k]] = v
        return self.layout.pack(*vals)


def pack_sets(c: CompiledPolicy) -> int:
    """Every value-set key of a compiled policy, packed as the engine writes them; how many."""
    n = 0
    for sid, vals in c.int_sets.items():
        for v in vals:
            _INT_KEY.pack(sid, 0, v)
            n += 1
    n += sum(len(keys) for keys in PolicyEngine._str_entries(c).values())
    for sid, entries in c.lpm_sets.items():
        for bits, data in entries:
            if not 0 <= bits <= 8 * len(data):
                raise ValueError(f"set {sid}: prefix of {bits} bits on {len(data)} bytes")
            _STR_KEY.pack(16 + bits, sid >> 8, sid & 0xFF, data)
            n += 1
    return n


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`FuzzTimeout` in this (main) thread after ``seconds`` of this process's CPU time (what other work
    on a shared machine takes does not count); 0: no limit."""
    if not seconds:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise FuzzTimeout(f"took more than {seconds} s of CPU time")

    old = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


def unlocated(err: PolicyError) -> str | None:
    """The first problem of a rejection that names no place, or None when each one does."""
    for p in err.problems:
        if FIELD_PATH.match(p.path) or (not p.path and p.message.startswith(DOCUMENT_PROBLEMS)):
            continue
        return str(p)
    return None


class PurePath:
    """Runs texts through the policy path up to the kernel (see the module docstring)."""

    def __init__(self, limit: float = 10.0) -> None:
        self.packer = HookPacker.from_object()
        self.limit = limit

    def run(self, text: str, probes: tuple[dict[str, bool], ...] = PROBES) -> Outcome:
        """The outcome of ``text``; an accepted text is compiled with each probe dict (units: of the first)."""
        try:
            with time_limit(self.limit):
                return self._run(text, probes)
        except FuzzTimeout as exc:
            return Outcome(CRASH, f"FuzzTimeout: {exc}", traceback.format_exc())
        except Exception as exc:
            return Outcome(CRASH, f"{type(exc).__name__}: {exc}"[:500], traceback.format_exc())

    def _run(self, text: str, probes: tuple[dict[str, bool], ...]) -> Outcome:
        try:
            policies = load_policies(text, "fuzz")
        except PolicyError as err:
            where = unlocated(err)
            if where is not None:
                return Outcome(NO_PATH, where)
            return Outcome(REJECTED, str(err.problems[0]) if err.problems else "")
        units: list[int] = []
        unavailable: list[str] = []
        for probe in probes:
            try:
                compiled = self.compile(policies, probe)
            except _Internal as exc:
                return Outcome(CRASH, exc.trace.strip().rsplit("\n", 1)[-1][:500], exc.trace)
            units.append(sum(self._pack(c) for c in compiled))
            unavailable += [u for c in compiled for u in c.unavailable] if len(units) == 1 else []
        return Outcome(ACCEPTED, "", policies=tuple(policies), units=units[0] if units else 0,
                       unavailable=tuple(unavailable))

    def compile(self, policies: list[TracingPolicy], probe: dict[str, bool]) -> list[CompiledPolicy]:
        """Each policy compiled as the engine compiles it on a kernel with ``probe``; raises :class:`_Internal`
        for what the compiler's catch-all would have turned into a "cannot be compiled" hook."""
        engine_probe = dict(DEFAULT_FEATURES, **probe)  # as PolicyEngine.__init__ builds it
        ids = _Allocator()
        out = []
        for pol in policies:
            compiler = _RecordingCompiler(engine_probe, ids.hook, ids.set, self.packer.sock_fields)
            out.append(compiler.compile(pol, pol.spec.settings.policy_mode != "monitor"))
            if compiler.internal:
                raise _Internal(compiler.internal[0])
        return out

    def _pack(self, compiled: CompiledPolicy) -> int:
        units = 0
        for plan in compiled.hooks:
            for unit in plan.units:
                self.packer.pack(dict(unit.config, policy=1))
                if unit.exit_id is not None:
                    self.packer.pack(unit.exit_config or {})
                units += 1 + len(unit.attach) + len(unit.exit_attach)
        pack_sets(compiled)
        return units
