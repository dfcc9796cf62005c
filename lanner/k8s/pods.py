"""This node's pods from the API (field selector ``spec.nodeName``), tied to the processes that run in them.

A pod's ``status.containerStatuses[].containerID`` (``containerd://<id>``) names the runtime's container;
its cgroup v2 directory carries that id in its name (``.../pod<uid>/<id>``, ``cri-containerd-<id>.scope``),
so one walk of the cgroup tree maps each container to its cgroup id (what the kernel reports with every
process) and, through a process of that cgroup, to the pod's network namespace. A container not in the
tree yet is looked for again every second. The workload is the pod's controller: a ReplicaSet's own
controller (a Deployment) is read once per ReplicaSet; without one the pod is its own workload.

``match(netns, cgroup_id)`` is what the event encoder calls, once per process: dictionary look-ups only.
A deleted pod stays matchable for ``deleted_ttl_s`` (its last processes' exit events and late execs still
name it). ``workloads()`` feeds policy scoping (TracingPolicyNamespaced, podSelector, containerSelector).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lanner.netdp.endpoint import ContainerInfo, PodInfo
from lanner.netdp.podcache import CGROUP2_ROOT, PodMatch

from .reflector import DELETED, SYNCED, Change

log = logging.getLogger("lanner.k8s")

RESCAN_S = 1.0


@dataclass
class _Pod:
    info: PodInfo
    containers: dict[str, ContainerInfo]  # container id -> name, image
    image_ids: dict[str, str]
    cgroups: dict[str, int] = field(default_factory=dict)  # container id -> cgroup id, once found
    netns: int = 0


@dataclass(frozen=True)
class PodTableContext:
    owner_of: Callable[[str, dict], tuple[str, str]]  # (namespace, controller ownerReference) -> (name, kind)
    on_workloads: Callable[[list[Any]], None] = lambda _w: None  # policy scoping's pod set changed
    cgroup_root: Path = CGROUP2_ROOT
    deleted_ttl_s: float = 60.0


def container_id(raw: str) -> str:
    """``containerd://abc`` -> ``abc``."""
    return raw.split("://", 1)[-1]


def _controller(obj: dict) -> dict | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), refs[0] if refs else None)


