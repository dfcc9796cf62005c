"""Pod labels reach identities: containerd (CRI) -> lanner-cni -> agent started with --cri-socket.

containerd registers the sandbox only after CNI ADD returns, so ADD gives the endpoint the provisional
``init`` identity and the agent swaps in the label-derived identity once PodSandboxStatus answers.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from lanner.netdp.endpoint import IDENTITY_INIT
from tests.cri_harness import missing_tools, remove_pod, run_pod
from tests.test_cri_pods import LANNER_CNI, _netdp_ready, _start_node, start_netdp_agent

CIDR = "10.201.77.0/24"  # start_netdp_agent's pod CIDR


def _lease(state: Path, sandbox: str) -> dict | None:
    p = state / "ipam.json"
    leases = json.loads(p.read_text())["leases"] if p.exists() else []
    return next((x for x in leases if x["container_id"] == sandbox), None)


@pytest.mark.bpf
def test_cri_labels_become_the_identity(tmp_path):
    why = _netdp_ready() or ", ".join(missing_tools())
    if why:
        pytest.skip(why)
    cni_socket = tmp_path / "cni.sock"
    conflist = {"cniVersion": "1.0.0", "name": "lanner",
                "plugins": [{"type": "lanner-cni", "agentSocket": str(cni_socket)}]}
    node, ctrd = _start_node(tmp_path, conflist, plugins={"lanner-cni": LANNER_CNI})
    agent = pin = None
    try:
        node.run("sysctl", "-w", "net.ipv4.ip_forward=1")  # the node netns only
        (tmp_path / "agent").mkdir()
        agent, pin = start_netdp_agent(tmp_path / "agent", node, cni_socket, "--cri-socket", str(ctrd.socket))
        state = tmp_path / "agent" / "netdp"
        pod = run_pod(ctrd, "web-" + uuid.uuid4().hex[:6], namespace="shop", labels={"app": "web", "tier": "fe"})
        lease = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            lease = _lease(state, pod.sandbox_id)
            if lease and lease["identity"] != IDENTITY_INIT:
                break
            time.sleep(0.05)
        assert lease and lease["complete"], lease
        assert lease["labels"] == {"app": "web", "tier": "fe"} and lease["identity"] >= 256, lease
        ids = json.loads((state / "identity.json").read_text())
        text = json.dumps(ids)
        assert '"k8s:app"' in text and '"k8s:io.kubernetes.pod.namespace"' in text and "shop" in text
        assert f"{pod.ip}/32" in text  # the ipcache entry carries the pod IP
        deferred = "-> identity" in agent.stderr_path.read_text()
        print("labels arrived after ADD (provisional init identity first):", deferred)
        remove_pod(ctrd, pod)  # StopPodSandbox + RemovePodSandbox: two DELs
        assert _lease(state, pod.sandbox_id) is None
        assert '"k8s:app"' not in (state / "identity.json").read_text()  # the identity was released
    finally:
        ctrd.stop()
        if agent is not None:
            agent.stop()
        node.delete()
        if pin:
            import subprocess

            subprocess.run(["rm", "-rf", pin])
