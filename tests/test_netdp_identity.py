"""Identity allocation and the ipcache in the single-node file store."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lanner.netdp.endpoint import FIRST_CLUSTER_IDENTITY, PodInfo
from lanner.netdp.identity import IdentityError, IdentityStore, LocalFileStore, pod_identity_labels


def test_same_labels_same_identity_and_refcount(tmp_path: Path) -> None:
    s = LocalFileStore(tmp_path / "ids.json")
    assert isinstance(s, IdentityStore)
    web = {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "default"}
    a = s.allocate(web)
    b = s.allocate(dict(reversed(list(web.items()))))  # order does not matter
    c = s.allocate({"k8s:app": "db", "k8s:io.kubernetes.pod.namespace": "default"})
    assert a == b >= FIRST_CLUSTER_IDENTITY and c != a
    assert s.labels_of(a) == web and s.refcount(a) == 2
    assert s.identities() == {a: web, c: s.labels_of(c)}
    s.release(web)
    assert s.labels_of(a) == web
    s.release(web)
    assert s.labels_of(a) is None and a not in s.identities()
    s.release(web)  # releasing an unknown label set is a no-op
    # a freed number is not handed out again right away
    assert s.allocate({"k8s:app": "new"}) not in (a, c)


def test_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ids.json"
    s = LocalFileStore(path)
    ident = s.allocate({"k8s:app": "web"})
    s.upsert_ip("10.1.0.5", ident)
    s.upsert_ip("192.168.0.0/16", 2)
    s2 = LocalFileStore(path)
    assert s2.allocate({"k8s:app": "web"}) == ident
    assert s2.refcount(ident) == 2
    assert s2.ipcache() == {"10.1.0.5/32": ident, "192.168.0.0/16": 2}
    s2.delete_ip("10.1.0.5/32")
    s2.delete_ip("10.9.9.9/32")  # absent: no-op
    assert LocalFileStore(path).ipcache() == {"192.168.0.0/16": 2}


def test_bad_input_names_the_field(tmp_path: Path) -> None:
    s = LocalFileStore(tmp_path / "ids.json")
    with pytest.raises(IdentityError, match="cidr '10.0.0.1/24'"):
        s.upsert_ip("10.0.0.1/24", 300)
    with pytest.raises(IdentityError, match="only IPv4"):
        s.upsert_ip("fd00::/64", 300)
    with pytest.raises(IdentityError, match="identity for 10.0.0.1/32"):
        s.upsert_ip("10.0.0.1", 0)
    with pytest.raises(IdentityError, match=r"labels\['app'\]"):
        s.allocate({"app": 3})  # type: ignore[dict-item]
    assert s.ipcache() == {} and s.identities() == {}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(IdentityError, match=str(bad)):
        LocalFileStore(bad)


def test_pod_identity_labels() -> None:
    pod = PodInfo("prod", "web-1", labels=(("app", "web"), ("tier", "fe")))
    assert pod_identity_labels(pod, {"team": "a"}) == {
        "k8s:app": "web", "k8s:tier": "fe", "k8s:io.kubernetes.pod.namespace": "prod",
        "k8s:io.cilium.k8s.namespace.labels.team": "a"}


WRITER = r"""
import sys
from pathlib import Path
from lanner.netdp.identity import LocalFileStore
s = LocalFileStore(Path(sys.argv[1]))
i = 0
print("go", flush=True)
while True:
    s.allocate({"k8s:n": str(i)}); s.upsert_ip(f"10.{(i >> 8) & 255}.{i & 255}.1/32", 300 + i); i += 1
"""


def test_crash_mid_write_leaves_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "ids.json"
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "go"
        time.sleep(0.3)
        p.send_signal(signal.SIGKILL)  # at any point, possibly inside a write
        p.wait()
        doc = json.loads(path.read_text())  # never torn: the rename is atomic
        assert doc["version"] == 1
        s = LocalFileStore(path)
        assert not list(tmp_path.glob(".ids.json.tmp.*"))  # a crashed writer's tmp file is cleaned up
        ids = s.identities()
        assert len(ids) > 0 and len(set(map(lambda d: tuple(d.items()), ids.values()))) == len(ids)
    # two stores on one file agree (the flock serializes them)
    s1, s2 = LocalFileStore(path), LocalFileStore(path)
    x = s1.allocate({"k8s:app": "shared"})
    assert s2.allocate({"k8s:app": "shared"}) == x and s1.refcount(x) == 2
