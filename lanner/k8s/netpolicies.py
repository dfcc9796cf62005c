"""NetworkPolicy objects from the API into the eBPF datapath, beside those of --network-policy-dir.

Each object is checked by the same parser as the files (lanner.netdp.netpolicy); one it refuses is
left out with its reason (in the log and ``lanner status``), the others stay in force. The whole set
(files + API) is handed to the datapath after the first complete list and after every change since
(never a half-listed set). A set the datapath's maps cannot hold leaves the previous one in force.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from .reflector import DELETED, SYNCED, Change, key_of

log = logging.getLogger("lanner.k8s")


@dataclass(frozen=True)
class NetpolContext:
    apply: Callable[[list[Any]], None]  # the whole NetworkPolicy set (files first) -> the datapath
    files: tuple[Any, ...] = ()  # the policies of --network-policy-dir, loaded at start


@dataclass
class NetpolStats:
    applied: int = 0  # sets handed to the datapath
    refused: dict[str, str] = field(default_factory=dict)  # namespace/name -> why the parser refused it
    last_error: str = ""  # the datapath refused the last set


class NetworkPolicyController:
    def __init__(self, ctx: NetpolContext) -> None:
        self.ctx = ctx
        self.stats = NetpolStats()
        self._policies: dict[str, Any] = {}
        self._synced = False

    def on_change(self, change: Change) -> None:
        from lanner.netdp.netpolicy import NetworkPolicyError, parse_network_policy

        if change.type == SYNCED:
            self._synced = True
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
        if self._synced:
            self._push()

    def _push(self) -> None:
        policies = list(self.ctx.files) + [self._policies[k] for k in sorted(self._policies)]
        try:
            self.ctx.apply(policies)
        except Exception as exc:  # DatapathError (maps full), closed: the previous set stays in force
            self.stats.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("NetworkPolicies from the API not applied: %s", self.stats.last_error)
            return
        self.stats.applied += 1
        self.stats.last_error = ""

    def status(self) -> dict:
        return {"from_api": len(self._policies), "files": len(self.ctx.files), "applied": self.stats.applied,
                "refused": dict(self.stats.refused), "error": self.stats.last_error}


def netpol_context(netdp: Any) -> NetpolContext | None:
    """What the agent's datapath (lanner.netdp.runtime.NetdpRuntime) takes; None without a datapath."""
    if netdp is None or getattr(netdp, "datapath", None) is None:
        return None
    files: tuple[Any, ...] = ()
    if netdp.cfg.network_policy_dir is not None:
        from lanner.netdp.netpolicy import load_network_policies

        files = tuple(load_network_policies(netdp.cfg.network_policy_dir))
    return NetpolContext(netdp.datapath.set_network_policies, files)
