"""A small structural-schema validator: the subset of OpenAPI v3 that Tetragon's CRD uses.

Why not a JSON-schema library: the CRD is a Kubernetes *structural* schema, and what matters is how
the Kubernetes API server treats it (unknown fields rejected, ``null`` equal to absent, defaults
applied *before* ``required`` is checked, CEL rules). This module reproduces exactly that, in
~200 lines, with error messages that name the field path::

    spec.kprobes[0].selectors[1].matchArgs[0].operator: 'Prefx' is not one of ['Equal', ...]

A schema is a tree of immutable :class:`Node` objects (built with :func:`obj`, :func:`arr`,
:func:`string`, :func:`integer`, :func:`boolean`, :func:`mapping`, :func:`anything`). CEL rules
(``x-kubernetes-validations``) are plain Python predicates in :class:`Rule`.
:func:`conform` walks a parsed YAML value against a node, records problems, and returns a copy with
nulls dropped and defaults applied.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .errors import Report, child, item, key
from .model import FrozenDict

NO_DEFAULT = object()

INT_RANGES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)})


@dataclass(frozen=True)
class Rule:
    """A cross-field rule on an object (the CRD's CEL ``x-kubernetes-validations``).

    ``check`` gets the defaulted object and returns an error message, or ``None`` when it holds.
    ``at`` is the field the message is about (appended to the object's path), ``""`` for the
    object itself. Rules must tolerate ill-typed fields: they run even when other problems were
    found, so that one pass reports everything.
    """

    check: Callable[[Mapping[str, Any]], str | None]
    at: str = ""


@dataclass(frozen=True)
class Node:
    """One schema node. ``type`` is object, array, string, integer, boolean or any."""

    type: str
    properties: FrozenDict[str, "Node"] | None = None  # object fields (closed set)
    additional: "Node | None" = None  # object used as a map: schema of every value
    items: "Node | None" = None
    required: tuple[str, ...] = ()
    enum: tuple[Any, ...] | None = None
    default: Any = NO_DEFAULT
    max_items: int | None = None
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None
    format: str | None = None
    rules: tuple[Rule, ...] = ()

    @property
    def has_default(self) -> bool:
        return self.default is not NO_DEFAULT


# ----------------------------------------------------------------------------------- builders
def obj(properties: Mapping[str, Node], *, required: tuple[str, ...] = (), rules: tuple[Rule, ...] = ()) -> Node:
    return Node("object", properties=FrozenDict(properties), required=required, rules=rules)


def mapping(values: Node) -> Node:
    return Node("object", additional=values)


def arr(items: Node, *, max_items: int | None = None) -> Node:
    return Node("array", items=items, max_items=max_items)


def string(*, enum: tuple[str, ...] | None = None, default: Any = NO_DEFAULT, max_length: int | None = None,
           pattern: str | None = None) -> Node:
    return Node("string", enum=enum, default=default, max_length=max_length, pattern=pattern)


def integer(fmt: str = "int32", *, minimum: int | None = None, maximum: int | None = None) -> Node:
    return Node("integer", format=fmt, minimum=minimum, maximum=maximum)


def boolean(*, default: Any = NO_DEFAULT) -> Node:
    return Node("boolean", default=default)


def anything() -> Node:
    return Node("any")


# ------------------------------------------------------------------------------------ checking
def describe(value: Any) -> str:
    """How a value reads in a type error: ``integer 5``, ``string 'x'``, ``array``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_ok(value: Any, type_: str) -> bool:
    if type_ == "any":
        return True
    if type_ == "object":
        return isinstance(value, dict)
    if type_ == "array":
        return isinstance(value, list)
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ == "boolean":
        return isinstance(value, bool)
    raise ValueError(f"unknown schema type {type_!r}")


def conform(value: Any, node: Node, path: str, report: Report) -> Any:
    """Check ``value`` against ``node``; return it with nulls dropped and defaults applied.

    Problems go to ``report`` as errors. The returned value is only meaningful when no error was
    recorded (callers stop at the first failing document).
    """
    if not _type_ok(value, node.type):
        report.error(path, f"expected {'a map' if node.additional else node.type}, got {describe(value)}")
        return value
    if node.type == "object":
        return _conform_object(value, node, path, report)
    if node.type == "array":
        if node.max_items is not None and len(value) > node.max_items:
            report.error(path, f"must have at most {node.max_items} item{'s' if node.max_items != 1 else ''}, "
                               f"got {len(value)}")
        assert node.items is not None
        return [conform(v, node.items, item(path, i), report) for i, v in enumerate(value)]
    if node.type == "string":
        _check_string(value, node, path, report)
    elif node.type == "integer":
        _check_integer(value, node, path, report)
    return value


def _check_string(value: str, node: Node, path: str, report: Report) -> None:
    if node.enum is not None and value not in node.enum:
        report.error(path, f"{value!r} is not one of {list(node.enum)!r}")
        return
    if node.max_length is not None and len(value) > node.max_length:
        report.error(path, f"must be at most {node.max_length} characters, got {len(value)}")
    if node.pattern is not None and not re.search(node.pattern, value):
        report.error(path, f"{value!r} does not match {node.pattern!r}")


def _check_integer(value: int, node: Node, path: str, report: Report) -> None:
    lo, hi = INT_RANGES.get(node.format or "", (None, None))
    if lo is not None and not lo <= value <= hi:
        report.error(path, f"{value} does not fit in {node.format}")
        return
    if node.minimum is not None and value < node.minimum:
        report.error(path, f"must be >= {node.minimum}, got {value}")
    if node.maximum is not None and value > node.maximum:
        report.error(path, f"must be <= {node.maximum}, got {value}")


def _conform_object(value: dict, node: Node, path: str, report: Report) -> dict:
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            report.error(key(path, repr(k)), f"keys must be strings, got {describe(k)}")
            continue
        if node.additional is not None:
            out[k] = conform(v, node.additional, key(path, k), report)
            continue
        props = node.properties or FrozenDict()
        if k not in props:
            report.error(child(path, k), f"unknown field{_suggest(k, props)}")
            continue
        if v is None:
            continue  # the API server drops nulls of non-nullable fields: same as absent
        out[k] = conform(v, props[k], child(path, k), report)
    for name, prop in (node.properties or FrozenDict()).items():
        if name not in out and prop.has_default:
            out[name] = copy.deepcopy(prop.default)
    for name in node.required:
        if name not in out:
            report.error(child(path, name), "required field is missing")
    for rule in node.rules:
        message = rule.check(out)
        if message:
            report.error(child(path, rule.at) if rule.at else path, message)
    return out


def _suggest(name: str, props: Mapping[str, Node]) -> str:
    close = difflib.get_close_matches(name, list(props), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
