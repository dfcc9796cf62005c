"""The agent's time to ready and its memory, idle and with 10k cached processes.

Time to ready, over several starts (median):
  * spawn -> status: from ``Popen`` of ``python -m lanner agent`` to the first local-API status that
    reports ``ready_s`` (what a supervisor or a readiness probe sees: interpreter start, imports, load,
    attach, /proc seeding, socket);
  * ready_s: the agent's own figure (from its Agent object's creation to ready; imports excluded).
  Measured with the kernel probe (the default) and with --skip-probe.

Memory (VmRSS from /proc/PID/status, with its anon/file breakdown):
  * idle: after start, 2 s settled;
  * with 10k cached processes: the kernel-side flood source (bench/bpf/flood.bpf.o, exec-only mode)
    writes 10,000 synthetic exec records with distinct pids into the agent's ring buffer; none exits,
    so all stay in the process cache (checked through status process_cache.size).

Targets: ready <= 1.5 s, RSS <= 80 MB (80,000,000 bytes, 76.3 MiB) with 10k cached.

The idle agent's /proc/PID/smaps is summed by kind (BPF map mappings, malloc heap, other anonymous memory, shared
libraries) to say what the idle floor is made of.

Usage: .venv/bin/python bench/agent_footprint.py [--starts 5] [--cached 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

READY_TARGET_S = 1.5
RSS_TARGET_MB = 80.0  # decimal megabytes, as the target is written; figures are printed in MiB


def mib(kib: int) -> float:
    return kib / 1024


def measure_starts(stack: C.Cleanup, work: Path, n: int, extra: tuple[str, ...], label: str) -> dict:
    spawn_to_status, own = [], []
    for i in range(n):
        a = C.start_agent(stack, work, *extra, name=f"ready-{label}-{i}")
        st = a.wait_ready(poll_s=0.002)
        spawn_to_status.append(a.t_ready)
        own.append(st["ready_s"])
        rc = a.stop()
        if rc != 0:
            raise RuntimeError(f"agent exited with {rc}:\n{a.log_tail()}")
        time.sleep(0.2)
    return {"spawn_to_status": spawn_to_status, "ready_s": own}


def smaps_kinds(pid: int) -> dict[str, float]:
    """The process's resident memory in MiB by kind of mapping (/proc/PID/smaps)."""
    kinds: dict[str, float] = {}
    kind = ""
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            head = line.split(maxsplit=5)
            if "-" in head[0] and not head[0].endswith(":"):
                name = head[5].strip() if len(head) > 5 else ""
                kind = ("BPF maps (ring buffer)" if name.startswith("anon_inode:bpf") else
                        "malloc heap [heap]" if name == "[heap]" else
                        "anonymous (pymalloc arenas, mmap'd blocks, stacks)" if not name or name.startswith("[") else
                        "shared libraries" if ".so" in name else "other files")
            elif head[0] == "Rss:":
                kinds[kind] = kinds.get(kind, 0.0) + int(head[1]) / 1024
    return kinds


def wait_cache(agent: C.AgentProc, want: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = agent.status()
        if st["process_cache"]["size"] >= want:
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"process cache reached only {st['process_cache']['size']} of {want}")
        time.sleep(0.05)


