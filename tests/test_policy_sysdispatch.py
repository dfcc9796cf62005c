"""The syscall dispatcher: `syscall: true` kprobes served by ONE program on the raw syscall tracepoint
sys_enter (+ sys_exit for return values), the hook list looked up by syscall number; in both flavours
(tp_btf, raw_tp) and the fallback to the syscall tracepoints (syscalls/sys_enter_X) on a kernel without
raw tracepoints. Same events (process_kprobe, __x64_sys_X, entry/exit paired) whatever the flavour.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from orjson import loads as orjson_loads

from lanner.exporter.api.gen.tetragon import sensors_pb2

from .test_policy_engine import HOST_PROBE, Loaded, _need_root, body, collect, copy_bin, policy_yaml

pytestmark = pytest.mark.bpf

FLAVOURS = {
    "tp_btf": ({}, "syscall dispatch tp_btf/sys_enter[openat]+sys_exit[openat]"),
    "raw_tp": ({"tp_btf": False}, "syscall dispatch raw_tp/sys_enter[openat]+sys_exit[openat]"),
    "tracepoint": ({"tp_btf": False, "raw_tp": False},
                   "syscall tracepoints syscalls/sys_enter_openat+sys_exit_openat"),
}


@pytest.fixture(scope="module")
def agent():
    _need_root()
    from lanner.agent import Agent, AgentConfig

    a = Agent(AgentConfig(export_stdout=False, grpc=None, health_address=None, run_probe=False))
    try:
        a.start()
        yield a
    finally:
        a.close()


@pytest.fixture(params=list(FLAVOURS))
def engine(request, agent):
    from lanner.sensors.generic.engine import EngineContext, PolicyEngine

    probe = dict(HOST_PROBE)
    probe.update(FLAVOURS[request.param][0])
    ctx = EngineContext(probe, agent.sensor.obj.map("execve_map").fd, agent.cache, agent.encoder, agent.proto,
                        agent.cfg.node_name)
    e = PolicyEngine(ctx)
    try:
        yield request.param, e
    finally:
        e.close()


def _spec(t: str, binary: str, ret: bool) -> str:
    r = "return: true\n      returnArg:\n        index: 0\n        type: int\n      " if ret else ""
    return f"""
    kprobes:
    - call: sys_openat
      syscall: true
      {r}args:
      - index: 0
        type: int
      - index: 1
        type: string
      selectors:
      - matchArgs:
        - index: 1
          operator: Prefix
          values: ["{t}/"]
        matchBinaries:
        - operator: In
          values: ["{binary}"]
    """


def test_syscall_kprobes_in_each_flavour(agent, engine, tmp_path):
    flavour, e = engine
    t = str(tmp_path)
    (tmp_path / "f1").write_text("x")
    mycat = copy_bin(tmp_path, "mycat")
    base = e.links()

    def run():
        subprocess.run([mycat, f"{t}/f1", f"{t}/missing", "/etc/hostname"], capture_output=True)
        subprocess.run(["/usr/bin/cat", f"{t}/f1"], capture_output=True)  # another binary: silent

    with Loaded(e, policy_yaml("sd-ret", _spec(t, mycat, True)), "sd-ret") as st, \
            Loaded(e, policy_yaml("sd-entry", _spec(t, mycat, False)), "sd-entry") as st2:
        assert st.state == st2.state == sensors_pb2.TP_STATE_ENABLED, (st.error, st2.error)
        assert st.info == f"kprobes[0] sys_openat: {FLAVOURS[flavour][1]}"
        assert e.links() == base + 3  # entry + exit, entry
        if flavour != "tracepoint":
            assert sorted(e._sys_links) == [0, 1]  # one program on sys_enter, one on sys_exit
        evs = collect(agent, e, run, "sd-ret")
        evs2 = collect(agent, e, run, "sd-entry")
        assert [body(x)["args"][1]["string_arg"] for x in evs] == [f"{t}/f1", f"{t}/missing"], evs
        b0, b1 = body(evs[0]), body(evs[1])
        assert "process_kprobe" in evs[0] and b0["function_name"] == "__x64_sys_openat"
        assert b0["args"][0] == {"int_arg": -100} and b0["return"]["int_arg"] >= 3
        assert b1["return"] == {"int_arg": -2}
        assert b0["process"]["binary"] == mycat
        assert [body(x)["args"][1]["string_arg"] for x in evs2] == [f"{t}/f1", f"{t}/missing"]
        assert all("return" not in body(x) for x in evs2)
        # the return hook goes: the exit program goes with it, the other hook keeps working
        e.delete("sd-ret")
        if flavour != "tracepoint":
            assert sorted(e._sys_links) == [0]
        assert e.links() == base + 1
        evs2 = collect(agent, e, run, "sd-entry")
        assert [body(x)["args"][1]["string_arg"] for x in evs2] == [f"{t}/f1", f"{t}/missing"]
        # disabled: nothing is left on sys_enter (the dispatcher costs every syscall while attached)
        e.configure("sd-entry", "", False, None)
        assert e.links() == base and not e._sys_links
        assert collect(agent, e, run, "sd-entry") == []
        e.configure("sd-entry", "", True, None)
        assert e.links() == base + 1
        assert len(collect(agent, e, run, "sd-entry")) == 2
    assert e.links() == base and not e._sys_links
    assert not [p for p in e.programs() if p[0].startswith("policy:sd-")]


def test_many_syscalls_and_a_list(agent, tmp_path):
    """A syscalls list hooks several syscall numbers in the one dispatcher; other syscalls pass through."""
    from lanner.sensors.generic.engine import EngineContext, PolicyEngine

    ctx = EngineContext(dict(HOST_PROBE), agent.sensor.obj.map("execve_map").fd, agent.cache, agent.encoder,
                        agent.proto, agent.cfg.node_name)
    e = PolicyEngine(ctx)
    spec = f"""
    lists:
    - name: dups
      type: syscalls
      values: ["sys_dup", "sys_dup2", "sys_dup3"]
    kprobes:
    - call: list:dups
      syscall: true
      args:
      - index: 0
        type: int
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
        - index: 0
          operator: Equal
          values: ["0"]
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def run():
        fd = libc.dup(0)
        libc.dup2(0, fd)
        libc.dup3(0, fd, os.O_CLOEXEC)
        libc.dup(1)  # arg 1: filtered out
        os.close(fd)

    try:
        with Loaded(e, policy_yaml("sd-list", spec), "sd-list") as st:
            assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
            assert st.info == ("kprobes[0] list:dups: syscall dispatch tp_btf/sys_enter[dup], "
                               "tp_btf/sys_enter[dup2], tp_btf/sys_enter[dup3]")
            assert sorted(nr for (d, nr) in e._sys_slots) == [32, 33, 292]
            evs = collect(agent, e, run, "sd-list")
            assert [body(x)["function_name"] for x in evs] == ["__x64_sys_dup", "__x64_sys_dup2", "__x64_sys_dup3"]
        assert not e._sys_slots and not e._sys_links
    finally:
        e.close()


