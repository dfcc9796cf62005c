"""Prometheus metrics scraped from a real agent and checked against events actually generated; health."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from lanner.health import HealthServer
from tests.conftest import exits, start_agent


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metric(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.bpf
def test_metrics_match_generated_events(tmp_path):
    marker = tmp_path / "metric-marker"
    shutil.copy("/bin/true", marker)
    a = start_agent(tmp_path, "--metrics-server", "127.0.0.1:0", "--enable-bpf-stats")
    try:
        for _ in range(7):
            subprocess.run([str(marker)])
        a.wait_for(lambda e: len(exits(e, binary=str(marker))) == 7, what="7 marker exits")
        st = a.status()
        code, text = _get(f"http://{st['metrics_address']}/metrics")
        assert code == 200
        assert _metric(text, "tetragon_events_total", type="PROCESS_EXEC", binary=str(marker)) == 7
        assert _metric(text, "tetragon_events_total", type="PROCESS_EXIT", binary=str(marker)) == 7
        assert _metric(text, "tetragon_process_cache_capacity") == 65536
        assert _metric(text, "tetragon_process_cache_size") > 3  # seeded from /proc
        assert _metric(text, "tetragon_bpf_missed_events_total", msg_op="exec") == 0
        assert _metric(text, "tetragon_events_exported_total") >= 14
        runs = _metric(text, "tetragon_overhead_program_runs_total", label="lanner_exec")
        assert runs is not None and runs >= 7  # BPF stats were enabled by the agent
        assert _metric(text, "tetragon_overhead_program_seconds_total", label="lanner_exec") > 0
        code, body = _get(f"http://{st['health_address']}/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok"
        code, body = _get(f"http://{st['health_address']}/readyz")
        assert code == 200 and json.loads(body)["status"] == "ready"
    finally:
        a.stop()


def test_health_reports_a_stalled_loop_and_unknown_paths():
    now = [100.0]
    h = HealthServer("127.0.0.1:0", last_loop=lambda: now[0], ready=lambda: False, stale_after=5)
    try:
        import time
        now[0] = time.monotonic()
        assert h.answer("/healthz")[0] == 200
        now[0] = time.monotonic() - 60
        code, body = h.answer("/healthz")
        assert code == 503 and body["status"] == "stalled"
        assert h.answer("/readyz") == (503, {"status": "starting"})
        code, _ = _get(f"http://{h.address}/nope")
        assert code == 404
    finally:
        h.close()


def test_bad_server_addresses_are_refused(tmp_path):
    p = subprocess.run([sys.executable, "-m", "lanner", "agent", "--metrics-server", "nope", "--no-export-stdout", "--skip-probe",
                        "--server-address", f"unix://{tmp_path}/s", "--health-server-address", ""],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "--metrics-server: 'nope' is not [ADDR]:PORT" in p.stderr
