"""Kernel-function kprobes, kretprobes, BPF LSM hooks, BTF-typed kernel arguments and Override, on the
real kernel with real processes.

These hooks need kprobe/kretprobe, fmod_ret and the BPF LSM: the `make vmtest` guests (Debian 6.1 and
6.12) have them, the CI host does not. On the host the tests check that every such hook is refused with
the probe's reason and nothing is attached; in the guests they load, fire for a matching trigger, stay
silent for a non-matching one and unload.

SAFETY: every policy is scoped to this test's pid (matchPIDs, followForks for its children) and to
paths or ports only this test uses; Override denies opens of files under tmp_path only; Sigkill is
scoped to a copy of /bin/cat in tmp_path opening a file in tmp_path.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import os
import pty
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lanner.exporter.api.gen.tetragon import sensors_pb2
from lanner.exporter.tracing import permission
from tests.test_policy_operators import Env, body, env  # noqa: F401  (env: the module-scoped fixture)

pytestmark = pytest.mark.bpf

ME = os.getpid()


def _need(env: Env, *features: str) -> None:
    missing = [f for f in features if not env.engine.probe.get(f)]
    if missing:
        pytest.skip(f"this kernel lacks {', '.join(missing)} (lanner probe); runs in the make vmtest guests")


def _pids(follow: bool = False) -> str:
    return f"""
      - matchPIDs:
        - operator: In
          followForks: {str(follow).lower()}
          values: [{ME}]"""


def _events(env: Env, fn, policy: str) -> list[dict]:
    return [body(e) for e in env.run(fn, policy)]


# -------------------------------------------------------------------------------------------- host
def test_kernel_function_hooks_unavailable_without_kprobes(env):
    """Where `lanner probe` says kprobe/lsm are missing, the hooks are refused with that reason."""
    if env.engine.probe.get("kprobe") or env.engine.probe.get("lsm"):
        pytest.skip("this kernel has kprobes / BPF LSM: the other tests of this file run")
    spec = """
    kprobes:
    - call: security_file_open
      syscall: false
      args: [{index: 0, type: file}]
    lsmhooks:
    - hook: file_open
      args: [{index: 0, type: file}]
    """
    base = env.engine.links()
    with env.load("kh-host", spec, expect_state=sensors_pb2.TP_STATE_LOAD_ERROR) as st:
        assert env.engine.links() == base
        assert st.error == ("hook kprobes[0] security_file_open: needs kprobe attach, which this kernel lacks "
                            "(kprobe: not supported, see 'lanner probe'); hook lsmhooks[0] file_open: needs BPF "
                            "LSM programs, which this kernel lacks (lsm: not supported)")


# ---------------------------------------------------------------------------------- kprobe + file
@pytest.mark.parametrize("op,value,hit,miss", [
    ("Prefix", "kp-", "kp-a", "other"),
    ("Postfix", ".kpx", "b.kpx", "b.kpy"),
    ("Equal", "kp-eq", "kp-eq", "kp-eq2"),
    ("NotPrefix", "kp-", "zz", "kp-z"),
])
def test_kprobe_file_arg_operators_and_return(env, tmp_path, op, value, hit, miss):
    _need(env, "kprobe", "kretprobe")
    t = str(tmp_path)
    # NotPrefix is ANDed with a Prefix on tmp_path, so only this test's files can match
    val = f"{t}/{value}" if op != "Postfix" else value
    spec = f"""
    kprobes:
    - call: security_file_open
      syscall: false
      return: true
      args:
      - index: 0
        type: file
      returnArg:
        index: 0
        type: int
      selectors:{_pids()}
        matchArgs:
        - index: 0
          operator: Prefix
          values: ["{t}/"]
        - index: 0
          operator: {op}
          values: ["{val}"]
    """
    for n in (hit, miss):
        (tmp_path / n).write_text("x")
    with env.load("kp-file", spec) as st:
        assert "security_file_open: kprobe security_file_open+kretprobe" in st.info, st.info
        evs = _events(env, lambda: os.close(os.open(tmp_path / hit, os.O_RDONLY)), "kp-file")
        assert len(evs) == 1, evs
        ev = evs[0]
        assert ev["function_name"] == "security_file_open" and ev["process"]["pid"] == ME
        assert ev["args"] == [{"file_arg": {"path": f"{t}/{hit}", "permission": "-rw-r--r--"}}]
        assert ev["return"] == {"int_arg": 0} and ev["action"] == "KPROBE_ACTION_POST"
        assert _events(env, lambda: os.close(os.open(tmp_path / miss, os.O_RDONLY)), "kp-file") == []
        assert env.engine.status("kp-file").sensors == ["generic_kprobe"]
    assert not [p for p in env.engine.programs() if p[0] == "policy:kp-file"]


# ---------------------------------------------------------------------------------- sock, sockaddr
def _listener() -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    return srv


@pytest.mark.parametrize("op", ["DAddr", "NotDAddr"])
def test_kprobe_sock_daddr_dport_protocol(env, op):
    _need(env, "kprobe")
    srv, other = _listener(), _listener()
    port, oport = srv.getsockname()[1], other.getsockname()[1]
    addr = "127.0.0.1/32" if op == "DAddr" else "10.0.0.0/8"
    spec = f"""
    kprobes:
    - call: tcp_connect
      syscall: false
      args:
      - index: 0
        type: sock
      selectors:{_pids()}
        matchArgs:
        - index: 0
          operator: {op}
          values: ["{addr}"]
        - index: 0
          operator: DPort
          values: ["{port}"]
        - index: 0
          operator: Protocol
          values: ["IPPROTO_TCP"]
        - index: 0
          operator: Family
          values: ["AF_INET"]
    """

    def connect(p):
        with socket.create_connection(("127.0.0.1", p)) as c:
            return c.getsockname()[1]

    try:
        with env.load("kp-sock", spec):
            sport: list[int] = []
            evs = _events(env, lambda: sport.append(connect(port)), "kp-sock")
            assert len(evs) == 1, evs
            sock = evs[0]["args"][0]["sock_arg"]
            assert sock["family"] == "AF_INET" and sock["type"] == "SOCK_STREAM"
            assert sock["protocol"] == "IPPROTO_TCP" and sock["state"] == "TCP_SYN_SENT"
            assert sock["daddr"] == "127.0.0.1" and sock["saddr"] == "127.0.0.1"
            assert sock["dport"] == port and sock["sport"] == sport[0]
            assert _events(env, lambda: connect(oport), "kp-sock") == []
    finally:
        srv.close()
        other.close()


def test_kprobe_socket_and_kernel_sockaddr(env):
    """security_socket_connect(struct socket *, struct sockaddr *, int): SPort/Family on the sockaddr."""
    _need(env, "kprobe")
    srv = _listener()
    port = srv.getsockname()[1]
    spec = f"""
    kprobes:
    - call: security_socket_connect
      syscall: false
      args:
      - index: 0
        type: socket
      - index: 1
        type: sockaddr
      selectors:{_pids()}
        matchArgs:
        - index: 1
          operator: SPort
          values: ["{port}"]
        - index: 1
          operator: Family
          values: ["AF_INET"]
    """
    try:
        with env.load("kp-sa", spec):
            evs = _events(env, lambda: socket.create_connection(("127.0.0.1", port)).close(), "kp-sa")
            assert len(evs) == 1, evs
            sock, sa = evs[0]["args"][0]["sock_arg"], evs[0]["args"][1]["sockaddr_arg"]
            assert sa == {"family": "AF_INET", "addr": "127.0.0.1", "port": port}
            assert sock["family"] == "AF_INET" and sock["protocol"] == "IPPROTO_TCP" and sock["state"] == "TCP_CLOSE"
    finally:
        srv.close()


def test_kprobe_skb_and_net_device(env):
    """dev_hard_start_xmit(struct sk_buff *, struct net_device *): a UDP datagram to 127.0.0.1 on lo."""
    _need(env, "kprobe")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    spec = f"""
    kprobes:
    - call: dev_hard_start_xmit
      syscall: false
      args:
      - index: 0
        type: skb
      - index: 1
        type: net_device
      selectors:
      - matchArgs:
        - index: 0
          operator: DPort
          values: ["{port}"]
        - index: 0
          operator: DAddr
          values: ["127.0.0.1"]
        - index: 0
          operator: Protocol
          values: ["IPPROTO_UDP"]
    """

    def send(p):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"lanner-skb", ("127.0.0.1", p))

    try:
        with env.load("kp-skb", spec):
            evs = _events(env, lambda: send(port), "kp-skb")
            assert len(evs) == 1, evs
            skb, dev = evs[0]["args"][0]["skb_arg"], evs[0]["args"][1]["net_dev_arg"]
            assert dev == {"name": "lo"}
            assert skb["daddr"] == "127.0.0.1" and skb["dport"] == port and skb["protocol"] == "IPPROTO_UDP"
            assert skb["family"] == "AF_INET" and skb["len"] == 20 + 8 + len(b"lanner-skb") + 14
            assert _events(env, lambda: send(port + 1 if port < 65535 else port - 1), "kp-skb") == []
    finally:
        rx.close()


# ---------------------------------------------------------------------------- creds, capabilities
def test_kprobe_cred_and_capability_and_user_namespace(env):
    _need(env, "kprobe")
    spec = f"""
    kprobes:
    - call: commit_creds
      syscall: false
      args:
      - index: 0
        type: cred
      selectors:{_pids(follow=True)}
    - call: cap_capable
      syscall: false
      args:
      - index: 1
        type: user_namespace
      - index: 2
        type: capability
      selectors:{_pids(follow=True)}
    """
    code = "import os; os.nice(-1); os.setresuid(65534, 65534, 65534); print(os.getpid())"
    with env.load("kp-cred", spec):
        out: list[int] = []

        def run():
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=True)
            out.append(int(r.stdout))

        evs = [e for e in _events(env, run, "kp-cred") if e["process"]["pid"] == out[0]]
        creds = [e["args"][0]["process_credentials_arg"] for e in evs if e["function_name"] == "commit_creds"]
        assert {"uid": 65534, "gid": 0, "euid": 65534, "egid": 0, "suid": 65534, "sgid": 0, "fsuid": 65534,
                "fsgid": 0} == {k: v for k, v in creds[-1].items() if k.endswith("id")}, creds
        assert creds[-1]["caps"] == {}  # setresuid away from root drops every capability
        # capability args cannot be filtered (parser, as Tetragon): pick the CAP_SYS_NICE check of nice(-1)
        caps = [e["args"] for e in evs if e["function_name"] == "cap_capable"
                and e["args"][1]["capability_arg"]["value"] == 23]
        assert caps, evs
        ns_inum = os.stat(f"/proc/{ME}/ns/user").st_ino
        assert caps[0][0]["user_ns_arg"]["ns"] == {"inum": ns_inum}
        assert caps[0][0]["user_ns_arg"]["level"] == 0
        assert caps[0][1] == {"capability_arg": {"value": 23, "name": "CAP_SYS_NICE"}}


# ------------------------------------------------------------------------- dentry, path, binprm
def test_kprobe_dentry_path_and_binprm(env, tmp_path):
    _need(env, "kprobe")
    t = str(tmp_path)
    exe = tmp_path / "lanner-true"
    shutil.copy("/bin/true", exe)
    spec = f"""
    kprobes:
    - call: security_inode_unlink
      syscall: false
      args:
      - index: 1
        type: dentry
      selectors:{_pids()}
        matchArgs:
        - index: 1
          operator: Postfix
          values: ["/kp-unlink-me"]
    - call: security_bprm_check
      syscall: false
      args:
      - index: 0
        type: linux_binprm
      selectors:
      - matchArgs:
        - index: 0
          operator: Equal
          values: ["{exe}"]
    """
    victim = tmp_path / "kp-unlink-me"
    victim.write_text("x")
    with env.load("kp-dpb", spec):
        evs = _events(env, lambda: (victim.unlink(), subprocess.run([str(exe)], check=True)), "kp-dpb")
        by = {e["function_name"]: e for e in evs}
        assert set(by) == {"security_inode_unlink", "security_bprm_check"}, evs
        # a dentry alone has no mount: its path runs from its filesystem's root
        path = by["security_inode_unlink"]["args"][0]["file_arg"]["path"]
        assert path.endswith(f"{tmp_path.name}/kp-unlink-me") and t.endswith(path.rsplit("/kp-unlink-me", 1)[0])
        assert by["security_bprm_check"]["args"] == [{"linux_binprm_arg": {"path": str(exe),
                                                                           "permission": "-rwxr-xr-x"}}]


# ------------------------------------------------------------------------------------ BPF LSM
def test_lsm_file_open_event_and_override(env, tmp_path):
    _need(env, "lsm")
    t = str(tmp_path)
    spec = f"""
    lsmhooks:
    - hook: file_open
      args:
      - index: 0
        type: file
      selectors:{_pids()}
        matchArgs:
        - index: 0
          operator: Prefix
          values: ["{t}/lsm-deny"]
        matchActions:
        - action: Override
          argError: -1
      - matchPIDs:
        - operator: In
          values: [{ME}]
        matchArgs:
        - index: 0
          operator: Prefix
          values: ["{t}/lsm-see"]
    """
    for n in ("lsm-deny", "lsm-see", "lsm-other"):
        (tmp_path / n).write_text("x")
    with env.load("lsm-fo", spec) as st:
        assert "lsmhooks[0] file_open: lsm lsm/file_open" in st.info, st.info
        assert st.sensors == ["generic_lsm"]
        err: list[int] = []

        def deny():
            try:
                os.close(os.open(tmp_path / "lsm-deny", os.O_RDONLY))
            except OSError as exc:
                err.append(exc.errno)

        evs = _events(env, deny, "lsm-fo")
        assert err == [errno.EPERM]
        assert [(e["function_name"], e["args"], e["action"]) for e in evs] == [
            ("file_open", [{"file_arg": {"path": f"{t}/lsm-deny", "permission": "-rw-r--r--"}}],
             "KPROBE_ACTION_OVERRIDE")]
        assert all("process_lsm" in e for e in env.run(deny, "lsm-fo")) and err == [errno.EPERM] * 2
        evs = _events(env, lambda: os.close(os.open(tmp_path / "lsm-see", os.O_RDONLY)), "lsm-fo")
        assert [e["action"] for e in evs] == ["KPROBE_ACTION_POST"]
        assert _events(env, lambda: os.close(os.open(tmp_path / "lsm-other", os.O_RDONLY)), "lsm-fo") == []
        assert env.engine.counters("lsm-fo")["override"] == 2
        assert env.engine.status("lsm-fo").stats.action_counters.override == 2
    # unloaded: the file opens again
    os.close(os.open(tmp_path / "lsm-deny", os.O_RDONLY))


def test_lsm_override_in_monitor_mode_does_not_deny(env, tmp_path):
    _need(env, "lsm")
    spec = f"""
    options:
    - name: policy-mode
      value: monitor
    lsmhooks:
    - hook: file_open
      args:
      - index: 0
        type: file
      selectors:{_pids()}
        matchArgs:
        - index: 0
          operator: Equal
          values: ["{tmp_path}/mon"]
        matchActions:
        - action: Override
          argError: -1
    """
    (tmp_path / "mon").write_text("x")
    with env.load("lsm-mon", spec):
        evs = _events(env, lambda: os.close(os.open(tmp_path / "mon", os.O_RDONLY)), "lsm-mon")
        assert len(evs) == 1 and evs[0]["action"] == "KPROBE_ACTION_OVERRIDE"
        assert env.engine.counters("lsm-mon")["override"] == 0
        assert env.engine.counters("lsm-mon")["monitor_override"] == 1
        assert env.engine.status("lsm-mon").stats.action_counters.monitor_override == 1


# ------------------------------------------------------------------- Override on kprobes (fmod_ret)
@pytest.mark.parametrize("with_return", [False, True], ids=["entry", "return"])
def test_kprobe_override_with_fmod_ret(env, tmp_path, with_return):
    """With `return: true` too, Override is decided at the entry (before fmod_ret lets the function run)
    and the event carries the overridden return value; nothing stale is left for the thread's next call."""
    _need(env, "kprobe", "fmod_ret", *(["kretprobe"] if with_return else []))
    ret = """
      return: true
      returnArg:
        index: 0
        type: int""" if with_return else ""
    spec = f"""
    kprobes:
    - call: security_file_open
      syscall: false{ret}
      args:
      - index: 0
        type: file
      selectors:{_pids()}
        matchArgs:
        - index: 0
          operator: Equal
          values: ["{tmp_path}/fm-deny"]
        matchActions:
        - action: Override
          argError: -13
    """
    for n in ("fm-deny", "fm-ok"):
        (tmp_path / n).write_text("x")
    with env.load("kp-ovr", spec) as st:
        assert "+fmod_ret security_file_open" in st.info, st.info
        err: list[int] = []

        def deny():
            try:
                os.close(os.open(tmp_path / "fm-deny", os.O_RDONLY))
            except OSError as exc:
                err.append(exc.errno)

        evs = _events(env, deny, "kp-ovr")
        assert err == [errno.EACCES]
        assert [e["action"] for e in evs] == ["KPROBE_ACTION_OVERRIDE"]
        if with_return:
            assert evs[0]["return"] == {"int_arg": -errno.EACCES}, evs[0]
        os.close(os.open(tmp_path / "fm-ok", os.O_RDONLY))  # not matched: not denied (and nothing stale)
    os.close(os.open(tmp_path / "fm-deny", os.O_RDONLY))


def test_kprobe_sigkill_scoped_to_test_binary(env, tmp_path):
    _need(env, "kprobe")
    cat = tmp_path / "lanner-kp-cat"
    shutil.copy("/bin/cat", cat)
    target = tmp_path / "kp-kill-me"
    target.write_text("secret\n")
    spec = f"""
    kprobes:
    - call: security_file_open
      syscall: false
      args:
      - index: 0
        type: file
      selectors:
      - matchBinaries:
        - operator: In
          values: ["{cat}"]
        matchArgs:
        - index: 0
          operator: Equal
          values: ["{target}"]
        matchActions:
        - action: Sigkill
    """
    with env.load("kp-kill", spec):
        res: list[subprocess.CompletedProcess] = []
        evs = _events(env, lambda: res.append(subprocess.run([str(cat), str(target)], capture_output=True,
                                                              timeout=120)), "kp-kill")
        assert res[0].returncode == -9 and res[0].stdout == b""  # killed before the read
        assert [e["action"] for e in evs] == ["KPROBE_ACTION_SIGKILL"]
        sibling = subprocess.run(["/bin/cat", str(target)], capture_output=True, timeout=120)
        assert sibling.returncode == 0 and sibling.stdout == b"secret\n"


@pytest.mark.parametrize("op,hit,miss", [("FileType", "sub", "plain"), ("NotFileType", "plain", "sub")])
def test_kprobe_file_type_operator(env, tmp_path, op, hit, miss):
    """FileType / NotFileType on a file arg: the S_IFMT bits of its inode's mode."""
    _need(env, "kprobe")
    t = str(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "plain").write_text("x")
    spec = f"""
    kprobes:
    - call: security_file_open
      syscall: false
      args:
      - index: 0
        type: file
      selectors:{_pids()}
        matchArgs:
        - index: 0
          operator: Prefix
          values: ["{t}/"]
        - index: 0
          operator: {op}
          values: ["dir"]
    """
    with env.load("kp-ftype", spec):
        evs = _events(env, lambda: os.close(os.open(tmp_path / hit, os.O_RDONLY)), "kp-ftype")
        assert [e["args"][0]["file_arg"]["path"] for e in evs] == [f"{t}/{hit}"]
        assert evs[0]["args"][0]["file_arg"]["permission"][0] == ("d" if hit == "sub" else "-")
        assert _events(env, lambda: os.close(os.open(tmp_path / miss, os.O_RDONLY)), "kp-ftype") == []


def test_fentry_fexit_file_arg_and_return(env, tmp_path):
    """fentries: one generic_fentry and one generic_fexit instance per function (attach target set before
    load), args from the BTF context, the return value from bpf_get_func_ret."""
    _need(env, "fentry", "fexit")
    t = str(tmp_path)
    spec = f"""
    fentries:
    - call: security_file_open
      syscall: false
      return: true
      args:
      - index: 0
        type: file
      returnArg:
        index: 0
        type: int
      selectors:{_pids()}
        matchArgs:
        - index: 0
          operator: Prefix
          values: ["{t}/fe-"]
    """
    for n in ("fe-a", "other"):
        (tmp_path / n).write_text("x")
    base = env.engine.links()
    with env.load("fe-file", spec) as st:
        assert st.info == "fentries[0] security_file_open: fentry fentry/security_file_open+fexit", st.info
        assert st.sensors == ["generic_fentry"] and env.engine.links() == base + 2
        evs = _events(env, lambda: os.close(os.open(tmp_path / "fe-a", os.O_RDONLY)), "fe-file")
        assert [(e["function_name"], e["args"], e["return"]) for e in evs] == [
            ("security_file_open", [{"file_arg": {"path": f"{t}/fe-a", "permission": "-rw-r--r--"}}],
             {"int_arg": 0})]
        assert _events(env, lambda: os.close(os.open(tmp_path / "other", os.O_RDONLY)), "fe-file") == []
    assert env.engine.links() == base


