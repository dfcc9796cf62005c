"""Workload scoping in the kernel: TracingPolicyNamespaced and spec.podSelector run only for their pods.

The "pods" are real network namespaces (``unshare --net``) holding a real process each, registered with the
engine's workload scopes as the agent does from its pod table (tests/test_cri_pods.py does the same with
containerd's pods end to end). A command run inside a pod's netns with ``nsenter`` must be seen (or killed)
by a scoped policy; the same command in another pod's netns or on the host must not be.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lanner.exporter.api.gen.tetragon import sensors_pb2
from lanner.policy.workloads import Container, Workload
from lanner.sensors.generic.scopes import SCOPE_CG_KEY, SCOPE_KEY
from tests.policy_specs import openat_prefix, policy_yaml
from tests.test_policy_operators import body, env  # noqa: F401  (env: the fixture)

CGROUP2 = Path("/sys/fs/cgroup/unified") if os.path.ismount("/sys/fs/cgroup/unified") else Path("/sys/fs/cgroup")

pytestmark = [pytest.mark.bpf,
              pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None,
                                 reason="unshare/nsenter missing")]


@dataclass
class FakePod:
    """A network namespace with a process keeping it alive: what a pod is to the scoping code."""

    namespace: str
    labels: dict[str, str]
    proc: subprocess.Popen
    containers: dict[str, Path] = field(default_factory=dict)  # name -> its cgroup (v2) directory

    @property
    def netns(self) -> int:
        return os.stat(f"/proc/{self.proc.pid}/ns/net").st_ino

    def workload(self) -> Workload:
        return Workload(self.namespace, dict(self.labels), self.netns,
                        tuple(Container(n, "busybox", cg.stat().st_ino)
                              for n, cg in self.containers.items()))

    def run(self, *cmd: str, container: str | None = None) -> subprocess.CompletedProcess:
        """cmd in the pod's netns (and, with container, in that container's cgroup, as runc would place it)."""
        enter = ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--"]
        if container is not None:
            procs = self.containers[container] / "cgroup.procs"
            enter += ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh"]
        return subprocess.run([*enter, *cmd], capture_output=True, text=True, timeout=30)


@pytest.fixture
def pods(env):  # noqa: F811
    made: list[FakePod] = []
    host_netns = os.stat("/proc/self/ns/net").st_ino
    cg_root = CGROUP2 / f"lanner-test-workloads-{os.getpid()}"
    cg_root.mkdir(exist_ok=True)

    def make(namespace: str, containers: tuple[str, ...] = (), **labels: str) -> FakePod:
        proc = subprocess.Popen(["unshare", "--net", "sleep", "600"], stdin=subprocess.DEVNULL)
        pod = FakePod(namespace, labels, proc)
        made.append(pod)
        for name in containers:  # a cgroup per container, under a test directory of the cgroup2 hierarchy
            cg = cg_root / f"pod{proc.pid}-{name}"
            cg.mkdir()
            pod.containers[name] = cg
        deadline = time.monotonic() + 10
        while True:  # unshare runs in the host netns until it has unshared and exec'd sleep
            try:
                if pod.netns != host_netns and Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep":
                    return pod
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "unshare --net did not start"
            time.sleep(0.01)

    yield make
    env.engine.workloads.sync([])  # the node has no pod again
    for pod in made:  # stop them by PID; their netns go with them
        pod.proc.kill()
        pod.proc.wait(timeout=10)
        for cg in pod.containers.values():
            _rmdir(cg)
    _rmdir(cg_root)


def _rmdir(cg: Path) -> None:
    for _ in range(100):  # a process that just exited may keep its cgroup populated a moment
        try:
            cg.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def openat_policy(marker: str, action: str = "Post") -> str:
    return openat_prefix(f"/tmp/{marker}", action)


def namespaced(name: str, namespace: str, spec: str) -> str:
    return policy_yaml(name, spec, kind="TracingPolicyNamespaced", namespace=namespace)


def opened(evs: list[dict], marker: str) -> list[str]:
    """The marker files the policy's events report opened."""
    out = []
    for ev in evs:
        args = body(ev).get("args", [])
        out += [a["string_arg"] for a in args if marker in a.get("string_arg", "")]
    return sorted(out)


def scope_entries(env) -> set[tuple[int, int]]:  # noqa: F811
    m = env.engine.tp.map("gen_scope")
    return {SCOPE_KEY.unpack(bytes(k)) for k in m.keys()}


def info_line(env, name: str, namespace: str = "") -> str:  # noqa: F811
    return env.engine.status(name, namespace).info.split("; ")[0]


