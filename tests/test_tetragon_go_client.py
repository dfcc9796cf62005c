"""lanner's gRPC API read by Tetragon's own generated Go stubs (tools/tetragon, `make tetragon-client`).

The real `tetra` cannot be built here (the Go module proxy does not serve Tetragon's main module,
docs/api.md); its `api` module is served, and tools/tetragon is a small client on it. Every answer is
decoded by Tetragon's code with --strict: a field number lanner sends that Tetragon does not define fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, RunningAgent, start_agent
from tests.go_client import CLIENT, require_client, trigger_until_answered, unique_binary

SHARED_POLICIES = ROOT.parent / "shared" / "tetragon-policies"
SETUID_POLICY = SHARED_POLICIES / "sys_setuid.yaml"

@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> RunningAgent:
    """A real agent with one corpus policy (skipped without the client; failed under CI, where make builds it)."""
    require_client()
    if not SETUID_POLICY.is_file():
        pytest.skip(f"{SETUID_POLICY} is absent")
    a = start_agent(tmp_path_factory.mktemp("agent"), "--tracing-policy", str(SETUID_POLICY))
    yield a
    a.stop()


def client(agent: RunningAgent, *args: str, timeout: str = "20s") -> list[dict]:
    proc = subprocess.run([str(CLIENT), "--server-address", agent.address, "--timeout", timeout, "--strict",
                           *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_health_and_version(agent: RunningAgent) -> None:
    (health,) = client(agent, "health")
    assert health["health_status"][0]["status"] == "HEALTH_STATUS_RUNNING"
    (version,) = client(agent, "version")
    assert version["version"] == agent.status()["version"]


def test_tracingpolicy_list(agent: RunningAgent) -> None:
    (answer,) = client(agent, "tracingpolicy", "list")
    (policy,) = answer["policies"]
    assert policy["name"] == "syscalls"
    assert policy["state"] == "TP_STATE_ENABLED"
    assert policy["mode"] == "TP_MODE_MONITOR_ONLY"
    assert policy["sensors"] and int(policy["id"]) >= 1


def test_getevents_exec_and_exit(agent: RunningAgent, tmp_path: Path) -> None:
    binary = unique_binary(tmp_path, "lanner-go-client-id")
    stream = subprocess.Popen([str(CLIENT), "--server-address", agent.address, "--timeout", "20s", "--strict",
                               "getevents", "--process", f"{binary}$", "--count", "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = trigger_until_answered(stream, [str(binary), "-u"])
    finally:
        stream.kill()
    events = [json.loads(line) for line in out.splitlines()]
    first = next(i for i, e in enumerate(events) if "process_exec" in e)
    process = events[first]["process_exec"]["process"]
    assert process["binary"] == str(binary) and process["arguments"] == "-u"
    assert events[first]["node_name"] == agent.node
    exits = [e["process_exit"] for e in events[first + 1:] if "process_exit" in e]
    assert exits and exits[0]["process"]["exec_id"] == process["exec_id"]


def test_getevents_kprobe_of_a_policy(agent: RunningAgent) -> None:
    """The sys_setuid policy's event, filtered by pid, decoded by Tetragon's ProcessKprobe."""
    trigger = subprocess.Popen([sys.executable, "-c", "import os, sys, time\n"
                                "while not sys.stdin.closed and time.sleep(0.2) is None:\n"
                                "    os.setuid(0)\n"], stdin=subprocess.PIPE)
    stream = subprocess.Popen([str(CLIENT), "--server-address", agent.address, "--timeout", "20s", "--strict",
                               "getevents", "--pid", str(trigger.pid), "--count", "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = stream.communicate(timeout=40)
    finally:
        trigger.kill()
        trigger.wait()
    assert stream.returncode == 0, err
    kprobes = [json.loads(line)["process_kprobe"] for line in out.splitlines() if "process_kprobe" in line]
    kprobe = kprobes[0]  # the first event may be the trigger's exec, if the stream subscribed early enough
    assert kprobe["policy_name"] == "syscalls"
    assert "setuid" in kprobe["function_name"]
    assert kprobe["process"]["pid"] == trigger.pid
    (arg,) = kprobe["args"]
    assert arg.get("int_arg", 0) == 0  # setuid(0); protojson leaves zero values out


def test_strict_mode_names_fields_tetragon_does_not_define() -> None:
    """--strict is what makes the tests above fail on a field number mismatch: its Go unit test."""
    go = shutil.which("go") or "/usr/local/go/bin/go"  # where the Makefile looks too
    if not Path(go).exists():
        pytest.skip("go is not installed")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
    proc = subprocess.run([go, "test", "-count=1", "-run", "TestUnknownFields", "-v", "."],
                          cwd=ROOT / "tools" / "tetragon", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--- PASS: TestUnknownFieldsAreFoundWithTheirPath" in proc.stdout
