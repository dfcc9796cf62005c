"""raw: true tracepoints: a tp_btf program per tracepoint, with BTF-typed TP_PROTO arguments, against
real execs on this kernel."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from lanner.exporter.api.gen.tetragon import sensors_pb2
from tests.test_policy_engine import Loaded, body, collect, env, policy_yaml  # noqa: F401 (fixture)

pytestmark = pytest.mark.bpf


def test_raw_tracepoint_linux_binprm_prefix(env, tmp_path):
    agent, engine = env
    exe = tmp_path / "lanner-rawtp-true"
    shutil.copy("/bin/true", exe)
    spec = f"""
    tracepoints:
    - subsystem: sched
      event: sched_process_exec
      raw: true
      args:
      - index: 2
        type: linux_binprm
      - index: 1
        type: int32
      selectors:
      - matchArgs:
        - index: 0
          operator: Prefix
          values: ["{tmp_path}/"]
    """
    pids: list[int] = []

    def run():
        for cmd in ([str(exe)], ["/bin/true"], [str(exe)]):
            p = subprocess.Popen(cmd)
            assert p.wait(timeout=30) == 0
            pids.append(p.pid)

    with Loaded(engine, policy_yaml("rawtp-exec", spec), "rawtp-exec") as st:
        assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
        assert "tp_btf/sched_process_exec" in st.info, st.info
        evs = collect(agent, engine, run, "rawtp-exec", settle=0.3)
    got = [(body(e)["process"]["pid"], body(e)["args"]) for e in evs]
    want = [{"linux_binprm_arg": {"path": str(exe), "permission": "-rwxr-xr-x"}}]
    # old_pid (TP_PROTO argument 1) is the exec'ing pid: the process itself
    assert got == [(pids[0], want + [{"int_arg": pids[0]}]), (pids[2], want + [{"int_arg": pids[2]}])]
    b = body(evs[0])
    assert (b["subsys"], b["event"], b["policy_name"]) == ("sched", "sched_process_exec", "rawtp-exec")
