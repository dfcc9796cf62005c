"""Bad policies and the exact errors they produce (``path: message``), plus whole-file rejection.

Each case is a small policy; ``errors()`` returns the problems of its document, ``warnings()`` the
warnings of an accepted one. Messages are compared exactly: they are user interface.
"""

from __future__ import annotations

import textwrap

import pytest

from lanner.policy import PolicyError, load_policies, load_policy_file

OPERATORS_LIST = (
    "['Equal', 'NotEqual', 'Prefix', 'NotPrefix', 'Postfix', 'NotPostfix', 'GreaterThan', 'LessThan', "
    "'GT', 'LT', 'Mask', 'SPort', 'NotSPort', 'SPortPriv', 'NotSportPriv', 'DPort', 'NotDPort', "
    "'DPortPriv', 'NotDPortPriv', 'SAddr', 'NotSAddr', 'DAddr', 'NotDAddr', 'Protocol', 'Family', "
    "'State', 'InMap', 'NotInMap', 'CapabilitiesGained', 'InRange', 'NotInRange', 'SubString', "
    "'SubStringIgnCase', 'CelExpr', 'FileType', 'NotFileType']"
)


def doc(spec: str, *, kind: str = "TracingPolicy", metadata: str = "name: test") -> str:
    """A policy document with the given spec body (YAML, any indentation)."""
    return (f"apiVersion: cilium.io/v1alpha1\nkind: {kind}\nmetadata:\n{textwrap.indent(metadata, '  ')}\n"
            f"spec:\n{textwrap.indent(textwrap.dedent(spec).strip(), '  ')}\n")


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        load_policies(text, source="test.yaml")
    return exc.value.problems_in(0)


def warnings(text: str) -> list[str]:
    (policy,) = load_policies(text, source="test.yaml")
    return [str(w) for w in policy.warnings]


OPENAT = """
kprobes:
- call: sys_openat
  args:
  - {index: 0, type: int}
  - {index: 1, type: string}
  selectors:
"""


def openat(selectors: str) -> str:
    return doc(OPENAT + textwrap.indent(textwrap.dedent(selectors).strip(), "  "))


# ------------------------------------------------------------------------------------ the issue
def test_issue_example_operator_typo() -> None:
    text = openat("""
        - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/"]}]
        - matchArgs: [{index: 1, operator: Prefx, values: ["/etc/"]}]
    """)
    assert errors(text) == [
        f"spec.kprobes[0].selectors[1].matchArgs[0].operator: 'Prefx' is not one of {OPERATORS_LIST}"]


def test_error_is_prefixed_by_source_and_document() -> None:
    text = doc("kprobes: [{call: sys_openat, syscall: maybe}]")
    with pytest.raises(PolicyError) as exc:
        load_policies(text, source="policies/openat.yaml")
    assert exc.value.messages == [
        "policies/openat.yaml[0]: spec.kprobes[0].syscall: expected boolean, got string 'maybe'"]
    assert str(exc.value) == (
        "policies/openat.yaml: policy rejected, 1 problem:\n"
        "  policies/openat.yaml[0]: spec.kprobes[0].syscall: expected boolean, got string 'maybe'")


# --------------------------------------------------------------------------- header and metadata
def test_wrong_api_version_and_kind() -> None:
    text = doc("kprobes: [{call: sys_openat}]").replace("cilium.io/v1alpha1", "cilium.io/v1").replace(
        "kind: TracingPolicy", "kind: TracingPolicies")
    assert errors(text) == [
        "apiVersion: 'cilium.io/v1' is not one of ['cilium.io/v1alpha1']",
        "kind: 'TracingPolicies' is not one of ['TracingPolicy', 'TracingPolicyNamespaced']",
    ]


def test_missing_header_fields() -> None:
    assert errors("metadata: {name: x}\n") == [
        "apiVersion: required field is missing",
        "kind: required field is missing",
        "spec: required field is missing",
    ]


def test_document_must_be_a_mapping() -> None:
    assert errors("- just\n- a list\n") == ["a policy document must be a mapping, got array"]


@pytest.mark.parametrize("name,message", [
    ("My_Policy", "'My_Policy' is not a valid name: use lowercase letters, digits, '-' and '.', starting and "
                  "ending with a letter or digit (DNS-1123 subdomain)"),
    ("-x", "'-x' is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a "
           "letter or digit (DNS-1123 subdomain)"),
    ("a" * 254, "must be at most 253 characters, got 254"),
])
def test_metadata_name_must_be_dns_subdomain(name: str, message: str) -> None:
    assert errors(doc("loader: true", metadata=f"name: {name}")) == [f"metadata.name: {message}"]


def test_metadata_name_required_and_unknown_metadata_field() -> None:
    assert errors(doc("loader: true", metadata="labelz: {a: b}")) == [
        "metadata.labelz: unknown field (did you mean 'labels'?)",
    ]
    assert errors(doc("loader: true", metadata="labels: {a: b}")) == ["metadata.name: required field is missing"]


def test_valid_name_with_dots_is_accepted() -> None:
    assert warnings(doc("loader: true", metadata="name: process.credentials.changes")) == []


