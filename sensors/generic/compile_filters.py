"""matchArgs / matchReturnArgs -> ``gen_filter`` values: which argument, which comparison, inline ranges, and
the value sets (integers, strings, prefixes, postfixes, CIDRs) written to the shared set maps."""

from __future__ import annotations

import ipaddress
from typing import Any

from lanner.policy import syscalls
from lanner.policy.model import IntRange, ListRef, MatchArg

from .abi import (
    GA_BINPRM, GA_BPF_ATTR, GA_BPF_MAP, GA_CRED, GA_DATALOC, GA_DENTRY, GA_FD, GA_FILE, GA_INLINE_STR, GA_INT,
    GA_IOVEC, GA_IOV_ITER, GA_KIOCB, GA_KSOCKADDR, GA_KSTR, GA_LOAD_INFO, GA_MODULE, GA_NETDEV, GA_PATH,
    GA_PERF_EVENT, GA_SKB, GA_SOCK, GA_SOCKET, GA_UBUF, GA_USERNS, GA_USOCKADDR, GA_USTR, GEN_MAX_RANGES,
    GEN_RET_ARG, GEN_STR_MAX, GF_ADDR, GF_INT, GF_MASK, GF_STR_EQ, GF_STR_POSTFIX, GF_STR_PREFIX, GFF_AUX,
    GFF_NEGATE, GFF_RET, GFF_SIGNED, GFF_SUB,
)
from .compile_ctx import HookArgs, HookContext
from .plan import ArgPlan, Unavailable

PATH_GA = (GA_FILE, GA_PATH, GA_DENTRY, GA_BINPRM)
SOCK_GA = (GA_SOCK, GA_SOCKET, GA_SKB)
STR_GA = (GA_USTR, GA_KSTR, GA_DATALOC, GA_INLINE_STR, GA_UBUF, GA_FD, GA_IOVEC, GA_NETDEV, GA_MODULE, GA_LOAD_INFO,
          *PATH_GA)
UNFILTERED_GA = (GA_CRED, GA_USERNS, GA_BPF_ATTR, GA_BPF_MAP, GA_PERF_EVENT, GA_KIOCB, GA_IOV_ITER)
FAMILIES = {"AF_UNSPEC": 0, "AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16,
            "AF_PACKET": 17}
PORT_OPS = ("SPort", "DPort", "SPortPriv", "DPortPriv", "SportPriv", "DportPriv")
U64 = (1 << 64) - 1
Filter = dict[str, Any]


def arg_filter(ctx: HookContext, m: MatchArg, args: HookArgs, where: str, ret: bool) -> Filter:
    """One matchArgs (or, ``ret``, matchReturnArgs) entry as a gen_filter."""
    op = m.operator
    pos, plan = _target(m, args, where, ret)
    f: Filter = {"arg": pos, "kind": GF_INT, "flags": GFF_RET if ret else 0, "nranges": 0,
                 "set_id": 0, "set_id2": 0, "lo": [], "hi": []}
    neg = op.startswith("Not")
    base = op[3:] if neg else op
    if neg:
        f["flags"] |= GFF_NEGATE
    values = expand_lists(ctx, list(m.parsed) if m.parsed else list(m.values), where)
    if base == "FileType":
        return _file_type_filter(f, op, values, plan, where)
    if plan.gen_type in (GA_USOCKADDR, GA_KSOCKADDR):
        return sockaddr_filter(ctx, f, base, values, where)
    if plan.gen_type in SOCK_GA:
        return sock_filter(ctx, f, base, values, where, plan.type)
    if plan.gen_type in UNFILTERED_GA:
        raise Unavailable(f"{where}: operator {op} on {plan.type} arguments is not served")
    if _is_str(plan, base, values):
        return _str_filter(ctx, f, op, base, values, plan, where)
    return _int_filter(ctx, f, op, base, values, plan, where)


def _target(m: MatchArg, args: HookArgs, where: str, ret: bool) -> tuple[int, ArgPlan]:
    """The filtered argument's slot and plan (the return value: GEN_RET_ARG)."""
    if ret:
        return GEN_RET_ARG, ArgPlan("int", GA_INT, 8, True)
    positions = args.positions
    if m.args:
        pos = m.args[0]
        if len(m.args) > 1:
            raise Unavailable(f"{where}: args with more than one position is not served")
    else:
        pos = positions.index(m.index) if m.index in positions and not _tp_positions(positions) else m.index
    if not 0 <= pos < len(args.plans):
        raise Unavailable(f"{where}: index {m.index} names no argument of the hook")
    return pos, args.plans[pos]


