"""CRI sandbox status -> the shared pod/endpoint records (for a node whose CNI is not lanner's).

With lanner as the CNI, the CNI service feeds the PodCache on ADD. With another CNI, the agent can still
name pods: every ready sandbox the CRI lists becomes an ``Endpoint`` keyed by its netns inode
(``sync_pod_cache``), without datapath fields (endpoint id 0, no host interface).
"""

from __future__ import annotations

import logging
import os

from lanner.netdp.cri.client import CriClient, CriError, SandboxStatus
from lanner.netdp.endpoint import IDENTITY_UNKNOWN, Endpoint, PodInfo

log = logging.getLogger("lanner.netdp.cri")


def pod_info(st: SandboxStatus) -> PodInfo:
    return PodInfo(namespace=st.namespace, name=st.name, uid=st.uid, labels=tuple(sorted(st.labels.items())))


def sandbox_endpoint(st: SandboxStatus) -> Endpoint | None:
    """The endpoint record of a sandbox from its verbose status; None without a network namespace."""
    path = st.netns_path
    if not path:
        return None
    try:
        inode = os.stat(path).st_ino
    except OSError:
        return None
    return Endpoint(endpoint_id=0, container_id=st.id, ifname="eth0", netns=path, netns_inode=inode,
                    host_ifname="", host_ifindex=0, ipv4=st.ip, mac="", identity=IDENTITY_UNKNOWN, pod=pod_info(st))


def sync_pod_cache(cri: CriClient, cache: object) -> int:
    """Add every ready sandbox the runtime lists to ``cache`` (a PodCache); returns how many were added."""
    n = 0
    for sb in cri.list_pod_sandbox(ready_only=True):
        try:
            ep = sandbox_endpoint(cri.pod_sandbox_status(sb.id, verbose=True))
        except CriError as exc:
            log.debug("sandbox %s: %s", sb.id[:12], exc)
            continue
        if ep is not None:
            cache.add(ep)  # type: ignore[attr-defined]
            n += 1
    return n


__all__ = ["pod_info", "sandbox_endpoint", "sync_pod_cache"]