def test_label_keys_and_values() -> None:
    text = doc("loader: true", metadata="name: x\nlabels: {'bad key': v, ok: 'bad value!'}")
    assert errors(text) == [
        "metadata.labels[bad key]: 'bad key' is not a valid key: at most 63 letters, digits, '-', '_' or '.', "
        "starting and ending with a letter or digit, optionally prefixed by a DNS subdomain and '/'",
        "metadata.labels[ok]: 'bad value!' is not a valid label value (at most 63 letters, digits, '-', '_' or "
        "'.', starting and ending with a letter or digit)",
    ]


def test_namespaced_policy_needs_namespace_and_no_host_selector() -> None:
    text = doc("hostSelector: {}\nkprobes: [{call: sys_openat}]", kind="TracingPolicyNamespaced")
    assert errors(text) == [
        "spec.hostSelector: not allowed in a TracingPolicyNamespaced (it applies only to pods in its own namespace)",
        "metadata.namespace: required for a TracingPolicyNamespaced",
    ]


def test_namespaced_policy_with_null_host_selector_is_fine() -> None:
    text = doc("hostSelector: null\nkprobes: [{call: sys_openat}]", kind="TracingPolicyNamespaced",
               metadata="name: x\nnamespace: team-a")
    (policy,) = load_policies(text)
    assert policy.namespaced and policy.namespace == "team-a" and policy.spec.host_selector is None


def test_cluster_policy_must_not_have_namespace() -> None:
    assert errors(doc("loader: true", metadata="name: x\nnamespace: default")) == [
        "metadata.namespace: not allowed on a cluster-scoped TracingPolicy (use kind TracingPolicyNamespaced)"]


def test_host_selector_must_be_null_or_empty() -> None:
    assert errors(doc("hostSelector: {matchLabels: {a: b}}\nloader: true")) == [
        "spec.hostSelector: hostSelector must be null (no host processes) or {} (all host processes)"]


# ----------------------------------------------------------------------------------- the schema
def test_unknown_fields_are_errors_with_their_path() -> None:
    text = doc("""
        kprobe: []
        kprobes:
        - call: sys_openat
          slectors: []
          args: [{index: 0, type: int, lable: fd}]
    """)
    assert errors(text) == [
        "spec.kprobe: unknown field (did you mean 'kprobes'?)",
        "spec.kprobes[0].slectors: unknown field (did you mean 'selectors'?)",
        "spec.kprobes[0].args[0].lable: unknown field (did you mean 'label'?)",
    ]


def test_types_required_and_limits() -> None:
    text = doc("""
        kprobes:
        - syscall: "true"
          tags: [t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, ta, tb, tc, td, te, tf, tg]
          args: [{index: -1, type: int}, {type: int}, {index: 1, type: integer}]
          selectors:
          - matchBinaries:
            - {operator: In, values: [/bin/a]}
            - {operator: In, values: [/bin/b]}
            matchPIDs: [{operator: In, values: ["1"]}]
    """)
    assert errors(text) == [
        "spec.kprobes[0].syscall: expected boolean, got string 'true'",
        "spec.kprobes[0].tags: must have at most 16 items, got 17",
        "spec.kprobes[0].args[0].index: must be >= 0, got -1",
        "spec.kprobes[0].args[1].index: required field is missing",
        "spec.kprobes[0].args[2].type: 'integer' is not one of ['auto', 'int', 'sint8', 'int8', 'uint8', "
        "'sint16', 'int16', 'uint16', 'uint32', 'sint32', 'int32', 'ulong', 'uint64', 'size_t', 'long', "
        "'sint64', 'int64', 'char_buf', 'char_iovec', 'skb', 'sock', 'sockaddr', 'socket', 'sockaddr_un', "
        "'string', 'fd', 'file', 'filename', 'path', 'nop', 'bpf_attr', 'perf_event', 'bpf_map', "
        "'user_namespace', 'capability', 'kiocb', 'iov_iter', 'cred', 'const_buf', 'load_info', 'module', "
        "'syscall64', 'kernel_cap_t', 'cap_inheritable', 'cap_permitted', 'cap_effective', 'linux_binprm', "
        "'data_loc', 'net_device', 'bpf_cmd', 'dentry', 'bpf_prog']",
        "spec.kprobes[0].selectors[0].matchBinaries: must have at most 1 item, got 2",
        "spec.kprobes[0].selectors[0].matchPIDs[0].values[0]: expected integer, got string '1'",
        "spec.kprobes[0].call: required field is missing",
    ]


def test_integer_overflow_and_bool_is_not_an_int() -> None:
    text = openat("- matchActions: [{action: Override, argError: 4294967296}, {action: Signal, argSig: true}]")
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchActions[0].argError: 4294967296 does not fit in int32",
        "spec.kprobes[0].selectors[0].matchActions[1].argSig: expected integer, got boolean true",
    ]


def test_return_needs_return_arg() -> None:
    assert errors(doc("kprobes: [{call: sys_openat, return: true}]")) == [
        "spec.kprobes[0].returnArg: required when return is true"]


