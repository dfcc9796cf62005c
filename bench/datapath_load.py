"""The traffic of bench/datapath.py, run from bench-a to bench-b through the router.

* request/response: ``sockperf ping-pong`` UDP and TCP, 64-byte messages. sockperf reports latency as
  half the round trip ("one-way"); we keep its convention (the reference figures use it too). Client
  and server pinned to CPU 0.
* connections/s: bench/datapath_crr.py (a Python connect/request/response/close loop), client and
  server pinned to CPU 0.
* throughput: ``iperf3 -t T`` TCP, client and server pinned to CPU 1; the median of ``reps`` runs.

Pinning matters on this kind of VM: unpinned runs are bimodal (cross-vCPU wakeups are slow), see
``../shared/reference/cni-and-datapath.md`` §4. Every server is a child of this process, stopped by PID.
"""

from __future__ import annotations

import json
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from datapath_topo import Topology, TopologyError, run

CRR = Path(__file__).resolve().parent / "datapath_crr.py"
RR_CPU = 0
CRR_CPU = 0
BULK_CPU = 1
PORTS = {"sockperf_udp": 11111, "sockperf_tcp": 11112, "crr": 7000, "iperf3": 5201}


class LoadError(RuntimeError):
    pass


@dataclass
class RR:
    avg_us: float
    p99_us: float
    observations: int


@dataclass
class Result:
    """One configuration's figures, and the evidence that traffic really went through."""

    udp: RR
    tcp: RR
    conn_per_s: float
    connections: int
    conn_errors: int
    gbit_s: float
    iperf_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)

    def passed_traffic(self) -> bool:
        return (self.udp.observations > 0 and self.tcp.observations > 0 and self.connections > 0
                and self.iperf_bytes > 0)


@dataclass(frozen=True)
class Durations:
    rr_s: float  # each sockperf run
    crr_s: float  # the connect loop
    bulk_s: float  # each iperf3 run
    bulk_reps: int


FULL = Durations(rr_s=4.0, crr_s=3.0, bulk_s=4.0, bulk_reps=3)
QUICK = Durations(rr_s=1.0, crr_s=1.0, bulk_s=1.0, bulk_reps=1)


class Server:
    """A server process in a namespace, stopped by PID."""

    def __init__(self, topo: Topology, ns: str, cmd: list[str], cpu: int, port: int, proto: str) -> None:
        self.proc = subprocess.Popen(topo.exec_cmd(ns, cmd, cpu=cpu), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.what = " ".join(cmd[:2])
        try:
            wait_listening(topo, ns, port, proto, self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_listening(topo: Topology, ns: str, port: int, proto: str, proc: subprocess.Popen,
                   timeout: float = 10.0) -> None:
    flag = "-ltnH" if proto == "tcp" else "-lunH"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise LoadError(f"server exited ({proc.returncode}) before listening on {proto}/{port}: {err[-500:]}")
        out = run(["ip", "netns", "exec", ns, "ss", flag, "sport", "=", f":{port}"], check=False)
        if out.strip():
            return
        time.sleep(0.05)
    raise LoadError(f"nothing listening on {proto}/{port} in {ns} after {timeout} s")


_AVG = re.compile(r"avg-latency=([0-9.]+)")
_P99 = re.compile(r"percentile 99\.000 =\s*([0-9.]+)")
_OBS = re.compile(r"Total (\d+) observations")


def parse_sockperf(text: str) -> RR:
    clean = re.sub(r"\x1b\[[0-9;]*m", "", text)
    avg, p99, obs = _AVG.search(clean), _P99.search(clean), _OBS.search(clean)
    if not (avg and p99 and obs):
        raise LoadError("could not read sockperf's summary:\n" + clean[-1500:])
    return RR(float(avg.group(1)), float(p99.group(1)), int(obs.group(1)))


def sockperf_rr(topo: Topology, proto: str, seconds: float) -> RR:
    port = PORTS[f"sockperf_{proto}"]
    tcp = ["--tcp"] if proto == "tcp" else []
    server = ["sockperf", "sr", *tcp, "-i", topo.b.ip, "-p", str(port)]
    with Server(topo, topo.b.netns, server, RR_CPU, port, proto):
        client = ["sockperf", "pp", *tcp, "-i", topo.b.ip, "-p", str(port), "-t", f"{seconds:g}", "-m", "64"]
        r = subprocess.run(topo.exec_cmd(topo.a.netns, client, cpu=RR_CPU), capture_output=True, text=True,
                           timeout=seconds + 30)
        if r.returncode != 0:
            raise LoadError(f"sockperf {proto} client failed ({r.returncode}): {(r.stdout + r.stderr)[-1500:]}")
        return parse_sockperf(r.stdout + r.stderr)


def connect_rate(topo: Topology, seconds: float) -> dict:
    port = PORTS["crr"]
    server = [sys.executable, str(CRR), "serve", "--bind", topo.b.ip, "--port", str(port)]
    with Server(topo, topo.b.netns, server, CRR_CPU, port, "tcp"):
        client = [sys.executable, str(CRR), "connect", "--to", topo.b.ip, "--port", str(port),
                  "--seconds", f"{seconds:g}"]
        r = subprocess.run(topo.exec_cmd(topo.a.netns, client, cpu=CRR_CPU), capture_output=True, text=True,
                           timeout=seconds + 30)
        if r.returncode != 0:
            raise LoadError(f"connect loop failed ({r.returncode}): {r.stderr[-1500:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def throughput(topo: Topology, seconds: float, reps: int) -> tuple[float, int]:
    """(median Gbit/s over reps, bytes received in all runs)."""
    port = PORTS["iperf3"]
    server = ["iperf3", "-s", "-B", topo.b.ip, "-p", str(port)]
    rates, total = [], 0
    with Server(topo, topo.b.netns, server, BULK_CPU, port, "tcp"):
        for _ in range(reps):
            client = ["iperf3", "-c", topo.b.ip, "-p", str(port), "-t", f"{seconds:g}", "-J"]
            r = subprocess.run(topo.exec_cmd(topo.a.netns, client, cpu=BULK_CPU), capture_output=True, text=True,
                               timeout=seconds + 30)
            try:
                rep = json.loads(r.stdout)
            except ValueError as e:
                raise LoadError(f"iperf3 printed no JSON ({r.returncode}): {r.stderr[-800:]}") from e
            if "error" in rep or r.returncode != 0:
                raise LoadError(f"iperf3 failed: {rep.get('error', r.stderr[-800:])}")
            recv = rep["end"]["sum_received"]
            rates.append(recv["bits_per_second"] / 1e9)
            total += int(recv["bytes"])
    return statistics.median(rates), total


def measure(topo: Topology, d: Durations) -> Result:
    """All the figures of one configuration, in a fixed order (RR first: the most sensitive one runs
    on the freshest topology)."""
    udp = sockperf_rr(topo, "udp", d.rr_s)
    tcp = sockperf_rr(topo, "tcp", d.rr_s)
    crr = connect_rate(topo, d.crr_s)
    gbit, nbytes = throughput(topo, d.bulk_s, d.bulk_reps)
    return Result(udp=udp, tcp=tcp, conn_per_s=crr["per_s"], connections=crr["connections"],
                  conn_errors=crr["errors"], gbit_s=gbit, iperf_bytes=nbytes)


__all__ = ["Durations", "FULL", "QUICK", "RR", "Result", "LoadError", "TopologyError", "measure", "PORTS"]
