"""The eBPF datapath on real veths between real network namespaces.

Each test builds its own "node" netns (it plays the host: ip_forward=1 only there) and pod netns joined
to it by veth pairs, routed through the node as Cilium routes pods (pod /32, default via 169.254.1.1).
The Datapath runs inside the node netns (this thread setns()es into it), so nothing attaches in the
root netns; everything is removed by the fixture, also on failure.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lanner.netdp.datapath import DATAPATH_OBJECT, Datapath
from lanner.netdp.endpoint import IDENTITY_WORLD, Endpoint, PodInfo
from lanner.netdp.identity import LocalFileStore, pod_identity_labels
from lanner.netdp.netpolicy import NetworkPolicy, parse_network_policy

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(120)]

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
GW = "169.254.1.1"


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run this thread in /var/run/netns/<name> for the block."""
    cur = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    tgt = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(tgt)
        try:
            yield
        finally:
            _setns(cur)
    finally:
        os.close(cur)
        os.close(tgt)


def sh(*args: str) -> str:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: rc={r.returncode}: {r.stderr.strip()}")
    return r.stdout


def nsexec(ns: str, *args: str) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/{ns}", *args]


SERVER = r"""
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(128)
    while True:
        c, _ = s.accept()
        try: c.sendall(b"ok")
        except OSError: pass
        c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        d, a = s.recvfrom(2048); s.sendto(d, a)
for p in sys.argv[1:]:
    threading.Thread(target=tcp, args=(int(p),), daemon=True).start()
    threading.Thread(target=udp, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import json, socket, sys
out = []
for spec in json.loads(sys.argv[1]):
    proto, ip, port, timeout = spec
    try:
        if proto == "tcp":
            s = socket.create_connection((ip, port), timeout=timeout)
            ok = s.recv(2) == b"ok"
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(timeout)
            s.sendto(b"ping", (ip, port)); ok = s.recvfrom(64)[0] == b"ping"
        s.close()
    except OSError:
        ok = False
    out.append(ok)
print(json.dumps(out))
"""


@dataclass
class Pod:
    name: str
    netns: str
    ip: str
    host_ifname: str
    host_ifindex: int
    namespace: str
    labels: dict[str, str]
    endpoint_id: int
    endpoint: Endpoint | None = None


