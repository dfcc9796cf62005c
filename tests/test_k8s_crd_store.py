"""netdp/kvstore/crd_store.py (``--kvstore crd``) against the real API server, as the agent's identity (its
ClusterRole): identities created by name (a 409 means taken), stores in threads and in separate processes
allocating the same label sets at once agree and different sets never share a number, the ipcache as one
LannerEndpoint per IP seen by other stores through their watches, node registration, a node that stops
renewing expiring from the others' view (with its objects collected), a clean close deleting its objects at
once, a node whose object was collected while it was cut off coming back, and the API server going away (a
relay cut) for one node or for both. The liveness rule itself is tested with a fake clock, the flags through
the CLI's config step. Node names carry a per-test suffix; every object a test makes is deleted after it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from lanner.netdp.kvstore.crd_liveness import NodeLiveness
from lanner.netdp.kvstore.crd_store import CrdStore
from tests.k8s_harness import MANIFESTS, ControlPlane
from tests.test_multinode import wait

CRDS = ("lanneridentities.lanner.io", "lannerendpoints.lanner.io", "lannernodes.lanner.io")


def install_crds(k8s: ControlPlane) -> None:
    """Apply install/kubernetes/lanner-crds.yaml with kubectl and wait until the three CRDs are Established."""
    k8s.kubectl("apply", "--server-side", "-f", str(MANIFESTS / "lanner-crds.yaml"))
    deadline = time.monotonic() + 60
    path = '{.items[*].status.conditions[?(@.type=="Established")].status}'
    while k8s.kubectl("get", "crd", *CRDS, "-o", f"jsonpath={path}", check=False).stdout.split() != ["True"] * 3:
        assert time.monotonic() < deadline, "lanner CRDs not Established after 60 s"
        time.sleep(0.2)


def delete_node_objects(k8s: ControlPlane, *nodes: str) -> None:
    """Remove what these node names left (endpoints by their lanner.io/node label, the LannerNodes)."""
    for n in nodes:
        k8s.kubectl("delete", "lannerendpoints", "-l", f"lanner.io/node={n}", "--ignore-not-found", check=False)
        k8s.kubectl("delete", "lannernodes", n, "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def crds(k8s: ControlPlane) -> ControlPlane:
    install_crds(k8s)
    return k8s


@pytest.fixture
def names(crds: ControlPlane):
    """Two node names of this test's own, their objects deleted afterwards."""
    run = uuid.uuid4().hex[:6]
    out = (f"node-a-{run}", f"node-b-{run}")
    yield out
    delete_node_objects(crds, *out)


@pytest.fixture
def stores(crds: ControlPlane, names):
    made: list[CrdStore] = []

    def make(name: str, watch: bool = False, ttl: int = 10) -> CrdStore:
        made.append(CrdStore(crds.api_client(as_agent=True), name, watch=watch, lease_ttl_s=ttl))
        return made[-1]

    yield make
    for s in made:
        s.close(revoke=True)


# ------------------------------------------------------------------------------------------ identities
def test_two_stores_allocating_the_same_labels_at_once_agree(stores, names) -> None:
    a, b = stores(names[0]), stores(names[1])
    run = uuid.uuid4().hex[:8]
    sets = [{"k8s:app": f"app{i}", "k8s:run": run} for i in range(4)]
    start = threading.Barrier(8)

    def allocate(args) -> list[int]:
        store, order = args
        start.wait()
        return [store.allocate(sets[i]) for i in order]

    jobs = [(a if n % 2 else b, list(range(4)) if n % 3 else [3, 2, 1, 0]) for n in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(allocate, jobs))
    by_set: dict[int, set[int]] = {i: set() for i in range(4)}
    for (_, order), ids in zip(jobs, results):
        for i, ident in zip(order, ids):
            by_set[i].add(ident)
    assert all(len(ids) == 1 for ids in by_set.values()), by_set  # every allocation of a set: one id
    ids = [next(iter(by_set[i])) for i in range(4)]
    assert len(set(ids)) == 4 and all(i >= 256 for i in ids)  # different sets, different ids
    assert all(a.labels_of(ids[i]) == sets[i] == b.labels_of(ids[i]) for i in range(4))
    claimed = a.claimed_identities()
    assert {i: claimed[i] for i in ids} == {ids[i]: sets[i] for i in range(4)}
    assert {i: a.identities()[i] for i in ids} == {ids[i]: sets[i] for i in range(4)}
    numbers = [int(n) for n in a._numbers()]
    assert len(numbers) == len(set(numbers)) and not set(numbers) - set(claimed)  # no orphan left