def _tp_positions(positions: list[int]) -> bool:
    """Tracepoint hooks pass positions == list(range(n)): matchArgs index is then a position."""
    return positions == list(range(len(positions)))


def _is_str(plan: ArgPlan, base: str, values: list) -> bool:
    if plan.type == "fd":  # a number unless compared as a path
        return base in ("Prefix", "Postfix") or any(isinstance(v, str) for v in values)
    return plan.gen_type in STR_GA


def _file_type_filter(f: Filter, op: str, values: list, plan: ArgPlan, where: str) -> Filter:
    if plan.gen_type not in (GA_FILE, GA_PATH, GA_BINPRM):
        raise Unavailable(f"{where}: operator {op} on {plan.type} arguments is not served")
    # i_mode (vals) in [type, type | 07777]: the S_IFMT bits equal the type
    types = sorted({int(v) & 0o170000 for v in values})
    if len(types) > GEN_MAX_RANGES:
        raise Unavailable(f"{where}: more than {GEN_MAX_RANGES} file types")
    f["nranges"], f["lo"], f["hi"] = len(types), types, [t | 0o7777 for t in types]
    return f


def _str_filter(ctx: HookContext, f: Filter, op: str, base: str, values: list, plan: ArgPlan,
                where: str) -> Filter:
    enc = [str(v).encode() for v in values]
    for v in enc:
        if len(v) > GEN_STR_MAX - 1:
            raise Unavailable(f"{where}: value longer than {GEN_STR_MAX - 1} bytes")
    sid = ctx.new_set()
    f["set_id"] = sid
    if base in ("Equal", "InMap"):
        f["kind"] = GF_STR_EQ
        ctx.cp.str_sets[sid] = enc
    elif base == "Prefix":
        f["kind"] = GF_STR_PREFIX
        ctx.cp.lpm_sets[sid] = [(8 * len(v), v) for v in enc]
    elif base == "Postfix":
        f["kind"] = GF_STR_POSTFIX
        ctx.cp.lpm_sets[sid] = [(8 * len(v), v[::-1]) for v in enc]
    else:
        raise Unavailable(f"{where}: operator {op} on {plan.type} arguments is not served")
    return f


def _int_filter(ctx: HookContext, f: Filter, op: str, base: str, values: list, plan: ArgPlan,
                where: str) -> Filter:
    if base not in ("Equal", "InMap", "InRange", "GreaterThan", "GT", "LessThan", "LT", "Mask"):
        raise Unavailable(f"{where}: operator {op} on {plan.type} arguments is not served")
    if plan.signed:
        f["flags"] |= GFF_SIGNED
    ints, ranges = _ints_and_ranges(values, where)
    lo_min = -(1 << 63) if plan.signed else 0
    hi_max = (1 << 63) - 1 if plan.signed else U64
    if base in ("GreaterThan", "GT"):
        ranges, ints = ranges + [(v + 1, hi_max) for v in ints], []
    elif base in ("LessThan", "LT"):
        ranges, ints = ranges + [(lo_min, v - 1) for v in ints], []
    elif base == "Mask":
        f["kind"] = GF_MASK
        ranges, ints = [(v, v) for v in ints], []
    if len(ranges) > GEN_MAX_RANGES:  # expand small ranges into the set
        if sum(hi - lo + 1 for lo, hi in ranges) > 65536:
            raise Unavailable(f"{where}: more than {GEN_MAX_RANGES} ranges spanning over 65536 values")
        for lo, hi in ranges:
            ints.extend(range(lo, hi + 1))
        ranges = []
    if ints:
        sid = ctx.new_set()
        f["set_id"] = sid
        ctx.cp.int_sets[sid] = [x & U64 for x in ints]
    _inline_ranges(f, ranges)
    return f


def _ints_and_ranges(values: list, where: str) -> tuple[list[int], list[tuple[int, int]]]:
    ints, ranges = [], []
    for v in values:
        if isinstance(v, IntRange):
            ranges.append((v.lo, v.hi))
        elif isinstance(v, int):
            ints.append(v)
        else:
            try:
                ints.append(int(str(v), 0))
            except ValueError:
                raise Unavailable(f"{where}: value {v!r} is not an integer") from None
    return ints, ranges


def _inline_ranges(f: Filter, ranges: list[tuple[int, int]]) -> None:
    f["nranges"], f["lo"], f["hi"] = len(ranges), [a for a, _ in ranges], [b for _, b in ranges]


def _numbers(ctx: HookContext, f: Filter, values: list, where: str, what: str) -> Filter:
    """Integers into a set, ``lo:hi`` ranges inline."""
    ints = [v for v in values if isinstance(v, int)]
    ranges = [(v.lo, v.hi) for v in values if isinstance(v, IntRange)]
    if ints:
        f["set_id"] = sid = ctx.new_set()
        ctx.cp.int_sets[sid] = ints
    if len(ranges) > GEN_MAX_RANGES:
        raise Unavailable(f"{where}: more than {GEN_MAX_RANGES} {what}")
    _inline_ranges(f, ranges)
    return f


