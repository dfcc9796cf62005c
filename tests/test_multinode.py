"""Multi-node netdp (issues 7 and 15): two nodes as network namespaces on an underlay bridge, each running its
own agent (``lanner cni serve`` with the eBPF datapath) with its own pins and sockets, sharing the cluster
state: a real etcd in the underlay namespace (``--kvstore etcd``), or the session's real kube-apiserver
(``--kvstore crd``), reached from each node netns through a loopback relay (tests/netns_forward.py) with the
agent's own kubeconfig and RBAC. Pods come from the real plugin through the libcni-style runner.

Proves: cross-node pod connectivity (native routes and VXLAN), identity agreement across nodes, a
NetworkPolicy that allows one remote namespace and denies another (only possible when the remote pods'
identities reached this node's BPF ipcache), flow events naming the remote pod, and a killed agent's
entries expiring from the other node's maps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench._cluster_topo import cluster_topology
from bench._etcd import start_etcd
from tests.cni_runner import CniNode, CniRunner, lanner_conflist
from tests.netns_forward import forward_into_netns

pytestmark = pytest.mark.bpf

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: db}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: web}}
    ports: [{protocol: TCP, port: 8080}]
"""


@dataclass
class AgentNode:
    cni: CniNode
    name: str
    ip: str
    pin: Path
    proc: subprocess.Popen | None = None
    log: Path | None = None
    pods: dict[str, str] = field(default_factory=dict)  # pod name -> pod IP

    store_args: list[str] = field(default_factory=list)  # --kvstore etcd|crd and how to reach it

    def start(self, mode: str, policy_dir: Path) -> None:
        self.log = self.cni.tmp / f"{self.name}.log"
        self.cni.socket.unlink(missing_ok=True)
        cmd = ["nsenter", f"--net=/var/run/netns/{self.cni.netns}", sys.executable, "-m", "lanner", "cni", "serve",
               "--pod-cidr", self.cni.cidr, "--cni-socket", str(self.cni.socket),
               "--netdp-state-dir", str(self.cni.state_dir), "--netdp-pin-dir", str(self.pin),
               "--network-policy-dir", str(policy_dir), *self.store_args,
               "--node-ip", self.ip, "--underlay-device", "eth0", "--routing-mode", mode,
               "--cluster-node-name", self.name, "--kvstore-lease-ttl", "3", "--log-level", "info"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 60
        while not self.cni.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name}'s agent did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def runner(self) -> CniRunner:
        return self.cni.runner(lanner_conflist(self.cni, mtu=1500))

    def add_pod(self, namespace: str, name: str) -> str:
        netns = self.cni.pod(name)
        res = self.runner().add(f"cid-{name}", netns, cni_args=f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}")
        ip = res["ips"][0]["address"].split("/")[0]
        self.pods[name] = ip
        return ip

    def pod_ns(self, name: str) -> str:
        return f"/var/run/netns/{self.cni.tag}-{name}"

    def ipcache(self) -> dict[str, int]:
        """This node's BPF ipcache, read from its pinned map with bpftool (the kernel's view)."""
        out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(self.pin / "netdp_ipcache")],
                             capture_output=True, text=True, check=True).stdout
        entries = {}
        for e in json.loads(out):
            f = e.get("formatted", e)
            addr = int(f["key"]["addr"])
            ip = ".".join(str((addr >> s) & 255) for s in (0, 8, 16, 24))  # network order in a u32
            entries[f"{ip}/{f['key']['prefixlen']}"] = int(f["value"]["identity"])
        return entries

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def serve(node: AgentNode, pod: str, port: int) -> subprocess.Popen:
    code = ("import socket,sys\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"s.bind(('0.0.0.0',{port}));s.listen(16);print('up',flush=True)\n"
            "while True:\n c,_=s.accept();c.sendall(b'pong');c.close()\n")
    p = subprocess.Popen(["nsenter", f"--net={node.pod_ns(pod)}", sys.executable, "-c", code], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "up"
    return p


def connects(node: AgentNode, pod: str, ip: str, port: int) -> bool:
    code = (f"import socket\ns=socket.create_connection(('{ip}',{port}),timeout=1.5)\n"
            "assert s.recv(4)==b'pong'\n")
    r = subprocess.run(["nsenter", f"--net={node.pod_ns(pod)}", sys.executable, "-c", code], capture_output=True)
    return r.returncode == 0


def wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(params=["etcd", "crd"])
def backend(request) -> str:
    return request.param


@contextlib.contextmanager
def _crd_store(request, nodes: list[AgentNode]):
    """The session's API server for both agents: the lanner CRDs applied with kubectl, a relay into each node
    netns and a kubeconfig of the agent's identity through it; afterwards the nodes' objects are deleted."""
    from tests.test_k8s_crd_store import delete_node_objects, install_crds

    k8s = request.getfixturevalue("k8s")
    install_crds(k8s)
    try:
        with contextlib.ExitStack() as relays:
            for n in nodes:
                port = relays.enter_context(forward_into_netns(f"/var/run/netns/{n.cni.netns}", k8s.port))
                config = k8s.kubeconfig_via(port, n.cni.tmp / "agent.kubeconfig")
                n.store_args = ["--kvstore", "crd", "--k8s-kubeconfig-path", str(config)]
            yield
            for n in nodes:
                n.stop()  # while the relays still run: a clean stop deletes its objects through them
    finally:
        delete_node_objects(k8s, *(n.name for n in nodes))


@contextlib.contextmanager
def _etcd_store(tmp_path: Path, tag: str, nodes: list[AgentNode]):
    etcd = start_etcd(tmp_path, netns=f"{tag}-u", host="192.168.252.254")
    try:
        for n in nodes:
            n.store_args = ["--kvstore", "etcd", "--etcd-endpoint", etcd.endpoint]
        yield
        for n in nodes:
            n.stop()
    finally:
        etcd.stop()


@pytest.fixture
def two_nodes(tmp_path, backend, request):
    tag = f"lmn{os.getpid() % 1000}{uuid.uuid4().hex[:3]}"
    nodes = [AgentNode(CniNode(f"{tag}{i}", tmp_path / f"n{i}", cidr=f"10.252.{i}.0/24"), f"{tag}-node{i}",
                       f"192.168.252.{i}", Path(f"/sys/fs/bpf/lanner-mn-{tag}-{i}")) for i in (1, 2)]
    try:
        for n in nodes:
            n.cni.tmp.mkdir(parents=True)
            n.cni.setup()
        with cluster_topology(2, 0, tag=tag, underlay_net="192.168.252", pod_bridge=False,
                              node_netns=[n.cni.netns for n in nodes]) as _topo:
            policies = tmp_path / "netpol"
            policies.mkdir()
            (policies / "db.yaml").write_text(POLICY)
            store = _crd_store(request, nodes) if backend == "crd" else _etcd_store(tmp_path, tag, nodes)
            with store:
                yield nodes, policies
    finally:
        for n in nodes:
            n.stop()
        for n in nodes:
            n.cni.close()
            subprocess.run(["rm", "-rf", str(n.pin)])


@pytest.mark.parametrize("mode", ["native", "vxlan"])
def test_pods_on_two_nodes_with_cluster_identities_and_policy(two_nodes, mode, backend, request):
    (n1, n2), policies = two_nodes
    for n in (n1, n2):
        n.start(mode, policies)
    web1 = n1.add_pod("web", "web1")
    other1 = n1.add_pod("other", "other1")
    db2 = n2.add_pod("db", "db2")
    web2 = n2.add_pod("web", "web2")
    # identity agreement: the same label set got the same number on both nodes
    wait(lambda: {f"{web1}/32", f"{other1}/32"} <= set(n2.ipcache()), 10, "node1's pods in node2's BPF ipcache")
    wait(lambda: {f"{db2}/32", f"{web2}/32"} <= set(n1.ipcache()), 10, "node2's pods in node1's BPF ipcache")
    ic1, ic2 = n1.ipcache(), n2.ipcache()
    assert ic2[f"{web1}/32"] == ic2[f"{web2}/32"] == ic1[f"{web1}/32"] == ic1[f"{web2}/32"] >= 256
    assert ic2[f"{other1}/32"] not in (ic2[f"{web1}/32"], ic2[f"{db2}/32"])
    if mode == "vxlan":  # the pods' MTU leaves room for the overlay
        mtu = json.loads(subprocess.run(["ip", "-j", "-n", f"{n1.cni.tag}-web1", "link", "show", "eth0"],
                                        capture_output=True, text=True).stdout)[0]["mtu"]
        assert mtu == 1450
    server = serve(n2, "db2", 8080)
    try:
        # web (remote, allowed by namespace) reaches db on the other node; other (remote) does not
        assert wait(lambda: connects(n1, "web1", db2, 8080), 10, "web1 -> db2 across nodes")
        assert not connects(n1, "other1", db2, 8080)
        # node2's flow events name the remote pod (published with its ipcache entry)
        def drop_naming_other1() -> str:
            text = n2.log.read_text()
            return text if "'name': 'other1'" in text and "DROPPED" in text else ""

        log = wait(drop_naming_other1, 10, "a drop flow naming the remote pod other1")
        assert "'name': 'web1'" in log
    finally:
        server.kill()
        server.wait()
    # node1's agent dies (no clean shutdown): its lease expires (etcd), or node2 hears no renewal of its
    # LannerNode for the TTL (crd), and node2 drops node1's pods and routes
    n1.stop(signal.SIGKILL)
    wait(lambda: not ({f"{web1}/32", f"{other1}/32"} & set(n2.ipcache())), 15,
         "node1's pods gone from node2's BPF ipcache after its lease expired")
    routes = subprocess.run(["ip", "-n", n2.cni.netns, "route"], capture_output=True, text=True).stdout
    assert "10.252.1.0/24" not in routes
    assert f"{db2}/32" in n2.ipcache()  # node2's own pods stay
    if backend == "crd":  # node2 also deleted the dead node's LannerNode and LannerEndpoints
        k8s = request.getfixturevalue("k8s")
        left = wait(lambda: (lambda out: out if n1.name not in out else "")(
            k8s.kubectl("get", "lannernodes,lannerendpoints", "-o", "name").stdout), 15, "node1's objects collected")
        assert f"lannernode.lanner.io/{n2.name}" in left and f"{n2.name}.{db2}-32" in left
        assert f"node {n1.name}: not renewed for" in n2.log.read_text()  # expired by node2's clock, not revoked
    assert f"registered in {backend} " in n2.log.read_text()  # the backend under test is the one in use
