"""TracingPolicy engine on the real kernel: generic tracepoint / syscall / uprobe programs, selectors
and actions evaluated in BPF, events in Tetragon's JSON.

SAFETY: every enforcing policy here is scoped to a binary copied into tmp_path (matchBinaries In with
that exact path), so nothing but the test's own children can be signalled.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from lanner.exporter.api.gen.tetragon import sensors_pb2
from tests.policy_specs import policy_yaml

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "tetragon-policies"
HOST_PROBE = {"tracepoint": True, "raw_tp": True, "tp_btf": True, "uprobe": True, "uretprobe": True,
              "send_signal": True, "kprobe": False, "kretprobe": False, "fentry": False, "fexit": False,
              "fmod_ret": False, "lsm": False, "override_return": False}


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not (ROOT / "sensors" / "generic" / "bpf" / "obj" / "generic_tp.bpf.o").exists():
        pytest.skip("run 'make bpf' first")


@pytest.fixture(scope="module")
def env():
    _need_root()
    from lanner.agent import Agent, AgentConfig
    from lanner.sensors.generic.engine import EngineContext, PolicyEngine

    agent = Agent(AgentConfig(export_stdout=False, grpc=None, health_address=None, run_probe=False))
    engine = None
    try:
        agent.start()
        ctx = EngineContext(HOST_PROBE, agent.sensor.obj.map("execve_map").fd, agent.cache, agent.encoder,
                            agent.proto, agent.cfg.node_name)
        engine = PolicyEngine(ctx)
        yield agent, engine
    finally:
        if engine is not None:
            engine.close()
        agent.close()


class Loaded:
    """Adds a policy for a with-block; always deletes it."""

    def __init__(self, engine, yaml_text: str, name: str) -> None:
        self.engine, self.yaml, self.name = engine, yaml_text, name

    def __enter__(self):
        self.engine.add(self.yaml, "test")
        return self.engine.status(self.name)

    def __exit__(self, *exc) -> None:
        try:
            self.engine.delete(self.name)
        except KeyError:
            pass


def collect(agent, engine, fn, policy: str, settle: float = 0.15) -> list[dict]:
    """Run fn, then return the policy's events as parsed JSON."""
    agent.drain()
    engine.handle(engine.ring.read_batch(1 << 20), False)  # drop older records
    fn()
    time.sleep(settle)
    agent.drain()
    out = []
    for _ in range(20):
        raws = engine.ring.read_batch(1 << 20)
        if not raws:
            break
        out += [orjson.loads(e.line) for e in engine.handle(raws, True) if e.policy_name == policy]
    return out


def body(ev: dict) -> dict:
    return next(v for k, v in ev.items() if k.startswith("process_"))


def copy_bin(tmp_path: Path, name: str, src: str = "/usr/bin/cat") -> str:
    dst = tmp_path / name
    shutil.copy(src, dst)
    os.chmod(dst, 0o755)
    return str(dst)


# ------------------------------------------------------------------------------------ tracepoints
def test_tracepoint_int_and_string_match_args(env, tmp_path):
    agent, engine = env
    t = str(tmp_path)
    in_map = list(range(10_000_000, 10_010_000)) + [os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK]
    values = ", ".join(f'"{v}"' for v in in_map)
    spec = f"""
    tracepoints:
    - subsystem: syscalls
      event: sys_enter_openat
      args:
      - index: 6
        type: string
      - index: 7
        type: int
      selectors:
      - matchArgs:
        - index: 0
          operator: Prefix
          values: ["{t}/pre"]
      - matchArgs:
        - index: 0
          operator: Equal
          values: ["{t}/eq"]
        - index: 1
          operator: NotEqual
          values: ["{os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC}"]
      - matchArgs:
        - index: 0
          operator: Prefix
          values: ["{t}/map"]
        - index: 1
          operator: InMap
          values: [{values}]
    """
    for n in ("pre1", "eq", "map1", "other"):
        (tmp_path / n).write_text("x")

    def run():
        for n, flags in (("pre1", os.O_RDONLY), ("eq", os.O_RDONLY), ("eq", os.O_WRONLY | os.O_CREAT),
                         ("map1", os.O_RDONLY | os.O_NONBLOCK), ("map1", os.O_RDONLY), ("other", os.O_RDONLY)):
            os.close(os.open(f"{t}/{n}", flags))

    with Loaded(engine, policy_yaml("tp-args", spec), "tp-args") as st:
        assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
        evs = collect(agent, engine, run, "tp-args")
    got = [(body(e)["args"][0]["string_arg"].rsplit("/", 1)[1], body(e)["args"][1]["int_arg"]) for e in evs]
    cloexec = os.O_CLOEXEC
    assert got == [("pre1", cloexec), ("eq", cloexec), ("map1", cloexec | os.O_NONBLOCK)]
    b = body(evs[0])
    assert b["subsys"] == "syscalls" and b["event"] == "sys_enter_openat"
    assert b["process"]["pid"] == os.getpid() and b["action"] == "KPROBE_ACTION_POST"
    assert b["policy_name"] == "tp-args" and evs[0]["node_name"]


