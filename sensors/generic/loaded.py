"""What the policy engine holds of each policy: the loaded ones (compiled, sets written, links), the ones whose
objects failed to load, and what each hook's events are rendered with."""

from __future__ import annotations

from dataclasses import dataclass, field

from lanner.bpf.objects import Link
from lanner.policy.model import TracingPolicy
from lanner.policy.workloads import WorkloadScope

from .plan import CompiledPolicy, HookPlan, HookUnit


@dataclass
class HookMeta:
    """What an event of one hook is rendered with: its policy's name, the hook's plan and unit."""

    policy_name: str
    plan: HookPlan
    unit: HookUnit


class Named:
    """The (name, namespace) a policy is known by (``policy`` is its TracingPolicy)."""

    policy: TracingPolicy

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def namespace(self) -> str:
        return self.policy.namespace or ""


@dataclass
class LoadedPolicy(Named):
    """A policy the engine holds: compiled, its sets written, its links (or why they failed)."""

    id: int
    policy: TracingPolicy
    compiled: CompiledPolicy
    enforce: bool
    enabled: bool = True
    links: list[Link] = field(default_factory=list)
    attach_errors: list[str] = field(default_factory=list)
    attach_failed: dict[str, str] = field(default_factory=dict)  # hook path -> why its attach failed
    scope: WorkloadScope | None = None  # the pods it runs for (TracingPolicyNamespaced, podSelector); scope id = id
    loading: bool = True  # until the engine's _add_one has written and attached everything (TP_STATE_LOADING)

    def errors(self) -> list[str]:
        return self.compiled.unavailable + self.attach_errors


@dataclass
class FailedPolicy(Named):
    """A policy the engine could not load at all (its objects failed): listed as LOAD_ERROR with the reason."""
    id: int
    policy: TracingPolicy
    reason: str
