"""The verifier budget: every BPF program lanner ships loads on this kernel (host or matrix guest) with at most
20 % of the verifier's 1M-instruction limit, quickly, and docs/kernels.md shows what it costs here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lanner.kernel import budget
from tests.vm.expectations import current, docs_table

pytestmark = pytest.mark.bpf

# the probe feature a program type needs; programs not listed load on every kernel lanner supports
NEEDS = {
    "generic_fentry": "fentry", "generic_fexit": "fexit", "generic_lsm": "lsm", "generic_fmodret": "fmod_ret",
    "generic_tp_btf": "tp_btf", "gen_sys_enter": "tp_btf", "gen_sys_exit": "tp_btf",
}


@pytest.fixture(scope="module")
def costs(mounts) -> list[budget.ProgramCost]:
    return budget.measure()


def test_every_program_is_measured_and_within_the_budget(costs):
    assert {c.program for c in costs} >= {"lanner_exec", "generic_tp", "generic_uprobe", "generic_kprobe",
                                          "gen_sys_enter", "gen_sys_enter_r", "generic_fentry", "generic_lsm",
                                          "from_pod", "to_pod"}
    bad = [c for c in costs if c.status not in ("ok", "unsupported") or c.insns > budget.BUDGET]
    assert not bad, "over the verifier budget or rejected:\n" + budget.table(bad)


def test_a_program_is_unsupported_only_where_the_kernel_lacks_its_type(costs):
    supported = current().supported
    for c in costs:
        need = NEEDS.get(c.program)
        if need is None or need in supported:
            assert c.status == "ok", f"{c.object}:{c.program} should load on this kernel: {c.status} {c.reason}"
            assert c.insns > 0 and c.verify_us > 0, f"{c.program}: no verifier statistics parsed"
        else:
            assert c.status == "unsupported", f"{c.program}: {need} is not offered here, yet {c.status}"


def test_the_generic_programs_verify_fast(costs):
    """Start time: the objects the engine loads for a first policy verify in well under the 0.5 s target
    on the host (the matrix guests run under TCG, 12-20x slower)."""
    limit_ms = 500.0 * current().slowdown
    first_policy = [c for c in costs if c.program in ("generic_tp", "generic_uprobe", "generic_uretprobe")]
    total = sum(c.verify_us for c in first_policy) / 1000
    assert total <= limit_ms, budget.table(first_policy)


def test_docs_table_matches_this_kernel(costs):
    """docs/kernels.md's budget table has a column per kernel; this kernel's figures there are within 25 %
    of what was measured now (the same clang output and verifier give the same count)."""
    doc = docs_table("verifier-budget")
    col = doc.get(current().name)
    assert col is not None, f"docs/kernels.md verifier-budget table has no column {current().name!r}"
    for c in costs:
        if c.status != "ok":
            continue
        cell = col.get(c.program, "")
        assert cell, f"docs/kernels.md verifier-budget table: no row for {c.program}"
        documented = int(cell.replace(",", "").split()[0])
        assert abs(documented - c.insns) <= 0.25 * max(c.insns, 1000), (
            f"{c.program}: docs say {documented:,}, measured {c.insns:,} on {current().name}")


def test_cli_prints_the_budget_as_json():
    out = subprocess.run([sys.executable, "-m", "lanner", "probe", "--programs", "-o", "json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    doc = json.loads(out.stdout)
    assert doc["budget"] == 200_000 and doc["limit"] == 1_000_000
    progs = {p["program"]: p for p in doc["programs"]}
    assert progs["generic_tp"]["status"] == "ok"
    assert 0 < progs["generic_tp"]["percent_of_limit"] <= 20.0
    assert {"insns", "peak_states", "verify_us", "status", "reason"} <= set(progs["lanner_exec"])
