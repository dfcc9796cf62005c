"""Shared fixtures. The suite runs as root on a BTF kernel and loads real BPF programs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        pytest.exit("lanner's tests load BPF programs and must run as root", returncode=2)


@pytest.fixture(scope="session")
def mounts():
    from lanner.bpf import fs

    return fs.ensure_mounts()


@pytest.fixture(scope="session")
def process_obj_path() -> Path:
    from lanner.sensors.process import PROCESS_OBJECT

    assert PROCESS_OBJECT.exists(), f"{PROCESS_OBJECT} missing: run 'make bpf'"
    return PROCESS_OBJECT


@pytest.fixture
def python() -> str:
    return sys.executable


# ---------------------------------------------------------------------------------------------------
# A real agent, started as users start it (the `lanner agent` command), stopped by PID.

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field


@dataclass
class RunningAgent:
    proc: subprocess.Popen
    export_file: Path
    socket: Path
    node: str
    stderr_path: Path
    _offset: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def status(self) -> dict:
        from lanner.client import AgentClient

        with AgentClient(self.address, timeout=5) as c:
            return c.status()

    def events(self) -> list[dict]:
        """Every event exported so far (all rotated files included, oldest first)."""
        for _ in range(20):
            try:
                return self._read_events()
            except FileNotFoundError:  # a rotation renamed a file while we listed them: list again
                time.sleep(0.02)
        return self._read_events()

    def _read_events(self) -> list[dict]:
        files = sorted(self.export_file.parent.glob(self.export_file.name + ".*"),
                       key=lambda p: -int(p.name.rsplit(".", 1)[1]) if p.name.rsplit(".", 1)[1].isdigit() else 0)
        out = []
        for f in files + [self.export_file]:
            data = f.read_text()
            data = data[: data.rfind("\n") + 1]  # a line still being written is not an event yet
            out += [json.loads(line) for line in data.splitlines() if line]
        return out

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "event") -> list[dict]:
        """Wait until predicate(events) is truthy; return those events (all of them)."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.events()
            got = predicate(evs)
            if got:
                return evs
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; {len(evs)} events seen; agent log tail:\n"
                                     + self.stderr_path.read_text()[-2000:])
            if self.proc.poll() is not None:
                raise AssertionError("agent died:\n" + self.stderr_path.read_text()[-4000:])
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_agent(tmp_path: Path, *extra: str, node: str = "testnode", env: dict | None = None) -> RunningAgent:
    export = tmp_path / "export" / "events.log"
    sock = tmp_path / "lanner.sock"
    err = tmp_path / "agent.stderr"
    cmd = [sys.executable, "-m", "lanner", "agent", "--no-export-stdout", "--export-filename", str(export),
           "--server-address", f"unix://{sock}", "--info-file", str(tmp_path / "lanner-info.json"),
           "--node-name", node, "--health-server-address", "127.0.0.1:0", "--tracing-policy-dir", "", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(err, "wb"), stdin=subprocess.DEVNULL,
                            env=env)
    agent = RunningAgent(proc, export, sock, node, err)
    info = tmp_path / "lanner-info.json"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError("agent failed to start:\n" + err.read_text()[-4000:])
        if info.exists():
            if not json.loads(info.read_text())["server_address"].startswith("unix://"):
                return agent  # a TCP/TLS agent: its API is up once the info file is written
            try:
                if agent.status().get("ready_s") is not None:
                    wait_startup_policies(agent, extra)
                    return agent
            except (OSError, RuntimeError):
                pass
        if time.monotonic() > deadline:
            agent.stop()
            raise AssertionError("agent not ready after 30 s:\n" + err.read_text()[-4000:])
        time.sleep(0.05)


def wait_startup_policies(agent: RunningAgent, extra: tuple[str, ...]) -> None:
    """The agent is ready before the policies given at start are loaded (they load in the background): a test
    that passes some waits until none is still loading, as it did when they loaded before ready."""
    given = any(a == "--tracing-policy" or a.startswith("--tracing-policy=") for a in extra) or any(
        a == "--tracing-policy-dir" and i + 1 < len(extra) and extra[i + 1] for i, a in enumerate(extra))
    if not given:
        return
    from lanner.client import AgentClient
    from lanner.exporter.api.gen.tetragon import sensors_pb2

    deadline = time.monotonic() + 60
    with AgentClient(agent.address, timeout=30) as c:
        while any(p.state == sensors_pb2.TP_STATE_LOADING for p in c.list_policies()):
            if time.monotonic() > deadline:
                raise AssertionError("start-up policies still loading after 60 s")
            time.sleep(0.05)


@pytest.fixture
def agent(tmp_path):
    a = start_agent(tmp_path)
    yield a
    a.stop()


def execs(events: list[dict], **match) -> list[dict]:
    """process_exec process objects whose fields equal ``match``."""
    out = []
    for e in events:
        p = e.get("process_exec", {}).get("process")
        if p and all(p.get(k) == v for k, v in match.items()):
            out.append(e["process_exec"])
    return out


def exits(events: list[dict], **match) -> list[dict]:
    out = []
    for e in events:
        body = e.get("process_exit")
        if body and all(body["process"].get(k) == v for k, v in match.items()):
            out.append(body)
    return out


def _wait_one(agent: RunningAgent, finder, what: str, timeout: float, match: dict) -> dict:
    evs = agent.wait_for(lambda e: finder(e, **match), timeout=timeout, what=f"{what} {match}")
    found = finder(evs, **match)
    assert len(found) == 1, f"expected one {what} matching {match}, got {len(found)}: {found}"
    return found[0]


def wait_exec(agent: RunningAgent, timeout: float = 10.0, **match) -> dict:
    """The one process_exec body whose process matches ``match``."""
    return _wait_one(agent, execs, "process_exec", timeout, match)


def wait_exit(agent: RunningAgent, timeout: float = 10.0, **match) -> dict:
    return _wait_one(agent, exits, "process_exit", timeout, match)


# ---------------------------------------------------------------------------------------------------
# A real Kubernetes control plane (etcd + kube-apiserver, one per session) and a fresh namespace per
# test: tests/k8s_harness.py. Registered here so every test module shares the one session instance.
from tests.k8s_harness import k8s, k8s_namespace  # noqa: E402,F401
