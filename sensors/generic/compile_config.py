"""A hook's ``gen_hook`` value: its flags and arguments, and per selector the argument filters, matchPIDs,
matchBinaries, matchNamespaces, matchCapabilities and the namespace / capability changes (the actions are
compile_actions.py's)."""

from __future__ import annotations

from typing import Any, Sequence

from lanner.policy.model import Selector
from lanner.policy.values import parse_int

from .abi import (
    GAF_ZERO, GCT_EFFECTIVE, GCT_INHERITABLE, GCT_PERMITTED, GEN_MAX_ARGS, GEN_MAX_FILTERS, GEN_MAX_NS, GEN_MAX_NS_VALUES, GEN_MAX_PID_ENTRIES, GEN_MAX_PIDS,
    GEN_MAX_SELECTORS, GEN_STR_MAX, GF_STR_EQ, GFF_RET, GHF_ENFORCE, GHF_HAS_RET, GHF_UPROBE, GNS_CGROUP, GNS_IPC,
    GNS_MNT, GNS_NET, GNS_PID, GNS_PID_FOR_CHILDREN, GNS_TIME, GNS_TIME_FOR_CHILDREN, GNS_USER, GNS_UTS, GOP_IN,
    GOP_NOTIN, GOP_NOTPOSTFIX, GOP_NOTPREFIX, GOP_POSTFIX, GOP_PREFIX, GPF_FOLLOW, GPF_NSPID, GSF_HAS_RET,
)
from .compile_actions import selector_actions
from .compile_ctx import HookArgs, HookContext, HookShape, SelectorScope
from .compile_filters import U64, arg_filter
from .plan import Unavailable
from .targets import host_ns

GOP = {"In": GOP_IN, "NotIn": GOP_NOTIN, "Prefix": GOP_PREFIX, "NotPrefix": GOP_NOTPREFIX, "Postfix": GOP_POSTFIX,
       "NotPostfix": GOP_NOTPOSTFIX}
NS_TYPES = {"Uts": GNS_UTS, "Ipc": GNS_IPC, "Mnt": GNS_MNT, "Pid": GNS_PID, "PidForChildren": GNS_PID_FOR_CHILDREN,
            "Net": GNS_NET, "Time": GNS_TIME, "TimeForChildren": GNS_TIME_FOR_CHILDREN, "Cgroup": GNS_CGROUP,
            "User": GNS_USER}
CAP_TYPES = {"Effective": GCT_EFFECTIVE, "Inheritable": GCT_INHERITABLE, "Permitted": GCT_PERMITTED}
ALL_NS_MASK = (1 << len(NS_TYPES)) - 1
Config = dict[str, Any]


def config(ctx: HookContext, selectors: Sequence[Selector], args: HookArgs, shape: HookShape) -> Config:
    """The hook's gen_hook fields by BTF name (``args[0].type``, ``sel[1].pids[0].op``); ``shape.stacks``: the
    GSF_KSTACK / GSF_USTACK a Post may ask for: the stack traces the hook's event carries (process_kprobe both,
    process_uprobe the user's; Tetragon's other events have none, and it ignores the flags there)."""
    if len(args.gen) > GEN_MAX_ARGS:
        raise Unavailable(f"{len(args.gen)} args, the limit is {GEN_MAX_ARGS}")
    if len(selectors) > GEN_MAX_SELECTORS:
        raise Unavailable(f"{len(selectors)} selectors, the limit is {GEN_MAX_SELECTORS}")
    cfg: Config = {"flags": (GHF_HAS_RET if shape.has_ret else 0) | (GHF_UPROBE if shape.uprobe else 0),
                   "nargs": len(args.gen), "nselectors": len(selectors)}
    _args(cfg, args)
    for si, sel in enumerate(selectors):
        _selector(SelectorScope(ctx, cfg, f"sel[{si}].", f"selectors[{si}]"), sel, args, shape)
    if ctx.enforce:
        cfg["flags"] |= GHF_ENFORCE
    return cfg


