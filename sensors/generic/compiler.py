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
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import ipaddress
import itertools
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from lanner.policy import syscalls
from lanner.policy.model import (
    ArgSpec, IntRange, KProbeSpec, ListRef, LsmHookSpec, MatchArg, Selector, TracepointSpec, TracingPolicy,
    UProbeSpec, USDTSpec,
)
from lanner.policy.names import ACTION_NUMBERS
from lanner.policy.values import parse_int

from . import abi, kernel_btf, tracefs
from .abi import (
    GAF_ZERO, GA_BINPRM, GA_BPF_ATTR, GA_BPF_MAP, GA_CRED, GA_DATALOC, GA_DENTRY, GA_FD, GA_FILE, GA_INLINE_STR,
    GA_INT, GA_IOVEC, GA_IOV_ITER, GA_KIOCB, GA_KSOCKADDR, GA_KSTR, GA_LOAD_INFO, GA_MODULE, GA_NETDEV, GA_PATH,
    GA_PERF_EVENT, GA_SKB, GA_SOCK, GA_SOCKET, GA_UBUF, GA_USERNS, GA_USOCKADDR, GA_USTR, GEN_MAX_ARGS,
    GEN_MAX_FILTERS, GEN_MAX_NS, GEN_MAX_NS_VALUES, GEN_MAX_PIDS, GEN_MAX_PID_ENTRIES, GEN_MAX_RANGES,
    GEN_MAX_SELECTORS, GEN_RET_ARG, GEN_STR_MAX, GEN_SYS_NR, GFF_AUX, GFF_NEGATE, GFF_RET, GFF_SIGNED, GFF_SUB,
    GF_ADDR, GF_INT, GF_MASK, GF_STR_EQ, GF_STR_POSTFIX, GF_STR_PREFIX, GHF_BTF, GHF_ENFORCE, GHF_EXIT, GHF_HAS_RET,
    GHF_LSM, GHF_RET_SOCK, GHF_RET_TRACKSOCK, GHF_RET_UNTRACKSOCK, GHF_SYSCALL, GHF_SYSWRAP, GHF_UPROBE, GHF_USDT,
    GNS_CGROUP, GNS_IPC, GNS_MNT, GNS_NET, GNS_PID, GNS_PID_FOR_CHILDREN, GNS_TIME, GNS_TIME_FOR_CHILDREN, GNS_USER,
    GNS_UTS, GOP_IN, GOP_NOTIN, GOP_NOTPOSTFIX, GOP_NOTPREFIX, GOP_POSTFIX, GOP_PREFIX, GPF_FOLLOW, GPF_NSPID,
    GSF_HAS_RET, GSF_KSTACK, GSF_OVERRIDE, GSF_POST, GSF_SIGNAL, GSF_TRACKSOCK, GSF_UNTRACKSOCK, GSF_USTACK,
    GST_MATCHED,
)
from .uprobe import SymbolError, resolve_symbols
from .usdt import UsdtError, find_probes

# ------------------------------------------------------------------ constants (defined in generic.h, read from BTF)
GOP = {"In": GOP_IN, "NotIn": GOP_NOTIN, "Prefix": GOP_PREFIX, "NotPrefix": GOP_NOTPREFIX, "Postfix": GOP_POSTFIX,
       "NotPostfix": GOP_NOTPOSTFIX}
WRAP_MAX_CALLS = 16  # longer syscall lists go to the dispatcher (one program), not one fentry per syscall
GENERATED_FTRACE_MAX = 256  # functions a generated_ftrace list may expand to (one kprobe link each)
# what the kernel's maps hold for all policies together (gen_maps.bpf.h): gen_hooks entries, and value-set entries
# in gen_int_set (262144), gen_str_set, gen_str_set32/64/128 and gen_str_lpm (32768 each). A policy needing more
# can never load: its hooks past these are unavailable, and compiling stops there (a few KiB of YAML with a long
# syscall list and thousands of values would otherwise make millions of entries, and gigabytes, before the engine
# found a map full)
GEN_MAX_HOOKS = 1024
GEN_MAX_SET_ENTRIES = 262144 + 5 * 32768
# gen_stats slots (generic.h enum gen_stat): GST_MATCHED -> "matched", in slot order
GST_NAMES = tuple(n.removeprefix("GST_").lower() for n, v in sorted(abi.enum("gen_stat").items(), key=lambda kv: kv[1])
                  if n != "GST_SLOTS")
# BTF-typed kernel pointer arguments (kprobes, LSM hooks): policy type -> gen_arg.type
KERNEL_PTR_TYPES = {"file": GA_FILE, "path": GA_PATH, "dentry": GA_DENTRY, "linux_binprm": GA_BINPRM,
                    "cred": GA_CRED, "sock": GA_SOCK, "socket": GA_SOCKET, "skb": GA_SKB,
                    "sockaddr": GA_KSOCKADDR, "user_namespace": GA_USERNS, "net_device": GA_NETDEV,
                    "module": GA_MODULE, "load_info": GA_LOAD_INFO, "bpf_attr": GA_BPF_ATTR, "bpf_map": GA_BPF_MAP,
                    "perf_event": GA_PERF_EVENT, "kiocb": GA_KIOCB, "iov_iter": GA_IOV_ITER}
PATH_GA = (GA_FILE, GA_PATH, GA_DENTRY, GA_BINPRM)
SOCK_GA = (GA_SOCK, GA_SOCKET, GA_SKB)
NS_TYPES = {"Uts": GNS_UTS, "Ipc": GNS_IPC, "Mnt": GNS_MNT, "Pid": GNS_PID, "PidForChildren": GNS_PID_FOR_CHILDREN,
            "Net": GNS_NET, "Time": GNS_TIME, "TimeForChildren": GNS_TIME_FOR_CHILDREN, "Cgroup": GNS_CGROUP,
            "User": GNS_USER}
NS_PROC = {"Uts": "uts", "Ipc": "ipc", "Mnt": "mnt", "Pid": "pid", "PidForChildren": "pid_for_children",
           "Net": "net", "Time": "time", "TimeForChildren": "time_for_children", "Cgroup": "cgroup",
           "User": "user"}
CAP_TYPES = {"Effective": 0, "Inheritable": 1, "Permitted": 2}
ALL_NS_MASK = (1 << len(NS_TYPES)) - 1
FAMILIES = {"AF_UNSPEC": 0, "AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16,
            "AF_PACKET": 17}

INT_TYPES = {  # policy type -> (bytes, signed)
    "int": (4, True), "sint32": (4, True), "int32": (4, True), "uint32": (4, False), "int8": (1, True),
    "sint8": (1, True), "uint8": (1, False), "int16": (2, True), "sint16": (2, True), "uint16": (2, False),
    "long": (8, True), "int64": (8, True), "sint64": (8, True), "ulong": (8, False), "uint64": (8, False),
    "size_t": (8, False), "syscall64": (8, False),
}
STRING_TYPES = {"string", "filename", "data_loc"}
U64 = (1 << 64) - 1


class Unavailable(Exception):
    """A hook that cannot be served; the message is the precise reason."""


class Ignored(Exception):
    """A hook left out on purpose (``ignore.callNotFound`` and the function is not in this kernel): not an error,
    the message says why."""


def kernel_has_function(name: str) -> bool:
    """A text symbol of exactly this name in /proc/kallsyms (vmlinux or a loaded module): what a kprobe attaches
    to (a function the compiler inlined everywhere, or renamed ``.isra``/``.constprop``, has none). True when
    kallsyms cannot be read: the attach decides then."""
    try:
        with open("/proc/kallsyms", "rb") as f:
            syms = f.read()
    except OSError:
        return True
    return re.search(rb"^[0-9a-f]+ [tT] " + re.escape(name.encode()) + rb"(?:\t|$)", syms, re.M) is not None


@dataclass
class ArgPlan:
    """How to report one argument (events.py) and how BPF reads it (gen_arg)."""

    type: str        # policy type (int, string, fd, char_buf, sockaddr, ...)
    gen_type: int
    size: int
    signed: bool
    label: str | None = None


@dataclass
class HookUnit:
    """One gen_hook value: an attachment target (or two, for entry + exit) and its config."""

    hook_id: int
    config: dict[str, Any]
    attach: list[tuple]  # ("tp", category, event) | ("uprobe", path, offset, retprobe)
    exit_id: int | None = None
    exit_config: dict[str, Any] | None = None
    exit_attach: list[tuple] = field(default_factory=list)
    # event metadata
    event_kind: str = "process_tracepoint"
    function_name: str = ""
    subsys: str = ""
    event: str = ""
    path: str = ""
    symbol: str = ""
    offset: int = 0


