"""Agent I/O under load: rotation, ring-buffer loss accounting, getevents and status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.vm.expectations import current
from tests.conftest import execs, exits, start_agent

pytestmark = pytest.mark.bpf

LANNER = [sys.executable, "-m", "lanner"]


def _burst(n: int, marker: str) -> None:
    """n fork+execs of /bin/true, each tagged with the marker."""
    script = f'i=0; while [ $i -lt {n} ]; do /bin/true {marker} $i; i=$((i+1)); done'
    subprocess.run(["/bin/sh", "-c", script], check=True)


def test_rotation_under_load_loses_no_line(tmp_path):
    a = start_agent(tmp_path, "--export-file-max-size-mb", "0.02", "--export-file-max-backups", "1000")
    try:
        _burst(600, "rot-marker")
        evs = a.wait_for(lambda e: len([x for x in exits(e) if x["process"].get("arguments", "").startswith("rot-marker")]) == 600,
                         timeout=60, what="600 marker exits")
        st = a.status()
    finally:
        a.stop()
    files = list(a.export_file.parent.iterdir())
    assert len(files) > 20, "the test must rotate many times"
    assert len(files) - 1 >= st["export"]["rotations"] > 10  # backups = rotations (more may follow the snapshot)
    lines = 0
    for f in files:
        data = f.read_bytes()
        assert data.endswith(b"\n")
        for line in data.splitlines():
            json.loads(line)  # every line is whole
            lines += 1
        assert len(data) <= 0.02 * (1 << 20) + 8192
    # every event the agent counted is in the files, once
    assert lines == len(a.events()) >= st["events"]["process_exec"] + st["events"]["process_exit"]
    marker_execs = [e for e in execs(evs) if e["process"].get("arguments", "").startswith("rot-marker")]
    assert sorted(int(e["process"]["arguments"].split()[1]) for e in marker_execs) == list(range(600))


def test_tiny_ring_buffer_makes_loss_counter_rise(tmp_path):
    a = start_agent(tmp_path, "--rb-size", "4096")
    try:
        assert a.status()["ringbuf"]["size_bytes"] == 4096
        os.kill(a.proc.pid, signal.SIGSTOP)  # nobody consumes: the 16 KiB ring fills at once
        try:
            _burst(200, "loss-marker")
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10 * current().slowdown
        while True:  # the agent drains what the ring kept, then exports it: every marker exec is one or the other
            st = a.status()
            lost = st["ringbuf"]["lost"]
            got = len([e for e in execs(a.events()) if e["process"].get("arguments", "").startswith("loss-marker")])
            if got + lost.get("exec", 0) >= 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert st["ringbuf"]["lost_total"] > 100
        assert lost["exec"] > 50 and lost["exit"] > 50
        assert st["ringbuf"]["lost_total"] == sum(lost.values())
        assert got + lost["exec"] >= 200, (got, lost)  # every marker exec is either exported or counted lost
    finally:
        a.stop()
    assert "events lost" in a.stderr_path.read_text()


def test_getevents_compact_follows_the_live_stream_with_filters(tmp_path):
    import shutil

    marker = tmp_path / "compact-true"  # a binary only this test runs
    shutil.copy("/bin/true", marker)
    a = start_agent(tmp_path)
    client = None
    try:
        client = subprocess.Popen(
            LANNER + ["getevents", "-o", "compact", "--server-address", a.address, "--process", "compact-true$",
                      "--event-types", "PROCESS_EXEC"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 10
        while a.status()["api"]["clients"] < 1:
            assert time.monotonic() < deadline, "getevents did not subscribe"
            time.sleep(0.05)
        subprocess.run(["/bin/echo", "not-shown"], stdout=subprocess.DEVNULL)
        subprocess.run([str(marker), "compact-marker", "a b"])
        line = client.stdout.readline().rstrip("\n")
        assert line == f'🚀 process testnode {marker} compact-marker "a b"'
    finally:
        if client:
            client.terminate()
            client.wait()
        a.stop()


def test_getevents_json_from_a_pipe_and_bad_requests(tmp_path):
    a = start_agent(tmp_path)
    try:
        subprocess.run(["/bin/true", "pipe-marker"])
        a.wait_for(lambda e: exits(e, arguments="pipe-marker"))
    finally:
        a.stop()
    data = a.export_file.read_bytes()
    p = subprocess.run(LANNER + ["getevents", "-o", "compact", "--process", "/bin/true"], input=data,
                       capture_output=True)
    out = p.stdout.decode().splitlines()
    assert p.returncode == 0
    assert "🚀 process testnode /bin/true pipe-marker" in out and "💥 exit    testnode /bin/true pipe-marker 0" in out
    assert all("/bin/true" in line for line in out)
    # bad filter: a clear error naming the field
    p = subprocess.run(LANNER + ["getevents", "-e", "PROCESS_NOPE"], input=data.decode(), capture_output=True, text=True)
    assert p.returncode == 2 and "--event-types: unknown event type 'PROCESS_NOPE'" in p.stderr
    # no agent: a clear error naming the address
    p = subprocess.run(LANNER + ["getevents", "--server-address", f"unix://{tmp_path}/none.sock", "--timeout", "2"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "none.sock" in p.stderr and "lanner agent" in p.stderr


def test_status_and_version_commands(tmp_path):
    a = start_agent(tmp_path)
    try:
        p = subprocess.run(LANNER + ["status", "-o", "json", "--server-address", a.address], capture_output=True, text=True)
        st = json.loads(p.stdout)
        assert st["pid"] == a.proc.pid and "process" in st["sensors"] and st["ringbuf"]["lost_total"] == 0
        assert st["process_cache"]["size"] > 3  # seeded from /proc
        assert st["kernel"]["tracepoint"] is True and st["kernel"]["kprobe"] is False
        p = subprocess.run(LANNER + ["status", "--server-address", a.address], capture_output=True, text=True)
        assert p.returncode == 0 and "lost 0" in p.stdout and f"pid {a.proc.pid}" in p.stdout
        p = subprocess.run(LANNER + ["version", "--server-address", a.address], capture_output=True, text=True)
        assert "client  0.1.0" in p.stdout and "agent   0.1.0" in p.stdout
    finally:
        a.stop()
    p = subprocess.run(LANNER + ["status", "--server-address", a.address, "--timeout", "2"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 1 and "is 'lanner agent' running?" in p.stderr


def test_probe_command_reports_this_kernel_truthfully():
    p = subprocess.run(LANNER + ["probe", "-o", "json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    feats = json.loads(p.stdout)["features"]
    assert feats["tracepoint"]["supported"] is True
    for name in ("kprobe", "fentry", "lsm"):
        assert feats[name]["supported"] is False and feats[name]["detail"]


def test_one_ring_orders_policy_events_after_their_exec_and_counts_their_losses(tmp_path):
    """Every sensor writes into the one ring (--rb-size): a policy event comes after the exec of its process in
    kernel order (its process is cached: parent and binary known), and a full ring counts the policy records
    it refused under lost.policy, as it counts the process records."""
    from tests.policy_specs import openat_prefix, policy_yaml

    watched = tmp_path / "watched"
    watched.mkdir()
    policy = tmp_path / "ring.yaml"
    policy.write_text(policy_yaml("one-ring", openat_prefix(str(watched))))
    # 16 KiB: room for the three cats' records beside a busy machine's other execs, yet full at once when stopped
    a = start_agent(tmp_path, "--rb-size", "16384", "--tracing-policy", str(policy))
    try:
        assert a.status()["ringbuf"]["size_bytes"] == 16384
        script = f"for i in 1 2 3; do /bin/cat {watched}/f$i 2>/dev/null; done"
        subprocess.run(["/bin/sh", "-c", script])
        evs = a.wait_for(lambda e: len([x for x in e if x.get("process_kprobe", {}).get("policy_name") == "one-ring"])
                         >= 3, timeout=10 * current().slowdown, what="three policy events")
        for i, e in enumerate(evs):
            k = e.get("process_kprobe")
            if k and k["policy_name"] == "one-ring":
                assert k["process"]["binary"] == "/bin/cat" and k["parent"]["binary"], k
                exec_at = [j for j, x in enumerate(evs) if x.get("process_exec", {}).get("process", {}).get(
                    "exec_id") == k["process"]["exec_id"]]
                assert exec_at and exec_at[0] < i, "the policy event came before its process's exec"
        os.kill(a.proc.pid, signal.SIGSTOP)  # nobody consumes: the 4 KiB ring fills at once
        try:
            subprocess.run(["/bin/sh", "-c", f"i=0; while [ $i -lt 300 ]; do /bin/cat {watched}/g 2>/dev/null;"
                                             " i=$((i+1)); done"])
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        lost = a.status()["ringbuf"]["lost"]
        assert lost["policy"] > 10 and lost["exec"] > 10, lost
    finally:
        a.stop()
