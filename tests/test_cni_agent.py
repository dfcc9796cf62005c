"""The real agent as the node's CNI: ``lanner agent --enable-netdp`` inside a test node netns, pods added by
the real plugin through the libcni-style runner; flow events land in the same export stream as the
security events, and the agent's status counts endpoints and CNI requests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import pytest

from tests.cni_runner import CniNode, lanner_conflist
from tests.conftest import RunningAgent, wait_startup_policies


def test_enable_netdp_needs_a_pod_cidr(tmp_path):
    p = subprocess.run([sys.executable, "-m", "lanner", "agent", "--enable-netdp"], capture_output=True, text=True)
    assert p.returncode == 2 and "--pod-cidr" in p.stderr
    p = subprocess.run([sys.executable, "-m", "lanner", "agent", "--enable-netdp", "--pod-cidr", "10.1.2.3/24"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--pod-cidr '10.1.2.3/24'" in p.stderr and "host bits" in p.stderr


@dataclass
class AgentNode:
    node: CniNode
    pin: str
    agent: RunningAgent | None = None

    def start(self, *extra: str) -> RunningAgent:
        tmp, node = self.node.tmp, self.node
        n = len(list(tmp.glob("agent*.stderr")))
        export, sock, err, info = (tmp / "events.log", tmp / "lanner.sock", tmp / f"agent{n}.stderr",
                                   tmp / "info.json")
        info.unlink(missing_ok=True)
        node.socket.unlink(missing_ok=True)
        cmd = ["nsenter", f"--net=/var/run/netns/{node.netns}", sys.executable, "-m", "lanner", "agent",
               "--no-export-stdout", "--export-filename", str(export), "--server-address", f"unix://{sock}",
               "--info-file", str(info), "--node-name", "cninode", "--health-server-address", "",
               "--tracing-policy-dir", "", "--enable-netdp", "--pod-cidr", node.cidr, "--cni-socket",
               str(node.socket), "--netdp-state-dir", str(node.state_dir), "--netdp-pin-dir", self.pin, *extra]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(err, "wb"), stdin=subprocess.DEVNULL)
        self.agent = RunningAgent(proc, export, sock, "cninode", err)
        deadline = time.monotonic() + 60
        while not (node.socket.exists() and info.exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("agent with --enable-netdp did not start:\n" + err.read_text()[-4000:])
            time.sleep(0.05)
        wait_startup_policies(self.agent, extra)
        return self.agent


@pytest.fixture
def agent_node(tmp_path):
    an = AgentNode(CniNode(f"lca{os.getpid() % 10000}", tmp_path),
                   f"/sys/fs/bpf/lanner-cnitest-{uuid.uuid4().hex[:8]}")
    try:
        an.node.setup()
        an.start()
        yield an
    finally:
        if an.agent is not None:
            an.agent.stop()
        an.node.close()
        subprocess.run(["rm", "-rf", an.pin])


@pytest.mark.bpf
def test_agent_serves_cni_and_exports_flows(agent_node):
    node, agent = agent_node.node, agent_node.agent
    r = node.runner(lanner_conflist(node))
    a, b = node.pod("a"), node.pod("b")
    r.add("cid-a", a, cni_args="K8S_POD_NAMESPACE=team;K8S_POD_NAME=pa")
    res_b = r.add("cid-b", b, cni_args="K8S_POD_NAMESPACE=team;K8S_POD_NAME=pb")
    ip_b = res_b["ips"][0]["address"].split("/")[0]
    marker = uuid.uuid4().hex[:8]  # other work on this machine pings too: find ours by its pattern argument
    assert node.sh("ping", "-c2", "-W2", "-p", marker, ip_b, ns=a, check=False).returncode == 0, \
        agent.stderr_path.read_text()[-3000:]
    st = agent.status()
    assert st["netdp"]["endpoints"] == 2 and st["netdp"]["datapath"] is True, st["netdp"]
    assert st["netdp"]["cni_requests"].get("ADD ok") == 2
    text = subprocess.run([sys.executable, "-m", "lanner", "status", "--server-address", agent.address],
                          capture_output=True, text=True)
    assert text.returncode == 0 and "netdp      pod CIDR 10.77.0.0/24 (gateway 10.77.0.1), 2 endpoints" in text.stdout
    evs = agent.wait_for(lambda e: [x for x in e if "flow" in x and x["flow"].get("dst", {}).get("ip") == ip_b],
                         timeout=10, what="a flow event to pod b")
    flow = next(x for x in evs if "flow" in x and x["flow"].get("dst", {}).get("ip") == ip_b)
    assert flow["node_name"] == "cninode" and flow["flow"]["src"]["pod"]["name"] == "pa"
    assert flow["flow"]["dst"]["pod"] == {"namespace": "team", "name": "pb", "labels": {}}
    # the security events share the stream; the ping ran in pod a's netns, so its exec names pod a
    def ours(x: dict) -> bool:
        p = x.get("process_exec", {}).get("process", {})
        return p.get("binary", "").endswith("/ping") and marker in p.get("arguments", "")

    evs = agent.wait_for(lambda e: [x for x in e if ours(x)], timeout=10, what="ping's exec")
    ping = next(x["process_exec"]["process"] for x in evs if ours(x))
    assert ping.get("pod", {}).get("namespace") == "team" and ping["pod"].get("name") == "pa", ping
    # an agent restart: the pods keep their network, the datapath gets its endpoints back
    assert agent.stop() == 0
    assert node.sh("ping", "-c1", "-W2", ip_b, ns=a, check=False).returncode == 0  # plain routing meanwhile
    agent = agent_node.start()
    st = agent.status()
    assert st["netdp"]["endpoints"] == 2, st["netdp"]
    assert "2 endpoints restored" in agent.stderr_path.read_text()
    r.check("cid-a", a)
    node.sh("ping", "-c1", "-W2", ip_b, ns=a)
    for host_if in node.host_veths():  # the restarted datapath attached its programs to both pods again
        assert "from_pod" in node.sh("tc", "filter", "show", "dev", host_if, "ingress").stdout
    r.delete("cid-a", a)
    r.delete("cid-a", "", use_cache=False)
    r.delete("cid-b", b)
    st = agent.status()
    assert st["netdp"]["endpoints"] == 0 and node.host_veths() == []
    assert agent.stop() == 0
    assert not node.socket.exists()


@pytest.fixture
def policy_dir(tmp_path):
    d = tmp_path / "netpol"
    d.mkdir()
    (d / "deny.yaml").write_text("""\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: locked}