def test_equal_strings_of_every_key_size(agent, tmp_path):
    """Equal (and matchBinaries In) strings live in hash maps by length (32/64/128-byte keys, or the whole
    260-byte one): a value of each size matches exactly, a string of the same length that differs in its
    last byte does not; a binary path over 122 bytes is found in the largest map."""
    from lanner.sensors.generic.engine import EngineContext, PolicyEngine

    ctx = EngineContext(dict(HOST_PROBE), agent.sensor.obj.map("execve_map").fd, agent.cache, agent.encoder,
                        agent.proto, agent.cfg.node_name)
    e = PolicyEngine(ctx)
    names = ["s", "m" * 26, "n" * 27, "o" * 58, "p" * 59, "q" * 122, "r" * 123, "x" * 200]
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    mycat = copy_bin(deep, "c")
    assert len(mycat) > 122
    for n in names:
        (tmp_path / n).write_text("x")
        (tmp_path / (n[:-1] + "Z")).write_text("x")
    values = ", ".join(f'"{n}"' for n in names)
    spec = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchArgs:
        - index: 1
          operator: Equal
          values: [{values}]
        matchBinaries:
        - operator: In
          values: ["{mycat}"]
    """

    def run():
        subprocess.run([mycat] + [x for n in names for x in (n, n[:-1] + "Z")], cwd=tmp_path, capture_output=True)
        subprocess.run(["/usr/bin/cat"] + names, cwd=tmp_path, capture_output=True)  # another binary: silent

    try:
        with Loaded(e, policy_yaml("sd-eq", spec), "sd-eq") as st:
            assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
            evs = collect(agent, e, run, "sd-eq")
            assert [body(x)["args"][0]["string_arg"] for x in evs] == names
    finally:
        e.close()


def test_without_a_syscall_table_hooks_stay_on_the_syscall_tracepoints(monkeypatch):
    """The dispatcher needs syscall numbers (the kernel headers' unistd_64.h); a machine without them
    serves syscall hooks from the syscall tracepoints, as before."""
    from lanner.policy import syscalls
    from lanner.sensors.generic.compiler import Compiler
    from lanner.policy.loader import load_policies

    def missing():
        raise FileNotFoundError("no x86_64 syscall table")

    ids = iter(range(1, 100))
    comp = Compiler(dict(HOST_PROBE), lambda: next(ids), lambda: next(ids))
    pol = load_policies(policy_yaml("sd-notable", _spec("/tmp/x", "/bin/true", True)), "test")[0]
    assert comp.compile(pol, True).hooks[0].mechanism == "syscall dispatch"
    monkeypatch.setattr(syscalls, "table", missing)
    cp = comp.compile(pol, True)
    assert not cp.unavailable and cp.hooks[0].mechanism == "syscall tracepoints"
    assert cp.hooks[0].units[0].attach == [("tp", "syscalls", "sys_enter_openat")]


# ------------------------------------------------- the syscall's wrapper: fentry, else kprobe (kernel matrix)
@pytest.fixture(scope="module")
def measured():
    """This kernel's `lanner probe` result (what `lanner agent` picks mechanisms from)."""
    from lanner.kernel.probe import run_probe

    return {name: f.supported for name, f in run_probe().features.items()}


# mechanism -> (features it needs, probe overrides forcing it, status of the return hook, sensor)
WRAPPERS = {
    "fentry": (("fentry", "fexit"), {}, "fentry fentry/__x64_sys_openat+fexit", "generic_fentry"),
    "kprobe": (("kprobe", "kretprobe"), {"fentry": False, "fexit": False},
               "kprobe __x64_sys_openat+kretprobe", "generic_kprobe"),
}


@pytest.mark.parametrize("mech", list(WRAPPERS))
def test_syscall_hooks_on_the_wrapper(agent, measured, mech, tmp_path):
    """Where `lanner probe` says fentry (+fexit), a `syscall: true` hook runs as fentry on __x64_sys_X (else
    kprobe + kretprobe): nothing on sys_enter, args read from the wrapper's struct pt_regs (an int, a user
    string, the mode in r10, an fd resolved to its file), the return value, and Sigkill of the test's own
    child. The same events as the dispatcher's. On a kernel without them (the CI host) this skips and
    syscall hooks stay on the dispatcher (the tests above)."""
    from lanner.sensors.generic.engine import EngineContext, PolicyEngine

    features, force, info, sensor = WRAPPERS[mech]
    missing = [f for f in features if not measured.get(f)]
    if missing:
        pytest.skip(f"this kernel lacks {', '.join(missing)} (lanner probe); runs in the make vmtest guests")
    probe = dict(measured)
    probe.update(force)
    ctx = EngineContext(probe, agent.sensor.obj.map("execve_map").fd, agent.cache, agent.encoder, agent.proto,
                        agent.cfg.node_name)
    e = PolicyEngine(ctx)
    t = str(tmp_path)
    (tmp_path / "f1").write_text("x")
    mycat = copy_bin(tmp_path, "mycat")
    victim = copy_bin(tmp_path, "victim")
    opener = copy_bin(tmp_path, "mytouch", "/usr/bin/touch")  # openat(AT_FDCWD, path, O_CREAT|..., 0666)
    ret_spec = _spec(t, mycat, True)
    fd_spec = f"""
    kprobes:
    - call: sys_write
      syscall: true
      args:
      - index: 0
        type: fd
      - index: 2
        type: size_t
      selectors:
      - matchArgs:
        - index: 0
          operator: Prefix
          values: ["{t}/"]
    """
    from .test_policy_engine import kill_spec

    def run():
        subprocess.run([mycat, f"{t}/f1", f"{t}/missing", "/etc/hostname"], capture_output=True)
        subprocess.run(["/usr/bin/cat", f"{t}/f1"], capture_output=True)  # another binary: silent
        subprocess.run([opener, f"{t}/created"], capture_output=True)
        with open(f"{t}/w.txt", "wb", buffering=0) as fh:
            fh.write(b"hello wrapper")

    try:
        base = e.links()
        with Loaded(e, policy_yaml("sw-ret", ret_spec), "sw-ret") as st, \
                Loaded(e, policy_yaml("sw-fd", fd_spec), "sw-fd") as st2, \
                Loaded(e, policy_yaml("sw-creat", _spec(t, opener, False).replace(
                    "        type: string\n", "        type: string\n      - index: 3\n        type: int\n", 1)),
                    "sw-creat") as st3:
            assert st.state == st2.state == st3.state == sensors_pb2.TP_STATE_ENABLED, (st.error, st2.error)
            assert st.info == f"kprobes[0] sys_openat: {info}"
            assert st2.info == f"kprobes[0] sys_write: {mech} " + (
                "fentry/__x64_sys_write" if mech == "fentry" else "__x64_sys_write")
            assert e.status("sw-ret").sensors == [sensor]
            assert e.links() == base + 4 and not e._sys_links  # entry + exit, entry, entry; no sys_enter
            evs = collect(agent, e, run, "sw-ret")
            assert [body(x)["args"][1]["string_arg"] for x in evs] == [f"{t}/f1", f"{t}/missing"], evs
            b0, b1 = body(evs[0]), body(evs[1])
            assert b0["function_name"] == "__x64_sys_openat" and b0["process"]["binary"] == mycat
            assert b0["args"][0] == {"int_arg": -100} and b0["return"]["int_arg"] >= 3
            assert b1["return"] == {"int_arg": -2}
            evs = collect(agent, e, run, "sw-creat")
            assert [body(x)["args"][1:] for x in evs] == [
                [{"string_arg": f"{t}/created"}, {"int_arg": 0o666}]], evs  # the 4th argument: r10
            evs = collect(agent, e, run, "sw-fd")
            assert [body(x)["args"] for x in evs] == [[{"file_arg": {"path": f"{t}/w.txt"}}, {"size_arg": "13"}]]
        assert e.links() == base
        # Sigkill from the wrapper's program, scoped to the test's own copy of cat
        runs: dict[str, int] = {}

        def kill_run():
            runs["victim"] = subprocess.run([victim, "/etc/hostname"], capture_output=True).returncode
            runs["cat"] = subprocess.run(["/usr/bin/cat", "/etc/hostname"], capture_output=True).returncode

        with Loaded(e, policy_yaml("sw-kill", kill_spec(victim, "Sigkill")), "sw-kill") as st:
            assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
            assert st.info.startswith(f"kprobes[0] sys_openat: {mech} ")
            evs = collect(agent, e, kill_run, "sw-kill")
            assert e.status("sw-kill").stats.action_counters.signal == 1
        assert runs == {"victim": -signal.SIGKILL, "cat": 0}
        assert len(evs) == 1 and body(evs[0])["action"] == "KPROBE_ACTION_SIGKILL"
        assert body(evs[0])["function_name"] == "__x64_sys_openat"
    finally:
        e.close()


def test_wrapper_without_btf_runs_as_kprobe(agent, measured):
    """A syscall without arguments may have no BTF entry for its wrapper (__x64_sys_getppid is an alias of
    __do_sys_getppid on Debian 6.1 and on this host): no fentry there, the hook runs as a kprobe on the symbol
    (or on the dispatcher without kprobes) and fires."""
    from lanner.sensors.generic.engine import EngineContext, PolicyEngine
    from lanner.sensors.generic.kernel_btf import btf_function

    if not (measured.get("fentry") and measured.get("kprobe")):
        pytest.skip("this kernel lacks fentry or kprobe (lanner probe); runs in the make vmtest guests")
    if btf_function("__x64_sys_getppid") is not False:
        pytest.skip("this kernel's BTF has __x64_sys_getppid")
    ctx = EngineContext(dict(measured), agent.sensor.obj.map("execve_map").fd, agent.cache, agent.encoder,
                        agent.proto, agent.cfg.node_name)
    e = PolicyEngine(ctx)
    spec = f"""
    kprobes:
    - call: sys_getppid
      syscall: true
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
    """
    try:
        with Loaded(e, policy_yaml("sw-noargs", spec), "sw-noargs") as st:
            assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
            assert st.info == "kprobes[0] sys_getppid: kprobe __x64_sys_getppid"
            evs = collect(agent, e, os.getppid, "sw-noargs")
            assert [body(x)["function_name"] for x in evs] == ["__x64_sys_getppid"]
    finally:
        e.close()


def test_hooks_of_one_syscall_share_what_they_read(agent, tmp_path):
    """The dispatcher's hooks of one syscall invocation share the binary and the argument slots an earlier hook
    read (the same argument in the same slot is not read again): each hook still sees its own arguments, in its
    own slots, with the truncation of a long path; a matchBinaries NotIn exception (checked after the filters)
    still excludes its binary; and a slot an earlier hook filled with another argument is read again."""
    from lanner.sensors.generic.engine import EngineContext, PolicyEngine

    t = str(tmp_path)
    mycat, other = copy_bin(tmp_path, "mycat"), copy_bin(tmp_path, "othercat")
    longp = f"{t}/" + "d" * 300  # past the 253 bytes a string slot keeps
    a = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args: [{{index: 1, type: string}}]
      selectors: [{{matchArgs: [{{index: 1, operator: Prefix, values: ["{t}/"]}}]}}]
    """
    b = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args: [{{index: 2, type: int}}, {{index: 1, type: string}}]
      selectors: [{{matchArgs: [{{index: 1, operator: Prefix, values: ["{t}/"]}}]}}]
    """
    c = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args: [{{index: 1, type: string}}]
      selectors:
      - matchBinaries: [{{operator: NotIn, values: ["{other}"]}}]
        matchArgs: [{{index: 1, operator: Prefix, values: ["{t}/"]}}]
    """
    ctx = EngineContext(dict(HOST_PROBE), agent.sensor.obj.map("execve_map").fd, agent.cache, agent.encoder,
                        agent.proto, agent.cfg.node_name)
    e = PolicyEngine(ctx)

    def run():
        subprocess.run([mycat, f"{t}/x", longp], capture_output=True)
        subprocess.run([other, f"{t}/y"], capture_output=True)

    try:
        with Loaded(e, policy_yaml("share-a", a), "share-a"), Loaded(e, policy_yaml("share-b", b), "share-b"), \
                Loaded(e, policy_yaml("share-c", c), "share-c"):
            agent.drain()
            e.handle(e.ring.read_batch(1 << 20), False)
            run()
            time.sleep(0.15)
            agent.drain()  # the processes' exec events first: the policy events name them
            evs = [orjson_loads(x.line) for x in e.handle(e.ring.read_batch(1 << 20), True)]
    finally:
        e.close()
    by = {}
    for ev in evs:
        k = body(ev)
        by.setdefault(ev["process_kprobe"]["policy_name"], []).append(k)
    strs = lambda name, slot: [(x["process"]["binary"], x["args"][slot].get("string_arg", "")) for x in by[name]]  # noqa: E731
    assert strs("share-a", 0) == [(mycat, f"{t}/x"), (mycat, longp[:253]), (other, f"{t}/y")], by["share-a"]
    assert strs("share-b", 1) == strs("share-a", 0)  # its string in slot 1, its flags in slot 0
    assert all(0 <= x["args"][0]["int_arg"] < 1 << 22 for x in by["share-b"]), by["share-b"]  # open flags
    assert strs("share-c", 0) == [(mycat, f"{t}/x"), (mycat, longp[:253])]  # `other` is an exception
    long_a = next(x for x in by["share-a"] if x["args"][0]["string_arg"] == longp[:253])
    long_c = next(x for x in by["share-c"] if x["args"][0]["string_arg"] == longp[:253])
    assert long_a["args"][0] == long_c["args"][0]  # the shared slot keeps its truncation


# ------------------------------------------------- the prefilter: one trie look-up decides which hooks run
def _pf_spec(sel: str) -> str:
    return f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args: [{{index: 1, type: string}}, {{index: 2, type: int}}]
      selectors:
      {sel}
    """


def _pf_paths(agent, e, run, names) -> dict[str, list[str]]:
    """Per policy, the paths its events name."""
    agent.drain()
    e.handle(e.ring.read_batch(1 << 20), False)
    run()
    time.sleep(0.15)
    agent.drain()
    out: dict[str, list[str]] = {n: [] for n in names}
    for _ in range(20):
        raws = e.ring.read_batch(1 << 20)
        if not raws:
            break
        for x in e.handle(raws, True):
            if x.policy_name in out:
                out[x.policy_name].append(body(orjson_loads(x.line))["args"][0]["string_arg"])
    return out


@pytest.mark.parametrize("flavour", ["tp_btf", "raw_tp"])
def test_prefilter_skips_hooks_whose_prefixes_cannot_match(agent, flavour, tmp_path):
    """Hooks every selector of which needs a path prefix (Prefix, or Equal) or postfix run only for the paths that
    may match: they still fire for theirs, the others are skipped (the dispatcher's counters); a hook with a
    selector without such a filter always runs; hooks added and deleted at run time keep the trie right."""
    from lanner.sensors.generic.engine import EngineContext, PolicyEngine

    t = str(tmp_path)
    mycat = copy_bin(tmp_path, "mycat")
    for d in ("hit", "third", "other"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x").write_text("x")
    paths = [f"{t}/hit/x", f"{t}/third/x", f"{t}/other/x", f"{t}/hit", f"{t}/other/y.pem"]
    (tmp_path / "other" / "y.pem").write_text("x")
    bins = f'matchBinaries: [{{operator: In, values: ["{mycat}"]}}]'
    pre = _pf_spec(f'- matchArgs: [{{index: 1, operator: Prefix, values: ["{t}/hit/"]}}]\n        {bins}')
    eq = _pf_spec(f'- matchArgs: [{{index: 1, operator: Equal, values: ["{t}/hit"]}}]\n        {bins}')
    post = _pf_spec(f'- matchArgs: [{{index: 1, operator: Postfix, values: [".pem"]}}]\n        {bins}')
    third = _pf_spec(f'- matchArgs: [{{index: 1, operator: Prefix, values: ["{t}/third/"]}}]\n        {bins}')
    # the second selector has no path filter: the hook runs for every path
    mixed = _pf_spec(f'- matchArgs: [{{index: 1, operator: Prefix, values: ["{t}/hit/"]}}]\n        {bins}\n'
                     f'      - {bins}')
    probe = dict(HOST_PROBE)
    probe.update(FLAVOURS[flavour][0])
    e = PolicyEngine(EngineContext(probe, agent.sensor.obj.map("execve_map").fd, agent.cache, agent.encoder,
                                   agent.proto, agent.cfg.node_name))
    names = ("pf-pre", "pf-eq", "pf-third", "pf-mixed", "pf-post")

    def run():
        subprocess.run([mycat, *paths], capture_output=True)

    try:
        with Loaded(e, policy_yaml("pf-pre", pre), "pf-pre"), Loaded(e, policy_yaml("pf-eq", eq), "pf-eq"), \
                Loaded(e, policy_yaml("pf-mixed", mixed), "pf-mixed"), Loaded(e, policy_yaml("pf-post", post), "pf-post"):
            st = e._sys_pf.by_nr[257]
            assert st.off == 1 and len(st.entries) == 3  # {t}/hit/ holds {t}/hit's slot too (a prefix of it); mep.
            before = e.sys_prefilter_stats()
            got = _pf_paths(agent, e, run, names)
            after = e.sys_prefilter_stats()
            assert got["pf-pre"] == [f"{t}/hit/x"] and got["pf-eq"] == [f"{t}/hit"], got
            assert got["pf-post"] == [f"{t}/other/y.pem"], got
            assert [p for p in got["pf-mixed"] if p.startswith(t)] == paths, got  # always run
            # mycat's ld.so opens and the paths outside both prefixes skipped both prefiltered hooks
            assert after["calls"] - before["calls"] >= len(paths)
            assert after["skipped"] - before["skipped"] >= 3 * 4, (before, after)
            with Loaded(e, policy_yaml("pf-third", third), "pf-third"):  # added at run time
                got = _pf_paths(agent, e, run, names)
                assert got["pf-third"] == [f"{t}/third/x"] and got["pf-pre"] == [f"{t}/hit/x"], got
                e.delete("pf-pre")  # deleted at run time: its prefix goes, {t}/hit stays
                got = _pf_paths(agent, e, run, names)
                assert got["pf-pre"] == [] and got["pf-eq"] == [f"{t}/hit"], got
                assert got["pf-third"] == [f"{t}/third/x"], got
                assert [p for p in got["pf-mixed"] if p.startswith(t)] == paths, got
                assert len(e._sys_pf.by_nr[257].entries) == 3  # {t}/hit, {t}/third/, mep.
        assert not e._sys_pf.by_nr and not e._sys_pf.of_hook
        assert list(e.sys.map("gen_sys_pf").keys()) == []
    finally:
        e.close()


def test_postfix_reversals_are_shared_only_while_the_slot_holds_the_same_string(agent, tmp_path):
    """Hooks of one invocation reuse the reversal (Postfix) an earlier hook made of the same slot's string; a hook
    whose slot 0 holds the other name of rename(2) reverses its own string."""
    import ctypes

    from lanner.sensors.generic.engine import EngineContext, PolicyEngine

    t = str(tmp_path)

    def spec(index: int, suffix: str) -> str:
        return f"""
    kprobes:
    - call: sys_rename
      syscall: true
      args: [{{index: {index}, type: string}}]
      selectors: [{{matchArgs: [{{index: {index}, operator: Postfix, values: ["{suffix}"]}}]}}]
    """

    libc = ctypes.CDLL(None, use_errno=True)

    def run():
        for old, new in (("x.a", "y.c"), ("x.c", "y.b"), ("z.a", "z.b")):
            (tmp_path / old).write_text("x")
            libc.syscall(82, f"{t}/{old}".encode(), f"{t}/{new}".encode())  # __NR_rename

    e = PolicyEngine(EngineContext(dict(HOST_PROBE), agent.sensor.obj.map("execve_map").fd, agent.cache,
                                   agent.encoder, agent.proto, agent.cfg.node_name))
    names = ("rv-old", "rv-old2", "rv-new")
    try:
        with Loaded(e, policy_yaml("rv-old", spec(0, ".a")), "rv-old"), \
                Loaded(e, policy_yaml("rv-old2", spec(0, "a")), "rv-old2"), \
                Loaded(e, policy_yaml("rv-new", spec(1, ".b")), "rv-new"):
            got = _pf_paths(agent, e, run, names)
    finally:
        e.close()
    assert got["rv-old"] == got["rv-old2"] == [f"{t}/x.a", f"{t}/z.a"], got
    assert got["rv-new"] == [f"{t}/y.b", f"{t}/z.b"], got
