"""``syscall: true`` hooks (kprobes and fentries on a syscall): where the kernel allows, an fentry or kprobe on
the syscall's wrapper ``__x64_sys_X``; else the one dispatcher program on the raw syscall tracepoints
(generic_sys.bpf.c); else the syscall's own tracepoints. The tracepoint's format types the arguments in
every case."""

from __future__ import annotations

from dataclasses import dataclass

from lanner.policy import syscalls
from lanner.policy.model import KProbeSpec

from .abi import GA_INT, GEN_SYS_NR, GHF_BTF, GHF_EXIT, GHF_SYSCALL, GHF_SYSWRAP, GSF_KSTACK, GSF_USTACK
from .compile_args import INT_TYPES, tp_arg
from .compile_config import config
from .compile_ctx import HookArgs, HookContext, HookShape
from .plan import ArgPlan, HookPlan, HookUnit, Unavailable
from .prefilter import hook_prefilter
from .targets import syscall_nr, tp_format
from .tracefs import TpFormat

WRAP_MAX_CALLS = 16  # longer syscall lists go to the dispatcher (one program), not one fentry per syscall


@dataclass(frozen=True)
class Serving:
    """How this hook's syscalls are served: ``wrap`` (fentry/kprobe on the wrapper), else ``disp`` (the
    dispatcher's flavour: tp_btf/raw_tp), else the syscall tracepoints."""

    wrap: str | None
    disp: str | None


def syscall_kprobe(ctx: HookContext, spec: KProbeSpec) -> HookPlan:
    if not ctx.supports("tracepoint") and ctx.features.sys_dispatch() is None:
        raise Unavailable("needs kprobe or the syscall tracepoints, which this kernel lacks")
    calls = ctx.list_values(spec.list_name, "call") if spec.list_name else [spec.call]
    for sel in spec.selectors:
        if sel.match_return_args and not spec.return_:
            raise Unavailable("matchReturnArgs needs return: true")
    how = _serving(ctx, spec, calls)
    units, plans, ret_plan = [], [], None
    for call in calls:
        unit, plans, ret = _unit(ctx, spec, call, how)
        ret_plan = ret or ret_plan
        units.append(unit)
    return HookPlan(ctx.path, "kprobe", ctx.display, units, plans, ret_plan, spec.message, spec.tags,
                    how.wrap or ("syscall dispatch" if how.disp is not None else "syscall tracepoints"))


def _serving(ctx: HookContext, spec: KProbeSpec, calls: list[str]) -> Serving:
    """One dispatcher program on sys_enter (+ sys_exit) serves every syscall hook where the kernel has raw
    tracepoints; fentry / kprobe on __x64_sys_X where the kernel has them; a long list (generated_syscalls)
    would load one fentry instance per syscall: the dispatcher serves it."""
    f = ctx.features
    wrap = f.sys_wrapper(spec.return_, tuple(syscalls.function_name(c) for c in calls)) \
        if len(calls) <= WRAP_MAX_CALLS or f.sys_dispatch() is None else None
    disp = None if wrap else f.sys_dispatch()
    if disp is not None and any(_nr_or(syscall_nr(c), GEN_SYS_NR) >= GEN_SYS_NR for c in calls):  # read is 0
        disp = None  # a number the dispatcher does not serve, or no syscall table here
    if wrap is None and disp is None and not ctx.supports("tracepoint"):
        raise Unavailable("needs kprobe or the syscall tracepoints, which this kernel lacks")
    return Serving(wrap, disp)


def _nr_or(nr: int | None, default: int) -> int:
    return default if nr is None else nr


def _formats(ctx: HookContext, spec: KProbeSpec, call: str, name: str) -> tuple[TpFormat, TpFormat | None]:
    """The syscall's enter (and, for return: true, exit) tracepoint formats, or why the hook cannot be served."""
    fmt = tp_format("syscalls", f"sys_enter_{name}")
    xfmt = tp_format("syscalls", f"sys_exit_{name}") if spec.return_ and fmt is not None else None
    if fmt is None or (spec.return_ and xfmt is None):
        # every mechanism needs the tracepoint's format (it types the arguments): name what is missing,
        # and kprobes only where the probe says they are absent
        tp = f"syscalls/sys_{'exit' if fmt is not None else 'enter'}_{name}"
        no_kp = "" if ctx.supports("kprobe") else ", and this kernel lacks kprobe attach (kprobe: not supported)"
        raise Unavailable(f"there is no {tp} tracepoint to serve {call} (its format types the syscall's "
                          f"arguments){no_kp}")
    return fmt, xfmt