def test_track_and_untrack_sock(env):
    """TrackSock on tcp_connect (the connecting child owns the sock), then tcp_sendmsg by the parent on the
    same socket is reported as the child's; UntrackSock on tcp_close forgets it."""
    _need(env, "kprobe")
    srv = _listener()
    port = srv.getsockname()[1]
    sock_sel = f"""
        matchArgs:
        - index: 0
          operator: DPort
          values: ["{port}"]"""
    spec = f"""
    kprobes:
    - call: tcp_connect
      syscall: false
      args:
      - index: 0
        type: sock
      selectors:
      - {sock_sel.strip()}
        matchActions:
        - action: TrackSock
          argSock: 0
    - call: tcp_sendmsg
      syscall: false
      args:
      - index: 0
        type: sock
      selectors:
      - {sock_sel.strip()}
    - call: tcp_close
      syscall: false
      args:
      - index: 0
        type: sock
      selectors:
      - {sock_sel.strip()}
        matchActions:
        - action: UntrackSock
          argSock: 0
    """
    c = socket.socket()
    child: list[int] = []

    def run():
        pid = os.fork()
        if pid == 0:  # the child connects the parent's socket, then exits
            try:
                c.connect(("127.0.0.1", port))
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        child.append(pid)
        c.sendall(b"lanner")  # the parent sends
        c.close()

    try:
        with env.load("kp-track", spec):
            evs = _events(env, run, "kp-track")
            got = [(e["function_name"], e["process"]["pid"], e["action"]) for e in evs]
            assert got == [("tcp_connect", child[0], "KPROBE_ACTION_TRACKSOCK"),
                           ("tcp_sendmsg", child[0], "KPROBE_ACTION_POST"),
                           ("tcp_close", child[0], "KPROBE_ACTION_UNTRACKSOCK")], got
            # untracked: a new connection by the parent is its own
            evs = _events(env, lambda: socket.create_connection(("127.0.0.1", port)).close(), "kp-track")
            assert {e["process"]["pid"] for e in evs} == {ME}, evs
    finally:
        srv.close()


