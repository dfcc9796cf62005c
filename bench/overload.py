"""Overload stays safe: a fork+exec storm, then a ring-buffer flood above capacity, against a real agent.

Phases, each ``--storm-s`` / ``--flood-s`` seconds (60 by default), one agent for both:
  * storm -- ``--workers`` shell loops (default 2 per CPU), each fork+exec'ing a private copy of
    /bin/true (``storm-true``, so its events are told apart from the machine's) as fast as it can;
  * flood -- bench/bpf/flood.bpf.o (as in event_rate.py) writes synthetic exec+exit pairs into the
    agent's ring for every getppid() of this process, called as fast as Python can: far above what
    the agent consumes, so the ring stays full and records are lost. Synthetic pids have 10 digits
    (from 1,000,000,000: room for 3.29e9 pairs, refused ones included, before the u32 wraps; a real pid
    has at most 7), which tells their lines apart.

Throughout, a watcher polls the agent's ``/healthz`` every 0.1 s (HTTP status, event-loop age), its
status over gRPC every 0.5 s (2 s deadline; answered or not, latency) and its VmRSS every 0.5 s. The
export file is followed and counted by this process (lines, storm lines, flood lines; what was read is
punched out of the file, so the flood's gigabytes take no disk), and
``--grpc-clients`` GetEvents clients (tools/tetragon's Go client on Tetragon's stubs) follow the stream.

Accounting per phase (after the agent has emptied the ring):
  * storm: offered = 2 x the workers' execs (exec + exit each); exported = storm lines; what is
    missing must be within the agent's loss counter's growth;
  * flood: offered = getppid() calls seen by the program x records per call; the program's own
    counter gives what the ring accepted; exported flood lines must equal it exactly, and the agent's
    loss counter must have grown by at least offered - accepted (more only if the machine's other
    processes lost records meanwhile: reported as ``foreign_lost``).

Usage: .venv/bin/python bench/overload.py [--storm-s 60] [--flood-s 60] [--workers N]
       [--cache-size N] [--grpc-clients 1] [--rules] [--json FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

FLOOD_PID_BASE = 1_000_000_000  # 10 digits until 3.29e9 more pairs (the counter also counts refused ones)
FLOOD_PID = re.compile(rb'"pid":\d{10}[,}]')
STORM_MARK = b'/storm-true"'
_LIBC = ctypes.CDLL(None, use_errno=True)
GO_CLIENT = C.ROOT / "build" / "tetragon" / "bin" / "tetragon-client"
STORM_SH = """#!/bin/bash
# $1: seconds, $2: file for the number of fork+execs done
bin="${0%/*}/storm-true"; end=$((SECONDS + $1)); n=0
while [ "$SECONDS" -lt "$end" ]; do "$bin"; n=$((n + 1)); done
echo "$n" > "$2"
"""


# ------------------------------------------------------------------------------------------ export counter
class ExportCounter:
    """Follows the agent's export file in a thread: counts lines, storm lines and flood lines, and punches
    out what it has read (the file's logical size grows by gigabytes under the flood; its blocks do not)."""

    def __init__(self, path: Path) -> None:
        path.touch()
        self.path = path
        self.fd = os.open(path, os.O_RDWR)
        self.offset = 0
        self.lines = self.storm = self.flood = 0
        self.last_growth = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="export-counter", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            while True:
                data = os.pread(self.fd, 4 << 20, self.offset)
                cut = data.rfind(b"\n") + 1
                if not cut:
                    break
                done = data[:cut]
                with self._lock:
                    self.lines += done.count(b"\n")
                    self.storm += done.count(STORM_MARK)
                    self.flood += len(FLOOD_PID.findall(done))
                    self.last_growth = time.monotonic()
                self.offset += cut
                _punch(self.fd, self.offset)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"lines": self.lines, "storm": self.storm, "flood": self.flood}

    def quiet_for(self) -> float:
        with self._lock:
            return time.monotonic() - self.last_growth

    def close(self) -> None:
        self._stop.set()
        self._t.join(timeout=5)
        os.close(self.fd)


