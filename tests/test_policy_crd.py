"""Cross-check lanner's TracingPolicy schema (lanner.policy.crd) against Tetragon's real CRDs.

The CRDs are read from ../shared/tetragon-crds beside the checkout (never copied into the project).
Every node of both schemas is compared: type, enum, default, required, maxItems, maxLength,
minimum, maximum, pattern, format, the set of fields, and the number of CEL rules. A Tetragon
update that adds a field, an operator or a default therefore fails here until lanner follows.
The only accepted differences are listed in ALLOWED, each with its reason.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from lanner.policy import crd
from lanner.policy.schema import NO_DEFAULT, Node

CRD_DIR = Path(__file__).resolve().parents[2] / "shared" / "tetragon-crds"
CRD_FILES = {
    "TracingPolicy": CRD_DIR / "cilium.io_tracingpolicies.yaml",
    "TracingPolicyNamespaced": CRD_DIR / "cilium.io_tracingpoliciesnamespaced.yaml",
}

if not CRD_DIR.is_dir():
    pytest.skip(f"{CRD_DIR} is absent (../shared not beside the checkout)", allow_module_level=True)

ACTION_ENUM_PATH = "matchActions[].action"
# (path suffix, attribute) -> why lanner differs on purpose.
ALLOWED = {
    ("metadata", "properties"): "the CRD leaves ObjectMeta to the API server; lanner types it to reject unknown fields",
    (ACTION_ENUM_PATH, "enum"): "deprecated FollowFD/UnfollowFD/CopyFD are still accepted (with a warning)",
    ("matchReturnActions[].action", "enum"): "same as matchActions",
    ("matchActions[]", "properties"): "argFd/argName of the deprecated fd actions",
    ("matchReturnActions[]", "properties"): "argFd/argName of the deprecated fd actions",
}
DEPRECATED_ACTION_PARAMS = {"argFd", "argName"}


@functools.lru_cache(maxsize=None)
def load_crd(kind: str) -> dict[str, Any]:
    """The v1alpha1 openAPIV3Schema of a CRD (cached: the files are large; callers must not mutate)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = yaml.load(CRD_FILES[kind].read_text(), Loader=loader)
    (version,) = [v for v in doc["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def _allowed(path: str, attr: str) -> bool:
    return any(path.endswith(suffix) and attr == a for suffix, a in ALLOWED)


def compare(theirs: dict[str, Any], mine: Node, path: str, diffs: list[str]) -> None:
    if theirs.get("type") != mine.type and not (mine.type == "any"):
        diffs.append(f"{path}: type {theirs.get('type')!r} vs lanner {mine.type!r}")
        return
    enum = tuple(theirs["enum"]) if "enum" in theirs else None
    if enum != mine.enum:
        expected_extra = enum is not None and mine.enum == enum + crd.DEPRECATED_ACTIONS
        if not (_allowed(path, "enum") and expected_extra):
            diffs.append(f"{path}: enum {enum} vs lanner {mine.enum}")
    default = theirs.get("default", NO_DEFAULT)
    if default != mine.default:
        diffs.append(f"{path}: default {default!r} vs lanner {mine.default!r}")
    for attr, mine_value in (("required", tuple(sorted(mine.required))), ("maxItems", mine.max_items),
                             ("maxLength", mine.max_length), ("minimum", mine.minimum),
                             ("maximum", mine.maximum), ("pattern", mine.pattern),
                             ("format", mine.format)):
        value = theirs.get(attr)
        if attr == "required":
            value = tuple(sorted(value or ()))
        if value != mine_value:
            diffs.append(f"{path}: {attr} {value!r} vs lanner {mine_value!r}")
    rules = theirs.get("x-kubernetes-validations", [])
    if len(rules) != len(mine.rules):
        diffs.append(f"{path}: {len(rules)} CEL rule(s) vs lanner {len(mine.rules)}")

    props = theirs.get("properties", {})
    mine_props = dict(mine.properties or {})
    if set(props) != set(mine_props):
        extra = set(mine_props) - set(props)
        ok = _allowed(path, "properties") and (
            path.endswith("metadata") or (not set(props) - set(mine_props) and extra == DEPRECATED_ACTION_PARAMS))
        if not ok:
            diffs.append(f"{path}: fields only in the CRD {sorted(set(props) - set(mine_props))}, "
                         f"only in lanner {sorted(extra)}")
    for name in sorted(set(props) & set(mine_props)):
        compare(props[name], mine_props[name], f"{path}.{name}" if path else name, diffs)
    if "items" in theirs:
        if mine.items is None:
            diffs.append(f"{path}: the CRD has items, lanner has none")
        else:
            compare(theirs["items"], mine.items, f"{path}[]", diffs)
    additional = theirs.get("additionalProperties")
    if isinstance(additional, dict):
        if mine.additional is None:
            diffs.append(f"{path}: the CRD has additionalProperties, lanner has none")
        else:
            compare(additional, mine.additional, f"{path}{{*}}", diffs)


@pytest.mark.parametrize("kind,schema", [("TracingPolicy", crd.TRACING_POLICY),
                                         ("TracingPolicyNamespaced", crd.TRACING_POLICY_NAMESPACED)])
def test_schema_matches_crd(kind: str, schema: Node) -> None:
    diffs: list[str] = []
    compare(load_crd(kind), schema, "", diffs)
    assert diffs == []


def _node(schema: Node, *path: str) -> Node:
    node = schema
    for part in path:
        if part == "[]":
            assert node.items is not None
            node = node.items
        elif part == "{*}":
            assert node.additional is not None
            node = node.additional
        else:
            assert node.properties is not None
            node = node.properties[part]
    return node


def _crd_node(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    node = schema
    for part in path:
        if part == "[]":
            node = node["items"]
        elif part == "{*}":
            node = node["additionalProperties"]
        else:
            node = node["properties"][part]
    return node


HOOK_LISTS = ("kprobes", "fentries", "tracepoints", "uprobes", "usdts", "lsmhooks")


@pytest.mark.parametrize("hooks", HOOK_LISTS)
def test_operator_action_and_arg_type_enums_equal_the_crd(hooks: str) -> None:
    """The enums lanner's semantic checks are written against are exactly the CRD's."""
    theirs = load_crd("TracingPolicy")
    sel = ("spec", hooks, "[]", "selectors", "[]")
    for filt in ("matchArgs", "matchData", "matchReturnArgs"):
        assert tuple(_crd_node(theirs, *sel, filt, "[]", "operator")["enum"]) == crd.OPERATORS
    for acts in ("matchActions", "matchReturnActions"):
        assert tuple(_crd_node(theirs, *sel, acts, "[]", "action")["enum"]) == crd.CRD_ACTIONS
    assert tuple(_crd_node(theirs, "spec", hooks, "[]", "args", "[]", "type")["enum"]) == crd.ARG_TYPES
    assert tuple(_crd_node(theirs, *sel, "matchNamespaces", "[]", "namespace")["enum"]) == crd.NAMESPACE_TYPES
    assert tuple(_crd_node(theirs, *sel, "matchBinaries", "[]", "operator")["enum"]) == crd.BINARY_OPERATORS
    assert tuple(_crd_node(theirs, *sel, "matchCapabilities", "[]", "type")["enum"]) == crd.CAPABILITY_TYPES
    assert tuple(_crd_node(theirs, "spec", "lists", "[]", "type")["enum"]) == crd.LIST_TYPES
    assert set(crd.DEPRECATED_ACTIONS).isdisjoint(crd.CRD_ACTIONS)


def test_syscall_default_is_the_crds() -> None:
    """lanner applies the CRD's `syscall` default (documented in docs/policy.md); catch a change."""
    theirs = load_crd("TracingPolicy")
    for hooks in ("kprobes", "fentries"):
        assert _crd_node(theirs, "spec", hooks, "[]", "syscall")["default"] is True
        assert _node(crd.TRACING_POLICY, "spec", hooks, "[]", "syscall").default is True


def test_namespaced_crd_forbids_host_selector() -> None:
    rules = load_crd("TracingPolicyNamespaced").get("x-kubernetes-validations", [])
    assert any("hostSelector" in r["rule"] for r in rules)
    assert len(crd.TRACING_POLICY_NAMESPACED.rules) == len(rules)
