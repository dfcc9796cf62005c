"""TracingPolicy -> map entries for the generic BPF programs (sensors/generic/bpf/generic_core.bpf.h).

Nothing is compiled on the node: every hook becomes one or two ``struct gen_hook`` values (keyed by
hook id, the bpf_cookie of its attachment) plus entries in the shared value-set maps:

* ``gen_int_set``   {set_id, value} for Equal/InMap/NotEqual/NotInMap on integers (O(1) per event
  whatever the number of values);
* ``gen_str_set``   zero-padded strings for Equal/NotEqual and matchBinaries In/NotIn;
* ``gen_str_lpm``   LPM keys {set_id, bytes} for Prefix, Postfix (reversed bytes), CIDRs and
  matchBinaries Prefix/Postfix.

Each hook is classified against the kernel probe result; a hook the kernel (or this build) cannot
serve is listed in :attr:`CompiledPolicy.unavailable` with the precise reason and is not loaded.

This module is the entry (``Compiler.compile``) and the choice of mechanism per hook kind; each kind is
compiled in its own module (compile_tracepoint, compile_syscall, compile_kfunc, compile_uprobe) within a
:class:`~lanner.sensors.generic.compile_ctx.HookContext`; arguments, selectors, filters and actions are
compile_args, compile_config, compile_filters and compile_actions. What it makes is plan.py's.
"""

from __future__ import annotations

from typing import Any, Callable

from lanner.policy.model import KProbeSpec, LsmHookSpec, TracepointSpec, TracingPolicy, UProbeSpec, USDTSpec

from . import abi, kernel_btf
from .compile_ctx import HookContext, enforcer_calls
from .compile_kfunc import kfunc, lsm
from .compile_syscall import syscall_kprobe
from .compile_tracepoint import tracepoint
from .compile_uprobe import uprobe, usdt
from .plan import (
    GEN_MAX_HOOKS, GEN_MAX_SET_ENTRIES, ArgPlan, CompiledPolicy, HookPlan, HookUnit, Ignored, Unavailable,
)
from .targets import kernel_has_function

# gen_stats slots (generic.h enum gen_stat): GST_MATCHED -> "matched", in slot order
GST_NAMES = tuple(n.removeprefix("GST_").lower() for n, v in sorted(abi.enum("gen_stat").items(), key=lambda kv: kv[1])
                  if n != "GST_SLOTS")
_PATHS = {"kprobe": "kprobes", "fentry": "fentries", "tracepoint": "tracepoints", "uprobe": "uprobes",
          "usdt": "usdts", "lsmhook": "lsmhooks"}

__all__ = ["GST_NAMES", "ArgPlan", "CompiledPolicy", "Compiler", "HookPlan", "HookUnit", "Ignored", "Unavailable"]