ALLOCATOR = """
import json, sys, time
from kubernetes import config
from lanner.netdp.kvstore.crd_store import CrdStore
kubeconfig, node, start, sets = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
store = CrdStore(config.new_client_from_config(config_file=kubeconfig), node, watch=False)
time.sleep(max(0.0, start - time.time()))
print(json.dumps([store.allocate(s) for s in sets]))
"""


def test_agent_processes_allocating_at_once_agree_and_never_share_a_number(crds: ControlPlane, names) -> None:
    """Two processes (as two agents are) allocate at one instant: two shared label sets, and each one set
    of its own. The shared sets get one number in both; the three distinct sets three numbers."""
    run = uuid.uuid4().hex[:8]
    shared = [{"k8s:app": f"shared{i}", "k8s:run": run} for i in range(2)]
    own = [{"k8s:app": f"own-{n}", "k8s:run": run} for n in names]
    start = time.time() + 3.0  # both import and connect first, then allocate together
    procs = [subprocess.Popen([sys.executable, "-c", ALLOCATOR, str(crds.agent_kubeconfig), n, str(start),
                               json.dumps(list(reversed(shared)) + [own[k]] if k else shared + [own[k]])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, n in enumerate(names)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out))
    first, second = outs  # first: shared0, shared1, own0; second: shared1, shared0, own1
    assert (first[0], first[1]) == (second[1], second[0]), outs
    numbers = {first[0], first[1], first[2], second[2]}
    assert len(numbers) == 4, outs  # shared0, shared1 and the two own sets: four numbers


def test_liveness_on_a_fake_clock() -> None:
    now = [100.0]
    live = NodeLiveness("me", clock=lambda: now[0])
    live.saw("me", "1", 3.0)
    live.saw("peer", "2", 3.0)
    for _ in range(4):  # both renew every second: nobody expires
        now[0] += 1.0
        live.saw("me", f"me{now[0]}", 3.0)
        live.saw("peer", f"peer{now[0]}", 3.0)
        assert live.expired() == []
    assert live.saw("peer", "3", 3.0) and not live.saw("peer", "3", 3.0)  # a renewal; the same version again
    for _ in range(3):  # peer goes silent; this node's renewals keep coming back
        now[0] += 1.0
        live.saw("me", f"me{now[0]}", 3.0)
    assert live.expired() == []  # silent for 3.0 s: not more than its TTL yet
    now[0] += 0.2
    assert live.expired() == ["peer"] and live.silent_for("peer") == pytest.approx(3.2)  # own renewal 0.2 s old


def test_liveness_trusts_no_silence_while_its_own_renewals_are_away() -> None:
    now = [100.0]
    live = NodeLiveness("me", clock=lambda: now[0])
    live.saw("me", "1", 3.0)
    live.saw("peer", "2", 3.0)
    now[0] += 10.0  # the API server (or this watch) was away for 10 s: nothing came back, own renewals neither
    assert live.expired() == []  # this node's own renewals never came back: the watch is not trusted
    live.saw("me", "3", 3.0)  # back: every node gets a fresh TTL from now, as their renewals were unseen too
    assert live.expired() == []
    now[0] += 2.0
    live.saw("me", "4", 3.0)
    assert live.expired() == []
    now[0] += 1.5
    live.saw("me", "5", 3.0)
    assert live.expired() == ["peer"]  # 3.5 s of silence since the watch came back


# ------------------------------------------------------------------------------------- watched state
def test_endpoints_and_nodes_reach_other_stores_and_a_clean_close_removes_them(stores, names, crds) -> None:
    a, b = stores(names[0], watch=True), stores(names[1], watch=True)
    a.register_node("192.0.2.1", "10.7.1.0/24", routing="vxlan", vxlan_mac="02:00:00:00:00:01")
    b.register_node("192.0.2.2", "10.7.2.0/24", routing="native")
    seen: list[tuple[str, object]] = []
    b.subscribe(on_ipcache=lambda cidr, e: seen.append((cidr, e)))
    ident = a.allocate({"k8s:app": "ipcache", "k8s:run": uuid.uuid4().hex[:8]})
    a.upsert_ip("10.7.1.5/32", ident, {"namespace": "shop", "name": "web"})
    b.upsert_ip("10.7.2.9/32", ident)
    node_a = wait(lambda: b.nodes().get(names[0]), 10, "node a registered, seen by b")
    assert (node_a.ip, node_a.pod_cidr, dict(node_a.extra)) == ("192.0.2.1", "10.7.1.0/24",
                                                                {"routing": "vxlan", "vxlan_mac": "02:00:00:00:00:01"})
    wait(lambda: "10.7.1.5/32" in b.ipcache(), 10, "a's endpoint in b's view")
    entry = b.ipcache_entries()["10.7.1.5/32"]
    assert (entry.identity, entry.node, dict(entry.pod)) == (ident, names[0], {"namespace": "shop", "name": "web"})
    assert b.identities()[ident] == a.labels_of(ident)  # b learns the identity its view uses
    assert ("10.7.1.5/32", entry) in seen  # the listener heard it
    wait(lambda: a.ipcache().get("10.7.2.9/32") == ident, 10, "b's endpoint in a's view")
    a.upsert_ip("10.7.1.5/32", ident + 1)  # an update of its own entry
    wait(lambda: b.ipcache().get("10.7.1.5/32") == ident + 1, 10, "the update in b's view")
    a.close(revoke=True)  # a clean stop: a's objects go at once, not after the TTL
    t0 = time.monotonic()
    wait(lambda: names[0] not in b.nodes() and "10.7.1.5/32" not in b.ipcache(), 5, "a gone from b's view")
    assert time.monotonic() - t0 < 5 and ("10.7.1.5/32", None) in seen
    left = crds.kubectl("get", "lannerendpoints,lannernodes", "-o", "name").stdout
    assert names[0] not in left and names[1] in left


def test_a_node_that_stops_renewing_expires_and_its_objects_are_collected(stores, names, crds) -> None:
    ttl = 2
    a, b = stores(names[0], watch=True, ttl=ttl), stores(names[1], watch=True, ttl=ttl)
    for s, ip in ((a, "192.0.2.1"), (b, "192.0.2.2")):
        s.register_node(ip, f"10.7.{ip[-1]}.0/24")
    gone: list[str] = []
    b.subscribe(on_node=lambda name, info: gone.append(name) if info is None else None)
    ident = a.allocate({"k8s:app": "expiry", "k8s:run": uuid.uuid4().hex[:8]})
    a.upsert_ip("10.7.1.7/32", ident)
    wait(lambda: "10.7.1.7/32" in b.ipcache(), 10, "a's endpoint in b's view")
    time.sleep(ttl * 1.5)  # a keeps renewing: alive well past one TTL
    assert names[0] in b.nodes() and b.stats["expired_nodes"] == 0
    a.close(revoke=False)  # as a SIGKILL: no more renewals, nothing deleted
    t0 = time.monotonic()
    wait(lambda: names[0] not in b.nodes() and "10.7.1.7/32" not in b.ipcache(), ttl + 10, "a expired in b")
    # the last renewal was at most ttl/3 before the stop, and the TTL is timed from it
    assert time.monotonic() - t0 >= ttl - ttl / 3 - 0.2 and gone == [names[0]]
    wait(lambda: names[0] not in crds.kubectl("get", "lannerendpoints,lannernodes", "-o", "name").stdout, 10,
         "a's endpoint and LannerNode deleted by b")
    assert names[1] in crds.kubectl("get", "lannernodes", "-o", "name").stdout  # b's own stay


def test_a_node_collected_while_cut_off_comes_back_at_its_next_renewal(stores, names, crds) -> None:
    a, b = stores(names[0], watch=True, ttl=3), stores(names[1], watch=True, ttl=3)
    a.register_node("192.0.2.1", "10.7.1.0/24")
    b.register_node("192.0.2.2", "10.7.2.0/24")
    a.upsert_ip("10.7.1.8/32", a.allocate({"k8s:app": "back", "k8s:run": uuid.uuid4().hex[:8]}))
    wait(lambda: "10.7.1.8/32" in b.ipcache(), 10, "a's endpoint in b's view")
    crds.kubectl("delete", f"lannernodes/{names[0]}", f"lannerendpoints/{names[0]}.10.7.1.8-32")
    wait(lambda: "10.7.1.8/32" not in b.ipcache(), 5, "a's endpoint gone from b's view with its LannerNode")
    wait(lambda: names[0] in b.nodes() and "10.7.1.8/32" in b.ipcache(), 10, "a re-created its objects")
    crds.kubectl("delete", f"lannerendpoints/{names[0]}.10.7.1.8-32")  # an endpoint alone: a writes it again
    wait(lambda: f"{names[0]}.10.7.1.8-32" in crds.kubectl("get", "lannerendpoints", "-o", "name").stdout, 10,
         "a's endpoint re-created")
    a.delete_ip("10.7.1.8/32")  # its own delete is not undone
    wait(lambda: "10.7.1.8/32" not in b.ipcache(), 10, "a's deleted endpoint gone from b's view")
    time.sleep(1)
    assert f"{names[0]}.10.7.1.8-32" not in crds.kubectl("get", "lannerendpoints", "-o", "name").stdout


# ------------------------------------------------------------------------------------------ the flags
@pytest.mark.parametrize("argv,message", [
    (["--kvstore", "crd"], "--kvstore crd needs --node-ip"),
    (["--kvstore", "crd", "--node-ip", "192.0.2.1", "--etcd-endpoint", "http://e:2379"], "--etcd-endpoint is for --kvstore etcd"),
    (["--kvstore", "crd", "--node-ip", "192.0.2.1", "--cluster-node-name", "Node_1"], "must be a lowercase DNS subdomain"),
    (["--kvstore", "crd", "--node-ip", "192.0.2.1", "--cluster-node-name", "n1", "--k8s-kubeconfig-path", "/nonexistent"],
     "--k8s-kubeconfig-path /nonexistent: no such file"),
    (["--node-ip", "192.0.2.1"], "--node-ip needs --kvstore etcd or crd"),
])
def test_flag_errors_name_the_flag(argv: list[str], message: str) -> None:
    from lanner.cli import build_parser
    from lanner.netdp.cni.cli import netdp_config

    args = build_parser().parse_args(["cni", "serve", "--pod-cidr", "10.9.0.0/24", *argv])
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        netdp_config(args, required=True)


def test_crd_flags_make_a_cluster_config(tmp_path) -> None:
    from lanner.cli import build_parser
    from lanner.netdp.cni.cli import netdp_config

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    args = build_parser().parse_args(["agent", "--enable-netdp", "--pod-cidr", "10.9.0.0/24", "--kvstore", "crd",
                                      "--node-ip", "192.0.2.1", "--cluster-node-name", "n1", "--k8s-kubeconfig-path",
                                      str(kubeconfig), "--kvstore-lease-ttl", "4"])
    cluster = netdp_config(args, required=False).cluster
    assert (cluster.kvstore, cluster.kubeconfig, cluster.node_name, cluster.lease_ttl_s) == ("crd", kubeconfig, "n1", 4)


def test_no_kubeconfig_outside_a_pod_names_the_flag(monkeypatch) -> None:
    from lanner.netdp.cluster import ClusterConfig
    from lanner.netdp.kvstore.store import open_store

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = ClusterConfig(etcd_endpoint="", node_name="n1", node_ip="192.0.2.1", pod_cidr="10.9.0.0/24",
                        underlay_device="eth0", kvstore="crd")
    with pytest.raises(ValueError, match="in-cluster config .*--k8s-kubeconfig-path FILE"):
        open_store(cfg)


def test_an_unreachable_api_server_fails_the_start_with_the_reason(crds: ControlPlane, tmp_path) -> None:
    from kubernetes import config

    from lanner.netdp.identity import IdentityError
    from tests.k8s_harness import free_port

    path = crds.kubeconfig_via(free_port(), tmp_path / "kubeconfig")  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(IdentityError, match=r"lanner\.io objects not listed within 2 s \(lannernodes unreachable"):
        CrdStore(config.new_client_from_config(config_file=str(path)), "n1", sync_timeout_s=2)
    assert time.monotonic() - t0 < 15


def test_a_node_cut_off_from_the_api_declares_nobody_gone_and_comes_back(stores, names, crds, tmp_path) -> None:
    """b loses the API server (a relay cut: connections dropped, nothing listening) for longer than the TTL,
    while a keeps renewing. b must not expire a (its own renewals did not come back: its silence proves
    nothing); a expires b and collects its objects (b was gone as far as the API knows). Back, b re-creates
    its LannerNode and endpoint and a sees them again; b still has a."""
    from kubernetes import config

    from tests.test_k8s_agent import TcpProxy

    ttl = 2
    host, port = crds.server.removeprefix("https://").rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    try:
        path = crds.kubeconfig_via(proxy.port, tmp_path / "proxied.kubeconfig")
        a = stores(names[0], watch=True, ttl=ttl)
        b = CrdStore(config.new_client_from_config(config_file=str(path)), names[1], watch=True, lease_ttl_s=ttl)
        try:
            a.register_node("192.0.2.1", "10.7.1.0/24")
            b.register_node("192.0.2.2", "10.7.2.0/24")
            b.upsert_ip("10.7.2.3/32", b.allocate({"k8s:app": "cut", "k8s:run": uuid.uuid4().hex[:8]}))
            wait(lambda: names[0] in b.nodes() and "10.7.2.3/32" in a.ipcache(), 10, "both see each other")
            proxy.cut()
            wait(lambda: names[1] not in a.nodes() and "10.7.2.3/32" not in a.ipcache(), ttl + 10, "a expires b")
            time.sleep(ttl)  # b, cut off, has not heard a for well over a TTL by now
            assert names[0] in b.nodes() and b.stats["expired_nodes"] == 0
            proxy.restore()
            wait(lambda: names[1] in a.nodes() and "10.7.2.3/32" in a.ipcache(), 30, "b back in a's view")
            time.sleep(ttl)  # after its watch resumed, b gave a a fresh TTL, and a renewed within it
            assert names[0] in b.nodes() and b.stats["expired_nodes"] == 0
        finally:
            b.close(revoke=True)
    finally:
        proxy.cut()


def test_after_an_api_outage_for_everyone_nobody_is_collected(stores, names, crds, tmp_path) -> None:
    """Both nodes lose the API server for twice the TTL, then it is back. Each one's own renewal may come back
    through its watch before the other's first renewal: the silence during the outage must not count, so
    nobody is expired and no object is deleted."""
    from kubernetes import config

    from tests.test_k8s_agent import TcpProxy

    ttl = 2
    host, port = crds.server.removeprefix("https://").rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    made: list[CrdStore] = []
    try:
        path = crds.kubeconfig_via(proxy.port, tmp_path / "proxied.kubeconfig")
        for i, name in enumerate(names):
            made.append(CrdStore(config.new_client_from_config(config_file=str(path)), name, watch=True,
                                 lease_ttl_s=ttl))
            made[-1].register_node(f"192.0.2.{i + 1}", f"10.7.{i + 1}.0/24")
        a, b = made
        wait(lambda: names[0] in b.nodes() and names[1] in a.nodes(), 10, "both see each other")
        proxy.cut()
        time.sleep(2 * ttl)
        proxy.restore()
        wait(lambda: a.stats["renewals"] and b.stats["renewals"] and all(
            s._liveness.watch_live() for s in made), 30, "both renewing and watching again")
        time.sleep(ttl)
        assert (a.stats["expired_nodes"], b.stats["expired_nodes"]) == (0, 0)
        assert names[1] in a.nodes() and names[0] in b.nodes()
    finally:
        for s in made:
            s.close(revoke=True)
        proxy.cut()
