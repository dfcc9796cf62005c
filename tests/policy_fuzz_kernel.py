"""The kernel half of the policy fuzzer: mutants through a real ``PolicyEngine.add``, and proof that a rejected policy
leaves nothing behind.

:func:`snapshot` reads what the engine holds: every key of its configuration and value-set maps (``gen_hooks``,
``gen_stats``, ``gen_int_set``, the ``gen_str_set*`` maps, ``gen_str_lpm``, ``gen_socktrack``, ``gen_scope*``), the
syscall dispatcher's registrations, its link count, hook metadata, set ids in use and the policies it lists.
:func:`submit` adds a text and compares the snapshot after a rejection, or after deleting what was accepted, with
the one before: any difference is a leak. :func:`submit_with_fault` does the same while one write of the engine fails
(a map refusing an update, part way through a batch), which is how a policy that passed every check still fails late.

Safety: a text goes to the kernel only with every policy in monitor mode (:func:`monitored` rewrites
``spec.options``; :func:`submit` refuses anything else), so no mutant can signal or override anything on the host.
"""

from __future__ import annotations

import errno
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import yaml

from lanner.bpf.objects import BpfError
from lanner.policy.errors import PolicyError
from lanner.policy.loader import load_policies

from .policy_fuzz import HOST_PROBE

MAP_ATTRS = ("hooks_map", "stats_map", "int_set", "str_set", "lpm", "socktrack")
SCOPE_MAPS = ("gen_scope", "gen_scope_cg")
FAULT_POINTS = ("int_set", "str_set", "lpm", "hooks_map", "stats_map")


@contextmanager
def real_engine(probe: dict[str, bool] = HOST_PROBE) -> Iterator[Any]:
    """A PolicyEngine on this kernel, built as tests/test_policy_engine.py builds it (a started agent gives the
    process sensor's execve_map, the process cache and the encoders)."""
    from lanner.agent import Agent, AgentConfig
    from lanner.sensors.generic.engine import EngineContext, PolicyEngine

    agent = Agent(AgentConfig(export_stdout=False, grpc=None, health_address=None, run_probe=False))
    engine = None
    try:
        agent.start()
        ctx = EngineContext(probe, agent.sensor.obj.map("execve_map").fd, agent.cache, agent.encoder, agent.proto,
                            agent.cfg.node_name)
        engine = PolicyEngine(ctx)
        engine.add(_probe_policy(), "fuzz")  # the engine loads its objects (maps) for the first policy: now,
        engine.delete("fuzz-probe")  # so that every snapshot sees them
        yield engine
    finally:
        if engine is not None:
            engine.close()
        agent.close()


def _maps(engine: Any) -> dict[str, Any]:
    maps = {name: getattr(engine, name, None) for name in MAP_ATTRS}
    for size, m in (getattr(engine, "str_sets", None) or {}).items():
        maps[f"str_set{size}"] = m
    tp = getattr(engine, "tp", None)
    if tp is not None and getattr(engine, "loaded", True):
        maps.update({name: tp.map(name) for name in SCOPE_MAPS})
    return {name: m for name, m in maps.items() if m is not None}


def snapshot(engine: Any) -> dict[str, Any]:
    """What the engine holds, in comparable form (see the module docstring)."""
    out: dict[str, Any] = {f"map {name}": sorted(repr(k) for k in m.keys()) for name, m in _maps(engine).items()}
    on_map = getattr(engine, "_sys_on_map", None)  # the dispatcher's, once loaded
    out["gen_sys_on"] = sorted(repr(kv) for kv in on_map.lookup_batch() if kv[1]) if on_map is not None else []
    out["dispatcher hooks"] = sorted((k, tuple(v)) for k, v in engine._sys_slots.items() if any(v))
    out["links"] = engine.links()
    out["policies"] = sorted((s.name, s.namespace) for s in engine.list())
    out["hook metadata"] = sorted(engine._meta)
    out["set ids in use"] = engine._next_set - 1 - len(engine._free_sets)
    out["set ids freed twice"] = len(engine._free_sets) - len(set(engine._free_sets))
    out["tracepoints busy"] = sorted((k, tuple(sorted(v))) for k, v in engine._tp_busy.items() if v)
    return out


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One line per part of the engine that changed."""
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a != b:
            out.append(f"{key}: {_short(a)} -> {_short(b)}")
    return out


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def monitored(text: str) -> str:
    """``text`` with every policy document in monitor mode (``spec.options`` policy-mode), re-written as YAML; the
    text itself when it is not YAML a reader accepts (it is rejected then: nothing of it can load)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except Exception:  # a syntax error, or nesting PyYAML cannot read (RecursionError)
        return text
    for doc in docs:
        spec = doc.get("spec") if isinstance(doc, dict) else None
        if isinstance(spec, dict):
            options = spec.get("options")
            options = [o for o in options if not (isinstance(o, dict) and o.get("name") == "policy-mode")] \
                if isinstance(options, list) else []
            spec["options"] = options + [{"name": "policy-mode", "value": "monitor"}]
    try:
        return yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True, width=1 << 20)
    except Exception:  # a value the dumper cannot write back
        return text


