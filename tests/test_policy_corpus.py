"""Every example policy of Tetragon's compatibility corpus (../shared/tetragon-policies) loads.

The corpus is read in place, beside the checkout; it is never copied into the project. Each policy
must validate, survive a to_dict -> YAML -> load round trip unchanged, and classify its hooks.
Policies that are rightly rejected, or that load with warnings, are pinned below with the reason,
so neither a regression nor a silently weakened check goes unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lanner.policy import Mechanism, PolicyError, load_policies, load_policy_file

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "tetragon-policies"
if not CORPUS.is_dir():
    pytest.skip(f"{CORPUS} is absent (../shared not beside the checkout)", allow_module_level=True)

FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))
IDS = [str(p.relative_to(CORPUS)) for p in FILES]

# Rejected on purpose. Tetragon accepts this file at the API server (the CRD schema allows it) but
# refuses to load it: an InMap on a syscall list reads the list as syscall numbers, which needs a
# syscall64 arg, and the file declares the raw_syscalls id as uint64 (Tetragon reports "list 'dups'
# argument type is not syscall64", policy state load_error). lanner reports it at validation time.
REJECTED = {
    "list-syscalls-tracepoint.yaml": [
        "spec.tracepoints[0].selectors[0].matchArgs[0].values[0]: "
        "a syscall list needs a syscall64 arg, this arg is 'uint64'",
    ],
}

# Accepted with warnings: Tetragon loads these and ignores the field in question.
WARNINGS = {
    "sandbox/linux-namespaces/kill_unprivileged_user_namespace.yaml": [
        "spec.kprobes[0].selectors[0].matchActions[0].argError: has no effect on the Sigkill action",
    ],
    "sandbox/linux-namespaces/kill_unprivileged_user_namespace_in_pid_namespace.yaml": [
        "spec.kprobes[0].selectors[0].matchActions[0].argError: has no effect on the Sigkill action",
    ],
    "security_bprm_check.yaml": [
        "spec.kprobes[0].returnArg: has no effect without return: true",
    ],
}


def test_corpus_is_complete() -> None:
    assert len(FILES) == 71, [str(p) for p in FILES]
    assert set(REJECTED) | set(WARNINGS) <= set(IDS)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_corpus_policy_loads(path: Path) -> None:
    rel = str(path.relative_to(CORPUS))
    if rel in REJECTED:
        with pytest.raises(PolicyError) as exc:
            load_policy_file(path)
        assert exc.value.problems_in(0) == REJECTED[rel]
        return
    policies = load_policy_file(path)
    assert len(policies) == 1
    policy = policies[0]
    assert [str(w) for w in policy.warnings] == WARNINGS.get(rel, [])
    assert policy.source == str(path) and policy.document == 0

    # Round trip: to_dict is JSON-ready and loads back to an equal policy with the same dict.
    data = policy.to_dict()
    json.dumps(data)
    (again,) = load_policies(yaml.safe_dump(data, sort_keys=False), source="roundtrip")
    assert again == policy
    assert again.to_dict() == data

    # Every hook is classified, with at least one way to serve it.
    requirements = policy.hook_requirements()
    assert len(requirements) == len(policy.hooks())
    for req in requirements:
        assert req.ways and all(w.features for w in req.ways)
        json.dumps(req.to_dict())


def _one(name: str):
    (policy,) = load_policy_file(CORPUS / name)
    return policy


def test_corpus_hook_mechanisms() -> None:
    """One policy per mechanism, to pin the classification of real examples."""
    cases = {
        "sys_mount.yaml": Mechanism.SYSCALL_KPROBE,
        "tcp-connect.yaml": Mechanism.KPROBE,
        "lsm_file_open.yaml": Mechanism.LSM,
        "raw_syscalls.yaml": Mechanism.TRACEPOINT,
        "rawtp.yaml": Mechanism.RAW_TRACEPOINT,
        "uprobe.yaml": Mechanism.UPROBE,
        "usdt.yaml": Mechanism.USDT,
        "list-syscalls.yaml": Mechanism.SYSCALL_KPROBE,
        "list-generated-ftrace.yaml": Mechanism.KPROBE,
    }
    for name, mechanism in cases.items():
        assert {r.mechanism for r in _one(name).hook_requirements()} == {mechanism}, name


def test_corpus_list_calls_take_syscall_from_the_list_type() -> None:
    # No `syscall:` field in either file: the list type decides, as in Tetragon.
    assert _one("list-syscalls.yaml").spec.kprobes[0].syscall is True
    assert _one("list-syscalls-generated.yaml").spec.kprobes[0].syscall is True
    assert _one("list-generated-ftrace.yaml").spec.kprobes[0].syscall is False


def test_corpus_values_are_parsed() -> None:
    import ipaddress

    sel = _one("tcp-connect-only-private-addrs.yaml").spec.kprobes[0].selectors[0]
    assert sel.match_args[0].parsed == tuple(ipaddress.ip_network(n) for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"))
    sel = _one("security-socket-connect-block-others.yaml").spec.kprobes[0].selectors[0]
    assert [m.parsed for m in sel.match_args] == [(6,), (2, 10), (ipaddress.ip_network("192.168.1.1/32"),), (80,)]
    action = _one("cves/cve-2024-3094-xz-ssh.yaml").spec.kprobes[0].selectors[0].match_actions[0]
    assert (action.action, action.rate_limit, action.rate_limit_seconds) == ("Post", "1m", 60)
    ret = _one("openat_write.yaml").spec.kprobes[0].selectors[0].match_return_args[0]
    assert (ret.operator, ret.parsed) == ("GreaterThan", (0,))  # GT canonicalized
