"""Event filters in Tetragon's format, evaluated against the agent's process objects.

A filter is a JSON object whose keys are Tetragon's ``Filter`` field names. Keys within one filter are
ANDed; the values of one key are ORed; a list of filters is ORed. An allow list admits an event when
any of its filters matches (or when it is empty); a deny list drops an event when any of its filters
matches; the deny list wins. The same filters serve the JSON export (``--export-allowlist``,
``--export-denylist``: one JSON filter per line) and the gRPC ``GetEvents`` request.

Filters look at an event's kind and its process and parent objects (``exporter.pipeline.OutEvent``:
``kind``, ``proc``, ``parent``, ``policy_name``, ``ancestors``), never at the encoded JSON, so they cost
a few attribute reads and regex searches per event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

from lanner.exporter.encoder import CAPABILITIES, join_arguments

# Tetragon's EventType numbers, by the JSON key of the event they mark
EVENT_TYPES: dict[str, int] = {
    "process_exec": 1, "process_exit": 5, "process_kprobe": 9, "process_tracepoint": 10, "process_loader": 11,
    "process_uprobe": 12, "process_throttle": 27, "process_lsm": 28, "process_usdt": 29, "rate_limit_info": 40001,
    "flow": 40002,  # lanner: netdp flow events (Tetragon has no flow event; Hubble serves flows separately)
}
EVENT_TYPE_NAMES = {f"PROCESS_{k[len('process_'):].upper()}" if k.startswith("process_") else k.upper(): k
                    for k in EVENT_TYPES}
_BY_NUMBER = {v: k for k, v in EVENT_TYPES.items()}


class FilterError(ValueError):
    """A filter could not be parsed; the message names the field."""


def event_kind(value: Any, where: str) -> str:
    """Accept PROCESS_EXEC, process_exec, exec, or the EventType number."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value in _BY_NUMBER:
            return _BY_NUMBER[value]
    elif isinstance(value, str):
        v = value.strip()
        if v.upper() in EVENT_TYPE_NAMES:
            return EVENT_TYPE_NAMES[v.upper()]
        low = v.lower()
        if low in EVENT_TYPES:
            return low
        if "process_" + low in EVENT_TYPES:
            return "process_" + low
    raise FilterError(f"{where}: unknown event type {value!r}; known: {', '.join(sorted(EVENT_TYPE_NAMES))}")


def _strings(obj: dict, key: str, where: str) -> list[str]:
    v = obj.get(key)
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise FilterError(f"{where}.{key}: expected a list of strings, got {v!r}")
    return v


def _regexes(obj: dict, key: str, where: str) -> list[re.Pattern[str]]:
    out = []
    for i, rx in enumerate(_strings(obj, key, where)):
        try:
            out.append(re.compile(rx))
        except re.error as exc:
            raise FilterError(f"{where}.{key}[{i}]: {rx!r} is not a valid regular expression: {exc}") from None
    return out


def _ints(obj: dict, key: str, where: str) -> list[int]:
    v = obj.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        raise FilterError(f"{where}.{key}: expected a list of non-negative integers, got {v!r}")
    return v


def _label_selector(text: str, where: str) -> Callable[[dict], bool]:
    """A Kubernetes label selector: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a)``, ``k``, ``!k``."""
    reqs: list[Callable[[dict], bool]] = []
    for part in re.split(r",(?![^()]*\))", text):
        p = part.strip()
        if not p:
            continue
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", p)
        if m:
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            reqs.append((lambda k, vs: lambda lb: lb.get(k) in vs)(key, vals) if op == "in"
                        else (lambda k, vs: lambda lb: lb.get(k) not in vs)(key, vals))
            continue
        m = re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", p)
        if m:
            key, op, val = m.groups()
            reqs.append((lambda k, v: lambda lb: lb.get(k) == v)(key, val) if op != "!="
                        else (lambda k, v: lambda lb: lb.get(k) != v)(key, val))
            continue
        m = re.fullmatch(r"(!?)([\w./-]+)", p)
        if m:
            neg, key = m.groups()
            reqs.append((lambda k: lambda lb: k not in lb)(key) if neg else (lambda k: lambda lb: k in lb)(key))
            continue
        raise FilterError(f"{where}: {text!r} is not a label selector")
    return lambda labels: all(r(labels) for r in reqs)


def _pod(proc: Any) -> dict | None:
    return getattr(proc, "pod", None)


def _arguments(proc: Any) -> str:
    text = getattr(proc, "arguments_text", None)
    return text if text is not None else join_arguments(proc.args)


@dataclass(frozen=True)
class _JsonCreds:
    cap_permitted: int = 0
    cap_effective: int = 0
    cap_inheritable: int = 0


