"""Events/s delivered to one and to four gRPC GetEvents clients with zero loss, against the file sink alone.

Same flood source as event_rate.py (bench/bpf/flood.bpf.o writes synthetic exec+exit record pairs
into the agent's ring buffer for each getppid() of this process). For each configuration the offered
rate steps up; a step counts as delivered with zero loss when the kernel lost nothing (the agent's
loss counter), no client dropped anything (the agent's per-client queue counter), every client
received every event and the file has every line.

Configurations, in the same run and the same agent build:
  * file   -- the JSON export file only (the baseline);
  * grpc1  -- the file plus one GetEvents client on the main API socket (``--server-address``, unix: its
    GetEvents connections are framed by lanner, exporter/api/front.py);
  * grpc4  -- the file plus four GetEvents clients;
  * grpcio1, grpcio4 -- the same with ``--server-grpcio-events`` (grpcio's server streams GetEvents, one
    message per write: the state before the front);
  * framed1, framed4 -- the clients on ``--server-events-address`` (a second socket, every call framed).
Each client is a separate process, so its CPU is not the agent's; on this 2-core machine they still
compete with the agent for CPU. ``--client go`` (the default when built) is tools/tetragon's client on
Tetragon's own generated Go stubs (``make tetragon-client``), decoding every event and counting it;
``--client go-raw`` is the same client counting messages without decoding them (on a 2-core machine a
decoding client's own CPU, 6-8 µs per event, caps what it can take: the raw count shows what the server
delivers); ``--client python`` reads the stream with grpcio as raw messages (counting, not decoding). Each
step prints the agent's and the clients' CPU per event.

Usage: .venv/bin/python bench/grpc_rate.py [--steps 10,20,30,40,60,80] [--step-s 3] [--client go|go-raw|python]
       [--configs file,grpc1,grpc4,grpcio1]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

READER = r"""
import sys, time, grpc
addr, out = sys.argv[1], sys.argv[2]
ch = grpc.insecure_channel(addr)
call = ch.unary_stream("/tetragon.FineGuidanceSensors/GetEvents", request_serializer=None,
                       response_deserializer=None)(b"")
n, last = 0, 0.0
open(out, "w").write("0")
try:
    for _ in call:
        n += 1
        now = time.monotonic()
        if now - last > 0.1:
            open(out, "w").write(str(n)); last = now
except grpc.RpcError:
    pass
finally:
    open(out, "w").write(str(n))
