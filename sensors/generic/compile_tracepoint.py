"""Tracepoint hooks: ``generic_tp`` on a tracepoint (args from its record, typed by its format file), or for
``raw: true`` a ``generic_tp_btf`` instance (args from the BTF context: the TP_PROTO arguments)."""

from __future__ import annotations

from lanner.policy.model import TracepointSpec

from .abi import GHF_BTF
from .compile_args import kernel_arg, read_all, tp_arg
from .compile_config import config
from .compile_ctx import HookArgs, HookContext, HookShape
from .plan import HookPlan, HookUnit, Unavailable
from .targets import tp_exists, tp_format


def tracepoint(ctx: HookContext, spec: TracepointSpec) -> HookPlan:
    if spec.raw:
        return raw_tracepoint(ctx, spec)
    if not ctx.supports("tracepoint"):
        raise Unavailable("needs tracepoint programs, which this kernel lacks")
    fmt = tp_format(spec.subsystem, spec.event)
    if fmt is None:
        raise Unavailable(f"tracepoint {spec.subsystem}/{spec.event} does not exist on this kernel")
    user = spec.subsystem in ("syscalls", "raw_syscalls")

    def read(i, a):
        if a.index >= len(fmt.fields):
            raise Unavailable(f"args[{i}]: index {a.index} is past the {len(fmt.fields)} fields of "
                              f"{spec.subsystem}/{spec.event}")
        return tp_arg(i, a, fmt.fields[a.index], user=user)

    gen, plans = read_all(spec.args, read)
    hid = ctx.new_hook()
    cfg = config(ctx, spec.selectors, HookArgs(gen, plans, list(range(len(spec.args))), spec.args), HookShape())
    unit = HookUnit(hid, cfg, [("tp", spec.subsystem, spec.event)], event_kind="process_tracepoint",
                    subsys=spec.subsystem, event=spec.event)
    return HookPlan(ctx.path, "tracepoint", ctx.display, [unit], plans, None, spec.message, spec.tags, "tracepoint")


def raw_tracepoint(ctx: HookContext, spec: TracepointSpec) -> HookPlan:
    """raw: true: a BTF tracepoint (tp_btf) program, one generic_tp_btf instance per tracepoint (target
    set before load); args are the TP_PROTO arguments (index = argument number), BTF-typed as for
    kernel functions."""
    if not ctx.supports("tp_btf"):
        raise Unavailable("raw: true needs BTF tracepoint (tp_btf) programs, which this kernel lacks")
    if not tp_exists(spec.subsystem, spec.event):
        raise Unavailable(f"tracepoint {spec.subsystem}/{spec.event} does not exist on this kernel")
    gen, plans = read_all(spec.args, lambda i, a: kernel_arg(i, a, max_index=5, what="raw tracepoint"))
    positions = list(range(len(spec.args)))  # matchArgs index: the position in args, as on tracepoints
    hid = ctx.new_hook()
    cfg = config(ctx, spec.selectors, HookArgs(gen, plans, positions, spec.args), HookShape())
    if cfg.pop("_override", False):
        raise Unavailable("Override is not served on tracepoints")
    cfg["flags"] |= GHF_BTF
    unit = HookUnit(hid, cfg, [("tp_btf", spec.event)], event_kind="process_tracepoint",
                    subsys=spec.subsystem, event=spec.event)
    return HookPlan(ctx.path, "tracepoint", ctx.display, [unit], plans, None, spec.message, spec.tags, "tp_btf")
