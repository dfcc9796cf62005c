"""Pods from the API on a real node: a real containerd pod (tests/cri_harness.py) and the API Pod the test
creates for it (tests/k8s_kubelet.py, tied by containerStatuses[].containerID) give exec events their
namespace, name, labels, container and workload (a Deployment through its ReplicaSet); a
TracingPolicyNamespaced applied with kubectl kills only in its namespace, also in a pod created after it.

One agent (--enable-k8s-api, no --enable-netdp: the pods come from the API alone) and one containerd for the
module; the session's control plane.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Iterator

import pytest

from tests.conftest import RunningAgent, execs, start_agent
from tests.cri_harness import Containerd, missing_tools, remove_pod, run_pod
from tests.k8s_harness import MANIFESTS, ControlPlane
from tests.k8s_kubelet import Container, Owner, PodSpec, create_node, create_pod, set_running
from tests.policy_specs import openat_prefix, policy_yaml
from tests.test_cri_pods import BRIDGE_SUBNET, BUSYBOX, _start_node
from tests.test_k8s_agent import wait_established

pytestmark = [pytest.mark.bpf, pytest.mark.skipif(bool(missing_tools()),
                                                  reason=f"containerd/runc tooling missing: {missing_tools()}")]


class Node:
    def __init__(self, k8s: ControlPlane, ctrd: Containerd, agent: RunningAgent, name: str) -> None:
        self.k8s, self.ctrd, self.agent, self.name = k8s, ctrd, agent, name
        from kubernetes import client

        self.core = client.CoreV1Api(k8s.api_client())
        self.apps = client.AppsV1Api(k8s.api_client())

    def pod(self, namespace: str, name: str, labels: dict[str, str], owner: Owner | None = None):
        """A containerd pod running sleep, and its API Pod on this node reported running with its container id."""
        real = run_pod(self.ctrd, name, namespace=namespace, labels=labels,
                       containers={"main": ["/bin/sleep", "3600"]})
        spec = PodSpec(name, self.name, (Container("main", BUSYBOX),), labels, owner)
        create_pod(self.core, namespace, spec)
        set_running(self.core, namespace, spec, {"main": real.containers["main"]})
        return real

    def wait_mapped(self, containers: int, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while (st := self.agent.status()["k8s"]["pods"])["containers_with_cgroup"] < containers:
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
        return st


@pytest.fixture(scope="module")
def node(k8s: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("k8s-pods")
    conflist = {"cniVersion": "1.0.0", "name": "bridgenet", "plugins": [
        {"type": "bridge", "bridge": "lcri1", "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "dataDir": str(base / "ipam"), "ranges": [[{"subnet": BRIDGE_SUBNET}]]}}]}
    netns, ctrd = _start_node(base, conflist)
    name = f"lanner-pods-{uuid.uuid4().hex[:8]}"
    from kubernetes import client

    k8s.kubectl("apply", "--server-side", "-f", str(MANIFESTS / "crds.yaml"))
    wait_established(k8s)
    create_node(client.CoreV1Api(k8s.api_client()), name, "10.244.10.0/24")
    agent = None
    try:
        agent = start_agent(tmp_path_factory.mktemp("k8s-pods-agent"), "--enable-k8s-api", "--k8s-kubeconfig-path", str(k8s.agent_kubeconfig),
                            node=name)
        yield Node(k8s, ctrd, agent, name)
    finally:
        if agent is not None:
            agent.stop()
        ctrd.stop()
        netns.delete()
        client.CoreV1Api(k8s.api_client()).delete_node(name)


def _replicaset(node: Node, namespace: str, deployment: str, rs: str, labels: dict[str, str]) -> Owner:
    """A ReplicaSet owned by a Deployment (stored only: no controller-manager runs); its Owner for the pod."""
    body = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                          "name": deployment, "uid": str(uuid.uuid4()),
                                                          "controller": True}]},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "main", "image": BUSYBOX}]}}}}
    created = node.apps.create_namespaced_replica_set(namespace, body)
    return Owner("ReplicaSet", rs, created.metadata.uid)


def test_exec_events_carry_the_api_pod_and_its_workload(node: Node, k8s_namespace: str) -> None:
    m = uuid.uuid4().hex[:8]
    labels = {"app": "web", "run": m}
    owner = _replicaset(node, k8s_namespace, "web", f"web-{m}", labels)
    before = node.agent.status()["k8s"]["pods"]["containers_with_cgroup"]
    real = node.pod(k8s_namespace, f"web-{m}-x", labels, owner)
    try:
        node.wait_mapped(before + 1)
        cid = real.containers["main"]
        with node.ctrd.client() as cri:
            assert cri.exec_sync(cid, ["/bin/sh", "-c", f"echo {m}"]).exit_code == 0
        evs = node.agent.wait_for(lambda e: _sh(e, f"echo {m}"), timeout=15, what="the exec in the pod")
        proc = _sh(evs, f"echo {m}")[0]
        pod = proc.get("pod")
        assert pod is not None, proc
        assert (pod["namespace"], pod["name"]) == (k8s_namespace, f"web-{m}-x")
        assert pod["pod_labels"] == labels
        assert (pod["workload"], pod["workload_kind"]) == ("web", "Deployment")
        assert pod["container"]["id"] == cid and pod["container"]["name"] == "main"
        assert pod["container"]["image"]["name"] == BUSYBOX
        # deleted from the API a moment ago: still named
        node.core.delete_namespaced_pod(f"web-{m}-x", k8s_namespace, grace_period_seconds=0)
        deadline = time.monotonic() + 10
        while node.agent.status()["k8s"]["pods"]["deleted_kept"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with node.ctrd.client() as cri:
            assert cri.exec_sync(cid, ["/bin/sh", "-c", f"echo late-{m}"]).exit_code == 0
        evs = node.agent.wait_for(lambda e: _sh(e, f"late-{m}"), timeout=15, what="the exec after the delete")
        late = _sh(evs, f"late-{m}")[0]
        assert late.get("pod", {}).get("name") == f"web-{m}-x", late
    finally:
        remove_pod(node.ctrd, real)


def _sh(events: list[dict], text: str) -> list[dict]:
    """The process objects of /bin/sh execs whose arguments contain ``text``."""
    return [e["process"] for e in execs(events, binary="/bin/sh") if text in e["process"].get("arguments", "")]


def _cat(node: Node, cid: str, path: str) -> int:
    with node.ctrd.client() as cri:
        return cri.exec_sync(cid, ["/bin/cat", path]).exit_code


def test_namespaced_sigkill_policy_from_kubectl_kills_only_in_its_namespace(node: Node, k8s_namespace: str) -> None:
    m = uuid.uuid4().hex[:8]
    other = f"t-{uuid.uuid4().hex[:10]}"
    node.k8s.kubectl("create", "namespace", other)
    outside = node.pod(other, f"out-{m}", {"app": "x"})
    name = f"kill-{m}"
    pods = [outside]
    try:
        node.k8s.kubectl("apply", "-f", "-", stdin=policy_yaml(
            name, openat_prefix(f"/tmp/{m}", "Sigkill"), kind="TracingPolicyNamespaced", namespace=k8s_namespace))
        inside = node.pod(k8s_namespace, f"in-{m}", {"app": "x"})  # created after the policy
        pods.append(inside)
        deadline = time.monotonic() + 15
        while True:
            listed = json.loads(_tp_list(node))
            st = next((p for p in listed if p["name"] == name and p.get("namespace") == k8s_namespace), None)
            if st is not None and "1 pods on this node" in st.get("info", ""):
                break
            assert time.monotonic() < deadline, listed
            time.sleep(0.2)
        assert _cat(node, outside.containers["main"], f"/tmp/{m}-outside") != 137
        assert _cat(node, inside.containers["main"], f"/tmp/{m}-inside") == 137  # SIGKILL
        node.k8s.kubectl("delete", "tgtpn", name, "-n", k8s_namespace)
        deadline = time.monotonic() + 5
        while any(p["name"] == name for p in json.loads(_tp_list(node))):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert _cat(node, inside.containers["main"], f"/tmp/{m}-inside") != 137  # unloaded: not killed
    finally:
        node.k8s.kubectl("delete", "tgtpn", name, "-n", k8s_namespace, "--ignore-not-found", check=False)
        for p in pods:
            remove_pod(node.ctrd, p)
        node.k8s.kubectl("delete", "namespace", other, "--wait=false", check=False)


def _tp_list(node: Node) -> str:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "lanner", "tp", "list", "-o", "json", "--server-address",
                          node.agent.address], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout
