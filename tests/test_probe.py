"""The kernel feature probe, against the real kernel the suite runs on.

That is the development/CI machine (see /work/shared/reference/kernel.md), or one of the stock Debian
kernels `make vmtest` boots under QEMU, which sets LANNER_TEST_KERNEL (tests/vm/). The expected
verdicts of each kernel are in tests/vm/expectations.py and docs/kernels.md shows the same table: if
the probe reports anything else, either the probe or the kernel changed, and both deserve a look.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lanner.bpf.objects import BpfError, Program
from lanner.kernel import probe
from lanner.kernel.probe import FEATURES, MECHANISM_PREFERENCE, PROBE_OBJECT, Feature, ProbeResult, run_probe
from tests.vm import expectations as kx

pytestmark = pytest.mark.bpf

KERNEL = kx.current()  # LANNER_TEST_KERNEL: "host" (default), or "6.1", "6.12" in the make vmtest guests
EXPECTED_YES = set(KERNEL.supported)
EXPECTED_NO = set(KERNEL.unsupported)
ON_HOST = KERNEL.name == kx.HOST
CGROUP_UNIFIED = Path("/sys/fs/cgroup/unified")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def result() -> ProbeResult:
    assert PROBE_OBJECT.exists(), f"{PROBE_OBJECT} missing: run 'make bpf'"
    return run_probe()


def _all_netns_inodes() -> set[int]:
    """The network namespace of every live task (threads included) on the machine."""
    inodes = set()
    for ns in Path("/proc").glob("[0-9]*/task/[0-9]*/ns/net"):
        try:
            inodes.add(ns.stat().st_ino)
        except OSError:  # the task exited while we looked
            pass
    return inodes


def _leftover_cgroups() -> list[Path]:
    return sorted(CGROUP_UNIFIED.glob("lanner-probe*"))


# ----------------------------------------------------------------------------- verdicts
def test_every_feature_is_reported_once(result):
    assert list(result.features) == list(FEATURES)
    assert EXPECTED_YES | EXPECTED_NO == set(FEATURES)
    assert all(f.name == name for name, f in result.features.items())


@pytest.mark.parametrize("name", sorted(EXPECTED_YES))
def test_supported_here(result, name):
    assert result.supports(name), result.features[name].detail


@pytest.mark.parametrize("name", sorted(EXPECTED_NO))
def test_unsupported_here(result, name):
    assert not result.supports(name), result.features[name].detail


def test_supports_is_false_for_unknown_names(result):
    assert result.supports("tracepoint")
    assert not result.supports("no_such_feature")


def test_reasons_name_the_cause(result):
    d = {n: f.detail for n, f in result.features.items()}
    for name, words in KERNEL.reasons.items():
        assert words in d[name], d[name]
    # libbpf's misleading memlock guess must not leak into the reason
    assert not any("ulimit" in text for text in d.values())
    if not ON_HOST:
        # Debian's kernels refuse the helper in the verifier (no CONFIG_BPF_KPROBE_OVERRIDE)
        assert d["override_return"].startswith("program load refused (bpf_override_return in a kprobe")
        assert "(EINVAL)" in d["override_return"], d["override_return"]
        return
    for name in ("kprobe", "kretprobe"):
        assert "attach failed" in d[name] and "CONFIG_KPROBES" in d[name], d[name]
    for name in ("fentry", "fexit", "fmod_ret", "lsm", "d_path"):
        assert d[name].startswith("program load refused") and "(EPERM)" in d[name], d[name]
        assert "trampolines denied" in d[name], d[name]
    # the verifier's own words, not a generic errno
    assert "cannot use helper bpf_override_return" in d["override_return"], d["override_return"]


def test_supported_details_say_what_was_attached(result):
    assert "lanner-probe-" in result.features["cgroup_sock_addr"].detail
    assert "throwaway netns" in result.features["tc"].detail
    assert "throwaway netns" in result.features["xdp"].detail
    assert "getpid" in result.features["uprobe"].detail
    attached = {"kprobe": "kprobe __x64_sys_getpgid", "kretprobe": "kretprobe __x64_sys_getpgid",
                "fentry": "fentry security_file_open", "fexit": "fexit security_file_open",
                "fmod_ret": "fmod_ret security_file_open", "lsm": "lsm file_open",
                "d_path": "bpf_d_path in fentry vfs_truncate"}
    for name, where in attached.items():
        if name in EXPECTED_YES:
            assert result.features[name].detail == f"loaded and attached: {where}"


def test_unavailable_reasons_cover_exactly_the_unsupported(result):
    reasons = result.unavailable_reasons()
    assert sorted(r.split(":", 1)[0] for r in reasons) == sorted(EXPECTED_NO)
    assert all(len(r.split(": ", 1)[1]) > 20 for r in reasons)


def test_probe_is_fast(result):
    # 1.5 s on the host; the matrix guests run under QEMU TCG, 12-20x slower
    assert 0 < result.duration_s < KERNEL.probe_budget_s, f"probe took {result.duration_s:.2f} s"


# ----------------------------------------------------------------------------- mechanism choice
def test_best_mechanism_on_this_kernel(result):
    assert {kind: result.best_mechanism(kind) for kind in MECHANISM_PREFERENCE} == dict(KERNEL.best)
    if ON_HOST:
        assert result.best_mechanism("kernel_function") == "tracepoint"
        assert result.best_mechanism("kernel_function_return") == "tracepoint"
        assert result.best_mechanism("enforcement") == "send_signal"
    else:  # fentry before kprobe, the BPF LSM for security hooks and enforcement
        assert result.best_mechanism("kernel_function") == "fentry"
        assert result.best_mechanism("kernel_function_return") == "fexit"
        assert result.best_mechanism("security_hook") == "lsm"
        assert result.best_mechanism("enforcement") == "lsm"
    assert result.best_mechanism("kernel_event") == "tp_btf"
    assert result.best_mechanism("network_connect") == "cgroup_sock_addr"
    assert result.best_mechanism("packet") == "tc"
    with pytest.raises(KeyError, match="unknown hook kind"):
        result.best_mechanism("kernel_fuction")


def _synthetic(supported: set[str]) -> ProbeResult:
    return ProbeResult("test", {n: Feature(n, n in supported, "synthetic") for n in FEATURES})


def test_best_mechanism_prefers_fentry_then_kprobe():
    assert _synthetic({"fentry", "kprobe", "tracepoint"}).best_mechanism("kernel_function") == "fentry"
    assert _synthetic({"kprobe", "tracepoint"}).best_mechanism("kernel_function") == "kprobe"
    assert _synthetic({"lsm", "fmod_ret", "send_signal"}).best_mechanism("enforcement") == "lsm"
    assert _synthetic(set()).best_mechanism("kernel_function") == "none"


# ----------------------------------------------------------------------------- cleanup
def test_no_scratch_cgroup_is_left(result):
    assert result.supports("cgroup_sock_addr")
    assert _leftover_cgroups() == []


def test_scratch_cgroup_is_removed_when_attach_fails(monkeypatch):
    def refuse(self: Program, path: str):
        assert Path(path).is_dir() and Path(path).parent == CGROUP_UNIFIED  # never the root cgroup
        raise BpfError("attach (simulated)", errno.EBUSY)

    monkeypatch.setattr(Program, "attach_cgroup", refuse)
    feat = probe.check_cgroup_sock_addr(PROBE_OBJECT, CGROUP_UNIFIED)
    assert not feat.supported and "(EBUSY)" in feat.detail
    assert _leftover_cgroups() == []


def _wait_gone(inode: int, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while inode in _all_netns_inodes():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_tc_and_xdp_run_in_a_throwaway_netns_that_disappears():
    host_ns = probe.netns_inode()
    run = probe.probe_netdev(PROBE_OBJECT)
    assert [(f.name, f.supported) for f in run.features] == [("tc", True), ("xdp", True)], run.features
    assert run.netns_inode is not None and run.netns_inode != host_ns
    assert _wait_gone(run.netns_inode), "a task still lives in the probe's network namespace"
    assert not os.path.exists("/var/run/netns") or not list(Path("/var/run/netns").glob("lanner*"))


def test_host_loopback_is_untouched(result):
    assert result.supports("tc") and result.supports("xdp")
    link = subprocess.run(["ip", "-d", "link", "show", "dev", "lo"], capture_output=True, text=True, check=True)
    assert "xdp" not in link.stdout
    qdisc = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True, check=True)
    assert "clsact" not in qdisc.stdout


def test_netns_child_failure_is_reported_and_cleaned_up(monkeypatch):
    def explode(feature: str, prog: Program) -> Feature:
        raise RuntimeError("simulated attach crash")

    monkeypatch.setattr(probe, "_netdev_attach", explode)
    run = probe.probe_netdev(PROBE_OBJECT)
    assert [f.supported for f in run.features] == [False, False]
    assert all("simulated attach crash" in f.detail for f in run.features)
    assert run.netns_inode is not None and _wait_gone(run.netns_inode)


@pytest.mark.parametrize("flags, why", [(0, "still in the host network namespace"), (0x1, "unshare(CLONE_NEWNET)")])
def test_netns_child_never_attaches_outside_a_new_netns(monkeypatch, flags, why):
    """If unshare fails, or 'succeeds' without a new namespace, nothing is attached anywhere."""
    monkeypatch.setattr(probe, "CLONE_NEWNET", flags)
    run = probe.probe_netdev(PROBE_OBJECT)
    assert [f.supported for f in run.features] == [False, False]
    assert all(why in f.detail for f in run.features), run.features
    qdisc = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True, check=True)
    assert "clsact" not in qdisc.stdout


def test_no_probe_program_stays_loaded(result):
    """Every object was closed: no program from probe.bpf.o is still in the kernel."""
    deadline = time.monotonic() + 2.0
    while True:
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True)
        left = [p["name"] for p in json.loads(out.stdout) if p.get("name", "").startswith("probe_")]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == []


# ----------------------------------------------------------------------------- quiet, output
def test_libbpf_output_is_debug_only_while_probing(caplog):
    caplog.set_level(logging.DEBUG)
    run_probe()
    libbpf = [r for r in caplog.records if r.name == "lanner.libbpf"]
    assert libbpf, "expected libbpf's messages in logging"
    assert all(r.levelno == logging.DEBUG for r in libbpf), [r.getMessage() for r in libbpf if r.levelno > 10]


def test_module_cli_prints_json_and_nothing_else():
    p = subprocess.run([sys.executable, "-m", "lanner.kernel.probe", "-o", "json"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    doc = json.loads(p.stdout)
    assert set(doc) >= {"kernel_release", "duration_ms", "features", "best_mechanism"}
    assert doc["kernel_release"] == os.uname().release
    assert list(doc["features"]) == list(FEATURES)
    assert {n for n, f in doc["features"].items() if f["supported"]} == EXPECTED_YES
    assert all(isinstance(f["detail"], str) and f["detail"] for f in doc["features"].values())


def test_table_names_every_feature(result):
    table = result.format_table()
    for name in FEATURES:
        verdict = "yes" if name in EXPECTED_YES else "no"
        assert re.search(rf"^{name}\s+{verdict}\s+\S", table, re.M), name
    assert result.kernel_release in table.splitlines()[0]


def test_main_table_and_bad_option(capsys):
    assert probe.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kernel ") and "best mechanism" in out
    with pytest.raises(SystemExit) as exc:
        probe.main(["-o", "xml"])
    assert exc.value.code == 2


def test_missing_object_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="make bpf"):
        run_probe(tmp_path / "nope.bpf.o")


# ----------------------------------------------------------------------------- reason extraction
def test_verifier_reason_picks_the_verifier_verdict_from_a_truncated_log():
    log = "\n".join([
        "5: (85) call bpf_d_path#147",  # the BEGIN marker was cut off with the head of the log
        "helper call is not allowed in probe",
        "processed 6 insns (limit 1000000) max_states_per_insn 0",
        "-- END PROG LOAD LOG --",
        "libbpf: prog 'x': failed to load: -22",
    ])
    assert probe.verifier_reason(log) == "helper call is not allowed in probe"


def test_verifier_reason_falls_back_to_libbpf_complaints_only():
    log = "\n".join([
        "libbpf: loading kernel BTF '/sys/kernel/btf/vmlinux': 0",
        "libbpf: prog 'probe_fentry': failed to find kernel BTF type ID of 'nope': -3",
        "libbpf: prog 'probe_fentry': failed to load: -3",
    ])
    assert probe.verifier_reason(log) == "failed to find kernel BTF type ID of 'nope': -3"
    assert probe.verifier_reason("libbpf: loading kernel BTF '/sys/kernel/btf/vmlinux': 0") == ""


# ----------------------------------------------------------------------------- kernel matrix (make vmtest)
# The issue's promise per kernel: Debian 6.1 and 6.12 offer kprobes, fentry, fmod_ret and the BPF LSM but
# not bpf_override_return (no CONFIG_FUNCTION_ERROR_INJECTION); the CI host hooks kernel functions
# through tracepoints only.
ISSUE_VERDICTS = {
    kx.HOST: {"tracepoint": True, "kprobe": False, "fentry": False, "lsm": False, "fmod_ret": False,
              "override_return": False},
    "6.1": {"kprobe": True, "fentry": True, "lsm": True, "fmod_ret": True, "override_return": False},
    "6.12": {"kprobe": True, "fentry": True, "lsm": True, "fmod_ret": True, "override_return": False},
}


def test_this_is_the_kernel_the_matrix_meant():
    assert kx.release_matches(KERNEL, os.uname().release), \
        f"LANNER_TEST_KERNEL={KERNEL.name} but this kernel is {os.uname().release}"
    if not ON_HOST:
        lsms = Path("/sys/kernel/security/lsm").read_text().strip().split(",")
        assert "bpf" in lsms, f"guest booted without lsm=...,bpf: {lsms}"


def test_lanner_probe_json_reports_what_this_kernel_offers():
    """`lanner probe -o json` (the CLI) on every kernel of the matrix and on the host."""
    p = subprocess.run([sys.executable, "-m", "lanner", "probe", "-o", "json"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    feats = {n: f["supported"] for n, f in doc["features"].items()}
    assert {n: feats[n] for n in ISSUE_VERDICTS[KERNEL.name]} == ISSUE_VERDICTS[KERNEL.name], doc["features"]
    assert {n for n, ok in feats.items() if ok} == EXPECTED_YES
    assert doc["best_mechanism"] == dict(KERNEL.best)
    assert kx.release_matches(KERNEL, doc["kernel_release"])
    for name in EXPECTED_NO:
        assert doc["features"][name]["detail"], name  # every "no" says why


def test_every_matrix_kernel_has_expectations():
    from tests.vm.run import load_kernels

    names = [k.name for k in load_kernels()]
    assert names and set(names) <= set(kx.EXPECTATIONS), f"add expectations for {set(names) - set(kx.EXPECTATIONS)}"
    assert set(kx.EXPECTATIONS) == {kx.HOST, *names}, "expectations for a kernel the matrix no longer boots"
    assert set(ISSUE_VERDICTS) == set(kx.EXPECTATIONS)


def test_docs_tables_match_the_expectations():
    """docs/kernels.md shows exactly what these tests assert, kernel by kernel."""
    features = kx.docs_table("vmtest-features")
    mechanisms = kx.docs_table("vmtest-mechanisms")
    assert list(features) == list(kx.EXPECTATIONS) == list(mechanisms)
    for name, exp in kx.EXPECTATIONS.items():
        assert features[name] == {f: "yes" if f in exp.supported else "no" for f in FEATURES}, name
        assert mechanisms[name] == dict(exp.best), name
