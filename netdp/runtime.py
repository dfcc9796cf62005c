"""NetdpRuntime: the agent's networking half, composed from its parts.

identity store (LocalFileStore in the state dir) + IPAM (the node's pod CIDR) + gateway device + eBPF
datapath (optional) + NetworkPolicies from YAML + pod cache (optional) + the CNI service on its unix
socket (own thread). The agent starts it with ``--enable-netdp`` and pulls flow events from it in its
loop; ``lanner cni serve`` runs it alone (no security sensors) for a CNI-only node or a test.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanner.netdp import veth
from lanner.netdp.cni.protocol import DEFAULT_SOCKET
from lanner.netdp.cni.service import CniService, CniSocketServer, LabelSource, ServiceConfig
from lanner.netdp.ipam import Ipam

log = logging.getLogger("lanner.netdp")

DEFAULT_STATE_DIR = Path("/var/lib/lanner/netdp")
DEFAULT_PIN_DIR = Path("/sys/fs/bpf/lanner/netdp")
CRASH_ENV = "LANNER_NETDP_CRASH_AT"


@dataclass(frozen=True)
class NetdpConfig:
    pod_cidr: str
    state_dir: Path = DEFAULT_STATE_DIR
    cni_socket: Path = Path(DEFAULT_SOCKET)
    network_policy_dir: Path | None = None
    datapath: bool = True  # load the eBPF datapath (TC programs, identities, policy, flows)
    pin_dir: Path = DEFAULT_PIN_DIR
    mtu: int = 1500
    gateway_device: str = veth.GATEWAY_DEVICE
    crash_at: str = ""  # test hook, see ServiceConfig
    node_name: str = ""  # in flow events; "" = hostname
    cri_socket: Path | None = None  # the runtime's CRI socket: pod labels and containers (None: namespace only)
    cluster: Any = None  # lanner.netdp.cluster.ClusterConfig: state in etcd, routes to other nodes (None: one node)
    host_routing: bool = True  # pod-to-pod packets on this node skip the node's stack (bpf_redirect_peer)


class NetdpRuntime:
    def __init__(self, cfg: NetdpConfig, labels: LabelSource | None = None) -> None:
        self.cfg = cfg
        self.labels = labels
        self._own_labels = False
        self.ipam: Ipam | None = None
        self.store: Any = None
        self.datapath: Any = None
        self.pod_cache: Any = None
        self.service: CniService | None = None
        self.server: CniSocketServer | None = None
        self.cluster: Any = None  # ClusterNode in cluster mode
        self._flows: Any = None

    def start(self) -> None:
        """Bring everything up; on failure undo what was done and re-raise."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        t0 = time.monotonic()
        from lanner.netdp.identity import LocalFileStore

        self.ipam = Ipam(self.cfg.pod_cidr, self.cfg.state_dir)
        mtu = self.cfg.mtu
        if self.cfg.cluster is not None:
            from lanner.netdp.cluster import ClusterNode

            self.cluster = ClusterNode(self.cfg.cluster)
            self.store = self.cluster.store
            mtu = min(mtu, self.cluster.pod_mtu())
        else:
            self.store = LocalFileStore(self.cfg.state_dir / "identity.json")
        veth.ensure_gateway(self.ipam.gateway, self.cfg.gateway_device)
        if not _forwarding():
            log.warning("net.ipv4.ip_forward is 0 in the agent's netns: pods reach the gateway but not each "
                        "other through the node (lanner does not change it)")
        if self.cfg.datapath:
            self._start_datapath()
        self._start_pod_sources()
        if self.cluster is not None and self.datapath is not None:
            self.cluster.attach(self.datapath)
        max_mtu = self.cluster.pod_mtu() if self.cluster is not None else 65535
        self.service = CniService(self.ipam, ServiceConfig(mtu=mtu, max_mtu=max_mtu, crash_at=self.cfg.crash_at),
                                  self.store, self.datapath, self.labels, self.pod_cache,
                                  extra_sinks=(self.cluster,) if self.cluster is not None else ())
        restored = self.service.restore()
        self.server = CniSocketServer(self.cfg.cni_socket, self.service)
        log.info("netdp ready in %.3f s: pod CIDR %s, gateway %s, %d endpoints restored, CNI socket %s, "
                 "datapath %s", time.monotonic() - t0, self.ipam.cidr, self.ipam.gateway, restored,
                 self.cfg.cni_socket, "on" if self.datapath is not None else "off")

    def _start_pod_sources(self) -> None:
        """PodCache (enrichment) and, with --cri-socket, pod labels and containers from the CRI."""
        try:
            from lanner.netdp.podcache import CriContainerSource, PodCache
        except ImportError as exc:
            log.info("pod cache unavailable (%s): security events are not enriched with pods", exc)
            return
        containers = None
        if self.cfg.cri_socket is not None:
            from lanner.netdp.cri.client import CriClient
            from lanner.netdp.cri.labels import CriLabelSource

            containers = CriContainerSource(CriClient(self.cfg.cri_socket))
            if self.labels is None:
                self.labels = CriLabelSource(self.cfg.cri_socket)
                self._own_labels = True
        self.pod_cache = PodCache(containers)

    def _start_datapath(self) -> None:
        try:
            from lanner.netdp.datapath import Datapath
        except ImportError as exc:
            log.warning("eBPF datapath unavailable (%s): pods get plain routed veths, no policy, no flows", exc)
            return
        host_ips = [self.ipam.gateway] + ([self.cfg.cluster.node_ip] if self.cfg.cluster is not None else [])
        self.datapath = Datapath(self.cfg.pin_dir, self.store, node_name=self.cfg.node_name, host_ips=host_ips,
                                 host_routing=self.cfg.host_routing)
        if self.cfg.network_policy_dir is not None:
            from lanner.netdp.netpolicy import load_network_policies

            self.datapath.set_network_policies(load_network_policies(self.cfg.network_policy_dir))
        self._flows = self.datapath.flows()

    def poll_flows(self) -> list[dict]:
        """Flow events the datapath reported since the last call (empty without a datapath)."""
        return self._flows.poll() if self._flows is not None else []

    def status(self) -> dict:
        return {
            "pod_cidr": self.ipam.cidr if self.ipam else None,
            "gateway": self.ipam.gateway if self.ipam else None,
            "cni_socket": str(self.cfg.cni_socket),
            "endpoints": len(self.service.endpoints()) if self.service else 0,
            "datapath": self.datapath is not None,
            "cni_requests": dict(self.service.counters) if self.service else {},
            **({"cluster": self.cluster.status()} if self.cluster is not None else {}),
        }

    def close(self) -> None:
        """Stop serving CNI. Pods keep their interfaces and leases (the next start restores them)."""
        if self.service is not None:
            self.service.ready = False
        if self.server is not None:
            self.server.close()
            self.server = None
        if self._own_labels and self.labels is not None:
            self.labels.close()  # type: ignore[attr-defined]
            self.labels = None
        if self.datapath is not None:
            try:
                self.datapath.close()
            except Exception as exc:
                log.warning("closing the datapath: %s", exc)
            self.datapath = None
        self._flows = None
        if self.cluster is not None:
            try:
                self.cluster.close()  # revokes this node's lease: the other nodes drop its routes and pods
            except Exception as exc:
                log.warning("leaving the cluster: %s", exc)
            self.cluster = None


def _forwarding() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        return False


def serve(cfg: NetdpConfig) -> int:
    """``lanner cni serve``: run the runtime until SIGINT/SIGTERM."""
    rt = NetdpRuntime(cfg)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rt.start()
        while not stop.wait(0.2):
            for flow in rt.poll_flows():
                log.info("flow %s", flow)
    finally:
        rt.close()
        for s, h in old.items():
            signal.signal(s, h)
    return 0
