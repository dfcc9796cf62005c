"""The datapath benchmark (issue 6 item 8): what policy costs a packet, lanner's eBPF datapath vs
iptables-nft, and what a CNI ADD costs, lanner-cni vs Debian's bridge + host-local. One run, one table.

TOPOLOGY (../shared/reference/cni-and-datapath.md §4), rebuilt fresh for every configuration, all in
namespaces of this run (nothing in the root netns; their names start with lnb<PID>-):

    bench-a 10.99.1.2 <-veth-> [ra0  bench-r (router)  rb0] <-veth-> bench-b 10.99.2.2

CONFIGURATIONS (--configs, comma-separated; default: all of these)
  baseline       the router forwards, nothing filters. Every ratio is against it, measured in this run.
  lanner-N       lanner's datapath (netdp.datapath.Datapath) on ra0/rb0, the router-side veths playing
                 the pods' host-side veths: endpoint map, ipcache, per-endpoint policy, conntrack and flow
                 events on. bench-b is selected by a NetworkPolicy that allows bench-a on the benchmark's
                 ports plus N non-matching rules "from ipBlock 10.200.x.y/32, TCP port P" (the iptables
                 rule set as a NetworkPolicy: N ipcache and N policy entries; --lanner-shape);
                 lanner-0 attaches the datapath without policy (default-allow, conntrack + flows still on).
                 Runs in bench/datapath_lanner.py, a helper process inside bench-r; pins under
                 /sys/fs/bpf/lanner-bench-datapath-<PID>/.
  iptables-N     N non-matching rules "-s 10.200.x.y/32 -p tcp --dport P -j DROP" then "-j ACCEPT" in
                 bench-r's FORWARD chain (iptables-nft-restore -n): every packet walks all N rules.
  nftset-N       (optional) the same N (source, TCP port) pairs as one nft set with a concatenated key,
                 matched by one rule in bench-r's forward hook: O(1) in netfilter, the fair non-eBPF
                 comparison (the reference measured it equal to eBPF at 10k).
  N is a count: 0, 1000, 1k, 10k ...

MEASURES, per configuration, pinned as in the reference
  RR         sockperf ping-pong, 64 B, UDP and TCP: avg and p99 latency in µs. sockperf reports half
             the round trip ("one-way"); so do we. Client and server on CPU 0.
  conn/s     a Python connect/request(64 B)/response(64 B)/close loop (bench/datapath_crr.py), CPU 0.
  Gbit/s     iperf3 TCP, client and server on CPU 1; median of 3 runs (1 with --quick).
  Each configuration must prove it carried the traffic: iptables' ACCEPT counter, lanner's conntrack
  and flow counters, the router's forwarded packets (baseline). A configuration that did not is an error.

CNI ADD LATENCY (--cni-cycles N, 0 to skip): N ADD+DEL cycles of each plugin exec'd directly with CNI_*
  env vars and the config on stdin, from a dedicated "host" netns into a pod netns (bench/datapath_cni.py);
  p50/p95 of ADD, pooled over passes (each pass runs both plugins, in alternating order). lanner-cni talks
  to a `lanner agent --enable-netdp` started fresh in that host netns each pass.

TARGETS (issue 6), marked met/missed: at 10k rules the lanner RR (UDP and TCP avg) <= 1.1x and conn/s
  >= 0.9x the no-policy baseline; lanner-cni ADD p50 <= 1.5x the bridge plugin's.

REPETITIONS: --passes 2 runs the configurations in order, then in reverse order (drift cancels); the
  table shows the median over passes, --json keeps every pass. --bracket measures the baseline around
  every configuration (B c1 B c2 ... B) and takes each ratio against its two neighbours: on a shared
  machine whose load drifts, use it for the targets.

EXAMPLES
  sudo .venv/bin/python bench/datapath.py                      # the full run (~6 min)
  sudo .venv/bin/python bench/datapath.py --passes 2           # A/B order, as the reference
  sudo .venv/bin/python bench/datapath.py --quick              # smoke run: 1 s per measure, 5 CNI cycles
  sudo .venv/bin/python bench/datapath.py --quick --configs baseline,lanner-1k,iptables-1k --cni-cycles 0

The machine may be shared: the run ends with a "background:" line (CPU used by processes this benchmark
did not start); figures from a busy machine are perturbed. Ctrl-C or a failure removes every
namespace, process and pin this run created.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import datapath_cni as CNI  # noqa: E402
import datapath_configs as CF  # noqa: E402
import datapath_load as LD  # noqa: E402
import datapath_topo as T  # noqa: E402

DEFAULT_CONFIGS = "baseline,lanner-0,lanner-1k,lanner-10k,iptables-1k,iptables-10k"
RR_TARGET = 1.10
CONN_TARGET = 0.90
CNI_TARGET = 1.50
TARGET_RULES = 10_000


@dataclass
class Outcome:
    """One configuration in one pass."""

    config: str
    kind: str
    rules: int
    passno: int
    install_s: float = 0.0
    result: LD.Result | None = None
    evidence: dict = field(default_factory=dict)
    error: str = ""
    background_cores: float = float("nan")  # CPU used by processes this benchmark did not start, meanwhile
    local_base: dict[str, float] = field(default_factory=dict)  # --bracket: mean of the baselines around it

    @property
    def ok(self) -> bool:
        return (not self.error and self.result is not None and self.result.passed_traffic()
                and bool(self.evidence.get("ok")))


def run_config(cfg: CF.Config, passno: int, durations: LD.Durations, debug: bool = False) -> Outcome:
    """One configuration on a fresh topology: install, measure, collect the evidence, remove."""
    out = Outcome(cfg.name, cfg.kind, cfg.rules, passno)
    topo = T.Topology()
    bg = Background()
    try:
        topo.create()
        out.install_s = cfg.install(topo)
        out.result = LD.measure(topo, durations)
        out.evidence = cfg.evidence(topo)
        if not out.evidence.get("ok"):
            out.error = f"no proof the traffic went through {cfg.name}: {json.dumps(out.evidence)}"
    except (KeyboardInterrupt, TimeoutError):
        raise
    except Exception as e:  # one broken configuration must not hide the others
        out.error = f"{type(e).__name__}: {e}"
        if debug:
            traceback.print_exc()
    finally:
        cfg.remove()
        topo.destroy()
        out.background_cores = bg.cores()
    return out


class BpfStats:
    """Kernel BPF run-time statistics on while the block runs: a BPF_ENABLE_STATS fd, closed after (the
    kernel.bpf_stats_enabled sysctl is not written). The statistics cost every BPF program on the machine
    two clock reads per run, so they are on only when asked for, and only around lanner configurations."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.fd = -1

    def __enter__(self) -> "BpfStats":
        if self.on:
            import ctypes

            from lanner.bpf import libbpf as L

            self.fd = L.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
            if self.fd < 0:
                raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            import os

            os.close(self.fd)
            self.fd = -1


