"""Problems found while loading a TracingPolicy, and the one exception that carries them.

Why a collector instead of raising at the first problem: a policy author fixing a file wants every
problem in one pass, and the loader must reject a bad file *whole* (nothing half-loaded). So each
check appends a :class:`Problem` (``path: message``) and the loader raises a single
:class:`PolicyError` at the end if any error was recorded. Warnings use the same shape but never
reject anything; they travel with the loaded policy (``TracingPolicy.warnings``).

Paths use the field names of the YAML itself, with ``[i]`` for list items and ``[key]`` for map
keys, e.g. ``spec.kprobes[0].selectors[1].matchArgs[0].operator`` or
``spec.selectorsMacros[deny-curl].matchBinaries``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class Problem:
    """One finding: where (a field path, ``""`` for the whole document) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def child(path: str, key: str) -> str:
    """``spec`` + ``kprobes`` -> ``spec.kprobes``; an empty key (YAML allows ``"": 1``) -> ``spec[""]``."""
    if not key:
        return f'{path}[""]'
    return f"{path}.{key}" if path else key


def item(path: str, index: int) -> str:
    """``spec.kprobes`` + 0 -> ``spec.kprobes[0]``."""
    return f"{path}[{index}]"


def key(path: str, name: str) -> str:
    """A map key: ``spec.selectorsMacros`` + ``m1`` -> ``spec.selectorsMacros[m1]``."""
    return f"{path}[{name}]"


@dataclass
class Report:
    """Mutable collector used while one document is checked; never shared between documents."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.errors.append(Problem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path, message))

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class SourcedProblem:
    """A problem located in a file: ``source`` and, for multi-document YAML, the document index.

    Rendered as ``source[document]: path: message`` (``source: message`` when the problem is not
    tied to one document, e.g. unparsable YAML).
    """

    source: str
    document: int | None
    problem: Problem

    @property
    def path(self) -> str:
        return self.problem.path

    @property
    def message(self) -> str:
        return self.problem.message

    def __str__(self) -> str:
        where = self.source if self.document is None else f"{self.source}[{self.document}]"
        return f"{where}: {self.problem}"


class PolicyError(ValueError):
    """A policy file was rejected. ``problems`` lists every error found, in document order.

    ``str(err)`` is a header line followed by one indented line per problem, ready for a CLI.
    """

    def __init__(self, source: str, problems: Sequence[SourcedProblem]):
        self.source = source
        self.problems: tuple[SourcedProblem, ...] = tuple(problems)
        count = len(self.problems)
        lines = [f"{source}: policy rejected, {count} problem{'s' if count != 1 else ''}:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))

    @property
    def messages(self) -> list[str]:
        """Every problem as ``source[doc]: path: message``."""
        return [str(p) for p in self.problems]

    def problems_in(self, document: int) -> list[str]:
        """The ``path: message`` strings of one document (handy in tests and CLIs)."""
        return [str(p.problem) for p in self.problems if p.document == document]