def _punch(fd: int, upto: int) -> None:
    """Free the file's blocks before ``upto`` (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE); best effort."""
    end = upto & ~0xFFFFF  # whole MiB
    if end:
        _LIBC.fallocate(ctypes.c_int(fd), ctypes.c_int(3), ctypes.c_long(0), ctypes.c_long(end))


# ------------------------------------------------------------------------------------------ watcher
@dataclass
class Watched:
    healthz_polls: int = 0
    healthz_not_200: int = 0
    healthz_errors: int = 0
    max_loop_age_s: float = 0.0
    status_polls: int = 0
    status_errors: int = 0
    max_status_s: float = 0.0
    rss_kib: list[int] = field(default_factory=list)


class Watcher:
    """Polls /healthz (0.1 s), gRPC status (0.5 s, 2 s deadline) and VmRSS (0.5 s) in a thread."""

    def __init__(self, agent: C.AgentProc) -> None:
        self.agent = agent
        self.w = Watched()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="watcher", daemon=True)
        self._t.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(0.1):
            self._healthz()
            n += 1
            if n % 5 == 0:
                self._status_and_rss()

    def _healthz(self) -> None:
        try:
            code, body = self.agent.healthz()
        except OSError:
            with self._lock:
                self.w.healthz_errors += 1
            return
        with self._lock:
            self.w.healthz_polls += 1
            self.w.healthz_not_200 += code != 200
            self.w.max_loop_age_s = max(self.w.max_loop_age_s, float(body.get("event_loop_age_s", 0.0)))

    def _status_and_rss(self) -> None:
        t0 = time.monotonic()
        ok = True
        try:
            self.agent.status(timeout=2.0)
        except Exception:  # noqa: BLE001 - any failure to answer counts
            ok = False
        dt = time.monotonic() - t0
        try:
            rss = self.agent.memory()["VmRSS"]
        except OSError:
            rss = None
        with self._lock:
            self.w.status_polls += 1
            self.w.status_errors += not ok
            self.w.max_status_s = max(self.w.max_status_s, dt)
            if rss is not None:
                self.w.rss_kib.append(rss)

    def take(self) -> Watched:
        with self._lock:
            out, self.w = self.w, Watched()
        return out

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=10)


# ------------------------------------------------------------------------------------------ phases
def lost_total(agent: C.AgentProc) -> int:
    return int(agent.status(timeout=10.0)["ringbuf"]["lost_total"])