def test_uprobe_symbols_offsets_addrs_are_exclusive_and_one_is_needed() -> None:
    assert errors(doc("uprobes: [{path: /bin/sh, symbols: [main], offsets: [16]}]")) == [
        "spec.uprobes[0]: at most one of symbols, addrs, offsets may be set, got symbols and offsets"]
    assert errors(doc("uprobes: [{path: bin/sh}]")) == [
        "spec.uprobes[0].path: 'bin/sh' must be an absolute path",
        "spec.uprobes[0]: needs one of symbols, offsets or addrs",
    ]


# ------------------------------------------------------------------------------- args and hooks
def test_at_most_five_args() -> None:
    args = ", ".join(f"{{index: {i}, type: int}}" for i in range(6))
    assert errors(doc(f"kprobes: [{{call: sys_x, args: [{args}]}}]")) == [
        "spec.kprobes[0].args: at most 5 args per hook, got 6"]


def test_at_most_five_selectors() -> None:
    sels = "\n".join("- matchPIDs: [{operator: In, values: [1]}]" for _ in range(6))
    assert errors(openat(sels)) == ["spec.kprobes[0].selectors: at most 5 selectors per hook, got 6"]


def test_size_arg_index_is_one_based_and_in_range() -> None:
    text = doc("""
        kprobes:
        - call: sys_write
          args:
          - {index: 1, type: char_buf, sizeArgIndex: 2}
          - {index: 2, type: size_t}
          - {index: 0, type: char_buf, sizeArgIndex: 6}
    """)
    assert errors(text) == [
        "spec.kprobes[0].args[0].sizeArgIndex: 2 names this argument itself (sizeArgIndex is 1-based: index N "
        "is written N+1)",
        "spec.kprobes[0].args[2].sizeArgIndex: 6 is out of range: sizeArgIndex is 1-based and names one of the "
        "function's first 5 arguments (1-5)",
    ]


def test_kprobe_args_need_explicit_types() -> None:
    assert errors(doc("kprobes: [{call: sys_x, args: [{index: 0}, {index: 1, type: syscall64}]}]")) == [
        "spec.kprobes[0].args[0].type: kprobes need an explicit arg type ('auto' is resolved for tracepoints only)",
        "spec.kprobes[0].args[1].type: 'syscall64' is only valid on tracepoints (raw_syscalls)",
    ]


def test_arg_options() -> None:
    text = doc("""
        kprobes:
        - call: sys_x
          args:
          - {index: 0, type: char_buf, returnCopy: true, maxData: true}
          - {index: 1, type: string, resolve: "a..b"}
          - {index: 2, type: string, resolve: "a.b.c.d.e.f.g.h.i.j.k"}
    """)
    assert errors(text) == [
        "spec.kprobes[0].args[0].maxData: cannot be combined with returnCopy",
        "spec.kprobes[0].args[1].resolve: 'a..b' is not a field path like 'mm.owner.comm' or 'fdt.fd[0]'",
        "spec.kprobes[0].args[2].resolve: is 11 levels deep; at most 10",
    ]


def test_message_and_tags() -> None:
    text = doc(f"kprobes: [{{call: sys_x, message: '{'m' * 257}', tags: [ok, x]}}]")
    assert errors(text) == [
        "spec.kprobes[0].message: must be at most 256 characters, got 257",
        "spec.kprobes[0].tags[1]: must be at least 2 characters",
    ]


def test_return_arg_action_values() -> None:
    text = doc("""
        kprobes:
        - call: sk_alloc
          syscall: false
          return: true
          returnArg: {index: 0, type: sock}
          returnArgAction: Track
    """)
    assert errors(text) == ["spec.kprobes[0].returnArgAction: 'Track' is not one of ['TrackSock', 'UntrackSock']"]


def test_hook_names() -> None:
    text = doc("""
        tracepoints: [{subsystem: "raw_syscalls/x", event: sys_enter}]
        lsmhooks: [{hook: File-Open}]
        usdts: [{path: /bin/x, provider: "", name: n}]
    """)
    assert errors(text) == [
        "spec.tracepoints[0].subsystem: 'raw_syscalls/x' is not a tracepoint subsystem name (letters, digits "
        "and '_')",
        "spec.usdts[0].provider: must not be empty",
        "spec.lsmhooks[0].hook: 'File-Open' is not an LSM hook name (lowercase letters, digits and '_')",
    ]


def test_raw_tracepoint_reads_at_most_six_args() -> None:
    assert errors(doc("tracepoints: [{subsystem: sched, event: sched_switch, raw: true, "
                      "args: [{index: 6, type: int}]}]")) == [
        "spec.tracepoints[0].args[0].index: a raw tracepoint has at most 6 arguments (0-5), got 6"]


def test_binary_digests() -> None:
    text = doc(f"uprobes: [{{path: /bin/x, symbols: [main], binaryDigests: ['sha256:abc', zz, {'a' * 64}]}}]")
    assert errors(text) == [
        "spec.uprobes[0].binaryDigests[0]: 'sha256:abc': a sha256 digest has 64 hex digits, got 3",
        "spec.uprobes[0].binaryDigests[1]: 'zz' is not a digest: hex sha1/sha256/sha384/sha512 (optionally "
        "'sha256:'-style prefixed) or 'build-id:HEX'",
    ]


# ---------------------------------------------------------------------------------- matchArgs
def test_operator_must_suit_the_arg_type() -> None:
    text = doc("""
        kprobes:
        - call: fd_install
          syscall: false
          args: [{index: 0, type: int}, {index: 1, type: file}, {index: 2, type: cred}]
          selectors:
          - matchArgs:
            - {index: 0, operator: Prefix, values: ["/"]}
            - {index: 1, operator: GT, values: ["1"]}
            - {index: 2, operator: Equal, values: ["1"]}
    """)
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchArgs[0].operator: 'Prefix' is not valid for arg type 'int' (valid: "
        "['Equal', 'NotEqual', 'GreaterThan', 'LessThan', 'Mask', 'InMap', 'NotInMap', 'InRange', 'NotInRange', "
        "'CelExpr'])",
        "spec.kprobes[0].selectors[0].matchArgs[1].operator: 'GreaterThan' is not valid for arg type 'file' "
        "(valid: ['Equal', 'NotEqual', 'Prefix', 'NotPrefix', 'Postfix', 'NotPostfix', 'FileType', "
        "'NotFileType'])",
        "spec.kprobes[0].selectors[0].matchArgs[2].operator: arg type 'cred' cannot be filtered",
    ]


def test_sockaddr_takes_only_source_and_family_operators() -> None:
    text = doc("""
        kprobes:
        - call: security_socket_connect
          syscall: false
          args: [{index: 1, type: sockaddr}]
          selectors:
          - matchArgs: [{index: 1, operator: DPort, values: ["53"]}]
    """)
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchArgs[0].operator: 'DPort' is not valid for arg type 'sockaddr' (valid: "
        "['SAddr', 'NotSAddr', 'SPort', 'NotSPort', 'SPortPriv', 'NotSportPriv', 'Family'])"]


def test_match_args_must_refer_to_declared_args() -> None:
    text = openat("""
        - matchArgs:
          - {index: 3, operator: Equal, values: ["1"]}
          - {args: [2], operator: Equal, values: ["1"]}
        - matchData: [{index: 0, operator: Equal, values: ["1"]}]
    """)
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchArgs[0].index: 3 does not refer to a declared arg (declared indexes: "
        "[0, 1])",
        "spec.kprobes[0].selectors[0].matchArgs[1].args[0]: 2 is out of range: the hook declares 2 args (args "
        "counts positions in args)",
        "spec.kprobes[0].selectors[1].matchData[0].index: 0 does not refer to a declared arg: the hook declares "
        "no data",
    ]


def test_tracepoint_match_args_index_counts_positions() -> None:
    text = doc("""
        tracepoints:
        - subsystem: raw_syscalls
          event: sys_enter
          args: [{index: 4, type: syscall64}]
          selectors:
          - matchArgs: [{index: 0, operator: Equal, values: ["59"]}]
          - matchArgs: [{index: 4, operator: Equal, values: ["59"]}]
    """)
    assert errors(text) == [
        "spec.tracepoints[0].selectors[1].matchArgs[0].index: 4 is out of range: the hook declares 1 arg (on "
        "tracepoints matchArgs index counts positions in args)"]


def test_match_return_args_need_return() -> None:
    text = openat("- matchReturnArgs: [{index: 0, operator: Equal, values: ['0']}]")
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchReturnArgs: needs return: true on the hook",
        "spec.kprobes[0].selectors[0].matchReturnArgs[0].index: 0 does not refer to a declared arg: the hook "
        "declares no returnArg",
    ]


def test_filter_and_value_limits() -> None:
    text = openat("""
        - matchArgs:
          - {index: 0, operator: Equal, values: ["1", "2", "3", "4", "5"]}
          - {index: 1, operator: Prefix, values: ["%s"]}
          - {index: 1, operator: Postfix, values: ["%s"]}
          - {index: 0, operator: InMap, values: ["1", "2", "3", "4", "5", "6"]}
          - {index: 0, operator: Equal, values: ["1"]}
          - {index: 0, operator: Equal, values: ["2"]}
    """ % ("p" * 257, "q" * 128))
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchArgs: at most 5 matchArgs and matchData filters per selector, got 6",
        "spec.kprobes[0].selectors[0].matchArgs[0].values: at most 4 values for Equal, got 5; use InMap for more",
        "spec.kprobes[0].selectors[0].matchArgs[1].values[0]: is 257 bytes; Prefix values are limited to 256",
        "spec.kprobes[0].selectors[0].matchArgs[2].values[0]: is 128 bytes; Postfix values are limited to 127",
    ]


