"""Encoder, compact rendering and the rotating file sink (no kernel needed)."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from lanner.exporter.compact import CompactFormatter
from lanner.exporter.encoder import (
    CAPABILITIES, EncoderOptions, KtimeClock, ProcessEventEncoder, cap_names, join_arguments, order_flags, signal_name,
)
from lanner.exporter.sinks import RotatingFileSink
from lanner.process_cache import Process, make_exec_id
from lanner.sensors.process import Creds, Namespaces


def test_arguments_are_joined_like_tetragon():
    assert join_arguments(["-c", "echo hi", "x"]) == '-c "echo hi" x'
    assert join_arguments([]) == ""


def test_capability_names_match_tetragon_enum():
    assert len(CAPABILITIES) == 41
    assert cap_names(0b11) == ["CAP_CHOWN", "DAC_OVERRIDE"]  # Tetragon's enum has no CAP_ on bit 1
    assert cap_names(1 << 21) == ["CAP_SYS_ADMIN"]


def test_flags_and_signals():
    assert order_flags(("clone", "rootcwd", "execve")) == "execve rootcwd clone"
    assert signal_name(9) == "SIGKILL" and signal_name(63) == "SIG63"


def test_rfc3339_nanoseconds():
    clock = KtimeClock()
    clock.offset_ns = 1_700_000_000_000_000_000
    assert clock.rfc3339(123_456_789) == "2023-11-14T22:13:20.123456789Z"


def _proc(**kw) -> Process:
    creds = Creds(1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 0, 4294967295, 1 << 10, 0, 0)
    base = dict(key=(7, 5), exec_id=make_exec_id("n1", 5, 7), parent_key=None, parent_exec_id="", pid=7, tid=7, nspid=7,
                binary="/usr/bin/curl", args=("-s", "a b"), cwd="/", flags=("execve", "rootcwd"), start_ns=5,
                creds=creds, ns=Namespaces(*range(1, 11)), cgroup_id=0)
    base.update(kw)
    return Process(**base)


def test_exec_and_exit_json_shape():
    enc = ProcessEventEncoder(EncoderOptions("n1", process_cred=True, process_ns=True), tuple(range(1, 11)), KtimeClock())
    p = _proc()
    ev = json.loads(enc.exec_event(p, None))
    assert set(ev) == {"process_exec", "node_name", "time"} and ev["node_name"] == "n1"
    pr = ev["process_exec"]["process"]
    assert pr["arguments"] == '-s "a b"' and pr["flags"] == "execve rootcwd" and pr["uid"] == 1000
    assert pr["cap"] == {"permitted": ["CAP_NET_BIND_SERVICE"]}
    assert pr["ns"]["uts"] == {"inum": 1, "is_host": True}
    assert pr["process_credentials"]["euid"] == 1000
    assert "parent" not in ev["process_exec"]
    ex = json.loads(enc.exit_event(p, p, 10, 0, 9))
    assert ex["process_exit"]["signal"] == "SIGKILL" and "status" not in ex["process_exit"]
    assert ex["process_exit"]["parent"]["exec_id"] == p.exec_id
    # without the opt-in flags, as Tetragon's defaults
    plain = ProcessEventEncoder(EncoderOptions("n1"), tuple(range(1, 11)), KtimeClock())
    pr2 = json.loads(plain.exec_event(_proc(), None))["process_exec"]["process"]
    assert "cap" not in pr2 and "ns" not in pr2 and "process_credentials" not in pr2


def test_compact_lines_look_like_tetra():
    f = CompactFormatter()
    exec_ev = {"process_exec": {"process": {"binary": "/usr/bin/curl", "arguments": "https://ebpf.io"}}, "node_name": "n1"}
    assert f.format(exec_ev) == "🚀 process n1 /usr/bin/curl https://ebpf.io"
    exit_ev = {"process_exit": {"process": {"binary": "/usr/bin/curl", "arguments": "x", "pod": {"namespace": "default", "name": "xwing"}},
                                "status": 60}, "node_name": "n1"}
    assert f.format(exit_ev) == "💥 exit    default/xwing /usr/bin/curl x 60"
    sig_ev = {"process_exit": {"process": {"binary": "/bin/sleep"}, "signal": "SIGKILL"}, "node_name": "n1",
              "time": "2024-01-01T00:00:00.000000001Z"}
    assert CompactFormatter(timestamps=True).format(sig_ev) == "2024-01-01T00:00:00.000000001Z 💥 exit    n1 /bin/sleep SIGKILL"
    colored = CompactFormatter(color=True).format(exec_ev)
    assert "\x1b[34m🚀 process\x1b[0m" in colored and "\x1b[35m/usr/bin/curl\x1b[0m" in colored
    assert f.format({"rate_limit_info": {}}) is None


@pytest.mark.parametrize("compress", [False, True])
def test_rotation_never_splits_or_loses_a_line(tmp_path, compress):
    path = tmp_path / "ev.log"
    sink = RotatingFileSink(path, max_bytes=4096, max_backups=1000, compress=compress)
    sent = []
    for batch in range(200):
        lines = [json.dumps({"n": batch * 7 + i, "pad": "x" * ((batch * 31 + i * 17) % 300)}).encode() for i in range(7)]
        sent += lines
        sink.write_lines(lines)
    sink.close()
    assert sink.rotations > 10
    got = []
    backups = sorted(tmp_path.glob("ev.log.*"), key=lambda p: -int(re.search(r"\.(\d+)", p.name[6:]).group(1)))
    for f in backups + [path]:
        data = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
        assert len(data) <= 4096 or data.count(b"\n") == 1
        assert data.endswith(b"\n")
        got += data.splitlines()
    assert got == sent


def test_rotation_keeps_only_max_backups(tmp_path):
    path = tmp_path / "ev.log"
    sink = RotatingFileSink(path, max_bytes=1024, max_backups=3)
    for i in range(100):
        sink.write_lines([b"x" * 200])
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.log", "ev.log.1", "ev.log.2", "ev.log.3"]


def test_bad_sink_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 1 KiB"):
        RotatingFileSink(tmp_path / "a", max_bytes=10)
    with pytest.raises(ValueError, match="backups"):
        RotatingFileSink(tmp_path / "b", max_backups=-1)