def settle(agent: C.AgentProc, ring: C.RingWatch, export: ExportCounter, timeout: float = 30.0) -> None:
    """Wait until the agent has consumed the ring and the export has been quiet for 0.5 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prod, cons = ring.positions()
        if prod == cons and export.quiet_for() > 0.5:
            return
        time.sleep(0.1)
    raise RuntimeError("the agent did not catch up within 30 s after the phase")


def run_storm(stack: C.Cleanup, work: Path, seconds: float, workers: int) -> dict:
    """``workers`` shell loops fork+exec'ing storm-true for ``seconds``; returns their exec counts."""
    script = work / "storm.sh"
    script.write_text(STORM_SH)
    shutil.copy("/bin/true", work / "storm-true")
    procs = []
    for i in range(workers):
        out = work / f"storm-{i}.count"
        p = subprocess.Popen(C.guarded(["/bin/bash", str(script), str(int(seconds)), str(out)]), cwd=str(work),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(lambda p=p: p.poll() is None and (p.kill(), p.wait()))
        procs.append((p, out))
    t0 = time.monotonic()
    for p, _ in procs:
        p.wait(timeout=seconds + 60)
    wall = time.monotonic() - t0
    execs = sum(int(out.read_text().strip() or 0) for _, out in procs)
    return {"workers": workers, "wall_s": round(wall, 2), "execs": execs, "execs_per_s": round(execs / wall, 1),
            "offered": 2 * execs}


def run_flood(flood: C.Flood, seconds: float, batch: int) -> dict:
    """getppid() as fast as possible; offered from the program's own count of calls."""
    calls0, sub0 = flood.stats_map.sum_percpu(2), flood.submitted()
    flood.set(batch, exits=True)
    per_call = flood.per_call
    r = C.pace(0, seconds, per_call)
    flood.set(0, exits=True)
    calls = flood.stats_map.sum_percpu(2) - calls0
    offered = calls * per_call
    accepted = flood.submitted() - sub0
    return {"wall_s": round(r["wall_s"], 2), "offered": offered, "offered_per_s": round(offered / r["wall_s"], 1),
            "accepted": accepted}


# ------------------------------------------------------------------------------------------ one run
@dataclass
class Rig:
    """The agent under test and what watches it."""

    agent: C.AgentProc
    ring: C.RingWatch
    export: ExportCounter
    watcher: Watcher


def measure(rig: Rig, name: str, run) -> dict:
    """Run one phase; then wait for the agent to catch up and gather what it exported and lost."""
    st0 = rig.agent.status(timeout=10.0)
    exp0 = rig.export.snapshot()
    rig.watcher.take()
    res = run()
    res["watched_during"] = asdict(rig.watcher.take())
    settle(rig.agent, rig.ring, rig.export)
    st1 = rig.agent.status(timeout=10.0)
    exp1 = rig.export.snapshot()
    res["phase"] = name
    res["exported"] = {k: exp1[k] - exp0[k] for k in exp1}
    res["lost"] = st1["ringbuf"]["lost_total"] - st0["ringbuf"]["lost_total"]
    res["exit_misses"] = st1["misses"]["exit"] - st0["misses"]["exit"]
    res["api_dropped"] = st1["api"].get("dropped", 0) - st0["api"].get("dropped", 0)
    res["alive"] = rig.agent.proc.poll() is None
    return account(res)


def account(res: dict) -> dict:
    """Does offered = exported + lost hold, with every missing record in the agent's loss counter?"""
    if res["phase"] == "storm":
        exported = res["exported"]["storm"]
        missing = res["offered"] - exported
        res["accounting_ok"] = 0 <= missing <= res["lost"]
        res["missing"] = missing
    else:
        exported = res["exported"]["flood"]
        rejected = res["offered"] - res["accepted"]
        res["accounting_ok"] = exported == res["accepted"] and res["lost"] >= rejected
        res["rejected"] = rejected
        res["foreign_lost"] = res["lost"] - rejected
    return res


def start_clients(stack: C.Cleanup, work: Path, agent: C.AgentProc, n: int) -> list[Path]:
    if n and not GO_CLIENT.exists():
        print(f"  ({GO_CLIENT} missing: no gRPC clients; make tetragon-client)")
        return []
    outs = []
    for i in range(n):
        out = work / f"client-{i}.count"
        p = subprocess.Popen(C.guarded([str(GO_CLIENT), "--server-address", agent.address, "--timeout", "1h",
                                        "getevents", "--count-file", str(out)]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(lambda p=p: p.poll() is None and (p.terminate(), p.wait(10)))
        outs.append(out)
    deadline = time.monotonic() + 20
    while agent.status()["api"].get("clients", 0) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} gRPC clients did not connect")
        time.sleep(0.05)
    return outs


def run_all(stack: C.Cleanup, args: argparse.Namespace) -> dict:
    work = stack.tempdir("lanner-overload-")
    pin = stack.pin_dir("overload")
    export = ExportCounter(work / "overload-events.log")
    stack.callback(export.close)
    extra = ["--skip-probe", "--process-cache-size", str(args.cache_size)]
    if not args.rules:
        extra += ["--tracing-policy-dir", ""]
    agent = C.start_agent(stack, work, *extra, pin_dir=pin, name="overload")
    ready = agent.wait_ready()
    ring = C.RingWatch(pin / "process_events", ready["ringbuf"]["size_bytes"])
    stack.callback(ring.close)
    clients = start_clients(stack, work, agent, args.grpc_clients)
    watcher = Watcher(agent)
    stack.callback(watcher.stop)
    rig = Rig(agent, ring, export, watcher)
    out = {"machine": C.machine(), "rss_ready_kib": agent.memory()["VmRSS"], "phases": []}
    print(f"agent ready, VmRSS {out['rss_ready_kib'] / 1024:.1f} MiB; {args.grpc_clients} gRPC client(s)", flush=True)
    out["phases"].append(measure(rig, "storm", lambda: run_storm(stack, work, args.storm_s, args.workers)))
    report(out["phases"][-1])
    flood = C.Flood(pin_dir=pin, pid_base=FLOOD_PID_BASE)
    stack.callback(flood.close)
    out["phases"].append(measure(rig, "flood", lambda: run_flood(flood, args.flood_s, args.batch)))
    report(out["phases"][-1])
    out["rss_end_kib"] = agent.memory()["VmRSS"]
    out["clients_received"] = [int(p.read_text() or 0) for p in clients]
    out["alive"] = agent.proc.poll() is None
    return out


def report(ph: dict) -> None:
    w = ph["watched_during"]
    rss = w["rss_kib"] or [0]
    if ph["phase"] == "storm":
        head = (f"storm: {ph['workers']} workers, {ph['execs']:,} fork+execs in {ph['wall_s']} s "
                f"({ph['execs_per_s']:,.0f}/s); offered {ph['offered']:,} events, exported {ph['exported']['storm']:,}, "
                f"missing {ph['missing']:,}, agent's loss counter +{ph['lost']:,}")
    else:
        head = (f"flood: offered {ph['offered']:,} records in {ph['wall_s']} s ({ph['offered_per_s'] / 1000:,.0f}k/s); "
                f"ring accepted {ph['accepted']:,}, exported {ph['exported']['flood']:,}, rejected {ph['rejected']:,}, "
                f"agent's loss counter +{ph['lost']:,} (foreign {ph['foreign_lost']:,})")
    print(head)
    print(f"  accounting {'exact' if ph['accounting_ok'] else 'BROKEN'}; exit misses +{ph['exit_misses']:,}; "
          f"gRPC queue drops +{ph['api_dropped']:,}; agent {'alive' if ph['alive'] else 'DEAD'}")
    print(f"  /healthz: {w['healthz_polls']} answers, {w['healthz_not_200']} not 200, {w['healthz_errors']} failed; "
          f"longest event-loop age {w['max_loop_age_s']:.2f} s")
    print(f"  status over gRPC: {w['status_polls']} asked, {w['status_errors']} unanswered, slowest {w['max_status_s']:.2f} s; "
          f"VmRSS {min(rss) / 1024:.1f}-{max(rss) / 1024:.1f} MiB", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storm-s", type=float, default=60.0)
    ap.add_argument("--flood-s", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1), help="storm shell loops")
    ap.add_argument("--batch", type=int, default=32, help="flood exec+exit pairs per getppid()")
    ap.add_argument("--cache-size", type=int, default=65536, help="the agent's --process-cache-size")
    ap.add_argument("--grpc-clients", type=int, default=1, help="GetEvents clients following the stream")
    ap.add_argument("--rules", action="store_true", help="load the built-in rule library (off: its policy "
                    "events would mix with the storm's)")
    ap.add_argument("--json", type=Path, help="write the results there")
    args = ap.parse_args()
    C.require_root()
    print("overload:", C.machine(), flush=True)
    load = C.LoadMonitor()
    with C.Cleanup(budget_s=args.storm_s + args.flood_s + 240) as stack:
        out = run_all(stack, args)
    out["background"] = load.report()
    rss = [r for ph in out["phases"] for r in ph["watched_during"]["rss_kib"]]
    print(f"VmRSS: {out['rss_ready_kib'] / 1024:.1f} MiB ready, at most {max(rss or [0]) / 1024:.1f} MiB during the "
          f"phases, {out['rss_end_kib'] / 1024:.1f} MiB at the end; gRPC clients received {out['clients_received']}")
    print(out["background"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    ok = out["alive"] and all(ph["accounting_ok"] for ph in out["phases"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