@dataclass
class HookPlan:
    path: str       # spec.tracepoints[0]
    kind: str
    display: str
    units: list[HookUnit]
    args: list[ArgPlan]
    ret: ArgPlan | None
    message: str | None
    tags: tuple[str, ...]
    mechanism: str  # how it is served here: tracepoint, syscall tracepoints, uprobe
    return_action: str = ""  # returnArgAction (TrackSock / UntrackSock), reported as the event's return_action


@dataclass
class CompiledPolicy:
    hooks: list[HookPlan] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, display, reason) per unavailable
    ignored: list[tuple[str, str, str]] = field(default_factory=list)  # (path, display, why): ignore.callNotFound
    order: list[str] = field(default_factory=list)  # hook paths in policy order (spec.loader first if set)
    int_sets: dict[int, list[int]] = field(default_factory=dict)
    str_sets: dict[int, list[bytes]] = field(default_factory=dict)
    lpm_sets: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)  # set -> [(bits, bytes)]
    set_ids: list[int] = field(default_factory=list)
    hook_ids: list[int] = field(default_factory=list)
    enforcing: bool = False  # has Sigkill/Signal actions
    room: tuple[int, int] = (GEN_MAX_HOOKS, GEN_MAX_SET_ENTRIES)  # hooks and set entries it may still add
    # sets counted so far in int_sets, str_sets, lpm_sets, and their entries (a set is written once: only the sets
    # added since the last count are counted, so checking after every set stays linear)
    tally: list[int] = field(default_factory=lambda: [0, 0, 0, 0], repr=False, compare=False)

    def set_entries(self) -> int:
        """Entries in the value sets."""
        t = self.tally
        for i, sets in enumerate((self.int_sets, self.str_sets, self.lpm_sets)):
            if len(sets) > t[i]:
                t[3] += sum(len(v) for v in itertools.islice(reversed(sets.values()), len(sets) - t[i]))
                t[i] = len(sets)
        return t[3]


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

    # ----------------------------------------------------------------------------------- entry
    def compile(self, policy: TracingPolicy, enforce: bool) -> CompiledPolicy:
        out = CompiledPolicy()
        if policy.spec.loader:
            reason = "process_loader events are not served by this lanner build"
            out.unavailable.append(f"spec.loader: {reason}")
            out.skipped.append(("spec.loader", "", reason))
            out.order.append("spec.loader")
        counters = {"kprobes": 0, "fentries": 0, "tracepoints": 0, "uprobes": 0, "usdts": 0, "lsmhooks": 0}
        for kind, display, spec in policy.hooks():
            attr = {"kprobe": "kprobes", "fentry": "fentries", "tracepoint": "tracepoints", "uprobe": "uprobes",
                    "usdt": "usdts", "lsmhook": "lsmhooks"}[kind]
            path = f"{attr}[{counters[attr]}]"
            counters[attr] += 1
            out.order.append(path)
            scratch = CompiledPolicy(room=(GEN_MAX_HOOKS - len(out.hook_ids), GEN_MAX_SET_ENTRIES - out.set_entries()))
            try:
                plan = self._hook(policy, kind, path, display, spec, scratch, enforce)
                self._check_room(scratch)
                # NotifyEnforcer: the selector stores argError per thread (gen_override, as Override) and
                # an fmod_ret program on each spec.enforcers call applies it (attached with the first unit)
                if [u for u in plan.units if u.config.pop("_enforcer", False)]:
                    plan.units[0].attach += [("fmodret", c) for c in self._enforcer_calls(policy)]
            except Ignored as exc:
                out.ignored.append((path, display, str(exc)))
                out.set_ids += scratch.set_ids
                continue
            except (Unavailable, ValueError, KeyError, TypeError, OSError) as exc:  # never crash on an odd policy
                reason = str(exc) if isinstance(exc, Unavailable) else f"cannot be compiled: {exc!r}"
                out.unavailable.append(f"hook {path} {display}: {reason}")
                out.skipped.append((path, display, reason))
                out.set_ids += scratch.set_ids  # allocated before the failure: freed with the policy
                continue
            out.hooks.append(plan)
            for name in ("int_sets", "str_sets", "lpm_sets"):
                getattr(out, name).update(getattr(scratch, name))
            out.set_ids += scratch.set_ids
            out.hook_ids += scratch.hook_ids
            out.enforcing |= scratch.enforcing
        return out

    @staticmethod
    def _list_values(policy: TracingPolicy, name: str, where: str) -> list[str]:
        """The values of ``spec.lists[name]``; generated lists are generated here, from this kernel:
        ``generated_syscalls``: every syscall of the x86-64 table the kernel has a tracepoint for;
        ``generated_ftrace``: the traceable functions (tracefs available_filter_functions) matching ``pattern``."""
        lst = policy.spec.list_named(name)
        if lst is None:
            raise Unavailable(f"{where}: list {name} not defined")
        if lst.type == "generated_syscalls":
            out = [n for n in sorted(syscalls.table(), key=syscalls.table().get)
                   if tracefs.exists("syscalls", f"sys_enter_{n}")]
            if not out:
                raise Unavailable(f"list {name} (generated_syscalls): this kernel shows no syscall tracepoint")
            return out
        if lst.type == "generated_ftrace":
            try:
                rx = re.compile(lst.pattern or "")
            except re.error as exc:
                raise Unavailable(f"list {name} (generated_ftrace): pattern {lst.pattern!r} is not a valid "
                                  f"regular expression: {exc}") from None
            try:
                out = [f for f in tracefs.filter_functions() if rx.search(f)] if lst.pattern else []
            except OSError as exc:
                raise Unavailable(f"list {name} (generated_ftrace): cannot read the kernel's traceable functions "
                                  f"({exc.strerror}: {exc.filename})") from None
            if not out:
                raise Unavailable(f"list {name} (generated_ftrace): pattern {lst.pattern!r} matches no function in "
                                  "available_filter_functions")
            if len(out) > GENERATED_FTRACE_MAX:
                raise Unavailable(f"list {name} (generated_ftrace): pattern {lst.pattern!r} matches {len(out)} "
                                  f"functions, the limit is {GENERATED_FTRACE_MAX}")
            return out
        if not lst.values:
            raise Unavailable(f"list {name} has no values")
        return list(lst.values)

    @staticmethod
    def _enforcer_calls(policy: TracingPolicy) -> list[str]:
        """The kernel functions of spec.enforcers[0].calls (``list:NAME`` expanded; ``sys_dup`` ->
        ``__x64_sys_dup``, an explicit ``__ia32_sys_dup`` kept)."""
        if not policy.spec.enforcers:
            return []
        out: list[str] = []
        for call in policy.spec.enforcers[0].calls:
            lst = policy.spec.list_named(call[5:]) if call.startswith("list:") else None
            if call.startswith("list:") and (lst is None or not lst.values):
                raise Unavailable(f"spec.enforcers: list {call[5:]} has no values (generated lists are not served)")
            for c in (lst.values if lst is not None else (call,)):
                fn = c if c.startswith("__") else syscalls.function_name(c)
                if fn not in out:
                    out.append(fn)
        return out

    def _hook(self, policy: TracingPolicy, kind: str, path: str, display: str, spec: Any, cp: CompiledPolicy,
              enforce: bool) -> HookPlan:
        if kind in ("kprobe", "fentry"):
            assert isinstance(spec, KProbeSpec)
            if not spec.syscall or kind == "fentry":
                feat = "kprobe" if kind == "kprobe" else "fentry"
                what = "kprobe attach" if kind == "kprobe" else "fentry (BPF trampoline) programs"
                if not self.supports(feat) and not (kind == "fentry" and self.supports("kprobe")):
                    raise Unavailable(f"needs {what}, which this kernel lacks ({feat}: not supported, see "
                                      "'lanner probe')")
                if spec.ignore_call_not_found and not spec.syscall and not spec.list_name and \
                        not kernel_has_function(spec.call):
                    raise Ignored("not in this kernel, ignored (ignore.callNotFound)")
                if kind == "fentry" and spec.syscall:  # like syscall kprobes: the syscall tracepoints
                    return self._syscall_kprobe(policy, path, display, spec, cp, enforce)
                if kind == "fentry" and self.supports("fentry") and (self.supports("fexit") or not spec.return_):
                    return self._kfunc(policy, path, display, spec, cp, enforce, mech="fentry")
                if self.supports("kprobe"):  # fentries fall back to kprobes (docs/policy-engine.md)
                    return self._kfunc(policy, path, display, spec, cp, enforce)
                raise Unavailable(f"{what} is available but this lanner build serves fentries as kprobes, which "
                                  "this kernel lacks (kprobe: not supported)")
            return self._syscall_kprobe(policy, path, display, spec, cp, enforce)
        if kind == "lsmhook":
            if not self.supports("lsm"):
                raise Unavailable("needs BPF LSM programs, which this kernel lacks (lsm: not supported)")
            return self._lsm(policy, path, display, spec, cp, enforce)
        if kind == "usdt":
            return self._usdt(policy, path, display, spec, cp, enforce)
        if kind == "tracepoint":
            return self._tracepoint(policy, path, display, spec, cp, enforce)
        if kind == "uprobe":
            return self._uprobe(policy, path, display, spec, cp, enforce)
        raise Unavailable(f"unknown hook kind {kind}")

    # ----------------------------------------------------------------------------- hook kinds
    def _tracepoint(self, policy, path, display, spec: TracepointSpec, cp, enforce) -> HookPlan:
        if spec.raw:
            return self._raw_tracepoint(policy, path, display, spec, cp, enforce)
        if not self.supports("tracepoint"):
            raise Unavailable("needs tracepoint programs, which this kernel lacks")
        fmt = _tp_format(spec.subsystem, spec.event)
        if fmt is None:
            raise Unavailable(f"tracepoint {spec.subsystem}/{spec.event} does not exist on this kernel")
        gen_args, plans = [], []
        for i, a in enumerate(spec.args):
            if a.index >= len(fmt.fields):
                raise Unavailable(f"args[{i}]: index {a.index} is past the {len(fmt.fields)} fields of "
                                  f"{spec.subsystem}/{spec.event}")
            f = fmt.fields[a.index]
            gen_args.append(self._tp_arg(i, a, f, user=spec.subsystem in ("syscalls", "raw_syscalls")))
            plans.append(gen_args[-1][1])
        positions = list(range(len(spec.args)))
        hid = self._new_hook(cp)
        cfg = self._config(policy, spec.selectors, [g for g, _ in gen_args], plans, positions, spec.args, cp,
                           enforce, has_ret=False, uprobe=False)
        unit = HookUnit(hid, cfg, [("tp", spec.subsystem, spec.event)], event_kind="process_tracepoint",
                        subsys=spec.subsystem, event=spec.event)
        return HookPlan(path, "tracepoint", display, [unit], plans, None, spec.message, spec.tags, "tracepoint")

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

    def _syscall_kprobe(self, policy, path, display, spec: KProbeSpec, cp, enforce) -> HookPlan:
        if not self.supports("tracepoint") and self.sys_dispatch() is None:
            raise Unavailable("needs kprobe or the syscall tracepoints, which this kernel lacks")
        calls = self._list_values(policy, spec.list_name, "call") if spec.list_name else [spec.call]
        for sel in spec.selectors:
            if sel.match_return_args and not spec.return_:
                raise Unavailable("matchReturnArgs needs return: true")
        # one dispatcher program on sys_enter (+ sys_exit) serves every syscall hook where the kernel has raw
        # tracepoints; the syscall tracepoints' formats still type the arguments and say which syscalls exist
        # fentry / kprobe on __x64_sys_X where the kernel has them
        # a long list (generated_syscalls) would load one fentry instance per syscall: the dispatcher serves it
        wrap = self.sys_wrapper(spec.return_, tuple(syscalls.function_name(c) for c in calls)) \
            if len(calls) <= WRAP_MAX_CALLS or self.sys_dispatch() is None else None
        disp = None if wrap else self.sys_dispatch()
        if disp is not None and any(_nr_or(_syscall_nr(c), GEN_SYS_NR) >= GEN_SYS_NR for c in calls):  # read is 0
            disp = None  # a number the dispatcher does not serve, or no syscall table here
        if wrap is None and disp is None and not self.supports("tracepoint"):
            raise Unavailable("needs kprobe or the syscall tracepoints, which this kernel lacks")
        units, plans, ret_plan = [], [], None
        for call in calls:
            name = syscalls.bare(call)
            fmt = _tp_format("syscalls", f"sys_enter_{name}")
            xfmt = _tp_format("syscalls", f"sys_exit_{name}") if spec.return_ and fmt is not None else None
            if fmt is None or (spec.return_ and xfmt is None):
                # every mechanism needs the tracepoint's format (it types the arguments): name what is missing,
                # and kprobes only where the probe says they are absent
                tp = f"syscalls/sys_{'exit' if fmt is not None else 'enter'}_{name}"
                no_kp = "" if self.supports("kprobe") else \
                    ", and this kernel lacks kprobe attach (kprobe: not supported)"
                raise Unavailable(f"there is no {tp} tracepoint to serve {call} (its format types the syscall's "
                                  f"arguments){no_kp}")
            sys_fields = [f for f in fmt.fields if f.index > 4]  # after __syscall_nr
            gen_args, plans = [], []
            for i, a in enumerate(spec.args):
                if a.index >= len(sys_fields):
                    raise Unavailable(f"args[{i}]: index {a.index}: {name} has {len(sys_fields)} arguments")
                g = self._tp_arg(i, a, sys_fields[a.index], user=True, syscall=True)
                if disp is not None or wrap is not None:
                    g[0]["off"] = a.index  # the dispatcher / the wrapper's hook reads the argument from pt_regs
                gen_args.append(g[0])
                plans.append(g[1])
            positions = [a.index for a in spec.args]
            hid = self._new_hook(cp)
            cfg = self._config(policy, spec.selectors, gen_args, plans, positions, spec.args, cp, enforce,
                               has_ret=spec.return_, uprobe=False, override_via=self._override_via(),
                               stacks=GSF_KSTACK | GSF_USTACK)
            nr = _syscall_nr(name) if disp is not None else None
            fn = syscalls.function_name(name)
            if wrap is not None:
                cfg["flags"] |= GHF_SYSWRAP | (GHF_BTF if wrap == "fentry" else 0)
                attach: list[tuple] = [("fentry", fn) if wrap == "fentry" else ("kprobe", fn, False)]
            elif nr is not None:
                cfg["flags"] |= GHF_SYSCALL
                cfg["sysnr"] = nr + 1
                attach = [("sys", disp, 0, nr, name)]
            else:
                attach = [("tp", "syscalls", f"sys_enter_{name}")]
            if cfg.pop("_override", False):  # sys_enter decides, fmod_ret on the syscall function returns it
                attach.append(("fmodret", syscalls.function_name(name)))
            unit = HookUnit(hid, cfg, attach, event_kind="process_kprobe",
                            function_name=syscalls.function_name(name))
            if spec.return_:
                assert xfmt is not None
                retf = xfmt.field("ret")
                rtype = spec.return_arg.type if spec.return_arg else "int"
                size, signed = INT_TYPES.get(rtype, (8, True))
                ret_plan = ArgPlan(rtype, GA_INT, size, signed, spec.return_arg.label if spec.return_arg else None)
                xid = self._new_hook(cp)
                unit.exit_id = xid
                if wrap is not None:
                    unit.exit_config = {"flags": GHF_EXIT, "pair": hid, "ret_size": size, "ret_signed": int(signed)}
                    unit.exit_attach = [("fexit", fn) if wrap == "fentry" else ("kprobe", fn, True)]
                elif nr is not None:
                    unit.exit_config = {"flags": GHF_EXIT | GHF_SYSCALL, "pair": hid, "sysnr": nr + 1,
                                        "ret_size": size, "ret_signed": int(signed)}
                    unit.exit_attach = [("sys", disp, 1, nr, name)]
                else:
                    unit.exit_config = {"flags": GHF_EXIT, "pair": hid, "ret_off": retf.offset if retf else 16,
                                        "ret_size": size, "ret_signed": int(signed)}
                    unit.exit_attach = [("tp", "syscalls", f"sys_exit_{name}")]
            units.append(unit)
        return HookPlan(path, "kprobe", display, units, plans, ret_plan, spec.message, spec.tags,
                        wrap or ("syscall dispatch" if disp is not None else "syscall tracepoints"))

    def _override_via(self) -> str | None:
        """How Override on a kernel function (or syscall) is served here: an fmod_ret program."""
        return "fmodret" if self.supports("fmod_ret") else None

    def _kfunc(self, policy, path, display, spec: KProbeSpec, cp, enforce, mech: str = "kprobe") -> HookPlan:
        """A kernel function: generic_kprobe (+ generic_kretprobe for return: true), args from pt_regs; or,
        for fentries where the kernel has trampolines, generic_fentry (+ generic_fexit), args from BTF."""
        if mech == "kprobe" and spec.return_ and not self.supports("kretprobe"):
            raise Unavailable("return: true needs kretprobe, which this kernel lacks")
        rtype = spec.return_arg.type if spec.return_ and spec.return_arg else "int"
        if rtype not in INT_TYPES and rtype not in ("auto", "sock"):
            raise Unavailable(f"returnArg type {rtype} is not served (integer and sock return values only)")
        if spec.return_arg_action and (spec.return_arg_action not in ("TrackSock", "UntrackSock") or rtype != "sock"):
            raise Unavailable(f"returnArgAction {spec.return_arg_action} on a {rtype} return value is not served "
                              "(TrackSock and UntrackSock on a sock are)")
        if rtype == "sock" and len(spec.args) >= GEN_MAX_ARGS:
            raise Unavailable(f"a sock return value needs a free argument slot: at most {GEN_MAX_ARGS - 1} args")
        calls = self._list_values(policy, spec.list_name, "call") if spec.list_name else [spec.call]
        gen_args, plans = [], []
        for i, a in enumerate(spec.args):
            g = self._kernel_arg(i, a, max_index=5, what=mech)
            gen_args.append(g[0])
            plans.append(g[1])
        positions = [a.index for a in spec.args]
        units, ret_plan = [], None
        for call in calls:
            hid = self._new_hook(cp)
            cfg = self._config(policy, spec.selectors, [dict(g) for g in gen_args], plans, positions, spec.args, cp,
                               enforce, has_ret=spec.return_, uprobe=mech == "kprobe",
                               override_via=self._override_via(), stacks=GSF_KSTACK | GSF_USTACK)
            if mech == "fentry":
                cfg["flags"] |= GHF_BTF
            attach: list[tuple] = [("kprobe", call, False) if mech == "kprobe" else ("fentry", call)]
            if cfg.pop("_override", False):
                attach.append(("fmodret", call))
            unit = HookUnit(hid, cfg, attach, event_kind="process_kprobe", function_name=call)
            if spec.return_:
                size, signed = INT_TYPES.get(rtype, (8, True))
                label = spec.return_arg.label if spec.return_arg else None
                if rtype == "sock":  # read at the return into the slot after the args (GA_SOCK rendering)
                    ret_plan = ArgPlan(rtype, GA_SOCK, 8, False, label)
                    cfg["flags"] |= GHF_RET_SOCK
                    cfg["ret_slot"] = len(spec.args)
                    if spec.return_arg_action:
                        cfg["flags"] |= GHF_RET_TRACKSOCK if spec.return_arg_action == "TrackSock" else \
                            GHF_RET_UNTRACKSOCK
                else:
                    ret_plan = ArgPlan(rtype, GA_INT, size, signed, label)
                xid = self._new_hook(cp)
                unit.exit_id = xid
                if mech == "kprobe":
                    unit.exit_config = {"flags": GHF_EXIT | GHF_UPROBE, "pair": hid}
                    unit.exit_attach = [("kprobe", call, True)]
                else:
                    unit.exit_config = {"flags": GHF_EXIT | GHF_BTF, "pair": hid}
                    unit.exit_attach = [("fexit", call)]
            units.append(unit)
        return HookPlan(path, "kprobe", display, units, plans, ret_plan, spec.message, spec.tags, mech,
                        spec.return_arg_action or "")

    def _lsm(self, policy, path, display, spec: LsmHookSpec, cp, enforce) -> HookPlan:
        """A BPF LSM hook: one generic_lsm instance per hook (target set before load), BTF ctx args."""
        gen_args, plans = [], []
        for i, a in enumerate(spec.args):
            g = self._kernel_arg(i, a, max_index=11, what="LSM hook")
            gen_args.append(g[0])
            plans.append(g[1])
        positions = [a.index for a in spec.args]
        hid = self._new_hook(cp)
        cfg = self._config(policy, spec.selectors, gen_args, plans, positions, spec.args, cp, enforce,
                           has_ret=False, uprobe=False, override_via="lsm")
        cfg.pop("_override", None)
        cfg["flags"] |= GHF_BTF | GHF_LSM
        unit = HookUnit(hid, cfg, [("lsm", spec.hook)], event_kind="process_lsm", function_name=spec.hook)
        return HookPlan(path, "lsmhook", display, [unit], plans, None, spec.message, spec.tags, "lsm")

    def _raw_tracepoint(self, policy, path, display, spec: TracepointSpec, cp, enforce) -> HookPlan:
        """raw: true: a BTF tracepoint (tp_btf) program, one generic_tp_btf instance per tracepoint (target
        set before load); args are the TP_PROTO arguments (index = argument number), BTF-typed as for
        kernel functions."""
        if not self.supports("tp_btf"):
            raise Unavailable("raw: true needs BTF tracepoint (tp_btf) programs, which this kernel lacks")
        if not _tp_exists(spec.subsystem, spec.event):
            raise Unavailable(f"tracepoint {spec.subsystem}/{spec.event} does not exist on this kernel")
        gen_args, plans = [], []
        for i, a in enumerate(spec.args):
            g = self._kernel_arg(i, a, max_index=5, what="raw tracepoint")
            gen_args.append(g[0])
            plans.append(g[1])
        positions = list(range(len(spec.args)))  # matchArgs index: the position in args, as on tracepoints
        hid = self._new_hook(cp)
        cfg = self._config(policy, spec.selectors, gen_args, plans, positions, spec.args, cp, enforce,
                           has_ret=False, uprobe=False)
        if cfg.pop("_override", False):
            raise Unavailable("Override is not served on tracepoints")
        cfg["flags"] |= GHF_BTF
        unit = HookUnit(hid, cfg, [("tp_btf", spec.event)], event_kind="process_tracepoint",
                        subsys=spec.subsystem, event=spec.event)
        return HookPlan(path, "tracepoint", display, [unit], plans, None, spec.message, spec.tags, "tp_btf")

    def _uprobe(self, policy, path, display, spec: UProbeSpec, cp, enforce) -> HookPlan:
        if not self.supports("uprobe"):
            raise Unavailable("needs uprobes, which this kernel lacks")
        if spec.addrs or spec.ref_ctr_offsets or spec.binary_digests:
            raise Unavailable("addrs, refCtrOffsets and binaryDigests are not served by this lanner build")
        if not os.path.exists(spec.path):
            raise Unavailable(f"{spec.path} does not exist")
        if spec.symbols:
            offsets = _symbol_offsets(spec.path, spec.symbols)
            targets = [(s, offsets[s]) for s in spec.symbols]
        else:
            targets = [("", o) for o in spec.offsets]
        gen_args, plans = [], []
        for i, a in enumerate(spec.args):
            g = self._reg_arg(i, a)
            gen_args.append(g[0])
            plans.append(g[1])
        positions = [a.index for a in spec.args]
        units, ret_plan = [], None
        for sym, off in targets:
            hid = self._new_hook(cp)
            cfg = self._config(policy, spec.selectors, gen_args, plans, positions, spec.args, cp, enforce,
                               has_ret=spec.return_, uprobe=True, stacks=GSF_USTACK)
            unit = HookUnit(hid, cfg, [("uprobe", spec.path, off, False)], event_kind="process_uprobe",
                            path=spec.path, symbol=sym, offset=off)
            if spec.return_:
                rtype = spec.return_arg.type if spec.return_arg else "int"
                size, signed = INT_TYPES.get(rtype, (8, True))
                ret_plan = ArgPlan(rtype, GA_INT, size, signed, spec.return_arg.label if spec.return_arg else None)
                xid = self._new_hook(cp)
                unit.exit_id = xid
                unit.exit_config = {"flags": GHF_EXIT | GHF_UPROBE, "pair": hid}
                unit.exit_attach = [("uprobe", spec.path, off, True)]
            units.append(unit)
        return HookPlan(path, "uprobe", display, units, plans, ret_plan, spec.message, spec.tags, "uprobe")

    def _usdt(self, policy, path, display, spec: USDTSpec, cp, enforce) -> HookPlan:
        """A USDT probe: generic_uprobe on every site of provider:name in the file (its semaphore as the
        uprobe's ref_ctr_offset), args read where the probe's note says (register, memory, constant)."""
        if not self.supports("uprobe"):
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
        if len(sites) > 64:
            raise Unavailable(f"USDT {spec.provider}:{spec.name} has {len(sites)} sites, the limit is 64")
        positions = [a.index for a in spec.args]  # matchArgs index: the arg's index field (docs/policy.md)
        units, plans = [], []
        for site in sites:
            gen_args, plans = [], []
            for i, a in enumerate(spec.args):
                if a.index >= len(site.args):
                    raise Unavailable(f"args[{i}]: index {a.index}, but USDT {spec.provider}:{spec.name} has "
                                      f"{len(site.args)} arguments")
                gen, plan = self._reg_arg(i, dataclasses.replace(a, index=0))
                u = site.args[a.index]
                gen.update(off=a.index, loc=u.loc, reg=u.reg, usize=u.size, usigned=int(u.signed), disp=u.disp)
                gen_args.append(gen)
                plans.append(plan)
            hid = self._new_hook(cp)
            cfg = self._config(policy, spec.selectors, gen_args, plans, positions, spec.args, cp, enforce,
                               has_ret=False, uprobe=True)
            if cfg.pop("_override", False):
                raise Unavailable("Override is not served on USDT probes")
            cfg["flags"] |= GHF_USDT
            units.append(HookUnit(hid, cfg, [("uprobe", spec.path, site.offset, False, site.ref_ctr_offset)],
                                  event_kind="process_usdt", path=spec.path, subsys=spec.provider,
                                  event=spec.name, offset=site.offset))
        return HookPlan(path, "usdt", display, units, plans, None, spec.message, spec.tags, "usdt")

    # -------------------------------------------------------------------------------- arguments
    def _tp_arg(self, i: int, a: ArgSpec, f: tracefs.TpField, user: bool, syscall: bool = False):
        t = a.type
        if a.resolve or a.btf_type or a.return_copy:
            raise Unavailable(f"args[{i}]: resolve/btfType/returnCopy need BTF-typed kprobe arguments")
        if t == "auto":
            t = "string" if f.is_string_like else "int64" if f.signed else "uint64"
            if f.size < 8 and not f.is_string_like:
                t = {1: "int8", 2: "int16", 4: "int"}[f.size] if f.signed else {1: "uint8", 2: "uint16", 4: "uint32"}.get(f.size, "uint64")
        gen: dict[str, Any] = {"off": f.offset, "size": min(f.size, 8), "type": GA_INT,
                               "is_signed": int(f.signed), "size_arg": 0}
        if t in INT_TYPES:
            size, signed = INT_TYPES[t]
            gen.update(size=min(size, f.size) if not f.is_data_loc else 4, is_signed=int(signed))
            if not syscall and f.size < size:
                gen["is_signed"] = int(f.signed)
            return gen, ArgPlan(t, GA_INT, gen["size"], bool(gen["is_signed"]), a.label)
        if t in STRING_TYPES:
            if f.is_data_loc:
                gen.update(type=GA_DATALOC, size=4)
            elif f.is_char_array:
                gen.update(type=GA_INLINE_STR, size=min(f.size, 255))
            elif f.is_pointer or syscall:
                gen.update(type=GA_USTR if user else GA_KSTR, size=8)
            else:
                raise Unavailable(f"args[{i}]: field {f.name} ({f.ctype}) is not a string")
            return gen, ArgPlan(t, gen["type"], gen["size"], False, a.label)
        if t in ("char_buf", "char_iovec", "const_buf"):
            if not user:
                raise Unavailable(f"args[{i}]: {t} is served for syscall arguments only")
            if not a.size_arg_index:
                raise Unavailable(f"args[{i}]: {t} needs sizeArgIndex")
            gen.update(type=GA_IOVEC if t == "char_iovec" else GA_UBUF, size=8, size_arg=0)
            gen["_size_arg_index"] = a.size_arg_index
            return gen, ArgPlan(t, gen["type"], 8, False, a.label)
        if t == "fd":
            gen.update(type=GA_FD, size=4, is_signed=1)
            return gen, ArgPlan(t, GA_FD, 4, True, a.label)
        if t == "sockaddr" and user:
            gen.update(type=GA_USOCKADDR, size=8)
            return gen, ArgPlan(t, GA_USOCKADDR, 8, False, a.label)
        raise Unavailable(f"args[{i}]: type {t} is not available on {'syscall ' if syscall else ''}tracepoint "
                          f"field {f.name} ({f.ctype}): it needs kprobe/BTF arguments")

    def _kernel_arg(self, i: int, a: ArgSpec, max_index: int, what: str):
        """An argument of a kernel function / LSM hook (gen_arg.off = argument number)."""
        t = "int" if a.type == "auto" else a.type
        if a.resolve or a.btf_type or a.return_copy:
            raise Unavailable(f"args[{i}]: resolve/btfType/returnCopy are not served by this lanner build")
        if a.index > max_index:
            raise Unavailable(f"args[{i}]: {what} argument index {a.index} is past the {max_index + 1} arguments "
                              "this build reads")
        gen: dict[str, Any] = {"off": a.index, "size": 8, "type": GA_INT, "is_signed": 0, "size_arg": 0}
        if t == "capability":
            gen.update(size=4, is_signed=1)
            return gen, ArgPlan(t, GA_INT, 4, True, a.label)
        if t in INT_TYPES:
            size, signed = INT_TYPES[t]
            gen.update(size=size, is_signed=int(signed))
            return gen, ArgPlan(t, GA_INT, size, signed, a.label)
        if t == "nop":
            gen.update(type=0)
            return gen, ArgPlan(t, 0, 8, False, a.label)
        if t in ("string", "data_loc"):
            gen.update(type=GA_KSTR)
            return gen, ArgPlan(t, GA_KSTR, 8, False, a.label)
        if t in KERNEL_PTR_TYPES:
            gen.update(type=KERNEL_PTR_TYPES[t])
            return gen, ArgPlan(t, gen["type"], 8, False, a.label)
        if t in ("char_buf", "char_iovec", "const_buf"):
            if not a.size_arg_index:
                raise Unavailable(f"args[{i}]: {t} needs sizeArgIndex")
            gen.update(type=GA_IOVEC if t == "char_iovec" else GA_UBUF)
            gen["_size_arg_index"] = a.size_arg_index
            return gen, ArgPlan(t, gen["type"], 8, False, a.label)
        if t == "fd":
            gen.update(type=GA_FD, size=4, is_signed=1)
            return gen, ArgPlan(t, GA_FD, 4, True, a.label)
        raise Unavailable(f"args[{i}]: type {t} is not served on {what} arguments by this lanner build")

    def _reg_arg(self, i: int, a: ArgSpec):
        t = "uint64" if a.type == "auto" else a.type
        if a.index > 5:
            raise Unavailable(f"args[{i}]: uprobe argument index {a.index} is past the 6 register arguments")
        gen: dict[str, Any] = {"off": a.index, "size": 8, "type": GA_INT, "is_signed": 0, "size_arg": 0}
        if t in INT_TYPES:
            size, signed = INT_TYPES[t]
            gen.update(size=size, is_signed=int(signed))
            return gen, ArgPlan(t, GA_INT, size, signed, a.label)
        if t in STRING_TYPES:
            gen.update(type=GA_USTR)
            return gen, ArgPlan(t, GA_USTR, 8, False, a.label)
        if t in ("char_buf", "const_buf"):
            if not a.size_arg_index:
                raise Unavailable(f"args[{i}]: {t} needs sizeArgIndex")
            gen.update(type=GA_UBUF)
            gen["_size_arg_index"] = a.size_arg_index
            return gen, ArgPlan(t, GA_UBUF, 8, False, a.label)
        if t == "fd":
            gen.update(type=GA_FD, size=4, is_signed=1)
            return gen, ArgPlan(t, GA_FD, 4, True, a.label)
        if t == "sockaddr":
            gen.update(type=GA_USOCKADDR)
            return gen, ArgPlan(t, GA_USOCKADDR, 8, False, a.label)
        raise Unavailable(f"args[{i}]: type {t} is not available on uprobes")

    # --------------------------------------------------------------------------------- config
    def _new_hook(self, cp: CompiledPolicy) -> int:
        self._check_room(cp, hooks=1)
        hid = self.alloc_hook()
        cp.hook_ids.append(hid)
        return hid

    def _new_set(self, cp: CompiledPolicy) -> int:
        self._check_room(cp)
        sid = self.alloc_set()
        cp.set_ids.append(sid)
        return sid

    @staticmethod
    def _check_room(cp: CompiledPolicy, hooks: int = 0) -> None:
        """Unavailable once the hook's entries (with the policy's hooks before it) exceed what the maps hold."""
        if len(cp.hook_ids) + hooks > cp.room[0]:
            raise Unavailable(f"the policy needs more than {GEN_MAX_HOOKS} hook entries, which is what gen_hooks "
                              "holds for all policies together")
        if cp.set_entries() > cp.room[1]:
            raise Unavailable(f"the policy's value sets need more than {GEN_MAX_SET_ENTRIES} entries, which is what "
                              "the value-set maps hold for all policies together")

    def _config(self, policy, selectors, gen_args, plans, positions, specargs, cp, enforce, has_ret,
                uprobe, override_via: str | None = None, stacks: int = 0) -> dict[str, Any]:
        """``stacks``: the GSF_KSTACK / GSF_USTACK a Post may ask for: the stack traces the hook's event carries
        (process_kprobe both, process_uprobe the user's; Tetragon's other events have none, and it ignores the
        flags there)."""
        if len(gen_args) > GEN_MAX_ARGS:
            raise Unavailable(f"{len(gen_args)} args, the limit is {GEN_MAX_ARGS}")
        if len(selectors) > GEN_MAX_SELECTORS:
            raise Unavailable(f"{len(selectors)} selectors, the limit is {GEN_MAX_SELECTORS}")
        cfg: dict[str, Any] = {"flags": (GHF_HAS_RET if has_ret else 0) | (GHF_UPROBE if uprobe else 0),
                               "nargs": len(gen_args), "nselectors": len(selectors)}
        # sizeArgIndex (1-based, naming the arg whose *index* is that minus 1) -> position in args
        for i, g in enumerate(gen_args):
            sai = g.pop("_size_arg_index", None)
            if sai:
                want = sai - 1
                pos = positions.index(want) if want in positions else None
                if pos is None:
                    raise Unavailable(f"args[{i}]: sizeArgIndex {sai} names an argument the hook does not read, "
                                      f"add it to args")
                g["size_arg"] = pos + 1
            for k, v in g.items():
                cfg[f"args[{i}].{k}"] = v
        for si, sel in enumerate(selectors):
            self._selector(policy, sel, si, cfg, plans, positions, specargs, cp, has_ret, override_via, stacks)
        if enforce:
            cfg["flags"] |= GHF_ENFORCE
        return cfg

    def _selector(self, policy, sel: Selector, si, cfg, plans, positions, specargs, cp, has_ret,
                  override_via: str | None = None, stacks: int = 0) -> None:
        p = f"sel[{si}]."
        where = f"selectors[{si}]"
        for attr, what in (("match_data", "matchData"), ("match_parent_binaries", "matchParentBinaries"),
                           ("match_return_actions", "matchReturnActions")):
            if getattr(sel, attr):
                raise Unavailable(f"{where}.{what} is not served by this lanner build")
        if sel.match_workloads is not None:
            raise Unavailable(f"{where}.matchWorkloads needs the pod/container map, not served by this build")
        # filters
        filters = []
        for m in sel.match_args:
            filters.append(self._arg_filter(policy, m, plans, positions, specargs, cp, f"{where}.matchArgs", False))
        for m in sel.match_return_args:
            if not has_ret:
                raise Unavailable(f"{where}.matchReturnArgs needs return: true")
            filters.append(self._arg_filter(policy, m, plans, positions, specargs, cp,
                                            f"{where}.matchReturnArgs", True))
        if len(filters) > GEN_MAX_FILTERS:
            raise Unavailable(f"{where}: {len(filters)} argument filters, the limit is {GEN_MAX_FILTERS}")
        flags = 0
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
        # matchPIDs
        if len(sel.match_pids) > GEN_MAX_PID_ENTRIES:
            raise Unavailable(f"{where}.matchPIDs: {len(sel.match_pids)} entries, the limit is {GEN_MAX_PID_ENTRIES}")
        for j, mp in enumerate(sel.match_pids):  # entries are ANDed
            if len(mp.values) > GEN_MAX_PIDS:
                raise Unavailable(f"{where}.matchPIDs[{j}]: {len(mp.values)} values, the limit is {GEN_MAX_PIDS}")
            e = f"{p}pids[{j}]."
            cfg[e + "op"] = GOP[mp.operator]
            cfg[e + "flags"] = (GPF_FOLLOW if mp.follow_forks else 0) | (GPF_NSPID if mp.is_namespace_pid else 0)
            cfg[e + "n"] = len(mp.values)
            for k, v in enumerate(mp.values):
                cfg[f"{e}vals[{k}]"] = v
        # matchBinaries
        if len(sel.match_binaries) > 1:
            raise Unavailable(f"{where}.matchBinaries: at most one entry")
        for mb in sel.match_binaries:
            if mb.follow_children and mb.operator not in ("In", "NotIn", "Prefix", "NotPrefix"):
                raise Unavailable(f"{where}.matchBinaries followChildren with {mb.operator} is not served by this "
                                  "lanner build (In, NotIn, Prefix, NotPrefix are)")
            if mb.follow_children:
                cfg[f"{p}bin_follow"] = 1
            op = GOP.get(mb.operator)
            if op is None:
                raise Unavailable(f"{where}.matchBinaries operator {mb.operator} is not served")
            sid = self._new_set(cp)
            vals = [v.encode() for v in mb.values]
            for v in vals:
                if len(v) > GEN_STR_MAX - 1:
                    raise Unavailable(f"{where}.matchBinaries value longer than {GEN_STR_MAX - 1} bytes")
            if op in (1, 2):
                cp.str_sets[sid] = vals
            elif op in (3, 4):
                cp.lpm_sets[sid] = [(8 * len(v), v) for v in vals]
            else:
                cp.lpm_sets[sid] = [(8 * len(v), v[::-1]) for v in vals]
            cfg[f"{p}bin_op"] = op
            cfg[f"{p}bin_set"] = sid
        # matchNamespaces
        if len(sel.match_namespaces) > GEN_MAX_NS:
            raise Unavailable(f"{where}.matchNamespaces: {len(sel.match_namespaces)} entries, the limit is "
                              f"{GEN_MAX_NS}")
        for n, mn in enumerate(sel.match_namespaces):
            if len(mn.values) > GEN_MAX_NS_VALUES:
                raise Unavailable(f"{where}.matchNamespaces[{n}]: more than {GEN_MAX_NS_VALUES} values")
            cfg[f"{p}ns[{n}].type"] = NS_TYPES[mn.namespace]
            cfg[f"{p}ns[{n}].op"] = GOP[mn.operator]
            cfg[f"{p}ns[{n}].nvals"] = len(mn.values)
            for k, v in enumerate(mn.values):
                # an inode number as the validator read it (Go's ParseInt base 0: 0x.., 0o.., 0b.., 0755 octal)
                cfg[f"{p}ns[{n}].vals[{k}]"] = host_ns(mn.namespace) if v == "host_ns" else parse_int(v, 32, False)
        cfg[f"{p}nns"] = len(sel.match_namespaces)
        # matchCapabilities
        if len(sel.match_capabilities) > 1:
            raise Unavailable(f"{where}.matchCapabilities: at most one entry is served")
        for mc in sel.match_capabilities:
            cfg[f"{p}cap_op"] = GOP[mc.operator]
            cfg[f"{p}cap_type"] = CAP_TYPES[mc.type]
            cfg[f"{p}cap_mask"] = mc.mask
            if mc.is_namespace_capability:
                cfg[f"{p}cap_userns"] = host_ns("User")
        # matchNamespaceChanges (the parser allows one entry): In compares the listed namespaces with
        # their exec-time inodes, NotIn all the others (Tetragon)
        for nc in sel.match_namespace_changes:
            listed = 0
            for v in nc.values:
                listed |= 1 << NS_TYPES[v]
            cfg[f"{p}nsch_op"] = GOP["In"]
            cfg[f"{p}nsch_mask"] = listed if nc.operator == "In" else ALL_NS_MASK & ~listed
        # matchCapabilityChanges
        if len(sel.match_capability_changes) > 1:
            raise Unavailable(f"{where}.matchCapabilityChanges: at most one entry is served")
        for mc in sel.match_capability_changes:
            cfg[f"{p}capch_op"] = GOP[mc.operator]
            cfg[f"{p}capch_type"] = CAP_TYPES[mc.type]
            cfg[f"{p}capch_mask"] = mc.mask
            if mc.is_namespace_capability:
                cfg[f"{p}capch_userns"] = host_ns("User")
        # actions
        post, reported, sig, rate, override, track, stack = True, None, 0, 0, False, 0, 0
        for a in sel.match_actions:
            if a.ima_hash:
                raise Unavailable(f"{where}: {a.action} imaHash is not served by this build (it needs the IMA "
                                  "hash helpers in a sleepable LSM program)")
            if a.action == "Post":
                # stack traces: where the hook's event has the field (else ignored, as Tetragon does)
                stack = ((GSF_KSTACK if a.kernel_stack_trace else 0) | (GSF_USTACK if a.user_stack_trace else 0)) \
                    & stacks
                rate = (a.rate_limit_seconds or 0) * 1_000_000_000
                if a.rate_limit_scope not in (None, "thread", "process") and rate:
                    pass  # scope: the args hash is per hook+selector (global) in this build
            elif a.action == "NoPost":
                post = False
            elif a.action in ("Sigkill", "Signal"):
                if not self.supports("send_signal"):
                    raise Unavailable(f"{where}: {a.action} needs bpf_send_signal, which this kernel lacks")
                sig = 9 if a.action == "Sigkill" else (a.arg_sig or 0)
                if not 0 < sig < 65:
                    raise Unavailable(f"{where}: Signal needs argSig 1..64")
                reported = reported or ACTION_NUMBERS[a.action]
                cp.enforcing = True
            elif a.action == "Override" and override_via is not None:
                if a.arg_error is None:
                    raise Unavailable(f"{where}: Override needs argError")
                override = True
                cfg[f"{p}override_ret"] = a.arg_error
                cfg["_override"] = True
                reported = reported or ACTION_NUMBERS["Override"]
                cp.enforcing = True
            elif a.action in ("TrackSock", "UntrackSock"):
                sock_index = a.arg_sock or 0  # argSock defaults to 0
                pos = positions.index(sock_index) if sock_index in positions else None
                if pos is None or plans[pos].gen_type not in (GA_SOCK, GA_SOCKET):
                    raise Unavailable(f"{where}: {a.action} argSock {sock_index} names no sock/socket argument of "
                                      "the hook")
                if track:
                    raise Unavailable(f"{where}: one TrackSock/UntrackSock per selector is served")
                track = GSF_TRACKSOCK if a.action == "TrackSock" else GSF_UNTRACKSOCK
                cfg[f"{p}sock_arg"] = pos
                reported = reported or ACTION_NUMBERS[a.action]
            elif a.action == "NotifyEnforcer":
                calls = self._enforcer_calls(policy)
                if not calls:
                    raise Unavailable(f"{where}: NotifyEnforcer needs spec.enforcers with calls")
                if not self.supports("fmod_ret"):
                    raise Unavailable(f"{where}: NotifyEnforcer needs fmod_ret programs on the spec.enforcers calls "
                                      f"({', '.join(calls)}), which this kernel lacks (fmod_ret: no, override_return: "
                                      f"{'yes' if self.supports('override_return') else 'no'}; this build enforces "
                                      "with fmod_ret only)")
                if a.arg_error:
                    override = True
                    cfg[f"{p}override_ret"] = a.arg_error
                if a.arg_sig:
                    if not 0 < a.arg_sig < 65:
                        raise Unavailable(f"{where}: NotifyEnforcer argSig must be 1..64")
                    sig = a.arg_sig
                cfg["_enforcer"] = True
                reported = reported or ACTION_NUMBERS["NotifyEnforcer"]
                cp.enforcing = True
            elif a.action in ("Override", "NotifyEnforcer"):
                if self.supports("fmod_ret") or self.supports("override_return"):
                    raise Unavailable(f"{where}: {a.action} needs an fmod_ret or kprobe override_return program on "
                                      "the call: the kernel has one, but this lanner build does not serve it")
                raise Unavailable(f"{where}: {a.action} needs fmod_ret or override_return, which this kernel "
                                  f"lacks (fmod_ret: {'yes' if self.supports('fmod_ret') else 'no'}, override_return: "
                                  f"{'yes' if self.supports('override_return') else 'no'})")
            else:
                raise Unavailable(f"{where}: action {a.action} is not served by this lanner build")
        if reported is None:
            reported = ACTION_NUMBERS["Post"] if post else ACTION_NUMBERS["NoPost"]
        cfg[f"{p}action"] = reported
        cfg[f"{p}flags"] = flags | (GSF_POST if post else 0) | (GSF_SIGNAL if sig else 0) | \
            (GSF_OVERRIDE if override else 0) | track | (stack if post else 0)
        cfg[f"{p}signal"] = sig
        cfg[f"{p}rate_limit_ns"] = rate

    def _arg_filter(self, policy, m: MatchArg, plans, positions, specargs, cp, where, ret: bool) -> dict:
        op = m.operator
        if ret:
            pos, plan = GEN_RET_ARG, ArgPlan("int", GA_INT, 8, True)
        else:
            if m.args:
                pos = m.args[0]
                if len(m.args) > 1:
                    raise Unavailable(f"{where}: args with more than one position is not served")
            else:
                pos = positions.index(m.index) if m.index in positions and not _tp_positions(positions) \
                    else m.index
            if not 0 <= pos < len(plans):
                raise Unavailable(f"{where}: index {m.index} names no argument of the hook")
            plan = plans[pos]
        f: dict[str, Any] = {"arg": pos, "kind": GF_INT, "flags": GFF_RET if ret else 0, "nranges": 0,
                             "set_id": 0, "set_id2": 0, "lo": [], "hi": []}
        neg = op.startswith("Not")
        base = op[3:] if neg else op
        if neg:
            f["flags"] |= GFF_NEGATE
        values = list(m.parsed) if m.parsed else list(m.values)
        values = self._expand_lists(policy, values, plan, where)
        is_str = plan.gen_type in (GA_USTR, GA_KSTR, GA_DATALOC, GA_INLINE_STR, GA_UBUF, GA_FD, GA_IOVEC,
                                   GA_NETDEV, GA_MODULE, GA_LOAD_INFO, *PATH_GA) and \
            plan.type != "fd" or (plan.type == "fd" and base in ("Prefix", "Postfix") or
                                  (plan.type == "fd" and any(isinstance(v, str) for v in values)))
        if base == "FileType":
            if plan.gen_type not in (GA_FILE, GA_PATH, GA_BINPRM):
                raise Unavailable(f"{where}: operator {op} on {plan.type} arguments is not served")
            # i_mode (vals) in [type, type | 07777]: the S_IFMT bits equal the type
            types = sorted({int(v) & 0o170000 for v in values})
            if len(types) > GEN_MAX_RANGES:
                raise Unavailable(f"{where}: more than {GEN_MAX_RANGES} file types")
            f["nranges"], f["lo"], f["hi"] = len(types), types, [t | 0o7777 for t in types]
            return f
        if plan.gen_type in (GA_USOCKADDR, GA_KSOCKADDR):
            return self._sockaddr_filter(f, base, values, cp, where)
        if plan.gen_type in SOCK_GA:
            return self._sock_filter(f, base, values, cp, where, plan.type)
        if plan.gen_type in (GA_CRED, GA_USERNS, GA_BPF_ATTR, GA_BPF_MAP, GA_PERF_EVENT, GA_KIOCB, GA_IOV_ITER):
            raise Unavailable(f"{where}: operator {op} on {plan.type} arguments is not served")
        if is_str:
            enc = [str(v).encode() for v in values]
            for v in enc:
                if len(v) > GEN_STR_MAX - 1:
                    raise Unavailable(f"{where}: value longer than {GEN_STR_MAX - 1} bytes")
            sid = self._new_set(cp)
            f["set_id"] = sid
            if base in ("Equal", "InMap"):
                f["kind"] = GF_STR_EQ
                cp.str_sets[sid] = enc
            elif base == "Prefix":
                f["kind"] = GF_STR_PREFIX
                cp.lpm_sets[sid] = [(8 * len(v), v) for v in enc]
            elif base == "Postfix":
                f["kind"] = GF_STR_POSTFIX
                cp.lpm_sets[sid] = [(8 * len(v), v[::-1]) for v in enc]
            else:
                raise Unavailable(f"{where}: operator {op} on {plan.type} arguments is not served")
            return f
        if base not in ("Equal", "InMap", "InRange", "GreaterThan", "GT", "LessThan", "LT", "Mask"):
            raise Unavailable(f"{where}: operator {op} on {plan.type} arguments is not served")
        if plan.signed:
            f["flags"] |= GFF_SIGNED
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
        lo_min = -(1 << 63) if plan.signed else 0
        hi_max = (1 << 63) - 1 if plan.signed else U64
        if base in ("Equal", "InMap", "InRange"):
            pass
        elif base == "GreaterThan" or base == "GT":
            ranges += [(v + 1, hi_max) for v in ints]
            ints = []
        elif base == "LessThan" or base == "LT":
            ranges += [(lo_min, v - 1) for v in ints]
            ints = []
        elif base == "Mask":
            f["kind"] = GF_MASK
            ranges = [(v, v) for v in ints]
            ints = []
        else:
            raise Unavailable(f"{where}: operator {op} on {plan.type} arguments is not served")
        if len(ranges) > GEN_MAX_RANGES:  # expand small ranges into the set
            if sum(hi - lo + 1 for lo, hi in ranges) > 65536:
                raise Unavailable(f"{where}: more than {GEN_MAX_RANGES} ranges spanning over 65536 values")
            for lo, hi in ranges:
                ints.extend(range(lo, hi + 1))
            ranges = []
        if ints:
            sid = self._new_set(cp)
            f["set_id"] = sid
            cp.int_sets[sid] = [x & U64 for x in ints]
        f["nranges"] = len(ranges)
        f["lo"] = [lo for lo, _ in ranges]
        f["hi"] = [hi for _, hi in ranges]
        return f

    def _sockaddr_filter(self, f, base, values, cp, where) -> dict:
        if base == "Family":  # numbers and names in the set, "lo:hi" ranges inline (the validator allows both)
            ranges = [(v.lo, v.hi) for v in values if isinstance(v, IntRange)]
            if len(ranges) > GEN_MAX_RANGES:
                raise Unavailable(f"{where}: more than {GEN_MAX_RANGES} family ranges")
            ints = [FAMILIES[v] if isinstance(v, str) and v in FAMILIES else int(v) for v in values
                    if not isinstance(v, IntRange)]
            if ints:
                f["set_id"] = sid = self._new_set(cp)
                cp.int_sets[sid] = ints
            f["nranges"], f["lo"], f["hi"] = len(ranges), [a for a, _ in ranges], [b for _, b in ranges]
            return f
        if base in ("SPort", "DPort", "SPortPriv", "DPortPriv", "SportPriv", "DportPriv"):
            f["flags"] |= GFF_AUX
            if base.lower().endswith("portpriv"):
                f["nranges"], f["lo"], f["hi"] = 1, [0], [1023]
                return f
            ints = [v for v in values if isinstance(v, int)]
            ranges = [(v.lo, v.hi) for v in values if isinstance(v, IntRange)]
            if ints:
                f["set_id"] = sid = self._new_set(cp)
                cp.int_sets[sid] = ints
            if len(ranges) > GEN_MAX_RANGES:
                raise Unavailable(f"{where}: more than {GEN_MAX_RANGES} port ranges")
            f["nranges"], f["lo"], f["hi"] = len(ranges), [a for a, _ in ranges], [b for _, b in ranges]
            return f
        if base in ("SAddr", "DAddr"):
            f["kind"] = GF_ADDR
            v4, v6 = [], []
            for v in values:
                net = v if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else \
                    ipaddress.ip_network(str(v), strict=False)
                (v4 if net.version == 4 else v6).append((net.prefixlen, net.network_address.packed))
            if v4:
                f["set_id"] = sid = self._new_set(cp)
                cp.lpm_sets[sid] = v4
            if v6:
                f["set_id2"] = sid = self._new_set(cp)
                cp.lpm_sets[sid] = v6
            return f
        raise Unavailable(f"{where}: operator {base} on sockaddr arguments is not served (SAddr, DAddr, SPort, "
                          "DPort, Family are)")

    def _sock_filter(self, f, base, values, cp, where, type_name) -> dict:
        """sock/socket/skb: Family on vals; SAddr/DAddr (CIDR) and SPort/DPort/Protocol/State on the
        struct gen_sock_info in the arg's str (offsets from BTF)."""
        if base in ("SAddr", "DAddr", "SPort", "DPort", "SPortPriv", "DPortPriv", "SportPriv", "DportPriv",
                    "Protocol", "State"):
            field_name = {"SAddr": "saddr", "DAddr": "daddr", "Protocol": "protocol", "State": "state"}.get(
                base, "sport" if base.lower().startswith("sport") else "dport")
            if field_name not in self.sock_fields:
                raise Unavailable(f"{where}: struct gen_sock_info.{field_name} is missing from the object's BTF")
            off, size = self.sock_fields[field_name]
            f["soff"] = off
            if base in ("SAddr", "DAddr"):
                return self._sockaddr_filter(f, base, values, cp, where)
            f["flags"] |= GFF_SUB
            f["ssize"] = size
            if base.lower().endswith("portpriv"):
                f["nranges"], f["lo"], f["hi"] = 1, [0], [1023]
                return f
            ints = [v for v in values if isinstance(v, int)]
            ranges = [(v.lo, v.hi) for v in values if isinstance(v, IntRange)]
            others = [v for v in values if not isinstance(v, (int, IntRange))]
            if others:
                raise Unavailable(f"{where}: {base} value {others[0]!r} is not a number")
            if ints:
                f["set_id"] = sid = self._new_set(cp)
                cp.int_sets[sid] = ints
            if len(ranges) > GEN_MAX_RANGES:
                raise Unavailable(f"{where}: more than {GEN_MAX_RANGES} ranges")
            f["nranges"], f["lo"], f["hi"] = len(ranges), [a for a, _ in ranges], [b for _, b in ranges]
            return f
        if base == "Family":
            return self._sockaddr_filter(f, base, values, cp, where)
        raise Unavailable(f"{where}: operator {base} on {type_name} arguments is not served (SAddr, DAddr, SPort, "
                          "DPort and their Not* forms, Protocol, Family, State are)")

    def _expand_lists(self, policy, values, plan, where) -> list:
        out = []
        for v in values:
            if isinstance(v, ListRef) or (isinstance(v, str) and v.startswith("list:")):
                name = v.name if isinstance(v, ListRef) else v[5:]
                lst = policy.spec.list_named(name)
                if lst is None:
                    raise Unavailable(f"{where}: list {name} not defined")
                for x in self._list_values(policy, name, where):
                    if lst.is_syscall_list:
                        nr = syscalls.number(x)
                        if nr is None:
                            raise Unavailable(f"{where}: list {name}: unknown syscall {x}")
                        out.append(nr)
                    else:
                        out.append(x)
            else:
                out.append(v)
        return out


