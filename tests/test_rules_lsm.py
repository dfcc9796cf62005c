"""The rule library's BPF LSM variants, where the kernel has BPF LSM programs (the Debian guests of `make vmtest`;
the CI host has none, and there the rules only load as load_error): one agent with the LSM rules, each triggered
by the test's own child on a file the test made, with a near-miss that stays silent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lanner.rules import catalog
from tests.conftest import start_agent

pytestmark = pytest.mark.bpf
LSM_RULES = {r.name: r for r in catalog.load_catalog() if r.name.endswith("-lsm")}


def _has_bpf_lsm() -> bool:
    try:
        return "bpf" in Path("/sys/kernel/security/lsm").read_text().split(",")
    except OSError:
        return False


@pytest.fixture(scope="module")
def lsm_agent(tmp_path_factory):
    if not _has_bpf_lsm():
        pytest.skip("no BPF LSM on this kernel (lsm=...,bpf): the LSM rules load as load_error (tests/test_rules.py)")
    files = [x for r in LSM_RULES.values() for x in ("--tracing-policy", str(r.path))]
    a = start_agent(tmp_path_factory.mktemp("lsm-agent"), *files)
    try:
        _wait_enabled(a, set(LSM_RULES))  # start-up policies load after ready (seconds under TCG)
        yield a, tmp_path_factory.mktemp("lsm")
    finally:
        a.stop()


def _wait_enabled(agent, names: set[str], timeout: float = 180.0) -> None:
    from lanner.client import AgentClient

    deadline = time.monotonic() + timeout
    while True:
        with AgentClient(agent.address, timeout=30) as c:
            states = {p.name: p.state for p in c.list_policies()}
        if all(states.get(n) == 1 for n in names):  # TP_STATE_ENABLED
            return
        assert time.monotonic() < deadline, f"LSM rules not enabled: {states}"
        time.sleep(0.5)


def _lsm_events(agent, rule: str, pid: int) -> list[dict]:
    return [e["process_lsm"] for e in agent.events() if "process_lsm" in e
            and e["process_lsm"].get("policy_name") == rule and e["process_lsm"]["process"]["pid"] == pid]


def _run(code: str, cwd: Path) -> int:
    p = subprocess.Popen([sys.executable, "-c", code], cwd=cwd)
    assert p.wait(timeout=120) == 0, code
    return p.pid


def _wait(agent, rule: str, pid: int) -> dict:
    agent.wait_for(lambda _: _lsm_events(agent, rule, pid), timeout=60, what=f"{rule} event")
    return _lsm_events(agent, rule, pid)[0]


def test_credential_open_lsm_sees_a_relative_open(lsm_agent):
    """A fake key opened by a relative path: the syscall rules see "id_ed25519", the LSM hook the full path."""
    agent, tmp = lsm_agent
    ssh = tmp / uuid.uuid4().hex[:8] / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "id_ed25519").write_text("not a key\n")
    (ssh / "id_ed25519.pub").write_text("not a key\n")
    miss = _run("open('id_ed25519.pub').close()", ssh)
    hit = _run("open('id_ed25519').close()", ssh)
    ev = _wait(agent, "lanner-credential-open-lsm", hit)
    assert ev["function_name"] == "file_open" and ev["args"][0]["file_arg"]["path"] == str(ssh / "id_ed25519"), ev
    assert {"T1552.004", "TA0006"} <= set(ev["tags"]), ev
    time.sleep(0.5)
    assert not _lsm_events(agent, "lanner-credential-open-lsm", miss)