@dataclass
class Topology:
    tag: str
    node: str
    store: LocalFileStore
    pin_dir: Path
    netns: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    pods: dict[str, Pod] = field(default_factory=dict)
    dp: Datapath | None = None

    def add_netns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.netns.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def node_sysctl(self, key: str, value: str) -> None:
        sh(*nsexec(self.node, "sysctl", "-q", "-w", f"{key}={value}"))

    def add_pod(self, name: str, ip: str, labels: dict[str, str], namespace: str = "default") -> Pod:
        ns = self.add_netns(f"{self.tag}-{name}")
        host_if = f"lx{self.tag[-6:]}{name}"[:15]
        sh("ip", "-n", self.node, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", GW, "dev", "eth0", "scope", "link")
        sh("ip", "-n", ns, "route", "add", "default", "via", GW, "dev", "eth0")
        sh("ip", "-n", self.node, "addr", "add", f"{GW}/32", "dev", host_if)
        sh("ip", "-n", self.node, "link", "set", host_if, "up")
        sh("ip", "-n", self.node, "route", "add", f"{ip}/32", "dev", host_if)
        info = json.loads(sh("ip", "-n", self.node, "-j", "link", "show", host_if))[0]
        pod = Pod(name, ns, ip, host_if, info["ifindex"], namespace, labels, len(self.pods) + 1)
        self.pods[name] = pod
        return pod

    def add_external(self, name: str, ips: list[str]) -> str:
        """A netns outside the cluster (no endpoint), reached through the node."""
        ns = self.add_netns(f"{self.tag}-{name}")
        host_if = f"lx{self.tag[-6:]}{name}"[:15]
        sh("ip", "-n", self.node, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        for ip in ips:
            sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
            sh("ip", "-n", self.node, "route", "add", f"{ip}/32", "dev", host_if)
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", GW, "dev", "eth0", "scope", "link")
        sh("ip", "-n", ns, "route", "add", "default", "via", GW, "dev", "eth0")
        sh("ip", "-n", self.node, "addr", "add", f"{GW}/32", "dev", host_if)
        sh("ip", "-n", self.node, "link", "set", host_if, "up")
        return ns

    def endpoint(self, pod: Pod) -> Endpoint:
        info = PodInfo(pod.namespace, pod.name, uid=f"uid-{pod.name}", labels=tuple(sorted(pod.labels.items())))
        identity = self.store.allocate(pod_identity_labels(info))
        mac = json.loads(sh("ip", "-n", pod.netns, "-j", "link", "show", "eth0"))[0]["address"]
        ep = Endpoint(endpoint_id=pod.endpoint_id, container_id=f"c-{pod.name}", ifname="eth0",
                      netns=f"/var/run/netns/{pod.netns}", netns_inode=os.stat(f"/var/run/netns/{pod.netns}").st_ino,
                      host_ifname=pod.host_ifname, host_ifindex=pod.host_ifindex, ipv4=pod.ip, mac=mac,
                      identity=identity, pod=info)
        pod.endpoint = ep
        return ep

    def serve(self, netns: str, *ports: int) -> None:
        p = subprocess.Popen(nsexec(netns, sys.executable, "-c", SERVER, *map(str, ports)),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def probe(self, netns: str, *specs: tuple[str, str, int], timeout: float = 0.7) -> list[bool]:
        """Try each (proto, ip, port) from a netns; True where the server answered."""
        arg = json.dumps([[proto, ip, port, timeout] for proto, ip, port in specs])
        return json.loads(sh(*nsexec(netns, sys.executable, "-c", CLIENT, arg)))

    def ping(self, netns: str, ip: str) -> bool:
        r = subprocess.run(nsexec(netns, "ping", "-c1", "-W1", ip), capture_output=True)
        return r.returncode == 0

    def policies(self, *docs: dict) -> list[NetworkPolicy]:
        return [parse_network_policy(d, f"test document {i}") for i, d in enumerate(docs)]


@pytest.fixture
def topo(tmp_path: Path, mounts) -> Iterator[Topology]:
    assert DATAPATH_OBJECT.exists(), f"{DATAPATH_OBJECT} missing: run 'make bpf'"
    tag = "lnt" + secrets.token_hex(3)
    t = Topology(tag, f"{tag}-node", LocalFileStore(tmp_path / "identities.json"),
                 Path(f"/sys/fs/bpf/lanner-test-{tag}"))
    try:
        t.add_netns(t.node)
        t.node_sysctl("net.ipv4.ip_forward", "1")
        t.node_sysctl("net.ipv4.conf.all.rp_filter", "0")
        t.node_sysctl("net.ipv4.conf.default.rp_filter", "0")
        yield t
    finally:
        if t.dp is not None:
            with in_netns(t.node):
                t.dp.close()
        for p in t.procs:
            p.kill()
            p.wait()
        for ns in reversed(t.netns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if t.pin_dir.exists():
            for f in t.pin_dir.iterdir():
                f.unlink()
            t.pin_dir.rmdir()


def start(t: Topology, **kw) -> Datapath:
    with in_netns(t.node):
        t.dp = Datapath(t.pin_dir, t.store, node_name="node-test", **kw)
        for pod in t.pods.values():
            t.dp.add_endpoint(t.endpoint(pod))
    return t.dp


def set_policies(t: Topology, *docs: dict) -> None:
    assert t.dp is not None
    with in_netns(t.node):
        t.dp.set_network_policies(t.policies(*docs))


def netpol(name: str, spec: dict, namespace: str = "default") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def two_pods(t: Topology) -> tuple[Pod, Pod, Pod]:
    a = t.add_pod("a", "10.210.0.2", {"app": "client"})
    b = t.add_pod("b", "10.210.0.3", {"app": "web"})
    c = t.add_pod("c", "10.210.0.4", {"app": "other"})
    return a, b, c


# ----------------------------------------------------------------------------------------------------


def test_no_policy_connectivity_and_flows(topo: Topology) -> None:
    a, b, c = two_pods(topo)
    dp = start(topo)
    topo.serve(b.netns, 8080)
    assert topo.ping(a.netns, b.ip)
    assert topo.probe(a.netns, ("tcp", b.ip, 8080), ("udp", b.ip, 8080)) == [True, True]
    events = dp.flows().poll()
    tcp = [e["flow"] for e in events if e["flow"]["protocol"] == "TCP" and e["flow"]["dst"]["port"] == 8080]
    # one event per new flow and direction: a's egress, b's ingress
    assert {f["direction"] for f in tcp} == {"egress", "ingress"}, tcp
    for f in tcp:
        assert f["verdict"] == "FORWARDED" and f["reason"] == "no-policy"
        assert f["src"]["identity"] == a.endpoint.identity and f["dst"]["identity"] == b.endpoint.identity
        assert f["src"]["pod"] == {"namespace": "default", "name": "a", "labels": {"app": "client"}}
        assert f["dst"]["pod"]["name"] == "b"
        assert f["tcp_flags"] == "SYN"
        assert f["node_name"] == "node-test"
    assert a.endpoint.identity != b.endpoint.identity
