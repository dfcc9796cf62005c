"""NetworkPolicy and Namespace objects from the API into the eBPF datapath, beside --network-policy-dir's.

Each NetworkPolicy is checked by the same parser as the files (lanner.netdp.netpolicy); one it refuses
is left out with its reason (in the log and ``lanner status``), the others stay in force. Namespaces give
their labels, which a ``namespaceSelector`` matches (as Cilium's ``io.cilium.k8s.namespace.labels.*``;
``kubernetes.io/metadata.name`` is the name). The whole set (files + API) and the namespace labels are
handed to the datapath once both lists are complete and after every change since (never a half-listed
set); a namespace relabel re-evaluates the policies when some policy has a namespaceSelector. A set the
datapath's maps cannot hold leaves the previous one in force.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from .reflector import DELETED, SYNCED, Change, key_of

log = logging.getLogger("lanner.k8s")

NETPOL, NAMESPACES = "networkpolicies", "namespaces"


@dataclass(frozen=True)
class NetpolContext:
    # the whole NetworkPolicy set (files first) and every namespace's labels -> the datapath
    apply: Callable[[list[Any], dict[str, dict[str, str]]], None]
    files: tuple[Any, ...] = ()  # the policies of --network-policy-dir, loaded at start


@dataclass
class NetpolStats:
    applied: int = 0  # sets handed to the datapath
    refused: dict[str, str] = field(default_factory=dict)  # namespace/name -> why the parser refused it
    last_error: str = ""  # the datapath refused the last set
    relabels: int = 0  # namespace label changes that re-evaluated the policies


class NetworkPolicyController:
    def __init__(self, ctx: NetpolContext) -> None:
        self.ctx = ctx
        self.stats = NetpolStats()
        self._policies: dict[str, Any] = {}
        self._namespaces: dict[str, dict[str, str]] = {}
        self._synced: set[str] = set()

    def on_change(self, change: Change) -> None:
        """A NetworkPolicy change (reflector ``networkpolicies``)."""
        from lanner.netdp.netpolicy import NetworkPolicyError, parse_network_policy

        if change.type == SYNCED:
            self._synced.add(NETPOL)
        else:
            key = key_of(change.obj)
            self._policies.pop(key, None)
            self.stats.refused.pop(key, None)
            if change.type != DELETED:
                try:
                    self._policies[key] = parse_network_policy(change.obj, f"NetworkPolicy {key}")
                except NetworkPolicyError as exc:
                    self.stats.refused[key] = str(exc)
                    log.warning("%s: left out of the datapath", exc)
        self._push()

    def on_namespace(self, change: Change) -> None:
        """A Namespace change (reflector ``namespaces``): only a change of its labels matters."""
        if change.type == SYNCED:
            first = NAMESPACES not in self._synced
            self._synced.add(NAMESPACES)
            if first:
                self._push()
            return
        name = str((change.obj.get("metadata") or {}).get("name", ""))
        before = self._namespaces.pop(name, None)
        after = None if change.type == DELETED else _labels(change.obj)
        if after is not None:
            self._namespaces[name] = after
        if before == after:
            return
        if NAMESPACES in self._synced and self._uses_namespaces():
            self.stats.relabels += 1
            self._push()

    def _uses_namespaces(self) -> bool:
        return any(p.selects_namespaces() for p in list(self.ctx.files) + list(self._policies.values()))

    def _push(self) -> None:
        if self._synced != {NETPOL, NAMESPACES}:
            return
        policies = list(self.ctx.files) + [self._policies[k] for k in sorted(self._policies)]
        try:
            self.ctx.apply(policies, {n: dict(v) for n, v in self._namespaces.items()})
        except Exception as exc:  # DatapathError (maps full), closed: the previous set stays in force
            self.stats.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("NetworkPolicies from the API not applied: %s", self.stats.last_error)
            return
        self.stats.applied += 1
        self.stats.last_error = ""

    def status(self) -> dict:
        return {"from_api": len(self._policies), "files": len(self.ctx.files), "applied": self.stats.applied,
                "namespaces": len(self._namespaces), "relabels": self.stats.relabels,
                "refused": dict(self.stats.refused), "error": self.stats.last_error}


def _labels(obj: dict) -> dict[str, str]:
    raw = (obj.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in raw.items()}


def netpol_context(netdp: Any) -> NetpolContext | None:
    """What the agent's datapath (lanner.netdp.runtime.NetdpRuntime) takes; None without a datapath."""
    if netdp is None or getattr(netdp, "datapath", None) is None:
        return None
    files: tuple[Any, ...] = ()
    if netdp.cfg.network_policy_dir is not None:
        from lanner.netdp.netpolicy import load_network_policies

        files = tuple(load_network_policies(netdp.cfg.network_policy_dir))
    datapath = netdp.datapath

    def apply(policies: list[Any], namespaces: dict[str, dict[str, str]]) -> None:
        datapath.set_network_policies(policies, namespaces=namespaces)

    return NetpolContext(apply, files)