def test_syscall_kprobe_with_return_and_binaries(env, tmp_path):
    agent, engine = env
    mycat = copy_bin(tmp_path, "mycat")
    t = str(tmp_path)
    (tmp_path / "f1").write_text("x")
    spec = f"""
    kprobes:
    - call: sys_openat
      syscall: true
      return: true
      message: "opened"
      tags: ["test"]
      args:
      - index: 0
        type: int
      - index: 1
        type: string
        label: path
      returnArg:
        index: 0
        type: int
      selectors:
      - matchArgs:
        - index: 1
          operator: Prefix
          values: ["{t}/"]
        matchBinaries:
        - operator: In
          values: ["{mycat}"]
    """

    def run():
        subprocess.run([mycat, f"{t}/f1", f"{t}/missing"], capture_output=True)
        subprocess.run(["/usr/bin/cat", f"{t}/f1"], capture_output=True)

    with Loaded(engine, policy_yaml("kp-openat", spec), "kp-openat") as st:
        assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
        evs = collect(agent, engine, run, "kp-openat")
    assert len(evs) == 2, evs
    b0, b1 = body(evs[0]), body(evs[1])
    assert "process_kprobe" in evs[0]
    assert b0["function_name"] == "__x64_sys_openat"
    assert b0["args"] == [{"int_arg": -100}, {"string_arg": f"{t}/f1", "label": "path"}]
    assert b0["return"]["int_arg"] >= 3
    assert b1["args"][1]["string_arg"] == f"{t}/missing" and b1["return"] == {"int_arg": -2}
    assert b0["process"]["binary"] == mycat and b0["message"] == "opened" and b0["tags"] == ["test"]
    assert b0["parent"]["pid"] == os.getpid()


def test_raw_syscalls_with_syscall_list(env):
    agent, engine = env
    spec = f"""
    lists:
    - name: dups
      type: syscalls
      values: ["sys_dup", "sys_dup2"]
    tracepoints:
    - subsystem: raw_syscalls
      event: sys_enter
      args:
      - index: 4
        type: syscall64
      selectors:
      - matchPIDs:
        - operator: In
          values: [{os.getpid()}]
        matchArgs:
        - index: 0
          operator: InMap
          values: ["list:dups"]
    """

    libc = ctypes.CDLL(None, use_errno=True)

    def run():  # the libc calls, not Python's os.dup (fcntl F_DUPFD_CLOEXEC)
        fd = libc.dup(0)
        libc.dup2(0, fd)
        os.close(fd)

    with Loaded(engine, policy_yaml("raw-dups", spec), "raw-dups"):
        evs = collect(agent, engine, run, "raw-dups")
    assert [body(e)["args"][0] for e in evs] == [{"syscall_id": {"id": 32, "abi": "x64"}},
                                                 {"syscall_id": {"id": 33, "abi": "x64"}}]


