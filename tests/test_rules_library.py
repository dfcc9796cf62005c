"""The rule library on the host kernel: one agent with every built-in rule; each rule is triggered harmlessly
(temp paths, failing syscalls, loopback or UDP connects that send nothing, the test's own children) and must
report an event carrying its ATT&CK tags, while a near-miss of the same shape stays silent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from lanner.rules import catalog
from tests.conftest import RunningAgent, start_agent

ALL_RULES = {r.name: r for r in catalog.load_catalog()}
RULES = {k: r for k, r in ALL_RULES.items() if not k.endswith("-lsm")}  # the LSM variants: tests/test_rules_lsm.py
NOBODY = 65534
O_WRONLY_CREAT, O_RDWR = 0o101, 0o2
TRACEFS = Path("/sys/kernel/tracing/events/syscalls")


# ----------------------------------------------------------------------------------------- actions
@dataclass
class Ran:
    pid: int
    marker: str


def _py(code: str, user: int | None = None, setup: str = "") -> int:
    """Run setup then code in a python child (as ``user`` after setup: root is dropped, so the syscall fails
    with EPERM/EACCES; modules are imported in setup, while root can still read them)."""
    drop = f"import os\nos.setgroups([])\nos.setgid({user})\nos.setuid({user})\n" if user is not None else ""
    p = subprocess.Popen([sys.executable, "-c", setup + drop + code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.wait(timeout=20)
    return p.pid


def do_open(path: str, flags: int = 0, user: int | None = None) -> int:
    return _py(f"import os\ntry: os.close(os.open({path!r}, {flags}))\nexcept OSError: pass", user)


def do_exec(path: str, container: bool = False) -> int:
    """execve(path): the path never exists (ENOENT), the event is on the entry; container: a new pid namespace."""
    cmd = ["/usr/bin/unshare", "--pid", "--fork", path] if container else \
        [sys.executable, "-c", f"import os\ntry: os.execv({path!r}, [{path!r}])\nexcept OSError: pass"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.wait(timeout=20)
    return p.pid


def do_connect(addr: str, port: int) -> int:
    """A UDP connect: the kernel records the peer, no packet leaves."""
    fam = "AF_INET6" if ":" in addr else "AF_INET"
    return _py(f"import socket\ns = socket.socket(socket.{fam}, socket.SOCK_DGRAM)\n"
               f"try: s.connect(({addr!r}, {port}))\nexcept OSError: pass")


def do_syscall(nr: int, *args: object, user: int | None = None, pre: str = "") -> int:
    return _py(pre + f"libc.syscall({nr}, {', '.join(map(repr, args)) or ''})", user,
               setup="import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n")


def do_call(stmt: str, user: int | None = None) -> int:
    return _py(f"import os\ntry: {stmt}\nexcept OSError: pass", user)


def do_bash(script: str) -> int:
    p = subprocess.Popen(["/bin/bash", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.wait(timeout=20)
    return p.pid


MEMFD_EXEC = ("fd = libc.syscall(319, b'lanner', 0)\n"  # memfd_create: an empty memfd, execveat fails ENOEXEC
              "libc.syscall(322, fd, b'', None, None, 0x1000)\n")
UNSHARE_MNT = "libc.unshare(0x00020000)\n"  # CLONE_NEWNS: the child's own mount namespace


def triggers(t: Path) -> dict[str, tuple[Callable[[str], int], Callable[[str], int]]]:
    """rule -> (trigger, near-miss); each takes a unique marker and returns the pid that acted."""
    nx = "lanner-nx-"
    w, r = O_WRONLY_CREAT, 0
    return {
        "lanner-exec-shell-in-container": (lambda m: do_exec(f"{t}/{m}/sh", True), lambda m: do_exec(f"{t}/{m}/sh")),
        "lanner-exec-interpreter-in-container": (lambda m: do_exec(f"{t}/{m}/python3", True),
                                                 lambda m: do_exec(f"{t}/{m}/python3")),
        "lanner-exec-from-tmp": (lambda m: do_exec(f"/tmp/{nx}{m}/x"), lambda m: do_exec(f"/usr/{nx}{m}/x")),
        "lanner-exec-from-dev-shm": (lambda m: do_exec(f"/dev/shm/{nx}{m}/x"), lambda m: do_exec(f"/dev/{nx}{m}/x")),
        "lanner-exec-fileless": (lambda m: do_syscall(39, pre=MEMFD_EXEC),
                                 lambda m: do_syscall(322, -100, f"/{nx}{m}".encode(), None, None, 0)),
        "lanner-drift-chmod-exec-tmp": (lambda m: do_call(f"os.chmod('/tmp/{nx}{m}', 0o755)"),
                                        lambda m: do_call(f"os.chmod('/tmp/{nx}{m}', 0o644)")),
        "lanner-exec-network-tool": (lambda m: do_exec(f"{t}/{m}/nc"), lambda m: do_exec(f"{t}/{m}/ncx")),
        "lanner-reverse-shell-connect": (lambda m: do_bash("exec 3<>/dev/udp/127.0.0.1/9"),
                                         lambda m: do_connect("127.0.0.1", 9)),
        "lanner-cron-write": (lambda m: do_open(f"/etc/cron.d/{nx}{m}/x", w), lambda m: do_open(f"/etc/cron.d/{nx}{m}/x", r)),
        "lanner-systemd-unit-write": (lambda m: do_open(f"{t}/{m}/evil.service", w),
                                      lambda m: do_open(f"{t}/{m}/evil.service.txt", w)),
        "lanner-ld-preload-write": (lambda m: do_open(f"/etc/ld.so.preload.{nx}{m}/x", w),
                                    lambda m: do_open(f"/etc/ld.so.preload.{nx}{m}/x", r)),
        "lanner-authorized-keys-write": (lambda m: do_open(f"{t}/{m}/.ssh/authorized_keys", w),
                                         lambda m: do_open(f"{t}/{m}/.ssh/authorized_keys", r)),
        "lanner-shell-rc-write": (lambda m: do_open(f"{t}/{m}/.bashrc", w), lambda m: do_open(f"{t}/{m}/.bashrc.bak", w)),
        "lanner-account-files-write": (lambda m: do_open(f"/etc/passwd.{nx}{m}/x", w),
                                       lambda m: do_open(f"/etc/passwd.{nx}{m}/x", r)),
        "lanner-account-tool-exec": (lambda m: do_exec(f"{t}/{m}/useradd"), lambda m: do_exec(f"{t}/{m}/useradd.sh")),
        "lanner-pam-ssh-config-write": (lambda m: do_open(f"/etc/pam.d/{nx}{m}/x", w),
                                        lambda m: do_open(f"/etc/pam.d/{nx}{m}/x", r)),
        "lanner-kernel-modules": (lambda m: do_syscall(313, -1, b"", 0), lambda m: do_syscall(176, b"", 0)),
        "lanner-udev-rule-write": (lambda m: do_open(f"/etc/udev/rules.d/{nx}{m}/x", w),
                                   lambda m: do_open(f"/etc/udev/rules.d/{nx}{m}/x", r)),
        "lanner-system-binary-write": (lambda m: do_open(f"/usr/local/bin/{nx}{m}/x", w),
                                       lambda m: do_open(f"/usr/local/bin/{nx}{m}/x", r)),
        "lanner-setuid-bit-set": (lambda m: do_call(f"os.chmod('{t}/{m}/f', 0o4755)"),
                                  lambda m: do_call(f"os.chmod('{t}/{m}/f', 0o755)")),
        "lanner-privilege-changes": (lambda m: do_call("os.setuid(0)", user=NOBODY), lambda m: do_call("os.setuid(0)")),
        "lanner-file-capabilities-set": (lambda m: do_call(f"os.setxattr('{t}/{m}/f', 'security.capability', b'x')"),
                                         lambda m: do_call(f"os.setxattr('{t}/{m}/f', 'user.lanner', b'x')")),
        "lanner-sudoers-write": (lambda m: do_open(f"/etc/sudoers.{nx}{m}/x", w),
                                 lambda m: do_open(f"/etc/sudoers.{nx}{m}/x", r)),
        "lanner-userfaultfd": (lambda m: do_syscall(323, 0o2000000), lambda m: do_syscall(290, 0, 0o2000000)),
        "lanner-userns-create": (lambda m: do_syscall(272, 0x10000000), lambda m: do_syscall(272, 0x04000000)),
        "lanner-setns-call": (lambda m: do_syscall(308, -1, 0), lambda m: do_syscall(272, 0)),
        "lanner-core-pattern-write": (lambda m: do_open(f"{t}/{m}/kernel/core_pattern", w),
                                      lambda m: do_open(f"{t}/{m}/kernel/core_pattern", r)),
        "lanner-cgroup-release-agent-write": (lambda m: do_open(f"{t}/{m}/release_agent", w),
                                              lambda m: do_open(f"{t}/{m}/release_agent", r)),
        "lanner-mount-block-device": (
            lambda m: do_syscall(165, f"/dev/sd{nx}{m}".encode(), f"/{nx}{m}".encode(), b"ext4", 0, None, pre=UNSHARE_MNT),
            lambda m: do_syscall(165, f"/dev/sd{nx}{m}".encode(), f"/{nx}{m}".encode(), b"ext4", 0, None)),
        "lanner-mount-cgroup-v1": (lambda m: do_syscall(165, m.encode(), f"/{nx}{m}".encode(), b"cgroup", 0, None),
                                   lambda m: do_syscall(165, m.encode(), f"/{nx}{m}".encode(), b"tmpfs", 0, None)),
        "lanner-mounts": (lambda m: do_syscall(165, m.encode(), f"/{nx}{m}".encode(), b"tmpfs", 0, None),
                          lambda m: do_syscall(166, f"/{nx}{m}".encode(), 0)),
        "lanner-proc1-root-access": (lambda m: do_open(f"/proc/1/root/{nx}{m}"), lambda m: do_open(f"/proc/self/root/{nx}{m}")),
        "lanner-ptrace": (lambda m: do_syscall(101, 16, 0x3FFFFFFF, 0, 0), lambda m: do_syscall(101, 2, 0x3FFFFFFF, 0, 0)),
        "lanner-process-vm-write": (lambda m: do_syscall(311, 0x3FFFFFFF, None, 0, None, 0, 0),
                                    lambda m: do_syscall(310, 0x3FFFFFFF, None, 0, None, 0, 0)),
        "lanner-proc-mem-write": (lambda m: do_open(f"/proc/{nx}{m}/mem", O_RDWR), lambda m: do_open(f"/proc/{nx}{m}/mem", r)),
        "lanner-bpf-prog-load": (lambda m: do_syscall(321, 5, None, 0), lambda m: do_syscall(321, 0, None, 0)),
        "lanner-log-delete": (lambda m: do_call(f"os.unlink('/var/log/{nx}{m}')"), lambda m: do_call(f"os.unlink('/var/{nx}{m}')")),
        "lanner-log-truncate": (lambda m: do_call(f"os.truncate('/var/log/{nx}{m}', 0)"),
                                lambda m: do_call(f"os.truncate('/var/{nx}{m}', 0)")),
        "lanner-history-tamper": (lambda m: do_call(f"os.unlink('{t}/{m}/.bash_history')"),
                                  lambda m: do_call(f"os.unlink('{t}/{m}/.bash_history.bak')")),
        "lanner-security-tool-tamper": (lambda m: do_open(f"/etc/apparmor.d/{nx}{m}/x", w),
                                        lambda m: do_open(f"/etc/{nx}{m}/apparmor.d/x", w)),
        "lanner-kernel-tunable-write": (lambda m: do_open(f"/proc/sys/kernel/{nx}{m}", 1),
                                        lambda m: do_open(f"/proc/sys/kernel/{nx}{m}", r)),
        "lanner-io-uring-setup": (lambda m: do_syscall(425, 0, None), lambda m: do_syscall(426, -1, 0, 0, 0, None, 0)),
        "lanner-kernel-log-clear": (lambda m: do_syscall(103, 5, None, 0, user=NOBODY),
                                    lambda m: do_syscall(103, 10, None, 0, user=NOBODY)),
        "lanner-sensitive-files": (lambda m: do_open(f"/etc/shadow.{nx}{m}"), lambda m: do_open(f"/etc/{nx}{m}")),
        "lanner-ssh-private-key-read": (lambda m: do_open(f"{t}/{m}/.ssh/id_ed25519"),
                                        lambda m: do_open(f"{t}/{m}/.ssh/id_ed25519.pub")),
        "lanner-cloud-credentials-read": (lambda m: do_open(f"{t}/{m}/.aws/credentials"),
                                          lambda m: do_open(f"{t}/{m}/.aws/credentials.bak")),
        "lanner-k8s-sa-token-read": (lambda m: do_open(f"/var/run/secrets/kubernetes.io/{nx}{m}/token"),
                                     lambda m: do_open(f"/var/run/secrets/{nx}{m}/token")),
        "lanner-imds-access": (lambda m: do_connect("169.254.169.254", 80), lambda m: do_connect("169.254.169.253", 80)),
        "lanner-kube-pki-read": (lambda m: do_open(f"/etc/kubernetes/pki/{nx}{m}"),
                                 lambda m: do_open(f"/etc/kubernetes/{nx}{m}")),
        "lanner-proc-environ-read": (lambda m: do_open(f"/proc/{nx}{m}/environ"), lambda m: do_open(f"/proc/{nx}{m}/cmdline")),
        "lanner-shell-history-read": (lambda m: do_open(f"{t}/{m}/.bash_history"),
                                      lambda m: do_bash(f"read x < {t}/{m}/.bash_history")),
        "lanner-network-scanner-exec": (lambda m: do_exec(f"{t}/{m}/nmap"), lambda m: do_exec(f"{t}/{m}/nmap.conf")),
        "lanner-packet-capture": (lambda m: do_call("os.close(__import__('socket').socket(17, 3).detach())"),
                                  lambda m: do_call("os.close(__import__('socket').socket(2, 2).detach())")),
        "lanner-k8s-client-in-container": (lambda m: do_exec(f"{t}/{m}/kubectl", True), lambda m: do_exec(f"{t}/{m}/kubectl")),
        "lanner-kernel-symbols-read": (lambda m: do_open(f"/boot/System.map-{nx}{m}"), lambda m: do_open(f"/boot/{nx}{m}")),
        "lanner-ssh-from-container": (lambda m: do_exec(f"{t}/{m}/ssh", True), lambda m: do_exec(f"{t}/{m}/ssh")),
        "lanner-ssh-connect-unexpected": (lambda m: do_connect("127.0.0.1", 22), lambda m: do_connect("127.0.0.1", 2222)),
        "lanner-remote-admin-ports": (lambda m: do_connect("127.0.0.1", 445), lambda m: do_connect("127.0.0.1", 446)),
        "lanner-container-api-connect": (lambda m: do_connect("127.0.0.1", 10250), lambda m: do_connect("127.0.0.1", 10251)),
        "lanner-interpreter-public-ip-connect": (lambda m: do_connect("198.51.100.7", 9), lambda m: do_connect("127.0.0.1", 9)),
        "lanner-tor-proxy-connect": (lambda m: do_connect("127.0.0.1", 9050), lambda m: do_connect("127.0.0.1", 9052)),
        "lanner-tunnel-tool-exec": (lambda m: do_exec(f"{t}/{m}/chisel"), lambda m: do_exec(f"{t}/{m}/chisel.yaml")),
        "lanner-download-tool-in-container": (lambda m: do_exec(f"{t}/{m}/curl", True), lambda m: do_exec(f"{t}/{m}/curl")),
        "lanner-cloud-sync-tool-exec": (lambda m: do_exec(f"{t}/{m}/rclone"), lambda m: do_exec(f"{t}/{m}/rclone.conf")),
        "lanner-exfil-unencrypted-ports": (lambda m: do_connect("127.0.0.1", 21), lambda m: do_connect("127.0.0.1", 2121)),
        "lanner-miner-pool-connect": (lambda m: do_connect("127.0.0.1", 3333), lambda m: do_connect("127.0.0.1", 3000)),
        "lanner-miner-exec": (lambda m: do_exec(f"{t}/{m}/xmrig"), lambda m: do_exec(f"{t}/{m}/xmrig.json")),
        "lanner-data-destruction-tool": (lambda m: do_exec(f"{t}/{m}/shred"), lambda m: do_exec(f"{t}/{m}/shredder")),
        "lanner-raw-disk-write": (lambda m: do_open(f"/dev/sd{nx}{m}", 1), lambda m: do_open(f"/dev/sd{nx}{m}", r)),
        "lanner-system-reboot": (lambda m: do_syscall(169, 0, 0, 0, None, user=NOBODY),
                                 lambda m: do_syscall(170, None, 0, user=NOBODY)),
        "lanner-sysrq-trigger": (lambda m: do_open("/proc/sysrq-trigger", 1, user=NOBODY),
                                 lambda m: do_open("/proc/sysrq-trigger", r, user=NOBODY)),
        "lanner-system-binary-delete": (lambda m: do_call(f"os.unlink('/usr/local/bin/{nx}{m}')"),
                                        lambda m: do_call(f"os.unlink('/usr/local/{nx}{m}')")),
    }


# ----------------------------------------------------------------------------------------- agent
@pytest.fixture(scope="module")
def library(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rules")
    a = start_agent(tmp_path_factory.mktemp("agent"), "--tracing-policy-dir", str(catalog.rules_dir()))
    try:
        deadline = time.monotonic() + 60
        while len(listed := _listed(a)) < len(ALL_RULES) or any(p.state == 5 for p in listed.values()):
            assert time.monotonic() < deadline, f"{len(listed)} of {len(ALL_RULES)} rules listed, some loading"
            time.sleep(0.2)  # the start-up policies load after ready (TP_STATE_LOADING = 5 until then)
        yield a, tmp
    finally:
        a.stop()


def _listed(a: RunningAgent) -> dict[str, object]:
    from lanner.client import AgentClient

    with AgentClient(a.address, timeout=10) as c:
        return {p.name: p for p in c.list_policies()}


def _harness_exec(body: dict) -> bool:
    """The exec of the test's own Python child (the harness, not the behaviour under test): it runs from the
    checkout's virtualenv, which may itself live under /tmp."""
    args = body.get("args") or [{}]
    return body.get("function_name", "").endswith("execve") and args[0].get("string_arg") == sys.executable