def test_integer_values_are_checked_against_the_arg_width() -> None:
    text = doc("""
        kprobes:
        - call: sys_x
          args: [{index: 0, type: uint8}, {index: 1, type: int}]
          selectors:
          - matchArgs:
            - {index: 0, operator: Equal, values: ["256", "-1", "0x10"]}
            - {index: 1, operator: InRange, values: ["10:5", "1:2:3"]}
            - {index: 1, operator: Mask, values: ["abc"]}
    """)
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchArgs[0].values[0]: '256' is out of range for a unsigned 8-bit value "
        "(0..255)",
        "spec.kprobes[0].selectors[0].matchArgs[0].values[1]: '-1' is out of range for a unsigned 8-bit value "
        "(0..255)",
        "spec.kprobes[0].selectors[0].matchArgs[1].values[0]: '10:5' is an empty range (min > max)",
        "spec.kprobes[0].selectors[0].matchArgs[1].values[1]: '1:2:3' is not a range 'min:max'",
        "spec.kprobes[0].selectors[0].matchArgs[2].values[0]: 'abc' is not an integer",
    ]


def test_bad_cidr_port_protocol_family_state() -> None:
    text = doc("""
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          selectors:
          - matchArgs:
            - {index: 0, operator: DAddr, values: ["10.0.0.300/8", "::1/129", "10.0.0.0/8", "fe80::1"]}
            - {index: 0, operator: DPort, values: ["70000", "443:80", "1024:2048"]}
            - {index: 0, operator: Protocol, values: ["IPPROTO_UPD"]}
            - {index: 0, operator: Family, values: ["AF_INET7"]}
            - {index: 0, operator: State, values: ["TCP_OPEN"]}
    """)
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchArgs[0].values[0]: '10.0.0.300/8' is not an IP address or CIDR",
        "spec.kprobes[0].selectors[0].matchArgs[0].values[1]: '::1/129' is not an IP address or CIDR",
        "spec.kprobes[0].selectors[0].matchArgs[1].values[0]: '70000' is not a port number (0-65535)",
        "spec.kprobes[0].selectors[0].matchArgs[1].values[1]: '443:80' is an empty range (min > max)",
        "spec.kprobes[0].selectors[0].matchArgs[2].values[0]: 'IPPROTO_UPD' is not a protocol number or a known "
        "name like IPPROTO_TCP",
        "spec.kprobes[0].selectors[0].matchArgs[3].values[0]: 'AF_INET7' is not an address family number or a "
        "known name like AF_INET",
        "spec.kprobes[0].selectors[0].matchArgs[4].values[0]: 'TCP_OPEN' is not a TCP state number or a known "
        "name like TCP_ESTABLISHED",
    ]


def test_file_type_substring_and_cel() -> None:
    text = doc("""
        kprobes:
        - call: security_file_open
          syscall: false
          args: [{index: 0, type: file}, {index: 1, type: string}]
          selectors:
          - matchArgs:
            - {index: 0, operator: FileType, values: [reg, folder]}
            - {index: 1, operator: SubString, values: ["%s"]}
            - {index: 0, operator: SubString, values: [x]}
            - {operator: CelExpr, values: ["", "arg7 > 0"]}
    """ % ("s" * 100))
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchArgs[0].values[1]: 'folder' is not a file type (blk, block, char, chr, "
        "dir, fifo, link, lnk, pipe, reg, regular, sock, socket)",
        "spec.kprobes[0].selectors[0].matchArgs[1].values[0]: is 100 characters; SubString values are limited to 99",
        "spec.kprobes[0].selectors[0].matchArgs[2].operator: 'SubString' is not valid for arg type 'file' (valid: "
        "['Equal', 'NotEqual', 'Prefix', 'NotPrefix', 'Postfix', 'NotPostfix', 'FileType', 'NotFileType'])",
        "spec.kprobes[0].selectors[0].matchArgs[3].values[0]: empty CEL expression",
    ]


def test_auto_args_accept_any_operator_and_string_values() -> None:
    text = doc("""
        tracepoints:
        - subsystem: syscalls
          event: sys_enter_openat
          args: [{index: 5}]
          selectors:
          - matchArgs: [{index: 0, operator: Equal, values: [a, b, c, d, e]}]
    """)
    (policy,) = load_policies(text)
    assert policy.spec.tracepoints[0].selectors[0].match_args[0].parsed == ("a", "b", "c", "d", "e")


def test_in_map_list_references() -> None:
    text = doc("""
        lists:
        - {name: fns, values: [do_sys_open]}
        tracepoints:
        - subsystem: raw_syscalls
          event: sys_enter
          args: [{index: 4, type: syscall64}, {index: 5, type: uint64}]
          selectors:
          - matchArgs:
            - {index: 0, operator: InMap, values: ["list:missing", "list:fns"]}
    """)
    assert errors(text) == [
        "spec.tracepoints[0].selectors[0].matchArgs[0].values[0]: list 'missing' is not defined in spec.lists",
        "spec.tracepoints[0].selectors[0].matchArgs[0].values[1]: list 'fns' is not a syscall list (type "
        "syscalls or generated_syscalls)",
    ]


def test_capabilities_gained_needs_two_capability_args() -> None:
    text = doc("""
        kprobes:
        - call: commit_creds
          syscall: false
          args: [{index: 0, type: kernel_cap_t}, {index: 1, type: int}]
          selectors:
          - matchArgs: [{args: [0, 1], operator: CapabilitiesGained}]
          - matchArgs: [{index: 0, operator: CapabilitiesGained}]
    """)
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchArgs[0].args[1]: position 1 is a 'int' arg; CapabilitiesGained "
        "compares capability sets (cap_effective, cap_inheritable, cap_permitted, kernel_cap_t)",
        "spec.kprobes[0].selectors[1].matchArgs[0].args: CapabilitiesGained needs args: [new, old], two "
        "positions of capability args",
    ]


