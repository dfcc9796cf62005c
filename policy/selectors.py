"""Selectors: macro expansion, semantic checks, and the build into model objects.

The schema pass (:mod:`lanner.policy.crd`) already guarantees types, enums and required fields.
What is checked here needs context the schema cannot express: which args the hook declares, their
types, the policy's lists and enforcers, and the limits of the BPF side (tetragon.md "Limits").

Conventions worth knowing when reading an error:

* matchArgs ``index`` names an arg by its ``index`` field (the function's argument number) for
  kprobes, fentries, uprobes, USDTs and LSM hooks, but by *position in args* for tracepoints, as in
  Tetragon; ``args: [i]`` always counts positions and wins over ``index``;
* matchData counts positions in ``data``; matchReturnArgs refers to ``returnArg``;
* a filter that came from a ``selectorsMacros`` entry is reported at the macro's path, with
  ``(via <selector path>)`` appended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol

from . import values as V
from .crd import NAMESPACE_TYPES, OPERATOR_ALIASES, OPERATORS
from .errors import Report, child, item, key
from .model import (
    Action, ArgSpec, FrozenDict, LabelSelector, LabelSelectorRequirement, ListSpec,
    MatchArg, MatchBinaries, MatchCapabilities, MatchNamespaceChanges, MatchNamespaces, MatchPIDs,
    ParsedValue, Selector, Workloads,
)
from .names import MAX_SIGNAL

# ---------------------------------------------------------------------------------- limits
MAX_SELECTORS = 5  # per hook
MAX_ARG_FILTERS = 5  # matchArgs + matchData per selector
MAX_VALUES = 4  # per filter, for operators compared by value in BPF (not map-backed)
MAX_ACTIONS = 3  # per selector, matchActions and matchReturnActions each
MAX_PIDS = 4  # per matchPIDs entry
MAX_NAMESPACE_FILTERS = 10
MAX_NAMESPACE_VALUES = 4
MAX_PREFIX_BYTES = 256
MAX_POSTFIX_BYTES = 127
MAX_EQUAL_STRING_BYTES = 4096
MAX_SUBSTRING_CHARS = 99
MAX_BINARY_PATH = 255

# --------------------------------------------------------------------- operators per arg type
_EQ = ("Equal", "NotEqual")
_STRING_OPS = _EQ + ("Prefix", "NotPrefix", "Postfix", "NotPostfix")
_SUBSTRING_OPS = ("SubString", "SubStringIgnCase")
_FILE_TYPE_OPS = ("FileType", "NotFileType")
_INT_OPS = _EQ + ("GreaterThan", "LessThan", "Mask", "InMap", "NotInMap", "InRange", "NotInRange", "CelExpr")
_CAP_MASK_OPS = _EQ + ("Mask", "CapabilitiesGained")
_PRIV_OPS = ("SPortPriv", "NotSportPriv", "DPortPriv", "NotDPortPriv")
_SOCKADDR_OPS = ("SAddr", "NotSAddr", "SPort", "NotSPort", "SPortPriv", "NotSportPriv", "Family")
_SOCK_OPS = _SOCKADDR_OPS + ("DAddr", "NotDAddr", "DPort", "NotDPort", "DPortPriv", "NotDPortPriv",
                             "Protocol", "State")
CANONICAL_OPERATORS = tuple(op for op in OPERATORS if op not in OPERATOR_ALIASES)

CAP_MASK_TYPES = frozenset({"kernel_cap_t", "cap_inheritable", "cap_permitted", "cap_effective"})
SOCK_TYPES = frozenset({"sock", "skb", "socket"})


def operators_for(arg_type: str) -> tuple[str, ...]:
    """The matchArgs operators valid for an arg type (canonical names; ``auto`` allows all, the
    type is only known once resolved from BTF or the tracepoint format)."""
    if arg_type == "auto":
        return CANONICAL_OPERATORS
    if arg_type in V.INT_WIDTHS:
        return _INT_OPS
    if arg_type in CAP_MASK_TYPES:
        return _CAP_MASK_OPS
    if arg_type in ("string", "char_buf"):
        return _STRING_OPS + _SUBSTRING_OPS
    if arg_type in ("file", "path"):
        return _STRING_OPS + _FILE_TYPE_OPS
    if arg_type in ("fd", "dentry", "linux_binprm", "filename", "data_loc", "net_device"):
        return _STRING_OPS
    if arg_type in SOCK_TYPES:
        return _SOCK_OPS
    if arg_type == "sockaddr":
        return _SOCKADDR_OPS
    return ()


class Sink(Protocol):
    def error(self, path: str, message: str) -> None: ...
    def warn(self, path: str, message: str) -> None: ...


@dataclass
class _Via:
    """Report adapter for filters that came from a macro: appends where the macro was used."""

    report: Report
    via: str

    def error(self, path: str, message: str) -> None:
        self.report.error(path, f"{message} (via {self.via})")

    def warn(self, path: str, message: str) -> None:
        self.report.warn(path, f"{message} (via {self.via})")


@dataclass(frozen=True)
class HookContext:
    """What a selector of one hook can refer to."""

    kind: str  # spec list name: kprobes, fentries, tracepoints, uprobes, usdts, lsmhooks
    path: str  # spec.kprobes[0]
    args: tuple[ArgSpec, ...]
    data: tuple[ArgSpec, ...] = ()
    return_arg: ArgSpec | None = None
    is_return: bool = False
    syscall: bool = False
    call: str = ""  # kprobe/fentry call, for Override checks
    override_functions: tuple[str, ...] | None = ()  # functions an Override would hit; None: unknown
    lists: Mapping[str, ListSpec] = FrozenDict()
    has_enforcer: bool = False

    @property
    def index_by_position(self) -> bool:
        return self.kind == "tracepoints"


# ------------------------------------------------------------------------------ macro expansion
def expand_macros(sel: Mapping[str, Any], path: str, macros: Mapping[str, Mapping[str, Any]],
                  report: Report) -> tuple[dict[str, Any], dict[str, tuple[str, Sink]]]:
    """Merge the selector's ``macros`` into it. Returns the merged selector and, per field, the
    path its filters are reported at and the sink to report through."""
    merged = {k: v for k, v in sel.items() if k != "macros"}
    where: dict[str, tuple[str, Sink]] = {k: (child(path, k), report) for k in merged}
    origin: dict[str, str] = {k: "the selector" for k in merged}
    for j, name in enumerate(sel.get("macros", ())):
        mpath = item(child(path, "macros"), j)
        if name not in macros:
            known = f"; defined: {sorted(macros)}" if macros else "; spec.selectorsMacros is empty"
            report.error(mpath, f"macro {name!r} is not defined{known}")
            continue
        macro = macros[name]
        base = key("spec.selectorsMacros", name)
        for field, value in macro.items():
            if field == "macros":
                continue  # reported once, on the macro definition
            if field == "label":
                merged.setdefault("label", value)
                continue
            if value in ([], {}):
                continue
            if merged.get(field) not in (None, [], {}):
                report.error(mpath, f"{field} is set both in {origin[field]} and in macro {name!r}; "
                                    "a field may come from one place only")
                continue
            merged[field] = value
            where[field] = (child(base, field), _Via(report, path))
            origin[field] = f"macro {name!r}"
    return merged, where


# ------------------------------------------------------------------------------------- selectors
def build_selectors(raw: list[Mapping[str, Any]], ctx: HookContext, macros: Mapping[str, Mapping[str, Any]],
                    report: Report) -> tuple[Selector, ...]:
    base = child(ctx.path, "selectors")
    if len(raw) > MAX_SELECTORS:
        report.error(base, f"at most {MAX_SELECTORS} selectors per hook, got {len(raw)}")
    out = []
    for i, sel in enumerate(raw):
        path = item(base, i)
        merged, where = expand_macros(sel, path, macros, report)
        out.append(_build_selector(merged, where, path, ctx, report))
    return tuple(out)


def _each(merged: Mapping[str, Any], where: Mapping[str, tuple[str, Sink]], field: str
          ) -> list[tuple[Any, str, Sink]]:
    """(raw entry, entry path, sink) for every entry of a selector list field."""
    if field not in merged:
        return []
    base, sink = where[field]
    return [(raw, item(base, i), sink) for i, raw in enumerate(merged[field])]


def _build_selector(merged: Mapping[str, Any], where: Mapping[str, tuple[str, Sink]], path: str,
                    ctx: HookContext, report: Report) -> Selector:
    n_filters = len(merged.get("matchArgs", ())) + len(merged.get("matchData", ()))
    if n_filters > MAX_ARG_FILTERS:
        report.error(child(path, "matchArgs"), f"at most {MAX_ARG_FILTERS} matchArgs and matchData filters per "
                                               f"selector, got {n_filters}")
    if merged.get("matchReturnArgs") and not ctx.is_return:
        report.error(where["matchReturnArgs"][0], "needs return: true on the hook")
    if merged.get("matchReturnActions") and not ctx.is_return:
        report.error(where["matchReturnActions"][0], "needs return: true on the hook")
    if len(merged.get("matchReturnArgs", ())) > MAX_ARG_FILTERS:
        report.error(where["matchReturnArgs"][0], f"at most {MAX_ARG_FILTERS} filters per selector, "
                                                  f"got {len(merged['matchReturnArgs'])}")
    for field in ("matchActions", "matchReturnActions"):
        if len(merged.get(field, ())) > MAX_ACTIONS:
            report.error(where[field][0], f"at most {MAX_ACTIONS} actions per selector, got {len(merged[field])}")
    if len(merged.get("matchNamespaces", ())) > MAX_NAMESPACE_FILTERS:
        report.error(where["matchNamespaces"][0], f"at most {MAX_NAMESPACE_FILTERS} namespace filters per "
                                                  f"selector, got {len(merged['matchNamespaces'])}")
    if len(merged.get("matchNamespaceChanges", ())) > 1:
        report.error(where["matchNamespaceChanges"][0],
                     f"at most 1 entry per selector, got {len(merged['matchNamespaceChanges'])}")

    actions = tuple(_action(r, p, s, ctx, False) for r, p, s in _each(merged, where, "matchActions"))
    if not actions:
        actions = (Action("Post"),)  # the implicit default, written out
    return Selector(
        label=merged.get("label"),
        match_pids=tuple(_pids(r, p, s) for r, p, s in _each(merged, where, "matchPIDs")),
        match_args=tuple(_match_arg(r, p, s, ctx, "args") for r, p, s in _each(merged, where, "matchArgs")),
        match_data=tuple(_match_arg(r, p, s, ctx, "data") for r, p, s in _each(merged, where, "matchData")),
        match_return_args=tuple(_match_arg(r, p, s, ctx, "return")
                                for r, p, s in _each(merged, where, "matchReturnArgs")),
        match_binaries=tuple(_binaries(r, p, s) for r, p, s in _each(merged, where, "matchBinaries")),
        match_parent_binaries=tuple(_binaries(r, p, s) for r, p, s in _each(merged, where, "matchParentBinaries")),
        match_namespaces=tuple(_namespaces(r, p, s) for r, p, s in _each(merged, where, "matchNamespaces")),
        match_namespace_changes=tuple(_namespace_changes(r, p, s)
                                      for r, p, s in _each(merged, where, "matchNamespaceChanges")),
        match_capabilities=_capabilities(_each(merged, where, "matchCapabilities")),
        match_capability_changes=_capabilities(_each(merged, where, "matchCapabilityChanges")),
        match_workloads=_workloads(merged["matchWorkloads"], *where["matchWorkloads"])
        if "matchWorkloads" in merged else None,
        match_actions=actions,
        match_return_actions=tuple(_action(r, p, s, ctx, True)
                                   for r, p, s in _each(merged, where, "matchReturnActions")),
    )


# ---------------------------------------------------------------------------- simple filters
def _pids(raw: Mapping[str, Any], path: str, sink: Sink) -> MatchPIDs:
    pids = raw["values"]
    if not pids:
        sink.error(child(path, "values"), "needs at least one PID")
    if len(pids) > MAX_PIDS:
        sink.error(child(path, "values"), f"at most {MAX_PIDS} PIDs per matchPIDs entry, got {len(pids)}")
    for i, pid in enumerate(pids):
        if pid < 0:
            sink.error(item(child(path, "values"), i), f"a PID cannot be negative, got {pid}")
    return MatchPIDs(raw["operator"], tuple(pids), raw["followForks"], raw["isNamespacePID"])


def _binaries(raw: Mapping[str, Any], path: str, sink: Sink) -> MatchBinaries:
    op, paths = raw["operator"], raw["values"]
    if raw["followChildren"] and op not in ("In", "NotIn"):
        sink.error(child(path, "followChildren"), f"only works with the In and NotIn operators, not {op!r}")
    if not paths:
        sink.warn(child(path, "values"), "is empty: this matchBinaries filter is ignored")
    limit = {"Prefix": MAX_PREFIX_BYTES, "NotPrefix": MAX_PREFIX_BYTES,
             "Postfix": MAX_POSTFIX_BYTES, "NotPostfix": MAX_POSTFIX_BYTES}.get(op, MAX_BINARY_PATH)
    for i, value in enumerate(paths):
        vpath = item(child(path, "values"), i)
        if len(value.encode()) > limit:
            sink.error(vpath, f"is {len(value.encode())} bytes; {op} values are limited to {limit}")
        if op in ("In", "NotIn") and not value.startswith("/"):
            sink.warn(vpath, f"{value!r} is not an absolute path; In/NotIn compare the full executable path")
    return MatchBinaries(op, tuple(paths), raw["followChildren"])


def _namespaces(raw: Mapping[str, Any], path: str, sink: Sink) -> MatchNamespaces:
    vals = raw["values"]
    vpath = child(path, "values")
    if not vals:
        sink.error(vpath, "needs at least one value")
    if len(vals) > MAX_NAMESPACE_VALUES:
        sink.error(vpath, f"at most {MAX_NAMESPACE_VALUES} values per namespace filter, got {len(vals)}")
    for i, v in enumerate(vals):
        if v == "host_ns":
            continue
        try:
            V.parse_int(v, 32, signed=False)
        except ValueError:
            sink.error(item(vpath, i), f"{v!r} is not a namespace inode number or 'host_ns'")
    return MatchNamespaces(raw["namespace"], raw["operator"], tuple(vals))


_NS_BY_LOWER: Mapping[str, str] = MappingProxyType({n.lower(): n for n in NAMESPACE_TYPES})


def _namespace_changes(raw: Mapping[str, Any], path: str, sink: Sink) -> MatchNamespaceChanges:
    out = []
    if not raw["values"]:
        sink.error(child(path, "values"), "needs at least one namespace type")
    for i, v in enumerate(raw["values"]):
        name = _NS_BY_LOWER.get(v.lower())
        if name is None:
            sink.error(item(child(path, "values"), i), f"{v!r} is not one of {list(NAMESPACE_TYPES)!r}")
        out.append(name or v)
    return MatchNamespaceChanges(raw["operator"], tuple(out))


def _capabilities(entries: list[tuple[Any, str, Sink]]) -> tuple[MatchCapabilities, ...]:
    out = []
    seen: dict[str, str] = {}
    for raw, path, sink in entries:
        if raw["type"] in seen:
            sink.error(child(path, "type"), f"{raw['type']} capabilities are already filtered by {seen[raw['type']]}; "
                                            "use one entry per capability type")
        seen.setdefault(raw["type"], path)
        names = []
        if not raw["values"]:
            sink.error(child(path, "values"), "needs at least one capability")
        for i, v in enumerate(raw["values"]):
            try:
                names.append(V.parse_capability(v))
            except ValueError as e:
                sink.error(item(child(path, "values"), i), str(e))
                names.append(v)
        out.append(MatchCapabilities(raw["operator"], tuple(names), raw["type"], raw["isNamespaceCapability"]))
    return tuple(out)


def label_selector(raw: Mapping[str, Any], path: str, sink: Sink, *, allowed_keys: tuple[str, ...] = ()
                   ) -> LabelSelector:
    """A Kubernetes label selector; ``allowed_keys`` (if given) warns on other keys."""
    exprs = []
    for i, e in enumerate(raw.get("matchExpressions", ())):
        epath = item(child(path, "matchExpressions"), i)
        vals = tuple(e.get("values", ()))
        if e["operator"] in ("In", "NotIn") and not vals:
            sink.error(child(epath, "values"), f"must not be empty for operator {e['operator']}")
        if e["operator"] in ("Exists", "DoesNotExist") and vals:
            sink.error(child(epath, "values"), f"must be empty for operator {e['operator']}")
        if allowed_keys and e["key"] not in allowed_keys:
            sink.warn(child(epath, "key"), f"{e['key']!r} is not a supported key ({', '.join(allowed_keys)})")
        exprs.append(LabelSelectorRequirement(e["key"], e["operator"], vals))
    labels = raw.get("matchLabels", {})
    for k in labels:
        if allowed_keys and k not in allowed_keys:
            sink.warn(key(child(path, "matchLabels"), k), f"{k!r} is not a supported key ({', '.join(allowed_keys)})")
    return LabelSelector(FrozenDict(labels), tuple(exprs))


CONTAINER_SELECTOR_KEYS = ("name", "repo")


def _workloads(raw: Mapping[str, Any], path: str, sink: Sink) -> Workloads:
    def sel(name: str, **kw: Any) -> LabelSelector | None:
        return label_selector(raw[name], child(path, name), sink, **kw) if name in raw else None
    return Workloads(sel("podSelector"), sel("containerSelector", allowed_keys=CONTAINER_SELECTOR_KEYS),
                     sel("hostSelector"))


# ---------------------------------------------------------------------------------- matchArgs
def _resolve_target(raw: Mapping[str, Any], path: str, sink: Sink, ctx: HookContext, role: str
                    ) -> ArgSpec | None:
    """The declared arg a matchArgs/matchData/matchReturnArgs filter refers to, or None (reported)."""
    if role == "return":
        sig: tuple[ArgSpec, ...] = (ctx.return_arg,) if ctx.return_arg else ()
        noun = "returnArg"
    elif role == "data":
        sig, noun = ctx.data, "data"
    else:
        sig, noun = ctx.args, "args"
    n = len(sig)
    counted = {"args": f"{n} arg{'' if n == 1 else 's'}", "returnArg": f"{n} returnArg",
               "data": f"{n} data entr{'y' if n == 1 else 'ies'}"}[noun]
    declared = f"the hook declares {counted}"
    if raw.get("args"):
        pos = raw["args"][0]
        if pos >= len(sig):
            sink.error(item(child(path, "args"), 0),
                       f"{pos} is out of range: {declared} (args counts positions in {noun})")
            return None
        return sig[pos]
    index = raw.get("index", 0)
    ipath = child(path, "index")
    if not sig:
        sink.error(ipath, f"{index} does not refer to a declared arg: the hook declares no {noun}")
        return None
    if role == "return":
        if index != sig[0].index:
            sink.error(ipath, f"{index} does not refer to the returnArg (its index is {sig[0].index})")
            return None
        return sig[0]
    if role == "data" or ctx.index_by_position:
        if index >= len(sig):
            why = "matchData" if role == "data" else "on tracepoints matchArgs"
            sink.error(ipath, f"{index} is out of range: {declared} ({why} index counts positions in {noun})")
            return None
        return sig[index]
    for a in sig:
        if a.index == index:
            return a
    sink.error(ipath, f"{index} does not refer to a declared arg (declared indexes: {[a.index for a in sig]})")
    return None


def _match_arg(raw: Mapping[str, Any], path: str, sink: Sink, ctx: HookContext, role: str) -> MatchArg:
    op = OPERATOR_ALIASES.get(raw["operator"], raw["operator"])
    vals: list[str] = list(raw.get("values", ()))
    args = tuple(raw.get("args", ()))
    result = MatchArg(index=raw.get("index", 0), args=args, operator=op, values=tuple(vals))
    if op == "CelExpr":  # the expression names its args itself (argN); index is not used
        _check_cel(vals, child(path, "values"), sink, ctx)
        return result
    target = _resolve_target(raw, path, sink, ctx, role)
    if len(args) > 1 and op != "CapabilitiesGained":
        sink.warn(child(path, "args"), f"only the first position is used by {op}")
    if target is None:
        return result
    arg_type = target.type
    allowed = operators_for(arg_type)
    if op not in allowed:
        if not allowed:
            sink.error(child(path, "operator"), f"arg type {arg_type!r} cannot be filtered")
        else:
            sink.error(child(path, "operator"), f"{op!r} is not valid for arg type {arg_type!r} "
                                                f"(valid: {list(allowed)!r})")
        return result
    if op == "CapabilitiesGained":
        _check_capabilities_gained(args, path, sink, ctx, role)
        if vals:
            sink.warn(child(path, "values"), "CapabilitiesGained takes no values; they are ignored")
        return result
    parsed = _parse_values(op, arg_type, vals, child(path, "values"), sink, ctx)
    return replace(result, parsed=parsed)


def _check_cel(vals: list[str], vpath: str, sink: Sink, ctx: HookContext) -> None:
    if not vals:
        sink.error(vpath, "CelExpr needs at least one expression")
    for i, expr in enumerate(vals):
        if not expr.strip():
            sink.error(item(vpath, i), "empty CEL expression")
        for ref in re.findall(r"\barg(\d+)\b", expr):
            if int(ref) >= len(ctx.args):
                sink.warn(item(vpath, i), f"arg{ref} does not name a declared arg position "
                                          f"(the hook declares {len(ctx.args)} args)")


def _check_capabilities_gained(args: tuple[int, ...], path: str, sink: Sink, ctx: HookContext, role: str) -> None:
    apath = child(path, "args")
    if len(args) != 2:
        sink.error(apath, "CapabilitiesGained needs args: [new, old], two positions of capability args")
        return
    sig = ctx.data if role == "data" else ctx.args
    for i, pos in enumerate(args):
        if pos >= len(sig):
            sink.error(item(apath, i), f"{pos} is out of range: the hook declares {len(sig)} args")
        elif sig[pos].type not in CAP_MASK_TYPES | {"auto"}:
            sink.error(item(apath, i), f"position {pos} is a {sig[pos].type!r} arg; CapabilitiesGained compares "
                                       f"capability sets ({', '.join(sorted(CAP_MASK_TYPES))})")


def _parse_values(op: str, arg_type: str, vals: list[str], vpath: str, sink: Sink, ctx: HookContext
                  ) -> tuple[ParsedValue, ...]:
    """Parse and limit-check the values of one filter; bad values are reported and kept as str."""
    if op in _PRIV_OPS:
        if vals:
            sink.warn(vpath, f"{op} takes no values; they are ignored")
        return ()
    if not vals:
        sink.error(vpath, f"{op} needs at least one value")
        return ()
    width = V.INT_WIDTHS.get(arg_type)
    as_int: Callable[[str], int] | None = (lambda t: V.parse_int(t, *width)) if width else None
    numeric = arg_type in V.INT_WIDTHS or arg_type in CAP_MASK_TYPES
    string_like = not numeric and arg_type != "auto"
    # Operators whose values are compared one by one in BPF (the others are map lookups).
    by_value = (op in _FILE_TYPE_OPS or op in ("InRange", "NotInRange")
                or (numeric and op in ("Equal", "NotEqual", "GreaterThan", "LessThan", "Mask")))
    if by_value and len(vals) > MAX_VALUES:
        sink.error(vpath, f"at most {MAX_VALUES} values for {op}, got {len(vals)}; use InMap for more")

    parser: Callable[[str], ParsedValue] | None
    if op in ("SAddr", "NotSAddr", "DAddr", "NotDAddr"):
        parser = V.parse_addr
    elif op in ("SPort", "NotSPort", "DPort", "NotDPort"):
        parser = lambda t: V.parse_int_or_range(t, V.parse_port)  # noqa: E731
    elif op == "Protocol":
        parser = lambda t: V.parse_int_or_range(t, V.parse_protocol)  # noqa: E731
    elif op == "Family":
        parser = lambda t: V.parse_int_or_range(t, V.parse_family)  # noqa: E731
    elif op == "State":
        parser = lambda t: V.parse_int_or_range(t, V.parse_tcp_state)  # noqa: E731
    elif op in _FILE_TYPE_OPS:
        parser = V.parse_file_type
    elif op in ("InMap", "NotInMap"):
        parser = lambda t: _in_map_value(t, arg_type, as_int, ctx)  # noqa: E731
    elif op in ("InRange", "NotInRange"):
        parser = (lambda t: V.parse_range(t, as_int)) if as_int else None  # noqa: E731
    elif arg_type in CAP_MASK_TYPES:
        parser = V.parse_capability_mask
    elif as_int is not None:
        parser = as_int
    elif string_like:
        limit = {"Prefix": MAX_PREFIX_BYTES, "NotPrefix": MAX_PREFIX_BYTES, "Postfix": MAX_POSTFIX_BYTES,
                 "NotPostfix": MAX_POSTFIX_BYTES}.get(op, MAX_EQUAL_STRING_BYTES)
        parser = lambda t: _bounded_string(t, op, limit)  # noqa: E731
    else:
        parser = None  # auto: the type, hence the value format, is known only at load time

    out: list[ParsedValue] = []
    for i, text in enumerate(vals):
        if parser is None:
            out.append(text)
            continue
        try:
            out.append(parser(text))
        except ValueError as e:
            sink.error(item(vpath, i), str(e))
            out.append(text)
    return tuple(out)


def _bounded_string(text: str, op: str, limit: int) -> str:
    if op in _SUBSTRING_OPS:
        if len(text) > MAX_SUBSTRING_CHARS:
            raise ValueError(f"is {len(text)} characters; {op} values are limited to {MAX_SUBSTRING_CHARS}")
        return text
    size = len(text.encode())
    if size > limit:
        raise ValueError(f"is {size} bytes; {op} values are limited to {limit}")
    return text


def _in_map_value(text: str, arg_type: str, as_int: Callable[[str], int] | None, ctx: HookContext
                  ) -> ParsedValue:
    ref = V.parse_list_ref(text)
    if ref is not None:
        lst = ctx.lists.get(ref.name)
        if lst is None:
            raise ValueError(f"list {ref.name!r} is not defined in spec.lists")
        if not lst.is_syscall_list:
            raise ValueError(f"list {ref.name!r} is not a syscall list (type syscalls or generated_syscalls)")
        if arg_type not in ("syscall64", "auto"):
            raise ValueError(f"a syscall list needs a syscall64 arg, this arg is {arg_type!r}")
        return ref
    if as_int is None:
        return text
    return V.parse_int_or_range(text, as_int)


# -------------------------------------------------------------------------------------- actions
# Parameters each action uses; any other parameter set on it has no effect (warning).
_ACTION_PARAMS: Mapping[str, frozenset[str]] = MappingProxyType({
    "Post": frozenset({"rateLimit", "rateLimitScope", "kernelStackTrace", "userStackTrace", "imaHash"}),
    "NoPost": frozenset(),
    "Sigkill": frozenset(),
    "Signal": frozenset({"argSig"}),
    "Override": frozenset({"argError", "argRegs", "argNewSymbol", "argNewAddr", "argNewOffset"}),
    "GetUrl": frozenset({"argUrl"}),
    "DnsLookup": frozenset({"argFqdn"}),
    "TrackSock": frozenset({"argSock"}),
    "UntrackSock": frozenset({"argSock"}),
    "NotifyEnforcer": frozenset({"argError", "argSig"}),
    "CleanupEnforcerNotification": frozenset(),
    "Set": frozenset({"argIndex", "argValue"}),
    "FollowFD": frozenset({"argFd", "argName"}),
    "UnfollowFD": frozenset({"argFd", "argName"}),
    "CopyFD": frozenset({"argFd", "argName"}),
})
_UPROBE_ONLY_PARAMS = ("argRegs", "argNewSymbol", "argNewAddr", "argNewOffset")


def _action(raw: Mapping[str, Any], path: str, sink: Sink, ctx: HookContext, in_return: bool) -> Action:
    name = raw["action"]
    apath = child(path, "action")
    for param in sorted(set(raw) - {"action"} - _ACTION_PARAMS[name]):
        if param == "rateLimit":
            sink.error(child(path, param), f"is only valid with the Post action, not {name}")
        else:
            sink.warn(child(path, param), f"has no effect on the {name} action")

    rate_seconds = None
    if name == "Post":
        rate_seconds = _check_post(raw, path, sink, ctx)
    elif name == "Signal":
        if "argSig" not in raw:
            sink.error(child(path, "argSig"), "required by the Signal action")
    elif name == "Override":
        _check_override(raw, path, sink, ctx)
    elif name == "GetUrl" and not raw.get("argUrl"):
        sink.error(child(path, "argUrl"), "required by the GetUrl action")
    elif name == "DnsLookup" and not raw.get("argFqdn"):
        sink.error(child(path, "argFqdn"), "required by the DnsLookup action")
    elif name in ("TrackSock", "UntrackSock"):
        _check_sock_arg(raw.get("argSock", 0), path, sink, ctx)
    elif name in ("NotifyEnforcer", "CleanupEnforcerNotification"):
        _check_enforcer_action(name, raw, apath, sink, ctx)
    elif name == "Set":
        _check_set(raw, path, sink, ctx)
    elif name in ("FollowFD", "UnfollowFD", "CopyFD"):
        sink.warn(apath, f"{name} is deprecated (removed from Tetragon's CRD after v1.7.0) and has no effect: "
                         "fd args resolve the file directly")

    if "argSig" in raw and name in ("Signal", "NotifyEnforcer") and not 1 <= raw["argSig"] <= MAX_SIGNAL:
        sink.error(child(path, "argSig"), f"{raw['argSig']} is not a signal number (1-{MAX_SIGNAL})")
    if in_return and name in ("Override", "NotifyEnforcer", "Set"):
        sink.error(apath, f"{name} cannot run at function return (matchReturnActions)")
    return Action(
        action=name, arg_error=raw.get("argError"), arg_sig=raw.get("argSig"), arg_sock=raw.get("argSock"),
        arg_fqdn=raw.get("argFqdn"), arg_url=raw.get("argUrl"), arg_index=raw.get("argIndex"),
        arg_value=raw.get("argValue"), arg_regs=tuple(raw.get("argRegs", ())),
        arg_new_symbol=raw.get("argNewSymbol"), arg_new_addr=raw.get("argNewAddr"),
        arg_new_offset=raw.get("argNewOffset"), arg_fd=raw.get("argFd"), arg_name=raw.get("argName"),
        rate_limit=raw.get("rateLimit"), rate_limit_scope=raw.get("rateLimitScope"),
        kernel_stack_trace=raw.get("kernelStackTrace", False), user_stack_trace=raw.get("userStackTrace", False),
        ima_hash=raw.get("imaHash", False), rate_limit_seconds=rate_seconds,
    )


def _check_post(raw: Mapping[str, Any], path: str, sink: Sink, ctx: HookContext) -> float | None:
    """A Post action's rateLimit (its seconds, or None), rateLimitScope and imaHash."""
    rate_seconds = None
    if "rateLimit" in raw:
        try:
            rate_seconds = V.parse_rate_limit(raw["rateLimit"])
        except ValueError as e:
            sink.error(child(path, "rateLimit"), str(e))
    if "rateLimitScope" in raw:
        if raw["rateLimitScope"] not in ("thread", "process", "global"):
            sink.error(child(path, "rateLimitScope"),
                       f"{raw['rateLimitScope']!r} is not one of ['thread', 'process', 'global']")
        elif "rateLimit" not in raw:
            sink.warn(child(path, "rateLimitScope"), "has no effect without rateLimit")
    if raw.get("imaHash") and ctx.kind != "lsmhooks":
        sink.warn(child(path, "imaHash"), "IMA hashes are collected on LSM hooks only")
    return rate_seconds


