"""install/kubernetes/crds.yaml: generated from lanner's schema, equal in meaning to Tetragon's CRDs.

Tetragon's CRDs are read at test time from ../shared/tetragon-crds (never copied into the project).
The comparison covers the group, names, scope, short names, categories, versions and the whole
openAPIV3Schema structure (types, properties, items, enums, defaults, required, limits, formats,
patterns, CEL rules, list/map types); descriptions are documentation and are left out. Any
difference is listed by its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lanner.policy import crdgen

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "install" / "kubernetes" / "crds.yaml"
TETRAGON_CRDS = ROOT.parent / "shared" / "tetragon-crds"
CRD_FILES = {
    "tracingpolicies.cilium.io": "cilium.io_tracingpolicies.yaml",
    "tracingpoliciesnamespaced.cilium.io": "cilium.io_tracingpoliciesnamespaced.yaml",
}
IGNORED_KEYS = frozenset({"description"})


def _load(text: str) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(text, Loader=loader) if d]


def ours() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _load(GENERATED.read_text())}


def theirs(name: str) -> dict[str, Any]:
    path = TETRAGON_CRDS / CRD_FILES[name]
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared not beside the checkout)")
    (doc,) = _load(path.read_text())
    return doc


def normalize(node: Any) -> Any:
    """Drop descriptions; `required` is a set."""
    if isinstance(node, dict):
        out = {k: normalize(v) for k, v in node.items() if k not in IGNORED_KEYS}
        if isinstance(out.get("required"), list):
            out["required"] = sorted(out["required"])
        return out
    if isinstance(node, list):
        return [normalize(v) for v in node]
    return node


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Every place where two normalized trees differ: `path: ours X vs Tetragon Y`."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            where = f"{path}.{key}" if path else key
            if key not in b:
                out.append(f"{where}: only in ours")
            elif key not in a:
                out.append(f"{where}: only in Tetragon's")
            else:
                out.extend(differences(a[key], b[key], where))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(isinstance(x, dict) for x in a):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: ours {a!r} vs Tetragon {b!r}"]


def test_committed_crds_are_the_generators_output() -> None:
    """`make crds` was run after the last schema change."""
    assert GENERATED.read_text() == crdgen.render()


@pytest.mark.parametrize("name", sorted(CRD_FILES))
def test_names_scope_and_versions_equal_tetragons(name: str) -> None:
    mine, their = ours()[name]["spec"], theirs(name)["spec"]
    assert mine["group"] == their["group"] == "cilium.io"
    assert mine["names"] == their["names"]
    assert mine["scope"] == their["scope"]
    strip = [{k: v for k, v in ver.items() if k != "schema"} for ver in mine["versions"]]
    assert strip == [{k: v for k, v in ver.items() if k != "schema"} for ver in their["versions"]]


@pytest.mark.parametrize("name", sorted(CRD_FILES))
def test_openapi_schema_equals_tetragons(name: str) -> None:
    mine = normalize(ours()[name]["spec"]["versions"][0]["schema"])
    their = normalize(theirs(name)["spec"]["versions"][0]["schema"])
    assert differences(mine, their) == []


def test_short_names_and_scopes() -> None:
    crds = ours()
    cluster, namespaced = crds["tracingpolicies.cilium.io"], crds["tracingpoliciesnamespaced.cilium.io"]
    assert (cluster["spec"]["scope"], cluster["spec"]["names"]["shortNames"]) == ("Cluster", ["tgtp"])
    assert (namespaced["spec"]["scope"], namespaced["spec"]["names"]["shortNames"]) == ("Namespaced", ["tgtpn"])
    assert cluster["spec"]["names"]["categories"] == namespaced["spec"]["names"]["categories"] == ["tetragon"]


def test_differences_are_reported_by_path() -> None:
    """The comparison itself finds a changed enum and a missing field."""
    a = {"properties": {"x": {"type": "string", "enum": ["A"]}, "y": {"type": "integer"}}}
    b = {"properties": {"x": {"type": "string", "enum": ["A", "B"]}}}
    assert differences(a, b) == ["properties.x.enum: ours ['A'] vs Tetragon ['A', 'B']", "properties.y: only in ours"]