def _symbol_offsets(path: str, symbols: tuple[str, ...]) -> Mapping[str, int]:
    """The file offsets of ``symbols`` in the ELF at ``path``; raises Unavailable naming what is wrong. Read once per
    version of the file and set of symbols: parsing a large binary's symbol table takes a fifth of a second, and a
    policy may name the same binary in hundreds of hooks."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        raise Unavailable(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    offsets, error = _read_symbols(path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, symbols)
    if error is not None:
        raise Unavailable(error)
    return offsets


@functools.lru_cache(maxsize=256)
def _read_symbols(path: str, dev: int, ino: int, mtime_ns: int, size: int, symbols: tuple[str, ...]
                  ) -> tuple[Mapping[str, int], str | None]:
    """resolve_symbols, its failure kept as a message too (a cache of the file's version: dev, inode, mtime, size)."""
    try:
        return MappingProxyType(resolve_symbols(path, symbols)), None
    except (SymbolError, OSError) as exc:
        return MappingProxyType({}), str(exc)
    except Exception as exc:  # pyelftools on a file that is not a well-formed ELF: any exception
        return MappingProxyType({}), f"{path} is not an ELF file this build can read ({type(exc).__name__}: {exc})"


def _tp_format(subsystem: str, event: str) -> tracefs.TpFormat | None:
    """A tracepoint's format; None when the kernel has no such tracepoint (no format file, or a name no file can
    have: longer than NAME_MAX, a NUL). Another error (tracefs unreadable) is the hook's reason."""
    try:
        return tracefs.read_format(subsystem, event)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return None
        raise Unavailable(f"cannot read tracepoint {subsystem}/{event}: {exc.strerror or exc}") from None


def _tp_exists(subsystem: str, event: str) -> bool:
    """The kernel has this tracepoint (a name longer than NAME_MAX, where stat fails, cannot be one)."""
    try:
        return tracefs.exists(subsystem, event)
    except (OSError, ValueError):
        return False


def _syscall_nr(name: str) -> int | None:
    """The x86-64 syscall number, or None when unknown or when this machine has no syscall table (the
    kernel headers' unistd_64.h): such hooks stay on the syscall tracepoints."""
    try:
        return syscalls.number(name)
    except OSError:
        return None


def _nr_or(nr: int | None, default: int) -> int:
    return default if nr is None else nr


def _tp_positions(positions: list[int]) -> bool:
    """Tracepoint hooks pass positions == list(range(n)): matchArgs index is then a position."""
    return positions == list(range(len(positions)))


def host_ns(name: str) -> int:
    """The host's namespace inode (pid 1's where readable, else the kernel's initial inode numbers)."""
    from lanner.sensors import procfs

    return int(getattr(procfs.host_namespaces(), NS_PROC[name]))
