"""Smoke test of the datapath benchmark (bench/datapath.py) in its quickest mode.

Runs the real benchmark, as a user runs it, with three configurations (baseline, lanner-1k,
iptables-1k; about a second per measure) and a few CNI ADD/DEL cycles per plugin, then checks that the
printed table is complete, that every configuration actually passed traffic (sockperf observations,
connections, iperf3 bytes, and the configuration's own counters), and that nothing is left behind
(namespaces, pins). The figures themselves are not asserted: a smoke run on a shared machine is too
short to judge them; docs/performance.md has the full run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "datapath.py"
CONFIGS = ("baseline", "lanner-1k", "iptables-1k")

TOOLS = ("sockperf", "iperf3", "iptables-nft-restore", "nft", "nsenter", "taskset")
MISSING = [t for t in TOOLS if shutil.which(t) is None] + [p for p in ("/usr/lib/cni/bridge",) if not os.path.exists(p)]

pytestmark = [pytest.mark.bpf,
              pytest.mark.skipif(bool(MISSING), reason=f"benchmark tools missing (make deps): {MISSING}")]


def leftovers(pid: int) -> list[str]:
    """Namespaces, pins and processes (the datapath helper, the netdp agent) of benchmark run ``pid``."""
    ns = [p.name for p in Path("/var/run/netns").glob(f"lnb{pid}-*")] if Path("/var/run/netns").is_dir() else []
    pins = [p.name for p in Path("/sys/fs/bpf").glob(f"lanner-bench-datapath-{pid}*")]
    procs = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"lanner-bench-datapath-{pid}" in cmd or f"lnb{pid}-" in cmd:
            procs.append(f"pid {d.name}: {cmd[:120]}")
    return ns + pins + procs


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict, int]:
    out = tmp_path_factory.mktemp("bench-datapath") / "result.json"
    proc = subprocess.Popen([sys.executable, str(BENCH), "--quick", "--configs", ",".join(CONFIGS),
                             "--cni-cycles", "3", "--cni-warmup", "1", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        stdout, stderr = proc.communicate(timeout=280)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the benchmark cleans up on SIGTERM
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"benchmark timed out:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    r = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    doc = json.loads(out.read_text()) if out.exists() else {}
    return r, doc, proc.pid


def test_quick_run_succeeds(quick_run) -> None:
    r, doc, _ = quick_run
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-3000:]}"
    assert doc, "no JSON written"


def test_table_is_complete(quick_run) -> None:
    r, _, _ = quick_run
    lines = r.stdout.splitlines()
    header = next((ln for ln in lines if ln.startswith("config ")), None)
    assert header is not None, r.stdout
    for col in ("install s", "UDP RR avg", "UDP p99", "TCP RR avg", "TCP p99", "conn/s", "Gbit/s", "traffic"):
        assert col in header
    for name in CONFIGS:
        row = next((ln for ln in lines if ln.split()[:1] == [name]), None)
        assert row is not None, f"no row for {name}:\n{r.stdout}"
        assert row.split()[-1] == "ok", row
        assert " - " not in f" {row} ", f"missing figure in {row}"
        if name != "baseline":
            assert row.count("x)") == 6, f"every figure of {name} needs its ratio to baseline: {row}"
    cni = next((ln for ln in lines if ln.startswith("plugin ")), None)
    assert cni is not None and "ADD p50 ms" in cni, r.stdout
    for plugin in ("bridge", "lanner-cni"):
        row = next((ln for ln in lines if ln.split()[:1] == [plugin]), "")
        assert row and "error" not in row, f"CNI row for {plugin}: {row!r}\n{r.stdout}"
    targets = "\n".join(lines[lines.index("targets (issue 6):"):])
    assert "CNI ADD p50" in targets and ("met" in targets or "MISSED" in targets)
    assert "background:" in r.stdout


def test_every_config_passed_traffic(quick_run) -> None:
    _, doc, _ = quick_run
    by = {o["config"]: o for o in doc["outcomes"]}
    assert set(by) == set(CONFIGS)
    for name, o in by.items():
        assert o["ok"] and not o["error"], (name, o["error"])
        res = o["result"]
        assert res["udp"]["observations"] > 100 and res["tcp"]["observations"] > 100, name
        assert res["connections"] > 100 and res["conn_errors"] == 0, (name, res)
        assert res["iperf_bytes"] > 1 << 20, name
        assert res["udp"]["avg_us"] > 0 and res["conn_per_s"] > 0 and res["gbit_s"] > 0
    assert by["baseline"]["evidence"]["router_forwarded_packets"] > 0
    ipt = by["iptables-1k"]["evidence"]
    assert ipt["rules_loaded"] == 1000 and ipt["accept_packets"] > 0 and ipt["dropped_packets"] == 0
    ev = by["lanner-1k"]["evidence"]
    assert ev["policy_entries"] >= 1000, ev  # the policy really has 1k entries
    assert ev["new_flows"] > 100 and ev["flow_events_read"] > 0 and ev["drops"] == 0, ev
    cni = doc["cni"]
    for plugin in ("bridge", "lanner"):
        assert cni[plugin]["cycles"] == 3 and not cni[plugin]["error"], cni[plugin]
        assert cni[plugin]["add_p50_ms"] > 0


def test_nothing_left_behind(quick_run) -> None:
    _, _, pid = quick_run
    assert leftovers(pid) == []
    assert not os.path.exists(f"/sys/fs/bpf/lanner-bench-datapath-{pid}")


def test_ctrl_c_during_lanner_config_cleans_up() -> None:
    """SIGINT while the lanner datapath is loaded in the router netns: exit 130, nothing left behind."""
    import time

    proc = subprocess.Popen([sys.executable, str(BENCH), "--quick", "--configs", "lanner-1k", "--cni-cycles", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    pins = Path(f"/sys/fs/bpf/lanner-bench-datapath-{proc.pid}/lanner-1k")
    try:
        deadline = time.monotonic() + 120
        while not pins.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pins.exists(), "the lanner datapath never pinned its maps"
        time.sleep(1.0)  # traffic running through the datapath
        proc.send_signal(2)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    assert leftovers(proc.pid) == []
