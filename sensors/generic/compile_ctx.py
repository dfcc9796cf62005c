"""The context one hook is compiled in, passed to every step instead of six parameters: the policy, where the
hook is in it, the policy's output so far, the mode, and what this kernel serves (the compiler's probe)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from lanner.policy import syscalls
from lanner.policy.model import ArgSpec, TracingPolicy

from . import tracefs
from .plan import ArgPlan, CompiledPolicy, Unavailable

GENERATED_FTRACE_MAX = 256  # functions a generated_ftrace list may expand to (one kprobe link each)


class Features(Protocol):
    """What the compiler knows of this kernel and hands out (lanner.sensors.generic.compiler.Compiler)."""

    alloc_hook: Callable[[], int]
    alloc_set: Callable[[], int]
    sock_fields: dict[str, tuple[int, int]]

    def supports(self, feature: str) -> bool: ...

    def sys_dispatch(self) -> str | None: ...

    def sys_wrapper(self, ret: bool, functions: tuple[str, ...] = ()) -> str | None: ...

    def override_via(self) -> str | None: ...


@dataclass(frozen=True)
class HookContext:
    """One hook of one policy being compiled."""

    features: Features
    policy: TracingPolicy
    path: str      # spec.kprobes[0]
    display: str   # what the hook names (its call, event or symbol), for messages
    cp: CompiledPolicy
    enforce: bool

    def supports(self, feature: str) -> bool:
        return self.features.supports(feature)

    def new_hook(self) -> int:
        self.cp.check_room(hooks=1)
        hid = self.features.alloc_hook()
        self.cp.hook_ids.append(hid)
        return hid

    def new_set(self) -> int:
        self.cp.check_room()
        sid = self.features.alloc_set()
        self.cp.set_ids.append(sid)
        return sid

    def list_values(self, name: str, where: str) -> list[str]:
        """The values of ``spec.lists[name]``; generated lists are generated here, from this kernel."""
        return list_values(self.policy, name, where)

    def enforcer_calls(self) -> list[str]:
        return enforcer_calls(self.policy)


@dataclass(frozen=True)
class HookArgs:
    """A hook's arguments: how BPF reads each (gen_arg fields), how each is reported, and where matchArgs finds
    them (``positions``: the spec's index of each read argument)."""

    gen: list[dict[str, Any]]
    plans: list[ArgPlan]
    positions: list[int]
    specs: tuple[ArgSpec, ...]


@dataclass(frozen=True)
class HookShape:
    """What the hook's program can do: a return half, args from pt_regs, Override (through ``override_via``:
    fmodret, lsm), the stack traces (GSF_KSTACK / GSF_USTACK) a Post may ask for."""

    has_ret: bool = False
    uprobe: bool = False
    override_via: str | None = None
    stacks: int = 0


def list_values(policy: TracingPolicy, name: str, where: str) -> list[str]:
    """The values of ``spec.lists[name]``; generated lists are generated here, from this kernel:
    ``generated_syscalls``: every syscall of the x86-64 table the kernel has a tracepoint for;
    ``generated_ftrace``: the traceable functions (tracefs available_filter_functions) matching ``pattern``."""
    lst = policy.spec.list_named(name)
    if lst is None:
        raise Unavailable(f"{where}: list {name} not defined")
    if lst.type == "generated_syscalls":
        out = [n for n in sorted(syscalls.table(), key=syscalls.table().get)
               if tracefs.exists("syscalls", f"sys_enter_{n}")]
        if not out:
            raise Unavailable(f"list {name} (generated_syscalls): this kernel shows no syscall tracepoint")
        return out
    if lst.type == "generated_ftrace":
        return _generated_ftrace(name, lst.pattern)
    if not lst.values:
        raise Unavailable(f"list {name} has no values")
    return list(lst.values)


def _generated_ftrace(name: str, pattern: str | None) -> list[str]:
    try:
        rx = re.compile(pattern or "")
    except re.error as exc:
        raise Unavailable(f"list {name} (generated_ftrace): pattern {pattern!r} is not a valid "
                          f"regular expression: {exc}") from None
    try:
        out = [f for f in tracefs.filter_functions() if rx.search(f)] if pattern else []
    except OSError as exc:
        raise Unavailable(f"list {name} (generated_ftrace): cannot read the kernel's traceable functions "
                          f"({exc.strerror}: {exc.filename})") from None
    if not out:
        raise Unavailable(f"list {name} (generated_ftrace): pattern {pattern!r} matches no function in "
                          "available_filter_functions")
    if len(out) > GENERATED_FTRACE_MAX:
        raise Unavailable(f"list {name} (generated_ftrace): pattern {pattern!r} matches {len(out)} "
                          f"functions, the limit is {GENERATED_FTRACE_MAX}")
    return out


def enforcer_calls(policy: TracingPolicy) -> list[str]:
    """The kernel functions of spec.enforcers[0].calls (``list:NAME`` expanded; ``sys_dup`` ->
    ``__x64_sys_dup``, an explicit ``__ia32_sys_dup`` kept)."""
    if not policy.spec.enforcers:
        return []
    out: list[str] = []
    for call in policy.spec.enforcers[0].calls:
        lst = policy.spec.list_named(call[5:]) if call.startswith("list:") else None
        if call.startswith("list:") and (lst is None or not lst.values):
            raise Unavailable(f"spec.enforcers: list {call[5:]} has no values (generated lists are not served)")
        for c in (lst.values if lst is not None else (call,)):
            fn = c if c.startswith("__") else syscalls.function_name(c)
            if fn not in out:
                out.append(fn)
    return out


@dataclass(frozen=True)
class SelectorScope:
    """One selector being written: its hook, the config it writes into, its keys' prefix there (``sel[0].``)
    and its path in the policy (``selectors[0]``)."""

    ctx: HookContext
    cfg: dict[str, Any]
    prefix: str
    where: str