def _check_enforcer_action(name: str, raw: Mapping[str, Any], apath: str, sink: Sink, ctx: HookContext) -> None:
    """NotifyEnforcer needs an enforcer and something to do; CleanupEnforcerNotification something to clean."""
    if name == "NotifyEnforcer":
        if not ctx.has_enforcer:
            sink.error(apath, "NotifyEnforcer needs an enforcer in spec.enforcers, and none is defined")
        if "argError" not in raw and "argSig" not in raw:
            sink.warn(apath, "sets neither argError nor argSig: the enforcer will neither fail nor signal the call")
    elif not ctx.has_enforcer:
        sink.warn(apath, "has nothing to clean up: spec.enforcers is empty")


def _check_override(raw: Mapping[str, Any], path: str, sink: Sink, ctx: HookContext) -> None:
    apath = child(path, "action")
    if ctx.kind in ("tracepoints", "usdts"):
        sink.error(apath, f"Override is not supported on {ctx.kind} (kprobes, fentries, uprobes and lsmhooks only)")
        return
    if ctx.kind == "uprobes":
        if not any(p in raw for p in ("argError", "argRegs") + _UPROBE_ONLY_PARAMS):
            sink.error(child(path, "argError"), "Override on a uprobe needs argError, argRegs, argNewSymbol, "
                                                "argNewAddr or argNewOffset")
        return
    for p in _UPROBE_ONLY_PARAMS:
        if p in raw:
            sink.warn(child(path, p), "is only used by Override on uprobes")
    if "argError" not in raw:
        sink.error(child(path, "argError"), "required by the Override action (the error value to return)")
    if ctx.kind == "lsmhooks" or ctx.syscall:
        return
    if ctx.override_functions is None:
        sink.warn(apath, f"{ctx.call!r} is expanded at load time; Override works only on syscalls and "
                         "security_* functions")
        return
    bad = [f for f in ctx.override_functions if not f.startswith("security_")]
    if bad:
        sink.error(apath, f"Override on a kprobe needs a syscall (syscall: true) or a security_* function; "
                          f"{', '.join(repr(b) for b in bad)} {'is' if len(bad) == 1 else 'are'} neither")


def _check_sock_arg(arg_sock: int, path: str, sink: Sink, ctx: HookContext) -> None:
    if ctx.kind not in ("kprobes", "fentries"):
        sink.error(child(path, "action"), "socket tracking works on kprobes and fentries only")
        return
    if not 0 <= arg_sock <= 4:
        sink.error(child(path, "argSock"), f"{arg_sock} is not a function argument number (0-4)")
        return
    if not any(a.index == arg_sock and a.type in SOCK_TYPES | {"auto"} for a in ctx.args):
        sink.warn(child(path, "argSock"), f"no declared sock arg has index {arg_sock}")


def _check_set(raw: Mapping[str, Any], path: str, sink: Sink, ctx: HookContext) -> None:
    if ctx.kind != "usdts":
        sink.error(child(path, "action"), "Set works on usdts only")
        return
    for p in ("argIndex", "argValue"):
        if p not in raw:
            sink.error(child(path, p), "required by the Set action")
    if "argIndex" in raw and not 0 <= raw["argIndex"] < len(ctx.args):
        sink.error(child(path, "argIndex"), f"{raw['argIndex']} does not refer to a declared arg "
                                            f"(the usdt declares {len(ctx.args)} args)")