# ---------------------------------------------------------------------- other selector filters
def test_pids_namespaces_capabilities_binaries() -> None:
    text = openat("""
        - matchPIDs: [{operator: In, values: [1, 2, 3, 4, 5]}, {operator: NotIn, values: [-1]}]
          matchNamespaces: [{namespace: Pid, operator: In, values: [host, "4026531836"]}]
          matchNamespaceChanges: [{operator: In, values: [mnt, Netns]}]
          matchCapabilities:
          - {operator: In, values: [CAP_SYS_ADMN, cap_net_raw]}
          - {operator: NotIn, values: [CAP_BPF]}
          matchBinaries: [{operator: Prefix, followChildren: true, values: [/usr/]}]
    """)
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchPIDs[0].values: at most 4 PIDs per matchPIDs entry, got 5",
        "spec.kprobes[0].selectors[0].matchPIDs[1].values[0]: a PID cannot be negative, got -1",
        "spec.kprobes[0].selectors[0].matchBinaries[0].followChildren: only works with the In and NotIn "
        "operators, not 'Prefix'",
        "spec.kprobes[0].selectors[0].matchNamespaces[0].values[0]: 'host' is not a namespace inode number or "
        "'host_ns'",
        "spec.kprobes[0].selectors[0].matchNamespaceChanges[0].values[1]: 'Netns' is not one of ['Uts', 'Ipc', "
        "'Mnt', 'Pid', 'PidForChildren', 'Net', 'Time', 'TimeForChildren', 'Cgroup', 'User']",
        "spec.kprobes[0].selectors[0].matchCapabilities[0].values[0]: 'CAP_SYS_ADMN' is not a capability name "
        "(CAP_CHOWN ... CAP_CHECKPOINT_RESTORE)",
        "spec.kprobes[0].selectors[0].matchCapabilities[1].type: Effective capabilities are already filtered by "
        "spec.kprobes[0].selectors[0].matchCapabilities[0]; use one entry per capability type",
    ]


def test_label_selector_operators() -> None:
    text = doc("""
        podSelector:
          matchExpressions:
          - {key: app, operator: In}
          - {key: tier, operator: Exists, values: [x]}
        loader: true
    """)
    assert errors(text) == [
        "spec.podSelector.matchExpressions[0].values: must not be empty for operator In",
        "spec.podSelector.matchExpressions[1].values: must be empty for operator Exists",
    ]


# -------------------------------------------------------------------------------------- actions
def test_bad_rate_limit() -> None:
    text = openat("""
        - matchActions: [{action: Post, rateLimit: 5x, rateLimitScope: node}]
        - matchActions: [{action: Sigkill, rateLimit: 1m}]
    """)
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchActions[0].rateLimit: '5x' is not a valid rate limit: use a number of "
        "seconds, optionally suffixed with s, m or h (e.g. 30s, 1m, 2h)",
        "spec.kprobes[0].selectors[0].matchActions[0].rateLimitScope: 'node' is not one of ['thread', 'process', "
        "'global']",
        "spec.kprobes[0].selectors[1].matchActions[0].rateLimit: is only valid with the Post action, not Sigkill",
    ]


def test_action_required_params() -> None:
    text = openat("""
        - matchActions: [{action: Signal}, {action: Override}, {action: GetUrl}]
        - matchActions: [{action: DnsLookup}, {action: Signal, argSig: 99}]
    """)
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchActions[0].argSig: required by the Signal action",
        "spec.kprobes[0].selectors[0].matchActions[1].argError: required by the Override action (the error value "
        "to return)",
        "spec.kprobes[0].selectors[0].matchActions[2].argUrl: required by the GetUrl action",
        "spec.kprobes[0].selectors[1].matchActions[0].argFqdn: required by the DnsLookup action",
        "spec.kprobes[0].selectors[1].matchActions[1].argSig: 99 is not a signal number (1-64)",
    ]


def test_at_most_three_actions() -> None:
    text = openat("- matchActions: [{action: Post}, {action: NoPost}, {action: Sigkill}, {action: Post}]")
    assert errors(text) == ["spec.kprobes[0].selectors[0].matchActions: at most 3 actions per selector, got 4"]


def test_notify_enforcer_needs_an_enforcer() -> None:
    assert errors(openat("- matchActions: [{action: NotifyEnforcer, argSig: 9}]")) == [
        "spec.kprobes[0].selectors[0].matchActions[0].action: NotifyEnforcer needs an enforcer in spec.enforcers, "
        "and none is defined"]


