"""Every matchArgs operator, selector operator and action of the TracingPolicy engine, on the real
kernel with real syscalls: for each, a trigger that must match and one that must not. What the engine
refuses is refused with a reason, and the reason is asserted. Also: the policy status (per-hook lines in
``info``, kernel memory, per-action counters counted in the kernel) and `lanner tracingpolicy list`.

SAFETY: enforcing policies (Sigkill, Signal) are scoped with matchBinaries In to a program compiled
into tmp_path AND matchArgs to a path under tmp_path, so only processes this test starts can be
signalled. Observing policies are scoped to this test's pid, its fds or tmp_path.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from lanner.exporter.api.gen.tetragon import sensors_pb2
from tests.policy_specs import openat_equal_pids, policy_yaml

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[1]
ENABLED = sensors_pb2.TP_STATE_ENABLED


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def env():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not (ROOT / "sensors" / "generic" / "bpf" / "obj" / "generic_tp.bpf.o").exists():
        pytest.skip("run 'make bpf' first")
    from lanner.agent import Agent, AgentConfig
    from lanner.sensors.generic.engine import EngineContext, PolicyEngine

    # the measured probe of this kernel (what `lanner agent` uses); the agent's own engine is off, the
    # test drives its own
    agent = Agent(AgentConfig(export_stdout=False, grpc=None, health_address=None, run_probe=True,
                              policy_engine=False))
    engine = None
    try:
        agent.start()
        ctx = EngineContext(agent.probed(), agent.sensor.obj.map("execve_map").fd, agent.cache,
                            agent.encoder, agent.proto, agent.cfg.node_name)
        engine = PolicyEngine(ctx)
        yield Env(agent, engine)
    finally:
        if engine is not None:
            engine.close()
        agent.close()


class Env:
    def __init__(self, agent, engine) -> None:
        self.agent, self.engine = agent, engine

    def _read(self, policy: str | None) -> list[dict]:
        out = []
        self.agent.drain()  # process events first, so the policy events find their processes
        while True:
            raws = self.engine.ring.read_batch(1 << 16)
            if not raws:
                return out
            out += [orjson.loads(e.line) for e in self.engine.handle(raws, False)
                    if policy is None or e.policy_name == policy]

    def run(self, fn, policy: str | None) -> list[dict]:
        """Run fn and return the policy's events. Records are committed to the ring buffer inside the
        syscall, so once fn (and the children it waited for) returned, everything is there to read."""
        self._read(None)
        fn()
        return self._read(policy)

    def load(self, name: str, spec: str, expect_state: int | None = ENABLED) -> "Loaded":
        return Loaded(self.engine, policy_yaml(name, spec), name, expect_state)


class Loaded:
    """A policy loaded for a with-block; always deleted, and its links with it."""

    def __init__(self, engine, text: str, name: str, expect_state: int | None) -> None:
        self.engine, self.text, self.name, self.expect = engine, text, name, expect_state

    def __enter__(self):
        self.base = self.engine.links()
        self.engine.add(self.text, "test")
        st = self.engine.status(self.name)
        if self.expect is not None and st.state != self.expect:
            self.engine.delete(self.name)
            raise AssertionError(f"{self.name}: state {sensors_pb2.TracingPolicyState.Name(st.state)}: {st.error}")
        return st

    def __exit__(self, *exc) -> None:
        try:
            self.engine.delete(self.name)
        except KeyError:
            pass


def body(ev: dict) -> dict:
    return next(v for k, v in ev.items() if k.startswith("process_"))


def refused(env: Env, name: str, spec: str) -> str:
    """The parser's refusal message (the policy must not load at all)."""
    base = env.engine.links()
    with pytest.raises(ValueError) as exc:
        env.engine.add(policy_yaml(name, spec), "test")
    assert env.engine.links() == base and not [s for s in env.engine.list() if s.name == name]
    return str(exc.value)


def unavailable(env: Env, name: str, spec: str) -> str:
    """The engine's reason for not serving the policy's only hook (state LOAD_ERROR, nothing attached)."""
    base = env.engine.links()
    with env.load(name, spec, expect_state=sensors_pb2.TP_STATE_LOAD_ERROR) as st:
        assert env.engine.links() == base
        assert st.error.startswith("hook ") and "unavailable (" in st.info
        return st.error


# ----------------------------------------------------------------------------- integer operators
LSEEK_FD = 777  # the test's own fd number: every int-operator policy is scoped to it


