"""What each kernel the suite runs on must offer: the one table the tests assert and docs/kernels.md shows.

``LANNER_TEST_KERNEL`` names the kernel: unset (or ``host``) on the CI machine itself, otherwise a name
from ``tests/vm/kernels.txt``, set by the ``make vmtest`` guests (tests/vm/guest.sh). ``current()``
returns its expectation and fails loudly for a name this table does not know, so a kernel added to the
matrix without its expectations cannot pass by accident.

Measured (lanner probe -o json) on the CI host and on Debian's stock kernels booted by tests/vm/run.py.
Debian builds neither CONFIG_FUNCTION_ERROR_INJECTION nor CONFIG_BPF_KPROBE_OVERRIDE, so
``bpf_override_return`` is refused on both 6.1 and 6.12 (only the verifier's words differ); both offer
``fmod_ret`` on ``security_*`` functions instead, and the BPF LSM (booted with ``lsm=...,bpf``).

Stdlib only (plus the feature list), so tests/vm/run.py and docs checks can import it cheaply.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from lanner.kernel.probe import FEATURES, MECHANISM_PREFERENCE

ENV = "LANNER_TEST_KERNEL"
HOST = "host"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "kernels.md"

# every hook kind's choice where fentry, kprobe and the BPF LSM all work
_FULL_BEST = MappingProxyType({
    "kernel_function": "fentry",
    "kernel_function_return": "fexit",
    "kernel_event": "tp_btf",
    "security_hook": "lsm",
    "enforcement": "lsm",
    "user_function": "uprobe",
    "user_function_return": "uretprobe",
    "network_connect": "cgroup_sock_addr",
    "packet": "tc",
    "event_output": "ringbuf",
})


@dataclass(frozen=True)
class KernelExpectation:
    name: str
    description: str
    unsupported: frozenset[str]
    best: Mapping[str, str]
    # os.uname().release must match (None: not checked, the host kernel may be upgraded)
    release: str | None = None
    # substrings each unsupported feature's reason must contain
    reasons: Mapping[str, str] = field(default_factory=dict)
    # ceiling for ProbeResult.duration_s: under QEMU TCG the guest runs 12-20x slower than the host
    probe_budget_s: float = 1.5
    # how much slower than the host the kernel's machine runs user space: scale wall-clock deadlines
    # by it (QEMU TCG: 12-20x measured, agent start 11-15 s against 0.6 s)
    slowdown: float = 1.0

    @property
    def supported(self) -> frozenset[str]:
        return frozenset(FEATURES) - self.unsupported


EXPECTATIONS: Mapping[str, KernelExpectation] = MappingProxyType({
    HOST: KernelExpectation(
        name=HOST,
        description="CI host: Firecracker VM, kernel 6.18, no kprobes, BPF trampolines denied",
        unsupported=frozenset({"kprobe", "kretprobe", "fentry", "fexit", "fmod_ret", "lsm", "override_return",
                               "d_path"}),
        best=MappingProxyType(dict(_FULL_BEST, kernel_function="tracepoint", kernel_function_return="tracepoint",
                                   security_hook="tracepoint", enforcement="send_signal")),
    ),
    "6.1": KernelExpectation(
        name="6.1",
        description="Debian 12 linux-image-6.1.0-*-amd64 under QEMU TCG, lsm=...,bpf",
        unsupported=frozenset({"override_return"}),
        best=_FULL_BEST,
        release=r"6\.1\.0-\d+-amd64",
        reasons=MappingProxyType({"override_return": "unknown func bpf_override_return#58"}),
        probe_budget_s=30.0,
        slowdown=20.0,
    ),
    "6.12": KernelExpectation(
        name="6.12",
        description="Debian 12 (bookworm-security) linux-image-6.12.*+deb12-amd64 under QEMU TCG, lsm=...,bpf",
        unsupported=frozenset({"override_return"}),
        best=_FULL_BEST,
        release=r"6\.12\.\d+\+deb12-amd64",
        reasons=MappingProxyType({"override_return": "cannot use helper bpf_override_return#58"}),
        probe_budget_s=30.0,
        slowdown=20.0,
    ),
})

assert all(set(e.best) == set(MECHANISM_PREFERENCE) for e in EXPECTATIONS.values())
assert all(e.unsupported <= set(FEATURES) for e in EXPECTATIONS.values())


def current_name() -> str:
    return os.environ.get(ENV) or HOST


def current() -> KernelExpectation:
    name = current_name()
    try:
        return EXPECTATIONS[name]
    except KeyError:
        raise LookupError(f"{ENV}={name!r}: no expectations for this kernel in {__file__}; "
                          f"known: {sorted(EXPECTATIONS)}") from None


def release_matches(exp: KernelExpectation, release: str) -> bool:
    return exp.release is None or re.fullmatch(exp.release, release) is not None


# ------------------------------------------------------------------- docs/kernels.md, matrix tables
def docs_table(marker: str, path: Path = DOCS) -> dict[str, dict[str, str]]:
    """A table of docs/kernels.md between ``<!-- MARKER:begin -->`` and ``<!-- MARKER:end -->``, as
    column (kernel name) -> row name -> cell text, with backticks and bold stripped.

    The header row is ``| feature | host | 6.1 | ... |``; the first column names the rows."""
    text = path.read_text()
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    try:
        block = text[text.index(begin) + len(begin): text.index(end)]
    except ValueError:
        raise AssertionError(f"{path}: the table markers {begin} / {end} are missing") from None
    rows = [[c.strip().strip("`*").strip() for c in ln.strip().strip("|").split("|")]
            for ln in block.splitlines() if ln.strip().startswith("|")]
    header = rows[0]
    body = [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
    return {col: {row[0]: row[i] for row in body} for i, col in enumerate(header) if i > 0}