def _args(cfg: Config, args: HookArgs) -> None:
    """The gen_arg fields; sizeArgIndex (1-based, naming the arg whose *index* is that minus 1) -> position."""
    for i, g in enumerate(args.gen):
        sai = g.pop("_size_arg_index", None)
        if sai:
            want = sai - 1
            if want not in args.positions:
                raise Unavailable(f"args[{i}]: sizeArgIndex {sai} names an argument the hook does not read, "
                                  f"add it to args")
            g["size_arg"] = args.positions.index(want) + 1
        for k, v in g.items():
            cfg[f"args[{i}].{k}"] = v


def _selector(s: SelectorScope, sel: Selector, args: HookArgs, shape: HookShape) -> None:
    for attr, what in (("match_data", "matchData"), ("match_parent_binaries", "matchParentBinaries"),
                       ("match_return_actions", "matchReturnActions")):
        if getattr(sel, attr):
            raise Unavailable(f"{s.where}.{what} is not served by this lanner build")
    if sel.match_workloads is not None:
        raise Unavailable(f"{s.where}.matchWorkloads needs the pod/container map, not served by this build")
    flags = _filters(s, sel, args, shape)
    _pids(s, sel)
    _binaries(s, sel)
    _namespaces(s, sel)
    _capability(s, sel.match_capabilities, "cap", "matchCapabilities")
    _namespace_changes(s, sel)
    _capability(s, sel.match_capability_changes, "capch", "matchCapabilityChanges")
    selector_actions(s, sel, args, shape, flags)


def _filters(s: SelectorScope, sel: Selector, args: HookArgs, shape: HookShape) -> int:
    """matchArgs and matchReturnArgs; returns the selector flags they need (GSF_HAS_RET)."""
    filters = [arg_filter(s.ctx, m, args, f"{s.where}.matchArgs", False) for m in sel.match_args]
    for m in sel.match_return_args:
        if not shape.has_ret:
            raise Unavailable(f"{s.where}.matchReturnArgs needs return: true")
        filters.append(arg_filter(s.ctx, m, args, f"{s.where}.matchReturnArgs", True))
    if len(filters) > GEN_MAX_FILTERS:
        raise Unavailable(f"{s.where}: {len(filters)} argument filters, the limit is {GEN_MAX_FILTERS}")
    flags, cfg, p = 0, s.cfg, s.prefix
    for fi, f in enumerate(filters):
        for k, v in f.items():
            if isinstance(v, list):
                for r, x in enumerate(v):
                    cfg[f"{p}filters[{fi}].{k}[{r}]"] = x & U64
            else:
                cfg[f"{p}filters[{fi}].{k}"] = v
        if f["flags"] & GFF_RET:
            flags |= GSF_HAS_RET
        if f["kind"] == GF_STR_EQ and f["arg"] < GEN_MAX_ARGS:  # a hash key: the string slot is zeroed first
            key = f"args[{f['arg']}].flags"
            cfg[key] = cfg.get(key, 0) | GAF_ZERO
    cfg[f"{p}nfilters"] = len(filters)
    return flags


def _pids(s: SelectorScope, sel: Selector) -> None:
    if len(sel.match_pids) > GEN_MAX_PID_ENTRIES:
        raise Unavailable(f"{s.where}.matchPIDs: {len(sel.match_pids)} entries, the limit is {GEN_MAX_PID_ENTRIES}")
    for j, mp in enumerate(sel.match_pids):  # entries are ANDed
        if len(mp.values) > GEN_MAX_PIDS:
            raise Unavailable(f"{s.where}.matchPIDs[{j}]: {len(mp.values)} values, the limit is {GEN_MAX_PIDS}")
        e = f"{s.prefix}pids[{j}]."
        s.cfg[e + "op"] = GOP[mp.operator]
        s.cfg[e + "flags"] = (GPF_FOLLOW if mp.follow_forks else 0) | (GPF_NSPID if mp.is_namespace_pid else 0)
        s.cfg[e + "n"] = len(mp.values)
        for k, v in enumerate(mp.values):
            s.cfg[f"{e}vals[{k}]"] = v


