"""A policy's TracingPolicyStatus, as the gRPC API and `lanner tp list` show it: its state and mode, one line per
hook (mechanism, targets, counters, or why it is unavailable), the action counters, and the kernel memory its
entries take in the shared maps."""

from __future__ import annotations

from typing import Any, Callable

from lanner.exporter.api.gen.tetragon import sensors_pb2

from .abi import GST_MONITOR_OVERRIDE, GST_MONITOR_SIGNAL, GST_OVERRIDE, GST_POST, GST_SIGNAL
from .compiler import GST_NAMES
from .loaded import FailedPolicy, LoadedPolicy
from .plan import HookPlan, HookUnit

TARGETS_SHOWN = 8  # attachment targets listed per hook in `list` (the rest counted)
# kernel_memory_bytes estimate (see docs/policies.md "Kernel memory"): bytes the kernel holds for one
# element, from include/linux/bpf / kernel/bpf/hashtab.c and lpm_trie.c on x86_64
HTAB_ELEM_HEADER = 48  # struct htab_elem before the key
LPM_NODE_HEADER = 24   # struct lpm_trie_node before the data (child[2], prefixlen, flags)
# TracingPolicyStatus.sensors: the generic program family serving each HookPlan.mechanism
_SENSOR = {"uprobe": "generic_uprobe", "kprobe": "generic_kprobe", "lsm": "generic_lsm", "fentry": "generic_fentry",
           "usdt": "generic_usdt"}


def policy_status(p: LoadedPolicy, hooks: list[str], counts: list[int], kernel_memory: int) -> Any:
    """``hooks``: the info lines; ``counts``: the policy's GST_* counters, summed."""
    sensors = sorted({_SENSOR.get(h.mechanism, "generic_tracepoint") for h in p.compiled.hooks})
    mode = sensors_pb2.TP_MODE_ENFORCE if p.enforce else sensors_pb2.TP_MODE_MONITOR
    if not p.compiled.enforcing:
        mode = sensors_pb2.TP_MODE_MONITOR_ONLY if p.enforce else mode
    st = sensors_pb2.TracingPolicyStatus(
        id=p.id, name=p.name, namespace=p.namespace, info="; ".join(hooks), sensors=sensors,
        error="; ".join(p.errors()), state=state(p), mode=mode, kernel_memory_bytes=kernel_memory)
    ac = st.stats.action_counters
    ac.post = counts[GST_POST]
    ac.signal = counts[GST_SIGNAL]
    ac.monitor_signal = counts[GST_MONITOR_SIGNAL]
    ac.override = counts[GST_OVERRIDE]
    ac.monitor_override = counts[GST_MONITOR_OVERRIDE]
    return st


def elem_bytes(m: Any, lpm: bool = False) -> int:
    """Kernel bytes of one element of a shared map (the per-element cost, without rounding)."""
    r8 = lambda n: (n + 7) & ~7  # noqa: E731
    if lpm:
        return LPM_NODE_HEADER + (m.key_size - 4) + m.value_size
    if m.percpu:
        return HTAB_ELEM_HEADER + r8(m.key_size) + 8 + r8(m.value_size) * m.ncpus
    return HTAB_ELEM_HEADER + r8(m.key_size) + r8(m.value_size)


def targets(plan: HookPlan) -> str:
    """Where the hook is attached, as `lanner tp list` shows it (a long list: the first few and the count)."""
    out = []
    for u in plan.units:
        kind = u.attach[0][0] if u.attach else ""
        if kind == "sys":
            t = f"{u.attach[0][1]}/sys_enter[{u.attach[0][4]}]"
            if u.exit_attach:
                t += f"+sys_exit[{u.exit_attach[0][4]}]"
        elif kind == "tp":
            t = f"{u.attach[0][1]}/{u.attach[0][2]}"
            if u.exit_attach:
                t += f"+{u.exit_attach[0][2]}"
        elif kind == "kprobe":
            t = u.attach[0][1] + ("+kretprobe" if u.exit_attach else "")
        elif kind == "lsm":
            t = f"lsm/{u.attach[0][1]}"
        elif kind == "tp_btf":
            t = f"tp_btf/{u.attach[0][1]}"
        elif kind == "fentry":
            t = f"fentry/{u.attach[0][1]}" + ("+fexit" if u.exit_attach else "")
        elif plan.kind == "usdt":
            t = f"{u.path}:{u.subsys}:{u.event}@{hex(u.offset)}"
        else:
            t = f"{u.path}:{u.symbol or hex(u.offset)}" + ("+uretprobe" if u.exit_attach else "")
        if any(a[0] == "fmodret" for a in u.attach):
            t += f"+fmod_ret {next(a[1] for a in u.attach if a[0] == 'fmodret')}"
        out.append(t)
    if len(out) > TARGETS_SHOWN:  # a long list (generated_syscalls: hundreds): the first few and the count
        return ", ".join(out[:TARGETS_SHOWN]) + f", ... ({len(out)} in all)"
    return ", ".join(out)


def hook_lines(p: LoadedPolicy, counters: Callable[[HookUnit], list[int]]) -> tuple[list[str], list[int]]:
    """One line per hook of the policy (in policy order) and the policy's summed counters."""
    total = [0] * len(GST_NAMES)
    lines: dict[str, str] = {}
    for plan in p.compiled.hooks:
        counts = [0] * len(GST_NAMES)
        for unit in plan.units:
            for i, n in enumerate(counters(unit)):
                counts[i] += n
        total = [a + b for a, b in zip(total, counts)]
        head = f"{plan.path} {plan.display}: {plan.mechanism} {targets(plan)}"
        if plan.path in p.attach_failed:
            text = f"{head}: attach failed ({p.attach_failed[plan.path]})"
        elif not p.enabled:
            text = f"{head}: detached (policy disabled)"
        else:
            text = head
        nonzero = [f"{name} {n}" for name, n in zip(GST_NAMES, counts) if n]
        if nonzero:
            text += f" [{', '.join(nonzero)}]"
        lines[plan.path] = text
    for path, display, reason in p.compiled.skipped:
        lines[path] = f"{path} {display}: unavailable ({reason})" if display else f"{path}: unavailable ({reason})"
    for path, display, why in p.compiled.ignored:
        lines[path] = f"{path} {display}: {why}"
    ordered = [lines.pop(k) for k in p.compiled.order if k in lines] + list(lines.values())
    return [t.replace("; ", ", ") for t in ordered], total


def state(p: LoadedPolicy) -> int:
    """TP_STATE_* of a loaded policy."""
    if p.loading:
        return sensors_pb2.TP_STATE_LOADING
    if not p.enabled:
        return sensors_pb2.TP_STATE_DISABLED
    errors = p.errors()
    if not p.links and (errors or p.compiled.hooks):
        return sensors_pb2.TP_STATE_LOAD_ERROR
    return sensors_pb2.TP_STATE_PARTIALLY_ENABLED if errors else sensors_pb2.TP_STATE_ENABLED


def failed_status(f: FailedPolicy) -> Any:
    """A policy whose objects failed to load: LOAD_ERROR with the reason."""
    mode = sensors_pb2.TP_MODE_MONITOR if f.policy.spec.settings.policy_mode == "monitor" \
        else sensors_pb2.TP_MODE_ENFORCE
    return sensors_pb2.TracingPolicyStatus(
        id=f.id, name=f.name, namespace=f.namespace, state=sensors_pb2.TP_STATE_LOAD_ERROR, mode=mode,
        error=f.reason, info="not loaded: the policy engine's objects failed to load "
        "(re-add the policy, or enable it, to try again)")
