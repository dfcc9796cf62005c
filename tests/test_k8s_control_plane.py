"""The test control plane itself (tests/k8s_harness.py): a real kube-apiserver on Debian's etcd 3.4.

It serves the version it was built as, stores and watches through etcd, authenticates the two tokens,
enforces RBAC, and accepts the kubelet's writes the tests make (tests/k8s_kubelet.py).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from tests.k8s_harness import AGENT_USER, ControlPlane, control_plane
from tests.k8s_kubelet import Container, Owner, PodSpec, create_node, create_pod, set_running

WRAPPER_GO_MOD = Path(__file__).resolve().parents[1] / "tools" / "k8s" / "go.mod"


def _wanted_version() -> str:
    for line in WRAPPER_GO_MOD.read_text().splitlines():
        parts = line.split()
        if parts[:2] == ["require", "k8s.io/kubernetes"]:
            return parts[2]
    raise AssertionError("tools/k8s/go.mod requires no k8s.io/kubernetes")


def test_server_and_kubectl_report_the_wrapper_modules_version(k8s: ControlPlane) -> None:
    out = json.loads(k8s.kubectl("version", "-o", "json").stdout)
    wanted = _wanted_version()
    assert out["serverVersion"]["gitVersion"] == wanted
    assert out["clientVersion"]["gitVersion"] == wanted
    assert out["serverVersion"]["minor"] == wanted.split(".")[1]


def test_objects_are_stored_and_watched(k8s: ControlPlane, k8s_namespace: str) -> None:
    """Writes reach etcd and a watch delivers them (etcd 3.4: no watch-progress, the server falls back)."""
    from kubernetes import client, watch

    core = client.CoreV1Api(k8s.api_client())
    seen: list[str] = []
    w = watch.Watch()

    start = core.list_namespaced_config_map(k8s_namespace).metadata.resource_version

    def follow() -> None:  # from the list's resourceVersion: no write can slip in before the watch starts
        for ev in w.stream(core.list_namespaced_config_map, k8s_namespace, resource_version=start,
                           timeout_seconds=20):
            seen.append(f"{ev['type']} {ev['object'].metadata.name}")
            if len(seen) >= 2:
                w.stop()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    body = {"metadata": {"name": "cm1"}, "data": {"k": "v"}}
    core.create_namespaced_config_map(k8s_namespace, body)
    core.patch_namespaced_config_map("cm1", k8s_namespace, {"data": {"k": "w"}})
    t.join(timeout=20)
    assert seen[:2] == ["ADDED cm1", "MODIFIED cm1"]
    assert core.read_namespaced_config_map("cm1", k8s_namespace).data == {"k": "w"}


def test_rbac_is_enforced_for_the_agent_token(k8s: ControlPlane, k8s_namespace: str) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    agent = client.CoreV1Api(k8s.api_client(as_agent=True))
    assert agent.list_namespaced_pod(k8s_namespace).items == []
    with pytest.raises(ApiException) as denied:
        agent.list_namespaced_secret(k8s_namespace)
    assert denied.value.status == 403
    assert AGENT_USER in denied.value.body
    admin = client.CoreV1Api(k8s.api_client())
    assert admin.list_namespaced_secret(k8s_namespace).items == []


def test_kubelet_role_node_pod_and_container_status(k8s: ControlPlane, k8s_namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(k8s.api_client())
    node = f"node-{k8s_namespace}"
    create_node(core, node, "10.244.7.0/24", labels={"lanner.test/role": "worker"})
    owner = Owner("ReplicaSet", "web-5d4f8", "5b0f9d6e-0000-4000-8000-000000000001")
    spec = PodSpec("web-5d4f8-abcde", node, (Container("app"), Container("sidecar")), {"app": "web"}, owner)
    create_pod(core, k8s_namespace, spec)
    ids = {"app": "a" * 64, "sidecar": "b" * 64}
    set_running(core, k8s_namespace, spec, ids, pod_ip="10.244.7.5")

    agent = client.CoreV1Api(k8s.api_client(as_agent=True))
    mine = agent.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
    assert [p.metadata.name for p in mine] == [spec.name]
    pod = mine[0]
    assert pod.status.phase == "Running" and pod.status.pod_ip == "10.244.7.5"
    assert {s.name: s.container_id for s in pod.status.container_statuses} == \
        {"app": f"containerd://{'a' * 64}", "sidecar": f"containerd://{'b' * 64}"}
    assert pod.metadata.owner_references[0].kind == "ReplicaSet"
    assert agent.read_node(node).spec.pod_cidr == "10.244.7.0/24"


def test_control_plane_stops_by_pid_and_cleans_up_after_a_failure(tmp_path: Path) -> None:
    """An exception inside the context still stops etcd and the apiserver and removes the directory."""
    seen: dict[str, object] = {}
    with pytest.raises(RuntimeError, match="boom"):
        with control_plane(tmp_path) as cp:
            seen["dir"] = cp.dir
            seen["pids"] = [int(p) for p in _pids_listening(cp)]
            raise RuntimeError("boom")
    assert len(seen["pids"]) == 2
    assert not Path(seen["dir"]).exists()
    for pid in seen["pids"]:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie_free(pid)


def _pids_listening(cp: ControlPlane) -> list[str]:
    """PIDs of this control plane's etcd and kube-apiserver (their command lines name its directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(cp.dir).encode() in part for part in cmd) and os.path.basename(cmd[0]) in (b"etcd",
                                                                                          b"kube-apiserver"):
            pids.append(entry.name)
    return pids


def _is_zombie_free(pid: int) -> bool:
    """A recycled PID belongs to something else: not one of ours."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"lanner-k8s-" not in cmd


def test_a_port_taken_before_etcd_binds_it_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """free_port() can race with another process: the first start fails fast and the second succeeds."""
    import socket

    from tests import k8s_harness

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real = k8s_harness.free_port
    calls: list[int] = []

    def racy() -> int:
        calls.append(1)
        return taken.getsockname()[1] if len(calls) == 1 else real()

    monkeypatch.setattr(k8s_harness, "free_port", racy)
    try:
        with control_plane(tmp_path) as cp:
            assert cp.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    finally:
        taken.close()
    assert len(calls) == 6  # two starts, three ports each


def test_a_second_make_builds_nothing() -> None:
    """make k8s-bins / tetragon-client reuse what is in build/ (CI builds them once, before the suite)."""
    import shutil
    import subprocess

    from tests.k8s_harness import KUBE_APISERVER, KUBECTL, ROOT

    if not (KUBE_APISERVER.exists() and KUBECTL.exists()) or not shutil.which("make"):
        pytest.skip("the binaries are not built (make k8s-bins)")
    proc = subprocess.run(["make", "-q", "-C", str(ROOT), "k8s-bins"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"make k8s-bins would rebuild: {proc.stdout}{proc.stderr}"
