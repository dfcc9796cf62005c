"""Load TracingPolicy YAML (one or many documents) into validated :class:`TracingPolicy` objects.

All or nothing: if any document of a file has an error, :class:`PolicyError` is raised with every
problem of every document (``source[doc]: path: message``) and no policy is returned, so a caller
can never half-load a file. Warnings never reject; they are attached to each policy.

The YAML reader is PyYAML's safe loader with two changes that make it read YAML the way Kubernetes
tooling does: a duplicate key in a mapping is an error (instead of silently keeping the last one),
and unquoted dates stay strings (``2024-01-01`` in an annotation is not a ``datetime``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from .errors import PolicyError, Problem, Report, SourcedProblem
from .model import TracingPolicy
from .validate import validate_document

MERGE_TAG = "tag:yaml.org,2002:merge"
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class _PolicyYAMLLoader(yaml.SafeLoader):
    """SafeLoader + duplicate-key errors + no implicit timestamps. Per-class state only."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def _construct_mapping(loader: SafeConstructor, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue  # "<<: *anchor" merges may be overridden by explicit keys
        k = loader.construct_object(key_node, deep=True)
        try:
            duplicate = k in seen
        except TypeError:
            continue  # unhashable key: SafeConstructor reports it
        if duplicate:
            raise ConstructorError("while constructing a mapping", node.start_mark,
                                   f"found duplicate key {k!r}", key_node.start_mark)
        seen[k] = key_node
    return SafeConstructor.construct_mapping(loader, node, deep=True)


_PolicyYAMLLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_problem(err: yaml.YAMLError) -> Problem:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    text = f"{context}: {problem}" if context else problem
    return Problem("", f"invalid YAML{where}: {text}")


def parse_documents(text: str | bytes) -> list[Any]:
    """The YAML documents of ``text`` (``None`` for empty ones). Raises ``yaml.YAMLError``."""
    return list(yaml.load_all(text, Loader=_PolicyYAMLLoader))


def load_policies(text: str | bytes, source: str = "<string>") -> list[TracingPolicy]:
    """Parse and validate every policy document in ``text``.

    Empty documents (a trailing ``---``, a comment-only file) are skipped; the document index in
    messages counts every document of the stream, from 0. Raises :class:`PolicyError` listing every
    problem if any document is invalid or two documents define the same policy.
    """
    problems: list[SourcedProblem] = []
    docs: list[Any] = []
    try:
        for doc in yaml.load_all(text, Loader=_PolicyYAMLLoader):
            docs.append(doc)
    except yaml.YAMLError as err:
        raise PolicyError(source, [SourcedProblem(source, len(docs), _yaml_problem(err))]) from None

    policies: list[TracingPolicy] = []
    names: dict[tuple[str, str], int] = {}
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        report = Report()
        policy = validate_document(doc, report)
        problems += [SourcedProblem(source, index, p) for p in report.errors]
        if policy is None:
            continue
        ident = (policy.namespace or "", policy.name)
        if ident in names:
            problems.append(SourcedProblem(source, index, Problem(
                "metadata.name", f"duplicate policy {policy.name!r}: document {names[ident]} already defines it")))
        names.setdefault(ident, index)
        policies.append(replace(policy, warnings=tuple(report.warnings), source=source, document=index))
    if problems:
        raise PolicyError(source, problems)
    return policies


def load_policy_file(path: str | os.PathLike[str]) -> list[TracingPolicy]:
    """:func:`load_policies` on a file's contents; ``source`` in messages is the path.

    ``OSError`` (missing file, permission) propagates unchanged: it is not a policy problem.
    """
    p = Path(path)
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PolicyError(str(p), [SourcedProblem(str(p), None, Problem("", f"not UTF-8 text: {err}"))]) from None
    return load_policies(text, source=str(p))