def test_return_arg_action_track_sock(env):
    """returnArg type sock + returnArgAction TrackSock on sk_alloc (as tcp-accept.yaml and friends): the
    child that creates a socket owns it, so tcp_sendmsg on it by the parent (who got the fd over a unix
    socket) is reported as the child's; the sk_alloc event carries the returned sock. The parent's own
    socket stays its own."""
    _need(env, "kprobe", "kretprobe")
    srv = _listener()
    port = srv.getsockname()[1]
    spec = f"""
    kprobes:
    - call: sk_alloc
      syscall: false
      return: true
      args:
      - index: 1
        type: int
        label: Family
      returnArg:
        index: 0
        type: sock
      returnArgAction: TrackSock
      selectors:
      - matchPIDs:
        - operator: In
          followForks: true
          values: [{ME}]
        matchArgs:
        - index: 1
          operator: Equal
          values: ["2"]
    - call: tcp_sendmsg
      syscall: false
      args:
      - index: 0
        type: sock
      selectors:
      - matchArgs:
        - index: 0
          operator: DPort
          values: ["{port}"]
    """
    child: list[int] = []

    def run():
        a, b = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the child creates the TCP socket and hands its fd to the parent
            try:
                t = socket.socket()
                socket.send_fds(a, [b"fd"], [t.fileno()])
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        child.append(pid)
        _msg, fds, _flags, _addr = socket.recv_fds(b, 16, 1)
        t = socket.socket(fileno=fds[0])
        t.connect(("127.0.0.1", port))
        t.sendall(b"lanner")  # the parent sends on the child's socket
        t.close()
        own = socket.create_connection(("127.0.0.1", port))  # the parent's own socket
        own.sendall(b"mine")
        own.close()
        a.close()
        b.close()

    def tracked_by(policy_id: int) -> int:
        off = env.engine._socktrack_policy_off
        return sum(int.from_bytes(bytes(v)[off:off + 4], "little") == policy_id
                   for _k, v in env.engine.socktrack.lookup_batch())

    try:
        with env.load("kp-ret-track", spec):
            evs = _events(env, run, "kp-ret-track")
            policy_id = env.engine.status("kp-ret-track").id
            assert tracked_by(policy_id) >= 1
    finally:
        srv.close()
    assert tracked_by(policy_id) == 0  # deleting the policy forgets its socks (their addresses get reused)
    alloc = [e for e in evs if e["function_name"] == "sk_alloc" and e["process"]["pid"] == child[0]]
    assert len(alloc) == 1, evs
    ret = alloc[0]["return"]["sock_arg"]
    assert ret["family"] == "AF_INET", alloc  # inet_create sets type and protocol after sk_alloc returns
    assert alloc[0]["return_action"] == "KPROBE_ACTION_TRACKSOCK" and alloc[0]["args"][0]["int_arg"] == 2
    sends = [e["process"]["pid"] for e in evs if e["function_name"] == "tcp_sendmsg"]
    assert sends == [child[0], ME], evs


