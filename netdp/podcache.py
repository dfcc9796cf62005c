"""The agent's pod table: which pod (and container) a process runs in, from what the kernel reports.

Fed by the CNI service: ``add(ep)`` on ADD, ``remove(ep)`` on DEL, ``update_pod`` when a pod's labels
become known after ADD. Looked up by the event encoder once per process (the result is memoised with the
process's JSON), never per event:

* netns inode -> endpoint -> pod (every process in the pod's network namespace);
* cgroup id -> (pod, container): learned from the CRI the first time a process of an unknown cgroup is
  seen in a known pod's netns (``ListContainers`` + verbose ``ContainerStatus`` give each container's
  cgroup path; its inode under the unified hierarchy is the id ``bpf_get_current_cgroup_id`` returns).
  A cgroup the CRI does not know is remembered as such, so the CRI is asked at most once per cgroup.

Thread-safe: the CNI service writes from its thread while the agent's loop reads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from lanner.netdp.endpoint import ContainerInfo, Endpoint, PodInfo

log = logging.getLogger("lanner.netdp.podcache")

CGROUP2_ROOT = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified").is_dir() else Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class PodMatch:
    """A process's pod and, when its cgroup is a known container's, that container."""

    pod: PodInfo
    container: ContainerInfo | None = None
    image_id: str = ""  # the container image's digest reference, when known


@dataclass(frozen=True)
class RuntimeContainer:
    """What the container source tells about one container."""

    info: ContainerInfo
    sandbox_id: str
    cgroups_path: str
    image_id: str = ""


class ContainerSource(Protocol):
    """The containers (and labels) of a sandbox (the CRI in production; anything in tests)."""

    def containers_of(self, sandbox_id: str) -> list[RuntimeContainer]: ...

    def pod_labels(self, sandbox_id: str) -> dict[str, str] | None: ...


class CriContainerSource:
    """``ContainerSource`` over a ``CriClient``: one ``ListContainers`` + a verbose status per container."""

    def __init__(self, cri: object) -> None:
        self.cri = cri  # lanner.netdp.cri.client.CriClient

    def containers_of(self, sandbox_id: str) -> list[RuntimeContainer]:
        out = []
        for c in self.cri.list_containers(sandbox_id=sandbox_id):  # type: ignore[attr-defined]
            st = self.cri.container_status(c.id, verbose=True)  # type: ignore[attr-defined]
            out.append(RuntimeContainer(ContainerInfo(c.id, c.name, st.image or c.image), sandbox_id,
                                        st.cgroups_path, st.image_ref or c.image_ref))
        # the sandbox (pause) container has a cgroup too; its processes get the pod without a container
        return out

    def pod_labels(self, sandbox_id: str) -> dict[str, str] | None:
        from lanner.netdp.cri.client import CriError

        try:
            return self.cri.pod_sandbox_status(sandbox_id).labels  # type: ignore[attr-defined]
        except CriError:
            return None  # not in the runtime's store yet (containerd adds it after CNI ADD)


class PodCache:
    """Implements ``lanner.netdp.endpoint.PodResolver`` plus ``match(netns_inode, cgroup_id)``."""

    def __init__(self, containers: ContainerSource | None = None, cgroup_root: Path = CGROUP2_ROOT) -> None:
        self.containers = containers
        self.cgroup_root = cgroup_root
        self._lock = threading.Lock()
        self._by_sandbox: dict[str, Endpoint] = {}
        self._by_netns: dict[int, Endpoint] = {}
        self._by_ip: dict[str, Endpoint] = {}
        self._cgroups: dict[int, PodMatch | None] = {}  # None: asked, not a container of a known pod
        self._cgroup_sandbox: dict[int, str] = {}
        self._labels_known: set[str] = set()  # sandboxes whose labels came from the CNI service or the runtime
        self._listeners: list[Callable[[list[Endpoint]], None]] = []
        self.cri_lookups = 0
        self.cri_errors = 0

    # ------------------------------------------------------------------ listeners
    def subscribe(self, listener: Callable[[list[Endpoint]], None]) -> None:
        """Call ``listener(endpoints)`` now and after every change of the pod set or a pod's labels, with
        all endpoints (e.g. the policy engine's workload scoping). Called on the writer's thread."""
        self._listeners.append(listener)
        listener(self.endpoints())

    def _changed(self) -> None:
        if not self._listeners:
            return
        eps = self.endpoints()
        for listener in self._listeners:
            try:
                listener(eps)
            except Exception as exc:  # noqa: BLE001 - a listener must not fail the CNI request that changed a pod
                log.warning("pod table listener %r failed: %s", listener, exc)

    # ------------------------------------------------------------------ writers (CNI service)
    def add(self, ep: Endpoint) -> None:
        self._add(ep)
        self._changed()

    def _add(self, ep: Endpoint) -> None:
        with self._lock:
            old = self._by_sandbox.get(ep.container_id)
            if old is not None:
                self._drop(old)
            self._by_sandbox[ep.container_id] = ep
            if ep.pod.labels:
                self._labels_known.add(ep.container_id)
            if ep.netns_inode:
                self._by_netns[ep.netns_inode] = ep
            if ep.ipv4:
                self._by_ip[ep.ipv4] = ep
            for cg in ep.cgroup_ids:
                self._cgroups[cg] = PodMatch(ep.pod)
                self._cgroup_sandbox[cg] = ep.container_id
            # a cgroup remembered as unknown may belong to this new pod: ask again
            for cg in [c for c, m in self._cgroups.items() if m is None]:
                del self._cgroups[cg]

    def remove(self, ep: Endpoint) -> None:
        """Forget the endpoint (by its sandbox id); idempotent, as CNI DEL is."""
        with self._lock:
            cur = self._by_sandbox.get(ep.container_id)
            if cur is not None:
                self._drop(cur)
        if cur is not None:
            self._changed()

    def update_pod(self, sandbox_id: str, pod: PodInfo) -> bool:
        """Replace a pod's record (labels learned after ADD). Processes already rendered keep the old one."""
        if self._update_pod(sandbox_id, pod):
            self._changed()
            return True
        return False

    def _update_pod(self, sandbox_id: str, pod: PodInfo) -> bool:
        with self._lock:
            ep = self._by_sandbox.get(sandbox_id)
            if ep is None:
                return False
            new = dataclasses.replace(ep, pod=pod)
            self._by_sandbox[sandbox_id] = new
            self._labels_known.add(sandbox_id)
            if ep.netns_inode and self._by_netns.get(ep.netns_inode) is ep:
                self._by_netns[ep.netns_inode] = new
            if ep.ipv4 and self._by_ip.get(ep.ipv4) is ep:
                self._by_ip[ep.ipv4] = new
            for cg, sid in self._cgroup_sandbox.items():
                m = self._cgroups.get(cg)
                if sid == sandbox_id and m is not None:
                    self._cgroups[cg] = dataclasses.replace(m, pod=pod)
            return True

    def add_container(self, sandbox_id: str, container: ContainerInfo, cgroup_id: int, image_id: str = "") -> bool:
        """Register a container's cgroup directly (e.g. from a runtime hook); False if the pod is unknown."""
        with self._lock:
            ep = self._by_sandbox.get(sandbox_id)
            if ep is None:
                return False
            self._cgroups[cgroup_id] = PodMatch(ep.pod, container, image_id)
            self._cgroup_sandbox[cgroup_id] = sandbox_id
        self._changed()
        return True

    def known_containers(self, sandbox_id: str) -> list[tuple[ContainerInfo, int]]:
        """The pod's containers whose cgroup is known, with their cgroup ids."""
        with self._lock:
            return [(m.container, cg) for cg, sid in self._cgroup_sandbox.items() if sid == sandbox_id
                    and (m := self._cgroups.get(cg)) is not None and m.container is not None]

    def _drop(self, ep: Endpoint) -> None:
        self._by_sandbox.pop(ep.container_id, None)
        self._labels_known.discard(ep.container_id)
        if self._by_netns.get(ep.netns_inode) is ep:
            del self._by_netns[ep.netns_inode]
        if self._by_ip.get(ep.ipv4) is ep:
            del self._by_ip[ep.ipv4]
        for cg in [c for c, s in self._cgroup_sandbox.items() if s == ep.container_id]:
            del self._cgroup_sandbox[cg]
            self._cgroups.pop(cg, None)

    # ------------------------------------------------------------------ readers (PodResolver)
    def endpoints(self) -> list[Endpoint]:
        with self._lock:
            return list(self._by_sandbox.values())

    def endpoint(self, sandbox_id: str) -> Endpoint | None:
        return self._by_sandbox.get(sandbox_id)

    def pod_for_netns(self, netns_inode: int) -> PodInfo | None:
        ep = self._by_netns.get(netns_inode)
        return ep.pod if ep is not None else None

    def pod_for_cgroup(self, cgroup_id: int) -> PodInfo | None:
        m = self._cgroups.get(cgroup_id)
        return m.pod if m is not None else None

    def pod_for_ip(self, ipv4: str) -> PodInfo | None:
        ep = self._by_ip.get(ipv4)
        return ep.pod if ep is not None else None

    def match(self, netns_inode: int, cgroup_id: int) -> PodMatch | None:
        """The pod (and container) of a process; None for a host process. Two dict lookups on a hit."""
        m = self._cgroups.get(cgroup_id)
        if m is not None:
            return m
        ep = self._by_netns.get(netns_inode)
        if ep is None:
            return None
        if cgroup_id and cgroup_id not in self._cgroups and self.containers is not None:
            m = self._learn(ep, cgroup_id)
            if m is not None:
                return m
            ep = self._by_netns.get(netns_inode, ep)  # labels may have been learned meanwhile
        return PodMatch(ep.pod)

    def _learn(self, ep: Endpoint, cgroup_id: int) -> PodMatch | None:
        """Ask the container source for the sandbox's containers and index their cgroups.

        Labels: CNI does not carry them and containerd knows a sandbox only after ADD, so a pod added
        without labels gets them from the runtime here, on the first process of one of its containers.
        """
        sid = ep.container_id
        self.cri_lookups += 1
        labels = None
        try:
            found = self.containers.containers_of(sid)  # type: ignore[union-attr]
            if sid not in self._labels_known:
                labels = self.containers.pod_labels(sid)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - the runtime may be slow or gone: the pod is still known
            self.cri_errors += 1
            log.debug("containers of sandbox %s: %s", sid[:12], exc)
            return None
        if labels is not None and sid in self._by_sandbox:
            cur = self._by_sandbox[sid].pod
            self.update_pod(sid, dataclasses.replace(cur, labels=tuple(sorted(labels.items()))))
        with self._lock:
            if self._by_sandbox.get(sid) is None:
                return None  # removed meanwhile
            pod = self._by_sandbox[sid].pod
            # until the runtime knows the sandbox (labels unknown) nothing is cached: the next process asks again
            settled = sid in self._labels_known
            result = None
            for rc in found:
                cg = self._cgroup_of(rc.cgroups_path)
                if not cg:
                    continue
                m = PodMatch(pod, rc.info, rc.image_id)
                if cg == cgroup_id:
                    result = m
                if settled:
                    self._cgroups[cg] = m
                    self._cgroup_sandbox[cg] = sid
            if result is None and settled:
                self._cgroups[cgroup_id] = None  # not a container the runtime knows: don't ask again
                self._cgroup_sandbox[cgroup_id] = sid
        if settled and found:
            self._changed()  # containers learned: container-scoped policies may now cover them
        return result

    def _cgroup_of(self, cgroups_path: str) -> int:
        if not cgroups_path or ":" in cgroups_path:  # systemd-style "slice:prefix:name" is not a path
            return 0
        try:
            return os.stat(self.cgroup_root / cgroups_path.lstrip("/")).st_ino
        except OSError:
            return 0

    def __len__(self) -> int:
        return len(self._by_sandbox)


__all__ = ["ContainerSource", "CriContainerSource", "PodCache", "PodMatch", "RuntimeContainer"]
