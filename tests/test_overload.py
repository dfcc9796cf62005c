"""Overload stays safe: the short version of bench/overload.py (a few seconds of fork+exec storm from
several processes the test starts, then a ring-buffer flood far above what the agent consumes).

The benchmark is run as a user runs it; its JSON is checked for the safety properties, not for speed:
the agent stays alive, every /healthz answer is 200 and the event loop is never seen idle for a second,
every gRPC status request is answered, VmRSS stays bounded, and every event is accounted for (offered =
exported + lost, with each loss in the agent's own counter). Nothing is left behind (pins, workers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "overload.py"
FLOOD_OBJ = ROOT / "bench" / "bpf" / "obj" / "flood.bpf.o"
GO_CLIENT = ROOT / "build" / "tetragon" / "bin" / "tetragon-client"
RSS_GROWTH_LIMIT_KIB = 256 * 1024  # a few seconds of flood are ~1 GB of export: unbounded queues would show

pytestmark = [pytest.mark.bpf,
              pytest.mark.skipif(not FLOOD_OBJ.exists(), reason=f"{FLOOD_OBJ} missing: run 'make bpf'")]


def leftovers(pid: int) -> list[str]:
    """Pins and storm workers of benchmark run ``pid``."""
    pins = [p.name for p in Path("/sys/fs/bpf").glob(f"lanner-bench-overload-{pid}")]
    procs = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"storm.sh" in cmd and b"lanner-overload-" in cmd:
            procs.append(d.name)
    return pins + procs


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("overload") / "result.json"
    cmd = [sys.executable, str(BENCH), "--storm-s", "4", "--flood-s", "4", "--workers", "4", "--cache-size", "4096",
           "--grpc-clients", "1" if GO_CLIENT.exists() else "0", "--json", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        stdout, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the benchmark cleans up on SIGTERM
        stdout, stderr = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert out.exists(), f"no results (exit {proc.returncode}):\n{stdout}\n{stderr[-3000:]}"
    assert not leftovers(proc.pid), leftovers(proc.pid)
    return done, json.loads(out.read_text())


def phases(result: dict) -> dict[str, dict]:
    return {ph["phase"]: ph for ph in result["phases"]}


def test_agent_stays_alive_and_healthy(run: tuple[subprocess.CompletedProcess, dict]) -> None:
    done, result = run
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert result["alive"]
    for name, ph in phases(result).items():
        w = ph["watched_during"]
        assert ph["alive"], name
        assert w["healthz_polls"] >= 10 and w["healthz_errors"] == 0, (name, w)
        assert w["healthz_not_200"] == 0, (name, w)
        # the loop turns at least once a second however far behind the ring is
        assert w["max_loop_age_s"] < 1.0, (name, w["max_loop_age_s"])


def test_status_answered_throughout(run: tuple[subprocess.CompletedProcess, dict]) -> None:
    for name, ph in phases(run[1]).items():
        w = ph["watched_during"]
        assert w["status_polls"] >= 3 and w["status_errors"] == 0, (name, w)


def test_rss_bounded(run: tuple[subprocess.CompletedProcess, dict]) -> None:
    result = run[1]
    peak = max(r for ph in result["phases"] for r in ph["watched_during"]["rss_kib"])
    assert peak - result["rss_ready_kib"] < RSS_GROWTH_LIMIT_KIB, (result["rss_ready_kib"], peak)


def test_storm_every_event_accounted(run: tuple[subprocess.CompletedProcess, dict]) -> None:
    storm = phases(run[1])["storm"]
    assert storm["workers"] == 4 and storm["execs"] > 0
    assert storm["offered"] == 2 * storm["execs"]
    # what was not exported is within the agent's own loss counter (0 <= missing <= lost)
    assert 0 <= storm["missing"] <= storm["lost"], storm


def test_flood_above_capacity_every_loss_counted(run: tuple[subprocess.CompletedProcess, dict]) -> None:
    flood = phases(run[1])["flood"]
    assert flood["rejected"] > 0, "the flood did not overload the ring"
    # every record the ring accepted was exported, and every one it refused is in the agent's counter
    assert flood["exported"]["flood"] == flood["accepted"], flood
    assert flood["lost"] >= flood["rejected"], flood
