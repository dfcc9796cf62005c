"""Degrade, never die: a BPF object the kernel refuses (forced with the test-only LANNER_TEST_FAIL_LOAD) costs
the policies that need it, listed as load_error / partially_enabled with the reason everywhere the agent
reports policies, while the process sensor keeps streaming; the engine loads nothing before a policy needs it.

SAFETY: the policies here only post (no enforcement); every agent is stopped by PID in a finally.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.bpf_progs import fd_ids, loaded_progs, map_names
from tests.vm.expectations import current
from tests.conftest import start_agent, wait_exec, wait_exit
from tests.policy_specs import TP_HOOK, policy_yaml

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[1]
LANNER = [sys.executable, "-m", "lanner"]
SYSCALL_HOOK = """
  kprobes:
  - call: sys_getppid
    syscall: true
"""


def _cli(agent, *args: str) -> subprocess.CompletedProcess:
    """The CLI against the agent, with a reply deadline scaled for the kernel matrix's TCG guests (a list of the
    73 refused rules took more than the CLI's default 10 s there)."""
    wait = 10 * current().slowdown
    return subprocess.run(LANNER + list(args) + ["--server-address", agent.address, "--timeout", str(wait)],
                          capture_output=True, text=True, timeout=60 + wait)


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _exec_flows(agent, tmp_path: Path, tag: str) -> None:
    """A process started now is reported (exec and exit): the process sensor streams."""
    p = subprocess.run(["/bin/sh", "-c", f"exit 7 # {tag}"])
    assert p.returncode == 7
    wait_exec(agent, arguments=f'-c "exit 7 # {tag}"')
    assert wait_exit(agent, arguments=f'-c "exit 7 # {tag}"')["status"] == 7


def test_a_refused_object_costs_its_policies_not_the_agent(tmp_path):
    tp_only, mixed = tmp_path / "tp-only.yaml", tmp_path / "mixed.yaml"
    tp_only.write_text(policy_yaml("degrade-tp-only", TP_HOOK))
    mixed.write_text(policy_yaml("degrade-mixed", TP_HOOK + SYSCALL_HOOK))
    env = {**os.environ, "LANNER_TEST_FAIL_LOAD": "generic_tp.bpf.o"}
    a = start_agent(tmp_path, "--tracing-policy", str(tp_only), "--tracing-policy", str(mixed),
                    "--metrics-server", "127.0.0.1:0", env=env)
    try:
        _exec_flows(a, tmp_path, "before")
        p = _cli(a, "tp", "list", "-o", "json")
        assert p.returncode == 0, p.stderr
        listed = {x["name"]: x for x in json.loads(p.stdout)}
        bad, half = listed["degrade-tp-only"], listed["degrade-mixed"]
        assert bad["state"] == "TP_STATE_LOAD_ERROR"
        for text in (bad["error"], half["error"]):  # the object, the errno, the "verifier's" last line
            assert "generic_tp.bpf.o" in text and "Argument list too long" in text and "LANNER_TEST_FAIL_LOAD" in text
        assert half["state"] == "TP_STATE_PARTIALLY_ENABLED"
        assert "sys_getppid" in half["info"] and "attach failed" in half["info"]
        st = a.status()
        assert st["policy_states"] == {"load_error": 1, "partially_enabled": 1} and st["policies"] == 2
        problems = {x["name"]: x for x in st["policy_problems"]}
        assert problems["degrade-tp-only"]["state"] == "load_error"
        assert "generic_tp.bpf.o" in problems["degrade-mixed"]["error"]
        text = _cli(a, "status").stdout
        assert "1 load_error, 1 partially_enabled" in text and "degrade-tp-only: load_error:" in text
        metrics = urllib.request.urlopen(f"http://{st['metrics_address']}/metrics", timeout=5).read().decode()
        assert _metric(metrics, "tetragon_tracingpolicy_loaded", state="load_error") == 1
        assert _metric(metrics, "tetragon_tracingpolicy_loaded", state="partially_enabled") == 1
        assert _metric(metrics, "tetragon_tracingpolicy_loaded", state="enabled") == 0
        # the hook the kernel did serve works: the mixed policy posts for getppid
        subprocess.run([sys.executable, "-c", "import os; os.getppid()"], check=True)
        a.wait_for(lambda evs: [e for e in evs if e.get("process_kprobe", {}).get("policy_name") == "degrade-mixed"],
                   what="the mixed policy's syscall hook event")
        # a policy added later fails the same way (the object is tried again) and is listed; nothing stops
        later = tmp_path / "later.yaml"
        later.write_text(policy_yaml("degrade-later", TP_HOOK))
        assert _cli(a, "tp", "add", str(later)).returncode == 0
        assert {x["name"]: x["state"] for x in json.loads(_cli(a, "tp", "list", "-o", "json").stdout)}[
            "degrade-later"] == "TP_STATE_LOAD_ERROR"
        _exec_flows(a, tmp_path, "after")
        assert a.proc.poll() is None
    finally:
        rc = a.stop()
    assert rc == 0
    log = a.stderr_path.read_text()
    assert "WARNING lanner.policies: tracing policy degrade-tp-only" in log and "load_error" in log


