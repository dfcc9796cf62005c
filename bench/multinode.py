"""Multi-node benchmark (issue 7): cross-node pod traffic, native vs VXLAN vs same-node, and how long a new
pod's identity takes to reach another node's BPF ipcache.

TOPOLOGY, all in namespaces of this run (names start with lmb<PID>-; nothing in the root netns):

    underlay netns: bridge br0 192.168.253.254/24 + etcd (client URL http://192.168.253.254:2379)
      |-- node1 netns  eth0 192.168.253.1   pod CIDR 10.253.1.0/24   `lanner cni serve --kvstore etcd ...`
      |-- node2 netns  eth0 192.168.253.2   pod CIDR 10.253.2.0/24   `lanner cni serve --kvstore etcd ...`

Each node runs its own agent (eBPF datapath, conntrack and flow events on, its own pins and socket).
Pods are added by exec'ing lanner-cni as a runtime does. For each routing mode (native, vxlan) the
agents are restarted in that mode and fresh pods are made: a1, a2 on node1, b1 on node2.

MEASURES (bench/datapath_load.py, pinned the same way as the datapath benchmark)
  same-node   a1 -> a2 (both on node1)          cross-node  a1 -> b1 (node1 -> node2)
  RR: sockperf ping-pong 64 B UDP/TCP (avg, p99, one-way µs); conn/s: Python connect loop; Gbit/s: iperf3.
  Ratios are against same-node, measured in the same run.
IDENTITY PROPAGATION: --pods N pods added on node1, each in its own namespace (so each allocates a new
  identity in etcd); for each, the time from the start of its ADD until node2's BPF ipcache (its pinned
  map, polled with bpf_map_lookup_elem every 0.2 ms) holds the pod's /32. p50/p99/max.

Usage: .venv/bin/python bench/multinode.py [--quick] [--pods N] [--modes native,vxlan]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _cluster_topo import cluster_topology  # noqa: E402
from _common import machine, require_root  # noqa: E402
from _etcd import start_etcd  # noqa: E402
from datapath_cni import exec_plugin, lanner_plugin  # noqa: E402
from datapath_load import FULL, QUICK, Durations, measure  # noqa: E402

from lanner.bpf import libbpf as L  # noqa: E402

UNDERLAY = "192.168.253"
PODNET = "10.253"


@dataclass
class SimplePod:
    netns: str
    ip: str


@dataclass
class PairTopo:
    """What datapath_load.measure needs: two pods and a way to run a command in a namespace."""

    a: SimplePod
    b: SimplePod
    created: list[str] = field(default_factory=list)

    def exec_cmd(self, ns: str, cmd: list[str], cpu: int | None = None) -> list[str]:
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return ["nsenter", f"--net=/var/run/netns/{ns}", "--", *pin, *cmd]


@dataclass
class BenchNode:
    name: str
    netns: str
    ip: str
    pod_cidr: str
    work: Path
    pin: Path
    proc: subprocess.Popen | None = None
    pods: list[str] = field(default_factory=list)  # pod netns names

    @property
    def socket(self) -> Path:
        return self.work / "cni.sock"

    def start(self, etcd: str, mode: str) -> None:
        self.socket.unlink(missing_ok=True)
        log = open(self.work / f"agent-{mode}.log", "wb")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{self.netns}", sys.executable, "-m", "lanner", "cni", "serve",
             "--pod-cidr", self.pod_cidr, "--cni-socket", str(self.socket), "--netdp-state-dir",
             str(self.work / f"state-{mode}"), "--netdp-pin-dir", str(self.pin), "--kvstore", "etcd",
             "--etcd-endpoint", etcd, "--node-ip", self.ip, "--underlay-device", "eth0", "--routing-mode", mode,
             "--cluster-node-name", self.name, "--kvstore-lease-ttl", "5", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}'s agent did not start: see {log.name}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        subprocess.run(["rm", "-rf", str(self.pin)])

    def add_pod(self, tag: str, name: str, namespace: str) -> tuple[str, str, float]:
        """(pod netns, pod IP, seconds the ADD took)."""
        ns = f"{tag}-{name}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        self.pods.append(ns)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        conf = {"cniVersion": "1.1.0", "name": "lanner", "type": "lanner-cni", "agentSocket": str(self.socket)}
        env_args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"
        t0 = time.perf_counter()
        r = subprocess.run(["nsenter", f"--net=/var/run/netns/{self.netns}", lanner_plugin(self.work)],
                           input=json.dumps(conf).encode(), capture_output=True, timeout=60,
                           env={**os.environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c-{name}",
                                "CNI_NETNS": f"/var/run/netns/{ns}", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
                                "CNI_ARGS": env_args})
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"ADD {name} on {self.name} failed: {r.stdout[-500:]!r}")
        ip = json.loads(r.stdout)["ips"][0]["address"].split("/")[0]
        return ns, ip, dt

    def remove_pods(self) -> None:
        for ns in self.pods:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.pods.clear()


class PinnedIpcache:
    """Node2's BPF ipcache, looked up directly through its pin (no bpftool spawn per poll)."""

    def __init__(self, path: Path) -> None:
        self.fd = L.bpf_obj_get(str(path).encode())
        if self.fd < 0:
            raise RuntimeError(f"cannot open the pinned map {path}")
        info = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(path)], capture_output=True,
                                         text=True, check=True).stdout)
        self.vbuf = ctypes.create_string_buffer(int(info["bytes_value"]))

    def has(self, ip: str) -> bool:
        key = struct.pack("<I", 32) + socket.inet_aton(ip)
        return L.bpf_map_lookup_elem(self.fd, key, self.vbuf) == 0

    def close(self) -> None:
        os.close(self.fd)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def propagation(n1: BenchNode, n2: BenchNode, tag: str, count: int) -> dict:
    ipc = PinnedIpcache(n2.pin / "netdp_ipcache")
    times, adds, after = [], [], []
    try:
        for i in range(count):
            t0 = time.perf_counter()
            ns, ip, add_s = n1.add_pod(tag, f"prop{i}", f"prop-ns-{i}")
            adds.append(add_s)
            deadline = t0 + 10
            while not ipc.has(ip):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"pod {ip} never reached node2's ipcache")
                time.sleep(0.0002)
            times.append(time.perf_counter() - t0)
            after.append(times[-1] - add_s)
    finally:
        ipc.close()
    return {"n": count, "p50_ms": pct(times, 50) * 1e3, "p99_ms": pct(times, 99) * 1e3, "max_ms": max(times) * 1e3,
            "add_p50_ms": pct(adds, 50) * 1e3, "after_add_p50_ms": pct(after, 50) * 1e3,
            "after_add_p99_ms": pct(after, 99) * 1e3}