def test_enforcers() -> None:
    text = doc("""
        lists: [{name: fns, values: [do_dup]}]
        enforcers:
        - calls: ["list:fns", "list:nope"]
        - calls: [sys_dup]
        kprobes: [{call: sys_dup, selectors: [{matchActions: [{action: NotifyEnforcer, argError: -1}]}]}]
    """)
    assert errors(text) == [
        "spec.enforcers: at most 1 enforcer per policy, got 2",
        "spec.enforcers[0].calls[0]: list 'fns' is not a syscall list (type syscalls or generated_syscalls)",
        "spec.enforcers[0].calls[1]: list 'nope' is not defined in spec.lists",
    ]


def test_override_rules() -> None:
    text = doc("""
        kprobes:
        - call: tcp_connect
          syscall: false
          selectors: [{matchActions: [{action: Override, argError: -1}]}]
        tracepoints:
        - subsystem: syscalls
          event: sys_enter_openat
          selectors: [{matchActions: [{action: Override, argError: -1}]}]
        uprobes:
        - path: /bin/sh
          symbols: [main]
          selectors: [{matchActions: [{action: Override}]}]
    """)
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchActions[0].action: Override on a kprobe needs a syscall (syscall: true) "
        "or a security_* function; 'tcp_connect' is neither",
        "spec.tracepoints[0].selectors[0].matchActions[0].action: Override is not supported on tracepoints "
        "(kprobes, fentries, uprobes and lsmhooks only)",
        "spec.uprobes[0].selectors[0].matchActions[0].argError: Override on a uprobe needs argError, argRegs, "
        "argNewSymbol, argNewAddr or argNewOffset",
    ]


def test_set_is_usdt_only_and_needs_its_params() -> None:
    text = doc("""
        usdts:
        - {path: /bin/x, provider: p, name: n, args: [{index: 0, type: int32}],
           selectors: [{matchActions: [{action: Set, argIndex: 3}]}]}
        kprobes:
        - {call: sys_x, selectors: [{matchActions: [{action: Set, argIndex: 0, argValue: 1}]}]}
    """)
    assert errors(text) == [
        "spec.kprobes[0].selectors[0].matchActions[0].action: Set works on usdts only",
        "spec.usdts[0].selectors[0].matchActions[0].argValue: required by the Set action",
        "spec.usdts[0].selectors[0].matchActions[0].argIndex: 3 does not refer to a declared arg (the usdt "
        "declares 1 args)",
    ]


# ------------------------------------------------------------------------------- lists, options
def test_list_references_and_types() -> None:
    text = doc("""
        lists:
        - {name: gen, type: generated_syscalls, values: [sys_x]}
        - {name: ft, type: generated_ftrace}
        - {name: ft, type: syscalls}
        - {name: re, type: generated_ftrace, pattern: "(unclosed"}
        kprobes: [{call: "list:missing"}]
    """)
    assert errors(text) == [
        "spec.lists[0].values: must be empty for a generated_syscalls list (values are generated)",
        "spec.lists[1].pattern: required for a generated_ftrace list",
        "spec.lists[2].name: duplicate list name 'ft' (also spec.lists[1])",
        "spec.lists[2].values: a syscalls list needs values",
        "spec.lists[3].pattern: '(unclosed' is not a valid regular expression: missing ), unterminated "
        "subpattern at position 0",
        "spec.kprobes[0].call: list 'missing' is not defined in spec.lists",
    ]


def test_options() -> None:
    text = doc("""
        options:
        - {name: policy-mode, value: enforcing}
        - {name: override-method, value: fmod_ret}
        - {name: disable-kprobe-multi, value: "yes"}
        - {name: policy-mode, value: monitor}
        - {name: max-events}
        - {name: disable-uprobe-multi}
        loader: true
    """)
    assert errors(text) == [
        "spec.options[0].value: 'enforcing' is not one of ['monitor', 'enforce']",
        "spec.options[1].value: 'fmod_ret' is not one of ['fmod-ret', 'override-return']",
        "spec.options[2].value: 'yes' is not a boolean (true or false)",
        "spec.options[3].name: option 'policy-mode' is set more than once",
        "spec.options[4].name: 'max-events' is not one of ['disable-kprobe-multi', 'disable-uprobe-multi', "
        "'override-method', 'policy-mode']",
        "spec.options[5].value: required for option 'disable-uprobe-multi'",
    ]


# --------------------------------------------------------------------------------------- macros
MACRO_SPEC = """
selectorsMacros:
  curl:
    matchBinaries: [{operator: In, values: [/usr/bin/curl]}]
    matchArgs: [{index: 9, operator: Equal, values: ["1"]}]
  nested:
    macros: [curl]
kprobes:
- call: sys_openat
  args: [{index: 0, type: int}]
  selectors:
  - macros: [curl, nope]
    matchBinaries: [{operator: In, values: [/bin/sh]}]
"""


def test_macro_errors() -> None:
    assert errors(doc(MACRO_SPEC)) == [
        "spec.selectorsMacros[nested].macros: a macro cannot use other macros",
        "spec.kprobes[0].selectors[0].macros[0]: matchBinaries is set both in the selector and in macro 'curl'; "
        "a field may come from one place only",
        "spec.kprobes[0].selectors[0].macros[1]: macro 'nope' is not defined; defined: ['curl', 'nested']",
        "spec.selectorsMacros[curl].matchArgs[0].index: 9 does not refer to a declared arg (declared indexes: [0]) "
        "(via spec.kprobes[0].selectors[0])",
    ]


