"""Bad policies cannot hurt: the fast slice of the policy fuzzer (the full run is bench/fuzz_policies.py).

A fixed seed's mutants of the Tetragon corpus through the pure path (load -> validate -> compile -> pack: accepted,
or rejected with a field path; never an exception), a slice of them through a real PolicyEngine.add with the
engine's maps, links and list compared before and after, the same while a map write fails part way, and one input
per crash the fuzzer found.
"""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest

from lanner.sensors.generic.compiler import Compiler
from tests.conftest import SHARED
from tests.policy_fuzz import ACCEPTED, CRASH, FULL_PROBE, HOST_PROBE, NO_PATH, REJECTED, PurePath
from tests.policy_mutate import Mutator, corpus_seeds

SEED = 14
PURE_MUTANTS = 300
KERNEL_MUTANTS = 30


def doc(spec: str, name: str = "fuzz-regression") -> str:
    return (f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip(), "  ") + "\n")


@pytest.fixture(scope="module")
def pure() -> PurePath:
    return PurePath()


@pytest.fixture(scope="module")
def seeds():
    return corpus_seeds(SHARED / "tetragon-policies")


def test_mutants_are_reproducible_and_varied(seeds) -> None:
    first = [m.text for m in Mutator(seeds, SEED).mutants(40)]
    assert first == [m.text for m in Mutator(seeds, SEED).mutants(40)]
    assert len(set(first)) == len(first)
    assert first != [m.text for m in Mutator(seeds, SEED + 1).mutants(40)]


def test_pure_path_slice(pure, seeds) -> None:
    counts: Counter[str] = Counter()
    failures = []
    for m in Mutator(seeds, SEED).mutants(PURE_MUTANTS):
        o = pure.run(m.text)
        counts[o.kind] += 1
        if o.kind in (CRASH, NO_PATH):
            failures.append(f"mutant {m.number} ({m.seed}: {'; '.join(m.edits)[:300]}): {o.detail}\n{o.trace[-2000:]}")
    assert not failures, f"{len(failures)} of {PURE_MUTANTS}:\n" + "\n".join(failures[:3])
    # both halves of the path are exercised: the compiler by accepted mutants, the checks by rejected ones
    assert counts[ACCEPTED] >= PURE_MUTANTS // 10 and counts[REJECTED] >= PURE_MUTANTS // 2, counts


# ---------------------------------------------------------------------------- the harness sees what it must
def test_an_exception_in_the_compiler_is_a_crash(pure, monkeypatch) -> None:
    def broken(*args, **kw):
        raise KeyError("sel[9].nothing")

    monkeypatch.setattr(Compiler, "_tracepoint", broken)
    o = pure.run(doc("tracepoints: [{subsystem: syscalls, event: sys_enter_getppid}]"))
    assert o.kind == CRASH and "KeyError" in o.detail and "broken" in o.trace


def test_a_rejection_without_a_path_is_reported(pure, monkeypatch) -> None:
    from lanner.policy import loader

    def nowhere(doc, report):
        report.error("", "something is wrong")

    monkeypatch.setattr(loader, "validate_document", nowhere)
    o = pure.run(doc("tracepoints: []"))
    assert o.kind == NO_PATH and o.detail == "fuzz[0]: something is wrong"


