"""The configurations bench/datapath.py compares, each installed on a fresh topology.

* ``baseline``     the router forwards, nothing filters: the reference every ratio is taken against.
* ``iptables-N``   N non-matching rules ``-s 10.200.x.y/32 -p tcp --dport P -j DROP`` then ``-j ACCEPT``
                   in bench-r's FORWARD chain, loaded with ``iptables-nft-restore -n``: every packet walks
                   all N rules (what rule-list NetworkPolicy implementations and kube-proxy generate).
* ``nftset-N``     the same N (source, port) pairs as one nft set matched by one rule (O(1) in netfilter);
                   not in the default list (the reference measured it equal to eBPF).
* ``lanner-N``     the lanner datapath (netdp.datapath.Datapath: TC programs on the router-side veths,
                   endpoint map, ipcache, per-endpoint policy, conntrack and flow events on) with N
                   policy entries; it runs in bench/datapath_lanner.py, a helper process inside bench-r.

A configuration proves it carried the traffic: ``evidence()`` reads the ACCEPT rule's counters
(iptables) or the datapath's own counters (lanner) after the measurements.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from datapath_topo import Topology, TopologyError, run

HELPER = Path(__file__).resolve().parent / "datapath_lanner.py"


class ConfigError(RuntimeError):
    pass


def filler(i: int) -> tuple[str, int]:
    """The i-th non-matching rule: a source in 10.200.0.0/16 (never used by the topology) and a port."""
    return f"10.200.{(i >> 8) & 0xFF}.{i & 0xFF}", 1000 + (i % 50000)


class Config(Protocol):
    name: str
    kind: str  # baseline | iptables | lanner
    rules: int

    def install(self, topo: Topology) -> float:
        """Install on a fresh topology; return the install time in seconds."""

    def evidence(self, topo: Topology) -> dict:
        """What proves the traffic went through this configuration (read after measuring)."""

    def remove(self) -> None:
        """Undo what install() started (processes, pins); the topology itself is deleted by the caller."""


@dataclass
class Baseline:
    name: str = "baseline"
    kind: str = "baseline"
    rules: int = 0

    def install(self, topo: Topology) -> float:
        return 0.0

    def evidence(self, topo: Topology) -> dict:
        out = run(["ip", "-n", topo.router, "-s", "-j", "link", "show", "dev", topo.b.router_ifname])
        tx = json.loads(out)[0]["stats64"]["tx"]["packets"]
        return {"ok": tx > 0, "router_forwarded_packets": tx}

    def remove(self) -> None:
        pass


@dataclass
class Iptables:
    rules: int
    kind: str = "iptables"
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"iptables-{label(self.rules)}"

    def ruleset(self) -> str:
        lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        for i in range(self.rules):
            src, port = filler(i)
            lines.append(f"-A FORWARD -s {src}/32 -p tcp -m tcp --dport {port} -j DROP")
        lines += ["-A FORWARD -j ACCEPT", "COMMIT", ""]
        return "\n".join(lines)

    def install(self, topo: Topology) -> float:
        text = self.ruleset()
        t0 = time.perf_counter()
        run(["ip", "netns", "exec", topo.router, "iptables-nft-restore", "-n"], input=text, timeout=120)
        return time.perf_counter() - t0

    def evidence(self, topo: Topology) -> dict:
        out = run(["ip", "netns", "exec", topo.router, "iptables-nft", "-L", "FORWARD", "-v", "-x", "-n"],
                  timeout=120)
        rows = [ln.split() for ln in out.splitlines()[2:] if ln.strip()]
        accept = rows[-1] if rows else []
        pkts = int(accept[0]) if accept and accept[2] == "ACCEPT" else 0
        dropped = sum(int(r[0]) for r in rows[:-1])
        return {"ok": pkts > 0 and len(rows) == self.rules + 1 and dropped == 0, "rules_loaded": len(rows) - 1,
                "accept_packets": pkts, "dropped_packets": dropped}

    def remove(self) -> None:
        pass  # the rules live in bench-r, deleted with it


@dataclass
class NftSet:
    """The same N (source, TCP port) pairs as one nft set with a concatenated key, matched by one rule
    in bench-r's forward hook: an O(1) hash lookup in netfilter (the fair non-eBPF comparison, see the
    reference's caveat 3)."""

    rules: int
    kind: str = "nftset"
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"nftset-{label(self.rules)}"

    def ruleset(self) -> str:
        elems = ", ".join(f"{src} . tcp . {port}" for src, port in (filler(i) for i in range(self.rules)))
        set_body = "type ipv4_addr . inet_proto . inet_service;" + (f" elements = {{ {elems} }}" if elems else "")
        return ("table inet lnbench {\n"
                f"  set deny {{ {set_body} }}\n"
                "  chain polfwd { type filter hook forward priority 0; policy accept;\n"
                "    ip saddr . meta l4proto . th dport @deny counter drop\n"
                "    counter accept\n"
                "  }\n}\n")

    def install(self, topo: Topology) -> float:
        text = self.ruleset()
        t0 = time.perf_counter()
        run(["ip", "netns", "exec", topo.router, "nft", "-f", "-"], input=text, timeout=120)
        return time.perf_counter() - t0

    def evidence(self, topo: Topology) -> dict:
        chain = run(["ip", "netns", "exec", topo.router, "nft", "list", "chain", "inet", "lnbench", "polfwd"])
        counters = [int(x) for x in re.findall(r"counter packets (\d+) bytes", chain)]
        dropped, accepted = (counters + [0, 0])[:2]
        doc = json.loads(run(["ip", "netns", "exec", topo.router, "nft", "-j", "list", "set", "inet", "lnbench",
                              "deny"], timeout=60))
        elems = next((x["set"].get("elem", []) for x in doc["nftables"] if "set" in x), [])
        return {"ok": accepted > 0 and dropped == 0 and len(elems) == self.rules, "set_elements": len(elems),
                "accept_packets": accepted, "dropped_packets": dropped}

    def remove(self) -> None:
        pass  # the table lives in bench-r, deleted with it


