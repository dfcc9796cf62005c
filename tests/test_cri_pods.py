"""Real pods through containerd's CRI: Debian containerd + runc, images built here, CNI in a node netns.

containerd runs inside a test "node" network namespace (tests/cri_harness.py), so the CNI plugins it
runs, their devices and sysctls never touch the root network namespace; it is stopped by PID and its
mounts, pod netns and cgroups are removed in the fixture teardown.

* bridge + host-local (Debian's plugins): proves the harness — pods get addresses, talk to each other,
  and a real agent's exec events from inside a pod carry that pod (PodCache fed from the CRI).
* lanner-cni + ``lanner agent --enable-netdp`` (once both exist): pods on lanner's network, exec events
  naming the pod, containerd's double DEL.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.cri_harness import Containerd, NodeNetns, missing_tools, remove_pod, run_pod
from tests.policy_specs import openat_prefix, policy_yaml

pytestmark = [
    pytest.mark.skipif(bool(missing_tools()), reason=f"containerd/runc tooling missing: {missing_tools()}"),
]

PAUSE = "docker.io/local/pause:1"
BUSYBOX = "docker.io/local/busybox:1"
BRIDGE_SUBNET = "10.88.71.0/24"


def _root_netns_state() -> tuple[set[str], str]:
    links = {line.split(":")[1].strip().split("@")[0]
             for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()}
    return links, Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def _start_node(base: Path, conflist: dict, plugins: dict[str, Path] | None = None):
    node = NodeNetns.create()
    ctrd = None
    try:
        ctrd = Containerd.start(base, node, extra_plugins=plugins, conflist=conflist)
        ctrd.import_image(PAUSE, ["/bin/sleep", "infinity"])
        ctrd.import_image(BUSYBOX, ["/bin/sh"])
    except BaseException:
        if ctrd is not None:
            ctrd.stop()
        node.delete()
        raise
    return node, ctrd


@pytest.fixture(scope="module")
def bridge_node(tmp_path_factory):
    base = tmp_path_factory.mktemp("cri-bridge")
    conflist = {"cniVersion": "1.0.0", "name": "bridgenet", "plugins": [
        {"type": "bridge", "bridge": "lcri0", "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "dataDir": str(base / "ipam"), "ranges": [[{"subnet": BRIDGE_SUBNET}]]}}]}
    before = _root_netns_state()
    node, ctrd = _start_node(base, conflist)
    try:
        yield ctrd
    finally:
        forced = ctrd.stop()
        node.delete()
        print("teardown:", forced)
    # nothing the pods did reached the root netns
    assert _root_netns_state() == before


def http_get(cri, container_id: str, ip: str, port: int, timeout_s: int = 2):
    """An HTTP GET of /index.html from inside a container (busybox nc; static wget needs NSS)."""
    return cri.exec_sync(container_id, ["/bin/sh", "-c", f"printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | "
                                                         f"/bin/nc -w {timeout_s} {ip} {port}"], timeout_s=timeout_s + 5)


def _in_subnet(ip: str, cidr: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


def test_bridge_pods_get_addresses_labels_and_connect(bridge_node):
    ctrd = bridge_node
    server = run_pod(ctrd, "srv", labels={"app": "srv", "tier": "back"},
                     containers={"httpd": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]})
    client = run_pod(ctrd, "cli", namespace="team-a", labels={"app": "cli"},
                     containers={"main": ["/bin/sleep", "infinity"]})
    try:
        with ctrd.client() as cri:
            assert cri.status() == {"RuntimeReady": True, "NetworkReady": True}
            s, c = cri.pod_sandbox_status(server.sandbox_id), cri.pod_sandbox_status(client.sandbox_id)
            assert s.ready and c.ready and s.ip != c.ip
            assert _in_subnet(s.ip, BRIDGE_SUBNET) and _in_subnet(c.ip, BRIDGE_SUBNET)
            assert s.labels == {"app": "srv", "tier": "back"} and (c.namespace, c.name) == ("team-a", "cli")
            listed = {(p.namespace, p.name): p.labels for p in cri.list_pod_sandbox(labels={"app": "cli"})}
            assert listed == {("team-a", "cli"): {"app": "cli"}}
            st = cri.container_status(client.containers["main"], verbose=True)
            assert st.state == "CONTAINER_RUNNING" and st.name == "main" and st.image == BUSYBOX
            assert st.image_ref.startswith("sha256:") and st.pid > 0
            assert st.cgroups_path.startswith(ctrd.cgroup_parent + "/")
            r = None
            for _ in range(50):  # httpd may still be starting
                r = http_get(cri, client.containers["main"], s.ip, 8080)
                if r.exit_code == 0 and r.stdout:
                    break
                time.sleep(0.1)
            assert r.exit_code == 0 and r.stdout.endswith(b"\r\n\r\nhello from a pod\n"), r
            # the pod's interface really is in its own netns: eth0 carries the CRI-reported address
            out = cri.exec_sync(client.containers["main"], ["/bin/ip", "-4", "-o", "addr", "show", "eth0"])
            assert f" {c.ip}/" in out.stdout.decode()
    finally:
        remove_pod(ctrd, server)
        remove_pod(ctrd, client)
    with ctrd.client() as cri:
        assert cri.list_pod_sandbox() == []
    assert not os.path.exists(server.netns) and not os.path.exists(client.netns)


# ------------------------------------------------------------------------------------ a real agent
@pytest.fixture
def inproc_agent(tmp_path, process_obj_path):
    """The agent (real BPF sensors) in this process, its loop on a thread, exporting to a file."""
    from lanner.agent import Agent, AgentConfig

    export = tmp_path / "events.log"
    agent = Agent(AgentConfig(node_name="crinode", export_stdout=False, export_file=str(export), grpc=None,
                              run_probe=False, policy_engine=False, procfs_seed=False))
    agent.start()
    t = threading.Thread(target=agent.run, name="agent-loop", daemon=True)
    t.start()
    try:
        yield agent, export
    finally:
        agent.stop()
        t.join(timeout=10)
        agent.close()


def _events(export: Path) -> list[dict]:
    if not export.exists():
        return []
    data = export.read_text()
    return [json.loads(line) for line in data[: data.rfind("\n") + 1].splitlines() if line]


def _wait_exec(export: Path, pred, what: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = [e["process_exec"]["process"] for e in _events(export) if "process_exec" in e
                 and pred(e["process_exec"]["process"])]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no exec event for {what}")
        time.sleep(0.05)


@pytest.mark.bpf
def test_agent_exec_events_carry_the_pod(bridge_node, inproc_agent):
    from lanner.netdp.cri.pods import sandbox_endpoint
    from lanner.netdp.podcache import CriContainerSource, PodCache

    ctrd = bridge_node
    agent, export = inproc_agent
    cri = ctrd.client()
    cache = PodCache(CriContainerSource(cri))
    agent.encoder.attach_pod_resolver(cache)

    def register(pod) -> None:  # what the CNI service does on ADD (here the network is the bridge plugin's)
        ep = sandbox_endpoint(cri.pod_sandbox_status(pod.sandbox_id, verbose=True))
        assert ep is not None and ep.netns_inode == os.stat(pod.netns).st_ino
        cache.add(ep)

    marker = uuid.uuid4().hex[:10]
    pod = run_pod(ctrd, "web-" + marker, namespace="shop", labels={"app": "web", "run": marker},
                  containers={"main": ["/bin/sleep", "3600"]}, before_containers=register)
    try:
        cid = pod.containers["main"]
        r = cri.exec_sync(cid, ["/bin/sh", "-c", f"echo {marker}"])
        assert r.exit_code == 0 and r.stdout.decode().strip() == marker
        proc = _wait_exec(export, lambda p: marker in p.get("arguments", "") and p["binary"] == "/bin/sh",
                          "the exec in the pod")
        want_container = {"id": cid, "name": "main", "image": {"name": BUSYBOX}}
        pod_obj = proc.get("pod")
        assert pod_obj is not None, proc
        assert (pod_obj["namespace"], pod_obj["name"], pod_obj["uid"]) == ("shop", pod.name, pod.uid)
        assert pod_obj["pod_labels"] == {"app": "web", "run": marker}
        c = pod_obj["container"]
        assert {k: c[k] for k in ("id", "name")} == {k: want_container[k] for k in ("id", "name")}
        assert c["image"]["name"] == BUSYBOX and c["image"]["id"].startswith("sha256:")
        assert proc["docker"] == cid[:15]
        # the container's entrypoint, exec'd by runc after the pod was registered, carries it too
        entry = _wait_exec(export, lambda p: p["binary"] == "/bin/sleep" and p.get("arguments") == "3600",
                           "the container entrypoint")
        assert entry["pod"]["container"]["id"] == cid and entry["pod"]["name"] == pod.name
        # a host process does not
        subprocess.run(["/bin/true", marker], check=True)
        host = _wait_exec(export, lambda p: p["binary"] == "/bin/true" and p.get("arguments") == marker,
                          "the host process")
        assert "pod" not in host and "docker" not in host
        assert cache.cri_lookups <= 3  # learned per container cgroup, not per event
    finally:
        remove_pod(ctrd, pod)
        cri.close()


# ------------------------------------------------------------------------------------ lanner-cni
LANNER_CIDR = "10.201.77.0/24"
ROOT = Path(__file__).resolve().parent.parent
LANNER_CNI = ROOT / ".venv" / "bin" / "lanner-cni"


def _netdp_ready() -> str:
    """Why pods cannot run on lanner-cni yet ("" when they can)."""
    try:
        from lanner.netdp import runtime  # noqa: F401
        from lanner.netdp.cni import service  # noqa: F401
    except ImportError as exc:
        return f"the netdp runtime is not there yet: {exc}"
    if not LANNER_CNI.exists():
        return f"{LANNER_CNI} is not installed (make setup)"
    return ""


def start_netdp_agent(tmp: Path, node: NodeNetns, cni_socket: Path, *extra: str):
    """``lanner agent --enable-netdp`` inside the node netns (it owns the pod gateway and veths there)."""
    import sys

    from tests.conftest import RunningAgent

    export, sock, err = tmp / "export" / "events.log", tmp / "lanner.sock", tmp / "agent.stderr"
    info = tmp / "lanner-info.json"
    pin = f"/sys/fs/bpf/lanner-cri-{uuid.uuid4().hex[:8]}"
    cmd = ["nsenter", f"--net={node.path}", sys.executable, "-m", "lanner", "agent", "--no-export-stdout",
           "--export-filename", str(export), "--server-address", f"unix://{sock}", "--info-file", str(info),
           "--node-name", "crinode", "--health-server-address", "127.0.0.1:0", "--tracing-policy-dir", "",
           "--enable-netdp", "--pod-cidr", LANNER_CIDR, "--cni-socket", str(cni_socket),
           "--netdp-state-dir", str(tmp / "netdp"), "--netdp-pin-dir", pin, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(err, "wb"), stdin=subprocess.DEVNULL)
    agent = RunningAgent(proc, export, sock, "crinode", err)
    deadline = time.monotonic() + 60
    while not cni_socket.exists() or not info.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            agent.stop()
            raise AssertionError("netdp agent did not start:\n" + err.read_text()[-4000:])
        time.sleep(0.05)
    return agent, pin


# ingress to app=db pods in namespace "secure": only from app=api pods of that namespace, TCP 8080
DB_POLICY = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "db-from-api", "namespace": "secure"},
    "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
             "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                          "ports": [{"protocol": "TCP", "port": 8080}]}]},
}


@pytest.fixture(scope="module")
def lanner_node(tmp_path_factory):
    why = _netdp_ready()
    if why:
        pytest.skip(why)
    base = tmp_path_factory.mktemp("cri-lanner")
    cni_socket = base / "cni.sock"
    conflist = {"cniVersion": "1.0.0", "name": "lanner",
                "plugins": [{"type": "lanner-cni", "agentSocket": str(cni_socket)}]}
    policies = base / "policies"
    policies.mkdir()
    (policies / "db.yaml").write_text(json.dumps(DB_POLICY))
    before = _root_netns_state()
    node, ctrd = _start_node(base, conflist, plugins={"lanner-cni": LANNER_CNI})
    agent = pin = None
    try:
        node.run("sysctl", "-w", "net.ipv4.ip_forward=1")  # the node netns only: pods route through it
        (base / "agent").mkdir()
        agent, pin = start_netdp_agent(base / "agent", node, cni_socket, "--cri-socket", str(ctrd.socket),
                                       "--network-policy-dir", str(policies),
                                       "--tracing-policy", str(ROOT / "rules" / "sensitive-files.yaml"))
        yield ctrd, agent, node
    finally:
        forced = ctrd.stop()  # pods first (CNI DEL goes to the agent), then the agent
        if agent is not None:
            rc = agent.stop()
            print("agent rc", rc, (base / "agent" / "agent.stderr").read_text()[-3000:])
        node.delete()
        if pin:
            subprocess.run(["rm", "-rf", pin])
        print("teardown:", forced)
    assert _root_netns_state() == before


@pytest.mark.bpf
def test_lanner_cni_pods_connect_and_double_del(lanner_node):
    ctrd, agent, node = lanner_node
    marker = uuid.uuid4().hex[:8]
    srv = run_pod(ctrd, "srv-" + marker, labels={"app": "srv"},
                  containers={"httpd": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]})
    cli = run_pod(ctrd, "cli-" + marker, namespace="team-a", labels={"app": "cli"},
                  containers={"main": ["/bin/sleep", "3600"]})
    removed = False
    try:
        with ctrd.client() as cri:
            s, c = cri.pod_sandbox_status(srv.sandbox_id), cri.pod_sandbox_status(cli.sandbox_id)
            assert _in_subnet(s.ip, LANNER_CIDR) and _in_subnet(c.ip, LANNER_CIDR) and s.ip != c.ip
            r = None
            for _ in range(50):
                r = http_get(cri, cli.containers["main"], s.ip, 8080)
                if r.exit_code == 0 and r.stdout:
                    break
                time.sleep(0.1)
            assert r.exit_code == 0 and r.stdout.endswith(b"hello from a pod\n"), r
        status = agent.status()
        assert status["netdp"]["endpoints"] == 2, status
        # StopPodSandbox: DEL with netns + prevResult; RemovePodSandbox: DEL with CNI_NETNS="" and no prevResult
        remove_pod(ctrd, srv)
        remove_pod(ctrd, cli)
        removed = True
        status = agent.status()
        assert status["netdp"]["endpoints"] == 0, status
        dels = status["netdp"]["cni_requests"]
        print("CNI requests", dels)
        assert sum(v for k, v in dels.items() if k.startswith("DEL")) >= 4, dels  # two per pod, all answered
        links = node.run("ip", "-o", "link").stdout
        assert srv.sandbox_id[:8] not in links and "eth0" not in links
    finally:
        if not removed:
            remove_pod(ctrd, srv)
            remove_pod(ctrd, cli)


@pytest.mark.bpf
def test_lanner_cni_exec_events_carry_the_pod(lanner_node):
    ctrd, agent, node = lanner_node
    marker = uuid.uuid4().hex[:10]
    pod = run_pod(ctrd, "web-" + marker, namespace="shop", labels={"app": "web", "run": marker},
                  containers={"main": ["/bin/sleep", "3600"]})
    try:
        cid = pod.containers["main"]
        with ctrd.client() as cri:
            r = cri.exec_sync(cid, ["/bin/sh", "-c", f"echo {marker}"])
        assert r.exit_code == 0 and r.stdout.decode().strip() == marker
        evs = agent.wait_for(lambda evs: [e for e in evs if marker in json.dumps(e.get("process_exec", {}).get(
            "process", {}).get("arguments", "")) and e["process_exec"]["process"]["binary"] == "/bin/sh"],
            timeout=15, what="the exec in the pod")
        proc = [e for e in evs if "process_exec" in e and e["process_exec"]["process"]["binary"] == "/bin/sh"
                and marker in e["process_exec"]["process"].get("arguments", "")][0]["process_exec"]["process"]
        p = proc.get("pod")
        assert p is not None, proc
        assert (p["namespace"], p["name"], p["uid"]) == ("shop", pod.name, pod.uid)
        assert p["pod_labels"] == {"app": "web", "run": marker}  # from the CRI: CNI does not carry labels
        assert p["container"]["id"] == cid and p["container"]["name"] == "main"
        assert p["container"]["image"]["name"] == BUSYBOX and p["container"]["image"]["id"].startswith("sha256:")
        assert proc["docker"] == cid[:15]
        # the entrypoint (exec'd by runc after CNI ADD) is enriched too
        entry = [e["process_exec"]["process"] for e in agent.events() if "process_exec" in e
                 and e["process_exec"]["process"]["binary"] == "/bin/sleep"
                 and (e["process_exec"]["process"].get("pod") or {}).get("name") == pod.name]
        pause = [e for e in entry if e.get("arguments") == "infinity"]
        main = [e for e in entry if e.get("arguments") == "3600"]
        assert len(main) == 1 and main[0]["pod"]["container"]["id"] == cid, entry
        # the sandbox's pause process is the pod's too, without a container of its own
        assert len(pause) == 1 and "container" not in pause[0]["pod"], entry
        # a TracingPolicy event from a process in the pod names the pod too (same memoised process object)
        with ctrd.client() as cri:
            cri.exec_sync(cid, ["/bin/cat", f"/etc/shadow-{marker}"])
        evs = agent.wait_for(lambda evs: [e for e in evs if marker in json.dumps(e) and any(
            k.startswith("process_") and k not in ("process_exec", "process_exit") for k in e)],
            timeout=15, what="the sensitive-files policy event")
        pol = [b for e in evs for k, b in e.items() if k.startswith("process_") and k not in
               ("process_exec", "process_exit") and marker in json.dumps(b)][0]
        assert pol.get("policy_name") == "lanner-sensitive-files", pol
        assert pol["process"]["pod"]["name"] == pod.name and pol["process"]["pod"]["container"]["id"] == cid
        assert pol["process"]["binary"] == "/bin/cat"
        # a host process (in the agent's own netns, not a pod's) is not
        node.run("/bin/true", marker)
        evs = agent.wait_for(lambda evs: [e for e in evs if e.get("process_exec", {}).get("process", {}).get(
            "arguments") == marker], timeout=10, what="the node process")
        host = [e for e in evs if e.get("process_exec", {}).get("process", {}).get("arguments") == marker][0]
        assert "pod" not in host["process_exec"]["process"]
    finally:
        remove_pod(ctrd, pod)


def _flows(agent) -> list[dict]:
    return [e["flow"] for e in agent.events() if "flow" in e]


@pytest.mark.bpf
def test_lanner_cni_network_policy_allows_and_denies(lanner_node):
    """A NetworkPolicy selecting pods by CRI labels: the api pod reaches the db, the other pod does not."""
    ctrd, agent, node = lanner_node
    m = uuid.uuid4().hex[:6]
    db = run_pod(ctrd, "db-" + m, namespace="secure", labels={"app": "db"},
                 containers={"httpd": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]})
    api = run_pod(ctrd, "api-" + m, namespace="secure", labels={"app": "api"},
                  containers={"main": ["/bin/sleep", "3600"]})
    other = run_pod(ctrd, "other-" + m, namespace="secure", labels={"app": "other"},
                    containers={"main": ["/bin/sleep", "3600"]})
    try:
        with ctrd.client() as cri:
            db_ip = cri.pod_sandbox_status(db.sandbox_id).ip
            r = None
            for _ in range(10):  # httpd starting, and the api pod's identity following its labels
                r = http_get(cri, api.containers["main"], db_ip, 8080, timeout_s=1)
                if r.exit_code == 0 and r.stdout:
                    break
                time.sleep(0.1)
            assert r.exit_code == 0 and r.stdout.endswith(b"hello from a pod\n"), (r, _flows(agent)[-6:])
            denied = http_get(cri, other.containers["main"], db_ip, 8080, timeout_s=2)
            assert denied.stdout == b"", denied
            # the policy selects db only: db -> other's port is not subject to it (default allow elsewhere)
            again = http_get(cri, api.containers["main"], db_ip, 8080)
            assert again.stdout.endswith(b"hello from a pod\n")
    finally:
        for p in (db, api, other):
            remove_pod(ctrd, p)


def _scoped_policy_info(agent, name: str, namespace: str) -> str:
    from lanner.client import AgentClient

    with AgentClient(agent.address, timeout=10) as c:
        st = next(s for s in c.list_policies() if s.name == name and s.namespace == namespace)
    return st.info.split("; ")[0]


@pytest.mark.bpf
def test_lanner_cni_namespaced_tracing_policy_runs_for_its_pods(lanner_node):
    """A TracingPolicyNamespaced added at run time sees its namespace's pods only: not another namespace's
    pod, not the node, and no longer a pod once it is removed (the pod table feeds the kernel's scope)."""
    from lanner.client import AgentClient

    ctrd, agent, node = lanner_node
    m = uuid.uuid4().hex[:8]
    ns_in, ns_out = f"scope-in-{m}", f"scope-out-{m}"
    inside = run_pod(ctrd, "in-" + m, namespace=ns_in, labels={"app": "x"}, containers={"main": ["/bin/sleep", "3600"]})
    outside = run_pod(ctrd, "out-" + m, namespace=ns_out, labels={"app": "x"},
                      containers={"main": ["/bin/sleep", "3600"]})
    policy = policy_yaml(f"scoped-{m}", openat_prefix(f"/tmp/{m}"), kind="TracingPolicyNamespaced", namespace=ns_in)
    removed = False
    with AgentClient(agent.address, timeout=10) as c:
        c.add_policy(policy)
    try:
        assert _scoped_policy_info(agent, f"scoped-{m}", ns_in) == f"runs for namespace {ns_in}: 1 pods on this node"
        with ctrd.client() as cri:
            cri.exec_sync(outside.containers["main"], ["/bin/cat", f"/tmp/{m}-outside"])
            node.run("/bin/cat", f"/tmp/{m}-node", check=False)
            cri.exec_sync(inside.containers["main"], ["/bin/cat", f"/tmp/{m}-inside"])

        def mine(evs: list[dict]) -> list[dict]:
            return [e["process_kprobe"] for e in evs if e.get("process_kprobe", {}).get("policy_name") == f"scoped-{m}"]

        evs = mine(agent.wait_for(mine, timeout=15, what="the namespaced policy's event"))
        assert [a["string_arg"] for e in evs for a in e["args"]] == [f"/tmp/{m}-inside"], evs
        assert evs[0]["process"]["pod"]["namespace"] == ns_in and evs[0]["process"]["pod"]["name"] == inside.name
        remove_pod(ctrd, inside)
        removed = True
        assert _scoped_policy_info(agent, f"scoped-{m}", ns_in) == f"runs for namespace {ns_in}: 0 pods on this node"
    finally:
        with AgentClient(agent.address, timeout=10) as c:
            c.delete_policy(f"scoped-{m}", ns_in)
        for p in ([] if removed else [inside]) + [outside]:
            remove_pod(ctrd, p)


@pytest.mark.bpf
def test_lanner_cni_container_selector_runs_for_its_containers(lanner_node):
    """containerSelector name In [main]: the pod's main container is seen, its sidecar is not. The agent
    learns the containers' cgroups from the runtime when their first processes show (the status counts them)."""
    from lanner.client import AgentClient

    ctrd, agent, node = lanner_node
    m = uuid.uuid4().hex[:8]
    ns = f"ctr-{m}"
    pod = run_pod(ctrd, "two-" + m, namespace=ns, containers={"main": ["/bin/sleep", "3600"],
                                                             "side": ["/bin/sleep", "3601"]})
    name = f"ctr-{m}"
    scope = "containerSelector:\n  matchExpressions: [{key: name, operator: In, values: [main]}]\n"
    policy = policy_yaml(name, scope + openat_prefix(f"/tmp/{m}"), kind="TracingPolicyNamespaced", namespace=ns)
    with AgentClient(agent.address, timeout=10) as c:
        c.add_policy(policy)
    try:
        want = f"runs for namespace {ns}, containerSelector name In (main): 1 containers on this node"
        deadline = time.monotonic() + 20
        while _scoped_policy_info(agent, name, ns) != want:  # the entrypoints' exec events teach the agent
            assert time.monotonic() < deadline, _scoped_policy_info(agent, name, ns)
            time.sleep(0.2)
        with ctrd.client() as cri:
            cri.exec_sync(pod.containers["side"], ["/bin/cat", f"/tmp/{m}-side"])
            cri.exec_sync(pod.containers["main"], ["/bin/cat", f"/tmp/{m}-main"])

        def mine(evs: list[dict]) -> list[dict]:
            return [e["process_kprobe"] for e in evs if e.get("process_kprobe", {}).get("policy_name") == name]

        evs = mine(agent.wait_for(mine, timeout=15, what="the container-scoped policy's event"))
        assert [a["string_arg"] for e in evs for a in e["args"]] == [f"/tmp/{m}-main"], evs
        assert evs[0]["process"]["pod"]["container"]["name"] == "main"
    finally:
        with AgentClient(agent.address, timeout=10) as c:
            c.delete_policy(name, ns)
        remove_pod(ctrd, pod)