def test_builtin_rules_that_fail_are_warnings(tmp_path):
    """The default rules need the syscall dispatcher (or fentry/kprobe objects, and the BPF LSM for the LSM
    variants where the kernel has it): refuse every program object."""
    objs = ("generic_sys.bpf.o,generic_fentry.bpf.o,generic_kprobe.bpf.o,generic_tp.bpf.o,generic_lsm.bpf.o,"
            "generic_fmodret.bpf.o,generic_tpbtf.bpf.o,generic_uprobe.bpf.o")
    rules = ROOT / "rules"
    a = start_agent(tmp_path, "--tracing-policy-dir", str(rules), env={**os.environ, "LANNER_TEST_FAIL_LOAD": objs})
    try:
        _exec_flows(a, tmp_path, "rules")
        listed = json.loads(_cli(a, "tp", "list", "-o", "json").stdout)
        assert listed and {x["state"] for x in listed} == {"TP_STATE_LOAD_ERROR"}, listed
        assert all("LANNER_TEST_FAIL_LOAD" in x["error"] or "unavailable" in x["info"] for x in listed)
        assert a.status()["policy_states"] == {"load_error": len(listed)}
    finally:
        rc = a.stop()
    assert rc == 0
    warnings = [line for line in a.stderr_path.read_text().splitlines() if "WARNING lanner.policies" in line]
    assert len(warnings) >= len(listed) and not any(" ERROR " in w for w in warnings)


def test_nothing_of_the_engine_runs_before_a_policy(tmp_path):
    a = start_agent(tmp_path)  # --tracing-policy-dir "": no policy at start
    try:
        st = a.status()
        assert st["sensors"] == ["process"] and st["policies"] == 0
        names = {loaded_progs().get(i, "") for i in fd_ids(a.proc.pid)}  # (the kernel probe may still run)
        assert {"lanner_exec", "lanner_fork", "lanner_exit"} <= names, names
        assert not any(n.startswith("gen") for n in names), names
        assert not any(n.startswith("gen_") for n in map_names(fd_ids(a.proc.pid, "map")))
        pol = tmp_path / "first.yaml"
        pol.write_text(policy_yaml("degrade-first", SYSCALL_HOOK))
        assert _cli(a, "tp", "add", str(pol)).returncode == 0
        assert a.status()["sensors"] == ["process", "policy"]
        assert "gen_hooks" in map_names(fd_ids(a.proc.pid, "map"))
    finally:
        rc = a.stop()
    assert rc == 0


