"""Field filters and redaction filters, in Tetragon's formats.

Field filter: ``{"fields": "process.binary,process.pid", "event_set": ["PROCESS_EXEC"],
"invert_event_set": false, "action": "INCLUDE"}``. Paths are relative to the event body
(``process_exec``'s object). For an event type that any INCLUDE filter applies to, only the included
paths are kept; EXCLUDE filters then remove their paths. ``node_name`` and ``time`` always stay.

Redaction filter: ``{"binary_regex": ["mysql"], "redact": ["--password[= ](\\S+)"]}``. For processes
whose binary matches (all processes when binary_regex is absent), every capture group of every
``redact`` regex in ``arguments`` becomes ``*****``. Redaction happens where a process's JSON is first
rendered, so it costs nothing per event afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .filters import FilterError, event_kind, json_lines

REDACTED = "*****"


@dataclass(frozen=True)
class FieldFilter:
    paths: tuple[tuple[str, ...], ...]
    kinds: frozenset[str]  # empty: every event type
    invert: bool
    include: bool

    def applies(self, kind: str) -> bool:
        hit = not self.kinds or kind in self.kinds
        return hit != self.invert

    @classmethod
    def parse(cls, obj: Any, where: str) -> "FieldFilter":
        if not isinstance(obj, dict):
            raise FilterError(f"{where}: a field filter is a JSON object")
        unknown = set(obj) - {"fields", "event_set", "invert_event_set", "action"}
        if unknown:
            raise FilterError(f"{where}: unknown field filter key(s) {', '.join(sorted(unknown))}")
        fields = obj.get("fields")
        if not isinstance(fields, str) or not fields.strip():
            raise FilterError(f"{where}.fields: expected a comma-separated list of field paths")
        action = str(obj.get("action", "INCLUDE")).upper()
        if action not in ("INCLUDE", "EXCLUDE"):
            raise FilterError(f"{where}.action: {obj.get('action')!r} is not INCLUDE or EXCLUDE")
        raw = obj.get("event_set") or []
        if not isinstance(raw, list):
            raise FilterError(f"{where}.event_set: expected a list")
        kinds = frozenset(event_kind(v, f"{where}.event_set[{i}]") for i, v in enumerate(raw))
        paths = tuple(tuple(p.strip().split(".")) for p in fields.split(",") if p.strip())
        return cls(paths, kinds, bool(obj.get("invert_event_set", False)), action == "INCLUDE")


def _keep(obj: Any, paths: list[tuple[str, ...]]) -> Any:
    if any(len(p) == 0 for p in paths) or not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        sub = [p[1:] for p in paths if p[0] == key]
        if sub:
            out[key] = _keep(value, sub)
    return out


def _drop(obj: Any, path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        if not isinstance(obj, dict) or key not in obj:
            return
        obj = obj[key]
    if isinstance(obj, dict):
        obj.pop(path[-1], None)


@dataclass(frozen=True)
class FieldFilterSet:
    filters: tuple[FieldFilter, ...] = ()

    @classmethod
    def parse_lines(cls, text: str, source: str) -> "FieldFilterSet":
        return cls(tuple(FieldFilter.parse(obj, where) for where, obj in json_lines(text, source)))

    def __bool__(self) -> bool:
        return bool(self.filters)

    def apply(self, kind: str, event: dict) -> dict:
        """Filter one decoded event (``{kind: body, "node_name": ..., "time": ...}``) in place."""
        body = event.get(kind)
        if not isinstance(body, dict):
            return event
        active = [f for f in self.filters if f.applies(kind)]
        if not active:
            return event
        includes = [p for f in active if f.include for p in f.paths]
        if any(f.include for f in active):
            body = _keep(body, includes)
        for f in active:
            if not f.include:
                for p in f.paths:
                    _drop(body, p)
        event[kind] = body
        return event


@dataclass(frozen=True)
class RedactionFilter:
    binary_regex: tuple[re.Pattern[str], ...]
    redact: tuple[re.Pattern[str], ...]

    @classmethod
    def parse(cls, obj: Any, where: str) -> "RedactionFilter":
        if not isinstance(obj, dict):
            raise FilterError(f"{where}: a redaction filter is a JSON object")
        unknown = set(obj) - {"binary_regex", "redact", "match"}
        if unknown:
            raise FilterError(f"{where}: unknown redaction filter key(s) {', '.join(sorted(unknown))}")

        def compile_all(key: str) -> tuple[re.Pattern[str], ...]:
            vals = obj.get(key) or []
            if not isinstance(vals, list):
                raise FilterError(f"{where}.{key}: expected a list of regular expressions")
            out = []
            for i, rx in enumerate(vals):
                try:
                    out.append(re.compile(rx))
                except (re.error, TypeError) as exc:
                    raise FilterError(f"{where}.{key}[{i}]: {rx!r} is not a valid regular expression: {exc}") from None
            return tuple(out)

        redact = compile_all("redact")
        if not redact:
            raise FilterError(f"{where}.redact: at least one regular expression is required")
        for i, rx in enumerate(redact):
            if rx.groups == 0:
                raise FilterError(f"{where}.redact[{i}]: {rx.pattern!r} has no capture group: nothing to redact")
        return cls(compile_all("binary_regex"), redact)

    def applies(self, binary: str) -> bool:
        return not self.binary_regex or any(r.search(binary) for r in self.binary_regex)

    def redact_text(self, text: str) -> str:
        for rx in self.redact:
            text = _redact_groups(rx, text)
        return text


def _redact_groups(rx: re.Pattern[str], text: str) -> str:
    out, pos = [], 0
    for m in rx.finditer(text):
        for g in range(1, rx.groups + 1):
            s, e = m.span(g)
            if s < 0 or s < pos:
                continue
            out.append(text[pos:s])
            out.append(REDACTED)
            pos = e
    out.append(text[pos:])
    return "".join(out)


@dataclass(frozen=True)
class Redactor:
    filters: tuple[RedactionFilter, ...] = ()

    @classmethod
    def parse_lines(cls, text: str, source: str) -> "Redactor":
        return cls(tuple(RedactionFilter.parse(obj, where) for where, obj in json_lines(text, source)))

    def __bool__(self) -> bool:
        return bool(self.filters)

    def arguments(self, binary: str, arguments: str) -> str:
        for f in self.filters:
            if f.applies(binary):
                arguments = f.redact_text(arguments)
        return arguments
