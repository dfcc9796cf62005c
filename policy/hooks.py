"""Which kernel mechanism each hook of a policy needs, as data (no BPF here).

A policy names a hook *kind* (kprobe, fentry, tracepoint ...), but lanner has its own datapath and
may serve a hook another way when the kernel lacks the declared mechanism -- for instance a
``syscall: true`` kprobe can be served by the syscall tracepoints on a kernel built without kprobes.
:func:`classify` lists, per hook:

* ``mechanism``: what the policy declares (:class:`Mechanism`);
* ``ways``: the ways to serve it, declared one first, each a set of feature names as reported by
  ``lanner probe`` (:data:`lanner.kernel.probe.FEATURES`), all of which must be supported;
* ``needs``: extra features some of its actions require (Override, Sigkill/Signal, NotifyEnforcer,
  Set), each with its own alternatives.

The agent combines this with the probe result: :meth:`HookRequirement.way` picks the first usable
way and :meth:`HookRequirement.unmet` explains precisely what is missing, e.g.
``spec.kprobes[0] (kprobe security_file_open) needs kprobe or fentry+vmlinux_btf; this kernel lacks
kprobe, fentry``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Callable

from .model import (
    HOOK_LISTS, KProbeSpec, LsmHookSpec, PolicyOptions, TracepointSpec, TracingPolicy, UProbeSpec, USDTSpec,
    hook_name,
)

Supports = Callable[[str], bool]


class Mechanism(str, Enum):
    """The kernel mechanism a hook declares."""

    KPROBE = "kprobe"  # kprobe on a kernel function
    SYSCALL_KPROBE = "syscall_kprobe"  # kprobe with syscall: true (servable by syscall tracepoints)
    FENTRY = "fentry"
    LSM = "lsm"
    TRACEPOINT = "tracepoint"  # subsystem/event with the tracefs format's fields
    RAW_TRACEPOINT = "raw_tracepoint"  # raw: true, TP_PROTO arguments
    UPROBE = "uprobe"
    USDT = "usdt"


@dataclass(frozen=True)
class Way:
    """One way to serve a hook or an action: every feature in ``features`` must be supported."""

    mechanism: str
    features: tuple[str, ...]
    attach: tuple[str, ...] = ()  # attach points known statically
    note: str = ""

    def usable(self, supports: Supports) -> bool:
        return all(supports(f) for f in self.features)

    def __str__(self) -> str:
        return "+".join(self.features)


@dataclass(frozen=True)
class Need:
    """A requirement of some actions of the hook (``what``), with its alternatives."""

    what: str
    ways: tuple[Way, ...]


@dataclass(frozen=True)
class HookRequirement:
    path: str  # spec.kprobes[0]
    kind: str  # kprobe, fentry, tracepoint, uprobe, usdt, lsmhook
    hook: str  # display name (sys_openat, raw_syscalls/sys_enter, /bin/bash:readline)
    mechanism: Mechanism
    return_probe: bool
    symbols: tuple[str, ...]  # functions/events/symbols; empty when generated at load time
    ways: tuple[Way, ...]
    needs: tuple[Need, ...] = ()

    def way(self, supports: Supports) -> Way | None:
        """The first way this kernel supports, or ``None``."""
        return next((w for w in self.ways if w.usable(supports)), None)

    def unmet(self, supports: Supports) -> list[str]:
        """One sentence per unmet requirement; empty when the hook and all its actions can run."""
        out = []
        if self.way(supports) is None:
            out.append(f"{self.path} ({self.kind} {self.hook}) needs {_alternatives(self.ways)}; "
                       f"this kernel lacks {_missing(self.ways, supports)}")
        for need in self.needs:
            if not any(w.usable(supports) for w in need.ways):
                out.append(f"{self.path} ({self.kind} {self.hook}): {need.what} needs {_alternatives(need.ways)}; "
                           f"this kernel lacks {_missing(need.ways, supports)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mechanism"] = self.mechanism.value
        return d


def _alternatives(ways: tuple[Way, ...]) -> str:
    return " or ".join(str(w) for w in ways)


def _missing(ways: tuple[Way, ...], supports: Supports) -> str:
    return ", ".join(sorted({f for w in ways for f in w.features if not supports(f)}))


def classify(policy: TracingPolicy) -> tuple[HookRequirement, ...]:
    """A :class:`HookRequirement` per hook, in :meth:`TracingPolicy.hooks` order."""
    out = []
    for attr, kind in HOOK_LISTS:
        for i, spec in enumerate(getattr(policy.spec, attr)):
            out.append(_classify(f"spec.{attr}[{i}]", kind, spec, policy))
    return tuple(out)


# ------------------------------------------------------------------------------------- details
_SYSCALL_PREFIX = re.compile(r"^(?:__(?:x64|arm64|ia32|x32|s390x|riscv)_)?(?:compat_)?sys_")


def _syscall_event(symbol: str) -> str:
    return _SYSCALL_PREFIX.sub("", symbol)


def _function_ways(declared: str, ret: bool) -> list[Way]:
    kprobe = Way("kprobe", ("kprobe", "kretprobe") if ret else ("kprobe",))
    fentry = Way("fentry", ("fentry", "fexit", "vmlinux_btf") if ret else ("fentry", "vmlinux_btf"))
    return [kprobe, fentry] if declared == "kprobe" else [fentry, kprobe]


def _syscall_ways(symbols: tuple[str, ...], ret: bool) -> list[Way]:
    if symbols:
        events = [f"syscalls/sys_enter_{_syscall_event(s)}" for s in symbols]
        if ret:
            events += [f"syscalls/sys_exit_{_syscall_event(s)}" for s in symbols]
        tp = [Way("tracepoint", ("tracepoint",), tuple(events), "syscall tracepoints (native ABI)")]
    else:
        tp = []
    raw = ("raw_syscalls/sys_enter", "raw_syscalls/sys_exit") if ret else ("raw_syscalls/sys_enter",)
    return tp + [Way("raw_tp", ("raw_tp",), raw, "raw syscall tracepoints filtered by syscall number")]


def _override_ways(options: PolicyOptions, security: bool) -> tuple[Way, ...]:
    fmod = Way("fmod_ret", ("fmod_ret", "vmlinux_btf"))
    helper = Way("override_return", ("kprobe", "override_return"))
    if options.override_method == "fmod-ret":
        return (fmod,)
    if options.override_method == "override-return":
        return (helper,)
    return (fmod, helper) if security else (helper, fmod)


def _action_names(spec: Any) -> set[str]:
    return {a.action for sel in spec.selectors for a in sel.actions()}


def _expand_calls(calls: tuple[str, ...], policy: TracingPolicy) -> tuple[str, ...]:
    """Enforcer calls with ``list:NAME`` replaced by the list's values (generated lists stay)."""
    out: list[str] = []
    for call in calls:
        lst = policy.spec.list_named(call[5:]) if call.startswith("list:") else None
        out.extend(lst.values if lst is not None and lst.values else (call,))
    return tuple(out)