def sockaddr_filter(ctx: HookContext, f: Filter, base: str, values: list, where: str) -> Filter:
    if base == "Family":  # numbers and names in the set, "lo:hi" ranges inline (the validator allows both)
        ranges = [(v.lo, v.hi) for v in values if isinstance(v, IntRange)]
        if len(ranges) > GEN_MAX_RANGES:
            raise Unavailable(f"{where}: more than {GEN_MAX_RANGES} family ranges")
        ints = [FAMILIES[v] if isinstance(v, str) and v in FAMILIES else int(v) for v in values
                if not isinstance(v, IntRange)]
        if ints:
            f["set_id"] = sid = ctx.new_set()
            ctx.cp.int_sets[sid] = ints
        _inline_ranges(f, ranges)
        return f
    if base in PORT_OPS:
        f["flags"] |= GFF_AUX
        if base.lower().endswith("portpriv"):
            f["nranges"], f["lo"], f["hi"] = 1, [0], [1023]
            return f
        return _numbers(ctx, f, values, where, "port ranges")
    if base in ("SAddr", "DAddr"):
        return _cidr_filter(ctx, f, values)
    raise Unavailable(f"{where}: operator {base} on sockaddr arguments is not served (SAddr, DAddr, SPort, "
                      "DPort, Family are)")


def _cidr_filter(ctx: HookContext, f: Filter, values: list) -> Filter:
    f["kind"] = GF_ADDR
    v4, v6 = [], []
    for v in values:
        net = v if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else \
            ipaddress.ip_network(str(v), strict=False)
        (v4 if net.version == 4 else v6).append((net.prefixlen, net.network_address.packed))
    if v4:
        f["set_id"] = sid = ctx.new_set()
        ctx.cp.lpm_sets[sid] = v4
    if v6:
        f["set_id2"] = sid = ctx.new_set()
        ctx.cp.lpm_sets[sid] = v6
    return f


def sock_filter(ctx: HookContext, f: Filter, base: str, values: list, where: str, type_name: str) -> Filter:
    """sock/socket/skb: Family on vals; SAddr/DAddr (CIDR) and SPort/DPort/Protocol/State on the
    struct gen_sock_info in the arg's str (offsets from BTF)."""
    if base == "Family":
        return sockaddr_filter(ctx, f, base, values, where)
    if base not in ("SAddr", "DAddr", "Protocol", "State", *PORT_OPS):
        raise Unavailable(f"{where}: operator {base} on {type_name} arguments is not served (SAddr, DAddr, SPort, "
                          "DPort and their Not* forms, Protocol, Family, State are)")
    field_name = {"SAddr": "saddr", "DAddr": "daddr", "Protocol": "protocol", "State": "state"}.get(
        base, "sport" if base.lower().startswith("sport") else "dport")
    sock_fields = ctx.features.sock_fields
    if field_name not in sock_fields:
        raise Unavailable(f"{where}: struct gen_sock_info.{field_name} is missing from the object's BTF")
    off, size = sock_fields[field_name]
    f["soff"] = off
    if base in ("SAddr", "DAddr"):
        return sockaddr_filter(ctx, f, base, values, where)
    f["flags"] |= GFF_SUB
    f["ssize"] = size
    if base.lower().endswith("portpriv"):
        f["nranges"], f["lo"], f["hi"] = 1, [0], [1023]
        return f
    others = [v for v in values if not isinstance(v, (int, IntRange))]
    if others:
        raise Unavailable(f"{where}: {base} value {others[0]!r} is not a number")
    return _numbers(ctx, f, values, where, "ranges")


def expand_lists(ctx: HookContext, values: list, where: str) -> list:
    """``list:NAME`` values replaced by the list's values (a syscall list's as syscall numbers)."""
    out = []
    for v in values:
        if not (isinstance(v, ListRef) or (isinstance(v, str) and v.startswith("list:"))):
            out.append(v)
            continue
        name = v.name if isinstance(v, ListRef) else v[5:]
        lst = ctx.policy.spec.list_named(name)
        if lst is None:
            raise Unavailable(f"{where}: list {name} not defined")
        for x in ctx.list_values(name, where):
            if not lst.is_syscall_list:
                out.append(x)
                continue
            nr = syscalls.number(x)
            if nr is None:
                raise Unavailable(f"{where}: list {name}: unknown syscall {x}")
            out.append(nr)
    return out