def _args(spec: KProbeSpec, name: str, fmt: TpFormat, how: Serving) -> HookArgs:
    sys_fields = [f for f in fmt.fields if f.index > 4]  # after __syscall_nr
    gen, plans = [], []
    for i, a in enumerate(spec.args):
        if a.index >= len(sys_fields):
            raise Unavailable(f"args[{i}]: index {a.index}: {name} has {len(sys_fields)} arguments")
        g, plan = tp_arg(i, a, sys_fields[a.index], user=True, syscall=True)
        if how.disp is not None or how.wrap is not None:
            g["off"] = a.index  # the dispatcher / the wrapper's hook reads the argument from pt_regs
        gen.append(g)
        plans.append(plan)
    return HookArgs(gen, plans, [a.index for a in spec.args], spec.args)


def _unit(ctx: HookContext, spec: KProbeSpec, call: str, how: Serving) -> tuple[HookUnit, list, ArgPlan | None]:
    name = syscalls.bare(call)
    fmt, xfmt = _formats(ctx, spec, call, name)
    args = _args(spec, name, fmt, how)
    hid = ctx.new_hook()
    cfg = config(ctx, spec.selectors, args, HookShape(has_ret=spec.return_, override_via=ctx.features.override_via(),
                                                      stacks=GSF_KSTACK | GSF_USTACK))
    nr = syscall_nr(name) if how.disp is not None else None
    fn = syscalls.function_name(name)
    if how.wrap is not None:
        cfg["flags"] |= GHF_SYSWRAP | (GHF_BTF if how.wrap == "fentry" else 0)
        attach: list[tuple] = [("fentry", fn) if how.wrap == "fentry" else ("kprobe", fn, False)]
    elif nr is not None:
        cfg["flags"] |= GHF_SYSCALL
        cfg["sysnr"] = nr + 1
        attach = [("sys", how.disp, 0, nr, name, hook_prefilter(cfg, ctx.cp.lpm_sets, ctx.cp.str_sets))]
    else:
        attach = [("tp", "syscalls", f"sys_enter_{name}")]
    if cfg.pop("_override", False):  # sys_enter decides, fmod_ret on the syscall function returns it
        attach.append(("fmodret", fn))
    unit = HookUnit(hid, cfg, attach, event_kind="process_kprobe", function_name=fn)
    ret_plan = _exit(ctx, spec, unit, how, nr, xfmt) if spec.return_ else None
    return unit, args.plans, ret_plan


def _exit(ctx: HookContext, spec: KProbeSpec, unit: HookUnit, how: Serving, nr: int | None,
          xfmt: TpFormat | None) -> ArgPlan:
    """The return half: its hook id, config and attachment; the return value's plan."""
    assert xfmt is not None
    name = unit.function_name
    retf = xfmt.field("ret")
    rtype = spec.return_arg.type if spec.return_arg else "int"
    size, signed = INT_TYPES.get(rtype, (8, True))
    ret_plan = ArgPlan(rtype, GA_INT, size, signed, spec.return_arg.label if spec.return_arg else None)
    hid = unit.hook_id
    unit.exit_id = ctx.new_hook()
    ret = {"ret_size": size, "ret_signed": int(signed)}
    if how.wrap is not None:
        unit.exit_config = {"flags": GHF_EXIT, "pair": hid, **ret}
        unit.exit_attach = [("fexit", name) if how.wrap == "fentry" else ("kprobe", name, True)]
    elif nr is not None:
        unit.exit_config = {"flags": GHF_EXIT | GHF_SYSCALL, "pair": hid, "sysnr": nr + 1, **ret}
        unit.exit_attach = [("sys", how.disp, 1, nr, syscalls.bare(name))]
    else:
        unit.exit_config = {"flags": GHF_EXIT, "pair": hid, "ret_off": retf.offset if retf else 16, **ret}
        unit.exit_attach = [("tp", "syscalls", f"sys_exit_{syscalls.bare(name)}")]
    return ret_plan