@pytest.fixture
def seek_fd(tmp_path):
    fd = os.open(tmp_path / "seek", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.dup2(fd, LSEEK_FD)
        yield LSEEK_FD
    finally:
        os.close(fd)
        try:
            os.close(LSEEK_FD)
        except OSError:
            pass


def lseek_spec(op: str, values: list[str]) -> str:
    vals = ", ".join(f'"{v}"' for v in values)
    return f"""
    kprobes:
    - call: sys_lseek
      syscall: true
      args:
      - index: 0
        type: int
      - index: 1
        type: long
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
        - index: 0
          operator: Equal
          values: ["{LSEEK_FD}"]
        - index: 1
          operator: {op}
          values: [{vals}]
    """


# (operator, values, offsets that must match, offsets that must not)
INT_CASES = [
    ("Equal", ["1001"], [1001], [1002, 0]),
    ("Equal", ["1001", "0x7d2"], [1001, 2002], [1002]),  # several values, hex
    ("NotEqual", ["1001"], [1002, 0], [1001]),
    ("NotEqual", ["1001", "1002"], [1003], [1001, 1002]),  # negated: values ANDed
    ("GreaterThan", ["1000"], [1001, 5000], [1000, 7]),
    ("GT", ["1000"], [1001], [1000]),
    ("LessThan", ["0"], [-5, -1], [0, 3]),  # signed (long) compare
    ("LT", ["100"], [99, -3], [100, 101]),
    ("Mask", ["256"], [0x1FF, 0x100], [0xFF, 0x200]),
    ("Mask", ["1", "4"], [5, 4, 1], [2, 8]),
    ("InRange", ["100:200"], [100, 150, 200], [99, 201]),
    ("InRange", ["-10:-5", "20:21"], [-7, 20], [-4, 19]),
    ("NotInRange", ["100:200"], [99, 201], [100, 150, 200]),
    ("InMap", ["7", "9", "1000:1010"], [7, 9, 1005], [8, 1011]),
    ("NotInMap", ["7", "9"], [8, 10], [7, 9]),
]


@pytest.mark.parametrize("op,values,match,nomatch", INT_CASES,
                         ids=[f"{c[0]}-{'_'.join(c[1])}" for c in INT_CASES])
def test_int_operator(env, seek_fd, op, values, match, nomatch):
    def run():
        for off in match + nomatch:
            try:
                os.lseek(seek_fd, off, os.SEEK_SET)
            except OSError:  # negative offsets: EINVAL, the syscall was still entered
                pass

    with env.load(f"int-{op.lower()}", lseek_spec(op, values)):
        evs = env.run(run, f"int-{op.lower()}")
    got = [body(e)["args"][1]["long_arg"] for e in evs]
    assert got == match, (op, values, got)
    b = body(evs[0])
    assert b["function_name"] == "__x64_sys_lseek" and b["args"][0] == {"int_arg": LSEEK_FD}
    assert b["process"]["pid"] == os.getpid() and b["action"] == "KPROBE_ACTION_POST"


def test_int_operator_inmap_with_many_values(env, seek_fd):
    # InMap is a set lookup: 20000 values cost one lookup, and only the listed ones match
    values = [str(v) for v in range(50_000, 70_000)]
    with env.load("int-bigmap", lseek_spec("InMap", values)) as st:
        evs = env.run(lambda: [os.lseek(seek_fd, o, os.SEEK_SET) for o in (49_999, 50_000, 69_999, 70_000)],
                      "int-bigmap")
        assert st.kernel_memory_bytes > 20_000 * 24  # the set's 20000 entries are accounted
    assert [body(e)["args"][1]["long_arg"] for e in evs] == [50_000, 69_999]


# ------------------------------------------------------------------------------ string operators
OPEN_FLAGS = os.O_RDONLY | os.O_NOCTTY | os.O_NOFOLLOW  # Python adds O_CLOEXEC
SEEN_FLAGS = OPEN_FLAGS | os.O_CLOEXEC


def openat_spec(op: str, values: list[str]) -> str:
    vals = ", ".join(f'"{v}"' for v in values)
    return f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      - index: 2
        type: int
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
        - index: 2
          operator: Equal
          values: ["{SEEN_FLAGS}"]
        - index: 1
          operator: {op}
          values: [{vals}]
    """


# (operator, values, names that must match, names that must not); "T/" is tmp_path
STR_CASES = [
    ("Equal", ["T/a"], ["a"], ["ab", "b", "A"]),
    ("Equal", ["T/a", "T/b"], ["a", "b"], ["c"]),
    ("NotEqual", ["T/a"], ["b", "ab"], ["a"]),
    ("NotEqual", ["T/a", "T/b"], ["c"], ["a", "b"]),
    ("Prefix", ["T/pre"], ["pre", "pre1", "prefix/x"], ["xpre", "pr"]),
    ("Prefix", ["T/p1", "T/q"], ["p1x", "qq"], ["p2"]),
    ("NotPrefix", ["T/pre"], ["xpre", "pr"], ["pre1"]),
    ("Postfix", [".conf"], ["x.conf", "dir.conf"], ["x.confx", "xconf"]),
    ("Postfix", [".conf", "-yes"], ["a.conf", "b-yes"], ["c-no"]),
    ("NotPostfix", [".conf"], ["x.txt"], ["x.conf"]),
]


@pytest.mark.parametrize("op,values,match,nomatch", STR_CASES,
                         ids=[f"{c[0]}-{len(c[1])}" for c in STR_CASES])
def test_string_operator(env, tmp_path, op, values, match, nomatch):
    t = str(tmp_path)
    vals = [v.replace("T/", f"{t}/") for v in values]

    def run():
        for n in match + nomatch:
            try:
                os.close(os.open(f"{t}/{n}", OPEN_FLAGS))
            except OSError:  # ENOENT: the syscall was still entered with that path
                pass

    name = f"str-{op.lower()}"
    with env.load(name, openat_spec(op, vals)):
        evs = env.run(run, name)
    got = [body(e)["args"][0]["string_arg"] for e in evs]
    assert got == [f"{t}/{n}" for n in match], (op, vals, got)
    assert body(evs[0])["args"][1] == {"int_arg": SEEN_FLAGS}


@pytest.mark.parametrize("op,values,match,nomatch", [
    ("Equal", ["T/f1"], ["f1"], ["f2"]),
    ("Prefix", ["T/d/"], ["d/x"], ["f1"]),
    ("Postfix", [".log"], ["a.log"], ["f1"]),
    ("NotPostfix", [".log"], ["f1"], ["a.log"]),
])
def test_fd_operator(env, tmp_path, op, values, match, nomatch):
    """fd arguments are matched on the file's absolute path, resolved in BPF."""
    t = str(tmp_path)
    (tmp_path / "d").mkdir()
    vals = ", ".join(f'"{v.replace("T/", t + "/")}"' for v in values)
    spec = f"""
    kprobes:
    - call: sys_fsync
      syscall: true
      args:
      - index: 0
        type: fd
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
        - index: 0
          operator: {op}
          values: [{vals}]
    """

    def run():
        for n in match + nomatch:
            fd = os.open(f"{t}/{n}", os.O_WRONLY | os.O_CREAT, 0o600)
            os.fsync(fd)
            os.close(fd)

    name = f"fd-{op.lower()}"
    with env.load(name, spec):
        evs = env.run(run, name)
    assert [body(e)["args"][0] for e in evs] == [{"file_arg": {"path": f"{t}/{n}"}} for n in match]


# ----------------------------------------------------------------------------- network operators
def connect_spec(filters: str) -> str:
    return f"""
    kprobes:
    - call: sys_connect
      syscall: true
      args:
      - index: 1
        type: sockaddr
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
{textwrap.indent(textwrap.dedent(filters), " " * 8)}
    """


def udp_connect(addr: str, port: int) -> None:
    """connect() on a UDP socket: no packet is sent, the sockaddr reaches the syscall."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.connect((addr, port))
    except OSError:
        pass
    finally:
        s.close()


NET_CASES = [
    ("SAddr", ["127.0.0.2"], [("127.0.0.2", 9999)], [("127.0.0.3", 9999)]),
    ("SAddr", ["127.1.0.0/16"], [("127.1.2.3", 9999), ("127.1.255.1", 1)], [("127.2.0.1", 9999)]),
    ("SAddr", ["::1/128"], [("::1", 9999)], [("127.0.0.1", 9999)]),
    ("SAddr", ["127.0.0.0/8", "::1"], [("127.9.9.9", 9), ("::1", 9)], []),
    ("NotSAddr", ["127.0.0.0/8"], [("::1", 9999)], [("127.0.0.5", 9999)]),
    ("SPort", ["9999"], [("127.0.0.1", 9999)], [("127.0.0.1", 9998)]),
    ("SPort", ["9000:9100"], [("127.0.0.1", 9050), ("::1", 9000)], [("127.0.0.1", 9101)]),
    ("NotSPort", ["9999"], [("127.0.0.1", 9998)], [("127.0.0.1", 9999)]),
    ("SPortPriv", [], [("127.0.0.1", 80), ("127.0.0.1", 1023)], [("127.0.0.1", 1024)]),
    ("NotSportPriv", [], [("127.0.0.1", 8080)], [("127.0.0.1", 80)]),
    ("Family", ["AF_INET6"], [("::1", 9999)], [("127.0.0.1", 9999)]),
    ("Family", ["AF_INET"], [("127.0.0.1", 9999)], [("::1", 9999)]),
]


@pytest.mark.parametrize("op,values,match,nomatch", NET_CASES,
                         ids=[f"{c[0]}-{'_'.join(c[1]) or 'none'}" for c in NET_CASES])
def test_sockaddr_operator(env, op, values, match, nomatch):
    vals = ", ".join(f'"{v}"' for v in values)
    filt = f"- index: 1\n  operator: {op}\n" + (f"  values: [{vals}]\n" if values else "")
    name = f"net-{op.lower()}"
    with env.load(name, connect_spec(filt)):
        evs = env.run(lambda: [udp_connect(a, p) for a, p in match + nomatch], name)
    got = [(body(e)["args"][0]["sockaddr_arg"]["addr"], body(e)["args"][0]["sockaddr_arg"]["port"]) for e in evs]
    assert got == [(str(ipaddress.ip_address(a)), p) for a, p in match], (op, values, got)
    fam = body(evs[0])["args"][0]["sockaddr_arg"]["family"]
    assert fam == ("AF_INET6" if ":" in match[0][0] else "AF_INET")


def test_sockaddr_operators_combined(env):
    # several network filters in one selector are ANDed
    filt = """
    - index: 1
      operator: SAddr
      values: ["127.0.0.0/8"]
    - index: 1
      operator: SPort
      values: ["7000:7010"]
    - index: 1
      operator: Family
      values: ["AF_INET"]
    """
    with env.load("net-and", connect_spec(filt)):
        evs = env.run(lambda: [udp_connect(a, p) for a, p in
                               (("127.0.0.1", 7005), ("127.0.0.1", 7011), ("::1", 7005))], "net-and")
    assert [body(e)["args"][0]["sockaddr_arg"]["port"] for e in evs] == [7005]


@pytest.mark.parametrize("op,value", [("DAddr", "127.0.0.1"), ("NotDAddr", "127.0.0.1"), ("DPort", "80"),
                                      ("NotDPort", "80"), ("DPortPriv", None), ("Protocol", "IPPROTO_TCP"),
                                      ("State", "TCP_SYN_SENT")])
def test_sockaddr_refuses_sock_only_operators(env, op, value):
    """DAddr/DPort/Protocol/State compare fields of a socket (sock/skb/socket args), which a sockaddr
    (one address, one port) does not have: the parser refuses them on sockaddr, as Tetragon does."""
    filt = f"- index: 1\n  operator: {op}\n" + (f'  values: ["{value}"]\n' if value else "")
    msg = refused(env, "net-refused", connect_spec(filt))
    assert f"matchArgs[0].operator: {op!r} is not valid for arg type 'sockaddr' (valid: ['SAddr', 'NotSAddr', " \
           "'SPort', 'NotSPort', 'SPortPriv', 'NotSportPriv', 'Family'])" in msg


@pytest.mark.parametrize("op,value", [("DAddr", "10.0.0.0/8"), ("DPort", "443"), ("Protocol", "IPPROTO_TCP"),
                                      ("State", "TCP_ESTABLISHED")])
def test_sock_operators_need_kernel_function_hooks(env, op, value):
    """On sock args (tcp_connect(struct sock *)) the operators are valid, but the hook is a kernel
    function kprobe: unavailable on this kernel, with the reason."""
    spec = f"""
    kprobes:
    - call: tcp_connect
      syscall: false
      args:
      - index: 0
        type: sock
      selectors:
      - matchArgs:
        - index: 0
          operator: {op}
          values: ["{value}"]
    """
    if env.engine.probe.get("kprobe"):  # served (tests/test_policy_kernel_hooks.py triggers them)
        with env.load("sock-op", spec) as st:
            assert st.info == "kprobes[0] tcp_connect: kprobe tcp_connect" and st.sensors == ["generic_kprobe"]
        return
    err = unavailable(env, "sock-op", spec)
    assert err == ("hook kprobes[0] tcp_connect: needs kprobe attach, which this kernel lacks (kprobe: not "
                   "supported, see 'lanner probe')")


# ------------------------------------------------------------------------- operators not served
@pytest.mark.parametrize("op", ["SubString", "SubStringIgnCase"])
def test_substring_is_refused_with_reason(env, op):
    spec = openat_spec(op, ["etc"])
    assert unavailable(env, "substr", spec) == (
        f"hook kprobes[0] sys_openat: selectors[0].matchArgs: operator {op} on string arguments is not served")


def test_celexpr_is_refused_with_reason(env):
    spec = lseek_spec("Equal", ["1"]).replace('operator: Equal\n          values: ["1"]',
                                              'operator: CelExpr\n          values: ["arg1 > 10"]')
    assert "CelExpr" in spec
    assert unavailable(env, "cel", spec) == (
        "hook kprobes[0] sys_lseek: selectors[0].matchArgs: operator CelExpr on long arguments is not served")


def test_filetype_is_refused_with_reason(env):
    spec = """
    kprobes:
    - call: security_file_open
      syscall: false
      args:
      - index: 0
        type: file
      selectors:
      - matchArgs:
        - index: 0
          operator: FileType
          values: ["reg"]
    """
    if env.engine.probe.get("kprobe"):  # served on file args (tests/test_policy_kernel_hooks.py triggers it)
        with env.load("ftype", spec) as st:
            assert st.info == "kprobes[0] security_file_open: kprobe security_file_open"
    else:
        assert "hook kprobes[0] security_file_open: " in unavailable(env, "ftype", spec)
    # on a syscall hook the file type itself is what cannot be served
    spec = """
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: file
      selectors:
      - matchArgs:
        - index: 1
          operator: FileType
          values: ["reg"]
    """
    assert unavailable(env, "ftype2", spec) == (
        "hook kprobes[0] sys_openat: args[0]: type file is not available on syscall tracepoint field filename "
        "(const char *): it needs kprobe/BTF arguments")


@pytest.mark.parametrize("op,arg_type", [("Mask", "string"), ("GreaterThan", "string"), ("InMap", "string"),
                                         ("NotInMap", "string"), ("Prefix", "int"), ("SAddr", "int")])
def test_operator_invalid_for_arg_type_is_refused(env, op, arg_type):
    idx = 1 if arg_type == "string" else 2
    spec = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: {idx}
        type: {arg_type}
      selectors:
      - matchArgs:
        - index: {idx}
          operator: {op}
          values: ["1"]
    """
    msg = refused(env, "badop", spec)
    assert f"matchArgs[0].operator: {op!r} is not valid for arg type {arg_type!r}" in msg


# -------------------------------------------------------------------------- selector operators
C_OPENER = r"""
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);            /* the hooked syscall */
    char msg[512];
    int n = snprintf(msg, sizeof msg, "after-open %s %d\n", argv[1], fd);
    write(1, msg, n);                            /* marker 1: stdout, right after the syscall returned */
    if (argc > 2) {                              /* marker 2: a file */
        int m = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
        write(m, msg, n);
        close(m);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def opener(tmp_path_factory):
    """A tiny C program: open(argv[1]), then write a marker to stdout and to argv[2]."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing")
    d = tmp_path_factory.mktemp("opener")
    (d / "opener.c").write_text(C_OPENER)
    subprocess.run(["gcc", "-O1", "-o", str(d / "opener"), str(d / "opener.c")], check=True)
    return d / "opener"