def _events(a: RunningAgent, rule: str, ran: Ran) -> list[dict]:
    out = []
    for e in a.events():
        body = e.get("process_kprobe")
        if body and body.get("policy_name") == rule and not _harness_exec(body) and (
                body["process"]["pid"] == ran.pid or ran.marker in json.dumps(body.get("args", []))):
            out.append(body)
    return out


def _served(rule: catalog.Rule, listed: dict[str, object]) -> bool:
    return listed[rule.name].state == 1  # TP_STATE_ENABLED


def test_every_rule_has_a_trigger(tmp_path):
    assert set(triggers(tmp_path)) == set(RULES)


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_triggers_and_near_miss_is_silent(library, name):
    agent, tmp = library
    rule = RULES[name]
    listed = _listed(agent)
    if not _served(rule, listed):
        # only a syscall this kernel lacks (the module syscalls without CONFIG_MODULES) may keep a rule out
        err = listed[name].error
        missing = [w.split("/")[1] for w in err.split() if w.startswith("syscalls/sys_enter_")]
        assert missing and not any((TRACEFS / m).exists() for m in missing), err
        pytest.skip(f"{name}: not served on this kernel: {err[:120]}")
    trigger, near_miss = triggers(tmp)[name]
    miss = Ran(0, "m" + uuid.uuid4().hex[:10])
    miss.pid = near_miss(miss.marker)
    hit = Ran(0, "h" + uuid.uuid4().hex[:10])
    hit.pid = trigger(hit.marker)
    evs = agent.wait_for(lambda _: _events(agent, name, hit), timeout=20, what=f"{name} event")
    ev = _events(agent, name, hit)[0]
    assert set(rule.techniques) <= set(ev["tags"]) and rule.tactic_id in ev["tags"], ev
    assert ev["action"] == "KPROBE_ACTION_POST" and ev.get("message"), ev
    assert not _events(agent, name, miss), f"{name}: the near-miss was reported: {_events(agent, name, miss)}"
    assert evs  # the export file holds the event