@pytest.mark.parametrize("state,hits", [("TCP_SYN_SENT", 1), ("TCP_ESTABLISHED", 0)])
def test_kprobe_sock_saddr_sport_state_notdport(env, state, hits):
    """SAddr, SPort (a range), State, NotDPort and NotSAddr on a sock arg, ANDed."""
    _need(env, "kprobe")
    srv = _listener()
    port = srv.getsockname()[1]
    spec = f"""
    kprobes:
    - call: tcp_connect
      syscall: false
      args:
      - index: 0
        type: sock
      selectors:{_pids()}
        matchArgs:
        - index: 0
          operator: SAddr
          values: ["127.0.0.0/8"]
        - index: 0
          operator: SPort
          values: ["1024:65535"]
        - index: 0
          operator: State
          values: ["{state}"]
        - index: 0
          operator: NotDPort
          values: ["{port + 1 if port < 65535 else port - 1}"]
        - index: 0
          operator: NotSAddr
          values: ["10.0.0.0/8"]
    """
    try:
        with env.load("kp-sock2", spec):
            evs = _events(env, lambda: socket.create_connection(("127.0.0.1", port)).close(), "kp-sock2")
            assert len(evs) == hits, evs
            if hits:
                s = evs[0]["args"][0]["sock_arg"]
                assert s["state"] == "TCP_SYN_SENT" and s["saddr"] == "127.0.0.1" and s["sport"] >= 1024
    finally:
        srv.close()


def test_kprobe_kernel_string_arg(env, tmp_path):
    """A kernel char * (security_inode_symlink's old_name, copied in by the kernel) with Equal."""
    _need(env, "kprobe")
    target = f"{tmp_path}/lanner-symlink-target"
    spec = f"""
    kprobes:
    - call: security_inode_symlink
      syscall: false
      args:
      - index: 1
        type: dentry
      - index: 2
        type: string
      selectors:{_pids()}
        matchArgs:
        - index: 2
          operator: Equal
          values: ["{target}"]
    """
    with env.load("kp-kstr", spec):
        evs = _events(env, lambda: os.symlink(target, tmp_path / "ln1"), "kp-kstr")
        assert [e["args"][1] for e in evs] == [{"string_arg": target}], evs
        assert evs[0]["args"][0]["file_arg"]["path"].endswith("/ln1")
        assert _events(env, lambda: os.symlink(target + "x", tmp_path / "ln2"), "kp-kstr") == []