def prog_copy(opener: Path, tmp_path: Path, name: str) -> str:
    dst = tmp_path / name
    shutil.copy(opener, dst)
    os.chmod(dst, 0o755)
    return str(dst)


def run_opener(exe: str, path: str, marker: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([exe, path] + ([marker] if marker else []), capture_output=True, timeout=30)


BIN_CASES = [("In", ["alpha"], ["alpha"]), ("In", ["alpha", "beta"], ["alpha", "beta"]),
             ("NotIn", ["alpha"], ["beta"]), ("Prefix", ["al"], ["alpha"]), ("NotPrefix", ["al"], ["beta"]),
             ("Postfix", ["ta"], ["beta"]), ("NotPostfix", ["ta"], ["alpha"])]


@pytest.mark.parametrize("op,values,match", BIN_CASES, ids=[f"{c[0]}-{len(c[1])}" for c in BIN_CASES])
def test_match_binaries_operator(env, opener, tmp_path, op, values, match):
    t = str(tmp_path)
    bins = {n: prog_copy(opener, tmp_path, f"bin-{n}") for n in ("alpha", "beta")}
    if op in ("In", "NotIn"):
        vals = [bins[v] for v in values]
    elif op.endswith("Prefix"):
        vals = [f"{t}/bin-{v}" for v in values]
    else:
        vals = values
    spec = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchBinaries:
        - operator: {op}
          values: [{", ".join(f'"{v}"' for v in vals)}]
        matchArgs:
        - index: 1
          operator: Equal
          values: ["{t}/target"]
    """
    name = f"bin-{op.lower()}"
    with env.load(name, spec):
        evs = env.run(lambda: [run_opener(bins[n], f"{t}/target") for n in ("alpha", "beta")], name)
    assert [body(e)["process"]["binary"] for e in evs] == [bins[n] for n in match]


@pytest.mark.parametrize("follow", [True, False])
def test_match_binaries_follow_children(env, tmp_path, follow):
    """followChildren: a process whose parent (up to 8 ancestors) runs a listed binary matches too."""
    t = str(tmp_path)
    sh = tmp_path / "lanner-sh"
    shutil.copy("/bin/sh", sh)
    spec = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchBinaries:
        - operator: In
          followChildren: {str(follow).lower()}
          values: ["{sh}"]
        matchArgs:
        - index: 1
          operator: Equal
          values: ["{t}/fc-target"]
    """
    (tmp_path / "fc-target").write_text("x")

    def run():
        # lanner-sh forks cat (the trailing `true` keeps it from exec'ing cat in place); the test's own
        # cat is no child of lanner-sh
        subprocess.run([str(sh), "-c", f"/bin/cat {t}/fc-target >/dev/null; true"], check=True, timeout=60)
        subprocess.run(["/bin/cat", f"{t}/fc-target"], check=True, timeout=60, stdout=subprocess.DEVNULL)

    with env.load("bin-follow", spec):
        evs = [body(e) for e in env.run(run, "bin-follow")]
    got = [(b["process"]["binary"].rsplit("/", 1)[1], b["parent"]["binary"]) for b in evs]
    assert got == ([("cat", str(sh))] if follow else []), got


@pytest.mark.parametrize("op", ["In", "NotIn"])
def test_match_pids_operator(env, opener, tmp_path, op):
    t = str(tmp_path)
    spec = openat_equal_pids(f"{t}/pidtarget", {"operator": op, "values": [os.getpid()]})
    child: dict = {}

    def run():
        try:
            os.close(os.open(f"{t}/pidtarget", os.O_RDONLY))
        except OSError:
            pass
        p = subprocess.Popen([str(opener), f"{t}/pidtarget"], stdout=subprocess.DEVNULL)
        child["pid"] = p.pid
        p.wait()

    with env.load(f"pids-{op.lower()}", spec):
        evs = env.run(run, f"pids-{op.lower()}")
    assert [body(e)["process"]["pid"] for e in evs] == [os.getpid() if op == "In" else child["pid"]]


def test_match_pids_two_entries_are_anded(env, opener, tmp_path):
    """Two matchPIDs entries in one selector must both hold: In [A, B] and NotIn [B] leave A only (not B,
    which the second excludes, nor the test process, which the first excludes)."""
    t = str(tmp_path)
    kids = [subprocess.Popen(["sh", "-c", f"read x; exec {opener} {t}/pid2target"], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL) for _ in range(2)]
    a, b = (k.pid for k in kids)
    spec = openat_equal_pids(f"{t}/pid2target", {"operator": "In", "values": [a, b]},
                             {"operator": "NotIn", "values": [b]})

    def run():
        try:
            os.close(os.open(f"{t}/pid2target", os.O_RDONLY))
        except OSError:
            pass
        for k in kids:
            k.communicate(b"go\n", timeout=30)

    try:
        with env.load("pids-two", spec):
            evs = env.run(run, "pids-two")
    finally:
        for k in kids:
            k.kill()
            k.wait()
    assert [body(e)["process"]["pid"] for e in evs] == [a]


def test_match_pids_follow_forks(env, opener, tmp_path):
    # the test process's children match through the parent walk; without followForks they do not
    t = str(tmp_path)
    for follow, expect in ((True, 1), (False, 0)):
        spec = openat_equal_pids(f"{t}/fftarget", {"operator": "In", "followForks": follow, "values": [os.getpid()]})
        with env.load("pids-ff", spec):
            evs = env.run(lambda: run_opener(str(opener), f"{t}/fftarget"), "pids-ff")
        assert len(evs) == expect, (follow, evs)


@pytest.mark.parametrize("op", ["In", "NotIn"])
def test_match_namespaces_operator(env, opener, tmp_path, op):
    """Pid namespace In/NotIn host_ns: a child in its own pid namespace (unshare -p) against one in the
    host's."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare missing")
    t = str(tmp_path)
    spec = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchNamespaces:
        - namespace: Pid
          operator: {op}
          values: ["host_ns"]
        matchArgs:
        - index: 1
          operator: Prefix
          values: ["{t}/ns-"]
    """

    def run():
        run_opener(str(opener), f"{t}/ns-host")
        subprocess.run(["unshare", "--pid", "--fork", str(opener), f"{t}/ns-child"], capture_output=True,
                       timeout=30, check=True)

    with env.load(f"ns-{op.lower()}", spec):
        evs = env.run(run, f"ns-{op.lower()}")
    assert [body(e)["args"][0]["string_arg"] for e in evs] == [f"{t}/ns-host" if op == "In" else f"{t}/ns-child"]


@pytest.mark.parametrize("op", ["In", "NotIn"])
def test_match_capabilities_operator(env, opener, tmp_path, op):
    """Effective CAP_SYS_ADMIN In/NotIn: root (the test's child) has it, a child run with setpriv
    dropping every capability does not."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv missing")
    t = str(tmp_path)
    spec = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchCapabilities:
        - type: Effective
          operator: {op}
          values: ["CAP_SYS_ADMIN"]
        matchArgs:
        - index: 1
          operator: Prefix
          values: ["{t}/cap-"]
    """

    def run():
        run_opener(str(opener), f"{t}/cap-root")
        subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", str(opener), f"{t}/cap-none"],
                       capture_output=True, timeout=30, check=True)

    with env.load(f"caps-{op.lower()}", spec):
        evs = env.run(run, f"caps-{op.lower()}")
    assert [body(e)["args"][0]["string_arg"] for e in evs] == [f"{t}/cap-root" if op == "In" else f"{t}/cap-none"]


