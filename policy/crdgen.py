"""Generate the TracingPolicy CustomResourceDefinitions from lanner's own policy schema.

``install/kubernetes/crds.yaml`` is this module's output (``make crds``; the file is committed)::

    python -m lanner.policy.crdgen -o install/kubernetes/crds.yaml

The schema tree is :mod:`lanner.policy.crd` (the one the policy loader checks files against), turned
into OpenAPI v3 so that the API server accepts exactly what Tetragon's CRDs accept: the group
``cilium.io``, the kinds ``TracingPolicy`` (cluster-scoped, ``tgtp``) and ``TracingPolicyNamespaced``
(namespaced, ``tgtpn``), both in category ``tetragon``. What the Python schema holds differently is
closed here, each on purpose:

* ``metadata`` is a bare ``type: object`` (the API server owns ObjectMeta);
* the deprecated fd actions (``FollowFD``...) and their ``argFd``/``argName`` are left out: lanner's
  loader still reads them from files, the CRD (as Tetragon's) refuses them;
* the CEL rules (``x-kubernetes-validations``) are Python predicates in the schema: each is given
  Tetragon's CEL text here, and an unknown rule stops the generator;
* label selectors are ``x-kubernetes-map-type: atomic`` with atomic lists, as metav1.LabelSelector.

``tests/test_k8s_crds.py`` compares the output with Tetragon's CRDs and applies it to a real API server.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import yaml

from . import crd
from .model import KIND_CLUSTER, KIND_NAMESPACED
from .schema import Node, Rule

GROUP = "cilium.io"
VERSION = "v1alpha1"
CATEGORY = "tetragon"
LABEL_SELECTOR_FIELDS = frozenset({"matchExpressions", "matchLabels"})
ACTION_PARAMS_DEPRECATED = frozenset({"argFd", "argName"})
AT_MOST_ONE_SUBJECT = {
    ("argNewSymbol", "argNewAddr", "argNewOffset"): "override action",
    ("symbols", "addrs", "offsets"): "uprobe",
}
HEADER = ("# TracingPolicy CRDs (Tetragon's group, names and schema), generated from lanner's policy schema by\n"
          "# `python -m lanner.policy.crdgen` (make crds). Do not edit by hand.\n")


@dataclass(frozen=True)
class CrdKind:
    """The names and scope of one CRD."""

    kind: str
    plural: str
    singular: str
    short_name: str
    scope: str
    schema: Node


KINDS = (
    CrdKind(KIND_CLUSTER, "tracingpolicies", "tracingpolicy", "tgtp", "Cluster", crd.TRACING_POLICY),
    CrdKind(KIND_NAMESPACED, "tracingpoliciesnamespaced", "tracingpolicynamespaced", "tgtpn", "Namespaced",
            crd.TRACING_POLICY_NAMESPACED),
)


# ------------------------------------------------------------------------------------- CEL rules
def _at_most_one_cel(names: Sequence[str]) -> dict[str, str]:
    subject = AT_MOST_ONE_SUBJECT.get(tuple(names))
    if subject is None:
        raise ValueError(f"no CRD message for the at-most-one rule on {names}")
    pairs = " && ".join(f"!(has(self.{a}) && has(self.{b}))" for a, b in itertools.combinations(names, 2))
    *head, last = names
    return {"message": f"{subject} needs at most one of {', '.join(head)} or {last} defined", "rule": pairs}


def _fixed_cel(kind: str) -> dict[str, Callable[[], dict[str, str]]]:
    return {
        "_return_needs_return_arg": lambda: {
            "message": "ReturnArg not specified with Return=true.",
            "rule": "!has(self.return) || (!self.return || has(self.returnArg))"},
        "_host_selector_null_or_empty": lambda: {
            "message": "The hostSelector should be either null or {}.",
            "rule": "!has(self.matchLabels) && !has(self.matchExpressions)"},
        "_no_host_selector": lambda: {
            "message": f"{kind} should have a null spec.hostSelector.",
            "rule": "!has(self.spec.hostSelector)"},
    }


def cel(rule: Rule, kind: str) -> dict[str, str]:
    """The CEL text (and message) of one schema rule, as Tetragon's CRD writes it."""
    fixed = _fixed_cel(kind).get(rule.check.__name__)
    if fixed is not None:
        return fixed()
    names = inspect.getclosurevars(rule.check).nonlocals.get("names")
    if names:
        return _at_most_one_cel(names)
    raise ValueError(f"schema rule {rule.check.__qualname__} has no CEL translation in lanner.policy.crdgen")


# ------------------------------------------------------------------------------------ OpenAPI v3
def _scalar_fields(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"type": node.type}
    if node.enum is not None:
        out["enum"] = list(crd.CRD_ACTIONS if node.enum == crd.ACTIONS else node.enum)
    if node.has_default:
        out["default"] = node.default
    for key, value in (("format", node.format), ("maxItems", node.max_items), ("maxLength", node.max_length),
                       ("minimum", node.minimum), ("maximum", node.maximum), ("pattern", node.pattern)):
        if value is not None:
            out[key] = value
    return out


def _object_fields(node: Node, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    props = dict(node.properties or {})
    if "action" in props and props["action"].enum == crd.ACTIONS:
        props = {k: v for k, v in props.items() if k not in ACTION_PARAMS_DEPRECATED}
    if props:
        out["properties"] = {name: openapi(child, kind, name) for name, child in sorted(props.items())}
    if node.additional is not None:
        out["additionalProperties"] = openapi(node.additional, kind)
    if node.required:
        out["required"] = list(node.required)
    if set(props) == LABEL_SELECTOR_FIELDS:
        out["x-kubernetes-map-type"] = "atomic"
        exprs = out["properties"]["matchExpressions"]
        exprs["x-kubernetes-list-type"] = "atomic"
        exprs["items"]["properties"]["values"]["x-kubernetes-list-type"] = "atomic"
    return out


def openapi(node: Node, kind: str, name: str = "") -> dict[str, Any]:
    """One schema node as OpenAPI v3 (a structural schema the API server accepts)."""
    if name == "metadata":
        return {"type": "object"}
    if node.type == "any":
        return {"x-kubernetes-preserve-unknown-fields": True}
    out = _scalar_fields(node)
    if node.type == "object":
        out.update(_object_fields(node, kind))
    if node.items is not None:
        out["items"] = openapi(node.items, kind)
    if node.rules:
        out["x-kubernetes-validations"] = [cel(rule, kind) for rule in node.rules]
    return out


def definition(k: CrdKind) -> dict[str, Any]:
    """The CustomResourceDefinition object of one kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{k.plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "lanner"}},
        "spec": {
            "group": GROUP,
            "names": {"categories": [CATEGORY], "kind": k.kind, "listKind": f"{k.kind}List", "plural": k.plural,
                      "shortNames": [k.short_name], "singular": k.singular},
            "scope": k.scope,
            "versions": [{"name": VERSION, "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": openapi(k.schema, k.kind)}}],
        },
    }


def render() -> str:
    """Both CRDs as one multi-document YAML file."""
    docs = [definition(k) for k in KINDS]
    return HEADER + yaml.safe_dump_all(docs, explicit_start=True, sort_keys=False, width=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lanner.policy.crdgen",
        description="Write the TracingPolicy and TracingPolicyNamespaced CRDs (group cilium.io, Tetragon's names "
                    "and schema) generated from lanner's policy schema. `make crds` writes "
                    "install/kubernetes/crds.yaml; apply it with `kubectl apply -f` before any policy.")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    args = parser.parse_args(argv)
    text = render()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