class Background:
    """CPU used by other processes (cores, averaged) since creation: busy CPU time of the machine minus
    this process's and its waited-for children's (the same arithmetic as _common.LoadMonitor)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = C.LoadMonitor._busy()
        self.own0 = C.LoadMonitor._own()

    def cores(self) -> float:
        wall = time.monotonic() - self.t0
        foreign = (C.LoadMonitor._busy() - self.busy0) - (C.LoadMonitor._own() - self.own0)
        return max(foreign, 0.0) / wall if wall > 0 else float("nan")


# ------------------------------------------------------------------------------------------ CNI
@dataclass
class CniOutcome:
    bridge: CNI.AddLatency
    lanner: CNI.AddLatency


def run_cni(cycles: int, warmup: int, workdir: Path, pin_root: Path, passno: int) -> CniOutcome:
    """One pass of the CNI part: bridge then lanner-cni (reversed on odd passes, so drift cancels), in fresh
    host and pod namespaces; the agent starts fresh too, with its own state and pin directories."""
    import datapath_cni_agent as CA

    ns = CNI.CniNamespaces(T.Topology().tag)
    try:
        ns.create()

        def bridge() -> CNI.AddLatency:
            return ns.run_cycles(str(CNI.BRIDGE_DIR / "bridge"), CNI.bridge_conf(workdir, ns.tag), cycles, warmup,
                                 workdir)

        def lanner() -> CNI.AddLatency:
            try:
                with CA.NetdpAgent(ns, workdir / f"agent{passno}", pin_root / "cni-agent") as agent:
                    lat = ns.run_cycles(CNI.lanner_plugin(workdir), CNI.lanner_conf(agent.cni_socket), cycles, warmup,
                                        workdir)
                    if lat.error:
                        lat.error += f" | agent log: {agent.log_tail(400)}"
                    return lat
            except (KeyboardInterrupt, TimeoutError):
                raise
            except Exception as e:
                return CNI.AddLatency(plugin="lanner-cni", error=f"{type(e).__name__}: {e}")

        if passno % 2:
            ln = lanner()
            br = bridge()
        else:
            br = bridge()
            ln = lanner()
    finally:
        ns.destroy()
    return CniOutcome(br, ln)


def merge_cni(runs: list[CniOutcome]) -> CniOutcome | None:
    """Every pass's cycles pooled per plugin (first ADD: the median of the passes' first ADDs)."""
    if not runs:
        return None

    def pool(lats: list[CNI.AddLatency]) -> CNI.AddLatency:
        out = CNI.AddLatency(plugin=lats[0].plugin)
        for lat in lats:
            out.add_s += lat.add_s
            out.del_s += lat.del_s
            out.version_s += lat.version_s
            out.ips += lat.ips
            out.error = out.error or lat.error
        out.first_add_s = med([lat.first_add_s for lat in lats])
        return out

    return CniOutcome(pool([r.bridge for r in runs]), pool([r.lanner for r in runs]))


# ------------------------------------------------------------------------------------------ report
def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def fig(outcomes: list[Outcome], get) -> float:
    return med([get(o.result) for o in outcomes if o.result is not None])


def cell(v: float, r: float | None, fmt: str) -> str:
    if v != v:
        return "-"
    return f"{v:{fmt}}" + (f" ({r:.2f}x)" if r is not None and r == r else "")


def ratio(outs: list[Outcome], head: str, get, base: dict[str, float]) -> float:
    """A configuration's figure relative to the baseline: with --bracket, the median over passes of each
    measurement divided by the mean of the two baselines measured just before and after it; otherwise
    the median over passes divided by the baselines' median."""
    outs = [o for o in outs if o.result is not None]
    if outs and all(head in o.local_base for o in outs):
        return med([get(o.result) / o.local_base[head] for o in outs if o.local_base[head]])
    b = base.get(head, float("nan"))
    return fig(outs, get) / b if b and b == b else float("nan")


