"""End to end: a NetworkPolicy applied with the real kubectl is enforced on pods on lanner's CNI.

``lanner agent --enable-netdp --enable-k8s-api`` runs inside a test node netns and reaches the session's
kube-apiserver through a loopback relay into that netns (tests/netns_forward.py). Pods are added by the
real plugin (tests/cni_runner.py) into three namespaces the test creates in the API: the server's, an
allowed client's and another client's. A policy selecting the server's pods allows ingress only from
namespaces with a label set through the API: the labelled client connects, the other is dropped (a
DROPPED flow names it); ``kubectl label namespace`` on the other client's namespace lets it connect;
``kubectl delete networkpolicy`` opens the server to every client. Traffic is ICMP between the pods the
test created, inside its own netns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Iterator

import pytest

from tests.cni_runner import CniNode, lanner_conflist
from tests.k8s_harness import ControlPlane
from tests.netns_forward import forward_into_netns
from tests.test_cni_agent import AgentNode

WAIT_S = 20.0  # shared 2-core machine: a generous bound for a policy change to reach the datapath


def _policy(name: str, namespace: str, label: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {label: "yes"}}}]}]}}


@pytest.fixture
def namespaces(k8s: ControlPlane, k8s_namespace: str) -> Iterator[tuple[str, str, str]]:
    """(server, allowed client, other client) namespaces in the API; the two extra ones deleted after."""
    extra = [f"{k8s_namespace}-{s}" for s in ("a", "b")]
    try:
        for ns in extra:
            k8s.kubectl("create", "namespace", ns)
        yield k8s_namespace, extra[0], extra[1]
    finally:
        for ns in extra:
            k8s.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def api_node(tmp_path, k8s: ControlPlane) -> Iterator[tuple[AgentNode, str]]:
    """A node netns set up for lanner-cni, and a kubeconfig (the agent's identity) usable inside it."""
    an = AgentNode(CniNode(f"lke{os.getpid() % 10000}", tmp_path), f"/sys/fs/bpf/lanner-k8se2e-{uuid.uuid4().hex[:8]}")
    try:
        an.node.setup()
        with forward_into_netns(f"/var/run/netns/{an.node.netns}", k8s.port) as port:
            yield an, str(k8s.kubeconfig_via(port, tmp_path / "agent-in-node.kubeconfig"))
    finally:
        if an.agent is not None:
            an.agent.stop()
        an.node.close()
        subprocess.run(["rm", "-rf", an.pin])


def reaches(node: CniNode, pod: str, ip: str) -> bool:
    return node.sh("ping", "-c1", "-W1", ip, ns=pod, check=False).returncode == 0


def tcp_answer(node: CniNode, pod: str, ip: str, port: int = 9) -> str:
    """A TCP connect from ``pod`` to a closed port: "refused" when the SYN and the peer's RST both passed."""
    code = (f"import socket\ntry: socket.create_connection(('{ip}', {port}), timeout=2); print('open')\n"
            "except ConnectionRefusedError: print('refused')\nexcept OSError as e: print(type(e).__name__)")
    return node.sh(sys.executable, "-c", code, ns=pod, check=False).stdout.strip()


def wait_reach(node: CniNode, pod: str, ip: str, want: bool, what: str, agent) -> float:
    """Poll until ``pod`` reaches ``ip`` (or fails to) as wanted; the seconds it took."""
    t0 = time.monotonic()
    while reaches(node, pod, ip) != want:
        if time.monotonic() - t0 > WAIT_S:
            st = agent.status().get("k8s", {})
            raise AssertionError(f"{what}: still {'dropped' if want else 'connecting'} after {WAIT_S:.0f} s; "
                                 f"k8s status {st}\n{agent.stderr_path.read_text()[-2000:]}")
        time.sleep(0.2)
    return time.monotonic() - t0


@pytest.mark.bpf
def test_network_policy_from_kubectl_is_enforced(k8s: ControlPlane, namespaces, api_node) -> None:
    server_ns, ns_a, ns_b = namespaces
    an, kubeconfig = api_node
    agent = an.start("--enable-k8s-api", "--k8s-kubeconfig-path", kubeconfig)
    node = an.node
    r = node.runner(lanner_conflist(node))
    srv, a, b = node.pod("srv"), node.pod("a"), node.pod("b")
    ip_srv = r.add("cid-srv", srv, cni_args=f"K8S_POD_NAMESPACE={server_ns};K8S_POD_NAME=server")["ips"][0]["address"][:-3]
    r.add("cid-a", a, cni_args=f"K8S_POD_NAMESPACE={ns_a};K8S_POD_NAME=client-a")
    ip_b = r.add("cid-b", b, cni_args=f"K8S_POD_NAMESPACE={ns_b};K8S_POD_NAME=client-b")["ips"][0]["address"][:-3]
    assert reaches(node, a, ip_srv) and reaches(node, b, ip_srv)  # no policy yet

    label = f"lanner-e2e-{uuid.uuid4().hex[:6]}"
    k8s.kubectl("label", "namespace", ns_a, f"{label}=yes")
    k8s.kubectl("apply", "-f", "-", stdin=json.dumps(_policy("only-labelled", server_ns, label)))
    t_apply = wait_reach(node, b, ip_srv, False, "the other namespace's client after kubectl apply", agent)
    assert reaches(node, a, ip_srv), "the labelled namespace's client must still connect"
    agent.wait_for(lambda es: [e for e in es if e.get("flow", {}).get("verdict") == "DROPPED"
                               and e["flow"].get("src", {}).get("ip") == ip_b
                               and e["flow"].get("dst", {}).get("ip") == ip_srv], timeout=10, what="b's dropped flow")
    # the server's own connections still get their answers (TCP: b's RST to a closed port is a reply)
    assert tcp_answer(node, srv, ip_b) == "refused", "the policy selects the server's ingress only"
    nps = agent.status()["k8s"]["network_policies"]  # the session's API may hold other tests' policies too
    assert nps["from_api"] >= 1 and f"{server_ns}/only-labelled" not in nps["refused"] and nps["error"] == "", nps
    out = subprocess.run([sys.executable, "-m", "lanner", "status", "--server-address", agent.address],
                         capture_output=True, text=True, timeout=60).stdout
    assert "namespaces watching" in out and "NetworkPolicies from the API" in out, out

    k8s.kubectl("label", "namespace", ns_b, f"{label}=yes")
    t_label = wait_reach(node, b, ip_srv, True, "the other client after kubectl label namespace", agent)
    assert reaches(node, a, ip_srv)
    k8s.kubectl("label", "namespace", ns_a, f"{label}-")  # the label removed: a is dropped now
    t_unlabel = wait_reach(node, a, ip_srv, False, "the first client after its label was removed", agent)

    k8s.kubectl("delete", "networkpolicy", "only-labelled", "-n", server_ns)
    t_delete = wait_reach(node, a, ip_srv, True, "the first client after kubectl delete networkpolicy", agent)
    assert reaches(node, b, ip_srv)
    print(f"kubectl returned -> enforced (ping polled every 0.2 s): apply {t_apply:.2f} s, label {t_label:.2f} s, "
          f"unlabel {t_unlabel:.2f} s, delete {t_delete:.2f} s")
    for cid, pod in (("cid-srv", srv), ("cid-a", a), ("cid-b", b)):
        r.delete(cid, pod)