# ------------------------------------------------------------------------------------ enforcement
def kill_spec(binary: str, action: str, extra: str = "", options: str = "") -> str:
    return f"""
    {options}
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
          operator: Equal
          values: ["/etc/hostname"]
        matchActions:
        - action: {action}
          {extra}
    """


def test_sigkill_scoped_to_binary(env, tmp_path):
    agent, engine = env
    victim = copy_bin(tmp_path, "victim")
    runs: dict[str, int] = {}

    def run():
        runs["victim"] = subprocess.run([victim, "/etc/hostname"], capture_output=True).returncode
        runs["cat"] = subprocess.run(["/usr/bin/cat", "/etc/hostname"], capture_output=True).returncode

    with Loaded(engine, policy_yaml("kill", kill_spec(victim, "Sigkill")), "kill") as st:
        assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
        assert st.mode == sensors_pb2.TP_MODE_ENFORCE
        evs = collect(agent, engine, run, "kill")
        assert engine.status("kill").stats.action_counters.signal >= 1
    assert runs == {"victim": -signal.SIGKILL, "cat": 0}
    assert len(evs) == 1 and body(evs[0])["action"] == "KPROBE_ACTION_SIGKILL"
    assert body(evs[0])["process"]["binary"] == victim


def test_signal_action(env, tmp_path):
    agent, engine = env
    victim = copy_bin(tmp_path, "victim2")
    rc = {}
    with Loaded(engine, policy_yaml("sig", kill_spec(victim, "Signal", "argSig: 10")), "sig"):
        evs = collect(agent, engine, lambda: rc.update(
            v=subprocess.run([victim, "/etc/hostname"], capture_output=True).returncode), "sig")
    assert rc["v"] == -signal.SIGUSR1
    assert body(evs[0])["action"] == "KPROBE_ACTION_SIGNAL"


def test_monitor_mode_reports_without_killing_then_enforce(env, tmp_path):
    agent, engine = env
    victim = copy_bin(tmp_path, "victim3")
    opts = "options:\n    - name: policy-mode\n      value: monitor"
    rc = {}

    def run():
        rc["v"] = subprocess.run([victim, "/etc/hostname"], capture_output=True).returncode

    with Loaded(engine, policy_yaml("mon", kill_spec(victim, "Sigkill", options=opts)), "mon") as st:
        assert st.mode == sensors_pb2.TP_MODE_MONITOR
        evs = collect(agent, engine, run, "mon")
        assert rc["v"] == 0 and body(evs[0])["action"] == "KPROBE_ACTION_SIGKILL"
        engine.configure("mon", "", None, sensors_pb2.TP_MODE_ENFORCE)
        collect(agent, engine, run, "mon")
        assert rc["v"] == -signal.SIGKILL
        engine.configure("mon", "", False, None)
        assert engine.status("mon").state == sensors_pb2.TP_STATE_DISABLED
        collect(agent, engine, run, "mon")
        assert rc["v"] == 0
        engine.configure("mon", "", True, sensors_pb2.TP_MODE_MONITOR)
        evs = collect(agent, engine, run, "mon")
        assert rc["v"] == 0 and len(evs) == 1


def test_nopost_kills_without_event(env, tmp_path):
    agent, engine = env
    victim = copy_bin(tmp_path, "victim4")
    spec = kill_spec(victim, "Sigkill").replace("- action: Sigkill", "- action: Sigkill\n        - action: NoPost")
    rc = {}
    with Loaded(engine, policy_yaml("nopost", spec), "nopost"):
        evs = collect(agent, engine, lambda: rc.update(
            v=subprocess.run([victim, "/etc/hostname"], capture_output=True).returncode), "nopost")
    assert rc["v"] == -signal.SIGKILL and evs == []


def test_rate_limit(env, tmp_path):
    agent, engine = env
    target = tmp_path / "rl"
    target.write_text("x")
    spec = f"""
    tracepoints:
    - subsystem: syscalls
      event: sys_enter_openat
      args:
      - index: 6
        type: string
      selectors:
      - matchArgs:
        - index: 0
          operator: Equal
          values: ["{target}"]
        matchActions:
        - action: Post
          rateLimit: 1m
    """

    def run():
        for _ in range(5):
            os.close(os.open(target, os.O_RDONLY))

    with Loaded(engine, policy_yaml("rl", spec), "rl"):
        evs = collect(agent, engine, run, "rl")
    assert len(evs) == 1