# ------------------------------------------------------------------------- multi-document files
GOOD = doc("kprobes: [{call: sys_openat}]", metadata="name: good")
BAD = doc("kprobes: [{call: sys_openat, args: [{index: 0, type: nope}]}]", metadata="name: bad")


def test_multi_document_file_with_one_bad_document_is_rejected_whole(tmp_path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(GOOD + "---\n" + BAD + "---\n")
    with pytest.raises(PolicyError) as exc:
        load_policy_file(path)
    err = exc.value
    assert [p.document for p in err.problems] == [1]
    assert err.messages[0].startswith(f"{path}[1]: spec.kprobes[0].args[0].type: 'nope' is not one of ['auto', ")
    assert err.problems_in(0) == []


def test_multi_document_file_loads_every_policy_in_order() -> None:
    policies = load_policies("---\n" + GOOD + "---\n" + GOOD.replace("name: good", "name: second") + "---\n")
    assert [(p.name, p.document) for p in policies] == [("good", 0), ("second", 1)]


def test_problems_from_several_documents_are_all_reported() -> None:
    with pytest.raises(PolicyError) as exc:
        load_policies(BAD + "---\n" + GOOD + "---\n" + BAD.replace("name: bad", "name: bad2"), source="f.yaml")
    assert [p.document for p in exc.value.problems] == [0, 2]


def test_duplicate_policy_names_in_one_file() -> None:
    with pytest.raises(PolicyError) as exc:
        load_policies(GOOD + "---\n" + GOOD, source="f.yaml")
    assert exc.value.messages == ["f.yaml[1]: metadata.name: duplicate policy 'good': document 0 already defines it"]


def test_empty_file_and_comment_only_documents() -> None:
    assert load_policies("") == []
    assert load_policies("# nothing here\n---\n---\n") == []


def test_invalid_yaml_and_duplicate_keys() -> None:
    with pytest.raises(PolicyError) as exc:
        load_policies(GOOD + "---\nkind: [\n", source="f.yaml")
    assert exc.value.messages == [
        "f.yaml[1]: invalid YAML at line 9, column 1: while parsing a flow node: expected the node content, but "
        "found '<stream end>'"]
    with pytest.raises(PolicyError) as exc:
        load_policies(doc("kprobes: []\nkprobes: []"), source="f.yaml")
    assert exc.value.messages == [
        "f.yaml[0]: invalid YAML at line 7, column 3: while constructing a mapping: found duplicate key 'kprobes'"]


def test_unquoted_dates_stay_strings() -> None:
    (policy,) = load_policies(doc("loader: true", metadata="name: x\nannotations: {created: 2024-01-01}"))
    assert policy.metadata.annotations["created"] == "2024-01-01"


def test_not_utf8_file(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError) as exc:
        load_policy_file(path)
    assert exc.value.messages[0].startswith(f"{path}: not UTF-8 text:")


# ------------------------------------------------------------------------------------- warnings
def test_warnings_do_not_reject() -> None:
    text = doc("""
        lists: [{name: fns, values: [security_file_open], pattern: x}]
        kprobes:
        - call: security_file_open
          args: [{index: 0, type: file, maxData: true}]
          selectors:
          - matchActions:
            - {action: FollowFD, argFd: 0, argName: 1}
            - {action: Sigkill, argError: -1}
        - call: list:fns
          syscall: true
        lsmhooks: [{hook: security_file_open}]
    """)
    assert warnings(text) == [
        "spec.lists[0].pattern: is only used by generated_ftrace lists",
        "spec.kprobes[0].call: 'security_file_open' does not look like a syscall but syscall defaults to true: it "
        "will be attached as the arch syscall wrapper (__x64_security_file_open on x86-64); set syscall: false for "
        "a kernel function",
        "spec.kprobes[0].args[0].maxData: is only used by buffer args (char_buf, char_iovec, iov_iter), not 'file'",
        "spec.kprobes[0].selectors[0].matchActions[0].action: FollowFD is deprecated (removed from Tetragon's CRD "
        "after v1.7.0) and has no effect: fd args resolve the file directly",
        "spec.kprobes[0].selectors[0].matchActions[1].argError: has no effect on the Sigkill action",
        "spec.kprobes[1].syscall: is ignored: list 'fns' of type plain makes this a non-syscall hook",
        "spec.lsmhooks[0].hook: LSM hook names have no security_ prefix (e.g. 'file_open'); did you mean "
        "'file_open'?",
    ]


def test_explicit_syscall_true_on_a_kernel_function_warns() -> None:
    assert warnings(doc("kprobes: [{call: tcp_connect, syscall: true}]")) == [
        "spec.kprobes[0].call: 'tcp_connect' does not look like a syscall but syscall is set: it will be attached "
        "as the arch syscall wrapper (__x64_tcp_connect on x86-64); set syscall: false for a kernel function"]


def test_policy_without_hooks_warns() -> None:
    assert warnings(doc("options: [{name: policy-mode, value: monitor}]")) == [
        "spec: defines no hooks: the policy does nothing"]