def test_kprobe_module_args(env):
    """module args (do_init_module, free_module): load and unload the dummy network driver with no
    device (numdummies=0). (load_info's find_module_sections is inlined on the Debian kernels.)"""
    _need(env, "kprobe")
    rel = os.uname().release
    if not list(Path(f"/lib/modules/{rel}/kernel/drivers/net").glob("dummy.ko*")) or not shutil.which("modprobe"):
        pytest.skip("no dummy.ko for this kernel or no modprobe")
    if Path("/sys/module/dummy").exists():
        pytest.skip("dummy is loaded already: not ours to unload")
    pids = _pids(follow=True)  # module args cannot be filtered (parser, as Tetragon): scoped to our modprobe
    spec = f"""
    kprobes:
    - call: do_init_module
      syscall: false
      args:
      - index: 0
        type: module
      selectors:{pids}
    - call: free_module
      syscall: false
      args:
      - index: 0
        type: module
      selectors:{pids}
    """

    def cycle():
        try:
            subprocess.run(["modprobe", "dummy", "numdummies=0"], check=True, timeout=120, capture_output=True)
        finally:
            subprocess.run(["modprobe", "-r", "dummy"], timeout=120, capture_output=True)

    with env.load("kp-mod", spec):
        evs = _events(env, cycle, "kp-mod")
        by = {e["function_name"]: e["args"] for e in evs}
        assert set(by) == {"do_init_module", "free_module"}, evs
        assert by["do_init_module"][0]["module_arg"]["name"] == "dummy"
        assert by["free_module"][0]["module_arg"]["name"] == "dummy"
    assert not Path("/sys/module/dummy").exists()


# ------------------------------------------------------------------- bpf_attr, bpf_map, perf_event
libc = ctypes.CDLL(None, use_errno=True)


def _sys_bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(321, cmd, buf, 128)  # __NR_bpf (x86-64)
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd}): {os.strerror(ctypes.get_errno())}")
    return fd


def _prog_load(name: bytes) -> int:
    """BPF_PROG_LOAD of a two-instruction socket filter (r0 = 0; exit) named ``name``."""
    insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"), 16)
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ((1).to_bytes(4, "little") + (2).to_bytes(4, "little")  # BPF_PROG_TYPE_SOCKET_FILTER, insn_cnt
            + ctypes.addressof(insns).to_bytes(8, "little") + ctypes.addressof(lic).to_bytes(8, "little")
            + bytes(24) + name.ljust(16, b"\0"))  # log_*, kern_version, prog_flags; prog_name
    return _sys_bpf(5, attr)


def _map_create(map_type: int, key: int, value: int, entries: int, name: bytes = b"") -> int:
    attr = b"".join(v.to_bytes(4, "little") for v in (map_type, key, value, entries, 0, 0, 0)) + name.ljust(16, b"\0")
    return _sys_bpf(0, attr)  # BPF_MAP_CREATE


def _release() -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", os.uname().release).groups()
    return int(major), int(minor)


def test_kprobe_bpf_attr_and_bpf_map(env):
    """bpf_check's union bpf_attr * (the program being loaded) and the map of the LSM hook run at map creation
    (security_bpf_map_alloc before 6.9, security_bpf_map_create since), both hooks with ignore.callNotFound as
    bpf.yaml: the one this kernel lacks is left out (info says so) and the policy is ENABLED."""
    _need(env, "kprobe")
    have, lack = ("security_bpf_map_create", "security_bpf_map_alloc") if _release() >= (6, 9) else \
        ("security_bpf_map_alloc", "security_bpf_map_create")
    maps = "".join(f"""
    - call: {fn}
      syscall: false
      args:
      - index: 0
        type: bpf_map
      ignore:
        callNotFound: true
      selectors:{_pids()}""" for fn in ("security_bpf_map_alloc", "security_bpf_map_create"))
    spec = f"""
    kprobes:
    - call: bpf_check
      syscall: false
      args:
      - index: 1
        type: bpf_attr
      selectors:{_pids()}{maps}
    """

    def run():
        for fd in (_prog_load(b"lanner_kh_prog"), _map_create(1, 4, 8, 16, b"lanner_kh_map"), _map_create(2, 4, 16, 4)):
            os.close(fd)

    with env.load("kp-bpf", spec) as st:
        lines = st.info.split("; ")
        assert [ln for ln in lines if lack in ln] == [
            f"kprobes[{1 if lack == 'security_bpf_map_alloc' else 2}] {lack}: not in this kernel, ignored "
            "(ignore.callNotFound)"], st.info
        assert any(ln.endswith(f"{have}: kprobe {have}") for ln in lines) and st.error == "", st
        evs = _events(env, run, "kp-bpf")
        assert [(e["function_name"], e["process"]["pid"], e["args"]) for e in evs] == [
            ("bpf_check", ME, [{"bpf_attr_arg": {"ProgType": "BPF_PROG_TYPE_SOCKET_FILTER", "InsnCnt": 2,
                                                 "ProgName": "lanner_kh_prog"}}]),
            (have, ME, [{"bpf_map_arg": {"MapType": "BPF_MAP_TYPE_HASH", "KeySize": 4, "ValueSize": 8,
                                         "MaxEntries": 16, "MapName": "lanner_kh_map"}}]),
            (have, ME, [{"bpf_map_arg": {"MapType": "BPF_MAP_TYPE_ARRAY", "KeySize": 4, "ValueSize": 16,
                                         "MaxEntries": 4}}]),  # no name: protojson leaves it out
        ], evs