def _binaries(s: SelectorScope, sel: Selector) -> None:
    if len(sel.match_binaries) > 1:
        raise Unavailable(f"{s.where}.matchBinaries: at most one entry")
    p = s.prefix
    for mb in sel.match_binaries:
        if mb.follow_children and mb.operator not in ("In", "NotIn", "Prefix", "NotPrefix"):
            raise Unavailable(f"{s.where}.matchBinaries followChildren with {mb.operator} is not served by this "
                              "lanner build (In, NotIn, Prefix, NotPrefix are)")
        if mb.follow_children:
            s.cfg[f"{p}bin_follow"] = 1
        op = GOP.get(mb.operator)
        if op is None:
            raise Unavailable(f"{s.where}.matchBinaries operator {mb.operator} is not served")
        sid = s.ctx.new_set()
        vals = [v.encode() for v in mb.values]
        for v in vals:
            if len(v) > GEN_STR_MAX - 1:
                raise Unavailable(f"{s.where}.matchBinaries value longer than {GEN_STR_MAX - 1} bytes")
        if op in (GOP_IN, GOP_NOTIN):
            s.ctx.cp.str_sets[sid] = vals
        elif op in (GOP_PREFIX, GOP_NOTPREFIX):
            s.ctx.cp.lpm_sets[sid] = [(8 * len(v), v) for v in vals]
        else:
            s.ctx.cp.lpm_sets[sid] = [(8 * len(v), v[::-1]) for v in vals]
        s.cfg[f"{p}bin_op"] = op
        s.cfg[f"{p}bin_set"] = sid


def _namespaces(s: SelectorScope, sel: Selector) -> None:
    if len(sel.match_namespaces) > GEN_MAX_NS:
        raise Unavailable(f"{s.where}.matchNamespaces: {len(sel.match_namespaces)} entries, the limit is "
                          f"{GEN_MAX_NS}")
    p = s.prefix
    for n, mn in enumerate(sel.match_namespaces):
        if len(mn.values) > GEN_MAX_NS_VALUES:
            raise Unavailable(f"{s.where}.matchNamespaces[{n}]: more than {GEN_MAX_NS_VALUES} values")
        s.cfg[f"{p}ns[{n}].type"] = NS_TYPES[mn.namespace]
        s.cfg[f"{p}ns[{n}].op"] = GOP[mn.operator]
        s.cfg[f"{p}ns[{n}].nvals"] = len(mn.values)
        for k, v in enumerate(mn.values):
            # an inode number as the validator read it (Go's ParseInt base 0: 0x.., 0o.., 0b.., 0755 octal)
            s.cfg[f"{p}ns[{n}].vals[{k}]"] = host_ns(mn.namespace) if v == "host_ns" else parse_int(v, 32, False)
    s.cfg[f"{p}nns"] = len(sel.match_namespaces)


def _capability(s: SelectorScope, entries: Sequence[Any], key: str, what: str) -> None:
    """matchCapabilities (``cap_``) or matchCapabilityChanges (``capch_``): one entry is served."""
    if len(entries) > 1:
        raise Unavailable(f"{s.where}.{what}: at most one entry is served")
    for mc in entries:
        s.cfg[f"{s.prefix}{key}_op"] = GOP[mc.operator]
        s.cfg[f"{s.prefix}{key}_type"] = CAP_TYPES[mc.type]
        s.cfg[f"{s.prefix}{key}_mask"] = mc.mask
        if mc.is_namespace_capability:
            s.cfg[f"{s.prefix}{key}_userns"] = host_ns("User")


def _namespace_changes(s: SelectorScope, sel: Selector) -> None:
    """matchNamespaceChanges (the parser allows one entry): In compares the listed namespaces with their
    exec-time inodes, NotIn all the others (Tetragon)."""
    for nc in sel.match_namespace_changes:
        listed = 0
        for v in nc.values:
            listed |= 1 << NS_TYPES[v]
        s.cfg[f"{s.prefix}nsch_op"] = GOP["In"]
        s.cfg[f"{s.prefix}nsch_mask"] = listed if nc.operator == "In" else ALL_NS_MASK & ~listed
