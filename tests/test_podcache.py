"""PodCache (netns / cgroup / IP -> pod) and the encoder's pod field, with real cgroups and netns inodes.

The container source here is a table (the CRI one is exercised against a real containerd in
test_cri_pods.py); cgroups are real directories under /sys/fs/cgroup/unified/<test dir>, so cgroup ids
are the kernel's.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from google.protobuf import json_format

from lanner.exporter.api.gen.tetragon import tetragon_pb2
from lanner.exporter.encoder import EncoderOptions, KtimeClock, ProcessEventEncoder
from lanner.exporter.filters import EventFilter
from lanner.exporter.grpc_api import ProtoEventEncoder
from lanner.exporter.pipeline import OutEvent
from lanner.netdp.endpoint import ContainerInfo, Endpoint, PodInfo
from lanner.netdp.podcache import PodCache, RuntimeContainer
from lanner.process_cache import Process, make_exec_id
from lanner.sensors.process import Creds, Namespaces

UNIFIED = Path("/sys/fs/cgroup/unified")


@pytest.fixture
def cgroups():
    """A private cgroup subtree; yields a function making child cgroups -> (path rel. to root, id)."""
    if not UNIFIED.is_dir():
        pytest.skip("no cgroup2 hierarchy at /sys/fs/cgroup/unified")
    top = UNIFIED / f"lanner-podcache-{uuid.uuid4().hex[:8]}"
    top.mkdir()
    made: list[Path] = []

    def make(name: str) -> tuple[str, int]:
        d = top / name
        d.mkdir()
        made.append(d)
        return "/" + str(d.relative_to(UNIFIED)), os.stat(d).st_ino

    yield make
    for d in reversed(made):
        d.rmdir()
    top.rmdir()


class TableSource:
    """A ContainerSource answering from a dict, counting how often it is asked."""

    def __init__(self, table: dict[str, list[RuntimeContainer]], labels: dict[str, dict] | None = None) -> None:
        self.table = table
        self.labels = labels or {}
        self.calls = 0
        self.label_calls = 0

    def containers_of(self, sandbox_id: str) -> list[RuntimeContainer]:
        self.calls += 1
        return list(self.table.get(sandbox_id, []))

    def pod_labels(self, sandbox_id: str) -> dict[str, str] | None:
        self.label_calls += 1
        return self.labels.get(sandbox_id)


def _pod(name="web", labels=(("app", "web"), ("tier", "front"))) -> PodInfo:
    return PodInfo("default", name, uid="uid-" + name, labels=labels)


def _ep(sandbox="sb1", netns_inode=4026599999, ip="10.1.0.5", pod=None, cgroup_ids=()) -> Endpoint:
    return Endpoint(endpoint_id=7, container_id=sandbox, ifname="eth0", netns=f"/var/run/netns/{sandbox}",
                    netns_inode=netns_inode, host_ifname="lxc1", host_ifindex=99, ipv4=ip,
                    mac="02:00:00:00:00:01", identity=300, pod=pod or _pod(), cgroup_ids=tuple(cgroup_ids))


def _proc(net: int, cgroup_id: int, pid: int = 4242, nspid: int = 1) -> Process:
    creds = Creds(0, 0, 0, 0, 0, 0, 0, 0, 0, 4294967295, 0, 0, 0)
    ns = Namespaces(1, 2, 3, 4, 5, net, 7, 8, 9, 10)
    return Process(key=(pid, 5), exec_id=make_exec_id("n1", 5, pid), parent_key=None, parent_exec_id="", pid=pid,
                   tid=pid, nspid=nspid, binary="/bin/sh", args=("-c", "id"), cwd="/", flags=("execve",),
                   start_ns=5, creds=creds, ns=ns, cgroup_id=cgroup_id)


def test_endpoint_indexes_and_idempotent_remove():
    pc = PodCache()
    ep = _ep()
    pc.add(ep)
    assert pc.pod_for_netns(ep.netns_inode) == ep.pod
    assert pc.pod_for_ip("10.1.0.5") == ep.pod
    assert pc.pod_for_netns(1) is None and pc.pod_for_ip("10.1.0.6") is None
    assert pc.match(ep.netns_inode, 0).pod == ep.pod and pc.match(ep.netns_inode, 0).container is None
    assert pc.match(12345, 0) is None  # a host process
    pc.remove(ep)
    pc.remove(ep)  # containerd's second DEL
    assert pc.pod_for_netns(ep.netns_inode) is None and pc.pod_for_ip("10.1.0.5") is None and len(pc) == 0


def test_re_add_of_a_sandbox_replaces_its_indexes():
    pc = PodCache()
    pc.add(_ep(netns_inode=111, ip="10.1.0.5"))
    pc.add(_ep(netns_inode=222, ip="10.1.0.9"))
    assert pc.pod_for_netns(111) is None and pc.pod_for_ip("10.1.0.5") is None
    assert pc.pod_for_netns(222) is not None and len(pc) == 1


def test_container_learned_once_per_cgroup(cgroups):
    path_main, cg_main = cgroups("main")
    path_side, cg_side = cgroups("side")
    _, cg_other = cgroups("other")
    src = TableSource({"sb1": [
        RuntimeContainer(ContainerInfo("c" * 64, "main", "docker.io/local/busybox:1"), "sb1", path_main, "sha256:ab"),
        RuntimeContainer(ContainerInfo("d" * 64, "side", "docker.io/local/busybox:1"), "sb1", path_side, "sha256:ab"),
    ]})
    pc = PodCache(src)
    ep = _ep()
    pc.add(ep)
    m = pc.match(ep.netns_inode, cg_main)
    assert m.container.name == "main" and m.container.id == "c" * 64 and m.image_id == "sha256:ab"
    assert src.calls == 1
    assert pc.match(ep.netns_inode, cg_side).container.name == "side"
    assert pc.pod_for_cgroup(cg_side) == ep.pod
    assert src.calls == 1  # one CRI round learned both containers
    # a cgroup the runtime does not know: the pod without a container, and the runtime is not asked again
    for _ in range(3):
        m = pc.match(ep.netns_inode, cg_other)
        assert m.pod == ep.pod and m.container is None
    assert src.calls == 2
    # a host process in an unrelated cgroup never reaches the runtime
    assert pc.match(4026531840, cg_other + 10_000) is None and src.calls == 2
    pc.remove(ep)
    assert pc.pod_for_cgroup(cg_main) is None and pc.match(ep.netns_inode, cg_main) is None


def test_listeners_see_pods_and_learned_containers(cgroups):
    """subscribe: called at once and after every change of the pod set, a pod's labels or its known
    containers (what the policy engine's workload scoping is fed from)."""
    path_main, cg_main = cgroups("main")
    src = TableSource({"sb1": [RuntimeContainer(ContainerInfo("c" * 64, "main", "busybox:1"), "sb1", path_main)]})
    pc = PodCache(src)
    seen: list[list[str]] = []
    pc.subscribe(lambda eps: seen.append([e.container_id for e in eps]))
    assert seen == [[]]
    ep = _ep(pod=PodInfo("default", "web", labels=(("app", "web"),)))
    pc.add(ep)
    assert seen[-1] == ["sb1"] and pc.known_containers("sb1") == []
    pc.match(ep.netns_inode, cg_main)  # the container's first process: learned from the runtime
    assert [(c.name, cg) for c, cg in pc.known_containers("sb1")] == [("main", cg_main)]
    assert len(seen) == 3
    pc.update_pod("sb1", PodInfo("default", "web", labels=(("app", "db"),)))
    assert len(seen) == 4
    pc.remove(ep)
    assert seen[-1] == [] and pc.known_containers("sb1") == []
    pc.remove(ep)  # idempotent, and no change: no call
    assert len(seen) == 5


def test_labels_learned_after_add_update_the_pod(cgroups):
    path_main, cg_main = cgroups("main")
    src = TableSource({"sb1": [RuntimeContainer(ContainerInfo("c" * 64, "main", "img"), "sb1", path_main)]})
    pc = PodCache(src)
    pc.add(_ep(pod=_pod(labels=())))
    assert pc.match(4026599999, cg_main).pod.labels == ()
    assert pc.update_pod("sb1", _pod(labels=(("app", "web"),)))
    assert pc.pod_for_ip("10.1.0.5").label_dict() == {"app": "web"}
    assert pc.match(4026599999, cg_main).pod.label_dict() == {"app": "web"}
    assert pc.match(4026599999, cg_main).container.name == "main"
    assert not pc.update_pod("nope", _pod())


def test_labels_from_the_runtime_when_cni_had_none(cgroups):
    """containerd knows a sandbox only after CNI ADD: labels come on its first container's process."""
    path_main, cg_main = cgroups("main")
    _, cg_pause = cgroups("pause")
    src = TableSource({"sb1": [RuntimeContainer(ContainerInfo("c" * 64, "main", "img"), "sb1", path_main)]})
    pc = PodCache(src)
    pc.add(_ep(pod=_pod(labels=())))
    assert pc.match(4026599999, cg_pause).pod.labels == ()  # runtime does not know the sandbox yet
    assert src.label_calls == 1
    src.labels["sb1"] = {"app": "web"}
    m = pc.match(4026599999, cg_main)
    assert m.pod.label_dict() == {"app": "web"} and m.container.name == "main"
    assert pc.pod_for_netns(4026599999).label_dict() == {"app": "web"} and pc.pod_for_ip("10.1.0.5").labels
    assert src.label_calls == 2
    pc.match(4026599999, cg_main + 100_000)  # another unknown cgroup: labels are not asked again
    assert src.label_calls == 2


def test_runtime_errors_leave_the_pod_known():
    class Down:
        def containers_of(self, sandbox_id):
            raise ConnectionError("containerd is gone")

        def pod_labels(self, sandbox_id):
            raise ConnectionError("containerd is gone")

    pc = PodCache(Down())
    pc.add(_ep())
    m = pc.match(4026599999, 777)
    assert m.pod.name == "web" and m.container is None and pc.cri_errors == 1


def _encoder() -> ProcessEventEncoder:
    clock = KtimeClock()
    clock.offset_ns = 1_700_000_000_000_000_000
    return ProcessEventEncoder(EncoderOptions("n1"), tuple(range(1, 11)), clock)


def test_encoder_pod_field_tetragon_shape(cgroups):
    path_main, cg_main = cgroups("main")
    src = TableSource({"sb1": [RuntimeContainer(ContainerInfo("c" * 64, "main", "docker.io/local/busybox:1"),
                                                "sb1", path_main, "sha256:ab")]})
    pc = PodCache(src)
    pc.add(_ep())
    enc = _encoder()
    enc.attach_pod_resolver(pc)
    p = _proc(4026599999, cg_main)
    pr = json.loads(enc.exec_event(p, None))["process_exec"]["process"]
    assert pr["pod"] == {
        "namespace": "default", "name": "web", "uid": "uid-web",
        "container": {"id": "c" * 64, "name": "main",
                      "image": {"id": "sha256:ab", "name": "docker.io/local/busybox:1"}, "pid": 1},
        "pod_labels": {"app": "web", "tier": "front"}, "workload": "web", "workload_kind": "Pod"}
    assert pr["docker"] == "c" * 15
    keys = list(pr)
    assert keys.index("auid") < keys.index("pod") < keys.index("docker")  # Tetragon's field order
    # the same object parses as Tetragon's Process message (what the gRPC API sends)
    msg = json_format.ParseDict(pr, tetragon_pb2.Process())
    assert msg.pod.container.image.name == "docker.io/local/busybox:1" and msg.pod.pod_labels["tier"] == "front"
    # the gRPC API's own writer (exporter/api/wire.py) gives the same message; map entries (pod_labels) may
    # come in another order than protobuf's own serializer writes them, so compare the parsed messages
    assert tetragon_pb2.Process.FromString(ProtoEventEncoder(enc, "n1").process_bytes(p)) == msg
    # resolution is memoised with the process: removing the pod does not change an already-rendered one
    calls = src.calls
    pc.remove(_ep())
    assert json.loads(enc.exec_event(p, None))["process_exec"]["process"]["pod"]["name"] == "web"
    assert src.calls == calls


def test_encoder_host_process_unchanged_and_no_resolver_no_pod():
    plain = _encoder()
    with_pods = _encoder()
    pc = PodCache()
    pc.add(_ep())
    with_pods.attach_pod_resolver(pc)
    host = _proc(4026531840, 1)
    a = json.loads(plain.exec_event(host, None))["process_exec"]["process"]
    b = json.loads(with_pods.exec_event(_proc(4026531840, 1), None))["process_exec"]["process"]
    assert "pod" not in a and a == b
    # no resolver attached: a process in a pod's netns renders without pod
    assert "pod" not in json.loads(plain.exec_event(_proc(4026599999, 1), None))["process_exec"]["process"]


def test_export_filters_see_the_pod():
    enc = _encoder()
    pc = PodCache()
    pc.add(_ep())
    enc.attach_pod_resolver(pc)
    in_pod, host = _proc(4026599999, 0), _proc(4026531840, 0, pid=99)
    lines = [OutEvent("process_exec", p, None, enc.exec_event(p, None)) for p in (in_pod, host)]
    by_name = EventFilter.parse({"pod_regex": ["^web$"]})
    by_ns = EventFilter.parse({"namespace": ["default"]})
    by_label = EventFilter.parse({"labels": ["app=web"]})
    for f in (by_name, by_ns, by_label):
        assert [f.matches(e) for e in lines] == [True, False], f.source
