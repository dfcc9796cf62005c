"""The etcd cluster store against a real etcd server (issue 7: cluster-wide identities and ipcache)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from lanner.netdp.endpoint import FIRST_CLUSTER_IDENTITY
from lanner.netdp.kvstore.etcd import EtcdClient, EtcdError
from lanner.netdp.kvstore.etcd_store import EtcdStore
from bench._etcd import start_etcd


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()


@pytest.fixture
def prefix(request) -> str:
    return f"t-{request.node.name}-{os.getpid()}/"


def _store(etcd, prefix, node, ttl=10) -> EtcdStore:
    return EtcdStore(EtcdClient(etcd.endpoint), node, prefix=prefix, lease_ttl_s=ttl)


def test_same_labels_same_identity_across_stores(etcd, prefix):
    a, b = _store(etcd, prefix, "node-a"), _store(etcd, prefix, "node-b")
    try:
        web = {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "default"}
        db = {"k8s:app": "db", "k8s:io.kubernetes.pod.namespace": "default"}
        ia = a.allocate(web)
        assert ia >= FIRST_CLUSTER_IDENTITY
        assert b.allocate(dict(reversed(list(web.items())))) == ia  # order of labels does not matter
        idb = b.allocate(db)
        assert idb != ia
        assert a.labels_of(idb) == db
        assert a.labels_of(65000) is None
        assert {ia: web, idb: db}.items() <= b.identities().items()
        from lanner.netdp.identity import IdentityStore
        assert isinstance(a, IdentityStore)  # the cluster backend slots in where the local store goes
    finally:
        a.close(), b.close()


ALLOCATOR = textwrap.dedent("""
    import json, sys
    from lanner.netdp.kvstore.etcd import EtcdClient
    from lanner.netdp.kvstore.etcd_store import EtcdStore
    endpoint, prefix, node, go = sys.argv[1:5]
    store = EtcdStore(EtcdClient(endpoint), node, prefix=prefix)
    import os, time
    while not os.path.exists(go):
        time.sleep(0.005)
    out = {}
    for i in range(12):
        out[str(i % 4)] = store.allocate({"k8s:app": "app%d" % (i % 4)})
    print(json.dumps(out))
    store.close()
""")


def test_concurrent_agents_agree_on_identities(etcd, prefix, tmp_path):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", ALLOCATOR, etcd.endpoint, prefix, f"node-{n}", str(go)],
                              stdout=subprocess.PIPE, text=True) for n in range(4)]
    time.sleep(1.0)
    go.touch()  # every allocator starts at once
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(r == results[0] for r in results), results  # every agent got the same id per label set
    assert len(set(results[0].values())) == 4  # and no two label sets share one


def test_ipcache_change_reaches_another_node_under_a_second(etcd, prefix):
    a, b = _store(etcd, prefix, "node-a"), _store(etcd, prefix, "node-b")
    seen: dict[str, float] = {}
    got = threading.Event()

    def on_ip(cidr, entry):
        if entry is not None and cidr == "10.1.0.7/32":
            seen[cidr] = time.monotonic()
            got.set()

    try:
        b.subscribe(on_ipcache=on_ip)
        t0 = time.monotonic()
        a.upsert_ip("10.1.0.7/32", 300, pod={"namespace": "default", "name": "web-1"})
        assert got.wait(5)
        assert seen["10.1.0.7/32"] - t0 < 1.0
        entry = b.ipcache_entries()["10.1.0.7/32"]
        assert (entry.identity, entry.node, entry.pod["name"]) == (300, "node-a", "web-1")
        a.delete_ip("10.1.0.7/32")
        deadline = time.monotonic() + 2
        while "10.1.0.7/32" in b.ipcache() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "10.1.0.7/32" not in b.ipcache()
    finally:
        a.close(), b.close()


NODE_AGENT = textwrap.dedent("""
    import sys, time
    from lanner.netdp.kvstore.etcd import EtcdClient
    from lanner.netdp.kvstore.etcd_store import EtcdStore
    endpoint, prefix = sys.argv[1:3]
    store = EtcdStore(EtcdClient(endpoint), "node-dead", prefix=prefix, lease_ttl_s=2)
    store.register_node("192.168.77.3", "10.3.0.0/24")
    store.upsert_ip("10.3.0.5/32", 400)
    print("ready", flush=True)
    time.sleep(600)
""")


def test_killed_agent_entries_expire_for_the_others(etcd, prefix):
    watcher = _store(etcd, prefix, "node-a")
    proc = subprocess.Popen([sys.executable, "-c", NODE_AGENT, etcd.endpoint, prefix], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 3
        while ("node-dead" not in watcher.nodes() or "10.3.0.5/32" not in watcher.ipcache()) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watcher.nodes()["node-dead"].pod_cidr == "10.3.0.0/24"
        assert watcher.ipcache().get("10.3.0.5/32") == 400
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        killed = time.monotonic()
        while ("node-dead" in watcher.nodes() or "10.3.0.5/32" in watcher.ipcache()) and time.monotonic() - killed < 10:
            time.sleep(0.05)
        assert "node-dead" not in watcher.nodes()
        assert "10.3.0.5/32" not in watcher.ipcache()
        assert time.monotonic() - killed < 2 + 3  # the 2 s lease plus etcd's expiry granularity
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        watcher.close()


def test_clean_close_drops_this_nodes_entries_at_once(etcd, prefix):
    a, b = _store(etcd, prefix, "node-a"), _store(etcd, prefix, "node-b")
    try:
        a.register_node("192.168.77.2", "10.2.0.0/24")
        deadline = time.monotonic() + 2
        while "node-a" not in b.nodes() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "node-a" in b.nodes()
        a.close()
        deadline = time.monotonic() + 2
        while "node-a" in b.nodes() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "node-a" not in b.nodes()
    finally:
        b.close()


def test_unreachable_etcd_names_the_endpoint():
    with pytest.raises(EtcdError, match="127.0.0.1:9"):
        EtcdClient("http://127.0.0.1:9", timeout_s=1).get("x")
    with pytest.raises(EtcdError, match="expected http://HOST:PORT"):
        EtcdClient("https://")
