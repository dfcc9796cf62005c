"""--keep-sensors-on-exit: a Sigkill policy keeps killing while no agent runs; the next agent takes the pins
over (one copy of every program once it has, the same exec_ids, what happened meanwhile exported); a plain
stop removes everything.

SAFETY: the Sigkill policy matches only a copy of /bin/cat in tmp_path (matchBinaries In with that path), so
only the test's own processes can be killed. Pins live in a /sys/fs/bpf/lanner-test-keep-* directory that the
fixture removes (which detaches anything kept) even when the test fails; agents are stopped by PID.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from lanner.bpf import fs
from tests.bpf_progs import fd_ids, links_of, loaded_progs
from tests.conftest import execs, exits, start_agent, wait_exec, wait_exit
from tests.policy_specs import policy_yaml

pytestmark = pytest.mark.bpf


@pytest.fixture
def pins():
    root = Path(f"/sys/fs/bpf/lanner-test-keep-{uuid.uuid4().hex[:8]}")
    yield root
    if root.exists():
        fs.remove_pins(root)  # detaches whatever is still kept


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def _victim(tmp_path: Path) -> tuple[Path, Path]:
    victim = tmp_path / "victim"
    shutil.copy("/bin/cat", victim)
    policy = tmp_path / "kill.yaml"
    policy.write_text(policy_yaml("keep-kill-victim", f"""
    kprobes:
    - call: sys_openat
      syscall: true
      selectors:
      - matchBinaries:
        - operator: In
          values: ["{victim}"]
        matchActions:
        - action: Sigkill
    """))
    return victim, policy


def _killed(victim: Path) -> bool:
    rc = subprocess.run([str(victim), "/etc/hostname"], stdout=subprocess.DEVNULL, timeout=30).returncode
    assert rc in (0, -9), rc
    return rc == -9


def _settled(agent, timeout: float = 60.0) -> dict:
    """The agent's status once no policy is loading any more."""
    deadline = time.monotonic() + timeout
    while True:
        st = agent.status()
        if st["policy_states"] and "loading" not in st["policy_states"]:
            return st
        assert time.monotonic() < deadline, f"policies still loading: {st['policy_states']}"
        time.sleep(0.05)


def _enabled_or_skip(agent) -> None:
    st = {x["name"]: x for x in _settled(agent)["policy_problems"]}.get("keep-kill-victim")
    if st and "Argument list too long" in st["error"] and "LANNER_TEST_FAIL_LOAD" not in st["error"]:
        pytest.skip(f"the generic programs do not verify on this kernel yet: {st['error'][:200]}")
    assert agent.status()["policy_states"] == {"enabled": 1}, st


def _sleeper(procs: list) -> subprocess.Popen:
    p = subprocess.Popen(["/bin/sleep", "600"])
    procs.append(p)
    return p


def _attached(pid: int) -> set[int]:
    """The agent's attached programs (the process sensor's and the policies'; not the kernel probe's, which may
    still be running in the background)."""
    names = loaded_progs()
    return {link["prog_id"] for link in links_of(fd_ids(pid))
            if names.get(link["prog_id"], "").startswith(("lanner_", "gen"))}


