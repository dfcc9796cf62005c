"""USDT probes (policy ``usdts``) against a real binary with ``.note.stapsdt`` probes: the system python
(Debian builds it with dtrace probes, each behind a semaphore), run as a child of the test."""

from __future__ import annotations

import os
import subprocess

import pytest

from lanner.exporter.api.gen.tetragon import sensors_pb2
from lanner.sensors.generic.usdt import LOC_MEM, UsdtError, find_probes, parse_arg
from tests.test_policy_engine import Loaded, body, collect, env, policy_yaml  # noqa: F401 (fixture)

pytestmark = pytest.mark.bpf

PY = os.path.realpath("/usr/bin/python3")


def _python_with_probes() -> str:
    try:
        find_probes(PY, "python", "audit")
    except (UsdtError, OSError) as exc:
        pytest.skip(f"no USDT probes in {PY}: {exc}")
    return PY


def test_parse_note_arguments():
    a = parse_arg("-4@112(%rsp)")
    assert (a.size, a.signed, a.loc, a.reg, a.disp) == (4, True, LOC_MEM, 7, 112)
    assert parse_arg("8@%r15").reg == 15 and parse_arg("-4@%eax").reg == 0 and parse_arg("4@$-3").disp == -3
    for bad in ("8@%ah", "8@8(%rax,%rbx,2)", "3@%rax", "x"):
        with pytest.raises(UsdtError):
            parse_arg(bad)


def test_usdt_register_and_memory_args_with_semaphore(env, tmp_path):
    agent, engine = env
    py = _python_with_probes()
    spec = f"""
    usdts:
    - path: "{py}"
      provider: python
      name: audit
      args:
      - index: 1
        type: uint64
      - index: 0
        type: string
      selectors:
      - matchArgs:
        - index: 0
          operator: Prefix
          values: ["lanner.usdt."]
    - path: "{py}"
      provider: python
      name: gc__start
      args:
      - index: 0
        type: int32
      selectors:
      - matchArgs:
        - index: 0
          operator: Equal
          values: ["2"]
    """
    code = "import gc, sys; sys.audit('lanner.usdt.one'); sys.audit('other.event'); gc.collect(2)"
    pids: list[int] = []

    def run():
        p = subprocess.Popen([py, "-c", code])
        assert p.wait(timeout=60) == 0
        pids.append(p.pid)

    with Loaded(engine, policy_yaml("usdt-python", spec), "usdt-python") as st:
        assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
        assert "python:audit@0x" in st.info and "ref_ctr" not in st.error, st.info
        evs = collect(agent, engine, run, "usdt-python", settle=0.3)
    mine = [body(e) for e in evs if body(e)["process"]["pid"] == pids[0]]
    # the audit probe only fires because the uprobe's ref_ctr_offset enables its semaphore
    got = [(b["name"], b["args"]) for b in mine]
    # note arg 0 (%rbx): the event name, filtered by matchArgs index 0 (the arg's index, not its position;
    # other.event filtered out in the kernel); note arg 1 (%r15): the audit args tuple, a pointer
    assert got[0][0] == "audit" and got[0][1][1] == {"string_arg": "lanner.usdt.one"}, got
    assert int(next(iter(got[0][1][0].values()))) > 0x1000, got
    got[0] = ("audit", got[0][1][1:])
    # -4@112(%rsp): the generation, read from the stack; gc.collect(2), then the interpreter's own full
    # collections at exit (generation 0 and 1 collections are filtered out)
    assert len(got) >= 2 and all(g == ("gc__start", [{"int_arg": 2}]) for g in got[1:]), got
    b = mine[0]
    assert (b["path"], b["provider"], b["policy_name"]) == (py, "python", "usdt-python")
    assert list(evs[0])[0] == "process_usdt"


def test_usdt_missing_probe_is_unavailable(env):
    _, engine = env
    py = _python_with_probes()
    spec = f"""
    usdts:
    - path: "{py}"
      provider: python
      name: no__such__probe
    """
    with Loaded(engine, policy_yaml("usdt-missing", spec), "usdt-missing") as st:
        assert st.state == sensors_pb2.TP_STATE_LOAD_ERROR
        assert "USDT probe python:no__such__probe not found" in st.error, st.error