class _PerfAttr(ctypes.Structure):
    """struct perf_event_attr up to PERF_ATTR_SIZE_VER7 (128 bytes); the bitfield word as one u64."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
                ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
                ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64), ("rest", ctypes.c_uint8 * 56)]


def _perf_open(type_: int, config: int, config1: int = 0, config2: int = 0) -> int:
    attr = _PerfAttr(type=type_, size=ctypes.sizeof(_PerfAttr), config=config, flags=1,  # disabled
                     config1=config1, config2=config2)
    fd = libc.syscall(298, ctypes.byref(attr), 0, -1, -1, 8)  # __NR_perf_event_open: this task, any cpu, CLOEXEC
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"perf_event_open: {os.strerror(ctypes.get_errno())}")
    return fd


def test_kprobe_perf_event(env):
    """security_perf_event_alloc's struct perf_event *: a software counter (PERF_COUNT_SW_DUMMY) and a perf
    kprobe on security_file_open (never enabled) opened by the test: type and config, and for the kprobe PMU
    (a dynamic type: printed as its number) the probed function's name. (A kprobe at an offset must be on an
    instruction boundary, which differs per build: offset 0, so ProbeOffset is left out as protojson does.)"""
    _need(env, "kprobe")
    kprobe_type = int(Path("/sys/bus/event_source/devices/kprobe/type").read_text())
    spec = f"""
    kprobes:
    - call: security_perf_event_alloc
      syscall: false
      args:
      - index: 0
        type: perf_event
      selectors:{_pids()}
    """
    func = ctypes.create_string_buffer(b"security_file_open")

    def run():
        os.close(_perf_open(1, 9))  # PERF_TYPE_SOFTWARE, PERF_COUNT_SW_DUMMY
        os.close(_perf_open(kprobe_type, 0, ctypes.addressof(func)))  # config1 = kprobe_func

    with env.load("kp-perf", spec):
        evs = _events(env, run, "kp-perf")
        assert [(e["process"]["pid"], e["args"]) for e in evs] == [
            (ME, [{"perf_event_arg": {"Type": "PERF_TYPE_SOFTWARE", "Config": "9"}}]),
            (ME, [{"perf_event_arg": {"KprobeFunc": "security_file_open", "Type": str(kprobe_type)}}]),
        ], evs


# ------------------------------------------------------------------------------- kiocb, iov_iter
def test_kprobe_kiocb_and_iov_iter(env):
    """tty_write(struct kiocb *, struct iov_iter *) as tty.yaml: the kiocb's file (a pty slave the test opened)
    and the written bytes: write(2) (ITER_UBUF), writev(2) of two buffers (ITER_IOVEC: the first one), and a
    write past the string slot (truncated_bytes_arg with the full size)."""
    _need(env, "kprobe")
    spec = f"""
    kprobes:
    - call: tty_write
      syscall: false
      args:
      - index: 0
        type: kiocb
      - index: 1
        type: iov_iter
        maxData: true
      selectors:{_pids()}
    """
    master, slave = pty.openpty()
    path = os.ttyname(slave)
    f = {"file_arg": {"path": path, "permission": permission(os.stat(path).st_mode)}}

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    def run():
        os.write(slave, b"lanner-kh-tty")
        os.writev(slave, [b"first-seg|", b"second"])
        os.write(slave, b"y" * 300)

    try:
        with env.load("kp-tty", spec):
            evs = [e for e in _events(env, run, "kp-tty") if e["args"][0].get("file_arg", {}).get("path") == path]
            assert [(e["process"]["pid"], e["args"]) for e in evs] == [
                (ME, [f, {"bytes_arg": b64(b"lanner-kh-tty")}]),
                (ME, [f, {"bytes_arg": b64(b"first-seg|")}]),
                (ME, [f, {"truncated_bytes_arg": {"bytes_arg": b64(b"y" * 253), "orig_size": "300"}}]),
            ], evs
    finally:
        os.close(slave)
        os.close(master)
