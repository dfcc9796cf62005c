"""The rule library's catalog: each built-in rule's ATT&CK mapping, severity and notes (read from its
annotations), selection by tactic and severity, and the overlay (exceptions, enforcement) merged into the
rules when a rule set is rendered for an agent.

A rule is a Tetragon TracingPolicy file in this directory; everything the catalog knows comes from the
file's ``metadata.annotations`` (``lanner.io/*``) and its selectors, so a team edits one place.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

SEVERITIES = ("info", "low", "medium", "high", "critical")
TACTICS = {"execution": "TA0002", "persistence": "TA0003", "privilege-escalation": "TA0004",
           "defense-evasion": "TA0005", "credential-access": "TA0006", "discovery": "TA0007",
           "lateral-movement": "TA0008", "command-and-control": "TA0011", "exfiltration": "TA0010",
           "impact": "TA0040"}
ANNOTATIONS = ("lanner.io/tactic", "lanner.io/technique", "lanner.io/severity", "lanner.io/description",
               "lanner.io/false-positives", "lanner.io/enforce", "lanner.io/kernel")
OVERLAY_KEYS = ("exceptions", "enforce", "disable", "tactics", "minSeverity")


@dataclass(frozen=True)
class Rule:
    name: str
    path: Path
    tactic: str
    techniques: tuple[str, ...]
    severity: str
    description: str
    false_positives: str
    enforce_safe: bool
    kernel: str
    exceptions: tuple[str, ...]
    enforcing: bool  # the file itself asks for Sigkill/Signal/Override somewhere

    @property
    def tactic_id(self) -> str:
        return TACTICS[self.tactic]


@dataclass(frozen=True)
class Overlay:
    """A team's edits, kept outside the rule files (docs/rules.md#exceptions)."""

    exceptions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    enforce: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    tactics: tuple[str, ...] = ()
    min_severity: str | None = None


def rules_dir() -> Path:
    return Path(__file__).resolve().parent


def load_catalog(directory: Path | None = None) -> list[Rule]:
    """Every ``*.yaml`` rule of ``directory`` (default: the built-in library), sorted by name."""
    return sorted((_rule(p) for p in sorted((directory or rules_dir()).glob("*.yaml"))), key=lambda r: r.name)


def _rule(path: Path) -> Rule:
    doc = _read(path)
    meta = doc.get("metadata") or {}
    ann = meta.get("annotations") or {}
    for key in ANNOTATIONS:
        if not ann.get(key):
            raise ValueError(f"{path}: metadata.annotations.{key} is missing")
    tactic = str(ann["lanner.io/tactic"]).split(" ")[0]
    if tactic not in TACTICS:
        raise ValueError(f"{path}: metadata.annotations.lanner.io/tactic: {tactic!r} is not one of {sorted(TACTICS)}")
    severity = str(ann["lanner.io/severity"])
    if severity not in SEVERITIES:
        raise ValueError(f"{path}: metadata.annotations.lanner.io/severity: {severity!r} is not one of {SEVERITIES}")
    selectors = list(_selectors(doc))
    excepted = sorted({v for s in selectors for b in s.get("matchBinaries", ()) if b.get("operator") == "NotIn"
                       for v in b.get("values", ())})
    enforcing = any(a.get("action") in ("Sigkill", "Signal", "Override") for s in selectors
                    for a in s.get("matchActions", ()))
    return Rule(name=str(meta.get("name", "")), path=path, tactic=tactic,
                techniques=tuple(t.strip() for t in str(ann["lanner.io/technique"]).split(",")),
                severity=severity, description=str(ann["lanner.io/description"]),
                false_positives=str(ann["lanner.io/false-positives"]),
                enforce_safe=ann["lanner.io/enforce"] == "safe", kernel=str(ann["lanner.io/kernel"]),
                exceptions=tuple(excepted), enforcing=enforcing)


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a TracingPolicy document")
    return doc