def bracket(seq: list[Outcome]) -> None:
    """Give every configuration of one bracketed pass (B c1 B c2 ... B) the mean of its two baselines."""
    for i, o in enumerate(seq):
        if o.kind == "baseline":
            continue
        around = [b for b in (seq[i - 1] if i else None, seq[i + 1] if i + 1 < len(seq) else None)
                  if b is not None and b.kind == "baseline" and b.ok]
        if around:
            o.local_base = {h: statistics.fmean(g(b.result) for b in around) for h, g, _ in FIGURES}


FIGURES = [
    ("UDP RR avg µs", lambda r: r.udp.avg_us, ".2f"),
    ("UDP p99", lambda r: r.udp.p99_us, ".1f"),
    ("TCP RR avg µs", lambda r: r.tcp.avg_us, ".2f"),
    ("TCP p99", lambda r: r.tcp.p99_us, ".1f"),
    ("conn/s", lambda r: r.conn_per_s, ".0f"),
    ("Gbit/s", lambda r: r.gbit_s, ".2f"),
]


def table(names: list[str], by_name: dict[str, list[Outcome]]) -> tuple[str, dict[str, float]]:
    base = {h: fig(by_name.get("baseline", []), g) for h, g, _ in FIGURES}
    head = ["config", "install s"] + [h for h, _, _ in FIGURES] + ["bg cores", "traffic"]
    rows = [head]
    for n in names:
        outs = by_name.get(n, [])
        errs = [o.error for o in outs if o.error]
        row = [n, f"{med([o.install_s for o in outs]):.2f}"]
        row += [cell(fig(outs, g), ratio(outs, h, g, base) if n != "baseline" else None, f) for h, g, f in FIGURES]
        row.append(f"{med([o.background_cores for o in outs]):.2f}")
        row.append("ok" if outs and all(o.ok for o in outs) else "FAILED")
        rows.append(row)
        for e in errs:
            rows.append([f"  ! {n}: {e[:300]}"])
    widths = [max(len(r[i]) for r in rows if len(r) > 1) for i in range(len(head))]
    lines = []
    for r in rows:
        if len(r) == 1:
            lines.append(r[0])
            continue
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if r is head:
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines), base


