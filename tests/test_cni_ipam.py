"""IPAM: allocation keyed by attachment, no instant reuse, exhaustion, crash-safe persistence under
concurrent processes, and clear errors for an unusable state file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lanner.netdp.ipam import Ipam, IpamError, IpamExhausted
from tests.cni_runner import CniCallError, CniNode, lanner_conflist


def test_allocation_is_keyed_by_attachment(tmp_path):
    ipam = Ipam("10.9.0.0/24", tmp_path)
    assert ipam.gateway == "10.9.0.1"
    a = ipam.allocate("c1", "eth0", pod_name="a")
    assert (a.ip, a.endpoint_id, a.pod_name, a.complete) == ("10.9.0.2", 1, "a", False)
    assert ipam.allocate("c1", "eth0").ip == "10.9.0.2"  # a retried ADD keeps its address
    b = ipam.allocate("c1", "net1")  # another interface of the same container: another lease
    assert (b.ip, b.endpoint_id) == ("10.9.0.3", 2)
    assert ipam.release("c1", "eth0").ip == "10.9.0.2"
    assert ipam.release("c1", "eth0") is None
    c = ipam.allocate("c2", "eth0")
    assert c.ip == "10.9.0.4" and c.endpoint_id == 1  # no instant reuse of the address; ids are reused
    again = Ipam("10.9.0.0/24", tmp_path)  # a restart reads the same state
    assert {(x.container_id, x.ip) for x in again.leases()} == {("c1", "10.9.0.3"), ("c2", "10.9.0.4")}
    assert ipam.update(c, complete=True).complete and again.get("c2", "eth0").complete
    assert [x.ip for x in again.gc({("c2", "eth0")})] == ["10.9.0.3"]
    assert [x.ip for x in ipam.leases()] == ["10.9.0.4"]


def test_exhaustion_and_wraparound(tmp_path):
    ipam = Ipam("10.9.0.0/29", tmp_path)  # .0 network, .1 gateway, .7 broadcast: .2-.6 usable
    ips = [ipam.allocate(f"c{i}", "eth0").ip for i in range(5)]
    assert ips == [f"10.9.0.{i}" for i in range(2, 7)]
    with pytest.raises(IpamExhausted, match="10.9.0.0/29"):
        ipam.allocate("c9", "eth0")
    ipam.release("c1", "eth0")
    assert ipam.allocate("c9", "eth0").ip == "10.9.0.3"  # the search wraps around to the freed address


@pytest.mark.parametrize("cidr,text", [("10.9.0.1/24", "host bits"), ("fd00::/64", "IPv4"),
                                       ("10.9.0.0/31", "/30"), ("nonsense", "nonsense")])
def test_bad_cidr(tmp_path, cidr, text):
    with pytest.raises(IpamError, match=text):
        Ipam(cidr, tmp_path)
    assert not (tmp_path / "ipam.json").exists()


def test_unusable_state_file_is_named(tmp_path):
    Ipam("10.9.0.0/24", tmp_path).allocate("c1", "eth0")
    with pytest.raises(IpamError) as ei:
        Ipam("10.8.0.0/24", tmp_path)
    assert str(tmp_path / "ipam.json") in str(ei.value) and "10.9.0.0/24" in str(ei.value)
    (tmp_path / "ipam.json").write_text("{torn")
    with pytest.raises(IpamError, match="not valid JSON"):
        Ipam("10.9.0.0/24", tmp_path)


def test_a_crashed_writer_leaves_the_old_state(tmp_path):
    ipam = Ipam("10.9.0.0/24", tmp_path)
    ipam.allocate("c1", "eth0")
    before = (tmp_path / "ipam.json").read_text()
    # a writer killed after writing its temp file but before the rename
    (tmp_path / ".ipam.json.99999.tmp").write_text('{"cidr": "10.9.0.0/24", "leases": [')
    assert (tmp_path / "ipam.json").read_text() == before
    assert [x.ip for x in Ipam("10.9.0.0/24", tmp_path).leases()] == ["10.9.0.2"]


def test_concurrent_processes_never_share_an_address(tmp_path):
    code = ("import sys; from lanner.netdp.ipam import Ipam\n"
            "ipam = Ipam('10.9.0.0/24', sys.argv[1])\n"
            "for i in range(25): ipam.allocate(f'{sys.argv[2]}-{i}', 'eth0')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"p{n}"]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    state = json.loads((tmp_path / "ipam.json").read_text())
    ips = [x["ip"] for x in state["leases"]]
    ids = [x["endpoint_id"] for x in state["leases"]]
    assert len(ips) == 100 and len(set(ips)) == 100 and len(set(ids)) == 100
    assert "10.9.0.1" not in ips and "10.9.0.0" not in ips


def test_exhausted_pod_cidr_through_the_plugin(tmp_path):
    node = CniNode(f"lci{os.getpid() % 10000}", tmp_path, cidr="10.77.0.0/30")  # one pod address
    try:
        node.setup()
        node.start_service()
        r = node.runner(lanner_conflist(node))
        r.add("c1", node.pod("a"))
        p = node.pod("b")
        with pytest.raises(CniCallError) as ei:
            r.add("c2", p)
        assert ei.value.code == 102 and "10.77.0.0/30" in ei.value.out["details"]
        assert node.host_veths() == [node.leases()[0]["host_ifname"]]  # the failed ADD left nothing
        r.delete("c2", p)  # the runtime's DEL after a failed ADD succeeds
        r.delete("c1", f"/var/run/netns/{node.tag}-a")
        assert r.add("c2", p)["ips"][0]["address"] == "10.77.0.2/32"
    finally:
        node.close()