def test_ready_does_not_wait_for_start_up_policies(tmp_path):
    pol = tmp_path / "p.yaml"
    pol.write_text(policy_yaml("degrade-startup", SYSCALL_HOOK))
    a = start_agent(tmp_path, "--tracing-policy", str(pol))
    try:
        assert _cli(a, "tp", "list", "-o", "json").returncode == 0  # waits for the start-up policies to settle
    finally:
        a.stop()
    log = a.stderr_path.read_text()
    ready, loaded = log.index("lanner.agent: ready in"), log.index(f"loaded tracing policy file {pol}")
    assert ready < loaded, "the agent waited for its policies before reporting ready"


def test_engine_maps_failing_is_a_listed_load_error_and_a_retry_loads_it(monkeypatch):
    """The engine's own maps cannot be created: the policy is kept as LOAD_ERROR with the reason, add says so,
    and enabling it again (once the cause is gone) loads it."""
    import lanner.sensors.generic.engine as E
    from lanner.agent import Agent, AgentConfig
    from lanner.exporter.api.gen.tetragon import sensors_pb2

    agent = Agent(AgentConfig(export_stdout=False, grpc=None, health_address=None, run_probe=False,
                              policy_engine=False))
    engine = None
    try:
        agent.start()
        engine = agent._make_engine()
        assert not engine.loaded and engine.states() == {}
        real = E.TP_OBJECT
        monkeypatch.setattr(E, "TP_OBJECT", real.with_name("missing.bpf.o"))
        with pytest.raises(ValueError, match="not loaded: the policy engine's maps .*missing.bpf.o.*make bpf"):
            engine.add(policy_yaml("degrade-maps", SYSCALL_HOOK), "test")
        st = engine.status("degrade-maps")
        assert st.state == sensors_pb2.TP_STATE_LOAD_ERROR and "missing.bpf.o" in st.error
        assert engine.problems() == [{"name": "degrade-maps", "namespace": "", "state": "load_error",
                                      "error": st.error}]
        with pytest.raises(ValueError, match="enable it to try loading it again"):
            engine.configure("degrade-maps", "", None, sensors_pb2.TP_MODE_MONITOR)
        monkeypatch.setattr(E, "TP_OBJECT", real)
        engine.configure("degrade-maps", "", True, None)  # the retry
        assert engine.loaded and engine.status("degrade-maps").state == sensors_pb2.TP_STATE_ENABLED
        assert engine.states() == {"enabled": 1}
    finally:
        if engine is not None:
            engine.close()
        agent.close()


def test_a_verifier_log_is_reduced_to_its_reason():
    """The lines a real rejection ends with (generic_tp on 6.18.44-fc-v1300 before the verifier budget work)."""
    from lanner.bpf.objects import BpfError

    log = "\n".join([
        "libbpf: prog 'generic_tp': BPF program load failed: Argument list too long",
        "libbpf: prog 'generic_tp': -- BEGIN PROG LOAD LOG --",
        "10072: (0f) r3 += r9                  ; frame2: R3=map_value(map=gen_heap,ks=4,vs=8408)",
        "; bpf_probe_read_kernel(s->key.s, 16, &str->s[off & 127]); @ generic_core.bpf.h:863",
        "10073: (57) r1 &= 127",
        "BPF program is too large. Processed 1000001 insn",
        "processed 1000001 insns (limit 1000000) max_states_per_insn 200 total_states 87004 peak_states 248670",
        "-- END PROG LOAD LOG --",
        "libbpf: prog 'generic_tp': failed to load: -7",
        "libbpf: failed to load object '/work/main/sensors/generic/bpf/obj/generic_tp.bpf.o'",
    ])
    reason = BpfError("load BPF object generic_tp.bpf.o", 7, log).reason()
    assert reason == ("load BPF object generic_tp.bpf.o: Argument list too long (errno 7): BPF program is too "
                      "large. Processed 1000001 insn / processed 1000001 insns (limit 1000000) max_states_per_insn "
                      "200 total_states 87004 peak_states 248670 / prog 'generic_tp': failed to load: -7")
    assert "\n" not in reason and "; " not in reason