def per_pass(names: list[str], by_name: dict[str, list[Outcome]]) -> str:
    """Each pass's figures side by side ("A / B"), as the reference reports them."""
    cols = [("UDP RR avg µs", lambda r: r.udp.avg_us, ".2f"), ("TCP RR avg µs", lambda r: r.tcp.avg_us, ".2f"),
            ("UDP p99", lambda r: r.udp.p99_us, ".1f"), ("conn/s", lambda r: r.conn_per_s, ".0f"),
            ("Gbit/s", lambda r: r.gbit_s, ".2f")]
    rows = [["config"] + [h for h, _, _ in cols]]
    for n in names:
        outs = by_name.get(n, [])
        passes = sorted({o.passno for o in outs})
        # one value per pass (with --bracket the baseline runs several times a pass: their median)
        rows.append([n] + [" / ".join(f"{fig([o for o in outs if o.passno == p], g):{f}}" for p in passes)
                           for _, g, f in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def verdicts(by_name: dict[str, list[Outcome]], base: dict[str, float], cni: CniOutcome | None) -> list[str]:
    out = []
    target = f"lanner-{CF.label(TARGET_RULES)}"
    outs = [o for o in by_name.get(target, []) if o.ok]
    if outs and base["UDP RR avg µs"] == base["UDP RR avg µs"]:
        udp = ratio(outs, "UDP RR avg µs", lambda r: r.udp.avg_us, base)
        tcp = ratio(outs, "TCP RR avg µs", lambda r: r.tcp.avg_us, base)
        conn = ratio(outs, "conn/s", lambda r: r.conn_per_s, base)
        rr_met = udp <= RR_TARGET and tcp <= RR_TARGET
        out.append(f"  {target} RR <= {RR_TARGET}x baseline: UDP {udp:.2f}x, TCP {tcp:.2f}x -> "
                   f"{'met' if rr_met else 'MISSED'}")
        out.append(f"  {target} conn/s >= {CONN_TARGET}x baseline: {conn:.2f}x -> "
                   f"{'met' if conn >= CONN_TARGET else 'MISSED'}")
    else:
        out.append(f"  {target} RR and conn/s targets: not measured ({target} not run, failed, or no baseline)")
    if cni is not None and not cni.bridge.error and not cni.lanner.error and cni.bridge.add_s and cni.lanner.add_s:
        r = cni.lanner.p50 / cni.bridge.p50
        out.append(f"  CNI ADD p50 <= {CNI_TARGET}x bridge: {cni.lanner.p50 * 1e3:.1f} ms vs "
                   f"{cni.bridge.p50 * 1e3:.1f} ms = {r:.2f}x -> {'met' if r <= CNI_TARGET else 'MISSED'}")
    elif cni is not None:
        out.append(f"  CNI ADD p50 <= {CNI_TARGET}x bridge: not measured "
                   f"({cni.lanner.error or cni.bridge.error or 'no cycles'})")
    return out


def cni_table(cni: CniOutcome) -> str:
    lines = [f"{'plugin':<12} {'cycles':>6} {'ADD p50 ms':>10} {'ADD p95 ms':>10} {'DEL p50 ms':>10} "
             f"{'first ADD ms':>12} {'VERSION p50 ms':>14}"]
    for lat in (cni.bridge, cni.lanner):
        if lat.error:
            lines.append(f"{lat.plugin:<12} error: {lat.error[:400]}")
            continue
        s = lat.summary()
        lines.append(f"{lat.plugin:<12} {s['cycles']:>6} {s['add_p50_ms']:>10.2f} {s['add_p95_ms']:>10.2f} "
                     f"{s['del_p50_ms']:>10.2f} {s['first_add_ms']:>12.2f} {s['version_p50_ms']:>14.2f}")
    lines.append("(VERSION: bridge's exec + start-up alone; lanner-cni's compiled client hands VERSION to its Python "
                 "slow path, so its figure is the slow path's floor, not the ADD path's)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="comma-separated: baseline, lanner-N, iptables-N, nftset-N (default: %(default)s); "
                        "baseline is added when missing (every ratio needs it)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 s per sockperf/connect/iperf3 measure, 1 iperf3 run, 5 CNI cycles")
    p.add_argument("--passes", type=int, default=1, help="repetitions; even passes run in reverse order")
    p.add_argument("--bracket", action="store_true",
                   help="measure the baseline before and after every configuration (B c1 B c2 ... B) and take "
                        "each ratio against the mean of the two baselines around it: slower, but robust to a "
                        "machine whose load drifts (a shared one)")
    p.add_argument("--cni-cycles", type=int, default=None,
                   help="ADD/DEL cycles per CNI plugin (default 50, 5 with --quick; 0 skips the CNI part)")
    p.add_argument("--cni-warmup", type=int, default=3, help="first cycles not counted (default: %(default)s)")
    p.add_argument("--rr-seconds", type=float, help="override: seconds per sockperf run")
    p.add_argument("--lanner-shape", choices=("per-cidr", "grid"), default="per-cidr",
                   help="how lanner-N writes its N non-matching entries: per-cidr = N rules of one ipBlock /32 "
                        "+ one TCP port, exactly the iptables rule set (N ipcache + N policy entries); grid = "
                        "ceil(N/P) ipBlocks x P ports in one rule, P = ceil(sqrt N) (N policy entries, fewer "
                        "ipcache entries) (default: %(default)s)")
    p.add_argument("--flow-rate-limit", type=int, default=None, metavar="N",
                   help="lanner-N: flow events per second for the node (default: the datapath's own default, "
                        "what the agent runs with; 0 = unlimited, to see what every flow event costs)")
    p.add_argument("--bpf-stats", action="store_true",
                   help="lanner-N: also report each datapath program's run time per packet (kernel BPF "
                        "statistics on, through a BPF_ENABLE_STATS fd, only while lanner configurations run; "
                        "they add two clock reads per program run, so RR figures of such a run include them)")
    p.add_argument("--json", type=Path, help="also write every figure and the evidence as JSON here")
    p.add_argument("--debug", action="store_true", help="print tracebacks of failed configurations")
    a = p.parse_args(argv)
    if a.passes < 1:
        p.error("--passes must be >= 1")
    for n in a.configs.split(","):
        try:
            if n.strip():
                CF.parse_config(n.strip(), Path("/nonexistent"), Path("/nonexistent"))
        except CF.ConfigError as e:
            p.error(str(e))
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    C.require_root()
    durations = LD.QUICK if a.quick else LD.FULL
    if a.rr_seconds:
        durations = LD.Durations(a.rr_seconds, durations.crr_s, durations.bulk_s, durations.bulk_reps)
    cni_cycles = a.cni_cycles if a.cni_cycles is not None else (5 if a.quick else 50)
    names = [n.strip() for n in a.configs.split(",") if n.strip()]
    if "baseline" not in names:
        names.insert(0, "baseline")
    stale = T.remove_stale()
    if stale:
        print(f"removed namespaces left by dead runs: {', '.join(stale)}")

    per_config = (4 * durations.rr_s + durations.crr_s + durations.bulk_s * durations.bulk_reps + 60)
    runs_per_pass = 2 * len(names) if a.bracket else len(names)
    budget = a.passes * (runs_per_pass * per_config + (cni_cycles * 2 + 120 if cni_cycles else 0)) + 120
    mon = C.LoadMonitor()
    outcomes: list[Outcome] = []
    cni_runs: list[CniOutcome] = []
    t0 = time.monotonic()
    with C.Cleanup(budget) as stack:
        workdir = stack.tempdir("lanner-bench-datapath-")
        pin_root = stack.pin_dir("datapath")
        configs = {n: CF.parse_config(n, pin_root, workdir, a.lanner_shape, a.flow_rate_limit, a.bpf_stats) for n in names}
        for passno in range(a.passes):
            order = names if passno % 2 == 0 else list(reversed(names))
            if a.bracket:  # B c1 B c2 ... B
                others = [n for n in order if n != "baseline"]
                order = ["baseline"] + [x for n in others for x in (n, "baseline")]
            seq: list[Outcome] = []
            for n in order:
                cfg = CF.parse_config(n, pin_root, workdir, a.lanner_shape, a.flow_rate_limit, a.bpf_stats) if passno else configs[n]
                print(f"pass {passno + 1}/{a.passes}: {n} ...", flush=True)
                with BpfStats(a.bpf_stats and cfg.kind == "lanner"):
                    o = run_config(cfg, passno, durations, a.debug)
                outcomes.append(o)
                seq.append(o)
                mon.sample()
                if o.error:
                    print(f"  {n}: {o.error[:500]}", flush=True)
            if a.bracket:
                bracket(seq)
            if cni_cycles:
                print(f"pass {passno + 1}/{a.passes}: CNI ADD latency, {cni_cycles} cycles per plugin ...", flush=True)
                cni_runs.append(run_cni(cni_cycles, a.cni_warmup, workdir, pin_root, passno))
    wall = time.monotonic() - t0
    cni = merge_cni(cni_runs)

    by_name: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_name.setdefault(o.config, []).append(o)
    text, base = table(names, by_name)
    m = C.machine()
    print()
    print(f"datapath benchmark: {m.get('commit', '?')}, kernel {m['kernel']}, {m['nproc']} CPUs, "
          f"{a.passes} pass(es){' (quick)' if a.quick else ''}, {wall:.0f} s")
    print(f"pinning: sockperf and the connect loop (client+server) on CPU {LD.RR_CPU}, iperf3 on CPU {LD.BULK_CPU}; "
          f"RR {durations.rr_s:g} s, connect loop {durations.crr_s:g} s, iperf3 {durations.bulk_reps}x{durations.bulk_s:g} s; "
          f"latency is sockperf's one-way (RTT/2); (x) = ratio to baseline"
          f"{' (each against the two baselines measured around it, median over passes)' if a.bracket else ''}; bg cores = CPU used by other "
          f"processes meanwhile (of {m['nproc']})")
    if any(o.kind == "lanner" for o in outcomes):
        rates = sorted({str(o.evidence.get("flow_rate_limit", "?")) for o in outcomes if o.kind == "lanner"})
        print(f"lanner: conntrack on, flow events on (node rate limit {'/'.join(rates)} events/s, 0 = unlimited; "
              f"{'the datapath default' if a.flow_rate_limit is None else '--flow-rate-limit'}), drained and decoded "
              f"by the helper as the agent does; policy shape {a.lanner_shape}")
    print(text)
    if a.passes > 1:
        print()
        print("per pass (pass 1 / pass 2 ...; even passes ran in reverse order"
              f"{'; baseline: the median of its runs in the pass' if a.bracket else ''}):")
        print(per_pass(names, by_name))
    if a.bpf_stats:
        print()
        print("lanner BPF programs, run time per run (kernel statistics; median over passes):")
        for n in names:
            progs = [o.evidence.get("bpf_programs", {}) for o in by_name.get(n, []) if o.kind == "lanner"]
            if not progs:
                continue
            parts = []
            for prog in sorted({p for d in progs for p in d}):
                ns = med([d[prog]["ns_per_run"] for d in progs if prog in d])
                runs = med([d[prog]["run_cnt"] for d in progs if prog in d])
                parts.append(f"{prog} {ns:.0f} ns ({runs:.0f} runs)")
            print(f"  {n:<12} " + ", ".join(parts))
    if cni is not None:
        print()
        print(cni_table(cni))
    print()
    print("targets (issue 6):")
    for line in verdicts(by_name, base, cni):
        print(line)
    print(mon.report())
    if a.json:
        doc = {"machine": m, "quick": a.quick, "passes": a.passes, "durations": durations.__dict__,
               "configs": names,
               "outcomes": [{"config": o.config, "kind": o.kind, "rules": o.rules, "pass": o.passno,
                             "install_s": o.install_s, "ok": o.ok, "background_cores": o.background_cores, "error": o.error, "evidence": o.evidence,
                             "result": o.result.as_dict() if o.result else None,
                             "local_base": o.local_base} for o in outcomes],
               "cni": {"bridge": cni.bridge.summary(), "lanner": cni.lanner.summary()} if cni else None,
               "targets": verdicts(by_name, base, cni)}
        a.json.write_text(json.dumps(doc, indent=1))
    failed = [o for o in outcomes if not o.ok]
    cni_failed = cni is not None and bool(cni.bridge.error or cni.lanner.error)
    return 1 if failed or cni_failed else 0


def run_main() -> int:
    """main() with Ctrl-C/SIGTERM/time-out reported in one line (everything is cleaned up by then)."""
    try:
        return main()
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e or 'SIGINT'}): namespaces, processes and pins of this run removed", file=sys.stderr)
        return 130
    except TimeoutError as e:
        print(f"\n{e}: namespaces, processes and pins of this run removed", file=sys.stderr)
        return 124


if __name__ == "__main__":
    sys.exit(run_main())