def test_namespaced_policy_runs_only_for_its_namespace(env, pods):  # noqa: F811
    m = uuid.uuid4().hex[:10]
    a, b = pods("team-a"), pods("team-b")
    env.engine.workloads.sync([a.workload(), b.workload()])
    env.engine.add(namespaced("scoped-ns", "team-a", openat_policy(m)), "test")
    try:
        st = env.engine.status("scoped-ns", "team-a")
        assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
        assert info_line(env, "scoped-ns", "team-a") == "runs for namespace team-a: 1 pods on this node"

        def trigger() -> None:
            a.run("cat", f"/tmp/{m}-in-a")
            b.run("cat", f"/tmp/{m}-in-b")
            subprocess.run(["cat", f"/tmp/{m}-on-host"], capture_output=True)

        evs = env.run(trigger, "scoped-ns")
        assert opened(evs, m) == [f"/tmp/{m}-in-a"], evs
        assert body(evs[0])["process"]["binary"].endswith("/cat")
        # pod A leaves the node (CNI DEL): its netns is out of scope; a new team-a pod C is in
        c = pods("team-a")
        env.engine.workloads.sync([b.workload(), c.workload()])
        assert info_line(env, "scoped-ns", "team-a") == "runs for namespace team-a: 1 pods on this node"
        evs = env.run(lambda: (a.run("cat", f"/tmp/{m}-a-gone"), c.run("cat", f"/tmp/{m}-in-c")), "scoped-ns")
        assert opened(evs, m) == [f"/tmp/{m}-in-c"], evs
        pid = env.engine.status("scoped-ns", "team-a").id
        assert {k for k in scope_entries(env) if k[0] == pid} == {(pid, c.netns)}
    finally:
        env.engine.delete("scoped-ns", "team-a")
    assert not [k for k in scope_entries(env) if k[0] == pid]  # nothing left behind in the kernel


def test_pod_selector_policy_follows_labels(env, pods):  # noqa: F811
    m = uuid.uuid4().hex[:10]
    web, db, other = pods("shop", app="web", tier="front"), pods("shop", app="db"), pods("misc", app="web",
                                                                                          tier="canary")
    env.engine.workloads.sync([web.workload(), db.workload(), other.workload()])
    sel = "podSelector:\n  matchLabels: {app: web}\n  matchExpressions:\n" \
          "  - {key: tier, operator: NotIn, values: [canary]}\n"
    with env.load("scoped-sel", sel + openat_policy(m)):
        assert info_line(env, "scoped-sel") == ("runs for every namespace, podSelector app=web,tier NotIn (canary): "
                                                "1 pods on this node")
        run_all = lambda: [p.run("cat", f"/tmp/{m}-{p.labels['app']}-{p.namespace}") for p in (web, db, other)]
        assert opened(env.run(run_all, "scoped-sel"), m) == [f"/tmp/{m}-web-shop"]
        # the db pod's labels change (the pod table reports it): it is selected from then on
        db.labels = {"app": "web", "tier": "back"}
        env.engine.workloads.sync([web.workload(), db.workload(), other.workload()])
        assert opened(env.run(run_all, "scoped-sel"), m) == [f"/tmp/{m}-web-shop", f"/tmp/{m}-web-shop"]
        assert info_line(env, "scoped-sel").endswith(": 2 pods on this node")


def test_scoped_sigkill_kills_only_in_the_selected_pod(env, pods, tmp_path):  # noqa: F811
    """Enforcement scoped by namespace: the process in team-a's pod dies in its openat (the marker written
    after it never appears); the same program in another pod and on the host lives."""
    m = uuid.uuid4().hex[:10]
    a, b = pods("team-a"), pods("team-b")
    env.engine.workloads.sync([a.workload(), b.workload()])
    script = "cat /tmp/{m}-x 2>/dev/null; echo $? > {out}"
    env.engine.add(namespaced("scoped-kill", "team-a", openat_policy(m, "Sigkill")), "test")
    try:
        for where, run in (("a", a.run), ("b", b.run), ("h", lambda *c: subprocess.run(c, timeout=30))):
            run("sh", "-c", script.format(m=m, out=tmp_path / where))
        counters = env.engine.counters("scoped-kill", "team-a")
    finally:
        env.engine.delete("scoped-kill", "team-a")
    # cat's status as its shell saw it: killed by SIGKILL in team-a's pod, "no such file" elsewhere
    assert (tmp_path / "a").read_text() == f"{128 + signal.SIGKILL}\n"
    assert (tmp_path / "b").read_text() == "1\n" and (tmp_path / "h").read_text() == "1\n"
    assert counters["signal"] == 1, counters


def test_scoped_policy_without_pod_source_matches_nothing(env):  # noqa: F811
    """An agent without --enable-netdp knows no pod: a namespaced policy loads, says so, and matches
    no process (never widened to the host)."""
    m = uuid.uuid4().hex[:10]
    from lanner.sensors.generic.scopes import WorkloadScopes

    from lanner.sensors.generic.engine import KeySet

    saved = env.engine.workloads
    env.engine.workloads = WorkloadScopes(KeySet(env.engine.tp.map("gen_scope")),  # as a fresh agent's
                                          KeySet(env.engine.tp.map("gen_scope_cg")))
    try:
        env.engine.add(namespaced("scoped-none", "default", openat_policy(m)), "test")
        try:
            assert info_line(env, "scoped-none", "default") == (
                "runs for namespace default: 0 pods on this node (no pod source: the agent runs without "
                "--enable-netdp, so no pod is known)")
            evs = env.run(lambda: subprocess.run(["cat", f"/tmp/{m}-host"], capture_output=True), "scoped-none")
            assert opened(evs, m) == []
            assert env.engine.counters("scoped-none", "default")["matched"] == 0
        finally:
            env.engine.delete("scoped-none", "default")
    finally:
        env.engine.workloads = saved