# ------------------------------------------------------------------ one input per crash the fuzzer found
REJECTED_CASES = {
    # PyYAML composes recursively: 20,000 nested lists exhausted the stack (RecursionError)
    "deep nesting": ("kprobes: " + "[" * 20000 + "]" * 20000, "invalid YAML at line 6, column 110: collections "
                     "nested deeper than 100 levels"),
    # explicit tags whose scalar does not read: ValueError / KeyError / AttributeError out of the loader
    "!!int x": ("kprobes: [{call: !!int x}]", "invalid YAML at line 6, column 20: 'x' is not a valid !!int"),
    "!!bool x": ("kprobes: [{call: sys_openat, syscall: !!bool maybe}]", "'maybe' is not a valid !!bool"),
    "!!timestamp x": ("kprobes: [{call: !!timestamp soon}]", "'soon' is not a valid !!timestamp"),
    # a lone surrogate ("\ud800" escape) broke every .encode() of the validator and the compiler
    "surrogate": ('kprobes: [{call: sys_openat, selectors: [{matchBinaries: [{operator: In, values: ["/bin/\\ud800"]'
                  '}]}]}]', "invalid YAML at line 6, column 85: '/bin/\\ud800' is not valid Unicode text"),
    # a generated_ftrace pattern Python's re cannot compile for other reasons than re.error
    "pattern recursion": (f"lists: [{{name: l, type: generated_ftrace, pattern: '{'(' * 2000}{')' * 2000}'}}]",
                          "spec.lists[0].pattern: '((((("),
    "pattern overflow": ("lists: [{name: l, type: generated_ftrace, pattern: 'a{4294967296}'}]",
                         "spec.lists[0].pattern: 'a{4294967296}' is not a valid regular expression: the repetition"),
    # 4294967295h is 1.5e22 ns: rate_limit_ns (u64) could not be packed, a late failure without a path
    "rate limit": ("tracepoints: [{subsystem: syscalls, event: sys_enter_getppid, selectors: [{matchActions: "
                   "[{action: Post, rateLimit: 4294967295h}]}]}]",
                   "spec.tracepoints[0].selectors[0].matchActions[0].rateLimit: '4294967295h' is 15461882262000 "
                   "seconds; a rate limit is at most 4294967295 seconds"),
    # a NUL in a function name: libbpf would attach to the part before it; tracefs reads raised ValueError
    "NUL in call": ('kprobes: [{call: "sys_openat\\0x"}]', "spec.kprobes[0].call: a function name cannot contain"),
    "NUL in list": ('lists: [{name: l, values: ["security_file_open\\0x"]}]', "spec.lists[0].values[0]: a function"),
    "NUL in enforcer": ('enforcers: [{calls: ["sys_dup\\0x"]}]', "spec.enforcers[0].calls[0]: a function name"),
    # an empty key named no place: "unknown field" at path "" (or "spec.")
    "empty key": ('"": 1', 'spec[""]: unknown field'),
    # a key that is no string, at the root: "keys must be strings" at path ""
    "null key": ('kprobes: []\n~: 1', "spec[None]: keys must be strings, got null"),
}


@pytest.mark.parametrize("case", sorted(REJECTED_CASES))
def test_found_crash_is_now_a_located_rejection(pure, case) -> None:
    spec, expected = REJECTED_CASES[case]
    o = pure.run(doc(spec))
    assert o.kind == REJECTED, (o.kind, o.detail, o.trace[-1000:])
    assert expected in o.detail


def test_nul_character_in_the_text_names_its_line(pure) -> None:
    o = pure.run(doc("kprobes: [{call: sys_openat}]").replace("sys_openat", "sys_op\0enat"))
    assert o.kind == REJECTED and "invalid YAML at line 6, column 26: character U+0000 is not allowed" in o.detail


ACCEPTED_CASES = {
    # names past NAME_MAX: tracefs reads raised ENAMETOOLONG ("cannot be compiled: OSError")
    "long tracepoint": (f"tracepoints: [{{subsystem: {'x' * 5000}, event: e}}]", "does not exist on this kernel"),
    "long syscall": (f"kprobes: [{{call: sys_{'x' * 5000}}}]", "there is no syscalls/sys_enter_xxx"),
    # pyelftools' ELFError escaped the compiler: PolicyEngine.add raised it
    "not an ELF": ("uprobes: [{path: /etc/passwd, symbols: [main]}]", "/etc/passwd is not an ELF file this build"),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED_CASES))
def test_found_crash_is_now_an_unavailable_hook(pure, case) -> None:
    spec, reason = ACCEPTED_CASES[case]
    o = pure.run(doc(spec))
    assert o.kind == ACCEPTED, (o.kind, o.detail, o.trace[-1000:])
    assert len(o.unavailable) == 1 and reason in o.unavailable[0]