def _needs(spec: Any, kind: str, policy: TracingPolicy, syscall: bool, symbols: tuple[str, ...]) -> tuple[Need, ...]:
    actions = _action_names(spec)
    options = policy.spec.settings
    needs = []
    if actions & {"Sigkill", "Signal"}:
        needs.append(Need("Sigkill/Signal", (Way("send_signal", ("send_signal",)),)))
    if "Override" in actions:
        if kind == "lsmhook":
            ways: tuple[Way, ...] = (Way("lsm", ("lsm", "vmlinux_btf"), note="the LSM hook's return value"),)
        elif kind == "uprobe":
            ways = (Way("uprobe", ("uprobe",), note="uprobe override needs kernel >= 6.18"),)
        else:
            security = not syscall and bool(symbols) and all(s.startswith("security_") for s in symbols)
            ways = _override_ways(options, security)
        needs.append(Need("Override", ways))
    if "NotifyEnforcer" in actions and policy.spec.enforcers:
        calls = _expand_calls(policy.spec.enforcers[0].calls, policy)
        needs.append(Need("NotifyEnforcer", tuple(
            Way(w.mechanism, w.features, calls, "enforcer on the spec.enforcers syscalls")
            for w in _override_ways(options, security=False))))
    if "Set" in actions:
        needs.append(Need("Set", (Way("uprobe", ("uprobe",), note="writes the probe's argument in user memory"),)))
    return tuple(needs)


def _classify(path: str, kind: str, spec: Any, policy: TracingPolicy) -> HookRequirement:
    name = hook_name(spec)
    if isinstance(spec, KProbeSpec):
        lst = policy.spec.list_named(spec.list_name) if spec.list_name else None
        symbols = (lst.values if lst else ()) if spec.list_name else (spec.call,)
        ways = _function_ways("kprobe" if kind == "kprobe" else "fentry", spec.return_)
        if spec.syscall:
            ways += _syscall_ways(symbols, spec.return_)
        mechanism = Mechanism.FENTRY if kind == "fentry" else (
            Mechanism.SYSCALL_KPROBE if spec.syscall else Mechanism.KPROBE)
        for i, w in enumerate(ways):
            if not w.attach and symbols:
                ways[i] = Way(w.mechanism, w.features, symbols, w.note)
        return HookRequirement(path, kind, name, mechanism, spec.return_, symbols, tuple(ways),
                               _needs(spec, kind, policy, spec.syscall, symbols))
    if isinstance(spec, TracepointSpec):
        event = f"{spec.subsystem}/{spec.event}"
        if spec.raw:
            ways = [Way("raw_tp", ("raw_tp",), (event,)), Way("tp_btf", ("tp_btf", "vmlinux_btf"), (event,))]
            mechanism = Mechanism.RAW_TRACEPOINT
        else:
            ways = [Way("tracepoint", ("tracepoint",), (event,))]
            mechanism = Mechanism.TRACEPOINT
        return HookRequirement(path, kind, name, mechanism, False, (event,), tuple(ways),
                               _needs(spec, kind, policy, False, ()))
    if isinstance(spec, UProbeSpec):
        symbols = spec.symbols or tuple(hex(o) for o in spec.offsets) or tuple(hex(a) for a in spec.addrs)
        features = ("uprobe", "uretprobe") if spec.return_ else ("uprobe",)
        ways = [Way("uprobe", features, tuple(f"{spec.path}:{s}" for s in symbols))]
        return HookRequirement(path, kind, name, Mechanism.UPROBE, spec.return_, symbols, tuple(ways),
                               _needs(spec, kind, policy, False, symbols))
    if isinstance(spec, USDTSpec):
        probe = f"{spec.provider}:{spec.name}"
        ways = [Way("uprobe", ("uprobe",), (f"{spec.path}:{probe}",), "USDT probes attach as uprobes")]
        return HookRequirement(path, kind, name, Mechanism.USDT, False, (probe,), tuple(ways),
                               _needs(spec, kind, policy, False, ()))
    assert isinstance(spec, LsmHookSpec)
    ways = [Way("lsm", ("lsm", "vmlinux_btf"), (spec.hook,))]
    return HookRequirement(path, kind, name, Mechanism.LSM, False, (spec.hook,), tuple(ways),
                           _needs(spec, kind, policy, False, (spec.hook,)))