# ----------------------------------------------------------------------------------------- CLI on the live agent
def _lanner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lanner", *args], capture_output=True, text=True, timeout=60)


def test_rules_list_disable_enable_by_tactic(library):
    agent, _ = library
    p = _lanner("rules", "list", "-o", "json", "--server-address", agent.address)
    rows = {x["rule"]: x for x in json.loads(p.stdout)}
    assert set(rows) == set(ALL_RULES)
    assert all(x["mode"] == "observe" for x in rows.values())
    assert rows["lanner-miner-exec"]["state"] == "enabled" and rows["lanner-miner-exec"]["technique"] == ["T1496"]
    p = _lanner("rules", "disable", "--tactic", "discovery", "--server-address", agent.address)
    n = sum(r.tactic == "discovery" for r in ALL_RULES.values())
    assert p.returncode == 0 and p.stdout.startswith(f"{n} rules disabled"), p.stdout + p.stderr
    try:
        states = {x["rule"]: x["state"] for x in json.loads(_lanner(
            "rules", "list", "-o", "json", "--server-address", agent.address).stdout)}
        assert {k for k, v in states.items() if v == "disabled"} == {r.name for r in ALL_RULES.values()
                                                                     if r.tactic == "discovery"}
        text = _lanner("rules", "list", "--tactic", "discovery", "--server-address", agent.address).stdout
        assert text.splitlines()[0].split() == ["RULE", "TACTIC", "TECHNIQUE", "SEVERITY", "STATE", "MODE"]
        assert "lanner-network-scanner-exec" in text and "disabled" in text
    finally:
        p = _lanner("rules", "enable", "--tactic", "discovery", "--server-address", agent.address)
    assert p.returncode == 0 and p.stdout.startswith(f"{n} rules enabled"), p.stdout + p.stderr