# ------------------------------------------------------------------------------------------ actions
def enforce_spec(binary: str, prefix: str, actions: str, options: str = "") -> str:
    return options + textwrap.dedent(f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchBinaries:
        - operator: In
          values: ["{binary}"]
        matchArgs:
        - index: 1
          operator: Prefix
          values: ["{prefix}"]
        matchActions:
{textwrap.indent(textwrap.dedent(actions), " " * 8)}
    """)


def test_sigkill_proof(env, opener, tmp_path):
    """The killed process never runs an instruction after the hooked openat returns: neither of its
    markers (stdout, a file) appears, it exits by SIGKILL. The same binary opening another path, and
    another binary opening the same path, live and write their markers."""
    t = str(tmp_path)
    victim = prog_copy(opener, tmp_path, "victim")
    sibling = prog_copy(opener, tmp_path, "sibling")
    secret = f"{t}/secret-file"
    Path(secret).write_text("s")
    res = {}

    def run():
        res["victim"] = run_opener(victim, secret, f"{t}/marker-victim")
        res["victim-other"] = run_opener(victim, f"{t}/other-file", f"{t}/marker-victim-other")
        res["sibling"] = run_opener(sibling, secret, f"{t}/marker-sibling")

    with env.load("sigkill", enforce_spec(victim, f"{t}/secret", "- action: Sigkill")) as st:
        assert st.mode == sensors_pb2.TP_MODE_ENFORCE
        evs = env.run(run, "sigkill")
        st = env.engine.status("sigkill")
        counters = env.engine.counters("sigkill")
    v = res["victim"]
    assert v.returncode == -signal.SIGKILL
    assert b"after-open" not in v.stdout and not Path(f"{t}/marker-victim").exists()
    for k in ("victim-other", "sibling"):
        r = res[k]
        assert r.returncode == 0 and r.stdout.startswith(b"after-open "), (k, r)
        assert Path(f"{t}/marker-{k}").read_bytes() == r.stdout
    assert res["sibling"].stdout == f"after-open {secret} 3\n".encode()
    assert len(evs) == 1
    b = body(evs[0])
    assert b["action"] == "KPROBE_ACTION_SIGKILL" and b["process"]["binary"] == victim
    assert b["args"] == [{"string_arg": secret}]
    # counted in the kernel: one signal, one post, no monitor_signal
    assert (st.stats.action_counters.signal, st.stats.action_counters.post,
            st.stats.action_counters.monitor_signal) == (1, 1, 0)
    assert counters["matched"] == 1 and counters["signal"] == 1


def test_signal_action_with_argsig(env, opener, tmp_path):
    t = str(tmp_path)
    victim = prog_copy(opener, tmp_path, "victim-usr1")
    res = {}
    actions = "- action: Signal\n  argSig: 10"
    with env.load("signal", enforce_spec(victim, f"{t}/sig", actions)):
        evs = env.run(lambda: res.update(hit=run_opener(victim, f"{t}/sig-1"), miss=run_opener(victim, f"{t}/x")),
                      "signal")
        counters = env.engine.counters("signal")
    assert res["hit"].returncode == -signal.SIGUSR1 and b"after-open" not in res["hit"].stdout
    assert res["miss"].returncode == 0 and res["miss"].stdout.startswith(b"after-open")
    assert [body(e)["action"] for e in evs] == ["KPROBE_ACTION_SIGNAL"]
    assert counters["signal"] == 1


def test_monitor_then_enforce(env, opener, tmp_path):
    """policy-mode monitor: the event says SIGKILL, nothing is sent, monitor_signal counts it; switched
    to enforce at run time, the same trigger is killed and signal counts it."""
    t = str(tmp_path)
    victim = prog_copy(opener, tmp_path, "victim-mon")
    opts = "options:\n- name: policy-mode\n  value: monitor\n"
    res = {}
    with env.load("monitor", enforce_spec(victim, f"{t}/mon", "- action: Sigkill", options=opts)) as st:
        assert st.mode == sensors_pb2.TP_MODE_MONITOR
        evs = env.run(lambda: res.update(r=run_opener(victim, f"{t}/mon-1")), "monitor")
        assert res["r"].returncode == 0 and res["r"].stdout.startswith(b"after-open")
        assert [body(e)["action"] for e in evs] == ["KPROBE_ACTION_SIGKILL"]
        ac = env.engine.status("monitor").stats.action_counters
        assert (ac.monitor_signal, ac.signal, ac.post) == (1, 0, 1)

        env.engine.configure("monitor", "", None, sensors_pb2.TP_MODE_ENFORCE)
        assert env.engine.status("monitor").mode == sensors_pb2.TP_MODE_ENFORCE
        env.run(lambda: res.update(r=run_opener(victim, f"{t}/mon-2")), "monitor")
        assert res["r"].returncode == -signal.SIGKILL and b"after-open" not in res["r"].stdout
        ac = env.engine.status("monitor").stats.action_counters
        assert (ac.monitor_signal, ac.signal, ac.post) == (1, 1, 2)

        env.engine.configure("monitor", "", None, sensors_pb2.TP_MODE_MONITOR)
        env.run(lambda: res.update(r=run_opener(victim, f"{t}/mon-3")), "monitor")
        assert res["r"].returncode == 0
        assert env.engine.status("monitor").stats.action_counters.monitor_signal == 2


def test_post_and_nopost(env, tmp_path):
    t = str(tmp_path)
    spec = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
        - index: 1
          operator: Prefix
          values: ["{t}/quiet"]
        matchActions:
        - action: NoPost
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
        - index: 1
          operator: Prefix
          values: ["{t}/"]
        matchActions:
        - action: Post
    """

    def run():
        for n in ("quiet1", "loud1", "quiet2", "loud2", "loud3"):
            try:
                os.close(os.open(f"{t}/{n}", os.O_RDONLY))
            except OSError:
                pass

    with env.load("nopost", spec) as st:
        assert st.mode == sensors_pb2.TP_MODE_MONITOR_ONLY  # no enforcing action
        evs = env.run(run, "nopost")
        c = env.engine.counters("nopost")
        st = env.engine.status("nopost")
    # first matching selector wins: the quiet ones match selector 0 (NoPost) and are not posted
    assert [body(e)["args"][0]["string_arg"].rsplit("/", 1)[1] for e in evs] == ["loud1", "loud2", "loud3"]
    assert all(body(e)["action"] == "KPROBE_ACTION_POST" for e in evs)
    assert (c["matched"], c["post"], c["nopost"]) == (5, 3, 2)
    assert st.stats.action_counters.post == 3


def test_rate_limit(env, tmp_path):
    """Post rateLimit: one event per hook, selector and argument values per period. The key holds the
    first 16 bytes of each string argument, so the names here are short (opened relative to a dir fd)."""
    spec = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
        - index: 1
          operator: Postfix
          values: ["-rlkey"]
        matchActions:
        - action: Post
          rateLimit: 1m
    """
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)

    def run():
        for n in ("a", "a", "b", "a", "b", "a"):
            try:
                os.close(os.open(f"{n}-rlkey", os.O_RDONLY, dir_fd=dfd))
            except OSError:
                pass

    try:
        with env.load("ratelimit", spec):
            evs = env.run(run, "ratelimit")
            c = env.engine.counters("ratelimit")
    finally:
        os.close(dfd)
    # one event per distinct argument set within the minute
    assert [body(e)["args"][0]["string_arg"] for e in evs] == ["a-rlkey", "b-rlkey"]
    assert (c["matched"], c["post"], c["rate_limited"]) == (6, 2, 4)


REFUSED_ACTIONS = [
    ("GetUrl", "argUrl: http://example.invalid", "selectors[0]: action GetUrl is not served by this lanner build"),
    ("DnsLookup", "argFqdn: example.invalid", "selectors[0]: action DnsLookup is not served by this lanner build"),
    # served on kernel-function hooks with a sock/socket arg (tests/test_policy_kernel_hooks.py)
    ("TrackSock", "argSock: 0", "selectors[0]: TrackSock argSock 0 names no sock/socket argument of the hook"),
    ("UntrackSock", "argSock: 0", "selectors[0]: UntrackSock argSock 0 names no sock/socket argument of the hook"),
    ("CleanupEnforcerNotification", "",
     "selectors[0]: action CleanupEnforcerNotification is not served by this lanner build"),
    # kernelStackTrace / userStackTrace are served (tests/test_policy_stacks.py)
    ("Post", "imaHash: true", "selectors[0]: Post imaHash is not served by this build (it needs the IMA hash "
     "helpers in a sleepable LSM program)"),
]


@pytest.mark.parametrize("action,extra,reason", REFUSED_ACTIONS, ids=[f"{a}-{e.split(':')[0]}" for a, e, _ in
                                                                       REFUSED_ACTIONS])
def test_unserved_action_is_refused_with_reason(env, action, extra, reason):
    spec = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchActions:
        - action: {action}
          {extra}
    """
    assert unavailable(env, "act", spec) == f"hook kprobes[0] sys_openat: {reason}"


@pytest.mark.parametrize("action", ["Override", "NotifyEnforcer"])
def test_override_and_notify_enforcer_are_refused_with_reason(env, action):
    enforcers = "enforcers:\n- calls: [sys_openat]\n" if action == "NotifyEnforcer" else ""
    spec = enforcers + textwrap.dedent("""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchActions:
        - action: ACTION
          argError: -1
    """).replace("ACTION", action)
    p = env.engine.probe
    if p.get("fmod_ret"):
        # served by sys_enter_openat + an fmod_ret program on __x64_sys_openat, which the kernel accepts only
        # with CONFIG_FUNCTION_ERROR_INJECTION (Debian builds without it): refused at load, with the reason
        base = env.engine.links()
        with env.load("ovr", spec, expect_state=None) as st:
            if st.state != sensors_pb2.TP_STATE_ENABLED:
                assert st.state == sensors_pb2.TP_STATE_LOAD_ERROR and env.engine.links() == base
                assert st.error.startswith("hook kprobes[0] sys_openat: attach failed: fmod_ret on __x64_sys_openat "
                                           "refused by the kernel"), st.error
                assert env.engine.counters("ovr")["override"] == 0  # nothing decided without the enforcer
        return
    # NotifyEnforcer: the enforcer is an fmod_ret program on each spec.enforcers call
    ovr = "yes" if p.get("override_return") else "no"
    if action == "NotifyEnforcer":
        reason = ("NotifyEnforcer needs fmod_ret programs on the spec.enforcers calls (__x64_sys_openat), which "
                  f"this kernel lacks (fmod_ret: no, override_return: {ovr}; this build enforces with fmod_ret only)")
    elif p.get("override_return"):
        reason = (f"{action} needs an fmod_ret or kprobe override_return program on the call: the kernel has one, "
                  "but this lanner build does not serve it")
    else:
        reason = (f"{action} needs fmod_ret or override_return, which this kernel lacks (fmod_ret: no, "
                  "override_return: no)")
    assert unavailable(env, "ovr", spec) == f"hook kprobes[0] sys_openat: selectors[0]: {reason}"


@pytest.mark.parametrize("action,extra,reason", [
    ("Set", "argIndex: 0\nargValue: 1", "matchActions[0].action: Set works on usdts only"),
    ("Signal", "argSig: 99", "matchActions[0].argSig: 99 is not a signal number (1-64)"),
    ("NotifyEnforcer", "argError: -1", "NotifyEnforcer needs an enforcer in spec.enforcers, and none is defined"),
])
def test_invalid_action_is_refused_by_the_parser(env, action, extra, reason):
    spec = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      selectors:
      - matchActions:
        - action: {action}
{textwrap.indent(extra, " " * 10)}
    """
    assert reason in refused(env, "badact", spec)


def test_host_selector_alone_is_served(env):
    """hostSelector: {} alone selects the host's processes: the policy runs as an unscoped one. (Pod and
    container scoping are in tests/test_policy_workloads.py.)"""
    hooks = """
    kprobes:
    - call: sys_getppid
      syscall: true
    """
    base = env.engine.links()
    with env.load("scoped", "\n    hostSelector: {}" + hooks) as st:
        assert env.engine.links() == base + 1 and "runs for" not in st.info


# ------------------------------------------------------------------------------ status and the CLI
def sys_openat_served(probe: dict, ret: bool) -> tuple[str, str]:
    """How a `syscall: true` hook on openat is served with this probe (status text, sensor): fentry on
    __x64_sys_openat, else kprobe, else the syscall dispatcher (sensors/generic/compiler.py sys_wrapper)."""
    if probe.get("fentry") and (probe.get("fexit") or not ret):
        return "fentry fentry/__x64_sys_openat" + ("+fexit" if ret else ""), "generic_fentry"
    if probe.get("kprobe") and (probe.get("kretprobe") or not ret):
        return "kprobe __x64_sys_openat" + ("+kretprobe" if ret else ""), "generic_kprobe"
    return "syscall dispatch tp_btf/sys_enter[openat]" + ("+sys_exit[openat]" if ret else ""), "generic_tracepoint"


def test_status_per_hook_info_memory_and_counters(env, tmp_path):
    t = str(tmp_path)
    spec = f"""
    kprobes:
    - call: security_file_permission
      syscall: false
      args:
      - index: 0
        type: bpf_prog
    - call: sys_openat
      syscall: true
      return: true
      args:
      - index: 1
        type: string
      returnArg:
        index: 0
        type: int
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
        - index: 1
          operator: Prefix
          values: ["{t}/st-"]
    - call: sys_usdt_does_not_exist
      syscall: true
    tracepoints:
    - subsystem: sched
      event: sched_process_free_does_not_exist
    uprobes:
    - path: /bin/bash
      symbols: [main]
      selectors:
      - matchPIDs:
        - operator: In
          values: [1]
    """

    def run():
        for n in ("st-1", "st-2"):
            try:
                os.close(os.open(f"{t}/{n}", os.O_RDONLY))
            except OSError:
                pass

    with env.load("status", spec, expect_state=sensors_pb2.TP_STATE_PARTIALLY_ENABLED) as st:
        evs = env.run(run, "status")
        st = env.engine.status("status")
        mem_small = st.kernel_memory_bytes
    assert len(evs) == 2
    lines = st.info.split("; ")
    # bpf_prog args are served on no kernel: the hook is unavailable on kernels with kprobes too
    kp = "needs kprobe attach, which this kernel lacks (kprobe: not supported, see 'lanner probe')" \
        if not env.engine.probe.get("kprobe") else \
        "args[0]: type bpf_prog is not served on kprobe arguments by this lanner build"
    served, sensor = sys_openat_served(env.engine.probe, True)
    assert lines == [
        f"kprobes[0] security_file_permission: unavailable ({kp})",
        f"kprobes[1] sys_openat: {served} [matched 2, post 2]",
        "kprobes[2] sys_usdt_does_not_exist: unavailable (there is no syscalls/sys_enter_usdt_does_not_exist "
        "tracepoint to serve sys_usdt_does_not_exist (its format types the syscall's arguments)"
        + ("" if env.engine.probe.get("kprobe") else ", and this kernel lacks kprobe attach (kprobe: not supported)")
        + ")",
        "tracepoints[0] sched/sched_process_free_does_not_exist: unavailable (tracepoint "
        "sched/sched_process_free_does_not_exist does not exist on this kernel)",
        "uprobes[0] /bin/bash:main: uprobe /bin/bash:main",
    ], lines
    # error keeps what failed, hook by hook
    assert st.error.count("hook ") == 3 and "hook kprobes[0] security_file_permission: " in st.error
    assert st.sensors == sorted([sensor, "generic_uprobe"])
    assert st.stats.action_counters.post == 2 and st.stats.action_counters.signal == 0
    # kernel memory: the policy's entries in the shared maps (3 gen_hooks entries: openat entry+exit and
    # bash main, 2 per-CPU gen_stats entries, the binary/prefix sets); grows with its value sets
    e = env.engine
    hook_elem = 48 + 8 + ((e.hooks_map.value_size + 7) & ~7)
    stat_elem = 48 + 8 + 8 + ((e.stats_map.value_size + 7) & ~7) * e.stats_map.ncpus
    lpm_elem = 24 + e.lpm.key_size - 4 + e.lpm.value_size
    assert mem_small == 3 * hook_elem + 2 * stat_elem + lpm_elem
    big = spec.replace(f'operator: Prefix\n          values: ["{t}/st-"]',
                       "operator: NotPrefix\n          values: [" + ", ".join(f'"{t}/{i}"' for i in range(1000)) + "]")
    with env.load("status", big, expect_state=sensors_pb2.TP_STATE_PARTIALLY_ENABLED) as st2:
        assert st2.kernel_memory_bytes == mem_small + 999 * lpm_elem
    # disabled: the hooks are listed as detached, no link is left
    base = env.engine.links()
    with env.load("status", spec, expect_state=sensors_pb2.TP_STATE_PARTIALLY_ENABLED):
        assert env.engine.links() == base + 3
        env.engine.configure("status", "", False, None)
        st3 = env.engine.status("status")
        assert st3.state == sensors_pb2.TP_STATE_DISABLED and env.engine.links() == base
        assert f"kprobes[1] sys_openat: {served}: detached (policy disabled)" in st3.info.split("; ")
    assert env.engine.links() == base


def test_hooks_sharing_a_tracepoint(env, tmp_path):
    """Several hooks on one tracepoint (two policies, and two hooks of one policy on sys_enter_openat):
    the kernel takes a program once per tracepoint, so each runs on its own generic_tp instance; all
    are served, and deleting one leaves the others working."""
    t = str(tmp_path)

    def kp(prefix: str, ret: bool) -> str:
        r = "return: true\n      returnArg:\n        index: 0\n        type: int\n      " if ret else ""
        return f"""
    - call: sys_openat
      syscall: true
      {r}args:
      - index: 1
        type: string
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
        - index: 1
          operator: Prefix
          values: ["{t}/{prefix}"]"""

    a = "\n    kprobes:" + kp("a", False)
    b = "\n    kprobes:" + kp("b", True) + kp("", False) + f"""
    tracepoints:
    - subsystem: syscalls
      event: sys_enter_openat
      args:
      - index: 6
        type: string
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
        - index: 0
          operator: Prefix
          values: ["{t}/"]
    """

    def run():
        for n in ("a1", "b1"):
            try:
                os.close(os.open(f"{t}/{n}", os.O_RDONLY))
            except OSError:
                pass

    def names(evs):
        return sorted((next(iter(e)), body(e)["args"][0]["string_arg"].rsplit("/", 1)[1]) for e in evs)

    base = env.engine.links()
    with env.load("share-a", a), env.load("share-b", b) as st_b:
        assert env.engine.links() == base + 5  # a: 1; b: entry+exit, entry, tracepoint
        assert st_b.error == ""
        evs = env.run(run, None)
        got = {}
        for e in evs:
            pol = body(e)["policy_name"]
            if pol in ("share-a", "share-b"):
                got.setdefault(pol, []).append(e)
        assert names(got["share-a"]) == [("process_kprobe", "a1")]
        assert names(got["share-b"]) == [("process_kprobe", "a1"), ("process_kprobe", "b1"),
                                         ("process_kprobe", "b1"), ("process_tracepoint", "a1"),
                                         ("process_tracepoint", "b1")]
        assert [b_["return"]["int_arg"] for b_ in map(body, got["share-b"]) if "return" in b_] == [-2]
        env.engine.delete("share-a")
        assert env.engine.links() == base + 4
        evs = env.run(run, "share-b")
        assert len(evs) == 5
    assert env.engine.links() == base


def test_cli_list_shows_state_mode_hooks_memory_counters(tmp_path, opener):
    """`lanner tracingpolicy list` against a running agent (the real CLI and gRPC API)."""
    from tests.conftest import start_agent

    t = tmp_path / "w"
    t.mkdir()
    victim = prog_copy(opener, t, "cli-victim")
    pol = tmp_path / "cli.yaml"
    pol.write_text(policy_yaml("cli-kill", f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchBinaries:
        - operator: In
          values: ["{victim}"]
        matchArgs:
        - index: 1
          operator: Prefix
          values: ["{t}/kill-"]
        matchActions:
        - action: Sigkill
    - call: security_file_open
      syscall: false
      args:
      - index: 0
        type: bpf_prog
    """))  # bpf_prog args are served on no kernel: the hook is unavailable everywhere
    lanner = [sys.executable, "-m", "lanner"]
    a = start_agent(tmp_path)
    try:
        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(lanner + ["tp", *args, "--server-address", a.address], capture_output=True,
                                  text=True, timeout=60)

        p = cli("add", str(pol))
        assert p.returncode == 0, p.stderr
        r = run_opener(victim, f"{t}/kill-1")
        assert r.returncode == -signal.SIGKILL
        out = cli("list").stdout
        header, row = out.splitlines()[:2]
        assert header.split() == ["ID", "NAME", "STATE", "NAMESPACE", "SENSORS", "KERNELMEMORY", "MODE", "NPOST",
                                  "NENFORCE", "NMONITOR"]
        cols = row.split()
        from lanner.kernel.probe import run_probe  # the agent's mechanism for the syscall hook

        served, sensor = sys_openat_served({n: f.supported for n, f in run_probe().features.items()}, False)
        assert cols[1:5] == ["cli-kill", "partially_enabled", "(global)", sensor]
        assert float(cols[5]) > 0 and cols[6] == "kB" and cols[7] == "enforce"
        assert cols[8:] == ["1", "1", "0"]  # NPOST NENFORCE NMONITOR
        assert "\ncli-kill:\n" in out
        assert (f"  kprobes[0] sys_openat: {served} [matched 1, post 1, signal 1]" in out.splitlines())
        assert any(line.startswith("  kprobes[1] security_file_open: unavailable (") for line in out.splitlines())
        js = orjson.loads(cli("list", "-o", "json").stdout)
        (st,) = [x for x in js if x["name"] == "cli-kill"]
        assert st["stats"]["action_counters"] == {"post": "1", "signal": "1"}
        assert st["mode"] == "TP_MODE_ENFORCE" and st["state"] == "TP_STATE_PARTIALLY_ENABLED"
        assert int(st["kernel_memory_bytes"]) > 0 and st["info"].startswith("kprobes[0] sys_openat: ")
        p = cli("set-mode", "cli-kill", "monitor")
        assert p.returncode == 0, p.stderr
        r = run_opener(victim, f"{t}/kill-2")
        assert r.returncode == 0 and r.stdout.startswith(b"after-open")
        cols = cli("list").stdout.splitlines()[1].split()
        assert cols[7] == "monitor" and cols[8:] == ["2", "1", "1"]
        assert cli("delete", "cli-kill").returncode == 0
        assert "cli-kill" not in cli("list").stdout
    finally:
        a.stop()


def test_event_bytes_arg_is_base64(env, tmp_path):
    # char_buf with sizeArgIndex, a sanity check of the write path used by the write.yaml corpus policy
    target = tmp_path / "bytes"
    spec = f"""
    kprobes:
    - call: sys_write
      syscall: true
      args:
      - index: 0
        type: fd
      - index: 1
        type: char_buf
        sizeArgIndex: 3
      - index: 2
        type: size_t
      selectors:
      - matchArgs:
        - index: 0
          operator: Equal
          values: ["{target}"]
    """

    def run():
        with open(target, "wb", buffering=0) as fh:
            fh.write(b"\x00\x01binary\xff")

    with env.load("bytes", spec):
        evs = env.run(run, "bytes")
    (e,) = evs
    assert base64.b64decode(body(e)["args"][1]["bytes_arg"]) == b"\x00\x01binary\xff"