@dataclass(frozen=True)
class JsonProcessView:
    """A process object from JSON (e.g. events piped into ``lanner getevents``), shaped for filters."""

    pid: int
    binary: str
    arguments_text: str
    pod: dict | None
    creds: _JsonCreds
    in_init_tree: bool = False

    @classmethod
    def from_dict(cls, d: dict | None) -> "JsonProcessView | None":
        if not d:
            return None
        cap = d.get("cap") or {}

        def mask(names: list[str]) -> int:
            return sum(1 << CAPABILITIES.index(n) for n in names or [] if n in CAPABILITIES)

        return cls(int(d.get("pid", 0) or 0), d.get("binary", ""), d.get("arguments", ""), d.get("pod"),
                   _JsonCreds(mask(cap.get("permitted")), mask(cap.get("effective")), mask(cap.get("inheritable"))),
                   bool(d.get("in_init_tree", False)))


@dataclass(frozen=True)
class JsonEventView:
    kind: str
    proc: JsonProcessView
    parent: JsonProcessView | None
    policy_name: str = ""
    ancestors: tuple = ()

    @classmethod
    def from_event(cls, ev: dict) -> "JsonEventView | None":
        kind = next((k for k in ev if k in EVENT_TYPES), None)
        if kind is None:
            return None
        body = ev[kind] or {}
        proc = JsonProcessView.from_dict(body.get("process")) or JsonProcessView(0, "", "", None, _JsonCreds())
        return cls(kind, proc, JsonProcessView.from_dict(body.get("parent")), body.get("policy_name", ""))


def _cap_check(spec: Any, where: str) -> Callable[[Any], bool]:
    """``{"effective": {"any": ["CAP_SYS_ADMIN"]}}`` with any/all/exactly/none per set."""
    if not isinstance(spec, dict):
        raise FilterError(f"{where}: expected an object with permitted/effective/inheritable")
    checks: list[Callable[[Any], bool]] = []
    for set_name, cond in spec.items():
        if set_name not in ("permitted", "effective", "inheritable"):
            raise FilterError(f"{where}.{set_name}: expected permitted, effective or inheritable")
        if not isinstance(cond, dict) or len(cond) != 1:
            raise FilterError(f"{where}.{set_name}: expected exactly one of any, all, exactly, none")
        ((mode, names),) = cond.items()
        if mode not in ("any", "all", "exactly", "none"):
            raise FilterError(f"{where}.{set_name}.{mode}: expected any, all, exactly or none")
        mask = 0
        for n in names or []:
            name = n if n in CAPABILITIES else ("CAP_" + n if "CAP_" + n in CAPABILITIES else None)
            if name is None:
                raise FilterError(f"{where}.{set_name}.{mode}: unknown capability {n!r}")
            mask |= 1 << CAPABILITIES.index(name)
        attr = f"cap_{set_name}"

        def check(p: Any, attr=attr, mode=mode, mask=mask) -> bool:
            have = getattr(p.creds, attr, 0) if p.creds is not None else 0
            if mode == "any":
                return bool(have & mask)
            if mode == "all":
                return have & mask == mask
            if mode == "exactly":
                return have == mask
            return not have & mask

        checks.append(check)
    return lambda p: all(c(p) for c in checks)


KNOWN_KEYS = {
    "binary_regex", "namespace", "health_check", "pid", "pid_set", "event_set", "pod_regex", "arguments_regex",
    "labels", "policy_names", "capabilities", "parent_binary_regex", "container_id", "in_init_tree",
    "ancestor_binary_regex", "parent_arguments_regex", "namespace_regex", "container_name_regex",
    "cel_expression",
}