# ---------------------------------------------------------------------------------------- uprobes
C_PROG = r"""
#include <stdio.h>
__attribute__((noinline)) int lanner_target(int a, const char *s) { asm volatile(""); return a * 2; }
int main(int argc, char **argv) { printf("%d\n", lanner_target(argc + 20, argc > 1 ? argv[1] : "none")); return 0; }
"""


@pytest.mark.parametrize("pie", [False, True])
def test_uprobe_on_compiled_program(env, tmp_path, pie):
    agent, engine = env
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing")
    src = tmp_path / "t.c"
    src.write_text(C_PROG)
    exe = tmp_path / ("tpie" if pie else "tnopie")
    subprocess.run(["gcc", "-O1", "-pie" if pie else "-no-pie", "-fPIE" if pie else "-fno-pie", "-o", str(exe),
                    str(src)], check=True)
    spec = f"""
    uprobes:
    - path: "{exe}"
      symbols: ["lanner_target"]
      return: true
      args:
      - index: 0
        type: int
      - index: 1
        type: string
      returnArg:
        index: 0
        type: int
      selectors:
      - matchArgs:
        - index: 1
          operator: Postfix
          values: ["-yes"]
    """

    def run():
        subprocess.run([str(exe), "hello-yes"], capture_output=True, check=True)
        subprocess.run([str(exe), "hello-no"], capture_output=True, check=True)

    name = "up-pie" if pie else "up-nopie"
    with Loaded(engine, policy_yaml(name, spec), name) as st:
        assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
        assert st.sensors == ["generic_uprobe"]
        evs = collect(agent, engine, run, name)
    assert len(evs) == 1, evs
    b = body(evs[0])
    assert "process_uprobe" in evs[0]
    assert b["path"] == str(exe) and b["symbol"] == "lanner_target"
    assert b["args"] == [{"int_arg": 22}, {"string_arg": "hello-yes"}]
    assert b["process"]["binary"] == str(exe)


# ----------------------------------------------------------------------------- errors and lifecycle
def test_unsupported_hook_partial_and_load_error(env):
    _, engine = env
    kp = """
    kprobes:
    - call: security_file_permission
      syscall: false
      args:
      - index: 0
        type: file
    """
    tp = """
    tracepoints:
    - subsystem: syscalls
      event: sys_enter_getppid
    """
    with Loaded(engine, policy_yaml("partial", kp + tp), "partial") as st:
        assert st.state == sensors_pb2.TP_STATE_PARTIALLY_ENABLED
        assert "hook kprobes[0] security_file_permission: needs kprobe attach, which this kernel lacks (kprobe:" \
            in st.error
    with Loaded(engine, policy_yaml("allbad", kp), "allbad") as st:
        assert st.state == sensors_pb2.TP_STATE_LOAD_ERROR
        assert "security_file_permission" in st.error
    override = """
    kprobes:
    - call: sys_openat
      syscall: true
      selectors:
      - matchActions:
        - action: Override
          argError: -1
    """
    with Loaded(engine, policy_yaml("ovr", override), "ovr") as st:
        assert st.state == sensors_pb2.TP_STATE_LOAD_ERROR
        assert "Override needs fmod_ret or override_return, which this kernel lacks" in st.error


