"""Validate one TracingPolicy document and build the typed model from it.

Two passes, like the Kubernetes API server followed by Tetragon's own loader:

1. **schema** (:func:`lanner.policy.schema.conform` against :mod:`lanner.policy.crd`): types, enums,
   required fields, unknown fields, CRD defaults, CEL rules;
2. **semantics** (this module and :mod:`lanner.policy.selectors`): everything that needs context --
   references between fields (args, lists, enforcers, macros), operator/type compatibility, value
   formats, and the limits of the BPF side.

The semantic pass runs only on a document that passed the schema pass, so it can rely on types.
Both passes record every problem they find instead of stopping at the first.

Rule of thumb for error vs warning: what Tetragon would refuse to load (or what could never work)
is an error; what Tetragon accepts but ignores or truncates is a warning.
"""

from __future__ import annotations

import re
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from . import selectors as S
from .crd import API_VERSION, KINDS, TRACING_POLICY, TRACING_POLICY_NAMESPACED
from .errors import Report, child, item, key
from .model import (
    KIND_NAMESPACED, ArgSpec, Enforcer, FrozenDict, KProbeSpec, LabelSelector, ListSpec, LsmHookSpec, Metadata,
    Option, PolicyOptions, Selector, Spec, TracepointSpec, TracingPolicy, UProbeSpec, USDTSpec,
)
from .schema import conform, describe

MAX_ARGS = 5  # per hook
MAX_SIZE_ARG_INDEX = 5  # 1-based: the function's first 5 arguments
MAX_RAW_TP_ARG = 5
MIN_MESSAGE, MAX_MESSAGE = 2, 256
MIN_TAG, MAX_TAG = 2, 128
MAX_RESOLVE_DEPTH = 10
MAX_FOLLOW_CHILDREN = 64
MAX_NAME = 253
MAX_ANNOTATIONS_BYTES = 256 * 1024

# A syscall as kprobes name it: sys_openat, optionally arch-prefixed (__x64_sys_openat) or compat.
SYSCALL_NAME = re.compile(r"(?:__(?:x64|arm64|ia32|x32|s390x|riscv)_)?(?:compat_)?sys_\w+")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
RESOLVE_PATH = re.compile(r"[A-Za-z_]\w*(\[\d+\])*(\.[A-Za-z_]\w*(\[\d+\])*)*")
TRACEPOINT_PART = re.compile(r"\w+")
LSM_HOOK = re.compile(r"[a-z0-9_]+")
DIGEST = re.compile(r"(?:(?:sha1|sha256|sha384|sha512):)?[0-9a-fA-F]+|build-id:[0-9a-fA-F]+")
DIGEST_HEX_LENGTHS: Mapping[str, int] = MappingProxyType({"sha1": 40, "sha256": 64, "sha384": 96, "sha512": 128})