@dataclass(frozen=True)
class EventFilter:
    """One Tetragon ``Filter``: its keys compiled to predicates."""

    source: dict
    checks: tuple[Callable[[Any], bool], ...] = field(default=())

    @classmethod
    def parse(cls, obj: Any, where: str = "filter") -> "EventFilter":
        if not isinstance(obj, dict):
            raise FilterError(f"{where}: a filter is a JSON object, got {obj!r}")
        unknown = set(obj) - KNOWN_KEYS
        if unknown:
            raise FilterError(f"{where}: unknown filter field(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(KNOWN_KEYS))}")
        if obj.get("cel_expression"):
            raise FilterError(f"{where}.cel_expression: CEL filters are not supported by lanner yet")
        c: list[Callable[[Any], bool]] = []
        if rx := _regexes(obj, "binary_regex", where):
            c.append(lambda e, rx=rx: any(r.search(e.proc.binary) for r in rx))
        if (ns := obj.get("namespace")) is not None:
            names = set(_strings(obj, "namespace", where))
            c.append(lambda e, names=names: ((_pod(e.proc) or {}).get("namespace", "")) in names)
        if rx := _regexes(obj, "namespace_regex", where):
            c.append(lambda e, rx=rx: any(r.search((_pod(e.proc) or {}).get("namespace", "")) for r in rx))
        if "health_check" in obj:
            hc = obj["health_check"]
            if not isinstance(hc, bool):
                raise FilterError(f"{where}.health_check: expected true or false, got {hc!r}")
            # lanner has no Kubernetes exec-probe detection yet: no event is a health check
            c.append(lambda e, hc=hc: not hc)
        if pids := set(_ints(obj, "pid", where)):
            c.append(lambda e, pids=pids: e.proc.pid in pids)
        if pid_set := set(_ints(obj, "pid_set", where)):
            c.append(lambda e, s=pid_set: e.proc.pid in s or any(a.pid in s for a in e.ancestors)
                     or (e.parent is not None and e.parent.pid in s))
        if "event_set" in obj:
            raw = obj["event_set"] if isinstance(obj["event_set"], list) else [obj["event_set"]]
            kinds = {event_kind(v, f"{where}.event_set[{i}]") for i, v in enumerate(raw)}
            c.append(lambda e, kinds=kinds: e.kind in kinds)
        if rx := _regexes(obj, "pod_regex", where):
            c.append(lambda e, rx=rx: any(r.search((_pod(e.proc) or {}).get("name", "")) for r in rx))
        if rx := _regexes(obj, "arguments_regex", where):
            c.append(lambda e, rx=rx: any(r.search(_arguments(e.proc)) for r in rx))
        if rx := _regexes(obj, "parent_arguments_regex", where):
            c.append(lambda e, rx=rx: e.parent is not None and any(r.search(_arguments(e.parent)) for r in rx))
        if sels := _strings(obj, "labels", where):
            preds = [_label_selector(s, f"{where}.labels") for s in sels]
            c.append(lambda e, preds=preds: _pod(e.proc) is not None
                     and any(p(_pod(e.proc).get("pod_labels", {})) for p in preds))
        if names := set(_strings(obj, "policy_names", where)):
            c.append(lambda e, names=names: e.policy_name in names)
        if "capabilities" in obj:
            cap = _cap_check(obj["capabilities"], f"{where}.capabilities")
            c.append(lambda e, cap=cap: cap(e.proc))
        if rx := _regexes(obj, "parent_binary_regex", where):
            c.append(lambda e, rx=rx: e.parent is not None and any(r.search(e.parent.binary) for r in rx))
        if rx := _regexes(obj, "ancestor_binary_regex", where):
            c.append(lambda e, rx=rx: any(r.search(a.binary) for a in ((e.parent,) if e.parent else ()) + e.ancestors
                                          for r in rx))
        if rx := _regexes(obj, "container_id", where):
            c.append(lambda e, rx=rx: any(
                r.search(((_pod(e.proc) or {}).get("container") or {}).get("id", "")) for r in rx))
        if rx := _regexes(obj, "container_name_regex", where):
            c.append(lambda e, rx=rx: any(
                r.search(((_pod(e.proc) or {}).get("container") or {}).get("name", "")) for r in rx))
        if "in_init_tree" in obj:
            want = obj["in_init_tree"]
            if not isinstance(want, bool):
                raise FilterError(f"{where}.in_init_tree: expected true or false")
            c.append(lambda e, want=want: bool(getattr(e.proc, "in_init_tree", False)) == want)
        return cls(dict(obj), tuple(c))

    def matches(self, ev: Any) -> bool:
        for check in self.checks:
            if not check(ev):
                return False
        return True


@dataclass(frozen=True)
class FilterSet:
    """An allow list and a deny list; the deny list wins."""

    allow: tuple[EventFilter, ...] = ()
    deny: tuple[EventFilter, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.allow and not self.deny

    def admits(self, ev: Any) -> bool:
        if self.allow and not any(f.matches(ev) for f in self.allow):
            return False
        return not any(f.matches(ev) for f in self.deny)

    @classmethod
    def from_lists(cls, allow: Iterable[dict], deny: Iterable[dict], where: str = "") -> "FilterSet":
        return cls(tuple(EventFilter.parse(o, f"{where}allow_list[{i}]") for i, o in enumerate(allow)),
                   tuple(EventFilter.parse(o, f"{where}deny_list[{i}]") for i, o in enumerate(deny)))


def json_lines(text: str, source: str) -> Iterable[tuple[str, Any]]:
    """Tetragon's filter-list format: one JSON object per line (blank lines and # comments skipped).
    Yields (``source:line``, object) so errors can name the line."""
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            obj = orjson.loads(s)
        except orjson.JSONDecodeError as exc:
            raise FilterError(f"{source}:{n}: not valid JSON: {exc}") from None
        yield f"{source}:{n}", obj


def parse_filter_lines(text: str, source: str) -> tuple[EventFilter, ...]:
    """Export allow/deny lists: one JSON filter object per line."""
    return tuple(EventFilter.parse(obj, where) for where, obj in json_lines(text, source))


def load_filter_arg(value: str | None, name: str) -> tuple[EventFilter, ...]:
    """A flag value is either inline filter lines or @FILE / a path to a file of them."""
    if not value:
        return ()
    if value.startswith("@") or (not value.lstrip().startswith("{") and Path(value).exists()):
        path = Path(value.lstrip("@"))
        try:
            return parse_filter_lines(path.read_text(), str(path))
        except OSError as exc:
            raise FilterError(f"{name}: cannot read {path}: {exc.strerror}") from None
    return parse_filter_lines(value, name)