def _gone(prog_ids: set[int], timeout: float = 10.0) -> bool:
    """The kernel frees a program after its last link (RCU, a work item): wait until none of them is loaded."""
    deadline = time.monotonic() + timeout
    while prog_ids & set(loaded_progs()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _one_copy_each(prog_ids: set[int]) -> dict[str, int]:
    """Program name -> how many links the kernel has for it, among ``prog_ids``."""
    names = loaded_progs()
    out: dict[str, int] = {}
    for link in links_of(prog_ids):
        name = names.get(link["prog_id"], "?")
        out[name] = out.get(name, 0) + 1
    return out


def test_enforcement_while_down_take_over_and_clean_stop(tmp_path, pins, procs):
    victim, policy = _victim(tmp_path)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    run_a.mkdir()
    run_b.mkdir()
    common = ("--bpf-pin-dir", str(pins), "--tracing-policy", str(policy))

    # ---- agent A, stopped with --keep-sensors-on-exit
    a = start_agent(run_a, *common, "--keep-sensors-on-exit")
    try:
        _enabled_or_skip(a)
        assert _killed(victim)
        p1 = _sleeper(procs)
        p1_exec = wait_exec(a, pid=p1.pid)
        a_progs = _attached(a.proc.pid)
    finally:
        rc = a.stop()
    assert rc == 0
    kept = pins / "kept"
    assert sorted(p.name for p in next(kept.glob("process-*")).iterdir()) == ["lanner_exec", "lanner_exit",
                                                                               "lanner_fork"]
    assert (kept / "policies").is_dir() or (kept / "engine" / "sys_enter").exists()
    assert a_progs <= set(loaded_progs()), "the kept programs were unloaded"

    # ---- no agent: the policy still kills; exec/exit are recorded in the kept ring
    assert _killed(victim)
    p2 = subprocess.run(["/bin/sh", "-c", "exit 3 # p2"])
    assert p2.returncode == 3
    p3 = _sleeper(procs)

    # ---- agent B, without the flag: takes over, then detaches A's programs
    b = start_agent(run_b, *common)
    try:
        deadline = time.monotonic() + 30
        while kept.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not kept.exists(), "the kept programs were not released"
        _enabled_or_skip(b)
        assert _killed(victim)
        b_progs = _attached(b.proc.pid)
        assert _gone(a_progs), "a program of the stopped agent is still loaded"
        copies = _one_copy_each(a_progs | b_progs)
        assert copies.get("lanner_exec") == copies.get("lanner_exit") == copies.get("lanner_fork") == 1, copies
        assert all(n == 1 for n in copies.values()), copies
        # what happened while no agent ran is exported, attached to the same process tree
        p2_exec = wait_exec(b, arguments='-c "exit 3 # p2"')
        assert wait_exit(b, arguments='-c "exit 3 # p2"')["status"] == 3
        p3_exec = wait_exec(b, pid=p3.pid)
        assert p3_exec["process"]["parent_exec_id"] == p1_exec["process"]["parent_exec_id"]  # both the test's
        assert p2_exec["process"]["parent_exec_id"] == p1_exec["process"]["parent_exec_id"]
        # a process A reported keeps its exec_id: its exit now resolves to it (the cache was rebuilt)
        p1.kill()
        p1.wait()
        p1_exit = wait_exit(b, pid=p1.pid)
        assert p1_exit["process"]["exec_id"] == p1_exec["process"]["exec_id"]
        assert p1_exit["process"]["binary"] == "/bin/sleep" and "miss" not in p1_exit["process"]["flags"]
        assert b.status()["process_cache"]["size"] > 3
    finally:
        rc = b.stop()
    assert rc == 0
    exec_ids = [e["process"]["exec_id"] for e in execs(a.events()) + execs(b.events())]
    assert len(exec_ids) == len(set(exec_ids)), "an exec was reported twice across the restart"
    assert len(exits(b.events(), pid=p1.pid)) == 1

    # ---- B stopped without the flag: nothing pinned, nothing loaded, nothing enforced
    assert not [p for p in pins.rglob("*")], sorted(pins.rglob("*"))
    assert _gone(b_progs)
    assert not _killed(victim)


def test_kept_pins_of_a_stopped_agent_are_released_by_a_plain_start(tmp_path, pins):
    """An agent kept its programs; the next one (no flag) takes over and its plain stop leaves nothing."""
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
    a = start_agent(tmp_path / "a", "--bpf-pin-dir", str(pins), "--keep-sensors-on-exit")
    try:
        a_progs = _attached(a.proc.pid)
    finally:  # stopped before the pins fixture removes its tree, even when a check fails (else it keeps later)
        rc = a.stop()
    assert len(a_progs) == 3 and rc == 0
    assert a_progs <= set(loaded_progs()) and (pins / "kept").is_dir()
    b = start_agent(tmp_path / "b", "--bpf-pin-dir", str(pins))
    try:
        st = b.status()
        assert st["pin_dir"] == str(pins) and not st["keep_sensors_on_exit"]
        assert not (pins / "kept").exists()  # no policy at start: released once the sensor is attached
        assert _gone(a_progs)
    finally:
        assert b.stop() == 0
    assert sorted(pins.rglob("*")) == []
