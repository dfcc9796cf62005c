"""The TracingPolicy language: parse and validate Tetragon-compatible TracingPolicy YAML (no kernel here:
the generic sensor that runs policies is lanner.sensors.generic).

Entry points::

    from lanner.policy import load_policies, load_policy_file, PolicyError

    policies = load_policy_file("policy.yaml")      # list[TracingPolicy], or PolicyError
    for kind, hook, spec in policies[0].hooks(): ...
    for req in policies[0].hook_requirements(): ...  # what kernel mechanism each hook needs

Modules, one job each: ``loader`` (YAML, multi-document, all-or-nothing), ``schema`` (structural
schema checker), ``crd`` (the schema itself), ``validate`` and ``selectors`` (semantic checks and
model building), ``model`` (frozen dataclasses, ``to_dict``), ``values`` and ``names`` (value
parsers and kernel constants), ``hooks`` (mechanism classification), ``errors``.
See docs/policy.md.
"""

from .errors import PolicyError, Problem, SourcedProblem
from .hooks import HookRequirement, Mechanism, Need, Way, classify
from .loader import load_policies, load_policy_file
from .model import (
    Action, ArgSpec, Enforcer, FrozenDict, Hook, IntRange, KProbeSpec, LabelSelector, LabelSelectorRequirement,
    ListRef, ListSpec, LsmHookSpec, MatchArg, MatchBinaries, MatchCapabilities, MatchNamespaceChanges,
    MatchNamespaces, MatchPIDs, Metadata, Option, PolicyOptions, Selector, Spec, TracepointSpec, TracingPolicy,
    UProbeSpec, USDTSpec, Workloads,
)

__all__ = [
    "Action", "ArgSpec", "Enforcer", "FrozenDict", "Hook", "HookRequirement", "IntRange", "KProbeSpec",
    "LabelSelector", "LabelSelectorRequirement", "ListRef", "ListSpec", "LsmHookSpec", "MatchArg",
    "MatchBinaries", "MatchCapabilities", "MatchNamespaceChanges", "MatchNamespaces", "MatchPIDs", "Mechanism",
    "Metadata", "Need", "Option", "PolicyError", "PolicyOptions", "Problem", "Selector", "SourcedProblem", "Spec",
    "TracepointSpec", "TracingPolicy", "UProbeSpec", "USDTSpec", "Way", "Workloads", "classify",
    "load_policies", "load_policy_file",
]