def test_enforce_overlay_kills_the_test_child(library, tmp_path):
    """A rule marked safe, rendered with enforce, replaces the observing one: the child's exec of a miner path
    (which does not exist, so an unkilled child would exit 0) is killed by SIGKILL."""
    agent, tmp = library
    out = tmp_path / "rendered"
    p = _lanner("rules", "render", "--out", str(out), "--enforce", "lanner-miner-exec", "--tactic", "impact")
    assert p.returncode == 0, p.stderr
    assert _lanner("tp", "delete", "lanner-miner-exec", "--server-address", agent.address).returncode == 0
    try:
        p = _lanner("tp", "add", str(out / "miner-exec.yaml"), "--server-address", agent.address)
        assert p.returncode == 0, p.stderr
        mk = "e" + uuid.uuid4().hex[:10]
        child = subprocess.run([sys.executable, "-c", f"import os\ntry: os.execv('{tmp}/{mk}/xmrig', ['x'])\n"
                                "except OSError: pass"], timeout=20)
        assert child.returncode == -9
        agent.wait_for(lambda _: _events(agent, "lanner-miner-exec", Ran(0, mk)), timeout=10,
                       what="the miner-exec kill event")
        ev = _events(agent, "lanner-miner-exec", Ran(0, mk))
        assert ev and ev[0]["action"] == "KPROBE_ACTION_SIGKILL", ev
        mode = _lanner("rules", "list", "-o", "json", "--server-address", agent.address).stdout
        assert {x["rule"]: x["mode"] for x in json.loads(mode)}["lanner-miner-exec"] == "enforce"
    finally:
        _lanner("tp", "delete", "lanner-miner-exec", "--server-address", agent.address)
        _lanner("tp", "add", str(RULES["lanner-miner-exec"].path), "--server-address", agent.address)