def test_value_sets_past_the_maps_stop_the_compiler(pure) -> None:
    # a generated_syscalls hook (hundreds of syscalls) with 5,000 binaries made a set per syscall: 1.7 million
    # entries, 8 s and hundreds of MB to compile 84 KB of YAML, for a policy the maps could never hold
    values = ", ".join(f"/usr/bin/b{i}" for i in range(5000))
    o = pure.run(doc(f"""
        lists: [{{name: all, type: generated_syscalls}}]
        kprobes: [{{call: "list:all", selectors: [{{matchBinaries: [{{operator: In, values: [{values}]}}]}}]}}]
    """))
    assert o.kind == ACCEPTED, (o.kind, o.detail)
    assert o.unavailable == ("hook kprobes[0] list:all: the policy's value sets need more than 425984 entries, "
                             "which is what the value-set maps hold for all policies together",)


def test_hooks_past_gen_hooks_are_unavailable(pure) -> None:
    hooks = ", ".join(["{subsystem: syscalls, event: sys_enter_getppid}"] * 1030)
    o = pure.run(doc(f"tracepoints: [{hooks}]"))
    assert o.kind == ACCEPTED and o.units == 2 * 1024, (o.kind, o.detail, o.units)
    assert len(o.unavailable) == 6 and o.unavailable[0] == (
        "hook tracepoints[1024] syscalls/sys_enter_getppid: the policy needs more than 1024 hook entries, which is "
        "what gen_hooks holds for all policies together")


def _filters(pure: PurePath, spec: str, probe: dict[str, bool]) -> dict:
    from lanner.policy import load_policies

    (compiled,) = pure.compile(load_policies(doc(spec)), probe)
    assert not compiled.unavailable, compiled.unavailable
    return compiled.hooks[0].units[0].config


def test_family_ranges_compile(pure) -> None:
    # Family "1:5" passed the validator (an IntRange) and raised TypeError in the compiler
    cfg = _filters(pure, """
        kprobes: [{call: tcp_connect, syscall: false, args: [{index: 0, type: sock}],
                   selectors: [{matchArgs: [{index: 0, operator: Family, values: ["1:5", AF_INET6]}]}]}]
    """, FULL_PROBE)
    assert (cfg["sel[0].filters[0].nranges"], cfg["sel[0].filters[0].lo[0]"], cfg["sel[0].filters[0].hi[0]"]) \
        == (1, 1, 5)
    assert cfg["sel[0].filters[0].set_id"] != 0  # AF_INET6 in the set


def test_namespace_inodes_read_as_the_validator_reads_them(pure) -> None:
    # "0b101" passed the validator (Go's ParseInt base 0) and raised ValueError in the compiler's int(); "010"
    # was 10 there, 8 for the validator
    cfg = _filters(pure, """
        tracepoints: [{subsystem: syscalls, event: sys_enter_getppid,
                       selectors: [{matchNamespaces: [{namespace: Mnt, operator: In, values: ["0b101", "010", "0x10"]}]}]}]
    """, HOST_PROBE)
    assert [cfg[f"sel[0].ns[0].vals[{k}]"] for k in range(3)] == [5, 8, 16]


def test_many_uprobes_on_one_binary_read_its_symbols_once(pure) -> None:
    # 300 uprobes on /bin/bash took 55 s to compile (the symbol table parsed for every hook); the limit is 10 s
    hook = "{path: /bin/bash, symbols: [readline]}"
    o = pure.run(doc(f"uprobes: [{', '.join([hook] * 300)}]"))
    assert o.kind == ACCEPTED, (o.kind, o.detail)
    assert o.units == 600  # a gen_hook entry and an attachment per uprobe


# ---------------------------------------------------------------------------------------- kernel path
@pytest.fixture(scope="module")
def engine():
    from tests.policy_fuzz_kernel import real_engine

    with real_engine() as e:
        yield e