def test_bad_policy_leaves_nothing_and_delete_detaches(env, tmp_path):
    agent, engine = env
    base_links = engine.links()
    with pytest.raises(ValueError) as exc:
        engine.add(policy_yaml("bad", """
        tracepoints:
        - subsystem: syscalls
          event: sys_enter_openat
          selectors:
          - matchArgs:
            - index: 0
              operator: Bogus
              values: ["x"]
        """))
    assert "operator" in str(exc.value)
    assert engine.links() == base_links and not [s for s in engine.list() if s.name == "bad"]
    spec = f"""
    tracepoints:
    - subsystem: syscalls
      event: sys_enter_openat
      args:
      - index: 6
        type: string
      selectors:
      - matchArgs:
        - index: 0
          operator: Equal
          values: ["{tmp_path}/d"]
    """
    (tmp_path / "d").write_text("x")
    engine.add(policy_yaml("del", spec))
    try:
        with pytest.raises(ValueError):
            engine.add(policy_yaml("del", spec))  # duplicate
        assert engine.links() == base_links + 1
        assert any(p[0] == "policy:del" for p in engine.programs())
    finally:
        engine.delete("del")
    assert engine.links() == base_links
    assert collect(agent, engine, lambda: os.close(os.open(tmp_path / "d", os.O_RDONLY)), "del") == []
    with pytest.raises(KeyError):
        engine.delete("del")


# ----------------------------------------------------------------------------------------- corpus
# corpus policies that load fully on this host (tracepoints, syscall kprobes, uprobes on existing files)
EXPECT_FULL = {
    "hardlink-observe.yaml", "list-syscalls.yaml", "openat_write.yaml",
    "process-credentials/process.credentials.changes.at.syscalls.yaml", "raw_syscalls.yaml",
    "symlink-observe.yaml", "sys_mount.yaml", "sys_ptrace.yaml", "sys_setuid.yaml", "uprobe-pid.yaml",
    "uprobe.yaml", "write.yaml",
}


def test_corpus(env):
    _, engine = env
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} missing")
    from lanner.policy import load_policies

    outcome: dict[str, str] = {}
    for path in sorted(CORPUS.rglob("*.y*ml")):
        rel = str(path.relative_to(CORPUS))
        text = path.read_text()
        try:
            names = [(p.name, p.namespace or "") for p in load_policies(text, rel)]
        except ValueError:
            outcome[rel] = "invalid"
            continue
        try:
            engine.add(text, rel)
        except ValueError as exc:
            outcome[rel] = f"refused: {exc}"
            continue
        try:
            for name, ns in names:
                st = engine.status(name, ns)
                state = sensors_pb2.TracingPolicyState.Name(st.state)
                if st.state != sensors_pb2.TP_STATE_ENABLED:
                    assert st.error.startswith(("hook ", "spec.")), (rel, st.error)
                outcome[rel] = state if st.state == sensors_pb2.TP_STATE_ENABLED else f"{state}: {st.error}"
        finally:
            for name, ns in names:
                engine.delete(name, ns)
    full = {k for k, v in outcome.items() if v == "TP_STATE_ENABLED"}
    print("\n".join(f"{k}: {v}" for k, v in sorted(outcome.items())))
    assert EXPECT_FULL <= full, sorted(full)
    # everything else is refused or partial with per-hook reasons (checked above), never a crash
    assert engine.list() == []


def test_fd_path_char_buf_and_sockaddr(env, tmp_path):
    agent, engine = env
    target = tmp_path / "w.txt"
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
          operator: Prefix
          values: ["{tmp_path}/"]
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
        - index: 1
          operator: SAddr
          values: ["127.0.0.0/8"]
        - index: 1
          operator: SPort
          values: ["9"]
    """
    import socket

    def run():
        with open(target, "wb", buffering=0) as fh:
            fh.write(b"hello policy")
        for port in (9, 10):
            s = socket.socket()
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                pass
            s.close()

    with Loaded(engine, policy_yaml("fdw", spec), "fdw") as st:
        assert st.state == sensors_pb2.TP_STATE_ENABLED, st.error
        evs = collect(agent, engine, run, "fdw")
    writes = [body(e) for e in evs if body(e)["function_name"] == "__x64_sys_write"]
    conns = [body(e) for e in evs if body(e)["function_name"] == "__x64_sys_connect"]
    assert len(writes) == 1 and writes[0]["args"] == [
        {"file_arg": {"path": str(target)}}, {"bytes_arg": "aGVsbG8gcG9saWN5"}, {"size_arg": "12"}]
    assert [c["args"] for c in conns] == [[{"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": 9}}]]
