"""The multi-node benchmark runs end to end (quickest mode) and every figure it prints is real."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.bpf,
              pytest.mark.skipif(not all(shutil.which(t) for t in ("sockperf", "iperf3", "etcd")),
                                 reason="sockperf, iperf3 and etcd (Makefile APT_PKGS) are needed")]


def test_multinode_benchmark_quick():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "multinode.py"), "--quick", "--pods", "3",
                        "--modes", "native", "--json"], capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for path in ("same-node", "cross-node native"):
        fig = res[path]
        assert fig["udp"]["observations"] > 0 and fig["tcp"]["observations"] > 0, fig
        assert fig["connections"] > 0 and fig["iperf_bytes"] > 0, fig
    prop = res["propagation native"]
    assert prop["n"] == 3 and 0 < prop["p50_ms"] <= prop["max_ms"] < 10_000