GO_BOOLS: Mapping[str, bool] = MappingProxyType({
    "1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
    "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False})
OPTION_VALUES: Mapping[str, tuple[str, ...] | None] = MappingProxyType({
    "policy-mode": ("monitor", "enforce"),
    "override-method": ("fmod-ret", "override-return"),
    "disable-kprobe-multi": None,  # a Go boolean
    "disable-uprobe-multi": None,
})
RETURN_ARG_ACTIONS = ("TrackSock", "UntrackSock")
DATA_SOURCES = ("current_task", "pt_regs")
CHAR_BUF_TYPES = ("char_buf", "char_iovec")
MAX_DATA_TYPES = ("char_buf", "char_iovec", "iov_iter")
# a kernel function's name goes to libbpf as a C string, which would end at the NUL (attaching to a prefix)
NUL_IN_NAME = "a function name cannot contain a NUL character"


def validate_document(doc: Any, report: Report) -> TracingPolicy | None:
    """Validate one parsed YAML document; the policy, or ``None`` if any error was reported."""
    if not isinstance(doc, dict):
        report.error("", f"a policy document must be a mapping, got {describe(doc)}")
        return None
    api, kind = doc.get("apiVersion"), doc.get("kind")
    for field, value, allowed in (("apiVersion", api, (API_VERSION,)), ("kind", kind, KINDS)):
        if value is None:
            report.error(field, "required field is missing")
        elif isinstance(value, str) and value not in allowed:
            report.error(field, f"{value!r} is not one of {list(allowed)!r}")
    namespaced = kind == KIND_NAMESPACED
    before = len(report.errors)
    data = conform(doc, TRACING_POLICY_NAMESPACED if namespaced else TRACING_POLICY, "", report)
    schema_errors = report.errors[before:]

    def clean(section: str) -> bool:
        """No schema error in this section: its semantic checks can rely on the types."""
        return isinstance(data, dict) and section in data and not any(
            e.path == section or e.path.startswith((section + ".", section + "[")) for e in schema_errors)

    metadata = _metadata(data["metadata"], namespaced, report) if clean("metadata") else None
    spec = _spec(data["spec"], doc["spec"], report) if clean("spec") else None
    if not report.ok or metadata is None or spec is None:
        return None
    return TracingPolicy(API_VERSION, kind, metadata, spec)


# --------------------------------------------------------------------------------- metadata
def _dns_subdomain_problem(value: str) -> str | None:
    if len(value) > MAX_NAME:
        return f"must be at most {MAX_NAME} characters, got {len(value)}"
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        return (f"{value!r} is not a valid name: use lowercase letters, digits, '-' and '.', starting and "
                "ending with a letter or digit (DNS-1123 subdomain)")
    return None


def _qualified_name_problem(name: str) -> str | None:
    prefix, _, local = name.rpartition("/")
    if prefix and _dns_subdomain_problem(prefix):
        return f"{name!r} has an invalid prefix {prefix!r} (must be a DNS-1123 subdomain)"
    if len(local) > 63 or not QUALIFIED_NAME.fullmatch(local):
        return (f"{name!r} is not a valid key: at most 63 letters, digits, '-', '_' or '.', starting and "
                "ending with a letter or digit, optionally prefixed by a DNS subdomain and '/'")
    return None


def _metadata(raw: Mapping[str, Any], namespaced: bool, report: Report) -> Metadata:
    name = raw.get("name")
    if name is None:
        report.error("metadata.name", "required field is missing")
    elif problem := _dns_subdomain_problem(name):
        report.error("metadata.name", problem)
    namespace = raw.get("namespace")
    if namespaced and not namespace:
        report.error("metadata.namespace", "required for a TracingPolicyNamespaced")
    elif namespace is not None and not namespaced:
        report.error("metadata.namespace", "not allowed on a cluster-scoped TracingPolicy "
                                           "(use kind TracingPolicyNamespaced)")
    elif namespace and (len(namespace) > 63 or not DNS1123_LABEL.fullmatch(namespace)):
        report.error("metadata.namespace", f"{namespace!r} is not a valid namespace name (DNS-1123 label: at "
                                           "most 63 lowercase letters, digits and '-')")
    labels = raw.get("labels", {})
    for k, v in labels.items():
        path = key("metadata.labels", k)
        if problem := _qualified_name_problem(k):
            report.error(path, problem)
        if len(v) > 63 or not LABEL_VALUE.fullmatch(v):
            report.error(path, f"{v!r} is not a valid label value (at most 63 letters, digits, '-', '_' or '.', "
                               "starting and ending with a letter or digit)")
    annotations = raw.get("annotations", {})
    for k in annotations:
        if problem := _qualified_name_problem(k):
            report.error(key("metadata.annotations", k), problem)
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        report.error("metadata.annotations", f"total size must be at most {MAX_ANNOTATIONS_BYTES} bytes, got {size}")
    return Metadata(name or "", namespace, FrozenDict(labels), FrozenDict(annotations))


# ------------------------------------------------------------------------------------- spec
def _spec(raw: Mapping[str, Any], original: Mapping[str, Any], report: Report) -> Spec:
    settings, options = _options(raw.get("options", []), report)
    lists = _lists(raw.get("lists", []), report)
    by_name = FrozenDict({lst.name: lst for lst in lists})
    enforcers = _enforcers(raw.get("enforcers", []), by_name, report)
    macros_raw: Mapping[str, Mapping[str, Any]] = raw.get("selectorsMacros", {})
    for name, macro in macros_raw.items():
        if macro.get("macros"):
            report.error(child(key("spec.selectorsMacros", name), "macros"), "a macro cannot use other macros")
    env = _Env(by_name, bool(enforcers), macros_raw, report)

    hooks: dict[str, tuple[Any, ...]] = {}
    for attr in ("kprobes", "fentries"):
        hooks[attr] = tuple(_kprobe(r, original[attr][i], item(f"spec.{attr}", i), attr, env)
                            for i, r in enumerate(raw.get(attr, [])))
    hooks["tracepoints"] = tuple(_tracepoint(r, item("spec.tracepoints", i), env)
                                 for i, r in enumerate(raw.get("tracepoints", [])))
    hooks["uprobes"] = tuple(_uprobe(r, item("spec.uprobes", i), env) for i, r in enumerate(raw.get("uprobes", [])))
    hooks["usdts"] = tuple(_usdt(r, item("spec.usdts", i), env) for i, r in enumerate(raw.get("usdts", [])))
    hooks["lsmhooks"] = tuple(_lsmhook(r, item("spec.lsmhooks", i), env)
                              for i, r in enumerate(raw.get("lsmhooks", [])))

    def selector(name: str, **kw: Any) -> LabelSelector | None:
        return S.label_selector(raw[name], f"spec.{name}", report, **kw) if name in raw else None

    spec = Spec(
        loader=raw.get("loader", False), lists=lists, enforcers=enforcers, options=options,
        pod_selector=selector("podSelector"),
        container_selector=selector("containerSelector", allowed_keys=S.CONTAINER_SELECTOR_KEYS),
        host_selector=selector("hostSelector"), node_selector=selector("nodeSelector"),
        selectors_macros=_macro_definitions(macros_raw), settings=settings, **hooks,
    )
    _whole_policy_checks(spec, env, report)
    return spec


class _Env:
    """Spec-wide context shared by the hook builders of one document."""

    def __init__(self, lists: FrozenDict[str, ListSpec], has_enforcer: bool,
                 macros: Mapping[str, Mapping[str, Any]], report: Report):
        self.lists = lists
        self.has_enforcer = has_enforcer
        self.macros = macros
        self.report = report
        self.used_macros: set[str] = set()

    def selectors(self, raw: Mapping[str, Any], ctx: S.HookContext) -> tuple[Selector, ...]:
        sels = raw.get("selectors", [])
        for sel in sels:
            self.used_macros.update(sel.get("macros", ()))
        return S.build_selectors(sels, ctx, self.macros, self.report)


def _macro_definitions(macros: Mapping[str, Mapping[str, Any]]) -> FrozenDict[str, Selector]:
    """The macros as typed selectors, for display and ``to_dict``. They are checked where they are
    used (in a hook's context), so context errors found here are discarded."""
    scratch = Report()
    ctx = S.HookContext(kind="selectorsMacros", path="spec.selectorsMacros", args=())
    out = {}
    for name, macro in macros.items():
        body = {k: v for k, v in macro.items() if k != "macros"}
        built = S.build_selectors([body], ctx, {}, scratch)[0]
        if "matchActions" not in body:
            built = replace(built, match_actions=())  # no implicit Post: the using selector decides
        out[name] = built
    return FrozenDict(out)


def _whole_policy_checks(spec: Spec, env: _Env, report: Report) -> None:
    follow = sum(1 for _, _, h in _all_hooks(spec) for sel in h.selectors
                 for b in sel.match_binaries + sel.match_parent_binaries if b.follow_children)
    if follow > MAX_FOLLOW_CHILDREN:
        report.error("spec", f"at most {MAX_FOLLOW_CHILDREN} matchBinaries with followChildren per policy, "
                             f"got {follow}")
    if not any(True for _ in _all_hooks(spec)) and not spec.loader:
        report.warn("spec", "defines no hooks: the policy does nothing")
    if spec.enforcers and not any(a.action == "NotifyEnforcer" for _, _, h in _all_hooks(spec)
                                  for sel in h.selectors for a in sel.actions()):
        report.warn("spec.enforcers", "no NotifyEnforcer action uses this enforcer")
    for name in env.macros:
        if name not in env.used_macros:
            report.warn(key("spec.selectorsMacros", name), "is not used by any selector")


def _all_hooks(spec: Spec) -> Iterator[tuple[str, int, Any]]:
    for attr in ("kprobes", "fentries", "tracepoints", "uprobes", "usdts", "lsmhooks"):
        for i, h in enumerate(getattr(spec, attr)):
            yield attr, i, h


def _options(raw: list[Mapping[str, Any]], report: Report) -> tuple[PolicyOptions, tuple[Option, ...]]:
    seen: set[str] = set()
    settings: dict[str, Any] = {}
    options = []
    for i, o in enumerate(raw):
        path = item("spec.options", i)
        name, value = o["name"], o.get("value")
        options.append(Option(name, value))
        if name not in OPTION_VALUES:
            report.error(child(path, "name"), f"{name!r} is not one of {sorted(OPTION_VALUES)!r}")
            continue
        if name in seen:
            report.error(child(path, "name"), f"option {name!r} is set more than once")
        seen.add(name)
        if value is None:
            report.error(child(path, "value"), f"required for option {name!r}")
            continue
        allowed = OPTION_VALUES[name]
        attr = name.replace("-", "_")
        if allowed is None:
            if value not in GO_BOOLS:
                report.error(child(path, "value"), f"{value!r} is not a boolean (true or false)")
            else:
                settings[attr] = GO_BOOLS[value]
        elif value not in allowed:
            report.error(child(path, "value"), f"{value!r} is not one of {list(allowed)!r}")
        else:
            settings[attr] = value
    return PolicyOptions(**settings), tuple(options)


def _lists(raw: list[Mapping[str, Any]], report: Report) -> tuple[ListSpec, ...]:
    out = []
    seen: dict[str, str] = {}
    for i, r in enumerate(raw):
        path = item("spec.lists", i)
        name, type_, vals, pattern = r["name"], r.get("type"), tuple(r.get("values", ())), r.get("pattern")
        if not name:
            report.error(child(path, "name"), "must not be empty")
        elif name in seen:
            report.error(child(path, "name"), f"duplicate list name {name!r} (also {seen[name]})")
        seen.setdefault(name, path)
        if type_ in ("generated_syscalls", "generated_ftrace"):
            if vals:
                report.error(child(path, "values"), f"must be empty for a {type_} list (values are generated)")
        elif not vals:
            report.error(child(path, "values"), f"a {type_ or 'plain'} list needs values")
        if type_ == "generated_ftrace":
            if not pattern:
                report.error(child(path, "pattern"), "required for a generated_ftrace list")
            else:
                try:
                    re.compile(pattern)
                except (re.error, OverflowError, RecursionError) as e:  # a huge {n}, groups nested too deep
                    report.error(child(path, "pattern"), f"{pattern[:80]!r} is not a valid regular expression: "
                                                         f"{e or type(e).__name__}")
        elif pattern is not None:
            report.warn(child(path, "pattern"), "is only used by generated_ftrace lists")
        for j, v in enumerate(vals):
            if "\0" in v:
                report.error(item(child(path, "values"), j), NUL_IN_NAME)
        if type_ == "syscalls":
            for j, v in enumerate(vals):
                if not SYSCALL_NAME.fullmatch(v):
                    report.warn(item(child(path, "values"), j), f"{v!r} does not look like a syscall (sys_NAME)")
        if "validated" in r:
            report.warn(child(path, "validated"), "is internal to Tetragon and ignored")
        out.append(ListSpec(name, type_, vals, pattern))
    return tuple(out)


def _list_ref_problem(call: str, lists: Mapping[str, ListSpec], *, syscall_only: bool) -> str | None:
    name = call[5:]
    lst = lists.get(name)
    if lst is None:
        return f"list {name!r} is not defined in spec.lists"
    if syscall_only and not lst.is_syscall_list:
        return f"list {name!r} is not a syscall list (type syscalls or generated_syscalls)"
    return None


def _enforcers(raw: list[Mapping[str, Any]], lists: Mapping[str, ListSpec], report: Report) -> tuple[Enforcer, ...]:
    if len(raw) > 1:
        report.error("spec.enforcers", f"at most 1 enforcer per policy, got {len(raw)}")
    out = []
    for i, r in enumerate(raw):
        path = child(item("spec.enforcers", i), "calls")
        if not r["calls"]:
            report.error(path, "needs at least one syscall")
        for j, call in enumerate(r["calls"]):
            if "\0" in call:
                report.error(item(path, j), NUL_IN_NAME)
            elif call.startswith("list:"):
                if problem := _list_ref_problem(call, lists, syscall_only=True):
                    report.error(item(path, j), problem)
            elif not SYSCALL_NAME.fullmatch(call):
                report.warn(item(path, j), f"{call!r} does not look like a syscall (sys_NAME)")
        out.append(Enforcer(tuple(r["calls"])))
    return tuple(out)


# ------------------------------------------------------------------------------------- hooks
def _message_and_tags(raw: Mapping[str, Any], path: str, report: Report) -> tuple[str | None, tuple[str, ...]]:
    message = raw.get("message") or None
    if message is not None:
        if len(message) < MIN_MESSAGE:
            report.error(child(path, "message"), f"must be at least {MIN_MESSAGE} characters")
        elif len(message) > MAX_MESSAGE:
            report.error(child(path, "message"), f"must be at most {MAX_MESSAGE} characters, got {len(message)}")
    tags = tuple(raw.get("tags", ()))
    for i, tag in enumerate(tags):
        if len(tag) < MIN_TAG:
            report.error(item(child(path, "tags"), i), f"must be at least {MIN_TAG} characters")
        elif len(tag) > MAX_TAG:
            report.warn(item(child(path, "tags"), i), f"is {len(tag)} characters; events carry the first {MAX_TAG}")
    return message, tags


def _arg(raw: Mapping[str, Any], path: str, kind: str, report: Report, *, field: str, raw_tp: bool = False,
         btf_path: bool = False) -> ArgSpec:
    a = ArgSpec(
        index=raw["index"], type=raw["type"], label=raw.get("label"), size_arg_index=raw.get("sizeArgIndex") or None,
        return_copy=raw["returnCopy"], max_data=raw["maxData"], resolve=raw["resolve"],
        btf_type=raw.get("btfType"), btf_type_module=raw.get("btfTypeModule"), source=raw.get("source"),
    )
    if kind == "kprobes" and field == "args":
        if a.type == "auto":
            report.error(child(path, "type"), "kprobes need an explicit arg type ('auto' is resolved for "
                                              "tracepoints only)")
        elif a.type == "syscall64":
            report.error(child(path, "type"), "'syscall64' is only valid on tracepoints (raw_syscalls)")
    if raw_tp and a.index > MAX_RAW_TP_ARG:
        report.error(child(path, "index"), f"a raw tracepoint has at most {MAX_RAW_TP_ARG + 1} arguments "
                                           f"(0-{MAX_RAW_TP_ARG}), got {a.index}")
    if a.size_arg_index is not None:
        sp = child(path, "sizeArgIndex")
        if kind != "tracepoints" and a.size_arg_index > MAX_SIZE_ARG_INDEX:
            report.error(sp, f"{a.size_arg_index} is out of range: sizeArgIndex is 1-based and names one of the "
                             f"function's first {MAX_SIZE_ARG_INDEX} arguments (1-{MAX_SIZE_ARG_INDEX})")
        elif a.size_arg_index == a.index + 1:
            report.error(sp, f"{a.size_arg_index} names this argument itself (sizeArgIndex is 1-based: "
                             f"index N is written N+1)")
        if a.type not in CHAR_BUF_TYPES and a.type != "auto":
            report.warn(sp, f"is only used by char_buf and char_iovec args, not {a.type!r}")
    if a.return_copy and a.max_data:
        report.error(child(path, "maxData"), "cannot be combined with returnCopy")
    if a.return_copy and a.type not in CHAR_BUF_TYPES and a.type != "auto":
        report.warn(child(path, "returnCopy"), f"is only used by char_buf and char_iovec args, not {a.type!r}")
    if a.max_data and a.type not in MAX_DATA_TYPES and a.type != "auto":
        report.warn(child(path, "maxData"), f"is only used by buffer args (char_buf, char_iovec, iov_iter), "
                                            f"not {a.type!r}")
    if a.resolve:
        rp = child(path, "resolve")
        if kind in ("uprobes", "usdts") and not btf_path:
            report.error(rp, f"resolve on {kind} needs btfPath (the BTF of the traced binary)")
        if not RESOLVE_PATH.fullmatch(a.resolve):
            report.error(rp, f"{a.resolve!r} is not a field path like 'mm.owner.comm' or 'fdt.fd[0]'")
        elif a.resolve.count(".") + 1 > MAX_RESOLVE_DEPTH:
            report.error(rp, f"is {a.resolve.count('.') + 1} levels deep; at most {MAX_RESOLVE_DEPTH}")
    if a.btf_type_module and not a.btf_type:
        report.warn(child(path, "btfTypeModule"), "has no effect without btfType")
    if field == "data":
        if a.source is not None and a.source not in DATA_SOURCES:
            report.error(child(path, "source"), f"{a.source!r} is not one of {list(DATA_SOURCES)!r}")
    elif a.source is not None:
        report.warn(child(path, "source"), "is only used by data entries")
    return a


def _args(raw: Mapping[str, Any], path: str, kind: str, report: Report, *, field: str = "args",
          raw_tp: bool = False, btf_path: bool = False) -> tuple[ArgSpec, ...]:
    entries = raw.get(field, [])
    base = child(path, field)
    if field == "args" and len(entries) > MAX_ARGS:
        report.error(base, f"at most {MAX_ARGS} args per hook, got {len(entries)}")
    return tuple(_arg(r, item(base, i), kind, report, field=field, raw_tp=raw_tp, btf_path=btf_path)
                 for i, r in enumerate(entries))


def _return_arg(raw: Mapping[str, Any], path: str, kind: str, report: Report, btf_path: bool = False
                ) -> ArgSpec | None:
    if "returnArg" not in raw:
        return None
    if not raw.get("return"):
        report.warn(child(path, "returnArg"), "has no effect without return: true")
    return _arg(raw["returnArg"], child(path, "returnArg"), kind, report, field="returnArg", btf_path=btf_path)


def _kprobe(raw: Mapping[str, Any], original: Mapping[str, Any], path: str, kind: str, env: _Env) -> KProbeSpec:
    report = env.report
    call: str = raw["call"]
    cpath = child(path, "call")
    syscall: bool = raw["syscall"]
    explicit = original.get("syscall") is not None
    override_functions: tuple[str, ...] | None = (call,)
    if not call:
        report.error(cpath, "must not be empty")
    elif "\0" in call:
        report.error(cpath, NUL_IN_NAME)
    elif call.startswith("list:"):
        if problem := _list_ref_problem(call, env.lists, syscall_only=False):
            report.error(cpath, problem)
        else:
            lst = env.lists[call[5:]]
            if explicit and syscall != lst.is_syscall_list:
                report.warn(child(path, "syscall"), f"is ignored: list {lst.name!r} of type "
                                                    f"{lst.type or 'plain'} makes this a "
                                                    f"{'syscall' if lst.is_syscall_list else 'non-syscall'} hook")
            syscall = lst.is_syscall_list
            override_functions = None if lst.type == "generated_ftrace" else lst.values
    elif syscall and not SYSCALL_NAME.fullmatch(call):
        why = "is set" if explicit else "defaults to true"
        report.warn(cpath, f"{call!r} does not look like a syscall but syscall {why}: it will be attached as "
                           f"the arch syscall wrapper (__x64_{call} on x86-64); set syscall: false for a kernel "
                           "function")

    is_return = raw["return"]
    action = raw.get("returnArgAction")
    if action is not None:
        apath = child(path, "returnArgAction")
        if action not in RETURN_ARG_ACTIONS:
            report.error(apath, f"{action!r} is not one of {list(RETURN_ARG_ACTIONS)!r}")
        elif not is_return:
            report.warn(apath, "has no effect without return: true")
    args = _args(raw, path, kind, report)
    data = _args(raw, path, kind, report, field="data")
    return_arg = _return_arg(raw, path, kind, report)
    if action in RETURN_ARG_ACTIONS and return_arg is not None and return_arg.type not in ("sock", "socket", "auto"):
        report.warn(child(path, "returnArgAction"), f"tracks a sock return value, but returnArg is {return_arg.type!r}")
    ctx = S.HookContext(kind=kind, path=path, args=args, data=data, return_arg=return_arg, is_return=is_return,
                        syscall=syscall, call=call, override_functions=override_functions, lists=env.lists,
                        has_enforcer=env.has_enforcer)
    message, tags = _message_and_tags(raw, path, report)
    return KProbeSpec(
        call=call, syscall=syscall, return_=is_return, message=message, tags=tags, args=args, data=data,
        return_arg=return_arg, return_arg_action=action, selectors=env.selectors(raw, ctx),
        ignore_call_not_found=raw.get("ignore", {}).get("callNotFound", False),
    )


def _tracepoint(raw: Mapping[str, Any], path: str, env: _Env) -> TracepointSpec:
    report = env.report
    for field in ("subsystem", "event"):
        if not TRACEPOINT_PART.fullmatch(raw[field]):
            report.error(child(path, field), f"{raw[field]!r} is not a tracepoint {field} name "
                                             "(letters, digits and '_')")
    is_raw = raw.get("raw", False)
    args = _args(raw, path, "tracepoints", report, raw_tp=is_raw)
    ctx = S.HookContext(kind="tracepoints", path=path, args=args, lists=env.lists, has_enforcer=env.has_enforcer)
    message, tags = _message_and_tags(raw, path, report)
    return TracepointSpec(raw["subsystem"], raw["event"], is_raw, message, tags, args, env.selectors(raw, ctx))


def _binary_path(raw: Mapping[str, Any], path: str, report: Report) -> None:
    if not raw["path"].startswith("/"):
        report.error(child(path, "path"), f"{raw['path']!r} must be an absolute path")


def _uprobe(raw: Mapping[str, Any], path: str, env: _Env) -> UProbeSpec:
    report = env.report
    _binary_path(raw, path, report)
    symbols, offsets, addrs = (tuple(raw.get(f, ())) for f in ("symbols", "offsets", "addrs"))
    targets = len(symbols) or len(offsets) or len(addrs)
    if not targets:
        report.error(path, "needs one of symbols, offsets or addrs")
    for i, sym in enumerate(symbols):
        if not sym:
            report.error(item(child(path, "symbols"), i), "must not be empty")
    ref_ctr = tuple(raw.get("refCtrOffsets", ()))
    if ref_ctr and targets and len(ref_ctr) != targets:
        report.warn(child(path, "refCtrOffsets"), f"has {len(ref_ctr)} entries for {targets} probe targets")
    digests = tuple(raw.get("binaryDigests", ()))
    for i, d in enumerate(digests):
        if problem := _digest_problem(d):
            report.error(item(child(path, "binaryDigests"), i), problem)
    has_btf = bool(raw.get("btfPath"))
    args = _args(raw, path, "uprobes", report, btf_path=has_btf)
    data = _args(raw, path, "uprobes", report, field="data", btf_path=has_btf)
    return_arg = _return_arg(raw, path, "uprobes", report, btf_path=has_btf)
    ctx = S.HookContext(kind="uprobes", path=path, args=args, data=data, return_arg=return_arg,
                        is_return=raw["return"], lists=env.lists, has_enforcer=env.has_enforcer)
    message, tags = _message_and_tags(raw, path, report)
    return UProbeSpec(
        path=raw["path"], symbols=symbols, offsets=offsets, addrs=addrs, ref_ctr_offsets=ref_ctr,
        btf_path=raw.get("btfPath"), binary_digests=digests, return_=raw["return"], message=message, tags=tags,
        args=args, data=data, return_arg=return_arg, selectors=env.selectors(raw, ctx),
        ignore_digest_verification_failure=raw.get("ignore", {}).get("digestVerificationFailure", False),
    )


def _digest_problem(digest: str) -> str | None:
    if not DIGEST.fullmatch(digest):
        return (f"{digest!r} is not a digest: hex sha1/sha256/sha384/sha512 (optionally 'sha256:'-style "
                "prefixed) or 'build-id:HEX'")
    algo, _, hexpart = digest.rpartition(":")
    if algo == "build-id":
        return None
    if algo and len(hexpart) != DIGEST_HEX_LENGTHS[algo]:
        return f"{digest!r}: a {algo} digest has {DIGEST_HEX_LENGTHS[algo]} hex digits, got {len(hexpart)}"
    if not algo and len(hexpart) not in DIGEST_HEX_LENGTHS.values():
        return f"{digest!r} has {len(hexpart)} hex digits; sha1/sha256/sha384/sha512 have 40/64/96/128"
    return None


def _usdt(raw: Mapping[str, Any], path: str, env: _Env) -> USDTSpec:
    report = env.report
    _binary_path(raw, path, report)
    for field in ("provider", "name"):
        if not raw[field]:
            report.error(child(path, field), "must not be empty")
    args = _args(raw, path, "usdts", report, btf_path=bool(raw.get("btfPath")))
    ctx = S.HookContext(kind="usdts", path=path, args=args, lists=env.lists, has_enforcer=env.has_enforcer)
    message, tags = _message_and_tags(raw, path, report)
    return USDTSpec(raw["path"], raw["provider"], raw["name"], raw.get("btfPath"), message, tags, args,
                    env.selectors(raw, ctx))


def _lsmhook(raw: Mapping[str, Any], path: str, env: _Env) -> LsmHookSpec:
    report = env.report
    hook = raw["hook"]
    if not LSM_HOOK.fullmatch(hook):
        report.error(child(path, "hook"), f"{hook!r} is not an LSM hook name (lowercase letters, digits and '_')")
    elif hook.startswith("security_"):
        report.warn(child(path, "hook"), f"LSM hook names have no security_ prefix (e.g. 'file_open'); "
                                         f"did you mean {hook[len('security_'):]!r}?")
    args = _args(raw, path, "lsmhooks", report)
    ctx = S.HookContext(kind="lsmhooks", path=path, args=args, lists=env.lists, has_enforcer=env.has_enforcer)
    message, tags = _message_and_tags(raw, path, report)
    return LsmHookSpec(hook, message, tags, args, env.selectors(raw, ctx))
