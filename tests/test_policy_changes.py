"""matchNamespaceChanges / matchCapabilityChanges against real processes on this kernel.

Each child is a fresh exec of python that opens files under the test's directory, changes a namespace
(unshare) or a capability (capset) and opens more files. The policy (a syscall kprobe on openat with a
Prefix on the test's directory) reports only opens after a change of what the selector lists, and
only the first of them: the reported state becomes the new reference (Tetragon's semantics).
"""

from __future__ import annotations

import subprocess
import sys
import time

import orjson

import pytest

from lanner.exporter.api.gen.tetragon import sensors_pb2
from tests.test_policy_engine import Loaded, body, collect, env, policy_yaml  # noqa: F401 (fixture)

pytestmark = pytest.mark.bpf

# steps: "open:NAME" (openat, errors ignored), "unshare:uts|net", "dropcap:N" (clear capability N from
# the effective set with capset)
CHILD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Hdr(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
d = sys.argv[1]
for step in sys.argv[2:]:
    what, arg = step.split(":")
    if what == "open":
        try:
            os.close(os.open(os.path.join(d, arg), os.O_RDONLY))
        except OSError:
            pass
    elif what == "unshare":
        if libc.unshare({"uts": 0x04000000, "net": 0x40000000}[arg]):  # CLONE_NEWUTS, CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "unshare")
    elif what == "dropcap":
        h, data = Hdr(0x20080522, 0), (Data * 2)()
        if libc.capget(ctypes.byref(h), data):
            raise OSError(ctypes.get_errno(), "capget")
        n = int(arg)
        data[n // 32].effective &= ~(1 << (n % 32))
        if libc.capset(ctypes.byref(h), data):
            raise OSError(ctypes.get_errno(), "capset")
"""


def run_child(d: str, *steps: str) -> None:
    subprocess.run([sys.executable, "-c", CHILD, d, *steps], check=True, timeout=30)


def opened(evs: list[dict]) -> list[str]:
    return [body(e)["args"][1]["string_arg"].rsplit("/", 1)[1] for e in evs]


def spec(prefix: str, changes: str) -> str:
    return f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 0
        type: int
      - index: 1
        type: string
      selectors:
      - matchArgs:
        - index: 1
          operator: Prefix
          values: ["{prefix}/"]
{changes}
    """


def test_namespace_changes_in(env, tmp_path):
    agent, engine = env
    d = str(tmp_path)
    changes = "        matchNamespaceChanges:\n        - operator: In\n          values: [Uts]"

    def run():
        run_child(d, "open:plain1", "open:plain2")  # never changes: silent
        run_child(d, "open:before", "unshare:net", "open:net_only", "unshare:uts", "open:after",
                  "open:after2")

    with Loaded(engine, policy_yaml("ns-changes-in", spec(d, changes)), "ns-changes-in") as st:
        assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
        evs = collect(agent, engine, run, "ns-changes-in", settle=0.3)
    # a Net change is not listed; after the Uts change only the first open reports (new reference)
    assert opened(evs) == ["after"]


def test_namespace_changes_notin(env, tmp_path):
    agent, engine = env
    d = str(tmp_path)
    changes = "        matchNamespaceChanges:\n        - operator: NotIn\n          values: [Uts]"

    def run():
        run_child(d, "open:before", "unshare:uts", "open:uts_only", "unshare:net", "open:after", "open:after2")

    with Loaded(engine, policy_yaml("ns-changes-notin", spec(d, changes)), "ns-changes-notin") as st:
        assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
        evs = collect(agent, engine, run, "ns-changes-notin", settle=0.3)
    assert opened(evs) == ["after"]


CAP_NET_RAW, CAP_SYS_ADMIN = 13, 21


def test_capability_changes_in_and_notin(env, tmp_path):
    agent, engine = env
    d_in, d_notin = tmp_path / "in", tmp_path / "notin"
    d_in.mkdir()
    d_notin.mkdir()
    changes_in = ("        matchCapabilityChanges:\n        - type: Effective\n          operator: In\n"
                  "          values: [CAP_NET_RAW]")
    changes_notin = changes_in.replace("operator: In", "operator: NotIn")

    def run():
        for d in (str(d_in), str(d_notin)):
            run_child(d, "open:plain")  # no change: silent
            run_child(d, "open:before", f"dropcap:{CAP_NET_RAW}", "open:netraw", "open:netraw2")
            run_child(d, "open:before", f"dropcap:{CAP_SYS_ADMIN}", "open:sysadmin", "open:sysadmin2")

    with Loaded(engine, policy_yaml("cap-changes-in", spec(str(d_in), changes_in)), "cap-changes-in") as st1, \
            Loaded(engine, policy_yaml("cap-changes-notin", spec(str(d_notin), changes_notin)),
                   "cap-changes-notin") as st2:
        assert st1.state == st2.state == sensors_pb2.TP_STATE_ENABLED, (st1.error, st2.error)
        agent.drain()
        engine.handle(engine.ring.read_batch(1 << 20), False)
        run()
        time.sleep(0.3)
        agent.drain()
        evs = []
        for _ in range(20):
            raws = engine.ring.read_batch(1 << 20)
            if not raws:
                break
            evs += [e for e in engine.handle(raws, True)]
    by = {"cap-changes-in": [], "cap-changes-notin": []}
    for e in evs:
        if e.policy_name in by:
            by[e.policy_name].append(orjson.loads(e.line))
    assert opened(by["cap-changes-in"]) == ["netraw"]
    assert opened(by["cap-changes-notin"]) == ["sysadmin"]
