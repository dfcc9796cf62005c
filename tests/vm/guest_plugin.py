"""pytest plugin loaded only in the `make vmtest` guests (tests/vm/guest.sh: ``-p tests.vm.guest_plugin``).

It adjusts, per kernel, the few BPF-marked tests that can't give a meaningful result inside a guest
for a reason outside the harness. It never touches the host run. Every entry says why, and the
pytest header of each guest lists the entries that apply.

* ``XFAIL``: the test fails there deterministically because it asserts the CI host's kernel (for
  example "kprobe is unsupported"). The entries are strict, so once the test is fixed it XPASSes,
  the run fails, and the entry must be removed. The fix belongs in the test: compare with
  ``tests.vm.expectations.current()`` instead of literals.
* ``FLAKY``: a wall-clock deadline sized for the host that a guest usually, but not always, meets.
  The test runs as xfail(strict=False): a pass counts, a miss is reported as xfail with the reason.
  The fix belongs in the test (a deadline scaled by ``tests.vm.expectations.current().slowdown``).
* ``DESELECT``: the test is about user-space throughput or timing, not the kernel. Its wall-clock
  budget is calibrated for the host, and under QEMU TCG (12-20x slower) it fails or takes minutes.
  The host suite still runs it, on every `make test`.

The matrix runs everything else that ``pytest -m bpf`` selects. When tests/vm/run.py boots several
guests per kernel (``VMTEST_SHARD=i/n``, 0-based), guest i keeps every n-th of the remaining tests.
"""

from __future__ import annotations

import os

import pytest

from tests.vm.expectations import EXPECTATIONS, HOST, current_name

GUESTS = frozenset(EXPECTATIONS) - {HOST}

HOST_VERDICTS = ("asserts the CI host's verdicts (kprobe/fentry/lsm unsupported), and this kernel has them; "
                 "fix: compare with tests.vm.expectations.current().supported")

# nodeid -> (kernels, reason)
XFAIL: dict[str, tuple[frozenset[str], str]] = {
    "tests/test_agent_io.py::test_status_and_version_commands": (GUESTS, HOST_VERDICTS),
    "tests/test_agent_io.py::test_probe_command_reports_this_kernel_truthfully": (GUESTS, HOST_VERDICTS),
    "tests/test_grpc_api.py::test_unix_socket_info_file_health_version_info": (GUESTS, HOST_VERDICTS),
}

FLAKY: dict[str, tuple[frozenset[str], str]] = {
    "tests/test_agent_io.py::test_getevents_compact_follows_the_live_stream_with_filters": (
        GUESTS, "gives the getevents client 10 s to start and subscribe; a Python client with gRPC needs "
                "8-12 s to start under TCG"),
    "tests/test_policy_operators.py::test_cli_list_shows_state_mode_hooks_memory_counters": (
        GUESTS, "starts an agent with tests/conftest.py's 30 s readiness deadline; under TCG on a loaded host the "
                "agent needs 11-27 s (seen on 6.12: ready in 26.4 s, the deadline missed)"),
}

DESELECT: dict[str, tuple[frozenset[str], str]] = {
    "tests/test_grpc_api.py::test_slow_client_never_blocks_the_agent_and_drops_are_counted": (
        GUESTS, "asserts the run takes < 60 s; 140-155 s under TCG (gRPC flow control, kernel-independent)"),
    "tests/test_agent_io.py::test_rotation_under_load_loses_no_line": (
        GUESTS, "600 fork+execs, 75 s under TCG; the slow guest also exposes a race in "
                "tests/conftest.py RunningAgent.events() (a rotated file vanishes between glob and read)"),
    "tests/test_export_controls.py::test_agent_rate_limit_reports_exact_drops": (
        GUESTS, "assumes the 20-exec burst fits in one 1 s housekeeping tick; under TCG the drops "
                "are split over two rate_limit_info events (18 + 4)"),
}


# Whole files deselected in the guests (a nodeid in DESELECT_KEEP still runs). These are the networking
# tests: userland-heavy (containerd and runc, several agents, etcd, pods made through the CNI plugin),
# minutes each under TCG, while the kernel features they use (TC, veth, netns, LPM/LRU maps, ring
# buffers) exist on every kernel of the matrix. The datapath's own tests below stay, so its TC programs
# are verified and exercised on each guest kernel.
NETDP_USERLAND = ("exercises the CNI plugin, agents, containerd or etcd (userland, kernel-independent; minutes "
                  "under TCG); the host suite runs it, and the guests keep the datapath's kernel tests")
