"""netdp/kvstore/crd_store.py against the real API server, as the agent's identity (its ClusterRole): identities
created by name (a 409 means taken), two stores allocating the same label sets at once agree, the ipcache as
one LannerEndpoint per IP."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from lanner.netdp.kvstore.crd_store import CrdStore
from tests.k8s_harness import MANIFESTS, ControlPlane


@pytest.fixture(scope="module")
def stores(k8s: ControlPlane):
    import time

    k8s.kubectl("apply", "--server-side", "-f", str(MANIFESTS / "lanner-crds.yaml"))
    deadline = time.monotonic() + 60
    path = '{.items[*].status.conditions[?(@.type=="Established")].status}'
    while k8s.kubectl("get", "crd", "lanneridentities.lanner.io", "lannerendpoints.lanner.io", "-o",
                      f"jsonpath={path}", check=False).stdout.split() != ["True", "True"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return CrdStore(k8s.api_client(as_agent=True), "node-a"), CrdStore(k8s.api_client(as_agent=True), "node-b")


def test_two_stores_allocating_the_same_labels_at_once_agree(stores) -> None:
    a, b = stores
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
    assert {i: a.identities()[i] for i in ids} == {ids[i]: sets[i] for i in range(4)}
    numbers = [int(n) for n in a._numbers()]
    assert len(numbers) == len(set(numbers)) and not set(numbers) - set(a.identities())  # no orphan left


def test_ipcache_entries_are_endpoint_objects(stores) -> None:
    a, b = stores
    ident = a.allocate({"k8s:app": "ipcache", "k8s:run": uuid.uuid4().hex[:8]})
    a.upsert_ip("10.7.0.5/32", ident, {"namespace": "shop", "name": "web"})
    b.upsert_ip("10.7.1.9/32", ident)
    assert {k: v for k, v in b.ipcache().items() if k.startswith("10.7.")} == {"10.7.0.5/32": ident,
                                                                              "10.7.1.9/32": ident}
    a.upsert_ip("10.7.0.5/32", ident + 1)  # an update of its own entry
    assert a.ipcache()["10.7.0.5/32"] == ident + 1
    a.delete_ip("10.7.0.5/32")
    b.delete_ip("10.7.1.9/32")
    assert not [k for k in a.ipcache() if k.startswith("10.7.")]