spec:
  podSelector: {}
  policyTypes: [Ingress]
""")
    return d


@pytest.mark.bpf
def test_agent_enforces_the_network_policy_dir(tmp_path, policy_dir):
    an = AgentNode(CniNode(f"lcp{os.getpid() % 10000}", tmp_path), f"/sys/fs/bpf/lanner-cnitest-{uuid.uuid4().hex[:8]}")
    try:
        an.node.setup()
        agent = an.start("--network-policy-dir", str(policy_dir))
        node = an.node
        r = node.runner(lanner_conflist(node))
        a, b, c = node.pod("a"), node.pod("b"), node.pod("c")
        r.add("cid-a", a, cni_args="K8S_POD_NAMESPACE=open;K8S_POD_NAME=pa")
        ip_b = r.add("cid-b", b, cni_args="K8S_POD_NAMESPACE=locked;K8S_POD_NAME=pb")["ips"][0]["address"][:-3]
        ip_c = r.add("cid-c", c, cni_args="K8S_POD_NAMESPACE=open;K8S_POD_NAME=pc")["ips"][0]["address"][:-3]
        assert node.sh("ping", "-c1", "-W2", ip_c, ns=a, check=False).returncode == 0  # not selected: allowed
        assert node.sh("ping", "-c1", "-W1", ip_b, ns=a, check=False).returncode != 0  # ingress denied
        agent.wait_for(lambda e: [x for x in e if x.get("flow", {}).get("dst", {}).get("ip") == ip_b
                                  and x["flow"].get("verdict") == "DROPPED"], timeout=10, what="a dropped flow")
    finally:
        if an.agent is not None:
            an.agent.stop()
        an.node.close()
        subprocess.run(["rm", "-rf", an.pin])


CONNECT_POLICY = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: pod-connects}
spec:
  kprobes:
  - call: sys_connect
    syscall: true
    args:
    - {index: 0, type: int}
    - {index: 1, type: sockaddr}
    selectors:
    - matchArgs:
      - {index: 1, operator: SPort, values: ["%d"]}
"""


@pytest.mark.bpf
def test_socket_events_name_the_destination_pod(tmp_path):
    """A connect() from pod a to pod b: the policy event's process is pod a, its sockaddr names pod b."""
    port = 20000 + os.getpid() % 20000
    policy = tmp_path / "connect.yaml"
    policy.write_text(CONNECT_POLICY % port)
    an = AgentNode(CniNode(f"lcs{os.getpid() % 10000}", tmp_path), f"/sys/fs/bpf/lanner-cnitest-{uuid.uuid4().hex[:8]}")
    try:
        an.node.setup()
        agent = an.start("--tracing-policy", str(policy))
        node = an.node
        r = node.runner(lanner_conflist(node))
        a, b = node.pod("a"), node.pod("b")
        r.add("cid-a", a, cni_args="K8S_POD_NAMESPACE=team;K8S_POD_NAME=pa")
        ip_b = r.add("cid-b", b, cni_args="K8S_POD_NAMESPACE=team;K8S_POD_NAME=pb")["ips"][0]["address"][:-3]
        code = f"import socket\ntry: socket.create_connection(('{ip_b}', {port}), timeout=1)\nexcept OSError: pass\n"
        node.sh(sys.executable, "-c", code, ns=a)

        def ours(e: dict) -> bool:
            k = e.get("process_kprobe", {})
            return k.get("policy_name") == "pod-connects" and any(
                x.get("sockaddr_arg", {}).get("addr") == ip_b for x in k.get("args", []))

        evs = agent.wait_for(lambda es: [e for e in es if ours(e)], timeout=15, what="the connect event")
        ev = next(e["process_kprobe"] for e in evs if ours(e))
        sa = next(x["sockaddr_arg"] for x in ev["args"] if "sockaddr_arg" in x)
        assert sa["port"] == port and sa["pod"] == {"namespace": "team", "name": "pb"}, sa
        assert ev["process"]["pod"]["name"] == "pa"
    finally:
        if an.agent is not None:
            an.agent.stop()
        an.node.close()
        subprocess.run(["rm", "-rf", an.pin])