def test_pod_selector_with_host_selector_adds_the_host(env, pods):  # noqa: F811
    """podSelector + hostSelector: {}: the selected pods and the host's processes, not the other pods."""
    if os.stat("/proc/self/ns/net").st_ino != env.engine.workloads.host_netns:
        pytest.skip("the test runs outside the host's network namespace")
    m = uuid.uuid4().hex[:10]
    web, db = pods("shop", app="web"), pods("shop", app="db")
    env.engine.workloads.sync([web.workload(), db.workload()])
    sel = "podSelector:\n  matchLabels: {app: web}\nhostSelector: {}\n"
    with env.load("scoped-host", sel + openat_policy(m)):
        assert info_line(env, "scoped-host") == ("runs for every namespace, podSelector app=web, and the host "
                                                 "(hostSelector {}): 1 pods on this node")
        evs = env.run(lambda: (web.run("cat", f"/tmp/{m}-web"), db.run("cat", f"/tmp/{m}-db"),
                               subprocess.run(["cat", f"/tmp/{m}-host"], capture_output=True)), "scoped-host")
        assert opened(evs, m) == [f"/tmp/{m}-host", f"/tmp/{m}-web"]


def test_container_selector_runs_for_the_selected_containers(env, pods):  # noqa: F811
    """containerSelector (name In [main]) in the selected namespace: a process in the main container's cgroup
    is seen; the sidecar's, the pod's own (pause) and another namespace's main container are not. A container
    the runtime reports later (pod table updated) is covered from then on."""
    m = uuid.uuid4().hex[:10]
    a, b = pods("team-a", containers=("main", "side")), pods("team-b", containers=("main",))
    a_known = Workload(a.namespace, {}, a.netns, tuple(c for c in a.workload().containers if c.name == "side"))
    env.engine.workloads.sync([a_known, b.workload()])  # main's cgroup not learned yet
    sel = "containerSelector:\n  matchExpressions: [{key: name, operator: In, values: [main]}]\n"
    env.engine.add(namespaced("scoped-ctr", "team-a", sel + openat_policy(m)), "test")
    try:
        assert info_line(env, "scoped-ctr", "team-a") == (
            "runs for namespace team-a, containerSelector name In (main): 0 containers on this node")

        def trigger() -> None:
            a.run("cat", f"/tmp/{m}-a-main", container="main")
            a.run("cat", f"/tmp/{m}-a-side", container="side")
            a.run("cat", f"/tmp/{m}-a-pod")
            b.run("cat", f"/tmp/{m}-b-main", container="main")

        assert opened(env.run(trigger, "scoped-ctr"), m) == []  # fail closed until the container is known
        env.engine.workloads.sync([a.workload(), b.workload()])
        assert info_line(env, "scoped-ctr", "team-a").endswith(": 1 containers on this node")
        assert opened(env.run(trigger, "scoped-ctr"), m) == [f"/tmp/{m}-a-main"]
        pid = env.engine.status("scoped-ctr", "team-a").id
        cg_keys = {SCOPE_CG_KEY.unpack(bytes(k)) for k in env.engine.tp.map("gen_scope_cg").keys()}
        assert {k for k in cg_keys if k[0] == pid} == {(pid, 0, a.containers["main"].stat().st_ino)}
    finally:
        env.engine.delete("scoped-ctr", "team-a")
    assert not [k for k in env.engine.tp.map("gen_scope_cg").keys() if SCOPE_CG_KEY.unpack(bytes(k))[0] == pid]


def test_container_selector_by_image_repo(env, pods):  # noqa: F811
    """containerSelector on `repo` (the image without its tag; label-value rules apply to the values, so a
    repository with a registry or path cannot be written there): a container whose image matches."""
    m = uuid.uuid4().hex[:10]
    p = pods("shop", containers=("web",))
    w = p.workload()
    other = Workload(w.namespace, w.labels, w.netns, (Container("web", "nginx", w.containers[0].cgroup),))
    env.engine.workloads.sync([other])
    sel = "containerSelector:\n  matchLabels: {repo: busybox}\n"
    with env.load("scoped-repo", sel + openat_policy(m)):
        assert opened(env.run(lambda: p.run("cat", f"/tmp/{m}-x", container="web"), "scoped-repo"), m) == []
        env.engine.workloads.sync([w])  # the same container, now reported with a busybox image
        assert opened(env.run(lambda: p.run("cat", f"/tmp/{m}-x", container="web"), "scoped-repo"), m) == \
            [f"/tmp/{m}-x"]
