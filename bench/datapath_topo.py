"""The reference topology of bench/datapath.py: two "pods" and a router, each in its own netns.

    bench-a  10.99.1.2/24  a0 <-veth-> ra0 10.99.1.1/24 ┐
                                                        ├ bench-r (router, ip_forward=1 in bench-r only)
    bench-b  10.99.2.2/24  b0 <-veth-> rb0 10.99.2.1/24 ┘

(``../shared/reference/cni-and-datapath.md`` §4.) The router side of each veth plays the host-side veth
of a pod: that is where iptables (FORWARD in bench-r) or the lanner datapath (TC on ra0/rb0) sit.

Every interface is created directly inside a namespace of this run (``ip -n NS link add ... peer ...
netns NS2``): nothing is created in, moved through or configured in the root netns. Namespace names
carry this process's PID (``lnb<PID>-a|r|b``) so concurrent runs and other engineers' namespaces never
collide; ``destroy()`` deletes them (which deletes their veths) and is safe to call twice.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")
PREFIX = "lnb"  # every namespace this benchmark creates starts with it


class TopologyError(RuntimeError):
    pass


def run(cmd: list[str], timeout: float = 30.0, check: bool = True, input: str | None = None) -> str:
    """Run a command, return its stdout; raise TopologyError with its stderr when it fails."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as e:
        raise TopologyError(f"timed out after {timeout} s: {shlex.join(cmd)}") from e
    if check and r.returncode != 0:
        raise TopologyError(f"failed ({r.returncode}): {shlex.join(cmd)}\n{r.stderr.strip()}")
    return r.stdout


@dataclass(frozen=True)
class Pod:
    """One end of the topology: its netns, its interface, and the router side of its veth."""

    netns: str
    ifname: str
    ip: str
    router_ifname: str
    router_ip: str
    prefix: int = 24


@dataclass
class Topology:
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    created: list[str] = field(default_factory=list)

    @property
    def router(self) -> str:
        return f"{self.tag}-r"

    @property
    def a(self) -> Pod:
        return Pod(f"{self.tag}-a", "a0", "10.99.1.2", "ra0", "10.99.1.1")

    @property
    def b(self) -> Pod:
        return Pod(f"{self.tag}-b", "b0", "10.99.2.2", "rb0", "10.99.2.1")

    def netns_path(self, ns: str) -> str:
        return str(NETNS_DIR / ns)

    # ----------------------------------------------------------------------------------- build / destroy
    def create(self) -> "Topology":
        """Build a fresh topology (no state left from a previous configuration)."""
        if self.created:
            raise TopologyError("topology already created: destroy() it first")
        try:
            for ns in (self.a.netns, self.router, self.b.netns):
                run(["ip", "netns", "add", ns])
                self.created.append(ns)
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
            for pod in (self.a, self.b):
                run(["ip", "-n", pod.netns, "link", "add", pod.ifname, "type", "veth",
                     "peer", "name", pod.router_ifname, "netns", self.router])
                run(["ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/{pod.prefix}", "dev", pod.ifname])
                run(["ip", "-n", pod.netns, "link", "set", pod.ifname, "up"])
                run(["ip", "-n", pod.netns, "route", "add", "default", "via", pod.router_ip])
                run(["ip", "-n", self.router, "addr", "add", f"{pod.router_ip}/{pod.prefix}", "dev",
                     pod.router_ifname])
                run(["ip", "-n", self.router, "link", "set", pod.router_ifname, "up"])
            # sysctls only inside this run's namespaces
            self.sysctl(self.router, "net.ipv4.ip_forward", "1")
            # the connect loop opens ~20k connections/s: give the client every ephemeral port
            self.sysctl(self.a.netns, "net.ipv4.ip_local_port_range", "1024 65000")
            self.sysctl(self.a.netns, "net.ipv4.tcp_tw_reuse", "1")
            self.wait_reachable()
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Delete this run's namespaces (their veths go with them). Idempotent."""
        while self.created:
            ns = self.created.pop()
            run(["ip", "netns", "del", ns], check=False)

    def __enter__(self) -> "Topology":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # ----------------------------------------------------------------------------------- helpers
    def sysctl(self, ns: str, key: str, value: str) -> None:
        if ns not in self.created:
            raise TopologyError(f"refusing to set {key} outside this run's namespaces ({ns})")
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"])

    def exec_cmd(self, ns: str, cmd: list[str], cpu: int | None = None) -> list[str]:
        """``cmd`` run inside ``ns`` (``nsenter --net``: /sys stays as it is, so bpffs pins stay visible),
        pinned to ``cpu`` when given."""
        if ns not in self.created:
            raise TopologyError(f"{ns} is not a namespace of this run")
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return ["nsenter", f"--net={self.netns_path(ns)}", "--", *pin, *cmd]

    def ifindex(self, ns: str, ifname: str) -> int:
        out = run(["ip", "-n", ns, "-o", "link", "show", "dev", ifname])
        return int(out.split(":", 1)[0])

    def mac(self, ns: str, ifname: str) -> str:
        out = run(["ip", "-n", ns, "-o", "link", "show", "dev", ifname])
        return out.split("link/ether", 1)[1].split()[0]

    def netns_inode(self, ns: str) -> int:
        return os.stat(self.netns_path(ns)).st_ino

    def wait_reachable(self, tries: int = 50) -> None:
        """a can ping b through the router (the topology works before any policy is installed)."""
        cmd = self.exec_cmd(self.a.netns, ["ping", "-c1", "-W1", "-q", self.b.ip])
        for _ in range(tries):
            if subprocess.run(cmd, capture_output=True, timeout=5).returncode == 0:
                return
        raise TopologyError(f"{self.a.ip} cannot reach {self.b.ip} through {self.router}")


def stale_namespaces() -> list[str]:
    """Namespaces left by an earlier run of this benchmark that died without cleaning up
    (``lnb<PID>-*`` whose PID no longer exists)."""
    out = []
    if not NETNS_DIR.is_dir():
        return out
    for p in NETNS_DIR.iterdir():
        name = p.name
        if not name.startswith(PREFIX) or "-" not in name:
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            out.append(name)
    return sorted(out)


def remove_stale() -> list[str]:
    gone = stale_namespaces()
    for ns in gone:
        run(["ip", "netns", "del", ns], check=False)
    return gone