def safe_to_load(text: str) -> bool:
    """True when loading ``text`` cannot enforce anything: it is rejected, or every policy is in monitor mode."""
    try:
        policies = load_policies(text, "fuzz")
    except PolicyError:
        return True
    return all(p.spec.settings.policy_mode == "monitor" for p in policies)


@dataclass(frozen=True)
class KernelResult:
    accepted: bool
    error: str  # the engine's message for a rejection
    leaks: tuple[str, ...]  # what changed in the engine (must be empty)


def submit(engine: Any, text: str) -> KernelResult:
    """Add ``text``; after a rejection, or after deleting what was accepted, the engine must hold what it held."""
    if not safe_to_load(text):
        raise ValueError("refusing to load a policy that is not in monitor mode")
    before = snapshot(engine)
    try:
        engine.add(text, "fuzz")
    except ValueError as exc:
        return KernelResult(False, str(exc), tuple(diff(before, snapshot(engine))))
    return KernelResult(True, "", tuple(_delete_all(engine, text) + diff(before, snapshot(engine))))


def _delete_all(engine: Any, text: str) -> list[str]:
    """Delete the policies of an accepted text; what was missing from the list."""
    listed = {(s.name, s.namespace) for s in engine.list()}
    missing = []
    for pol in load_policies(text, "fuzz"):
        key = (pol.name, pol.namespace or "")
        if key not in listed:
            missing.append(f"accepted policy {key} is not listed")
            continue
        engine.delete(*key)
    return missing


class FailingMap:
    """A map whose ``after``+1-th write fails with ENOSPC, a batch having written half of its entries first."""

    def __init__(self, inner: Any, after: int) -> None:
        self.inner, self.after, self.fired = inner, after, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _due(self) -> bool:
        self.after -= 1
        self.fired = self.fired or self.after < 0
        return self.after < 0

    def update(self, k: Any, v: Any, flags: int = 0) -> None:
        if self._due():
            raise BpfError(f"update map {self.inner.name} (injected)", errno.ENOSPC)
        self.inner.update(k, v, flags)

    def update_batch(self, entries: list[tuple[Any, Any]], flags: int = 0) -> None:
        if entries and self._due():
            self.inner.update_batch(entries[:len(entries) // 2], flags)
            raise BpfError(f"batch update map {self.inner.name} (injected)", errno.ENOSPC)
        self.inner.update_batch(entries, flags)


def submit_with_fault(engine: Any, text: str, point: str, after: int) -> tuple[KernelResult, bool]:
    """:func:`submit` while the engine's map ``point`` (an attribute: int_set, hooks_map ...) fails its ``after``+1-th
    write; also whether the fault fired (a policy that writes less never meets it)."""
    if not safe_to_load(text):
        raise ValueError("refusing to load a policy that is not in monitor mode")
    saved = getattr(engine, point)
    buckets = dict(engine.str_sets)
    failing = [FailingMap(saved, after)]
    setattr(engine, point, failing[0])
    if point == "str_set":  # the exact-size map and the small-key buckets (gen_str_set32 ...)
        engine.str_sets = {k: FailingMap(m, after) for k, m in buckets.items()}
        failing += engine.str_sets.values()
    try:
        result = submit(engine, text)
    finally:
        setattr(engine, point, saved)
        engine.str_sets = buckets
    return result, any(f.fired for f in failing)


def _probe_policy() -> str:
    return ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: fuzz-probe}\nspec:\n"
            "  options: [{name: policy-mode, value: monitor}]\n"
            "  tracepoints: [{subsystem: syscalls, event: sys_enter_getppid}]\n")
