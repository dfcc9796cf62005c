"""The kubelet's part, played by tests against the real API server (tests/k8s_harness.py).

No kubelet runs beside the test control plane, so a test registers its Nodes (with ``spec.podCIDR``),
creates Pods already bound to a node (``spec.nodeName``, as the scheduler would leave them), and
reports them running by patching ``pods/status`` with ``containerStatuses[].containerID``. A test that
needs a real process behind a pod passes the container id of a real containerd container
(tests/cri_harness.py) as ``container_ids``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Mapping

RUNTIME = "containerd"


@dataclass(frozen=True)
class Container:
    name: str
    image: str = "busybox:test"


@dataclass(frozen=True)
class Owner:
    """An ownerReference (e.g. the ReplicaSet of a Deployment's pod)."""

    kind: str
    name: str
    uid: str
    api_version: str = "apps/v1"
    controller: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": self.controller}


@dataclass(frozen=True)
class PodSpec:
    name: str
    node: str
    containers: tuple[Container, ...] = (Container("main"),)
    labels: Mapping[str, str] = field(default_factory=dict)
    owner: Owner | None = None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_node(core, name: str, pod_cidr: str, labels: Mapping[str, str] | None = None,
                internal_ip: str = "127.0.0.1") -> dict[str, Any]:
    """Register a Node (core: kubernetes.client.CoreV1Api) with its pod CIDR, as kubelet + IPAM would."""
    body = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}}
    core.create_node(body)
    status = {"status": {"addresses": [{"type": "InternalIP", "address": internal_ip},
                                       {"type": "Hostname", "address": name}],
                         "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                         "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}]}}
    return core.patch_node_status(name, status).to_dict()


def pod_manifest(spec: PodSpec) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": spec.name, "labels": dict(spec.labels)}
    if spec.owner is not None:
        meta["ownerReferences"] = [spec.owner.to_dict()]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": spec.node,
                     "containers": [{"name": c.name, "image": c.image} for c in spec.containers]}}


def create_pod(core, namespace: str, spec: PodSpec) -> dict[str, Any]:
    """Create a Pod already scheduled to ``spec.node`` (Pending until :func:`set_running`)."""
    return core.create_namespaced_pod(namespace, pod_manifest(spec)).to_dict()


def container_status(c: Container, container_id: str) -> dict[str, Any]:
    return {"name": c.name, "image": c.image, "imageID": f"sha256:{'0' * 64}", "ready": True,
            "restartCount": 0, "started": True, "containerID": f"{RUNTIME}://{container_id}",
            "state": {"running": {"startedAt": _now()}}}


def set_running(core, namespace: str, spec: PodSpec, container_ids: Mapping[str, str],
                pod_ip: str | None = None) -> dict[str, Any]:
    """Patch pods/status as the kubelet does once the containers run: phase, IPs, containerStatuses."""
    status: dict[str, Any] = {
        "phase": "Running", "startTime": _now(),
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": _now()}],
        "containerStatuses": [container_status(c, container_ids[c.name]) for c in spec.containers],
    }
    if pod_ip is not None:
        status.update(podIP=pod_ip, podIPs=[{"ip": pod_ip}])
    return core.patch_namespaced_pod_status(spec.name, namespace, {"status": status}).to_dict()
