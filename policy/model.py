"""Typed, immutable model of a validated TracingPolicy.

Everything here is produced by :mod:`lanner.policy.validate` from YAML that already passed the
schema and semantic checks, so a consumer (the BPF compiler, ``tracingpolicy list``) can trust it:

* values are normalized: operators canonical (``GT`` -> ``GreaterThan``), integers are ``int``,
  CRD defaults are applied (``syscall``, arg ``type: auto``, ``followForks: false`` ...), macros are
  expanded into the selectors that use them, and a selector without actions gets the implicit
  ``Post`` action written out;
* matchArgs values keep the policy's own strings in ``values`` and their parsed form in ``parsed``
  (ints, :class:`IntRange`, :mod:`ipaddress` networks, :class:`ListRef`), so the compiler does not
  parse again;
* every class is a frozen dataclass and every collection a tuple or :class:`FrozenDict`, so a loaded
  policy can be shared between threads and hashed.

``to_dict()`` turns a policy back into the CRD's own JSON shape (camelCase keys, fixed key order,
defaults written out). Loading ``to_dict()`` output again gives an equal policy; that property is
what ``tracingpolicy list -o json`` relies on.

Field-to-key mapping lives in dataclass field metadata (``wire(...)``), so one generic serializer
covers every class and a new field cannot be forgotten by ``to_dict``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, NamedTuple, TypeVar, Union

from .errors import Problem
from .names import CAPABILITIES

if TYPE_CHECKING:
    from .hooks import HookRequirement

K = TypeVar("K")
V = TypeVar("V")

API_VERSION = "cilium.io/v1alpha1"
KIND_CLUSTER = "TracingPolicy"
KIND_NAMESPACED = "TracingPolicyNamespaced"
# actions Tetragon removed from the CRD after v1.7.0 (still accepted by v1.7.0): loaded, never served
DEPRECATED_ACTIONS: tuple[str, ...] = ("FollowFD", "UnfollowFD", "CopyFD")


class FrozenDict(Mapping[K, V]):
    """A read-only, hashable mapping (insertion order kept) for labels, selectors, macros."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[K, V] | Any = ()):
        self._data: dict[K, V] = dict(data)
        self._hash: int | None = None

    def __getitem__(self, k: K) -> V:
        return self._data[k]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


