"""The agent on the Kubernetes API (--enable-k8s-api): TracingPolicies applied with the real kubectl reach the
agent's engine, per-node status (tp list, metrics, Events), and the reflector's 410 re-list.

One agent for the module (node ``lanner-k8s-<hex>``, a Node object with labels), started before the CRDs
exist; the session's control plane (tests/k8s_harness.py). The API server restart test has a control plane
of its own (restartable_control_plane), never the session's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import RunningAgent, start_agent
from tests.k8s_harness import MANIFESTS, ControlPlane
from tests.k8s_kubelet import create_node
from tests.policy_specs import TP_HOOK

pytestmark = pytest.mark.bpf

LANNER = [sys.executable, "-m", "lanner"]
MISSING_KPROBE = """
  kprobes:
  - call: lanner_no_such_kernel_function
    syscall: false
"""


def policy(name: str, *, namespace: str | None = None, hook: str = TP_HOOK, extra: str = "") -> str:
    kind = "TracingPolicyNamespaced" if namespace else "TracingPolicy"
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return f"apiVersion: cilium.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}{ns}\nspec:{extra}{hook}"


class Ctx:
    def __init__(self, k8s: ControlPlane, agent: RunningAgent, node: str, before_crds: dict) -> None:
        self.k8s, self.agent, self.node, self.before_crds = k8s, agent, node, before_crds

    def listed(self) -> dict[tuple[str, str], object]:
        from lanner.client import AgentClient

        with AgentClient(self.agent.address, timeout=10) as c:
            return {(p.name, p.namespace): p for p in c.list_policies()}

    def wait(self, pred, timeout: float = 10.0, what: str = "policies") -> tuple[dict, float]:
        """Poll tp list until pred(listed) holds; (listed, seconds waited)."""
        t0 = time.monotonic()
        while True:
            got = self.listed()
            if pred(got):
                return got, time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"timed out waiting for {what}: {sorted(got)}; agent log:\n"
                                     + self.agent.stderr_path.read_text()[-3000:])
            time.sleep(0.02)

    def apply(self, text: str) -> None:
        self.k8s.kubectl("apply", "-f", "-", stdin=text)


def _state(p) -> str:
    from lanner.exporter.api.gen.tetragon import sensors_pb2

    return sensors_pb2.TracingPolicyState.Name(p.state).removeprefix("TP_STATE_").lower()


def wait_established(k8s: ControlPlane, timeout: float = 60.0) -> None:
    """Both CRDs Established (kubectl wait fails while a new CRD has no conditions yet: poll instead)."""
    deadline = time.monotonic() + timeout
    path = '{.items[*].status.conditions[?(@.type=="Established")].status}'
    while True:
        out = k8s.kubectl("get", "crd", "tracingpolicies.cilium.io", "tracingpoliciesnamespaced.cilium.io",
                          "-o", f"jsonpath={path}", check=False).stdout.split()
        if out == ["True", "True"]:
            return
        assert time.monotonic() < deadline, f"CRDs not established: {out}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def ctx(k8s: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    k8s.kubectl("delete", "--ignore-not-found", "--wait=true", "-f", str(MANIFESTS / "crds.yaml"), timeout=120)
    node = f"lanner-k8s-{uuid.uuid4().hex[:8]}"
    from kubernetes import client

    core = client.CoreV1Api(k8s.api_client())
    create_node(core, node, "10.244.9.0/24", labels={"lanner-test/role": "a"})
    agent = start_agent(tmp_path_factory.mktemp("k8s-agent"), "--enable-k8s-api", "--k8s-kubeconfig-path",
                        str(k8s.agent_kubeconfig), node=node)
    c: Ctx | None = None
    try:
        deadline = time.monotonic() + 15
        while True:
            before = agent.status()
            watches = before["k8s"]["watches"]
            if watches["tracingpolicies"]["state"] == "waiting for the resource" and \
                    watches["node"]["state"] == "watching":
                break
            assert time.monotonic() < deadline, before["k8s"]
            time.sleep(0.1)
        k8s.kubectl("apply", "--server-side", "-f", str(MANIFESTS / "crds.yaml"))
        wait_established(k8s)
        c = Ctx(k8s, agent, node, before)
        yield c
    finally:
        agent.stop()
        if c is not None and c.agent is not agent:
            c.agent.stop()  # a test restarted it (test_agent_restart_converges_to_the_api_state)
        core.delete_node(node)


def test_agent_is_ready_before_the_crds_and_picks_them_up_later(ctx: Ctx) -> None:
    k8s = ctx.before_crds["k8s"]
    assert ctx.before_crds["ready_s"] is not None
    assert k8s["watches"]["tracingpolicies"]["state"] == "waiting for the resource"
    assert k8s["watches"]["node"]["state"] == "watching" and k8s["watches"]["node"]["objects"] == 1
    ctx.apply(policy("late-crd"))
    got, _ = ctx.wait(lambda p: ("late-crd", "") in p and _state(p[("late-crd", "")]) != "loading", timeout=15)
    assert _state(got[("late-crd", "")]) == "enabled"
    ctx.k8s.kubectl("delete", "tgtp", "late-crd")
    ctx.wait(lambda p: ("late-crd", "") not in p)


def test_apply_edit_label_and_delete_reach_the_engine_within_a_second(ctx: Ctx) -> None:
    ctx.apply(policy("timing"))
    got, t_apply = ctx.wait(lambda p: ("timing", "") in p and _state(p[("timing", "")]) == "enabled")
    first_id = got[("timing", "")].id
    ctx.k8s.kubectl("label", "tgtp", "timing", "team=blue")
    ctx.k8s.kubectl("annotate", "tgtp", "timing", "note=just-metadata")
    time.sleep(1.0)  # a reload would have happened by now
    assert ctx.listed()[("timing", "")].id == first_id, "a label/annotation edit reloaded the policy"
    ctx.k8s.kubectl("patch", "tgtp", "timing", "--type=merge", "-p",
                    json.dumps({"spec": {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_getpid"}]}}))
    got, t_edit = ctx.wait(lambda p: ("timing", "") in p and p[("timing", "")].id != first_id
                           and _state(p[("timing", "")]) == "enabled")
    assert "sys_enter_getpid" in got[("timing", "")].info
    ctx.k8s.kubectl("delete", "tgtp", "timing", "--wait=false")
    _, t_delete = ctx.wait(lambda p: ("timing", "") not in p)
    print(f"apply {t_apply:.3f} s, edit {t_edit:.3f} s, delete {t_delete:.3f} s (after kubectl returned)")
    assert max(t_apply, t_edit, t_delete) < 1.0, (t_apply, t_edit, t_delete)


def test_same_name_cluster_and_namespaced_policies_coexist(ctx: Ctx) -> None:
    ns1, ns2 = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    for ns in (ns1, ns2):
        ctx.k8s.kubectl("create", "namespace", ns)
    try:
        ctx.apply("---\n".join([policy("same"), policy("same", namespace=ns1), policy("same", namespace=ns2)]))
        keys = {("same", ""), ("same", ns1), ("same", ns2)}
        got, _ = ctx.wait(lambda p: keys <= set(p) and all(_state(p[k]) == "enabled" for k in keys))
        assert len({got[k].id for k in keys}) == 3
        ctx.k8s.kubectl("delete", "tgtpn", "same", "-n", ns1)
        got, _ = ctx.wait(lambda p: ("same", ns1) not in p)
        assert {("same", ""), ("same", ns2)} <= set(got)
        ctx.k8s.kubectl("delete", "tgtp", "same")
        ctx.k8s.kubectl("delete", "tgtpn", "same", "-n", ns2)
        ctx.wait(lambda p: not keys & set(p))
    finally:
        for ns in (ns1, ns2):
            ctx.k8s.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _events(ctx: Ctx, name: str, reason: str) -> list[dict]:
    out = ctx.k8s.kubectl("get", "events", "-A", "-o", "json", "--field-selector",
                          f"involvedObject.name={name},reason={reason}").stdout
    return json.loads(out)["items"]


def test_node_selector_skips_and_follows_node_relabelling(ctx: Ctx) -> None:
    sel = "\n  nodeSelector:\n    matchLabels:\n      lanner-test/role: b"
    ctx.apply(policy("only-b", extra=sel))
    got, _ = ctx.wait(lambda p: ("only-b", "") in p and _state(p[("only-b", "")]) != "loading")
    assert _state(got[("only-b", "")]) == "skipped"
    assert f"does not select node {ctx.node}" in got[("only-b", "")].info
    metrics_states = ctx.agent.status()["policy_states"]
    assert metrics_states.get("skipped", 0) >= 1
    try:
        ctx.k8s.kubectl("label", "node", ctx.node, "lanner-test/role=b", "--overwrite")
        ctx.wait(lambda p: ("only-b", "") in p and _state(p[("only-b", "")]) == "enabled")
        ctx.k8s.kubectl("label", "node", ctx.node, "lanner-test/role=a", "--overwrite")
        ctx.wait(lambda p: ("only-b", "") in p and _state(p[("only-b", "")]) == "skipped")
        deadline = time.monotonic() + 10
        while not _events(ctx, "only-b", "PolicySkipped"):
            assert time.monotonic() < deadline, "no PolicySkipped Event"
            time.sleep(0.2)
        ev = _events(ctx, "only-b", "PolicySkipped")[0]
        assert ev["source"]["host"] == ctx.node and ctx.node in ev["message"]
        assert ev["involvedObject"]["kind"] == "TracingPolicy"
    finally:
        ctx.k8s.kubectl("label", "node", ctx.node, "lanner-test/role=a", "--overwrite")
        ctx.k8s.kubectl("delete", "tgtp", "only-b", check=False)


def test_a_policy_the_kernel_refuses_is_an_event_and_in_tp_list(ctx: Ctx) -> None:
    ctx.apply(policy("refused", hook=MISSING_KPROBE))
    got, _ = ctx.wait(lambda p: ("refused", "") in p and _state(p[("refused", "")]) != "loading")
    assert _state(got[("refused", "")]) == "load_error"
    assert "lanner_no_such_kernel_function" in got[("refused", "")].error
    tp = subprocess.run(LANNER + ["tp", "list", "--server-address", ctx.agent.address], capture_output=True,
                        text=True, timeout=60)
    assert "refused" in tp.stdout and "load_error" in tp.stdout, tp.stdout + tp.stderr
    deadline = time.monotonic() + 10
    while True:
        described = ctx.k8s.kubectl("describe", "tgtp", "refused").stdout
        if "PolicyLoadError" in described:
            break
        assert time.monotonic() < deadline, described
        time.sleep(0.2)
    assert ctx.node in described and "lanner_no_such_kernel_function" in described
    ctx.k8s.kubectl("delete", "tgtp", "refused")
    ctx.wait(lambda p: ("refused", "") not in p)


def test_agent_restart_converges_to_the_api_state(ctx: Ctx, tmp_path: Path) -> None:
    ctx.apply(policy("kept-a") + "---\n" + policy("gone-b"))
    ctx.wait(lambda p: {("kept-a", ""), ("gone-b", "")} <= set(p))
    ctx.agent.stop()
    ctx.k8s.kubectl("delete", "tgtp", "gone-b")
    ctx.apply(policy("new-c"))
    ctx.agent = start_agent(tmp_path, "--enable-k8s-api", "--k8s-kubeconfig-path",
                            str(ctx.k8s.agent_kubeconfig), node=ctx.node)
    got, _ = ctx.wait(lambda p: {("kept-a", ""), ("new-c", "")} <= set(p), timeout=20)
    assert ("gone-b", "") not in got
    ctx.k8s.kubectl("delete", "tgtp", "kept-a", "new-c")
    ctx.wait(lambda p: not {("kept-a", ""), ("new-c", "")} & set(p))


def test_reflector_relists_after_410_and_reports_the_missed_delete(ctx: Ctx) -> None:
    from lanner.k8s.integration import TP
    from lanner.k8s.reflector import DELETED, SYNCED, Reflector, ReflectorContext, Resource

    ctx.apply(policy("r-keep") + "---\n" + policy("r-drop"))
    changes: list = []
    synced = threading.Event()

    def emit(c) -> None:
        changes.append(c)
        if c.type == SYNCED:
            synced.set()

    res = Resource(TP.name, TP.path, indexes={"prefix": lambda o: [o["metadata"]["name"].split("-")[0]]})
    r = Reflector(ReflectorContext(ctx.k8s.api_client(), res, emit))
    r._list()  # the cache as a reflector had it before it lost its watch
    assert {"r-keep", "r-drop"} <= {o["metadata"]["name"] for o in r.items()}
    assert sorted(o["metadata"]["name"] for o in r.by_index("prefix", "r")) == ["r-drop", "r-keep"]
    ctx.k8s.kubectl("delete", "tgtp", "r-drop")
    r._rv = "1"  # its version is long compacted away: the watch is answered 410 Gone
    synced.clear()
    changes.clear()
    r.start()
    try:
        assert synced.wait(15), r.stats
        assert r.stats.gone == 1 and r.stats.lists == 2
        deleted = [c.obj["metadata"]["name"] for c in changes if c.type == DELETED]
        assert deleted == ["r-drop"]
        assert r.get("r-keep") is not None and r.get("r-drop") is None
        assert [o["metadata"]["name"] for o in r.by_index("prefix", "r")] == ["r-keep"]  # the index follows
    finally:
        r.close()
        ctx.k8s.kubectl("delete", "tgtp", "r-keep")


def test_an_unreachable_api_is_a_status_not_an_exit(k8s: ControlPlane, tmp_path: Path) -> None:
    from tests.k8s_harness import free_port

    config = tmp_path / "dead.kubeconfig"
    text = k8s.agent_kubeconfig.read_text().replace(k8s.server, f"https://127.0.0.1:{free_port()}")
    config.write_text(text)
    agent = start_agent(tmp_path, "--enable-k8s-api", "--k8s-kubeconfig-path", str(config), node="lanner-k8s-dead")
    try:
        deadline = time.monotonic() + 10
        while (st := agent.status())["k8s"]["watches"]["tracingpolicies"]["state"] != "unreachable":
            assert time.monotonic() < deadline, st["k8s"]
            time.sleep(0.1)
        assert st["ready_s"] is not None and st["k8s"]["connected"] is False
        assert st["k8s"]["watches"]["tracingpolicies"]["error"]  # the client's reason, e.g. connection refused
        out = subprocess.run(LANNER + ["status", "--server-address", agent.address], capture_output=True, text=True,
                             timeout=60).stdout
        assert "kubernetes" in out and "not connected" in out, out
    finally:
        assert agent.stop() == 0


class TcpProxy:
    """A loopback TCP relay to the API server (TLS passes through); ``cut()`` drops every connection and stops
    listening, as an API server that went away; ``restore()`` listens again on the same port. ``close()`` (the
    same as ``cut()``) shuts every live connection down and ends its relay threads.

    Each connection has two relay threads, one per direction. When one direction ends, both sockets are shut
    down before they are closed: ``close()`` alone does not wake the other thread blocked in ``recv()`` on a
    socket (the kernel keeps the connection open while a call holds it), so the API server's end of a watch
    would stay open, and kube-apiserver waits for it at the session's end."""

    def __init__(self, target: tuple[str, int]) -> None:
        import socket

        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._conns: list = []
        self._pumps: list[threading.Thread] = []
        self._listener = None
        self._lock = threading.Lock()
        self._open = False
        self.restore()

    def restore(self) -> None:
        import socket

        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        ls.settimeout(0.1)  # the accept loop checks _open (closing a socket does not wake a blocked accept)
        self._listener = ls
        self._open = True
        self._thread = threading.Thread(target=self._accept, args=(ls,), daemon=True)
        self._thread.start()

    def _accept(self, ls) -> None:
        import socket

        while True:
            if not self._open:
                ls.close()
                return
            try:
                client, _ = ls.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:  # the API server itself is away: the client sees its connection closed
                self._drop(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if not self._open or ls is not self._listener:  # accepted just as it was cut
                    client.close()
                    upstream.close()
                    continue
                self._conns += [client, upstream]
                self._pumps = [t for t in self._pumps if t.is_alive()]
                for a, b in ((client, upstream), (upstream, client)):
                    t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                    t.start()
                    self._pumps.append(t)

    def _pump(self, a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(a, b)  # wakes the thread of the other direction, blocked in b.recv()

    def _drop(self, *socks) -> None:
        """Shut the sockets down (this wakes a thread blocked on them and tells both peers), then close them."""
        import socket

        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:  # not connected any more, or already closed
                pass
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        with self._lock:
            self._conns = [c for c in self._conns if all(c is not s for s in socks)]

    def cut(self) -> None:
        with self._lock:
            self._open = False
        self._thread.join(timeout=5)  # it closes the listener: nothing accepts any more
        with self._lock:
            conns, self._conns = self._conns, []
            pumps, self._pumps = self._pumps, []
        self._drop(*conns)
        for t in pumps:
            t.join(timeout=5)
        stuck = [t for t in pumps if t.is_alive()]
        assert not stuck, f"{len(stuck)} relay threads still running after the proxy was cut"

    close = cut


def test_api_server_away_and_back_converges(ctx: Ctx, tmp_path: Path) -> None:
    """The API server unreachable for a while (connections cut, nothing listening), changes made meanwhile:
    once it is back the agent's watches resume and it holds exactly the API's policies."""
    from lanner.client import AgentClient

    host, port = ctx.k8s.server.removeprefix("https://").rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    config = tmp_path / "proxied.kubeconfig"
    config.write_text(ctx.k8s.agent_kubeconfig.read_text().replace(ctx.k8s.server, f"https://127.0.0.1:{proxy.port}"))
    ctx.apply(policy("away-kept") + "---\n" + policy("away-gone"))
    agent = start_agent(tmp_path, "--enable-k8s-api", "--k8s-kubeconfig-path", str(config), node=ctx.node)
    try:
        def listed() -> set[str]:
            with AgentClient(agent.address, timeout=10) as c:
                return {p.name for p in c.list_policies() if p.name.startswith("away-")}

        deadline = time.monotonic() + 15
        while listed() != {"away-kept", "away-gone"}:
            assert time.monotonic() < deadline, listed()
            time.sleep(0.05)
        proxy.cut()
        deadline = time.monotonic() + 15
        while agent.status()["k8s"]["watches"]["tracingpolicies"]["state"] != "unreachable":
            assert time.monotonic() < deadline, agent.status()["k8s"]
            time.sleep(0.1)
        ctx.k8s.kubectl("delete", "tgtp", "away-gone")
        ctx.apply(policy("away-new"))
        time.sleep(0.5)
        assert listed() == {"away-kept", "away-gone"}, agent.status()["k8s"]  # nothing reaches it meanwhile
        proxy.restore()
        deadline = time.monotonic() + 30  # the back-off doubles up to 10 s
        while listed() != {"away-kept", "away-new"}:
            assert time.monotonic() < deadline, (listed(), agent.status()["k8s"]["watches"])
            time.sleep(0.1)
        assert agent.status()["k8s"]["watches"]["tracingpolicies"]["reconnects"] >= 1
    finally:
        assert agent.stop() == 0
        proxy.cut()
        ctx.k8s.kubectl("delete", "tgtp", "away-kept", "away-new", "away-gone", "--ignore-not-found", check=False)


def _killed(path: str) -> bool:
    return subprocess.run(["/bin/cat", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == -9


def _sigkill_policy(name: str, path: str) -> str:
    """openat of ``path`` (only this test opens it) kills the opener."""
    return (f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n"
            f"  kprobes:\n  - call: sys_openat\n    syscall: true\n    args:\n    - {{index: 1, type: string}}\n"
            f"    selectors:\n    - matchArgs:\n      - {{index: 1, operator: Equal, values: [\"{path}\"]}}\n"
            f"      matchActions:\n      - action: Sigkill\n")


def _poll(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (got := pred()):
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.1)
    return got


def test_a_real_api_server_restart_converges(tmp_path: Path) -> None:
    """kube-apiserver (not etcd) of a control plane of this test's own stopped and started again on the same
    port: the agent stays up and keeps enforcing its policies meanwhile, status shows the watches
    unreachable and not connected; after the restart a policy deleted and one applied both reach it."""
    from lanner.client import AgentClient
    from tests.k8s_harness import missing_binaries, restartable_control_plane

    if missing_binaries():
        pytest.skip(f"missing {', '.join(missing_binaries())}: run 'make k8s-bins'")
    tag = uuid.uuid4().hex[:8]
    kept_path = f"/tmp/lanner-restart-{tag}"
    with restartable_control_plane() as (cp, apiserver):
        from kubernetes import client

        cp.kubectl("apply", "--server-side", "-f", str(MANIFESTS / "crds.yaml"))
        wait_established(cp)
        create_node(client.CoreV1Api(cp.api_client()), "lanner-restart", "10.244.8.0/24")
        cp.kubectl("apply", "-f", "-", stdin=_sigkill_policy("rs-kept", kept_path) + "---\n" + policy("rs-gone"))
        agent = start_agent(tmp_path, "--enable-k8s-api", "--k8s-kubeconfig-path", str(cp.agent_kubeconfig),
                            node="lanner-restart")
        try:
            def listed() -> set[str]:
                with AgentClient(agent.address, timeout=10) as c:
                    return {p.name for p in c.list_policies() if p.name.startswith("rs-")}

            def watches() -> dict:
                return agent.status()["k8s"]["watches"]

            _poll(lambda: listed() == {"rs-kept", "rs-gone"}, 30, lambda: (listed(), watches()))
            _poll(lambda: _killed(kept_path), 10, "rs-kept does not kill")
            before = watches()["tracingpolicies"]
            apiserver.stop(grace_s=3.0)  # not listening at once; killed if still there after 3 s
            _poll(lambda: watches()["tracingpolicies"]["state"] == "unreachable", 20, watches)
            out = subprocess.run(LANNER + ["status", "--server-address", agent.address], capture_output=True,
                                 text=True, timeout=60).stdout
            assert "not connected" in out and "tracingpolicies unreachable" in out, out
            assert agent.proc.poll() is None and _killed(kept_path)  # up, and enforcing what it had
            assert listed() == {"rs-kept", "rs-gone"}
            apiserver.start()  # the same port, certificate and etcd
            cp.kubectl("delete", "tgtp", "rs-gone")
            cp.kubectl("apply", "-f", "-", stdin=policy("rs-new"))
            _poll(lambda: listed() == {"rs-kept", "rs-new"}, 40, lambda: (listed(), watches()))  # back-off <= 10 s
            after = watches()["tracingpolicies"]
            assert after["state"] == "watching" and after["reconnects"] > before["reconnects"], after
            assert agent.status()["k8s"]["connected"] is True and _killed(kept_path)
            print(f"restart: tracingpolicies lists {before['lists']} -> {after['lists']}, 410s {after['gone']}, "
                  f"reconnects {after['reconnects']}")
        finally:
            assert agent.stop() == 0
