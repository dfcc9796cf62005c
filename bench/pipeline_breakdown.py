"""Where the agent's time per event goes: each pipeline stage timed alone, in one process.

Synthetic exec+exit pairs from bench/bpf/flood.bpf.o (the process sensor's exact record layouts) are
written into a private ring buffer, then pushed through the agent's own code one stage at a time:

  read    lanner.bpf.ringbuf.RingBuffer.read_batch (copy records out of the ring)
  decode  the process sensor's ProcessDecoder (bytes -> typed records)
  handle  ProcessEvents.handle: process cache (insert / resolve / exit) and JSON encoding
  emit    Agent.emit: the export pipeline and its file sink (write + flush); no gRPC subscriber

Times are CPU time of this process (``time.process_time``), so other load on the machine barely
moves them. ``handle`` is also timed with Python's cyclic garbage collector disabled, to show what
the collector costs once the cache holds many objects. The sum gives the single-core ceiling of the
agent's pipeline (the agent is one Python thread).

``--pods`` attaches a synthetic pod resolver (bench/event_rate.py's FloodPods: every flood process in one pod
with a container) to every agent's encoder, as --enable-k8s-api does; the C path is then timed twice: pods
rendered in C from the encoder's pod parts (what the agent does), and pods rendered by the Python encoder,
called from C once per process ("C, pods by Python": the alternative, for comparison).

Usage: .venv/bin/python bench/pipeline_breakdown.py [--pairs 30000] [--rounds 3] [--pods] [--cred-ns]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def make_records(n_pairs: int) -> list[bytes]:
    from lanner.bpf.ringbuf import RingBuffer

    flood = C.Flood(rb_size=1 << 27)
    try:
        flood.set(100, True)
        for _ in range(-(-n_pairs // 100)):
            os.getppid()
        ring = RingBuffer(flood.obj.map("events"))
        raws: list[bytes] = []
        try:
            while True:
                b = ring.read_batch(4096)
                if not b:
                    break
                raws += b
        finally:
            ring.close()
        if flood.lost():
            raise RuntimeError(f"{flood.lost()} records lost while generating")
        return raws
    finally:
        flood.close()


def new_agent(work: Path, tag: str, pods: bool = False, cred_ns: bool = False):
    from lanner.agent import Agent, AgentConfig

    a = Agent(AgentConfig(node_name="bench", export_stdout=False, export_file=str(work / f"{tag}.log"),
                          export_file_max_mb=1e6, grpc=None, process_cred=cred_ns, process_ns=cred_ns))
    a._open_sinks()
    if pods:
        from event_rate import FloodPods

        a.encoder.attach_pod_resolver(FloodPods())
    # seed the cache from /proc as the agent does at start (the flood's parent is this process);
    # the kernel map seeding is skipped: there is no sensor here
    a.sensor = types.SimpleNamespace(seed=lambda entries: sum(1 for _ in entries), identities=lambda: {})
    a._seed_from_procfs()
    a.sensor = None
    return a


def handler(a):
    """The process sensor's records -> events step (sensors.process_events), on the agent's cache and encoders."""
    from lanner.sensors.process_events import ProcessEvents, ProcessEventsContext

    ev = ProcessEvents(ProcessEventsContext(a.cfg.node_name, a.cache, a.encoder, a.proto, a.counters))
    return lambda recs: ev.handle(recs, False)


def fast_handler(a, module, decoder, pods_in_python: bool = False):
    """The process sensor's C fast path (sensors/fastproc.py) on the agent's cache and encoders."""
    from lanner.sensors.fastproc import FastPath
    from lanner.sensors.process_events import ProcessEvents, ProcessEventsContext

    ev = ProcessEvents(ProcessEventsContext(a.cfg.node_name, a.cache, a.encoder, a.proto, a.counters))
    fp = FastPath(module, decoder, ev, pods_in_python)
    assert fp.usable(False)
    return fp.handle


def timed(fn, *args):
    t0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=30_000, help="exec+exit pairs per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=115.0)
    ap.add_argument("--pods", action="store_true", help="a synthetic pod resolver places the flood in a pod")
    ap.add_argument("--cred-ns", action="store_true", help="as --enable-process-cred --enable-process-ns")
    args = ap.parse_args()
    C.require_root()
    from lanner.bpf.btf import Btf
    from lanner.bpf.ringbuf import RingBuffer
    from lanner.sensors.process import PROCESS_OBJECT, ProcessDecoder

    print(f"pipeline_breakdown: machine {C.machine()}; {args.pairs} exec+exit pairs per round, "
          f"{args.rounds} rounds, CPU time per event (median); pod resolver: "
          f"{'FloodPods (every flood process in one pod)' if args.pods else 'none'}"
          f"{'; --enable-process-cred --enable-process-ns' if args.cred_ns else ''}")
    load = C.LoadMonitor()
    stages: dict[str, list[float]] = {k: [] for k in ("read", "decode", "handle", "handle (gc off)", "emit",
                                                      "decode+handle (C)", "emit (C path)",
                                                      "decode+handle (C, pods by Python)")}
    from lanner.sensors.fastproc import load_module
    fast_module, fast_why = load_module()
    sizes = {}
    with C.Cleanup(args.budget_s) as stack:
        work = stack.tempdir("lanner-bench-pipeline-")

        class _Obj:
            btf = Btf.from_elf(PROCESS_OBJECT)

        decoder = ProcessDecoder(_Obj())  # type: ignore[arg-type]
        for _ in range(args.rounds):
            # read: refill a ring and time only the copy-out
            flood = C.Flood(rb_size=1 << 27)
            stack.callback(flood.close)
            flood.set(100, True)
            for _ in range(-(-args.pairs // 100)):
                os.getppid()
            ring = RingBuffer(flood.obj.map("events"))
            raws: list[bytes] = []
            t0 = time.process_time()
            while True:
                b = ring.read_batch(4096)
                if not b:
                    break
                raws += b
            t_read = time.process_time() - t0
            ring.close()
            flood.close()
            n = len(raws)
            sizes = {"exec": len(raws[0]), "exit": len(raws[1])}

            recs, t_dec = timed(decoder.decode, raws)
            a = new_agent(work, "gc-on", args.pods, args.cred_ns)
            gc.collect()
            out, t_handle = timed(handler(a), recs)
            _, t_emit = timed(lambda: (a.emit(out), a.export.flush()))
            a.close()

            recs2 = decoder.decode(raws)
            b = new_agent(work, "gc-off", args.pods, args.cred_ns)
            gc.collect()
            gc.disable()
            try:
                _, t_handle_nogc = timed(handler(b), recs2)
            finally:
                gc.enable()
            b.close()
            for k, t in (("read", t_read), ("decode", t_dec), ("handle", t_handle), ("handle (gc off)", t_handle_nogc),
                         ("emit", t_emit)):
                stages[k].append(t / n * 1e6)
            if fast_module is not None:  # the C fast path: decode and handle in one call (sensors/fastproc.c)
                f = new_agent(work, "fast", args.pods, args.cred_ns)
                fast = fast_handler(f, fast_module, decoder)
                gc.collect()
                fout, t_fast = timed(lambda: [e for i in range(0, n, 4096) for e in fast(raws[i:i + 4096])])
                _, t_femit = timed(lambda: (f.emit(fout), f.export.flush()))
                if args.pods and b'"pod":{' not in fout[0].line:
                    raise RuntimeError(f"--pods: the first event names no pod: {fout[0].line[:200]!r}")
                f.close()
                stages["decode+handle (C)"].append(t_fast / n * 1e6)
                stages["emit (C path)"].append(t_femit / n * 1e6)
                if args.pods:
                    g = new_agent(work, "fast-pypods", True, args.cred_ns)
                    g.encoder.clock.offset_ns = f.encoder.clock.offset_ns  # the same times: comparable bytes
                    gfast = fast_handler(g, fast_module, decoder, pods_in_python=True)
                    gc.collect()
                    gout, t_g = timed(lambda: [e for i in range(0, n, 4096) for e in gfast(raws[i:i + 4096])])
                    if [e.line for e in gout] != [e.line for e in fout]:
                        raise RuntimeError("pods rendered by Python from C: other bytes than rendered in C")
                    g.close()
                    stages["decode+handle (C, pods by Python)"].append(t_g / n * 1e6)
            for f in work.glob("*.log"):
                f.unlink()
            del raws, recs, recs2, out

    med = {k: C.median(v) for k, v in stages.items()}
    total = med["read"] + med["decode"] + med["handle"] + med["emit"]
    total_nogc = total - med["handle"] + med["handle (gc off)"]
    print(f"\n  record sizes: exec {sizes['exec']} B, exit {sizes['exit']} B (ring payload)")
    print(f"  {'stage':16} {'us/event':>9} {'share':>7}")
    for k in ("read", "decode", "handle", "emit"):
        print(f"  {k:16} {med[k]:9.2f} {100 * med[k] / total:6.1f}%")
    print(f"  {'total':16} {total:9.2f}   -> one core drains at most {C.fmt_rate(1e6 / total)} events/s")
    print(f"  handle with gc disabled: {med['handle (gc off)']:.2f} us/event "
          f"(the collector costs {med['handle'] - med['handle (gc off)']:.2f} us/event here); "
          f"total {total_nogc:.2f} -> {C.fmt_rate(1e6 / total_nogc)} events/s")
    if fast_module is None:
        print(f"\n  C fast path: not measured ({fast_why})")
    else:
        c_total = med["read"] + med["decode+handle (C)"] + med["emit (C path)"]
        print(f"\n  the C fast path (same records, same rounds): read {med['read']:.2f}, decode+handle "
              f"{med['decode+handle (C)']:.2f}, emit {med['emit (C path)']:.2f}; total {c_total:.2f} us/event "
              f"-> one core drains at most {C.fmt_rate(1e6 / c_total)} events/s")
        if args.pods:
            alt = med["decode+handle (C, pods by Python)"]
            print(f"  pods rendered by the Python encoder (called from C once per process) instead: decode+handle "
                  f"{alt:.2f} us/event; total {c_total - med['decode+handle (C)'] + alt:.2f}")
    print("\n" + load.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