def wire(name: str, *, default: Any = MISSING, omit_empty: bool = False, omit_false: bool = False) -> Any:
    """Declare the CRD key of a field. ``None`` values are never written; see ``to_dict``.

    ``omit_empty`` drops empty tuples/maps, ``omit_false`` drops ``False`` (for booleans the CRD
    gives no default: absent and false mean the same, so the output stays minimal and stable). A
    dotted name (``ignore.callNotFound``) writes a nested object.
    """
    meta = {"wire": name, "omit_empty": omit_empty, "omit_false": omit_false}
    return field(default=default, metadata=meta)  # defaults are immutable: tuples, FrozenDict, scalars


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _to_dict(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, FrozenDict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        name = f.metadata.get("wire")
        if not name:
            continue  # derived data (parsed values, warnings): not part of the CRD shape
        value = getattr(obj, f.name)
        if value is None:
            continue
        if f.metadata["omit_empty"] and isinstance(value, (tuple, FrozenDict)) and not value:
            continue
        if f.metadata["omit_false"] and value is False:
            continue
        parts = name.split(".")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = _plain(value)
    return out


class _Wire:
    """Mixin: ``to_dict()`` for every model class."""

    def to_dict(self) -> dict[str, Any]:
        """The CRD JSON shape of this object (camelCase keys, defaults written out)."""
        return _to_dict(self)


# ------------------------------------------------------------------------------ parsed values
@dataclass(frozen=True)
class IntRange:
    """An inclusive integer range from a ``"lo:hi"`` value (ports, InRange, InMap)."""

    lo: int
    hi: int

    def __str__(self) -> str:
        return f"{self.lo}:{self.hi}"


@dataclass(frozen=True)
class ListRef:
    """A ``"list:NAME"`` value: the values of ``spec.lists[NAME]``."""

    name: str

    def __str__(self) -> str:
        return f"list:{self.name}"


Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
ParsedValue = Union[int, str, IntRange, ListRef, ipaddress.IPv4Network, ipaddress.IPv6Network]


# ------------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class Metadata(_Wire):
    """The parts of Kubernetes ObjectMeta a policy uses. Server-populated fields are dropped."""

    name: str = wire("name")
    namespace: str | None = wire("namespace", default=None)
    labels: FrozenDict[str, str] = wire("labels", default=FrozenDict(), omit_empty=True)
    annotations: FrozenDict[str, str] = wire("annotations", default=FrozenDict(), omit_empty=True)


# ----------------------------------------------------------------------------- label selectors
@dataclass(frozen=True)
class LabelSelectorRequirement(_Wire):
    key: str = wire("key")
    operator: str = wire("operator")
    values: tuple[str, ...] = wire("values", default=(), omit_empty=True)


@dataclass(frozen=True)
class LabelSelector(_Wire):
    """A Kubernetes label selector. An empty one (``{}``) selects everything."""

    match_labels: FrozenDict[str, str] = wire("matchLabels", default=FrozenDict(), omit_empty=True)
    match_expressions: tuple[LabelSelectorRequirement, ...] = wire("matchExpressions", default=(), omit_empty=True)

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


@dataclass(frozen=True)
class Workloads(_Wire):
    """``matchWorkloads``: per-selector pod/container/host scoping."""

    pod_selector: LabelSelector | None = wire("podSelector", default=None)
    container_selector: LabelSelector | None = wire("containerSelector", default=None)
    host_selector: LabelSelector | None = wire("hostSelector", default=None)


# ------------------------------------------------------------------------------------- arguments
@dataclass(frozen=True)
class ArgSpec(_Wire):
    """One ``args[]`` / ``data[]`` / ``returnArg`` entry, CRD defaults applied.

    ``size_arg_index`` is 1-based as in the CRD (``None`` when unset or 0).
    """

    index: int = wire("index")
    type: str = wire("type", default="auto")
    label: str | None = wire("label", default=None)
    size_arg_index: int | None = wire("sizeArgIndex", default=None)
    return_copy: bool = wire("returnCopy", default=False)
    max_data: bool = wire("maxData", default=False)
    resolve: str = wire("resolve", default="")
    btf_type: str | None = wire("btfType", default=None)
    btf_type_module: str | None = wire("btfTypeModule", default=None)
    source: str | None = wire("source", default=None)


# ------------------------------------------------------------------------------------ selectors
@dataclass(frozen=True, kw_only=True)
class MatchArg(_Wire):
    """A ``matchArgs`` / ``matchData`` / ``matchReturnArgs`` filter.

    ``values`` are the policy's strings; ``parsed`` holds one parsed value per string, in order
    (empty for operators whose values are not parsed, e.g. CelExpr, or when the filter's arg could
    not be resolved).
    """

    index: int = wire("index", default=0)
    args: tuple[int, ...] = wire("args", default=(), omit_empty=True)
    operator: str = wire("operator")
    values: tuple[str, ...] = wire("values", default=(), omit_empty=True)
    parsed: tuple[ParsedValue, ...] = ()


@dataclass(frozen=True)
class MatchPIDs(_Wire):
    operator: str = wire("operator")
    values: tuple[int, ...] = wire("values")
    follow_forks: bool = wire("followForks", default=False)
    is_namespace_pid: bool = wire("isNamespacePID", default=False)


@dataclass(frozen=True)
class MatchBinaries(_Wire):
    """``matchBinaries`` / ``matchParentBinaries`` (at most one of each per selector)."""

    operator: str = wire("operator")
    values: tuple[str, ...] = wire("values")
    follow_children: bool = wire("followChildren", default=False)


@dataclass(frozen=True)
class MatchNamespaces(_Wire):
    """Values are inode numbers as strings, or ``host_ns`` (resolved at load time)."""

    namespace: str = wire("namespace")
    operator: str = wire("operator")
    values: tuple[str, ...] = wire("values")


@dataclass(frozen=True)
class MatchNamespaceChanges(_Wire):
    """Values are namespace type names, canonical case (``Mnt``, ``Net`` ...)."""

    operator: str = wire("operator")
    values: tuple[str, ...] = wire("values")


@dataclass(frozen=True)
class MatchCapabilities(_Wire):
    """``matchCapabilities`` / ``matchCapabilityChanges``; values are canonical ``CAP_*`` names."""

    operator: str = wire("operator")
    values: tuple[str, ...] = wire("values")
    type: str = wire("type", default="Effective")
    is_namespace_capability: bool = wire("isNamespaceCapability", default=False)

    @property
    def mask(self) -> int:
        """The capability bitmask the values stand for."""
        bits = 0
        for name in self.values:
            bits |= 1 << CAPABILITIES[name]
        return bits


@dataclass(frozen=True)
class Action(_Wire):
    """One ``matchActions`` / ``matchReturnActions`` entry, action name in canonical case.

    ``rate_limit_seconds`` is ``rateLimit`` parsed (``"1m"`` -> 60); ``None`` when not set.
    """

    action: str = wire("action")
    arg_error: int | None = wire("argError", default=None)
    arg_sig: int | None = wire("argSig", default=None)
    arg_sock: int | None = wire("argSock", default=None)
    arg_fqdn: str | None = wire("argFqdn", default=None)
    arg_url: str | None = wire("argUrl", default=None)
    arg_index: int | None = wire("argIndex", default=None)
    arg_value: int | None = wire("argValue", default=None)
    arg_regs: tuple[str, ...] = wire("argRegs", default=(), omit_empty=True)
    arg_new_symbol: str | None = wire("argNewSymbol", default=None)
    arg_new_addr: int | None = wire("argNewAddr", default=None)
    arg_new_offset: int | None = wire("argNewOffset", default=None)
    arg_fd: int | None = wire("argFd", default=None)
    arg_name: int | None = wire("argName", default=None)
    rate_limit: str | None = wire("rateLimit", default=None)
    rate_limit_scope: str | None = wire("rateLimitScope", default=None)
    kernel_stack_trace: bool = wire("kernelStackTrace", default=False, omit_false=True)
    user_stack_trace: bool = wire("userStackTrace", default=False, omit_false=True)
    ima_hash: bool = wire("imaHash", default=False, omit_false=True)
    rate_limit_seconds: int | None = None

    @property
    def deprecated(self) -> bool:
        return self.action in DEPRECATED_ACTIONS


@dataclass(frozen=True)
class Selector(_Wire):
    """One selector after macro expansion. Filters are ANDed; a hook's selectors are ORed.

    ``match_actions`` is never empty: a selector written without actions gets ``Post``.
    """

    label: str | None = wire("label", default=None)
    match_pids: tuple[MatchPIDs, ...] = wire("matchPIDs", default=(), omit_empty=True)
    match_args: tuple[MatchArg, ...] = wire("matchArgs", default=(), omit_empty=True)
    match_data: tuple[MatchArg, ...] = wire("matchData", default=(), omit_empty=True)
    match_return_args: tuple[MatchArg, ...] = wire("matchReturnArgs", default=(), omit_empty=True)
    match_binaries: tuple[MatchBinaries, ...] = wire("matchBinaries", default=(), omit_empty=True)
    match_parent_binaries: tuple[MatchBinaries, ...] = wire("matchParentBinaries", default=(), omit_empty=True)
    match_namespaces: tuple[MatchNamespaces, ...] = wire("matchNamespaces", default=(), omit_empty=True)
    match_namespace_changes: tuple[MatchNamespaceChanges, ...] = wire(
        "matchNamespaceChanges", default=(), omit_empty=True)
    match_capabilities: tuple[MatchCapabilities, ...] = wire("matchCapabilities", default=(), omit_empty=True)
    match_capability_changes: tuple[MatchCapabilities, ...] = wire(
        "matchCapabilityChanges", default=(), omit_empty=True)
    match_workloads: Workloads | None = wire("matchWorkloads", default=None)
    match_actions: tuple[Action, ...] = wire("matchActions", default=(), omit_empty=True)
    match_return_actions: tuple[Action, ...] = wire("matchReturnActions", default=(), omit_empty=True)

    def actions(self) -> Iterator[Action]:
        yield from self.match_actions
        yield from self.match_return_actions


# ----------------------------------------------------------------------------------------- hooks
@dataclass(frozen=True)
class KProbeSpec(_Wire):
    """A ``kprobes[]`` or ``fentries[]`` entry (the CRD uses one schema for both).

    ``syscall`` is the effective value: the CRD default (true) when the field is absent, and for a
    ``call: list:NAME`` the list's type decides (syscall lists -> true, others -> false), as in
    Tetragon. See docs/policy.md.
    """

    call: str = wire("call")
    syscall: bool = wire("syscall", default=True)
    return_: bool = wire("return", default=False)
    message: str | None = wire("message", default=None)
    tags: tuple[str, ...] = wire("tags", default=(), omit_empty=True)
    args: tuple[ArgSpec, ...] = wire("args", default=(), omit_empty=True)
    data: tuple[ArgSpec, ...] = wire("data", default=(), omit_empty=True)
    return_arg: ArgSpec | None = wire("returnArg", default=None)
    return_arg_action: str | None = wire("returnArgAction", default=None)
    selectors: tuple[Selector, ...] = wire("selectors", default=(), omit_empty=True)
    ignore_call_not_found: bool = wire("ignore.callNotFound", default=False, omit_false=True)

    @property
    def list_name(self) -> str | None:
        """``NAME`` when ``call`` is ``list:NAME``."""
        return self.call[5:] if self.call.startswith("list:") else None


@dataclass(frozen=True)
class TracepointSpec(_Wire):
    """A ``tracepoints[]`` entry. ``raw: true`` means a raw tracepoint (TP_PROTO arguments).

    matchArgs ``index`` counts positions in ``args`` here (not tracepoint field numbers).
    """

    subsystem: str = wire("subsystem")
    event: str = wire("event")
    raw: bool = wire("raw", default=False, omit_false=True)
    message: str | None = wire("message", default=None)
    tags: tuple[str, ...] = wire("tags", default=(), omit_empty=True)
    args: tuple[ArgSpec, ...] = wire("args", default=(), omit_empty=True)
    selectors: tuple[Selector, ...] = wire("selectors", default=(), omit_empty=True)


@dataclass(frozen=True)
class UProbeSpec(_Wire):
    """A ``uprobes[]`` entry: ``path`` plus exactly one of symbols, offsets or addrs."""

    path: str = wire("path")
    symbols: tuple[str, ...] = wire("symbols", default=(), omit_empty=True)
    offsets: tuple[int, ...] = wire("offsets", default=(), omit_empty=True)
    addrs: tuple[int, ...] = wire("addrs", default=(), omit_empty=True)
    ref_ctr_offsets: tuple[int, ...] = wire("refCtrOffsets", default=(), omit_empty=True)
    btf_path: str | None = wire("btfPath", default=None)
    binary_digests: tuple[str, ...] = wire("binaryDigests", default=(), omit_empty=True)
    return_: bool = wire("return", default=False)
    message: str | None = wire("message", default=None)
    tags: tuple[str, ...] = wire("tags", default=(), omit_empty=True)
    args: tuple[ArgSpec, ...] = wire("args", default=(), omit_empty=True)
    data: tuple[ArgSpec, ...] = wire("data", default=(), omit_empty=True)
    return_arg: ArgSpec | None = wire("returnArg", default=None)
    selectors: tuple[Selector, ...] = wire("selectors", default=(), omit_empty=True)
    ignore_digest_verification_failure: bool = wire(
        "ignore.digestVerificationFailure", default=False, omit_false=True)


@dataclass(frozen=True)
class USDTSpec(_Wire):
    """A ``usdts[]`` entry: the probe ``provider:name`` in the ELF at ``path``."""

    path: str = wire("path")
    provider: str = wire("provider")
    name: str = wire("name")
    btf_path: str | None = wire("btfPath", default=None)
    message: str | None = wire("message", default=None)
    tags: tuple[str, ...] = wire("tags", default=(), omit_empty=True)
    args: tuple[ArgSpec, ...] = wire("args", default=(), omit_empty=True)
    selectors: tuple[Selector, ...] = wire("selectors", default=(), omit_empty=True)


@dataclass(frozen=True)
class LsmHookSpec(_Wire):
    """An ``lsmhooks[]`` entry; ``hook`` is the LSM hook name (``file_open``), no ``security_``."""

    hook: str = wire("hook")
    message: str | None = wire("message", default=None)
    tags: tuple[str, ...] = wire("tags", default=(), omit_empty=True)
    args: tuple[ArgSpec, ...] = wire("args", default=(), omit_empty=True)
    selectors: tuple[Selector, ...] = wire("selectors", default=(), omit_empty=True)


HookSpec = Union[KProbeSpec, TracepointSpec, UProbeSpec, USDTSpec, LsmHookSpec]


# --------------------------------------------------------------------------- spec-level objects
@dataclass(frozen=True)
class ListSpec(_Wire):
    """A ``lists[]`` entry. ``type`` is ``None`` for a plain list of values.

    Generated lists (``generated_syscalls``, ``generated_ftrace``) get their values at load time
    from the running kernel, so ``values`` is empty here.
    """

    name: str = wire("name")
    type: str | None = wire("type", default=None)
    values: tuple[str, ...] = wire("values", default=(), omit_empty=True)
    pattern: str | None = wire("pattern", default=None)

    @property
    def is_syscall_list(self) -> bool:
        return self.type in ("syscalls", "generated_syscalls")


@dataclass(frozen=True)
class Enforcer(_Wire):
    """The policy's enforcer: syscalls (or ``list:NAME``) that NotifyEnforcer actions act on."""

    calls: tuple[str, ...] = wire("calls")


@dataclass(frozen=True)
class Option(_Wire):
    name: str = wire("name")
    value: str | None = wire("value", default=None)


@dataclass(frozen=True)
class PolicyOptions:
    """``spec.options`` interpreted. ``None`` means "not set: use the agent's default"."""

    policy_mode: str | None = None  # "monitor" | "enforce"
    override_method: str | None = None  # "fmod-ret" | "override-return"
    disable_kprobe_multi: bool = False
    disable_uprobe_multi: bool = False


@dataclass(frozen=True)
class Spec(_Wire):
    loader: bool = wire("loader", default=False, omit_false=True)
    lists: tuple[ListSpec, ...] = wire("lists", default=(), omit_empty=True)
    enforcers: tuple[Enforcer, ...] = wire("enforcers", default=(), omit_empty=True)
    options: tuple[Option, ...] = wire("options", default=(), omit_empty=True)
    pod_selector: LabelSelector | None = wire("podSelector", default=None)
    container_selector: LabelSelector | None = wire("containerSelector", default=None)
    host_selector: LabelSelector | None = wire("hostSelector", default=None)
    node_selector: LabelSelector | None = wire("nodeSelector", default=None)
    selectors_macros: FrozenDict[str, Selector] = wire("selectorsMacros", default=FrozenDict(), omit_empty=True)
    kprobes: tuple[KProbeSpec, ...] = wire("kprobes", default=(), omit_empty=True)
    fentries: tuple[KProbeSpec, ...] = wire("fentries", default=(), omit_empty=True)
    tracepoints: tuple[TracepointSpec, ...] = wire("tracepoints", default=(), omit_empty=True)
    uprobes: tuple[UProbeSpec, ...] = wire("uprobes", default=(), omit_empty=True)
    usdts: tuple[USDTSpec, ...] = wire("usdts", default=(), omit_empty=True)
    lsmhooks: tuple[LsmHookSpec, ...] = wire("lsmhooks", default=(), omit_empty=True)
    settings: PolicyOptions = PolicyOptions()

    def list_named(self, name: str) -> ListSpec | None:
        return next((lst for lst in self.lists if lst.name == name), None)


class Hook(NamedTuple):
    """One hook of a policy: ``kind`` is the singular CRD kind (``kprobe``, ``fentry``,
    ``tracepoint``, ``uprobe``, ``usdt``, ``lsmhook``), ``hook`` a display name."""

    kind: str
    hook: str
    spec: HookSpec


# Spec attribute -> singular kind, in the order hooks are listed.
HOOK_LISTS: tuple[tuple[str, str], ...] = (
    ("kprobes", "kprobe"), ("fentries", "fentry"), ("tracepoints", "tracepoint"),
    ("uprobes", "uprobe"), ("usdts", "usdt"), ("lsmhooks", "lsmhook"),
)


def hook_name(spec: HookSpec) -> str:
    """A short human name: ``sys_openat``, ``raw_syscalls/sys_enter``, ``/bin/bash:readline``."""
    if isinstance(spec, KProbeSpec):
        return spec.call
    if isinstance(spec, TracepointSpec):
        return f"{spec.subsystem}/{spec.event}"
    if isinstance(spec, UProbeSpec):
        targets = spec.symbols or tuple(hex(o) for o in spec.offsets) or tuple(hex(a) for a in spec.addrs)
        return f"{spec.path}:{','.join(targets)}"
    if isinstance(spec, USDTSpec):
        return f"{spec.path}:{spec.provider}:{spec.name}"
    return spec.hook


@dataclass(frozen=True)
class TracingPolicy(_Wire):
    """A validated policy. ``warnings`` (``path: message`` problems that did not reject it) and
    ``source``/``document`` (where it was loaded from) are not part of equality or ``to_dict``."""

    api_version: str = wire("apiVersion")
    kind: str = wire("kind")
    metadata: Metadata = wire("metadata")
    spec: Spec = wire("spec")
    warnings: tuple[Problem, ...] = field(default=(), compare=False)
    source: str | None = field(default=None, compare=False)
    document: int | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @property
    def namespaced(self) -> bool:
        return self.kind == KIND_NAMESPACED

    def hooks(self) -> tuple[Hook, ...]:
        """Every hook as ``(kind, hook, spec)``, in spec order: kprobes, fentries, tracepoints,
        uprobes, usdts, lsmhooks."""
        out: list[Hook] = []
        for attr, kind in HOOK_LISTS:
            for spec in getattr(self.spec, attr):
                out.append(Hook(kind, hook_name(spec), spec))
        return tuple(out)

    def hook_requirements(self) -> tuple["HookRequirement", ...]:
        """What kernel mechanism each hook needs (see :mod:`lanner.policy.hooks`)."""
        from .hooks import classify

        return classify(self)
