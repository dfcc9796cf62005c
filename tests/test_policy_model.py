"""The typed model: defaults applied, values normalized, to_dict round trip, hooks() and the hook
classification used by the loader."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import textwrap

import pytest
import yaml

from lanner.policy import (
    Action, ArgSpec, IntRange, ListRef, Mechanism, PolicyOptions, TracingPolicy, load_policies,
)


def load(spec: str, **meta: str) -> TracingPolicy:
    metadata = textwrap.indent(yaml.safe_dump({"name": "test", **meta}).strip(), "  ")
    text = (f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n{metadata}\n"
            f"spec:\n{textwrap.indent(textwrap.dedent(spec).strip(), '  ')}\n")
    (policy,) = load_policies(text)
    return policy


# --------------------------------------------------------------------------------------- defaults
def test_syscall_defaults_to_true_like_the_crd() -> None:
    p = load("""
        kprobes:
        - call: sys_openat
        - call: security_file_open
          syscall: false
        fentries:
        - call: sys_close
    """)
    assert [k.syscall for k in p.spec.kprobes] == [True, False]
    assert p.spec.fentries[0].syscall is True
    assert p.warnings == ()  # sys_* names do not warn


def test_crd_defaults_are_applied() -> None:
    p = load("""
        kprobes:
        - call: sys_write
          args: [{index: 0, type: int}]
          selectors:
          - matchPIDs: [{operator: NotIn, values: [1]}]
            matchBinaries: [{operator: In, values: [/bin/sh]}]
            matchCapabilities: [{operator: In, values: [CAP_SYS_ADMIN]}]
        tracepoints:
        - subsystem: raw_syscalls
          event: sys_enter
          args: [{index: 4}]
    """)
    k = p.spec.kprobes[0]
    assert (k.return_, k.return_arg, k.ignore_call_not_found) == (False, None, False)
    assert k.args[0] == ArgSpec(index=0, type="int", resolve="", max_data=False, return_copy=False)
    assert p.spec.tracepoints[0].args[0].type == "auto"  # arg type default
    assert p.spec.tracepoints[0].raw is False
    sel = k.selectors[0]
    assert (sel.match_pids[0].follow_forks, sel.match_pids[0].is_namespace_pid) == (False, False)
    assert sel.match_binaries[0].follow_children is False
    assert (sel.match_capabilities[0].type, sel.match_capabilities[0].is_namespace_capability) == ("Effective", False)


def test_selector_without_actions_gets_post() -> None:
    p = load("""
        kprobes:
        - call: sys_openat
          selectors:
          - matchPIDs: [{operator: In, values: [1]}]
          - matchActions: [{action: Sigkill}]
    """)
    assert [tuple(a.action for a in s.match_actions) for s in p.spec.kprobes[0].selectors] == [("Post",), ("Sigkill",)]
    assert p.spec.kprobes[0].selectors[0].to_dict()["matchActions"] == [{"action": "Post"}]


def test_hook_without_selectors_keeps_none() -> None:
    assert load("kprobes: [{call: sys_openat}]").spec.kprobes[0].selectors == ()


def test_normalization() -> None:
    p = load("""
        kprobes:
        - call: sys_openat
          return: true
          args: [{index: 0, type: int}, {index: 1, type: string}]
          returnArg: {index: 0, type: int}
          selectors:
          - matchArgs:
            - {index: 0, operator: GT, values: ["0x10"]}
            - {index: 0, operator: LT, values: ["010"]}
            - {index: 0, operator: InMap, values: ["1:3", "7"]}
            matchReturnArgs: [{index: 0, operator: Equal, values: ["-2"]}]
            matchCapabilities: [{operator: In, values: [" cap_sys_admin"]}]
            matchNamespaceChanges: [{operator: In, values: [mnt, NET]}]
            matchActions: [{action: Post, rateLimit: "2h", rateLimitScope: process}]
    """)
    sel = p.spec.kprobes[0].selectors[0]
    assert [(m.operator, m.values, m.parsed) for m in sel.match_args] == [
        ("GreaterThan", ("0x10",), (16,)),
        ("LessThan", ("010",), (8,)),  # a leading 0 is octal, as in Go
        ("InMap", ("1:3", "7"), (IntRange(1, 3), 7)),
    ]
    assert sel.match_return_args[0].parsed == (-2,)
    assert sel.match_capabilities[0].values == ("CAP_SYS_ADMIN",)
    assert sel.match_capabilities[0].mask == 1 << 21
    assert sel.match_namespace_changes[0].values == ("Mnt", "Net")
    action = sel.match_actions[0]
    assert (action.rate_limit, action.rate_limit_seconds, action.rate_limit_scope) == ("2h", 7200, "process")


@pytest.mark.parametrize("text,seconds", [("5", 5), ("30s", 30), ("1m", 60), ("2h", 7200), ("3M", 180)])
def test_rate_limit_parsing(text: str, seconds: int) -> None:
    p = load(f"kprobes: [{{call: sys_x, selectors: [{{matchActions: [{{action: Post, rateLimit: '{text}'}}]}}]}}]")
    assert p.spec.kprobes[0].selectors[0].match_actions[0].rate_limit_seconds == seconds


def test_network_values_are_parsed() -> None:
    p = load("""
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          selectors:
          - matchArgs:
            - {index: 0, operator: DAddr, values: ["127.0.0.1/8", "fe80::1", "10.1.2.3"]}
            - {index: 0, operator: DPort, values: ["443", "8000:8080"]}
            - {index: 0, operator: Protocol, values: [IPPROTO_UDP, "6"]}
            - {index: 0, operator: Family, values: [AF_INET6]}
            - {index: 0, operator: State, values: [TCP_SYN_RECV]}
    """)
    parsed = [m.parsed for m in p.spec.kprobes[0].selectors[0].match_args]
    assert parsed == [
        (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("fe80::1/128"), ipaddress.ip_network("10.1.2.3/32")),
        (443, IntRange(8000, 8080)),
        (17, 6),
        (10,),
        (3,),
    ]


def test_syscall_list_values_stay_references() -> None:
    p = load("""
        lists: [{name: dups, type: syscalls, values: [sys_dup, sys_dup2]}]
        enforcers: [{calls: ["list:dups"]}]
        tracepoints:
        - subsystem: raw_syscalls
          event: sys_enter
          args: [{index: 4, type: syscall64}]
          selectors:
          - matchArgs: [{index: 0, operator: InMap, values: ["list:dups"]}]
            matchActions: [{action: NotifyEnforcer, argSig: 9}]
    """)
    assert p.spec.tracepoints[0].selectors[0].match_args[0].parsed == (ListRef("dups"),)
    assert p.spec.list_named("dups").is_syscall_list


def test_options_are_interpreted() -> None:
    p = load("""
        options:
        - {name: policy-mode, value: enforce}
        - {name: override-method, value: override-return}
        - {name: disable-kprobe-multi, value: "1"}
        loader: true
    """)
    assert p.spec.settings == PolicyOptions(policy_mode="enforce", override_method="override-return",
                                            disable_kprobe_multi=True)
    assert [o.to_dict() for o in p.spec.options][0] == {"name": "policy-mode", "value": "enforce"}


def test_macros_are_expanded_into_selectors() -> None:
    p = load("""
        selectorsMacros:
          curl:
            label: from-macro
            matchBinaries: [{operator: In, values: [/usr/bin/curl]}]
            matchActions: [{action: Sigkill}]
          port:
            matchArgs: [{index: 0, operator: DPort, values: ["53"]}]
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          selectors:
          - macros: [curl, port]
          - macros: [port]
            label: mine
    """)
    first, second = p.spec.kprobes[0].selectors
    assert first.label == "from-macro"
    assert first.match_binaries[0].values == ("/usr/bin/curl",)
    assert [a.action for a in first.match_actions] == ["Sigkill"]
    assert first.match_args[0].parsed == (53,)
    assert second.label == "mine" and [a.action for a in second.match_actions] == ["Post"]
    # The macro definitions are kept (without an implicit Post) and the expansion survives to_dict.
    assert p.spec.selectors_macros["port"].match_actions == ()
    assert "macros" not in p.to_dict()["spec"]["kprobes"][0]["selectors"][0]
    (again,) = load_policies(yaml.safe_dump(p.to_dict()))
    assert again == p


# ----------------------------------------------------------------------------- model properties
def test_model_is_frozen_and_hashable() -> None:
    p = load("kprobes: [{call: sys_openat, args: [{index: 0, type: int}]}]", labels={"a": "b"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.spec.kprobes[0].call = "x"  # type: ignore[misc]
    assert hash(p) == hash(load("kprobes: [{call: sys_openat, args: [{index: 0, type: int}]}]", labels={"a": "b"}))
    with pytest.raises(TypeError):
        p.metadata.labels["c"] = "d"  # type: ignore[index]


def test_to_dict_shape_is_stable() -> None:
    p = load("""
        kprobes:
        - call: sys_write
          message: writes
          args: [{index: 1, type: char_buf, sizeArgIndex: 3}]
          ignore: {callNotFound: true}
          selectors:
          - matchArgs: [{args: [0], operator: Prefix, values: [abc]}]
    """, labels={"team": "sec"})
    assert p.to_dict() == {
        "apiVersion": "cilium.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": "test", "labels": {"team": "sec"}},
        "spec": {"kprobes": [{
            "call": "sys_write",
            "syscall": True,
            "return": False,
            "message": "writes",
            "args": [{"index": 1, "type": "char_buf", "sizeArgIndex": 3, "returnCopy": False, "maxData": False,
                      "resolve": ""}],
            "selectors": [{
                "matchArgs": [{"index": 0, "args": [0], "operator": "Prefix", "values": ["abc"]}],
                "matchActions": [{"action": "Post"}],
            }],
            "ignore": {"callNotFound": True},
        }]},
    }
    json.dumps(p.to_dict())


def test_hooks_lists_every_hook_in_spec_order() -> None:
    p = load("""
        lsmhooks: [{hook: file_open}]
        usdts: [{path: /bin/x, provider: prov, name: probe}]
        uprobes: [{path: /bin/bash, symbols: [readline, main]}, {path: /bin/x, offsets: [16]}]
        tracepoints: [{subsystem: sched, event: sched_process_exec}]
        fentries: [{call: security_file_open, syscall: false}]
        kprobes: [{call: sys_openat}]
    """)
    assert [(kind, hook) for kind, hook, _ in p.hooks()] == [
        ("kprobe", "sys_openat"),
        ("fentry", "security_file_open"),
        ("tracepoint", "sched/sched_process_exec"),
        ("uprobe", "/bin/bash:readline,main"),
        ("uprobe", "/bin/x:0x10"),
        ("usdt", "/bin/x:prov:probe"),
        ("lsmhook", "file_open"),
    ]
    assert p.hooks()[0].spec is p.spec.kprobes[0]


def test_action_model_flags_deprecated() -> None:
    assert Action("FollowFD").deprecated and not Action("Post").deprecated


# ------------------------------------------------------------------------------ classification
def _supports(*features: str):
    return lambda name: name in features


def test_classification_of_each_mechanism() -> None:
    p = load("""
        lists: [{name: all, type: generated_syscalls}]
        kprobes:
        - call: security_file_open
          syscall: false
        - call: sys_openat
          return: true
          returnArg: {index: 0, type: int}
        - call: "list:all"
        fentries: [{call: security_file_open, syscall: false}]
        tracepoints:
        - {subsystem: sched, event: sched_process_exec}
        - {subsystem: sched, event: sched_process_exec, raw: true}
        uprobes: [{path: /bin/bash, symbols: [readline], return: true, returnArg: {index: 0, type: int}}]
        usdts: [{path: /bin/x, provider: prov, name: probe}]
        lsmhooks: [{hook: file_open}]
    """)
    reqs = p.hook_requirements()
    assert [(r.path, r.mechanism) for r in reqs] == [
        ("spec.kprobes[0]", Mechanism.KPROBE),
        ("spec.kprobes[1]", Mechanism.SYSCALL_KPROBE),
        ("spec.kprobes[2]", Mechanism.SYSCALL_KPROBE),
        ("spec.fentries[0]", Mechanism.FENTRY),
        ("spec.tracepoints[0]", Mechanism.TRACEPOINT),
        ("spec.tracepoints[1]", Mechanism.RAW_TRACEPOINT),
        ("spec.uprobes[0]", Mechanism.UPROBE),
        ("spec.usdts[0]", Mechanism.USDT),
        ("spec.lsmhooks[0]", Mechanism.LSM),
    ]
    kprobe, syscall, generated, fentry, tp, rawtp, uprobe, usdt, lsm = reqs
    assert [str(w) for w in kprobe.ways] == ["kprobe", "fentry+vmlinux_btf"]
    assert [(w.mechanism, str(w), w.attach) for w in syscall.ways] == [
        ("kprobe", "kprobe+kretprobe", ("sys_openat",)),
        ("fentry", "fentry+fexit+vmlinux_btf", ("sys_openat",)),
        ("tracepoint", "tracepoint", ("syscalls/sys_enter_openat", "syscalls/sys_exit_openat")),
        ("raw_tp", "raw_tp", ("raw_syscalls/sys_enter", "raw_syscalls/sys_exit")),
    ]
    assert generated.symbols == () and [w.mechanism for w in generated.ways] == ["kprobe", "fentry", "raw_tp"]
    assert [str(w) for w in fentry.ways] == ["fentry+vmlinux_btf", "kprobe"]
    assert [str(w) for w in tp.ways] == ["tracepoint"]
    assert [str(w) for w in rawtp.ways] == ["raw_tp", "tp_btf+vmlinux_btf"]
    assert [str(w) for w in uprobe.ways] == ["uprobe+uretprobe"] and uprobe.return_probe
    assert usdt.ways[0].attach == ("/bin/x:prov:probe",)
    assert [str(w) for w in lsm.ways] == ["lsm+vmlinux_btf"]


def test_unmet_requirements_are_explained() -> None:
    """This is what the agent prints on a kernel without kprobes, trampolines and BPF LSM."""
    p = load("""
        kprobes:
        - call: security_file_open
          syscall: false
          selectors: [{matchActions: [{action: Override, argError: -1}]}]
        - call: sys_openat
          selectors: [{matchActions: [{action: Sigkill}]}]
        lsmhooks: [{hook: file_open}]
    """)
    supports = _supports("tracepoint", "raw_tp", "tp_btf", "uprobe", "send_signal", "vmlinux_btf")
    kprobe, syscall, lsm = p.hook_requirements()
    assert kprobe.way(supports) is None
    assert kprobe.unmet(supports) == [
        "spec.kprobes[0] (kprobe security_file_open) needs kprobe or fentry+vmlinux_btf; this kernel lacks "
        "fentry, kprobe",
        "spec.kprobes[0] (kprobe security_file_open): Override needs fmod_ret+vmlinux_btf or "
        "kprobe+override_return; this kernel lacks fmod_ret, kprobe, override_return",
    ]
    assert syscall.way(supports).mechanism == "tracepoint"  # served by syscall tracepoints
    assert syscall.unmet(supports) == []
    assert lsm.unmet(supports) == ["spec.lsmhooks[0] (lsmhook file_open) needs lsm+vmlinux_btf; this kernel "
                                   "lacks lsm"]


def test_override_method_option_picks_the_enforcement_mechanism() -> None:
    spec = """
        options: [{name: override-method, value: fmod-ret}]
        kprobes: [{call: sys_openat, selectors: [{matchActions: [{action: Override, argError: -1}]}]}]
    """
    (req,) = load(spec).hook_requirements()
    assert [(n.what, [str(w) for w in n.ways]) for n in req.needs] == [("Override", ["fmod_ret+vmlinux_btf"])]
    (req,) = load(spec.replace("fmod-ret", "override-return")).hook_requirements()
    assert [str(w) for w in req.needs[0].ways] == ["kprobe+override_return"]


def test_notify_enforcer_needs_the_enforcer_syscalls() -> None:
    p = load("""
        lists: [{name: dups, type: syscalls, values: [sys_dup, sys_dup2]}]
        enforcers: [{calls: ["list:dups"]}]
        tracepoints:
        - subsystem: raw_syscalls
          event: sys_enter
          args: [{index: 4, type: syscall64}]
          selectors:
          - matchArgs: [{index: 0, operator: InMap, values: ["list:dups"]}]
            matchActions: [{action: NotifyEnforcer, argError: -1}]
    """)
    (req,) = p.hook_requirements()
    (need,) = req.needs
    assert need.what == "NotifyEnforcer"
    assert [(str(w), w.attach) for w in need.ways] == [
        ("kprobe+override_return", ("sys_dup", "sys_dup2")),
        ("fmod_ret+vmlinux_btf", ("sys_dup", "sys_dup2")),
    ]
    assert json.loads(json.dumps(req.to_dict()))["mechanism"] == "tracepoint"
