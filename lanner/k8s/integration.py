"""The agent's Kubernetes integration: reflectors in, one worker applying their changes, Events out.

Each reflector (TracingPolicy, TracingPolicyNamespaced, this node's Node and pods; with the datapath,
NetworkPolicy and Namespace) runs in its own thread and
puts changes on one queue; a single worker thread applies them in order (a policy load never runs on
the agent's event loop, and never concurrently with a Node relabel). Starting never waits for the API:
``start`` only starts threads, an unreachable server is a warning in the log and a state in ``status``.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

from .client import K8sConfig, describe_server, make_api_client
from .events import EventContext, EventRecorder
from .netpolicies import NetpolContext, NetworkPolicyController
from .pods import OwnerResolver, PodTable, PodTableContext
from .reflector import Change, Reflector, ReflectorContext, Resource
from .tracingpolicies import PolicyController, PolicyControllerContext

log = logging.getLogger("lanner.k8s")

TP = Resource("tracingpolicies", "/apis/cilium.io/v1alpha1/tracingpolicies")
TPN = Resource("tracingpoliciesnamespaced", "/apis/cilium.io/v1alpha1/tracingpoliciesnamespaced")


TICK_S = 1.0
NETPOL = Resource("networkpolicies", "/apis/networking.k8s.io/v1/networkpolicies")
NAMESPACES = Resource("namespaces", "/api/v1/namespaces")


def node_resource(node: str) -> Resource:
    return Resource("node", "/api/v1/nodes", field_selector=f"metadata.name={node}")


def pods_resource(node: str) -> Resource:
    return Resource("pods", "/api/v1/pods", field_selector=f"spec.nodeName={node}")


class _Resolver:
    """The encoder's pod resolver: the API's pods first, then ``fallback`` (the CNI's pod table)."""

    def __init__(self, pods: PodTable, fallback: Any) -> None:
        self.pods, self.fallback = pods, fallback

    def match(self, netns_inode: int, cgroup_id: int) -> Any:
        m = self.pods.match(netns_inode, cgroup_id)
        if m is None and self.fallback is not None:
            return self.fallback.match(netns_inode, cgroup_id)
        return m


class K8sIntegration:
    """One object the agent starts and closes; ``policy_host`` may be None (no policy engine)."""

    def __init__(self, cfg: K8sConfig, policy_host: Any = None,
                 on_workloads: Callable[[list[Any]], None] | None = None, netpol: NetpolContext | None = None) -> None:
        self.cfg = cfg
        self.host = policy_host
        self.on_workloads = on_workloads  # the pods for policy scoping (None: another source feeds it)
        self.netpol_ctx = netpol  # NetworkPolicies into the datapath (None: no datapath)
        self.pods: PodTable | None = None
        self.netpols: NetworkPolicyController | None = None
        self.error = ""  # the client could not be made (no kubeconfig, not in a cluster)
        self.server = ""
        self.api: Any = None
        self.events: EventRecorder | None = None
        self.policies: PolicyController | None = None
        self.reflectors: list[Reflector] = []
        self._handlers: dict[str, Callable[[Change], None]] = {}
        self._queue: queue.Queue[Change | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.applied = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        try:
            self.api = make_api_client(self.cfg)
        except Exception as exc:  # ConfigException, OSError: the agent runs on without the API
            self.error = f"no Kubernetes API client: {exc}"
            log.warning("--enable-k8s-api: %s", self.error)
            return
        self.server = describe_server(self.api)
        self.events = EventRecorder(EventContext(self.api, self.cfg.node_name, self.cfg.event_interval_s))
        self.events.start()
        if self.cfg.watch_policies and self.host is not None:
            self._watch_policies()
        if self.cfg.watch_pods:
            self.pods = PodTable(PodTableContext(OwnerResolver(self.api), self.on_workloads or (lambda _w: None)))
            self._add(pods_resource(self.cfg.node_name), self.pods.on_pod)
        if self.netpol_ctx is not None:
            self.netpols = NetworkPolicyController(self.netpol_ctx)
            self._add(NETPOL, self.netpols.on_change)
            self._add(NAMESPACES, self.netpols.on_namespace)
        self._worker = threading.Thread(target=self._work, name="lanner-k8s-apply", daemon=True)
        self._worker.start()
        for r in self.reflectors:
            r.start()
        log.info("Kubernetes API %s: watching %s as node %s", self.server,
                 ", ".join(r.ctx.resource.name for r in self.reflectors) or "nothing", self.cfg.node_name)

    def _watch_policies(self) -> None:
        assert self.events is not None
        self.policies = PolicyController(PolicyControllerContext(
            self.cfg.node_name, self.host.ensure_engine, self.events.record))
        self.host.add_status_source(self.policies.statuses)
        for res in (TP, TPN):
            self._add(res, self.policies.on_policy, missing_poll_s=self.cfg.crd_poll_s)
        self._add(node_resource(self.cfg.node_name), self.policies.on_node)

    def _add(self, res: Resource, handler: Callable[[Change], None], **kw: Any) -> Reflector:
        r = Reflector(ReflectorContext(self.api, res, self._queue.put, **kw))
        self.reflectors.append(r)
        self._handlers[res.name] = handler
        return r

    def pod_resolver(self, fallback: Any = None) -> Any:
        """What the event encoder asks for a process's pod; None without the pod watch."""
        return _Resolver(self.pods, fallback) if self.pods is not None else fallback

    def close(self) -> None:
        for r in self.reflectors:
            r.close()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=30)
            self._worker = None
        if self.events is not None:
            self.events.close()
        if self.api is not None:
            try:
                self.api.close()
            except Exception:
                pass

    def _work(self) -> None:
        while True:
            try:
                change = self._queue.get(timeout=TICK_S)
            except queue.Empty:
                change = False
            if change is None:
                return
            try:
                if change:
                    self._handlers[change.resource](change)
                    self.applied += 1
                if self.pods is not None:
                    self.pods.tick()
            except Exception:  # one bad object never stops the others
                log.exception("applying %s from the Kubernetes API failed", change or "a periodic check")

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """``lanner status``: the server, each watch's state, policies by outcome, Events posted."""
        out: dict[str, Any] = {"server": self.server, "error": self.error, "node": self.cfg.node_name}
        out["watches"] = {r.ctx.resource.name: {"state": r.stats.state, "objects": len(r.items()),
                                                "synced": r.stats.synced, "lists": r.stats.lists, "events": r.stats.events,
                                                "gone": r.stats.gone, "reconnects": r.stats.reconnects,
                                                "error": r.stats.last_error}
                          for r in self.reflectors}
        reachable = any(r.stats.state == "watching" or r.stats.state == "waiting for the resource"
                        for r in self.reflectors)
        out["connected"] = reachable and not self.error
        if self.policies is not None:
            out["policies"] = self.policies.counts()
        if self.pods is not None:
            out["pods"] = self.pods.status()
        if self.netpols is not None:
            out["network_policies"] = self.netpols.status()
        if self.events is not None:
            st = self.events.stats
            out["events"] = {"posted": st.posted, "rate_limited": st.limited, "failed": st.failed,
                             "last_error": st.last_error}
        return out
