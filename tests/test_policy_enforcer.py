"""NotifyEnforcer + spec.enforcers: the selector's decision is stored per thread and an fmod_ret
program on each enforcer call applies argError. Where the kernel lacks fmod_ret (this host) the hook is
unavailable with the reason; where it refuses fmod_ret on syscall functions (Debian: no
CONFIG_FUNCTION_ERROR_INJECTION) the attach fails with the kernel's reason; elsewhere the dup of the
test's child fails with EPERM."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lanner.exporter.api.gen.tetragon import sensors_pb2
from tests.test_policy_engine import Loaded, env, policy_yaml  # noqa: F401 (fixture)

pytestmark = pytest.mark.bpf

SPEC = """
lists:
- name: dups
  type: syscalls
  values: [sys_dup, sys_dup2]
enforcers:
- calls: ["list:dups"]
kprobes:
- call: sys_dup
  syscall: true
  args:
  - index: 0
    type: int
  selectors:
  - matchArgs:
    - index: 0
      operator: Equal
      values: ["987"]
    matchActions:
    - action: NotifyEnforcer
      argError: -1
"""
CHILD = ("import ctypes, os; os.dup2(0, 987); libc = ctypes.CDLL(None, use_errno=True); "
         "print(libc.dup(987), ctypes.get_errno())")


def test_notify_enforcer(env):
    _, engine = env
    with Loaded(engine, policy_yaml("enforce-dup", SPEC), "enforce-dup") as st:
        if not engine.probe.get("fmod_ret"):
            assert st.state == sensors_pb2.TP_STATE_LOAD_ERROR
            assert "NotifyEnforcer needs fmod_ret programs on the spec.enforcers calls (__x64_sys_dup, " \
                   "__x64_sys_dup2), which this kernel lacks" in st.error, st.error
            return
        if st.state != sensors_pb2.TP_STATE_ENABLED:
            assert "fmod_ret on __x64_sys_dup refused by the kernel" in st.error, st.error
            return
        assert "+fmod_ret __x64_sys_dup" in st.info, st.info
        r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
        assert r.stdout.split() == ["-1", "1"], r  # EPERM from the enforcer, instead of a new fd
        ok = subprocess.run([sys.executable, "-c", CHILD.replace("987", "986")], capture_output=True, text=True,
                            timeout=60)
        assert ok.stdout.split()[0] != "-1", ok  # another fd: not enforced