class Compiler:
    """Compiles policies; ``alloc_hook``/``alloc_set`` hand out ids (the engine owns them)."""

    def __init__(self, probe: dict[str, bool], alloc_hook: Callable[[], int], alloc_set: Callable[[], int],
                 sock_fields: dict[str, tuple[int, int]] | None = None) -> None:
        self.probe = probe
        self.alloc_hook = alloc_hook
        self.alloc_set = alloc_set
        # struct gen_sock_info member -> (offset, size), from the object's BTF (engine)
        self.sock_fields = sock_fields or {}

    def supports(self, feature: str) -> bool:
        return bool(self.probe.get(feature, False))

    def sys_dispatch(self) -> str | None:
        """How ``syscall: true`` hooks are served here: ``tp_btf`` or ``raw_tp`` (one dispatcher program on the
        raw syscall tracepoints sys_enter/sys_exit, generic_sys.bpf.c), or ``None``: one program per syscall
        tracepoint (syscalls/sys_enter_X), on kernels without raw tracepoints."""
        if self.supports("tp_btf"):
            return "tp_btf"
        if self.supports("raw_tp"):
            return "raw_tp"
        return None

    def sys_wrapper(self, ret: bool, functions: tuple[str, ...] = ()) -> str | None:
        """How ``syscall: true`` hooks are served where the kernel can hook the syscall's wrapper function
        ``__x64_sys_X`` itself (only the hooked syscall pays, unlike a program on sys_enter, which switches every
        task to the syscall slow path): ``fentry`` (+ fexit for return values) where `lanner probe` says so
        and the kernel's BTF has every wrapper of ``functions``, else ``kprobe`` (+ kretprobe); ``None``: the
        syscall dispatcher (:meth:`sys_dispatch`)."""
        if self.supports("fentry") and (self.supports("fexit") or not ret) and \
                all(kernel_btf.btf_function(f) is not False for f in functions):
            return "fentry"
        if self.supports("kprobe") and (self.supports("kretprobe") or not ret):
            return "kprobe"
        return None

    def override_via(self) -> str | None:
        """How Override on a kernel function (or syscall) is served here: an fmod_ret program."""
        return "fmodret" if self.supports("fmod_ret") else None

    # ----------------------------------------------------------------------------------- entry
    def compile(self, policy: TracingPolicy, enforce: bool) -> CompiledPolicy:
        out = CompiledPolicy()
        if policy.spec.loader:
            reason = "process_loader events are not served by this lanner build"
            out.unavailable.append(f"spec.loader: {reason}")
            out.skipped.append(("spec.loader", "", reason))
            out.order.append("spec.loader")
        counters = dict.fromkeys(_PATHS.values(), 0)
        for kind, display, spec in policy.hooks():
            attr = _PATHS[kind]
            path = f"{attr}[{counters[attr]}]"
            counters[attr] += 1
            out.order.append(path)
            self._compile_one(out, HookContext(self, policy, path, display, _scratch(out), enforce), kind, spec)
        return out

    def _compile_one(self, out: CompiledPolicy, ctx: HookContext, kind: str, spec: Any) -> None:
        """One hook into ``out``: its plan and sets, or why it is left out (never an exception: an odd policy
        makes an unavailable hook, not a crash)."""
        scratch = ctx.cp
        try:
            plan = self._hook(ctx, kind, spec)
            scratch.check_room()
            # NotifyEnforcer: the selector stores argError per thread (gen_override, as Override) and
            # an fmod_ret program on each spec.enforcers call applies it (attached with the first unit)
            if [u for u in plan.units if u.config.pop("_enforcer", False)]:
                plan.units[0].attach += [("fmodret", c) for c in enforcer_calls(ctx.policy)]
        except Ignored as exc:
            out.ignored.append((ctx.path, ctx.display, str(exc)))
            out.set_ids += scratch.set_ids
            return
        except (Unavailable, ValueError, KeyError, TypeError, OSError) as exc:  # never crash on an odd policy
            reason = str(exc) if isinstance(exc, Unavailable) else f"cannot be compiled: {exc!r}"
            out.unavailable.append(f"hook {ctx.path} {ctx.display}: {reason}")
            out.skipped.append((ctx.path, ctx.display, reason))
            out.set_ids += scratch.set_ids  # allocated before the failure: freed with the policy
            return
        out.hooks.append(plan)
        for name in ("int_sets", "str_sets", "lpm_sets"):
            getattr(out, name).update(getattr(scratch, name))
        out.set_ids += scratch.set_ids
        out.hook_ids += scratch.hook_ids
        out.enforcing |= scratch.enforcing

    # ----------------------------------------------------------------------------- hook kinds
    def _hook(self, ctx: HookContext, kind: str, spec: Any) -> HookPlan:
        if kind in ("kprobe", "fentry"):
            return self._kprobe(ctx, kind, spec)
        if kind == "lsmhook":
            return self._lsm(ctx, spec)
        if kind == "usdt":
            return self._usdt(ctx, spec)
        if kind == "tracepoint":
            return self._tracepoint(ctx, spec)
        if kind == "uprobe":
            return self._uprobe(ctx, spec)
        raise Unavailable(f"unknown hook kind {kind}")

    def _kprobe(self, ctx: HookContext, kind: str, spec: KProbeSpec) -> HookPlan:
        """kprobes and fentries: syscall hooks (compile_syscall), else a kernel function by kprobe or fentry
        (fentries fall back to kprobes, docs/policy-engine.md)."""
        if spec.syscall and kind != "fentry":
            return syscall_kprobe(ctx, spec)
        feat = "kprobe" if kind == "kprobe" else "fentry"
        what = "kprobe attach" if kind == "kprobe" else "fentry (BPF trampoline) programs"
        if not self.supports(feat) and not (kind == "fentry" and self.supports("kprobe")):
            raise Unavailable(f"needs {what}, which this kernel lacks ({feat}: not supported, see 'lanner probe')")
        if spec.ignore_call_not_found and not spec.syscall and not spec.list_name and \
                not kernel_has_function(spec.call):
            raise Ignored("not in this kernel, ignored (ignore.callNotFound)")
        if kind == "fentry" and spec.syscall:  # like syscall kprobes: the syscall tracepoints
            return syscall_kprobe(ctx, spec)
        if kind == "fentry" and self.supports("fentry") and (self.supports("fexit") or not spec.return_):
            return kfunc(ctx, spec, mech="fentry")
        if self.supports("kprobe"):
            return kfunc(ctx, spec)
        raise Unavailable(f"{what} is available but this lanner build serves fentries as kprobes, which "
                          "this kernel lacks (kprobe: not supported)")

    def _lsm(self, ctx: HookContext, spec: LsmHookSpec) -> HookPlan:
        if not self.supports("lsm"):
            raise Unavailable("needs BPF LSM programs, which this kernel lacks (lsm: not supported)")
        return lsm(ctx, spec)

    def _tracepoint(self, ctx: HookContext, spec: TracepointSpec) -> HookPlan:
        return tracepoint(ctx, spec)

    def _uprobe(self, ctx: HookContext, spec: UProbeSpec) -> HookPlan:
        return uprobe(ctx, spec)

    def _usdt(self, ctx: HookContext, spec: USDTSpec) -> HookPlan:
        return usdt(ctx, spec)


def _scratch(out: CompiledPolicy) -> CompiledPolicy:
    """A hook's own output, with the room the policy's hooks before it left."""
    return CompiledPolicy(room=(GEN_MAX_HOOKS - len(out.hook_ids), GEN_MAX_SET_ENTRIES - out.set_entries()))