@dataclass
class Lanner:
    """The lanner datapath with ``rules`` policy entries, run by bench/datapath_lanner.py in bench-r."""

    rules: int
    pin_root: Path
    workdir: Path
    shape: str = "per-cidr"  # how the non-matching entries are written (bench/datapath_lanner.py)
    flow_rate_limit: int | None = None  # flow events/s for the node; None: the datapath's default; 0: unlimited
    bpf_stats: bool = False  # report the programs' run time (the caller holds a BPF_ENABLE_STATS fd)
    kind: str = "lanner"
    name: str = ""
    proc: subprocess.Popen | None = None
    ready: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or f"lanner-{label(self.rules)}"

    def install(self, topo: Topology) -> float:
        pin_dir = self.pin_root / f"{self.name}"
        spec = {
            "pin_dir": str(pin_dir),
            "state_dir": str(self.workdir / self.name),
            "rules": self.rules,
            "shape": self.shape,
            "flow_rate_limit": self.flow_rate_limit,
            "bpf_stats": self.bpf_stats,
            "pods": [pod_spec(topo, p, n) for p, n in ((topo.a, "bench-a"), (topo.b, "bench-b"))],
            "server": {"pod": "bench-b", "tcp_ports": [5201, 7000, 11112], "udp_ports": [11111]},
        }
        self.err_path = self.workdir / f"{self.name}.stderr"
        self._err = open(self.err_path, "wb")
        cmd = topo.exec_cmd(topo.router, [sys.executable, str(HELPER), "--spec", json.dumps(spec)])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     text=True, cwd=str(HELPER.parent.parent))
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise ConfigError(f"{self.name}: the datapath helper exited ({self.proc.returncode}):\n{self.log_tail()}")
        self.ready = json.loads(line)
        if not self.ready.get("ok"):
            raise ConfigError(f"{self.name}: {self.ready.get('error', 'helper not ready')}\n{self.log_tail()}")
        return float(self.ready["install_s"])

    def evidence(self, topo: Topology) -> dict:
        self._finish()
        ev = {k: v for k, v in self.ready.items() if k in ("policy_s", "ipcache_entries", "shape", "identities", "flow_rate_limit")}
        ev.update(self.final)
        ev.setdefault("ok", False)
        return ev

    def _finish(self) -> None:
        """Ask the helper for its counters and let it exit (closing stdin is the signal)."""
        if self.proc is None or self.final:
            return
        try:
            self.proc.stdin.close()
            line = self.proc.stdout.readline()
            self.final = json.loads(line) if line else {"ok": False, "error": "no final report"}
            self.proc.wait(timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            self.final = {"ok": False, "error": f"{type(e).__name__}: {e}"}

    def remove(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self.proc = None
            self._err.close()
        pin_dir = self.pin_root / self.name
        if pin_dir.exists():  # the helper removes its pins; this is the backstop after a crash
            subprocess.run(["rm", "-rf", "--one-file-system", str(pin_dir)], check=False)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def pod_spec(topo: Topology, pod, name: str) -> dict:
    return {
        "name": name,
        "namespace": "bench",
        "labels": {"app": name},
        "netns": topo.netns_path(pod.netns),
        "netns_inode": topo.netns_inode(pod.netns),
        "ifname": pod.ifname,
        "ip": pod.ip,
        "mac": topo.mac(pod.netns, pod.ifname),
        "host_ifname": pod.router_ifname,
        "host_ifindex": topo.ifindex(topo.router, pod.router_ifname),
        "host_mac": topo.mac(topo.router, pod.router_ifname),
    }


def label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def parse_config(name: str, pin_root: Path, workdir: Path, shape: str = "per-cidr",
                 flow_rate_limit: int | None = None, bpf_stats: bool = False) -> Config:
    """``baseline``, ``lanner-N``, ``iptables-N`` or ``nftset-N`` (N like 1000, 1k, 10k)."""
    if name == "baseline":
        return Baseline()
    kind, _, n = name.partition("-")
    try:
        rules = int(n[:-1]) * 1000 if n.endswith("k") else int(n)
    except ValueError:
        raise ConfigError(f"bad configuration {name!r}: expected baseline, lanner-N, iptables-N or nftset-N") from None
    if kind == "iptables":
        return Iptables(rules)
    if kind == "nftset":
        return NftSet(rules)
    if kind == "lanner":
        return Lanner(rules, pin_root, workdir, shape, flow_rate_limit, bpf_stats)
    raise ConfigError(f"bad configuration {name!r}: expected baseline, lanner-N, iptables-N or nftset-N")


__all__ = ["Baseline", "Config", "ConfigError", "Iptables", "Lanner", "NftSet", "parse_config", "label", "filler",
           "TopologyError"]