def _hooks(doc: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    spec = doc.get("spec") or {}
    for kind in ("kprobes", "tracepoints", "lsmhooks", "uprobes"):
        yield from spec.get(kind) or ()


def _selectors(doc: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    for hook in _hooks(doc):
        yield from hook.get("selectors") or ()


def select(rules: Iterable[Rule], tactics: Iterable[str] = (), min_severity: str | None = None,
           names: Iterable[str] = ()) -> list[Rule]:
    """The rules of the given tactics (all when empty) at or above ``min_severity``, or named in ``names``."""
    tactics, names = set(tactics), set(names)
    for t in tactics - set(TACTICS):
        raise ValueError(f"unknown tactic {t!r}: one of {', '.join(TACTICS)}")
    if min_severity is not None and min_severity not in SEVERITIES:
        raise ValueError(f"unknown severity {min_severity!r}: one of {', '.join(SEVERITIES)}")
    floor = SEVERITIES.index(min_severity) if min_severity else 0
    out = []
    for r in rules:
        if r.name in names or (not names and (not tactics or r.tactic in tactics)
                               and SEVERITIES.index(r.severity) >= floor):
            out.append(r)
    return out


def load_overlay(path: Path, rules: Iterable[Rule]) -> Overlay:
    """Parse and check an overlay file; every problem names the file and the field."""
    raw = _read(path) if path.read_text().strip() else {}
    known = {r.name: r for r in rules}
    for key in raw:
        if key not in OVERLAY_KEYS:
            raise ValueError(f"{path}: unknown key {key!r} (one of {', '.join(OVERLAY_KEYS)})")

    def names(key: str) -> tuple[str, ...]:
        values = raw.get(key) or []
        if not isinstance(values, list):
            raise ValueError(f"{path}: {key}: a list of rule names is expected")
        for v in values:
            if v not in known:
                raise ValueError(f"{path}: {key}: no rule named {v!r} (see 'lanner rules list')")
        return tuple(values)

    exceptions: dict[str, tuple[str, ...]] = {}
    for rule, binaries in (raw.get("exceptions") or {}).items():
        if rule not in known:
            raise ValueError(f"{path}: exceptions.{rule}: no rule named {rule!r} (see 'lanner rules list')")
        if not isinstance(binaries, list) or not all(isinstance(b, str) and b.startswith("/") for b in binaries):
            raise ValueError(f"{path}: exceptions.{rule}: a list of absolute binary paths is expected")
        exceptions[rule] = tuple(binaries)
    enforce = names("enforce")
    for name in enforce:
        if not known[name].enforce_safe:
            raise ValueError(f"{path}: enforce.{name}: the rule is not marked safe to enforce "
                             "(lanner.io/enforce: unsafe); edit a copy of the rule to enforce it anyway")
    tactics = tuple(raw.get("tactics") or ())
    try:
        select((), tactics, raw.get("minSeverity"))  # validates both
    except ValueError as exc:
        raise ValueError(f"{path}: {'minSeverity' if 'severity' in str(exc) else 'tactics'}: {exc}") from None
    return Overlay(exceptions, enforce, names("disable"), tactics, raw.get("minSeverity"))


def apply_overlay(rule: Rule, overlay: Overlay) -> dict[str, Any]:
    """The rule's document with the overlay's exceptions merged and, if asked, Sigkill added."""
    doc = copy.deepcopy(_read(rule.path))
    extra = overlay.exceptions.get(rule.name, ())
    for sel in _selectors(doc):
        if extra:
            _add_exceptions(rule, sel, extra)
        if rule.name in overlay.enforce:
            sel.setdefault("matchActions", []).append({"action": "Sigkill"})
    if extra and not any(True for _ in _selectors(doc)):
        for hook in _hooks(doc):
            hook["selectors"] = [{"matchBinaries": [{"operator": "NotIn", "values": list(extra)}]}]
    if rule.name in overlay.enforce:
        doc.setdefault("metadata", {}).setdefault("annotations", {})["lanner.io/mode"] = "enforce"
    return doc


def _add_exceptions(rule: Rule, sel: dict[str, Any], extra: tuple[str, ...]) -> None:
    entries = sel.setdefault("matchBinaries", [])
    if not entries:
        entries.append({"operator": "NotIn", "values": list(extra)})
    elif entries[0].get("operator") == "NotIn":
        entries[0]["values"] = sorted(set(entries[0].get("values", [])) | set(extra))
    else:
        raise ValueError(f"rule {rule.name} ({rule.path.name}): its selectors choose binaries with "
                         f"matchBinaries {entries[0].get('operator')}, so binary exceptions cannot be added; "
                         "edit the rule's values instead")


def render(rules: Iterable[Rule], overlay: Overlay, out: Path) -> list[Path]:
    """Write the selected rules, overlay applied, to ``out`` (created); return the files written."""
    chosen = [r for r in select(rules, overlay.tactics, overlay.min_severity) if r.name not in overlay.disable]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for r in chosen:
        target = out / r.path.name
        target.write_text(yaml.safe_dump(apply_overlay(r, overlay), sort_keys=False, width=120))
        written.append(target)
    return written