class PodTable:
    def __init__(self, ctx: PodTableContext) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._pods: dict[str, _Pod] = {}  # pod uid -> pod
        self._deleted: dict[str, tuple[_Pod, float]] = {}  # pod uid -> (pod, forget at)
        self._by_cid: dict[str, str] = {}  # container id -> pod uid
        self._by_cgroup: dict[int, str] = {}  # cgroup id -> container id
        self._by_netns: dict[int, str] = {}  # netns inode -> pod uid
        self._last_scan = 0.0
        self.scans = 0

    # ------------------------------------------------------------------ the encoder's side
    def match(self, netns_inode: int, cgroup_id: int) -> PodMatch | None:
        cid = self._by_cgroup.get(cgroup_id)
        if cid is not None:
            pod = self._get(self._by_cid.get(cid, ""))
            if pod is not None and cid in pod.containers:
                return PodMatch(pod.info, pod.containers[cid], pod.image_ids.get(cid, ""))
        pod = self._get(self._by_netns.get(netns_inode, "")) if netns_inode else None
        return PodMatch(pod.info) if pod is not None else None

    def _get(self, uid: str) -> _Pod | None:
        pod = self._pods.get(uid)
        if pod is None:
            gone = self._deleted.get(uid)
            pod = gone[0] if gone is not None else None
        return pod

    # ------------------------------------------------------------------ changes (the integration's worker)
    def on_pod(self, change: Change) -> None:
        if change.type == SYNCED:
            self._publish()
            return
        uid = str((change.obj.get("metadata") or {}).get("uid", ""))
        if change.type == DELETED:
            with self._lock:
                pod = self._pods.pop(uid, None)
                if pod is not None:
                    self._deleted[uid] = (pod, time.monotonic() + self.ctx.deleted_ttl_s)
        else:
            self._put(uid, change.obj)
            self._resolve()
        self._publish()

    def _put(self, uid: str, obj: dict) -> None:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        owner = _controller(obj)
        workload, kind = self.ctx.owner_of(ns, owner) if owner else (name, "Pod")
        containers, image_ids = {}, {}
        for st in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            if st.get("containerID"):
                cid = container_id(st["containerID"])
                containers[cid] = ContainerInfo(cid, st.get("name", ""), st.get("image", ""))
                image_ids[cid] = st.get("imageID", "")
        info = PodInfo(ns, name, uid, tuple(sorted((meta.get("labels") or {}).items())),
                       tuple(containers.values()), workload=workload, workload_kind=kind)
        with self._lock:
            old = self._pods.get(uid)
            pod = _Pod(info, containers, image_ids)
            if old is not None:
                pod.cgroups = {c: g for c, g in old.cgroups.items() if c in containers}
                pod.netns = old.netns
            self._pods[uid] = pod
            self._deleted.pop(uid, None)
            for cid in containers:
                self._by_cid[cid] = uid

    def tick(self) -> None:
        """Once a second: look for containers not in the cgroup tree before, forget pods deleted long ago."""
        now = time.monotonic()
        expired = [uid for uid, (_, at) in self._deleted.items() if at <= now]
        for uid in expired:
            self._forget(uid)
        if now - self._last_scan >= RESCAN_S and self._resolve():
            self._publish()

    def _forget(self, uid: str) -> None:
        with self._lock:
            pod, _ = self._deleted.pop(uid)
            if uid in self._pods:
                return
            for cid, cg in pod.cgroups.items():
                if self._by_cid.get(cid) == uid:
                    del self._by_cid[cid]
                if self._by_cgroup.get(cg) == cid:
                    del self._by_cgroup[cg]
            if pod.netns and self._by_netns.get(pod.netns) == uid:
                del self._by_netns[pod.netns]

    # ------------------------------------------------------------------ cgroups
    def _resolve(self) -> bool:
        """Find the cgroups of containers not mapped yet; True when some were found."""
        want = {cid: uid for uid, p in list(self._pods.items()) for cid in p.containers if cid not in p.cgroups}
        if not want:
            return False
        self._last_scan = time.monotonic()
        self.scans += 1
        found = _scan(self.ctx.cgroup_root, set(want))
        with self._lock:
            for cid, (cg, path) in found.items():
                pod = self._pods.get(want[cid])
                if pod is None:
                    continue
                pod.cgroups[cid] = cg
                self._by_cgroup[cg] = cid
                if not pod.netns:
                    pod.netns = _netns_of(path)
                    if pod.netns:
                        self._by_netns[pod.netns] = want[cid]
        return bool(found)

    def _publish(self) -> None:
        from lanner.policy.workloads import Container, Workload, image_repo

        pods = list(self._pods.values())
        self.ctx.on_workloads([Workload(p.info.namespace, p.info.label_dict(), p.netns, tuple(
            Container(c.name, image_repo(c.image), p.cgroups.get(cid, 0)) for cid, c in p.containers.items()))
            for p in pods])

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        pods = list(self._pods.values())
        return {"pods": len(pods), "deleted_kept": len(self._deleted),
                "containers": sum(len(p.containers) for p in pods),
                "containers_with_cgroup": sum(len(p.cgroups) for p in pods), "cgroup_scans": self.scans}


def _scan(root: Path, ids: set[str]) -> dict[str, tuple[int, str]]:
    """container id -> (cgroup id, path) for every id found in a cgroup directory's name under ``root``."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            for cid in ids:
                if cid in d and cid not in out:
                    path = os.path.join(dirpath, d)
                    try:
                        out[cid] = (os.stat(path).st_ino, path)
                    except OSError:
                        pass
    return out


def _netns_of(cgroup_path: str) -> int:
    """The network namespace inode of the first process in the cgroup (0 if none or unreadable)."""
    try:
        pids = Path(cgroup_path, "cgroup.procs").read_text().split()
        for pid in pids:
            try:
                return os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue
    except OSError:
        pass
    return 0


class OwnerResolver:
    """(namespace, controller ownerReference) -> (workload name, kind): a ReplicaSet's controller (its
    Deployment) read from the API once per ReplicaSet; the reference itself when that fails."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self._rs: dict[tuple[str, str], tuple[str, str]] = {}
        self.errors = 0

    def __call__(self, namespace: str, ref: dict) -> tuple[str, str]:
        name, kind = str(ref.get("name", "")), str(ref.get("kind", ""))
        if kind != "ReplicaSet":
            return name, kind
        key = (namespace, name)
        if key not in self._rs:
            self._rs[key] = self._replicaset_owner(namespace, name)
        return self._rs[key]

    def _replicaset_owner(self, namespace: str, name: str) -> tuple[str, str]:
        from kubernetes import client

        try:
            rs = client.AppsV1Api(self.api).read_namespaced_replica_set(name, namespace, _request_timeout=(5, 10))
        except Exception as exc:  # RBAC, gone already: the ReplicaSet is the workload
            self.errors += 1
            log.debug("ReplicaSet %s/%s: %s", namespace, name, exc)
            return name, "ReplicaSet"
        refs = rs.metadata.owner_references or []
        owner = next((r for r in refs if r.controller), refs[0] if refs else None)
        return (owner.name, owner.kind) if owner is not None else (name, "ReplicaSet")