DESELECT_FILES: dict[str, tuple[frozenset[str], str]] = {
    "tests/test_bench_datapath.py": (GUESTS, "a timing benchmark (sockperf, iperf3) calibrated for the host"),
    "tests/test_bench_multinode.py": (GUESTS, "a timing benchmark (sockperf, iperf3, etcd) calibrated for the host"),
    "tests/test_cni_agent.py": (GUESTS, NETDP_USERLAND),
    "tests/test_cni_cri.py": (GUESTS, NETDP_USERLAND),
    "tests/test_cri_pods.py": (GUESTS, NETDP_USERLAND),
    "tests/test_multinode.py": (GUESTS, NETDP_USERLAND),
    "tests/test_k8s_agent.py": (GUESTS, "the agent on a real kube-apiserver and etcd (userland, kernel-independent; the "
                                        "control plane's binaries are built for the host, not copied into the guest)"),
    "tests/test_k8s_netpol_e2e.py": (GUESTS, "lanner-cni pods and a real kube-apiserver (userland; the host suite "
                                             "runs it; the datapath's kernel side is test_netdp_datapath.py's)"),
    "tests/test_k8s_pods.py": (GUESTS, "real containerd pods and their API Pods on a real kube-apiserver (userland; "
                                       "the host suite runs it)"),
    "tests/test_netdp_datapath.py": (GUESTS, "the datapath's remaining tests are about policy compilation and "
                                             "user-space scale; the kept ones load and exercise the TC programs"),
}
DESELECT_KEEP = frozenset({
    "tests/test_netdp_datapath.py::test_no_policy_connectivity_and_flows",
    "tests/test_netdp_datapath.py::test_ingress_allow_by_label_denies_others",
    "tests/test_netdp_datapath.py::test_conntrack_lets_replies_pass",
    "tests/test_netdp_datapath.py::test_host_routing_hands_local_traffic_straight_to_the_pod",
})


def _applies(table: dict, nodeid: str, kernel: str) -> str | None:
    kernels, reason = table.get(nodeid, (frozenset(), ""))
    if not reason and table is DESELECT and nodeid not in DESELECT_KEEP:
        kernels, reason = DESELECT_FILES.get(nodeid.split("::", 1)[0], (frozenset(), ""))
    return reason if kernel in kernels else None


def _shard() -> tuple[int, int]:
    i, _, n = os.environ.get("VMTEST_SHARD", "0/1").partition("/")
    return int(i), int(n or 1)


def pytest_report_header(config: pytest.Config) -> list[str]:
    kernel = current_name()
    i, n = _shard()
    lines = [f"vmtest guest {kernel}" + (f", shard {i + 1}/{n} (every {n}th test)" if n > 1 else "")
             + ": tests/vm/guest_plugin.py"]
    for name, table in (("xfail(strict)", XFAIL), ("xfail(flaky)", FLAKY), ("deselected", DESELECT)):
        lines += [f"  {name}: {nodeid}" for nodeid in table if _applies(table, nodeid, kernel)]
    lines += [f"  deselected file: {path} (except {', '.join(k.split('::')[1] for k in DESELECT_KEEP if k.startswith(path))})"
              if any(k.startswith(path) for k in DESELECT_KEEP) else f"  deselected file: {path}"
              for path, (kernels, _r) in DESELECT_FILES.items() if kernel in kernels]
    return lines


@pytest.hookimpl(trylast=True)  # after -m bpf has deselected the rest, so the shards stay balanced
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kernel = current_name()
    shard, shards = _shard()
    keep, dropped = [], []
    for item in items:
        if _applies(DESELECT, item.nodeid, kernel):
            dropped.append(item)
            continue
        for table, strict in ((XFAIL, True), (FLAKY, False)):
            reason = _applies(table, item.nodeid, kernel)
            if reason:
                item.add_marker(pytest.mark.xfail(reason=f"[vmtest {kernel}] {reason}", strict=strict))
        keep.append(item)
    if shards > 1:
        dropped += [item for n, item in enumerate(keep) if n % shards != shard]
        keep = [item for n, item in enumerate(keep) if n % shards == shard]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
