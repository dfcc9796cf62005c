"""netdp/veth.py's raw-netlink ADD/DEL path, in namespaces of this test (a node and a pod netns).

The veth calls run on a thread that has entered the node netns (setns affects only that thread), so
the test process itself stays where it is. What is checked is read back with iproute2."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lanner.netdp import veth

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

_LIBC = ctypes.CDLL(None, use_errno=True)


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def nets() -> Iterator[tuple[str, str]]:
    tag = f"lnv{uuid.uuid4().hex[:6]}"
    made = []
    try:
        for n in (f"{tag}-node", f"{tag}-pod"):
            ip("netns", "add", n)
            made.append(n)
        yield made[0], made[1]
    finally:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], check=False)


def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    """Run fn on a fresh thread inside netns ``ns``; return its result or raise its exception."""
    out: dict[str, Any] = {}

    def body() -> None:
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            assert _LIBC.setns(fd, 0x40000000) == 0
        finally:
            os.close(fd)
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_create_configures_both_ends_and_delete_removes_them(nets):
    node, pod = nets
    host = veth.host_ifname("c1", "eth0")
    link = in_netns(node, lambda: veth.create(f"/var/run/netns/{pod}", "eth0", host, "lanner:c1/eth0",
                                              "10.77.0.5", "10.77.0.1", 1400))
    assert link.host_ifname == host and link.pod_ifname == "eth0" and link.mtu == 1400
    pod_link = ip("-n", pod, "-o", "link", "show", "eth0")
    assert "mtu 1400" in pod_link and "state UP" in pod_link and link.pod_mac in pod_link
    assert ip("-n", pod, "-o", "link", "show", "eth0").startswith(f"{link.pod_ifindex}:")
    host_link = ip("-n", node, "-d", "link", "show", host)
    assert f"{link.host_ifindex}: {host}@" in host_link and "mtu 1400" in host_link and "state UP" in host_link
    assert link.host_mac in host_link and "alias lanner:c1/eth0" in host_link
    assert "inet 10.77.0.5/32" in ip("-n", pod, "addr", "show", "eth0")
    routes = ip("-n", pod, "route")
    assert "default via 10.77.0.1 dev eth0" in routes and "10.77.0.1 dev eth0 scope link" in routes
    assert f"10.77.0.5 dev {host} scope link" in ip("-n", node, "route")
    assert in_netns(node, lambda: veth.host_link(host)) == (link.host_ifindex, "lanner:c1/eth0")
    assert in_netns(node, lambda: veth.delete(host)) is True
    assert host not in ip("-n", node, "link") and "eth0" not in ip("-n", pod, "link")
    assert in_netns(node, lambda: veth.delete(host)) is False
    assert in_netns(node, lambda: veth.host_link(host)) is None


def test_stale_host_veth_is_replaced(nets):
    """A host veth of the same name left by an ADD that crashed is deleted and the pair created again."""
    node, pod = nets
    host = veth.host_ifname("c2", "eth0")
    ip("-n", node, "link", "add", host, "type", "veth", "peer", "name", "leftover")
    link = in_netns(node, lambda: veth.create(f"/var/run/netns/{pod}", "eth0", host, "lanner:c2/eth0",
                                              "10.77.0.6", "10.77.0.1", 1500))
    assert "leftover" not in ip("-n", node, "link")
    assert f"{link.pod_ifindex}: eth0@" in ip("-n", pod, "-o", "link", "show", "eth0")


def test_taken_pod_ifname_fails_and_leaves_nothing(nets):
    node, pod = nets
    ip("-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other")
    host = veth.host_ifname("c3", "eth0")
    with pytest.raises(veth.VethError, match="eth0 already exists in netns"):
        in_netns(node, lambda: veth.create(f"/var/run/netns/{pod}", "eth0", host, "lanner:c3/eth0",
                                           "10.77.0.7", "10.77.0.1", 1500))
    assert host not in ip("-n", node, "link")


def test_missing_pod_netns_is_a_veth_error(nets):
    node, _pod = nets
    with pytest.raises(veth.VethError, match="netns /var/run/netns/nonexistent-lnv"):
        in_netns(node, lambda: veth.create("/var/run/netns/nonexistent-lnv", "eth0", veth.host_ifname("c4", "eth0"),
                                           "lanner:c4/eth0", "10.77.0.8", "10.77.0.1", 1500))


def test_failed_pod_batch_rolls_back_the_pair(nets):
    """A failure after the pair exists (here: the gateway route is already in the pod's table, so the
    pod-side batch fails with EEXIST) deletes the pair again."""
    node, pod = nets
    ip("-n", pod, "link", "set", "lo", "up")
    ip("-n", pod, "route", "add", "10.77.0.1/32", "dev", "lo")
    host = veth.host_ifname("c5", "eth0")
    with pytest.raises(veth.VethError, match="configuring .*File exists"):
        in_netns(node, lambda: veth.create(f"/var/run/netns/{pod}", "eth0", host, "lanner:c5/eth0",
                                           "10.77.0.10", "10.77.0.1", 1500))
    assert host not in ip("-n", node, "link") and "eth0" not in ip("-n", pod, "link")
    assert "10.77.0.10" not in ip("-n", node, "route")


def test_cni_request_restores_the_switch_interval():
    from lanner.netdp.cni import service

    before = sys.getswitchinterval()
    seen = []
    with service._gil_priority():
        seen.append(sys.getswitchinterval())
        with service._gil_priority():  # nested (the server's and handle's)
            seen.append(sys.getswitchinterval())
        seen.append(sys.getswitchinterval())
    assert seen == [service.REQUEST_SWITCH_INTERVAL_S] * 3
    assert sys.getswitchinterval() == before
