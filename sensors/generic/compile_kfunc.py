"""Kernel-function hooks: ``generic_kprobe`` (+ ``generic_kretprobe``) with args from pt_regs, or for fentries
where the kernel has trampolines ``generic_fentry`` (+ ``generic_fexit``) with args from BTF; and BPF LSM hooks,
one ``generic_lsm`` instance per hook."""

from __future__ import annotations

from lanner.policy.model import KProbeSpec, LsmHookSpec

from .abi import (
    GA_INT, GA_SOCK, GEN_MAX_ARGS, GHF_BTF, GHF_EXIT, GHF_LSM, GHF_RET_SOCK, GHF_RET_TRACKSOCK, GHF_RET_UNTRACKSOCK,
    GHF_UPROBE, GSF_KSTACK, GSF_USTACK,
)
from .compile_args import INT_TYPES, kernel_arg, read_all
from .compile_config import config
from .compile_ctx import HookArgs, HookContext, HookShape
from .plan import ArgPlan, HookPlan, HookUnit, Unavailable


def kfunc(ctx: HookContext, spec: KProbeSpec, mech: str = "kprobe") -> HookPlan:
    """A kernel function: generic_kprobe (+ generic_kretprobe for return: true), args from pt_regs; or,
    for fentries where the kernel has trampolines, generic_fentry (+ generic_fexit), args from BTF."""
    rtype = _return_type(ctx, spec, mech)
    calls = ctx.list_values(spec.list_name, "call") if spec.list_name else [spec.call]
    gen, plans = read_all(spec.args, lambda i, a: kernel_arg(i, a, max_index=5, what=mech))
    positions = [a.index for a in spec.args]
    units, ret_plan = [], None
    for call in calls:
        hid = ctx.new_hook()
        args = HookArgs([dict(g) for g in gen], plans, positions, spec.args)
        cfg = config(ctx, spec.selectors, args, HookShape(has_ret=spec.return_, uprobe=mech == "kprobe",
                                                          override_via=ctx.features.override_via(),
                                                          stacks=GSF_KSTACK | GSF_USTACK))
        if mech == "fentry":
            cfg["flags"] |= GHF_BTF
        attach: list[tuple] = [("kprobe", call, False) if mech == "kprobe" else ("fentry", call)]
        if cfg.pop("_override", False):
            attach.append(("fmodret", call))
        unit = HookUnit(hid, cfg, attach, event_kind="process_kprobe", function_name=call)
        if spec.return_:
            ret_plan = _exit(ctx, spec, unit, rtype, mech)
        units.append(unit)
    return HookPlan(ctx.path, "kprobe", ctx.display, units, plans, ret_plan, spec.message, spec.tags, mech,
                    spec.return_arg_action or "")


def _return_type(ctx: HookContext, spec: KProbeSpec, mech: str) -> str:
    """The return value's policy type, or why it is not served."""
    if mech == "kprobe" and spec.return_ and not ctx.supports("kretprobe"):
        raise Unavailable("return: true needs kretprobe, which this kernel lacks")
    rtype = spec.return_arg.type if spec.return_ and spec.return_arg else "int"
    if rtype not in INT_TYPES and rtype not in ("auto", "sock"):
        raise Unavailable(f"returnArg type {rtype} is not served (integer and sock return values only)")
    if spec.return_arg_action and (spec.return_arg_action not in ("TrackSock", "UntrackSock") or rtype != "sock"):
        raise Unavailable(f"returnArgAction {spec.return_arg_action} on a {rtype} return value is not served "
                          "(TrackSock and UntrackSock on a sock are)")
    if rtype == "sock" and len(spec.args) >= GEN_MAX_ARGS:
        raise Unavailable(f"a sock return value needs a free argument slot: at most {GEN_MAX_ARGS - 1} args")
    return rtype


def _exit(ctx: HookContext, spec: KProbeSpec, unit: HookUnit, rtype: str, mech: str) -> ArgPlan:
    """The return half (kretprobe / fexit) and the return value's plan; a sock is read at the return into the
    slot after the args (GA_SOCK rendering)."""
    cfg, call = unit.config, unit.function_name
    size, signed = INT_TYPES.get(rtype, (8, True))
    label = spec.return_arg.label if spec.return_arg else None
    if rtype == "sock":
        ret_plan = ArgPlan(rtype, GA_SOCK, 8, False, label)
        cfg["flags"] |= GHF_RET_SOCK
        cfg["ret_slot"] = len(spec.args)
        if spec.return_arg_action:
            cfg["flags"] |= GHF_RET_TRACKSOCK if spec.return_arg_action == "TrackSock" else GHF_RET_UNTRACKSOCK
    else:
        ret_plan = ArgPlan(rtype, GA_INT, size, signed, label)
    unit.exit_id = ctx.new_hook()
    if mech == "kprobe":
        unit.exit_config = {"flags": GHF_EXIT | GHF_UPROBE, "pair": unit.hook_id}
        unit.exit_attach = [("kprobe", call, True)]
    else:
        unit.exit_config = {"flags": GHF_EXIT | GHF_BTF, "pair": unit.hook_id}
        unit.exit_attach = [("fexit", call)]
    return ret_plan


def lsm(ctx: HookContext, spec: LsmHookSpec) -> HookPlan:
    """A BPF LSM hook: one generic_lsm instance per hook (target set before load), BTF ctx args."""
    gen, plans = read_all(spec.args, lambda i, a: kernel_arg(i, a, max_index=11, what="LSM hook"))
    hid = ctx.new_hook()
    cfg = config(ctx, spec.selectors, HookArgs(gen, plans, [a.index for a in spec.args], spec.args),
                 HookShape(override_via="lsm"))
    cfg.pop("_override", None)
    cfg["flags"] |= GHF_BTF | GHF_LSM
    unit = HookUnit(hid, cfg, [("lsm", spec.hook)], event_kind="process_lsm", function_name=spec.hook)
    return HookPlan(ctx.path, "lsmhook", ctx.display, [unit], plans, None, spec.message, spec.tags, "lsm")
