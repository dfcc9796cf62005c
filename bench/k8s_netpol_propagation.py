"""NetworkPolicy propagation from the Kubernetes API to the eBPF datapath: ``kubectl apply`` -> connections dropped.

A control plane of its own (tests/k8s_harness.py), a node netns with ``lanner agent --enable-netdp
--enable-k8s-api`` in it (reaching the API server through tests/netns_forward.py's loopback relay), and two
pods added by the real lanner-cni plugin: a TCP server in namespace ``bench-srv`` and a client in
``bench-cli``. A probe process in the client pod connects to the server in a loop (a new connection each
time, so each SYN meets the policy; 0.1 s connect timeout) and prints the monotonic time of every change
between connecting and not. Per round, a NetworkPolicy selecting the server's pods that admits only
namespaces labelled ``bench-allowed=yes`` (the client's is not) is applied with the real kubectl: the time
from kubectl's start (and from its exit, the object stored) to the first connection attempt that was
dropped, for good (no success after it); then ``kubectl delete``, to the first attempt that connected
(resolution: the 0.1 s connect timeout). Reported: p50 and p99 (nearest rank) over the rounds, and the
machine's background load. Traffic only between the two pods this benchmark creates, inside its netns.

Usage: .venv/bin/python bench/k8s_netpol_propagation.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402
from k8s_propagation import apply_delete_percentiles  # noqa: E402

PORT = 8080
SETTLE_S = 0.5  # a state counts once it has held this long (a slow SYN on a busy machine is not a drop)
SERVER = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(1024)
while True:
    c, _ = s.accept(); c.close()
"""
PROBE = f"""
import socket, sys, time
last = None
while True:
    t = time.monotonic()
    try:
        socket.create_connection((sys.argv[1], {PORT}), timeout=0.1).close(); ok = True
    except OSError:
        ok = False
    if ok != last:
        print(f"{{t:.6f}} {{'ok' if ok else 'dropped'}}", flush=True); last = ok
    if ok:
        time.sleep(0.002)
"""


def policy(name: str) -> str:
    return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": name, "namespace": "bench-srv"},
                       "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"bench-allowed": "yes"}}}]}]}})


class Probe:
    """The probe's state changes, read from its stdout in a thread: [(monotonic time, "ok" | "dropped")]."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.changes = proc, []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            t, state = line.split()
            with self._cv:
                self.changes.append((float(t), state))
                self._cv.notify_all()

    def settled(self, state: str, since: float, timeout: float = 30.0) -> float:
        """The time of the last change to ``state`` after ``since``, once it has held SETTLE_S."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                last = self.changes[-1] if self.changes else (0.0, "")
                if last[1] == state and last[0] >= since and time.monotonic() - last[0] >= SETTLE_S:
                    return last[0]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"probe not {state} since {since:.3f}: {self.changes[-5:]}")
                self._cv.wait(0.05)


def rounds(cp, probe: Probe, n: int) -> dict:
    start, stored, removed = [], [], []
    for i in range(-1, n):  # round -1 warms up (the first compile, the first flow events)
        name = f"bench-np-{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        cp.kubectl("apply", "-f", "-", stdin=policy(name))
        t1 = time.monotonic()
        t_drop = probe.settled("dropped", t0)
        t2 = time.monotonic()
        cp.kubectl("delete", "networkpolicy", name, "-n", "bench-srv", "--wait=false")
        t_ok = probe.settled("ok", t2)
        if i >= 0:
            start.append(t_drop - t0)
            stored.append(max(0.0, t_drop - t1))
            removed.append(t_ok - t2)
            print(f"round {i}: kubectl {t1 - t0:.3f} s, dropping {t_drop - t0:.3f} s after kubectl start "
                  f"({t_drop - t1:+.3f} s after its exit), connecting {t_ok - t2:.3f} s after delete", flush=True)
    return apply_delete_percentiles(start, stored, removed)


def start_pods(stack: C.Cleanup, node) -> Probe:
    """The server and client pods through the real plugin, the server process and the probe in them."""
    from tests.cni_runner import lanner_conflist

    r = node.runner(lanner_conflist(node))
    srv, cli = node.pod("srv"), node.pod("cli")
    ip = r.add("cid-srv", srv, cni_args="K8S_POD_NAMESPACE=bench-srv;K8S_POD_NAME=server")["ips"][0]["address"][:-3]
    r.add("cid-cli", cli, cni_args="K8S_POD_NAMESPACE=bench-cli;K8S_POD_NAME=client")
    server = subprocess.Popen(["nsenter", f"--net={srv}", sys.executable, "-c", SERVER], stdin=subprocess.DEVNULL)
    stack.callback(_stop, server)
    probe = subprocess.Popen(["nsenter", f"--net={cli}", sys.executable, "-u", "-c", PROBE, ip],
                             stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    stack.callback(_stop, probe)
    p = Probe(probe)
    p.settled("ok", 0.0)
    return p


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    C.require_root()
    from tests.cni_runner import CniNode
    from tests.k8s_harness import control_plane
    from tests.netns_forward import forward_into_netns
    from tests.test_cni_agent import AgentNode

    load = C.LoadMonitor()
    with C.Cleanup(900) as stack, control_plane() as cp:
        for ns in ("bench-srv", "bench-cli"):
            cp.kubectl("create", "namespace", ns)
        work = stack.tempdir("lanner-bench-k8snp-")
        an = AgentNode(CniNode(f"lbn{os.getpid() % 10000}", work), f"/sys/fs/bpf/lanner-bench-k8snp-{os.getpid()}")
        stack.callback(subprocess.run, ["rm", "-rf", an.pin])
        stack.callback(an.node.close)
        an.node.setup()
        port = stack.enter_context(forward_into_netns(f"/var/run/netns/{an.node.netns}", cp.port))
        kubeconfig = cp.kubeconfig_via(port, work / "agent.kubeconfig")
        agent = an.start("--enable-k8s-api", "--k8s-kubeconfig-path", str(kubeconfig))
        stack.callback(agent.stop)
        probe = start_pods(stack, an.node)
        load.sample()
        result = {"propagation_s": rounds(cp, probe, args.rounds)}
        load.sample()
        result["agent_k8s_status"] = agent.status()["k8s"]["network_policies"]
        result["machine"] = C.machine()
        result["load"] = load.report()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