@pytest.mark.bpf
def test_kernel_slice_leaves_nothing_behind(engine, pure, seeds) -> None:
    from tests.policy_fuzz_kernel import monitored, submit

    done: Counter[str] = Counter()
    problems = []
    for m in Mutator(seeds, SEED).mutants(400):
        text = monitored(m.text)
        o = pure.run(text)
        if (o.kind == ACCEPTED and o.units > 8) or (o.kind == REJECTED and done[REJECTED] >= KERNEL_MUTANTS // 2):
            continue
        result = submit(engine, text)
        done[o.kind] += 1
        if result.leaks or result.accepted != (o.kind == ACCEPTED):
            problems.append(f"mutant {m.number} ({'; '.join(m.edits)[:200]}): pure {o.kind}, engine "
                            f"{'accepted' if result.accepted else result.error[:300]}; leaks {list(result.leaks)}")
        if sum(done.values()) == KERNEL_MUTANTS:
            break
    assert not problems, "\n".join(problems[:5])
    assert done[ACCEPTED] >= 8 and sum(done.values()) == KERNEL_MUTANTS, done


LATE = doc("""
options: [{name: policy-mode, value: monitor}]
tracepoints:
- subsystem: syscalls
  event: sys_enter_getppid
kprobes:
- call: sys_openat
  args: [{index: 1, type: string}, {index: 2, type: int}]
  selectors:
  - matchArgs:
    - {index: 1, operator: Prefix, values: ["/nonexistent/fuzz/", "/nonexistent/fuzz2/"]}
    - {index: 2, operator: InMap, values: ["1234567", "7654321"]}
  - matchArgs:
    - {index: 1, operator: Equal, values: ["/nonexistent/fuzz/a", "/nonexistent/fuzz/b"]}
""", "fuzz-late-a") + "---\n" + doc("""
options: [{name: policy-mode, value: monitor}]
kprobes:
- call: sys_getppid
- call: sys_close
  args: [{index: 0, type: int}]
  selectors:
  - matchArgs: [{index: 0, operator: InMap, values: ["100001", "100002", "100003"]}]
    matchBinaries: [{operator: In, values: [/nonexistent/fuzz/bin]}]
""", "fuzz-late-b")


@pytest.mark.bpf
@pytest.mark.parametrize("after", [0, 1])
@pytest.mark.parametrize("point", ["int_set", "str_set", "lpm", "hooks_map", "stats_map"])
def test_late_failure_unloads_everything(engine, point, after) -> None:
    """A write failing in the first document (after=0) or later (1: the second document for the value sets)."""
    from tests.policy_fuzz_kernel import submit_with_fault

    result, fired = submit_with_fault(engine, LATE, point, after)
    assert fired
    assert not result.accepted and "could not be loaded" in result.error
    assert not result.leaks, result.leaks


@pytest.mark.bpf
def test_full_value_map_is_a_late_rejection_that_unloads_everything(engine) -> None:
    from tests.policy_fuzz_kernel import submit

    values = ", ".join(f'"/f/{i}"' for i in range(33_000))  # gen_str_set32 holds 32,768 short strings
    text = LATE.split("---\n")[0] + "---\n" + doc(f"""
        options: [{{name: policy-mode, value: monitor}}]
        kprobes: [{{call: sys_openat, args: [{{index: 1, type: string}}],
                   selectors: [{{matchArgs: [{{index: 1, operator: Equal, values: [{values}]}}]}}]}}]
    """, "fuzz-late-full")
    result = submit(engine, text)
    assert not result.accepted and "could not be loaded" in result.error, result.error[:500]
    assert not result.leaks, result.leaks


@pytest.mark.bpf
def test_a_leak_is_seen(engine, monkeypatch) -> None:
    """The check itself: an engine that forgets the value sets of a policy it unloads is caught (last in this file:
    the entries it leaves stay until the engine is closed)."""
    from tests.policy_fuzz_kernel import submit_with_fault

    monkeypatch.setattr(engine, "_clear_sets", lambda compiled: None)
    result, fired = submit_with_fault(engine, LATE, "stats_map", 1)
    assert fired and not result.accepted
    assert any(line.startswith("map int_set: ") for line in result.leaks), result.leaks
    assert any(line.startswith("set ids in use: ") for line in result.leaks), result.leaks