def run_mode(nodes: list[BenchNode], etcd: str, mode: str, tag: str, d: Durations, same_node: bool,
             prop_pods: int) -> dict:
    n1, n2 = nodes
    for n in nodes:
        n.start(etcd, mode)
    try:
        a1 = n1.add_pod(tag, f"{mode}-a1", "bench")
        a2 = n1.add_pod(tag, f"{mode}-a2", "bench")
        b1 = n2.add_pod(tag, f"{mode}-b1", "bench")
        time.sleep(1.0)  # routes and ipcache entries settle (propagation itself is measured below)
        out = {}
        if same_node:
            out["same-node"] = measure(PairTopo(SimplePod(a1[0], a1[1]), SimplePod(a2[0], a2[1])), d).as_dict()
        out[f"cross-node {mode}"] = measure(PairTopo(SimplePod(a1[0], a1[1]), SimplePod(b1[0], b1[1])), d).as_dict()
        if prop_pods:
            out[f"propagation {mode}"] = propagation(n1, n2, f"{tag}-{mode}", prop_pods)
        return out
    finally:
        for n in nodes:
            n.stop()
            n.remove_pods()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 s per measure, 1 iperf3 run, 10 propagation pods")
    p.add_argument("--pods", type=int, default=None, help="pods for the propagation measure (default 50, quick 10)")
    p.add_argument("--modes", default="native,vxlan", help="routing modes, comma-separated (native, vxlan)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)
    require_root()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in ("native", "vxlan") for m in modes):
        p.error(f"--modes {args.modes!r}: choose from native, vxlan")
    d = QUICK if args.quick else FULL
    pods = args.pods if args.pods is not None else (10 if args.quick else 50)
    tag = f"lmb{os.getpid() % 100000}"
    results: dict = {"machine": machine(), "durations": d.__dict__, "modes": modes}
    with tempfile.TemporaryDirectory(prefix="lanner-multinode-") as tmp:
        work = Path(tmp)
        with cluster_topology(2, 0, tag=tag, underlay_net=UNDERLAY, pod_bridge=False) as topo:
            nodes = []
            for t in topo:
                (work / t.name).mkdir()
                nodes.append(BenchNode(t.name, t.netns, t.ip, t.pod_cidr.replace("10.251", PODNET), work / t.name,
                                       Path(f"/sys/fs/bpf/lanner-bench-multinode-{os.getpid()}-{t.name}")))
            etcd = start_etcd(work, netns=f"{tag}-u", host=f"{UNDERLAY}.254")
            try:
                for i, mode in enumerate(modes):
                    print(f"== {mode}", file=sys.stderr, flush=True)
                    results.update(run_mode(nodes, etcd.endpoint, mode, tag, d, same_node=(i == 0), prop_pods=pods))
            finally:
                for n in nodes:
                    n.stop()
                    n.remove_pods()
                etcd.stop()
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"machine: {results['machine']}")
    base = results.get("same-node")
    print(f"{'path':<20} {'UDP RR µs':>10} {'p99':>7} {'TCP RR µs':>10} {'p99':>7} {'conn/s':>8} {'Gbit/s':>7}"
          f"   ratios vs same-node (UDP RR, TCP RR, conn/s, Gbit/s)")
    for key in [k for k in results if k == "same-node" or k.startswith("cross-node")]:
        r = results[key]
        line = (f"{key:<20} {r['udp']['avg_us']:>10.2f} {r['udp']['p99_us']:>7.1f} {r['tcp']['avg_us']:>10.2f} "
                f"{r['tcp']['p99_us']:>7.1f} {r['conn_per_s']:>8.0f} {r['gbit_s']:>7.2f}")
        if base:
            line += (f"   {r['udp']['avg_us'] / base['udp']['avg_us']:.2f}x {r['tcp']['avg_us'] / base['tcp']['avg_us']:.2f}x"
                     f" {r['conn_per_s'] / base['conn_per_s']:.2f}x {r['gbit_s'] / base['gbit_s']:.2f}x")
        print(line)
    for key in [k for k in results if k.startswith("propagation")]:
        r = results[key]
        print(f"{key:<20} identity propagation node1 ADD -> node2 BPF ipcache over {r['n']} pods: p50 "
              f"{r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms; the ADD itself p50 "
              f"{r['add_p50_ms']:.1f} ms, then until node2's map has it p50 {r['after_add_p50_ms']:.1f} ms, "
              f"p99 {r['after_add_p99_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
