"""Load TracingPolicy YAML (one or many documents) into validated :class:`TracingPolicy` objects.

All or nothing: if any document of a file has an error, :class:`PolicyError` is raised with every
problem of every document (``source[doc]: path: message``) and no policy is returned, so a caller
can never half-load a file. Warnings never reject; they are attached to each policy.

The YAML reader is PyYAML's safe loader with two changes that make it read YAML the way Kubernetes
tooling does: a duplicate key in a mapping is an error (instead of silently keeping the last one),
and unquoted dates stay strings (``2024-01-01`` in an annotation is not a ``datetime``). Whatever PyYAML
itself would raise other than a YAML error is one too, at its line: collections nested deeper than
:data:`MAX_DEPTH` (PyYAML composes recursively: deeper input exhausts Python's stack), a scalar that does not
read as its explicit tag (``!!int x``), a string with a lone surrogate (``"\\ud800"``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.reader import ReaderError

from .errors import PolicyError, Problem, Report, SourcedProblem
from .model import TracingPolicy
from .validate import validate_document

MERGE_TAG = "tag:yaml.org,2002:merge"
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
MAX_DEPTH = 100  # nested collections; a TracingPolicy needs about 10


class _PolicyYAMLLoader(yaml.SafeLoader):
    """SafeLoader + duplicate-key errors + no implicit timestamps + a nesting limit. Changes nothing shared: the
    resolvers are this class's own, the depth is counted per loader (one per stream)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ComposerError(None, None, f"collections nested deeper than {MAX_DEPTH} levels",
                                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """PyYAML's constructors raise ValueError, KeyError or AttributeError on a scalar that does not read as
        its explicit tag (``!!int x``, ``!!bool x``, ``!!timestamp x``): a YAML error at the node instead. So is
        a string with a lone surrogate (``"\\ud800"``): it is no Unicode text, and could not be encoded."""
        try:
            value = super().construct_object(node, deep=deep)
        except (ValueError, KeyError, AttributeError, TypeError, OverflowError) as exc:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            what = repr(node.value)[:80] if isinstance(node, yaml.ScalarNode) else f"this {node.id}"
            raise ConstructorError(None, None, f"{what} is not a valid {tag} ({type(exc).__name__}: {exc})",
                                   node.start_mark) from None
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError as exc:
                raise ConstructorError(None, None, f"{value[max(exc.start - 10, 0):exc.end + 10]!r} is not valid "
                                                   f"Unicode text ({exc.reason})", node.start_mark) from None
        return value


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


def _yaml_problem(err: yaml.YAMLError, source: str | bytes) -> Problem:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if isinstance(err, ReaderError):  # a character YAML does not allow: the reader has only its position
        where, problem = _reader_problem(err, source)
    text = f"{context}: {problem}" if context else problem
    return Problem("", f"invalid YAML{where}: {text}")


def _reader_problem(err: ReaderError, source: str | bytes) -> tuple[str, str]:
    """Where (" at line L, column C") and what for a character the reader refused: a character YAML does not
    allow (position counts characters) or bytes that do not decode (position counts bytes)."""
    unicode = err.encoding == "unicode"
    buf = source.decode("utf-8", "replace") if unicode and isinstance(source, bytes) else source
    nl = b"\n" if isinstance(buf, bytes) else "\n"
    line_start = buf.rfind(nl, 0, err.position) + 1  # type: ignore[arg-type]
    where = f" at line {buf.count(nl, 0, err.position) + 1}, column {err.position - line_start + 1}"  # type: ignore
    code = err.character if isinstance(err.character, int) else ord(err.character[:1] or "\0")
    what = f"character U+{code:04X} is not allowed" if unicode else f"byte 0x{code:02x} is not valid {err.encoding}"
    return where, f"{what} ({err.reason})"


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
        raise PolicyError(source, [SourcedProblem(source, len(docs), _yaml_problem(err, text))]) from None

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