"""


def read_count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


GO_CLIENT = C.ROOT / "build" / "tetragon" / "bin" / "tetragon-client"


def reader_cmd(kind: str, address: str, out: Path) -> list[str]:
    if kind.startswith("go"):
        raw = ["--raw"] if kind == "go-raw" else []
        return [str(GO_CLIENT), "--server-address", address, "--timeout", "1h", "getevents", "--count-file", str(out),
                *raw]
    return [C.PY, "-c", READER, address, str(out)]


def run_config(stack: C.Cleanup, work: Path, name: str, clients: int, steps: list[float], step_s: float,
               client: str) -> list[dict]:
    pin = stack.pin_dir(f"grpc-{name}")
    extra = ["--tracing-policy-dir", "", "--skip-probe"]
    if name.startswith("grpcio"):
        extra.append("--server-grpcio-events")
    if name.startswith("framed"):  # the clients read GetEvents framed by lanner (--server-events-address)
        extra += ["--server-events-address", f"unix://{work}/{name}-events.sock"]
    agent = C.start_agent(stack, work, *extra, pin_dir=pin, name=name)
    agent.wait_ready()
    address = f"unix://{work}/{name}-events.sock" if name.startswith("framed") else agent.address
    flood = C.Flood(pin_dir=pin)
    stack.callback(flood.close)
    readers = []
    for i in range(clients):
        out = work / f"{name}-reader{i}.count"
        p = subprocess.Popen(C.guarded(reader_cmd(client, address, out)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        stack.callback(lambda p=p: (p.poll() is None and p.send_signal(signal.SIGTERM), p.wait(10)))
        readers.append((p, out))
    deadline = time.monotonic() + 20
    while agent.status()["api"].get("clients", 0) < clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {clients} readers did not connect")
        time.sleep(0.05)
    lines = C.LineCounter(agent.export_file)
    results = []
    for rate in steps:
        flood.set(50, exits=True)
        st0 = agent.status()
        got0 = [read_count(o) for _, o in readers]
        lines0 = lines.poll()
        sub0 = flood.submitted()
        cpu0 = agent.cpu_s()
        ccpu0 = sum(C.cpu_s(p.pid) for p, _ in readers)
        r = C.pace(rate * 1000, step_s, flood.per_call)
        submitted = flood.submitted() - sub0
        deadline = time.monotonic() + 15
        while True:  # catch up: the file and every reader
            time.sleep(0.2)
            done_file = lines.poll() - lines0 >= submitted
            got = [read_count(o) - g for (_, o), g in zip(readers, got0)]
            if done_file and all(g >= submitted for g in got) or time.monotonic() > deadline:
                break
        st1 = agent.status()
        cpu1 = agent.cpu_s()
        ccpu1 = sum(C.cpu_s(p.pid) for p, _ in readers)
        lost = st1["ringbuf"]["lost_total"] - st0["ringbuf"]["lost_total"]
        dropped = st1["api"].get("dropped", 0) - st0["api"].get("dropped", 0)
        exported = lines.poll() - lines0
        res = {"config": name, "rate_k": rate, "offered_per_s": r["offered"] / r["wall_s"], "submitted": submitted,
               "lost": lost, "dropped": dropped, "exported": exported, "received": got,
               "agent_cpu_us_per_event": (cpu1 - cpu0) / max(submitted, 1) * 1e6,
               "client_cpu_us_per_event": (ccpu1 - ccpu0) / max(submitted * len(readers), 1) * 1e6}
        res["ok"] = lost == 0 and dropped == 0 and exported >= submitted and all(g >= submitted for g in got)
        results.append(res)
        print(f"  {name:7} {rate:>5.0f}k/s offered {res['offered_per_s'] / 1000:7.1f}k/s  lost {lost:>7}  "
              f"client drops {dropped:>7}  exported {exported:>8}/{submitted}  "
              f"received {','.join(str(g) for g in got) or '-':>20}  agent {res['agent_cpu_us_per_event']:5.1f} us/event  "
              f"client {res['client_cpu_us_per_event']:4.1f} us/event  "
              f"{'zero-loss' if res['ok'] else 'LOSS'}",
              flush=True)
        if not res["ok"]:
            break
        lines.truncate()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="5,10,20,30,40,50,60,75,90,100,120,150,200,250,300",
                    help="offered rates, thousands of events/s")
    ap.add_argument("--client", choices=("go", "go-raw", "python"), default="go" if GO_CLIENT.exists() else "python",
                    help="go: Tetragon's Go stubs, decoding every event (as tetra does); go-raw: the same client "
                    "counting messages undecoded (what the server delivers); python: grpcio, undecoded")
    ap.add_argument("--configs", default="file,grpc1,grpc4,grpcio1", help="which configurations to run "
                    "(file, grpc1, grpc4, grpcio1, grpcio4, framed1, framed4)")
    ap.add_argument("--step-s", type=float, default=3.0)
    args = ap.parse_args()
    C.require_root()
    steps = [float(x) for x in args.steps.split(",")]
    print("grpc_rate:", C.machine(), "client:", args.client)
    best = {}
    load = C.LoadMonitor()
    with C.Cleanup(budget_s=900) as stack:
        work = stack.tempdir("lanner-grpc-bench-")
        for name, clients in (("file", 0), ("grpc1", 1), ("grpc4", 4), ("grpcio1", 1), ("grpcio4", 4), ("framed1", 1),
                              ("framed4", 4)):
            if name not in args.configs.split(","):
                continue
            print(f"\n{name}: {clients} gRPC client(s)")
            res = run_config(stack, work, name, clients, steps, args.step_s, args.client)
            ok = [r["offered_per_s"] for r in res if r["ok"]]
            best[name] = max(ok) if ok else 0.0
    print("\nhighest zero-loss rate (events/s; the ladder's last passing step):")
    base = best.get("file") or float("nan")
    for name, v in best.items():
        print(f"  {name:7} {v / 1000:7.1f}k/s  ({v / base:.2f}x of the file sink alone)")
    print(load.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