def cached_bytes(n: int) -> dict[str, float]:
    """Bytes the heap grows by per cached process (tracemalloc, exact, no RSS noise), for the Python and the C
    path: n synthetic exec records from the flood source pushed through each path's own cache in this process
    (the flood's parent is this process, known to the cache from /proc)."""
    import gc
    import tracemalloc

    from lanner.bpf.btf import Btf
    from lanner.bpf.ringbuf import RingBuffer
    from lanner.sensors.fastproc import FastPath, load_module
    from lanner.sensors.process import PROCESS_OBJECT, ProcessDecoder
    from lanner.sensors.process_events import ProcessEvents, ProcessEventsContext
    from pipeline_breakdown import new_agent

    flood = C.Flood(rb_size=1 << 26)
    try:
        flood.set(100, exits=False)
        for _ in range(-(-n // 100)):
            os.getppid()
        ring = RingBuffer(flood.obj.map("events"))
        raws: list[bytes] = []
        while batch := ring.read_batch(4096):
            raws += batch
        ring.close()
    finally:
        flood.close()

    class _Obj:
        btf = Btf.from_elf(PROCESS_OBJECT)

    module, why = load_module()
    out: dict[str, float] = {}
    with C.Cleanup(60) as stack:
        work = stack.tempdir("lanner-bench-cached-")
        for label in ("python", "c") if module is not None else ("python",):
            a = new_agent(work, label)
            ev = ProcessEvents(ProcessEventsContext(a.cfg.node_name, a.cache, a.encoder, a.proto, a.counters))
            dec = ProcessDecoder(_Obj())  # type: ignore[arg-type]
            fast = FastPath(module, dec, ev) if label == "c" else None
            handle = fast.handle if fast else (lambda rs: ev.handle(dec.decode(rs), False))
            handle(raws[:10])  # the decoders' shared values exist before the count starts
            gc.collect()
            tracemalloc.start()
            before, n0 = tracemalloc.get_traced_memory()[0], len(a.cache)
            for i in range(10, len(raws), 4096):
                handle(raws[i:i + 4096])
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            out[label] = grown / max(len(a.cache) - n0, 1)
            a.close()
    if module is None:
        print(f"  (no C path: {why})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=5, help="agent starts per configuration")
    ap.add_argument("--cached", type=int, default=10_000, help="synthetic live processes to cache")
    ap.add_argument("--budget-s", type=float, default=115.0)
    args = ap.parse_args()
    C.require_root()
    print(f"agent_footprint: machine {C.machine()}")

    load = C.LoadMonitor()
    with C.Cleanup(args.budget_s) as stack:
        work = stack.tempdir("lanner-bench-footprint-")

        # ---- time to ready
        ready = {}
        for label, extra in (("default", ()), ("skip-probe", ("--skip-probe",))):
            ready[label] = measure_starts(stack, work, args.starts, extra, label)
        print(f"\ntime to ready over {args.starts} starts (median [min-max], seconds)")
        for label, r in ready.items():
            s, o = r["spawn_to_status"], r["ready_s"]
            print(f"  {label:11} spawn->status {C.median(s):.3f} [{min(s):.3f}-{max(s):.3f}]   "
                  f"agent ready_s {C.median(o):.3f} [{min(o):.3f}-{max(o):.3f}]   "
                  f"before Agent() (interpreter + imports + polling) {C.median(s) - C.median(o):.3f}")

        # ---- memory: idle, then with N live synthetic processes cached
        pin = stack.pin_dir("footprint")
        agent = C.start_agent(stack, work, pin_dir=pin, name="mem")
        st0 = agent.wait_ready()
        time.sleep(2.0)
        st0 = agent.status()
        idle = agent.memory()
        kinds = smaps_kinds(agent.pid)
        base = st0["process_cache"]["size"]

        flood = C.Flood(pin_dir=pin)
        stack.callback(flood.close)
        batch = 100
        flood.set(batch, exits=False)
        calls = -(-args.cached // batch)
        for _ in range(calls):
            os.getppid()
            time.sleep(0.001)  # ~100k records/s: well within the ring buffer
        flood.set(0)
        st1 = wait_cache(agent, base + calls * batch)
        time.sleep(2.0)  # a housekeeping round (cache gc) and a settled heap
        st1 = agent.status()
        full = agent.memory()
        rc = agent.stop()
        if rc != 0:
            print(f"warning: agent exited with {rc}:\n{agent.log_tail()}")

    lost = st1["ringbuf"]["lost_total"] - st0["ringbuf"]["lost_total"]
    added = st1["process_cache"]["size"] - base
    print(f"\nmemory (MiB)          {'VmRSS':>7} {'RssAnon':>8} {'RssFile':>8} {'VmHWM':>7}  cache size")
    for label, m, st in (("idle", idle, st0), (f"+{added} cached", full, st1)):
        print(f"  {label:19} {mib(m['VmRSS']):7.1f} {mib(m['RssAnon']):8.1f} {mib(m['RssFile']):8.1f}"
              f" {mib(m['VmHWM']):7.1f}  {st['process_cache']['size']}")
    print("  idle, by kind of mapping: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(kinds.items(),
                                                                                     key=lambda kv: -kv[1])))
    per = (full["VmRSS"] - idle["VmRSS"]) * 1024 / max(added, 1)
    print(f"  per cached process: {per:.0f} bytes of RSS; records lost while caching: {lost}")

    heap = cached_bytes(args.cached)
    print("  per cached process, heap (tracemalloc, in this process): "
          + ", ".join(f"{k} path {v:.0f} bytes" for k, v in heap.items()))

    med_ready = C.median(ready["default"]["spawn_to_status"])
    rss_full = mib(full["VmRSS"])
    met = full["VmRSS"] * 1024 <= RSS_TARGET_MB * 1e6
    print("\n" + load.report())
    print("\nsummary")
    print(f"  ready (spawn->status, default flags): {med_ready:.3f} s, target <= {READY_TARGET_S} s: "
          f"{'MET' if med_ready <= READY_TARGET_S else 'MISSED'}")
    print(f"  RSS with {added} cached: {rss_full:.1f} MiB ({full['VmRSS'] * 1024 / 1e6:.1f} MB), target <= "
          f"{RSS_TARGET_MB:.0f} MB: {'MET' if met else 'MISSED'} (idle {mib(idle['VmRSS']):.1f} MiB)")
    if added < args.cached:
        print(f"  warning: only {added} of {args.cached} synthetic processes were cached")
    return 0


if __name__ == "__main__":
    sys.exit(main())
