"""User-space hooks: uprobes (``generic_uprobe`` + ``generic_uretprobe`` at a symbol or offset of a file, args
from registers) and USDT probes (``generic_uprobe`` on every site of provider:name, args where the probe's
note says)."""

from __future__ import annotations

import dataclasses
import os

from lanner.policy.model import UProbeSpec, USDTSpec

from .abi import GA_INT, GHF_EXIT, GHF_UPROBE, GHF_USDT, GSF_USTACK
from .compile_args import INT_TYPES, read_all, reg_arg
from .compile_config import config
from .compile_ctx import HookArgs, HookContext, HookShape
from .plan import ArgPlan, HookPlan, HookUnit, Unavailable
from .targets import symbol_offsets
from .usdt import UsdtError, UsdtProbe, find_probes

MAX_USDT_SITES = 64


def uprobe(ctx: HookContext, spec: UProbeSpec) -> HookPlan:
    if not ctx.supports("uprobe"):
        raise Unavailable("needs uprobes, which this kernel lacks")
    if spec.addrs or spec.ref_ctr_offsets or spec.binary_digests:
        raise Unavailable("addrs, refCtrOffsets and binaryDigests are not served by this lanner build")
    if not os.path.exists(spec.path):
        raise Unavailable(f"{spec.path} does not exist")
    if spec.symbols:
        offsets = symbol_offsets(spec.path, spec.symbols)
        targets = [(s, offsets[s]) for s in spec.symbols]
    else:
        targets = [("", o) for o in spec.offsets]
    gen, plans = read_all(spec.args, reg_arg)
    args = HookArgs(gen, plans, [a.index for a in spec.args], spec.args)
    units, ret_plan = [], None
    for sym, off in targets:
        hid = ctx.new_hook()
        cfg = config(ctx, spec.selectors, args, HookShape(has_ret=spec.return_, uprobe=True, stacks=GSF_USTACK))
        unit = HookUnit(hid, cfg, [("uprobe", spec.path, off, False)], event_kind="process_uprobe",
                        path=spec.path, symbol=sym, offset=off)
        if spec.return_:
            rtype = spec.return_arg.type if spec.return_arg else "int"
            size, signed = INT_TYPES.get(rtype, (8, True))
            ret_plan = ArgPlan(rtype, GA_INT, size, signed, spec.return_arg.label if spec.return_arg else None)
            unit.exit_id = ctx.new_hook()
            unit.exit_config = {"flags": GHF_EXIT | GHF_UPROBE, "pair": hid}
            unit.exit_attach = [("uprobe", spec.path, off, True)]
        units.append(unit)
    return HookPlan(ctx.path, "uprobe", ctx.display, units, plans, ret_plan, spec.message, spec.tags, "uprobe")


def usdt(ctx: HookContext, spec: USDTSpec) -> HookPlan:
    """A USDT probe: generic_uprobe on every site of provider:name in the file (its semaphore as the
    uprobe's ref_ctr_offset), args read where the probe's note says (register, memory, constant)."""
    sites = _sites(ctx, spec)
    positions = [a.index for a in spec.args]  # matchArgs index: the arg's index field (docs/policy.md)
    units, plans = [], []
    for site in sites:
        args = _site_args(spec, site, positions)
        plans = args.plans
        hid = ctx.new_hook()
        cfg = config(ctx, spec.selectors, args, HookShape(uprobe=True))
        if cfg.pop("_override", False):
            raise Unavailable("Override is not served on USDT probes")
        cfg["flags"] |= GHF_USDT
        units.append(HookUnit(hid, cfg, [("uprobe", spec.path, site.offset, False, site.ref_ctr_offset)],
                              event_kind="process_usdt", path=spec.path, subsys=spec.provider,
                              event=spec.name, offset=site.offset))
    return HookPlan(ctx.path, "usdt", ctx.display, units, plans, None, spec.message, spec.tags, "usdt")


def _sites(ctx: HookContext, spec: USDTSpec) -> list[UsdtProbe]:
    if not ctx.supports("uprobe"):
        raise Unavailable("needs uprobes, which this kernel lacks")
    if spec.btf_path:
        raise Unavailable("btfPath is not served by this lanner build")
    if not os.path.exists(spec.path):
        raise Unavailable(f"{spec.path} does not exist")
    try:
        sites = find_probes(spec.path, spec.provider, spec.name)
    except (UsdtError, OSError) as exc:
        raise Unavailable(str(exc)) from None
    except Exception as exc:  # pyelftools on a file that is not a well-formed ELF: any exception
        raise Unavailable(f"{spec.path} is not an ELF file this build can read ({type(exc).__name__}: "
                          f"{exc})") from None
    if len(sites) > MAX_USDT_SITES:
        raise Unavailable(f"USDT {spec.provider}:{spec.name} has {len(sites)} sites, the limit is {MAX_USDT_SITES}")
    return sites


def _site_args(spec: USDTSpec, site: UsdtProbe, positions: list[int]) -> HookArgs:
    gen, plans = [], []
    for i, a in enumerate(spec.args):
        if a.index >= len(site.args):
            raise Unavailable(f"args[{i}]: index {a.index}, but USDT {spec.provider}:{spec.name} has "
                              f"{len(site.args)} arguments")
        g, plan = reg_arg(i, dataclasses.replace(a, index=0))
        u = site.args[a.index]
        g.update(off=a.index, loc=u.loc, reg=u.reg, usize=u.size, usigned=int(u.signed), disp=u.disp)
        gen.append(g)
        plans.append(plan)
    return HookArgs(gen, plans, positions, spec.args)
