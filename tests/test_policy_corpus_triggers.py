"""The Tetragon example corpus (../shared/tetragon-policies, read in place) on this kernel, end to end.

* every file parses, except the one the parser rejects on purpose (docs/policy.md);
* every policy is loaded into the engine with this kernel's measured probe: its state and, per hook,
  how it is served or why not, are pinned below (docs/policies.md has the same table);
* every policy that loads (ENABLED) gets a matching trigger from a small per-policy table, run in a
  child or on a path the test owns, and its event must arrive (kind and function/tracepoint/symbol);
  where the policy filters, a non-matching trigger must produce nothing;
* every policy is deleted again and its links are gone.

SAFETY: triggers are scoped and harmless: setuid/setgid in children (root to root or to nobody, then
exit), mount of a tmpfs inside a throwaway mount namespace (unshare -m), ptrace attach/detach of a
`sleep` child, links and symlinks under tmp_path (the hard link of /etc/passwd targets a missing
directory, so nothing is created), writes to pipes. No corpus policy here enforces anything on this
kernel (Override/NotifyEnforcer/Sigkill hooks are unavailable); openat_write's /etc/passwd is
replaced by a tmp file, uprobe-pid's hard-coded pid by the test's own bash child.

On kernels with kprobes, fmod_ret and the BPF LSM (the `make vmtest` guests) the enforcing policies are
scoped by their trigger's patch to a binary the test copies into tmp (never a wider filter), and the
triggers add: overlay mounts and non-local addresses only inside namespaces the test creates (unshare
-m / -Urm / --net), a cgroup of the test's under the cgroup2 mount (never the root one) with a pass-all
cgroup skb program on its egress, loopback traffic to listeners of the test's, reads and maps of
/etc/passwd, a socket of an address family no kernel has (AF_DECnet: a module request that finds
nothing), and a load and unload of the dummy network driver with no device (numdummies=0).
"""

from __future__ import annotations

import base64
import ctypes
import os
import pty
import shutil
import re
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from lanner.exporter.api.gen.tetragon import sensors_pb2
from lanner.policy import PolicyError, load_policies
from tests.test_policy_operators import Env, body, env  # noqa: F401  (env: the module-scoped fixture)

pytestmark = pytest.mark.bpf

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "tetragon-policies"
FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml")) \
    if CORPUS.is_dir() else []
IDS = [str(p.relative_to(CORPUS)) for p in FILES]

REJECTED = {
    "list-syscalls-tracepoint.yaml":
        "spec.tracepoints[0].selectors[0].matchArgs[0].values[0]: "
        "a syscall list needs a syscall64 arg, this arg is 'uint64'",
}

# ------------------------------------------------------------------ expected outcome on this kernel
# Policies that load fully here (syscall kprobes served by syscall tracepoints, tracepoints, uprobes).
ENABLED_HERE = {
    "hardlink-observe.yaml", "list-syscalls.yaml", "openat_write.yaml",
    "process-credentials/process.credentials.changes.at.syscalls.yaml", "raw_syscalls.yaml", "rawtp.yaml",
    "symlink-observe.yaml", "sys_mount.yaml", "sys_ptrace.yaml", "sys_setuid.yaml", "uprobe-pid.yaml",
    "uprobe.yaml", "write.yaml", "sys_clock_settime.yaml", "sys_pivot_root.yaml", "list-syscalls-generated.yaml",
}
# Everything else loads nothing (LOAD_ERROR); the reason each unavailable hook gives contains:
KPROBE = "kprobe attach"          # kernel-function kprobes (not served: no kprobes here, and not in the engine)
LSM = "BPF LSM"
OVERRIDE = "Override needs"
NOTIFY = "NotifyEnforcer needs"
REASONS = {
    "bpf.yaml": KPROBE,
    "cves/cve-2023-2640-overlayfs-ubuntu.yaml": KPROBE,
    "cves/cve-2024-3094-xz-ssh.yaml": KPROBE,
    "datagram-with-selectors.yaml": KPROBE,
    "datagram-with-sock-tracking.yaml": KPROBE,
    "datagram.yaml": KPROBE,
    "datagram_518.yaml": KPROBE,
    "dev_hard_start_xmit.yaml": KPROBE,
    "dev_queue_xmit.yaml": KPROBE,
    "dns-only-specified-servers.yaml": KPROBE,
    "fd_install_cap_changes.yaml": KPROBE,
    "fd_install_caps.yaml": KPROBE,
    "fd_install_ns.yaml": KPROBE,
    "fd_install_ns_host.yaml": KPROBE,
    "filename_monitoring.yaml": KPROBE,
    "filename_monitoring_filtered.yaml": KPROBE,
    "hardlink-override.yaml": OVERRIDE,
    "host-changes/monitor-kernel-modules.yaml": KPROBE,
    "host-changes/monitor-signed-kernel-modules.yaml": KPROBE,
    "killer.yaml": NOTIFY,
    "kprobe_commit_creds.yaml": KPROBE,
    "list-generated-ftrace.yaml": KPROBE,
    "loader.yaml": "process_loader events are not served by this lanner build",
    "lsm_bprm_check.yaml": LSM,
    "lsm_file_open.yaml": LSM,
    "lsm_track_grandparent.yml": LSM,
    "modules-nohost.yaml": KPROBE,
    "open_dnsrequest.yaml": KPROBE,
    "open_geturl.yaml": KPROBE,
    "override-security.yaml": KPROBE,
    "process-credentials/creds-capability-usage.yaml": KPROBE,
    "process-credentials/process-creds-changed.yaml": KPROBE,
    "process-credentials/process-creds-installed.yaml": KPROBE,
    "process-exec/process-exec-elf-begin.yaml": KPROBE,
    "sandbox/linux-namespaces/kill_unprivileged_user_namespace.yaml": KPROBE,
    "sandbox/linux-namespaces/kill_unprivileged_user_namespace_in_pid_namespace.yaml": KPROBE,
    "security-socket-connect-block-others.yaml": KPROBE,
    "security-socket-connect.yaml": KPROBE,
    "security_bprm_check.yaml": KPROBE,
    "security_inode_follow_link.yaml": KPROBE,
    "stack_traces.yaml": KPROBE,
    "symlink-override.yaml": OVERRIDE,
    "tcp-accept.yaml": KPROBE,
    "tcp-connect-only-local-addrs.yaml": KPROBE,
    "tcp-connect-only-private-addrs.yaml": KPROBE,
    "tcp-connect-with-selectors.yaml": KPROBE,
    "tcp-connect.yaml": KPROBE,
    "tcp-listen.yaml": KPROBE,
    "tty.yaml": KPROBE,
    "tty_54.yaml": KPROBE,
    "uprobe-binaries.yaml": "/lib64/libc.so.6 does not exist",
    "uprobe-host.yaml": "/procRoot/1/root/usr/bin/bash does not exist",
    "usdt-set.yaml": "/home/jolsa/tetragon/contrib/tester-progs/usdt-override does not exist",
    "usdt.yaml": "/home/jolsa/tetragon/contrib/tester-progs/usdt does not exist",
}

# ------------------------------------------------------ kernels with kprobes, fmod_ret and the BPF LSM
# (the Debian 6.1 / 6.12 guests of `make vmtest`; override_return is refused there). What is full there
# besides ENABLED_HERE; policies that enforce are scoped by their trigger's patch to what the test starts.
ENABLED_KFUNC = ENABLED_HERE | {
    "bpf.yaml", "tty.yaml",
    "cves/cve-2023-2640-overlayfs-ubuntu.yaml", "cves/cve-2024-3094-xz-ssh.yaml", "datagram-with-selectors.yaml",
    "datagram.yaml", "dev_hard_start_xmit.yaml", "dns-only-specified-servers.yaml", "fd_install_ns.yaml",
    "fd_install_ns_host.yaml", "fd_install_caps.yaml", "fd_install_cap_changes.yaml", "filename_monitoring.yaml",
    "filename_monitoring_filtered.yaml",
    "kprobe_commit_creds.yaml", "lsm_file_open.yaml", "override-security.yaml",
    "process-credentials/creds-capability-usage.yaml", "process-credentials/process-creds-changed.yaml",
    "process-credentials/process-creds-installed.yaml", "process-exec/process-exec-elf-begin.yaml",
    "sandbox/linux-namespaces/kill_unprivileged_user_namespace.yaml",
    "sandbox/linux-namespaces/kill_unprivileged_user_namespace_in_pid_namespace.yaml",
    "security-socket-connect-block-others.yaml", "security-socket-connect.yaml", "security_bprm_check.yaml",
    "security_inode_follow_link.yaml", "tcp-connect-only-local-addrs.yaml", "tcp-connect-only-private-addrs.yaml",
    "tcp-connect-with-selectors.yaml", "tcp-connect.yaml", "tty_54.yaml", "host-changes/monitor-kernel-modules.yaml",
    "modules-nohost.yaml", "tcp-accept.yaml", "tcp-listen.yaml", "datagram-with-sock-tracking.yaml",
    "datagram_518.yaml", "list-generated-ftrace.yaml", "stack_traces.yaml",
}
# full there, loaded and unloaded but not triggered by this file (tests/test_policy_kernel_hooks.py covers
# their argument types and operators with scoped policies of its own)
LOAD_ONLY_KFUNC = {
    # its Mnt values are the fixed inode numbers of the initial pid, cgroup and time namespaces; mount
    # namespaces get dynamic ones (from 4026531840 up): no process is in one of them
    "fd_install_ns.yaml": "matchNamespaces Mnt In 4026531834-4026531836 matches no mount namespace",
}
# ... and from a kernel version on (the hook's arguments changed)
LOAD_ONLY_KFUNC_SINCE = {
    # 6.10 made it security_inode_copy_up_xattr(struct dentry *src, const char *name): the policy's string
    # arg 0 is then the dentry, which never equals "security.capability"
    "cves/cve-2023-2640-overlayfs-ubuntu.yaml": ((6, 10), "arg 0 is a struct dentry * since 6.10"),
}
# ... and LOAD_ERROR from a kernel version on, with this reason (the hooked function is gone)
REASONS_KFUNC_SINCE = {
    # 6.10 made kfree_skb_reason a static inline wrapper of sk_skb_reason_drop: no symbol to probe
    "stack_traces.yaml": ((6, 10), "attach failed: attach generic_kprobe (kprobe kfree_skb_reason"),
}
PARTIAL_KFUNC = {  # some hooks run, the others are unavailable for this reason
    # find_module_sections is inlined on the Debian kernels: it cannot be probed
    "host-changes/monitor-signed-kernel-modules.yaml":
        "attach failed: attach generic_kprobe (kprobe find_module_sections",
}
FMOD_SYSCALL = "refused by the kernel (it modifies only security_* functions and, with CONFIG_FUNCTION_ERROR_INJECTION"
REASONS_KFUNC = {  # LOAD_ERROR there, with this reason (the rest: as in REASONS)
    "dev_queue_xmit.yaml": "attach failed: attach generic_kprobe (kprobe dev_queue_xmit",  # an inline function
    "hardlink-override.yaml": "fmod_ret on __x64_sys_linkat " + FMOD_SYSCALL,
    "killer.yaml": "fmod_ret on __x64_sys_dup " + FMOD_SYSCALL,  # the NotifyEnforcer's enforcer
    "lsm_bprm_check.yaml": "imaHash is not served",
    "lsm_track_grandparent.yml": "resolve/btfType/returnCopy are not served",
    "open_dnsrequest.yaml": "action DnsLookup is not served",
    "open_geturl.yaml": "action GetUrl is not served",
    "symlink-override.yaml": "fmod_ret on __x64_sys_symlinkat " + FMOD_SYSCALL,
}
assert ENABLED_KFUNC.isdisjoint(PARTIAL_KFUNC) and set(LOAD_ONLY_KFUNC) <= ENABLED_KFUNC
assert ENABLED_KFUNC.isdisjoint(REASONS_KFUNC) and set(PARTIAL_KFUNC).isdisjoint(REASONS_KFUNC)
assert set(REASONS_KFUNC_SINCE) <= ENABLED_KFUNC
# the tables a kernel is held to: the CI host's above, or these where the kernel has all of
KFUNC_FEATURES = ("kprobe", "kretprobe", "fmod_ret", "lsm")

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def _skip_without_corpus() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} missing")


# ------------------------------------------------------------------------------------ parsing
def test_corpus_parses():
    _skip_without_corpus()
    assert len(FILES) == 71, IDS
    assert set(REJECTED) | set(REASONS) | ENABLED_HERE == set(IDS)
    assert not (set(REASONS) & ENABLED_HERE) and not (set(REJECTED) & (set(REASONS) | ENABLED_HERE))
    parsed = 0
    for path, rel in zip(FILES, IDS):
        if rel in REJECTED:
            with pytest.raises(PolicyError) as exc:
                load_policies(path.read_text(), rel)
            assert exc.value.problems_in(0) == [REJECTED[rel]]
            continue
        assert len(load_policies(path.read_text(), rel)) == 1, rel
        parsed += 1
    assert parsed == 70


# ---------------------------------------------------------------------------------- triggers
class Trigger:
    """A matching trigger for one corpus policy. ``fire`` runs it and returns a predicate over event
    bodies (the policy's events only) selecting those it caused; ``names`` are the function names
    (kprobe), "subsys/event" (tracepoint) or symbols (uprobe) those events must cover. ``negative``
    optionally runs a non-matching trigger and returns a predicate no event may satisfy."""

    kind = "process_kprobe"
    names: set[str] = set()
    action = "KPROBE_ACTION_POST"  # every hit's action
    signals = False  # the policy's signal counter must rise (Sigkill/Signal), else stay 0
    # policies without a filter get every process's calls: under a flood of other processes' events the
    # ring buffer can be full when the trigger runs (its record is then lost and counted), so they may
    # fire again, each time right after the ring buffer was drained
    attempts = 1
    engine = None  # the PolicyEngine under test (set before setup), for triggers that register pods

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def setup(self) -> None:
        pass

    def patch(self, text: str) -> str:
        return text

    def fire(self) -> Callable[[dict], bool]:
        raise NotImplementedError

    negative: Callable[[], Callable[[dict], bool]] | None = None

    def cleanup(self) -> None:
        pass


def _py(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, **kw)


def _name(b: dict) -> str:
    if "function_name" in b:
        return b["function_name"]
    if "subsys" in b:
        return f"{b['subsys']}/{b['event']}"
    return b.get("symbol", "")


class HardlinkObserve(Trigger):
    names = {"__x64_sys_linkat"}

    def fire(self):
        # the link would go into a missing directory: linkat is entered with /etc/passwd, fails ENOENT
        dst = str(self.tmp / "missing-dir" / "passwd-link")
        assert libc.linkat(AT_FDCWD, b"/etc/passwd", AT_FDCWD, dst.encode(), 0) == -1
        return lambda b: b["process"]["pid"] == os.getpid() and b["args"][1] == {"string_arg": "/etc/passwd"} \
            and b["args"][3] == {"string_arg": dst}

    def negative(self):
        src = self.tmp / "not-passwd"
        src.write_text("x")
        dst = str(self.tmp / "not-passwd-link")
        assert libc.linkat(AT_FDCWD, str(src).encode(), AT_FDCWD, dst.encode(), 0) == 0
        return lambda b: b["args"][3] == {"string_arg": dst}


class SymlinkObserve(Trigger):
    names = {"__x64_sys_symlinkat"}

    def fire(self):
        dst = str(self.tmp / "passwd-symlink")  # a symlink in tmp pointing at /etc/passwd
        assert libc.symlinkat(b"/etc/passwd", AT_FDCWD, dst.encode()) == 0
        return lambda b: b["process"]["pid"] == os.getpid() and b["args"] == [
            {"string_arg": "/etc/passwd"}, {"int_arg": AT_FDCWD}, {"string_arg": dst}]

    def negative(self):
        dst = str(self.tmp / "other-symlink")
        assert libc.symlinkat(b"/etc/hostname", AT_FDCWD, dst.encode()) == 0
        return lambda b: b["args"][2] == {"string_arg": dst}


class ListSyscalls(Trigger):
    names = {"__x64_sys_dup", "__x64_sys_dup2"}
    attempts = 3

    def fire(self):
        fd = libc.dup(0)  # the libc calls (Python's os.dup uses fcntl)
        assert fd >= 0
        libc.dup2(0, fd)
        os.close(fd)
        return lambda b: b["process"]["pid"] == os.getpid()


class OpenatWrite(Trigger):
    names = {"__x64_sys_openat"}

    def setup(self):
        self.target = self.tmp / "passwd"
        self.target.write_text("root:x:0:0::/root:/bin/sh\n")

    def patch(self, text):
        assert '"/etc/passwd"' in text
        return text.replace('"/etc/passwd"', f'"{self.target}"')

    def fire(self):
        os.close(os.open(self.target, os.O_WRONLY))
        t = str(self.target)
        return lambda b: b["process"]["pid"] == os.getpid() and b["args"][1] == {"string_arg": t} \
            and b["return"]["int_arg"] > 0

    def negative(self):
        os.close(os.open(self.target, os.O_RDONLY))  # Mask CREATE|WRONLY|RDWR does not match
        t = str(self.target)
        return lambda b: b["args"][1] == {"string_arg": t} and b["args"][2]["int_arg"] & 3 == 0


class CredentialsAtSyscalls(Trigger):
    """matchNamespaces Pid NotIn host_ns: only a process in another pid namespace reports."""

    names = {"__x64_sys_setgid", "__x64_sys_setuid", "__x64_sys_setresuid"}
    CODE = "import os; print(os.readlink('/proc/self'), flush=True); os.setgid(0); os.setuid(0); os.setresuid(0, 0, 0)"

    def fire(self):
        r = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", self.CODE], capture_output=True,
                           timeout=60, check=True)
        host_pid = int(r.stdout.split()[0])  # /proc is the host's: /proc/self is the host pid
        return lambda b: b["process"]["pid"] == host_pid

    def negative(self):
        r = _py(self.CODE)
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout.split()[0])
        return lambda b: b["process"]["pid"] == pid


class RawSyscalls(Trigger):
    kind = "process_tracepoint"
    names = {"raw_syscalls/sys_enter"}
    attempts = 5

    def fire(self):
        os.getppid()
        return lambda b: b["process"]["pid"] == os.getpid() and b["args"] == [
            {"syscall_id": {"id": 110, "abi": "x64"}}]


class RawTp(Trigger):
    """raw: true on sched_process_exec: TP_PROTO argument 2, the struct linux_binprm * (tp_btf)."""

    kind = "process_tracepoint"
    names = {"sched/sched_process_exec"}
    attempts = 3

    def fire(self):
        exe = self.tmp / "lanner-rawtp"
        shutil.copy("/bin/true", exe)
        p = subprocess.Popen([str(exe)])
        assert p.wait(timeout=60) == 0
        return lambda b: b["process"]["pid"] == p.pid and b["args"] == [
            {"linux_binprm_arg": {"path": str(exe), "permission": "-rwxr-xr-x"}}]


class SysMount(Trigger):
    names = {"__x64_sys_mount"}

    def fire(self):
        mnt = self.tmp / "mnt"
        mnt.mkdir()
        # a tmpfs in a throwaway mount namespace: gone when the command exits
        subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs",
                        "lanner-corpus-tmpfs", str(mnt)], check=True, timeout=60, capture_output=True)
        assert not os.path.ismount(mnt)  # nothing leaked into the host's mount namespace
        return lambda b: b["args"] == [{"string_arg": "lanner-corpus-tmpfs"}, {"string_arg": str(mnt)}]


PTRACE_HELPER = r"""
import ctypes, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
child = subprocess.Popen(["sleep", "30"])
try:
    assert libc.ptrace(16, child.pid, None, None) == 0, ctypes.get_errno()   # PTRACE_ATTACH
    os.waitpid(child.pid, 0)
    assert libc.ptrace(17, child.pid, None, None) == 0, ctypes.get_errno()   # PTRACE_DETACH
finally:
    child.kill()
    child.wait()
print(os.getpid())
"""


class SysPtrace(Trigger):
    names = {"__x64_sys_ptrace"}

    def fire(self):
        r = _py(PTRACE_HELPER)
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        return lambda b: b["process"]["pid"] == pid and b["args"] == [{"int_arg": 0}]


class SysSetuid(Trigger):
    names = {"__x64_sys_setuid"}

    def fire(self):
        r = _py("import os; os.setuid(65534); print(os.getpid())")  # the child drops to nobody and exits
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        return lambda b: b["process"]["pid"] == pid and b["args"] == [{"int_arg": 65534}]


class Write(Trigger):
    """matchPIDs NotIn 1 (namespace pid) + fd Equal 1: writes to stdout, except by a pid namespace's init."""

    names = {"__x64_sys_write"}
    attempts = 3
    CODE = "import os; os.write(1, b'{}')"

    def fire(self):
        data = b"lanner-corpus-write"
        p = subprocess.Popen([sys.executable, "-c", self.CODE.format(data.decode())], stdout=subprocess.PIPE)
        out, _ = p.communicate(timeout=60)
        assert out == data
        enc = base64.b64encode(data).decode()
        return lambda b: b["process"]["pid"] == p.pid and b["args"][0] == {"int_arg": 1} \
            and b["args"][1] == {"bytes_arg": enc} and b["args"][2] == {"size_arg": str(len(data))}

    def negative(self):
        data = b"lanner-corpus-nspid1"  # written by pid 1 of a new pid namespace
        r = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", self.CODE.format(data.decode())],
                           capture_output=True, timeout=60, check=True)
        assert r.stdout == data
        enc = base64.b64encode(data).decode()
        return lambda b: b["args"][1].get("bytes_arg") == enc


class _NotNsInit(Trigger):
    """Two matchPIDs entries, ANDed (NotIn 1 and NotIn 0, namespace pids): the syscall by any process but a
    pid namespace's init. ``CODE`` makes the call harmlessly (it fails) and prints the marker first."""

    attempts = 3
    CODE = ""

    def _run(self, marker: str, *prefix: str) -> int:
        r = subprocess.run([*prefix, sys.executable, "-c", self.CODE.format(marker)], capture_output=True,
                           timeout=60, check=True, text=True)
        assert r.stdout.split()[0] == marker, r
        return int(r.stdout.split()[1])

    def fire(self):
        m = f"lanner-{uuid.uuid4().hex[:8]}"
        pid = self._run(m)
        return lambda b: b["process"]["pid"] == pid and self.matches(b, m)

    def negative(self):
        m = f"lanner-{uuid.uuid4().hex[:8]}"
        self._run(m, "unshare", "--pid", "--fork")  # pid 1 of its namespace
        return lambda b: self.matches(b, m)

    def matches(self, b: dict, marker: str) -> bool:
        raise NotImplementedError


class ClockSettime(_NotNsInit):
    """clock_settime(CLOCK_MONOTONIC, {0, 0}): the kernel refuses it (EINVAL), so no clock changes; the
    event is told apart by the marker in the process's arguments."""

    names = {"__x64_sys_clock_settime"}
    CODE = ("import ctypes, os; print('{}', os.getpid(), flush=True); ts = (ctypes.c_long * 2)(0, 0); "
            "assert ctypes.CDLL(None, use_errno=True).syscall(227, 1, ts) == -1")

    def matches(self, b: dict, marker: str) -> bool:
        return marker in b["process"].get("arguments", "") and b["args"] == [{"int_arg": 1}]


class PivotRoot(_NotNsInit):
    """pivot_root(<marker paths that do not exist>): fails with ENOENT, nothing changes."""

    names = {"__x64_sys_pivot_root"}
    CODE = ("import ctypes, os; print('{0}', os.getpid(), flush=True); "
            "assert ctypes.CDLL(None, use_errno=True).syscall(155, b'/nonexistent-{0}-new', b'/nonexistent-{0}-old') == -1")

    def matches(self, b: dict, marker: str) -> bool:
        return b["args"] == [{"string_arg": f"/nonexistent-{marker}-new"}, {"string_arg": f"/nonexistent-{marker}-old"}]


class KillSyscalls(Trigger):
    """Every syscall (a generated_syscalls list) of /usr/bin/kill: `kill -0` of the test's own pid. Its kill(2)
    is picked out (it makes dozens of syscalls); another binary's kill(2) is silent."""

    names = {"__x64_sys_kill"}

    def fire(self):
        p = subprocess.Popen(["/usr/bin/kill", "-0", str(os.getpid())])
        assert p.wait(timeout=60) == 0
        return lambda b: b["process"]["pid"] == p.pid and b["function_name"] == "__x64_sys_kill"

    def negative(self):
        r = _py(f"import os; os.kill({os.getpid()}, 0); print(os.getpid())")
        pid = int(r.stdout)
        return lambda b: b["process"]["pid"] == pid


class KillKsys(Trigger):
    """The ksys_* functions (a generated_ftrace list, pattern ^ksys_*) of /usr/bin/kill: `kill -0` reads its
    libraries' headers with read(2), which is ksys_read."""

    names = {"ksys_read"}

    def fire(self):
        p = subprocess.Popen(["/usr/bin/kill", "-0", str(os.getpid())])
        assert p.wait(timeout=60) == 0
        return lambda b: b["process"]["pid"] == p.pid and b["function_name"] == "ksys_read"


class InteractiveBash:
    """/bin/bash -i on a pty: bash calls readline() for every line it reads."""

    PROMPT = b"lanner-prompt> "

    def __init__(self) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(["/bin/bash", "--norc", "--noprofile", "-i"], stdin=slave, stdout=slave,
                                     stderr=slave, start_new_session=True,
                                     env={"PS1": self.PROMPT.decode(), "TERM": "dumb", "PATH": "/usr/bin:/bin"})
        os.close(slave)
        self.buf = b""
        try:
            self.wait_prompt(1)
        except BaseException:
            self.close()
            raise

    def wait_prompt(self, n: int) -> None:
        deadline = time.monotonic() + 20
        while self.buf.count(self.PROMPT) < n:
            assert time.monotonic() < deadline, f"bash prompt not seen: {self.buf!r}"
            r, _, _ = select.select([self.master], [], [], 0.5)
            if r:
                self.buf += os.read(self.master, 4096)

    def command(self, line: bytes) -> None:
        """Send a line and wait for the next prompt (bash has called readline again)."""
        n = self.buf.count(self.PROMPT)
        os.write(self.master, line + b"\n")
        self.wait_prompt(n + 1)

    def close(self) -> None:
        try:
            os.write(self.master, b"exit\n")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self.master)


class Uprobe(Trigger):
    kind = "process_uprobe"
    names = {"main", "readline"}

    def fire(self):
        sh = InteractiveBash()  # main, then readline for the first line
        try:
            sh.command(b"true")
        finally:
            sh.close()
        pid = sh.proc.pid
        return lambda b: b["process"]["pid"] == pid and b["path"] == "/bin/bash"


class UprobePid(Trigger):
    """matchPIDs In <pid> followForks: the corpus hard-codes 61697; it becomes the test's own bash."""

    kind = "process_uprobe"
    names = {"readline"}

    def setup(self):
        self.sh = InteractiveBash()
        self.other = InteractiveBash()

    def patch(self, text):
        assert "- 61697" in text
        return text.replace("- 61697", f"- {self.sh.proc.pid}")

    def fire(self):
        self.sh.command(b"true")  # readline is entered again after the command: with the policy loaded
        pid = self.sh.proc.pid
        return lambda b: b["process"]["pid"] == pid and b["symbol"] == "readline"

    def negative(self):
        self.other.command(b"true")  # another bash, not that pid nor its child: no event
        pid = self.other.proc.pid
        return lambda b: b["process"]["pid"] == pid

    def cleanup(self):
        for sh in (getattr(self, "sh", None), getattr(self, "other", None)):
            if sh is not None:
                sh.close()


TRIGGERS: dict[str, type[Trigger]] = {
    "hardlink-observe.yaml": HardlinkObserve,
    "list-syscalls.yaml": ListSyscalls,
    "openat_write.yaml": OpenatWrite,
    "process-credentials/process.credentials.changes.at.syscalls.yaml": CredentialsAtSyscalls,
    "raw_syscalls.yaml": RawSyscalls,
    "rawtp.yaml": RawTp,
    "symlink-observe.yaml": SymlinkObserve,
    "sys_mount.yaml": SysMount,
    "sys_ptrace.yaml": SysPtrace,
    "sys_setuid.yaml": SysSetuid,
    "uprobe-pid.yaml": UprobePid,
    "uprobe.yaml": Uprobe,
    "write.yaml": Write,
    "list-syscalls-generated.yaml": KillSyscalls,
    "sys_clock_settime.yaml": ClockSettime,
    "sys_pivot_root.yaml": PivotRoot,
}


# ------------------------------------------------- triggers on kernels with kprobes and the BPF LSM
class FdInstallHost(Trigger):
    """fd_install(int fd, struct file *) for processes of the host pid namespace: every open."""

    names = {"fd_install"}
    attempts = 3

    def fire(self):
        f = self.tmp / "fd-host"
        f.write_text("x")
        fd = os.open(f, os.O_RDONLY)
        os.close(fd)
        return lambda b: b["process"]["pid"] == os.getpid() and b["args"] == [
            {"int_arg": fd}, {"file_arg": {"path": str(f), "permission": "-rw-r--r--"}}]


class FilenameMonitoringFiltered(Trigger):
    """file/path args with Equal on the path (the corpus's /etc/passwd becomes a tmp file), int Equal
    (MAY_WRITE) and Mask, return values."""

    names = {"security_file_permission", "security_path_truncate"}

    def setup(self):
        self.target = self.tmp / "passwd"
        self.target.write_text("root:x:0:0::/root:/bin/sh\n")

    def patch(self, text):
        assert text.count('"/etc/passwd"') == 3
        return text.replace('"/etc/passwd"', f'"{self.target}"')

    def fire(self):
        os.truncate(self.target, 1)  # truncate(2) by path: security_path_truncate
        fd = os.open(self.target, os.O_WRONLY)
        os.write(fd, b"x")  # rw_verify_area: security_file_permission(file, MAY_WRITE)
        os.close(fd)
        exp = {"path": str(self.target), "permission": "-rw-r--r--"}
        return lambda b: b["process"]["pid"] == os.getpid() and b["return"] == {"int_arg": 0} and (
            b["args"] == [{"file_arg": exp}, {"int_arg": 2}] or b["args"] == [{"path_arg": exp}])

    def negative(self):
        with open(self.target, "rb") as fh:  # MAY_READ: not Equal 2
            fh.read()
        t = str(self.target)
        return lambda b: b["args"][0].get("file_arg", {}).get("path") == t and b["args"][1:] == [{"int_arg": 4}]


class CommitCreds(Trigger):
    names = {"commit_creds"}
    attempts = 3

    def fire(self):
        r = _py("import os; os.setuid(65534); print(os.getpid())")
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        return lambda b: b["process"]["pid"] == pid and b["args"][0]["process_credentials_arg"]["uid"] == 65534 \
            and b["args"][0]["process_credentials_arg"]["euid"] == 65534


class TcpConnectWithSelectors(Trigger):
    """sock args with DAddr 127.0.0.1/8: connect, send and close to a listener of the test's."""

    names = {"tcp_connect", "tcp_sendmsg", "tcp_close"}

    def fire(self):
        import socket

        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        try:
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"lanner")
            c.close()
        finally:
            srv.close()

        def mine(b):
            s = b["args"][0]["sock_arg"]
            return b["process"]["pid"] == os.getpid() and s["daddr"] == "127.0.0.1" and s["dport"] == port \
                and s["family"] == "AF_INET" and s["protocol"] == "IPPROTO_TCP"
        return mine


class LsmFileOpen(Trigger):
    kind = "process_lsm"
    names = {"file_open"}

    def _cat(self, path: str) -> int:
        p = subprocess.Popen(["/usr/bin/cat", path], stdout=subprocess.DEVNULL)
        assert p.wait(timeout=60) == 0
        return p.pid

    def fire(self):
        pid = self._cat("/etc/passwd")
        return lambda b: b["process"]["pid"] == pid and b["args"] == [
            {"file_arg": {"path": "/etc/passwd", "permission": "-rw-r--r--"}}]

    def negative(self):
        pid = self._cat("/etc/hostname")
        return lambda b: b["process"]["pid"] == pid


class OverrideSecurity(Trigger):
    """Override (fmod_ret) on security_inode_mkdir. The corpus's second selector overrides every mkdir
    of every process; it is scoped here to a copy of mkdir in tmp_path."""

    names = {"security_inode_mkdir"}
    action = "KPROBE_ACTION_OVERRIDE"

    def setup(self):
        self.mkdir = self.tmp / "lanner-mkdir"
        shutil.copy("/bin/mkdir", self.mkdir)

    def patch(self, text):
        old = "    - matchActions:\n      - action: Override\n"
        assert text.count(old) == 1
        return text.replace(old, f'    - matchBinaries:\n      - operator: "In"\n        values:\n        - '
                                 f'"{self.mkdir}"\n      matchActions:\n      - action: Override\n')

    def fire(self):
        p = subprocess.run([str(self.mkdir), str(self.tmp / "denied")], capture_output=True, timeout=60)
        assert p.returncode != 0 and b"Operation not permitted" in p.stderr, p
        assert not (self.tmp / "denied").exists()
        return lambda b: b["process"].get("binary") == str(self.mkdir)

    def negative(self):
        p = subprocess.Popen(["/bin/mkdir", str(self.tmp / "allowed")])
        assert p.wait(timeout=60) == 0 and (self.tmp / "allowed").is_dir()
        return lambda b: b["process"]["pid"] == p.pid


class KillUnprivilegedUserns(Trigger):
    """Sigkill on create_user_ns without CAP_SYS_ADMIN, scoped to a copy of unshare the test runs as
    nobody (the corpus policy would kill any unprivileged process creating a user namespace)."""

    names = {"create_user_ns"}
    action = "KPROBE_ACTION_SIGKILL"
    signals = True

    def setup(self):
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="lanner-userns-"))  # nobody must reach the binary
        os.chmod(self.dir, 0o755)
        self.exe = self.dir / "lanner-unshare"
        shutil.copy("/usr/bin/unshare", self.exe)
        os.chmod(self.exe, 0o755)

    def patch(self, text):
        old = "      - matchCapabilities:\n"
        assert text.count(old) == 1
        return text.replace(old, f'      - matchBinaries:\n          - operator: In\n            values: ["{self.exe}"]\n'
                                 "        matchCapabilities:\n")

    @staticmethod
    def _nobody():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    def fire(self):
        p = subprocess.Popen([str(self.exe), "-U", "true"], preexec_fn=self._nobody)
        assert p.wait(timeout=60) == -9
        return lambda b: b["process"]["pid"] == p.pid

    def negative(self):
        p = subprocess.Popen([str(self.exe), "-U", "true"])  # root: has CAP_SYS_ADMIN
        assert p.wait(timeout=60) == 0
        return lambda b: b["process"]["pid"] == p.pid

    def cleanup(self):
        shutil.rmtree(getattr(self, "dir", "/nonexistent-lanner"), ignore_errors=True)


class FdInstallUserns(Trigger):
    """fd_install by a process outside the host user namespace (isNamespaceCapability): a copy of
    unshare run as nobody creates a user namespace mapped to root (`unshare -r cat F`), which gives it
    every capability there, then writes its uid/gid maps (fd_install) and execs cat. matchCapabilities:
    it has CAP_CHOWN / CAP_NET_RAW in its namespace; matchCapabilityChanges: its effective
    CAP_SYS_ADMIN / CAP_NET_RAW differ from those at its exec (none, as nobody)."""

    names = {"fd_install"}

    def setup(self):
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="lanner-fdns-"))  # nobody must reach the binary and file
        os.chmod(self.dir, 0o755)
        self.exe = self.dir / "lanner-unshare"
        shutil.copy("/usr/bin/unshare", self.exe)
        os.chmod(self.exe, 0o755)
        self.file = self.dir / "f"
        self.file.write_text("x")
        os.chmod(self.file, 0o644)

    def fire(self):
        p = subprocess.Popen([str(self.exe), "-r", "/bin/cat", str(self.file)], stdout=subprocess.DEVNULL,
                             preexec_fn=KillUnprivilegedUserns._nobody)
        assert p.wait(timeout=60) == 0
        return lambda b: b["process"]["pid"] == p.pid

    def negative(self):
        p = subprocess.Popen(["/bin/cat", str(self.file)], stdout=subprocess.DEVNULL)  # root, host user ns
        assert p.wait(timeout=60) == 0
        return lambda b: b["process"]["pid"] == p.pid

    def cleanup(self):
        shutil.rmtree(getattr(self, "dir", "/nonexistent-lanner"), ignore_errors=True)


class SecurityBprmCheck(Trigger):
    names = {"security_bprm_check"}

    def setup(self):
        self.exe = self.tmp / "sample-exec"
        shutil.copy("/bin/true", self.exe)

    def patch(self, text):
        assert '"/usr/bin/sample-exec"' in text
        return text.replace('"/usr/bin/sample-exec"', f'"{self.exe}"')

    def fire(self):
        subprocess.run([str(self.exe)], check=True, timeout=60)
        e = str(self.exe)
        return lambda b: b["args"] == [{"linux_binprm_arg": {"path": e, "permission": "-rwxr-xr-x"}}]

    def negative(self):
        subprocess.run(["/bin/true"], check=True, timeout=60)
        return lambda b: b["args"][0]["linux_binprm_arg"]["path"] != str(self.exe)


# ------------------------------------- the corpus's unfiltered or narrowly filtered kernel-function policies
def _bash_copy(tmp: Path) -> Path:
    """A copy of bash in tmp_path: the binary an enforcing policy is scoped to (its /dev/tcp and /dev/udp
    redirections connect and send, as the corpus's curl would)."""
    exe = tmp / "lanner-bash"
    shutil.copy("/usr/bin/bash", exe)
    return exe


def _in_new_pid_ns(code: str) -> tuple[subprocess.CompletedProcess, int]:
    """Run python code as pid 1 of a new pid namespace; returns the result and the host pid (the code's
    first output line is os.readlink('/proc/self'): /proc is the host's)."""
    r = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c",
                        "import os; print(os.readlink('/proc/self'), flush=True)\n" + code],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r
    return r, int(r.stdout.split()[0])


class XzSsh(Trigger):
    """security_mmap_file by /usr/sbin/sshd of a liblzma.so.5.6.[01]: the binary becomes a copy of true in
    tmp_path named sshd, the library a copy of a shared library named liblzma.so.5.6.1 that the dynamic
    loader maps (LD_PRELOAD)."""

    names = {"security_mmap_file"}

    def setup(self):
        self.exe = self.tmp / "sshd"
        shutil.copy("/bin/true", self.exe)
        src = next(p for p in ("/usr/lib/x86_64-linux-gnu/liblzma.so.5", "/lib/x86_64-linux-gnu/liblzma.so.5",
                               "/usr/lib/x86_64-linux-gnu/libz.so.1") if os.path.exists(p))
        self.lib = self.tmp / "liblzma.so.5.6.1"
        shutil.copy(src, self.lib)
        self.other = self.tmp / "liblzma.so.5.4.1"
        shutil.copy(src, self.other)

    def patch(self, text):
        assert text.count('"/usr/sbin/sshd"') == 1
        return text.replace('"/usr/sbin/sshd"', f'"{self.exe}"')

    def _run(self, lib: Path) -> int:
        p = subprocess.Popen([str(self.exe)], env={"LD_PRELOAD": str(lib)})
        assert p.wait(timeout=60) == 0
        return p.pid

    def fire(self):
        pid, lib = self._run(self.lib), str(self.lib)
        # PROT_READ (the first map of the library), then PROT_READ|PROT_EXEC (its text), ...
        return lambda b: b["process"]["pid"] == pid and b["args"][0] == {
            "file_arg": {"path": lib, "permission": "-rw-r--r--"}} and b["args"][1]["uint_arg"] in (1, 3, 5) \
            and b["return"] == {"int_arg": 0}

    def negative(self):
        pid = self._run(self.other)  # another version: not a Postfix match
        return lambda b: b["process"]["pid"] == pid


CG_PROG = "lanner-corpus-skb"


def _cgroup2_root() -> Path:
    if os.path.ismount("/sys/fs/cgroup/unified"):
        return Path("/sys/fs/cgroup/unified")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        f = line.split()
        if f[2] == "cgroup2":
            return Path(f[1])
    raise AssertionError("no cgroup2 mount")


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(321, cmd, buf, 128)  # __NR_bpf (x86-64)
    assert r >= 0, f"bpf({cmd}): {os.strerror(ctypes.get_errno())}"
    return r


class CgroupSkb(Trigger):
    """__cgroup_bpf_run_filter_skb runs only for a socket whose cgroup has a cgroup skb program: the test
    creates a cgroup (never the root one) under the cgroup2 mount, attaches a two-instruction
    BPF_PROG_TYPE_CGROUP_SKB program (return 1: pass) on its egress, and a child joins it and sends a UDP
    datagram to a receiver of the test's on 127.0.0.1."""

    names = {"__cgroup_bpf_run_filter_skb"}
    CODE = ("import os, socket, sys; open(sys.argv[1] + '/cgroup.procs', 'w').write('0'); print(os.getpid(), "
            "flush=True); s = socket.socket(socket.AF_INET, socket.SOCK_{kind}); s.{call}(('127.0.0.1', "
            "int(sys.argv[2]))) {send}")

    def setup(self):
        import socket

        self.cg = _cgroup2_root() / f"{CG_PROG}-{os.getpid()}"
        self.cg.mkdir()
        insns = bytes.fromhex("b700000001000000") + bytes.fromhex("9500000000000000")  # r0 = 1; exit
        ibuf, lic = ctypes.create_string_buffer(insns, len(insns)), ctypes.create_string_buffer(b"GPL")
        attr = ((8).to_bytes(4, "little") + (2).to_bytes(4, "little")  # CGROUP_SKB, 2 insns
                + ctypes.addressof(ibuf).to_bytes(8, "little") + ctypes.addressof(lic).to_bytes(8, "little")
                + bytes(24) + b"lanner_corpus\0\0\0" + bytes(4) + (1).to_bytes(4, "little"))  # EGRESS
        self.prog = _bpf(5, attr)  # BPF_PROG_LOAD
        self.cgfd = os.open(self.cg, os.O_RDONLY | os.O_DIRECTORY)
        _bpf(8, self.cgfd.to_bytes(4, "little") + self.prog.to_bytes(4, "little") + (1).to_bytes(4, "little"))
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("127.0.0.1", 0))

    def _child(self, kind: str, call: str, send: str, port: int) -> int:
        r = subprocess.run([sys.executable, "-c", self.CODE.format(kind=kind, call=call, send=send), str(self.cg),
                            str(port)], capture_output=True, timeout=60)
        assert r.returncode == 0, r
        return int(r.stdout)

    def fire(self):
        port = self.rx.getsockname()[1]
        pid = self._child("DGRAM", "connect", "; s.send(b'lanner-dgram')", port)
        assert self.rx.recv(64) == b"lanner-dgram"

        def mine(b):
            skb = b["args"][1]["skb_arg"]
            return b["process"]["pid"] == pid and skb["daddr"] == "127.0.0.1" and skb["dport"] == port \
                and skb["protocol"] == "IPPROTO_UDP" and b["args"][0]["sock_arg"]["protocol"] == "IPPROTO_UDP" \
                and b["args"][2] == {"int_arg": 1}  # CGROUP_INET_EGRESS
        return mine

    def cleanup(self):
        if hasattr(self, "rx"):
            self.rx.close()
        if hasattr(self, "cgfd"):
            try:
                _bpf(9, self.cgfd.to_bytes(4, "little") + self.prog.to_bytes(4, "little")
                     + (1).to_bytes(4, "little"))  # BPF_PROG_DETACH
            finally:
                os.close(self.cgfd)
        if hasattr(self, "prog"):
            os.close(self.prog)
        for _ in range(50 if hasattr(self, "cg") else 0):  # a child's exit can keep it populated a moment
            try:
                self.cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


class CgroupSkbSelectors(CgroupSkb):
    """datagram.yaml's trigger against DAddr 127.0.0.1/8 + Protocol IPPROTO_UDP on the skb (arg 1, after
    the sock): the child's datagram to 127.0.0.1 matches; a datagram from a child in the same cgroup, in a
    network namespace of its own with 198.51.100.1 (TEST-NET-2, outside 127.0.0.0/8) on lo, to a receiver
    of its own there, passes the same egress hook and must be silent. Only the events of ``names`` (the
    skb hooks) are checked: the tracking policies also report the children's sk_alloc/__sk_free."""

    ADDR = "198.51.100.1"
    NEG = ("import os, socket, sys; open(sys.argv[1] + '/cgroup.procs', 'w').write('0'); "
           "rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind((sys.argv[2], 0)); "
           "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'lanner-dgram', rx.getsockname()); "
           "assert rx.recv(64) == b'lanner-dgram'; print(os.getpid(), flush=True)")
    silent = {"__cgroup_bpf_run_filter_skb"}  # the hooks that filter DAddr: none may report the negative

    def fire(self):
        port = self.rx.getsockname()[1]
        pid = self._child("DGRAM", "connect", "; s.send(b'lanner-dgram')", port)
        assert self.rx.recv(64) == b"lanner-dgram"

        def mine(b):
            if _name(b) not in self.names or b["process"]["pid"] != pid:
                return False
            skb = [a["skb_arg"] for a in b["args"] if "skb_arg" in a]
            return len(skb) == 1 and skb[0]["daddr"] == "127.0.0.1" and skb[0]["dport"] == port \
                and skb[0]["protocol"] == "IPPROTO_UDP"
        return mine

    def negative(self):
        r = subprocess.run(["unshare", "--net", "sh", "-c", f'{IP} link set lo up && {IP} addr add {self.ADDR}/32 '
                            f'dev lo && exec "$0" -c "$1" "$2" "$3"', sys.executable, self.NEG, str(self.cg),
                            self.ADDR], capture_output=True, timeout=60)
        assert r.returncode == 0, r
        pid = int(r.stdout)  # sh exec'd python: the pid that sent the datagram
        return lambda b: b["process"]["pid"] == pid and _name(b) in self.silent


class Datagram518(CgroupSkbSelectors):
    """datagram_518.yaml (sk_alloc TrackSock, __sk_free UntrackSock, DAddr 127.0.0.1/32 or ::1/128 + UDP on
    the skb of sk_filter_trim_cap, ip_output, ip_mc_output, ip6_output): the same two datagrams; the first
    is seen on ip_output (skb at arg 1, after the sock), the second on none of the skb hooks."""

    names = {"ip_output"}
    silent = {"sk_filter_trim_cap", "ip_output", "ip_mc_output", "ip6_output"}


class DevHardStartXmit(Trigger):
    """net_device Equal "lo": a UDP datagram of the test's to 127.0.0.1."""

    names = {"dev_hard_start_xmit"}
    attempts = 3

    def fire(self):
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            rx.bind(("127.0.0.1", 0))
            tx.sendto(b"lanner-xmit", rx.getsockname())
            assert rx.recv(64) == b"lanner-xmit"
        me = os.getpid()
        return lambda b: b["process"]["pid"] == me and b["args"] == [{"net_dev_arg": {"name": "lo"}}]


class StackTraces(Trigger):
    """kfree_skb_reason (every dropped skb: no filter) with kernelStackTrace and userStackTrace: a UDP datagram of
    the test's to a closed port of 127.0.0.1 is dropped by the UDP receive path (no socket); the event's skb is
    that datagram and its kernel stack names the function that dropped it."""

    names = {"kfree_skb_reason"}
    attempts = 3

    def fire(self):
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again below: nothing listens there
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"lanner-drop", ("127.0.0.1", port))

        def mine(b):
            skb = b["args"][0].get("skb_arg", {})
            trace = b.get("kernel_stack_trace", [])
            syms = [f.get("symbol", "") for f in trace]
            # the kprobe's own function first, then its callers
            return skb.get("daddr") == "127.0.0.1" and skb.get("dport") == port \
                and syms[:1] == ["kfree_skb_reason"] and bool({"__udp4_lib_rcv", "udp_rcv"} & set(syms)) \
                and all(int(f["address"]) for f in trace)

        return mine


class DnsOnlySpecifiedServers(Trigger):
    """Sigkill on ip_output of a UDP/TCP packet to port 53 of any server but 127.0.0.53, scoped to a copy
    of bash in tmp_path: its datagram to 127.0.0.1:53 kills it, one to 127.0.0.53:53 does not."""

    names = {"ip_output"}
    action = "KPROBE_ACTION_SIGKILL"
    signals = True

    def setup(self):
        self.exe = _bash_copy(self.tmp)

    def patch(self, text):
        old = '      matchActions:\n      - action: "Sigkill"\n'
        assert text.count(old) == 1
        return text.replace(old, f'      matchBinaries:\n      - operator: "In"\n        values:\n        - '
                                 f'"{self.exe}"\n' + old)

    def _send(self, addr: str) -> subprocess.Popen:
        p = subprocess.Popen([str(self.exe), "-c", f"exec 3<>/dev/udp/{addr}/53; echo lanner-dns >&3"])
        p.wait(timeout=60)
        return p

    def fire(self):
        p = self._send("127.0.0.1")
        assert p.returncode == -9, p.returncode

        def mine(b):
            skb = b["args"][0]["skb_arg"]
            return b["process"]["pid"] == p.pid and skb["daddr"] == "127.0.0.1" and skb["dport"] == 53 \
                and skb["protocol"] == "IPPROTO_UDP"
        return mine

    def negative(self):
        p = self._send("127.0.0.53")
        assert p.returncode == 0, p.returncode
        return lambda b: b["process"]["pid"] == p.pid


class FilenameMonitoring(Trigger):
    """Prefix /etc/ on security_file_permission and security_mmap_file: a child reads and maps
    /etc/passwd (security_path_truncate is triggered by filename_monitoring_filtered)."""

    names = {"security_file_permission", "security_mmap_file"}
    attempts = 3
    CODE = ("import mmap, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.read(fd, 16); "
            "mmap.mmap(fd, 0, prot=mmap.PROT_READ).close(); print(os.getpid())")

    def _child(self, path: str) -> int:
        r = subprocess.run([sys.executable, "-c", self.CODE, path], capture_output=True, timeout=60)
        assert r.returncode == 0, r
        return int(r.stdout)

    def fire(self):
        pid = self._child("/etc/passwd")
        f = {"file_arg": {"path": "/etc/passwd", "permission": "-rw-r--r--"}}
        return lambda b: b["process"]["pid"] == pid and b["return"] == {"int_arg": 0} and (
            b["args"] == [f, {"int_arg": 4}] or b["args"] == [f, {"uint_arg": 1}])  # MAY_READ; PROT_READ

    def negative(self):
        other = self.tmp / "not-etc"
        other.write_text("x")
        pid, o = self._child(str(other)), str(other)  # (its loader maps /etc/ld.so.cache: reported, not ours)
        return lambda b: b["process"]["pid"] == pid and b["args"][0]["file_arg"]["path"] == o


class CapabilityUsage(Trigger):
    """cap_capable in a pid namespace other than the host's: nice(-1) (CAP_SYS_NICE) by pid 1 of a new
    one; the same call in the host pid namespace is silent."""

    names = {"cap_capable"}
    CODE = "os.nice(-1)"

    def fire(self):
        _, pid = _in_new_pid_ns(self.CODE)
        ns = os.stat("/proc/self/ns/user").st_ino
        return lambda b: b["process"]["pid"] == pid and b["args"][1] == {
            "capability_arg": {"value": 23, "name": "CAP_SYS_NICE"}} and b["args"][0]["user_ns_arg"]["ns"] == {
            "inum": ns} and b["return"] == {"int_arg": 0}

    def negative(self):
        r = _py("import os; os.nice(-1); print(os.getpid())")
        assert r.returncode == 0, r
        pid = int(r.stdout)
        return lambda b: b["process"]["pid"] == pid


class CredsInstalled(Trigger):
    """commit_creds in a pid namespace other than the host's: setresuid(0, 65534, 0) by pid 1 of a new one
    (then access(2), which runs override_creds/revert_creds since fsuid != uid); a setuid in the host pid
    namespace does not report commit_creds."""

    names = {"commit_creds"}
    CODE = "os.setresuid(0, 65534, 0); os.access('/', os.R_OK)"

    def fire(self):
        _, pid = _in_new_pid_ns(self.CODE)

        def mine(b):
            c = b["args"][0]["process_credentials_arg"]
            if b["process"]["pid"] != pid:
                return False
            if b["function_name"] == "override_creds":  # access(2)'s creds: fsuid is the real uid
                return c["uid"] == 0 and c["euid"] == 65534 and c["fsuid"] == 0
            return c["uid"] == 0 and c["euid"] == 65534 and c["fsuid"] == 65534  # commit; revert: the old creds
        return mine

    def negative(self):
        r = _py("import os; os.setresuid(0, 65534, 0); print(os.getpid())")
        assert r.returncode == 0, r
        pid = int(r.stdout)
        return lambda b: b["process"]["pid"] == pid and b["function_name"] == "commit_creds"


class CredsChanged(CredsInstalled):
    names = {"commit_creds", "override_creds", "revert_creds"}


class ExecElfBegin(Trigger):
    """security_bprm_creds_from_file(bprm, file): an exec of a copy of true in tmp_path."""

    names = {"security_bprm_creds_from_file"}
    attempts = 3

    def fire(self):
        exe = self.tmp / "lanner-elf"
        shutil.copy("/bin/true", exe)
        p = subprocess.Popen([str(exe)])
        assert p.wait(timeout=60) == 0
        return lambda b: b["process"]["pid"] == p.pid and b["args"] == [
            {"file_arg": {"path": str(exe), "permission": "-rwxr-xr-x"}}]


class KillUsernsInPidns(KillUnprivilegedUserns):
    """Sigkill on create_user_ns without CAP_SYS_ADMIN in a pid namespace other than the host's, scoped to
    a copy of unshare: run as nobody in a new pid namespace it is killed; the same copy as nobody in the
    host pid namespace lives."""

    def patch(self, text):
        old = "      - matchNamespaces:\n"
        assert text.count(old) == 1
        return text.replace(old, f'      - matchBinaries:\n          - operator: In\n            values: ["{self.exe}"]\n'
                                 "        matchNamespaces:\n")

    CODE = ("import os, subprocess, sys\n"
            "def drop(): os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "print(subprocess.Popen([sys.argv[1], '-U', 'true'], preexec_fn=drop).wait())")

    def fire(self):
        # the nobody child of pid 1 of a new pid namespace (pid 1 reports how it ended: unshare --fork cannot
        # pass a SIGKILL on, it fails re-raising it)
        r = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", self.CODE, str(self.exe)],
                           capture_output=True, timeout=60)
        assert r.returncode == 0 and r.stdout.split() == [b"-9"], r
        e = str(self.exe)
        return lambda b: b["process"].get("binary") == e

    def negative(self):
        p = subprocess.Popen([str(self.exe), "-U", "true"], preexec_fn=self._nobody)
        assert p.wait(timeout=60) == 0
        return lambda b: b["process"]["pid"] == p.pid


class SocketConnectBlockOthers(Trigger):
    """Override (fmod_ret, argError 1) on security_socket_connect of TCP by /usr/bin/curl: the binary
    becomes a copy of bash in tmp_path, whose /dev/tcp connect to a listener of the test's is refused
    before it is made; /usr/bin/bash's connect gets through."""

    names = {"security_socket_connect"}
    action = "KPROBE_ACTION_OVERRIDE"

    def setup(self):
        import socket

        self.exe = _bash_copy(self.tmp)
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.srv.settimeout(1)

    def patch(self, text):
        assert text.count('"/usr/bin/curl"') == 2
        return text.replace('"/usr/bin/curl"', f'"{self.exe}"')

    def _connect(self, exe: str) -> int:
        port = self.srv.getsockname()[1]
        p = subprocess.Popen([exe, "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"])
        p.wait(timeout=60)
        return p.pid

    def fire(self):
        import socket

        pid, port = self._connect(str(self.exe)), self.srv.getsockname()[1]
        with pytest.raises(socket.timeout):
            self.srv.accept()[0].close()  # the connect never happened
        return lambda b: b["process"]["pid"] == pid and b["args"][0]["sock_arg"]["protocol"] == "IPPROTO_TCP" \
            and b["args"][1] == {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": port}} \
            and b["args"][2] == {"int_arg": 16}

    def negative(self):
        pid = self._connect("/usr/bin/bash")
        self.srv.accept()[0].close()
        return lambda b: b["process"]["pid"] == pid

    def cleanup(self):
        if hasattr(self, "srv"):
            self.srv.close()


class SocketConnect(Trigger):
    """Family AF_INET/AF_INET6 on the sockaddr: a TCP connect of the test's to its listener; an AF_UNIX
    connect is silent."""

    names = {"security_socket_connect"}
    attempts = 3

    def fire(self):
        import socket

        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            port = srv.getsockname()[1]
            socket.create_connection(("127.0.0.1", port)).close()
        me = os.getpid()
        return lambda b: b["process"]["pid"] == me and b["args"] == [
            {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": port}}, {"int_arg": 16}]

    def negative(self):
        import socket

        path = str(self.tmp / "unix.sock")
        with socket.socket(socket.AF_UNIX) as srv, socket.socket(socket.AF_UNIX) as c:
            srv.bind(path)
            srv.listen(1)
            c.connect(path)
        me = os.getpid()
        return lambda b: b["process"]["pid"] == me and b["args"][0]["sockaddr_arg"]["family"] == "AF_UNIX"


class FollowLink(Trigger):
    """security_inode_follow_link(dentry): cat through a symlink in tmp_path (the dentry's path is inside
    its filesystem)."""

    names = {"security_inode_follow_link"}
    attempts = 3

    def fire(self):
        (self.tmp / "target").write_text("x")
        link = self.tmp / "lanner-follow-link"
        link.symlink_to(self.tmp / "target")
        p = subprocess.Popen(["/usr/bin/cat", str(link)], stdout=subprocess.DEVNULL)
        assert p.wait(timeout=60) == 0
        return lambda b: b["process"]["pid"] == p.pid and len(b["args"]) == 1 \
            and b["args"][0]["file_arg"]["path"].endswith("/lanner-follow-link")


IP = shutil.which("ip") or "/usr/sbin/ip"


class TcpConnectNonLocal(Trigger):
    """Sigkill on tcp_connect to a non-local (or public) address, scoped to a copy of bash in tmp_path
    (the corpus's /usr/bin/curl, or added): in a network namespace of its own, with the address on lo, a
    connect to 198.51.100.1 kills it; a connect to 127.0.0.1 does not."""

    names = {"tcp_connect"}
    action = "KPROBE_ACTION_SIGKILL"
    signals = True
    ADDR = "198.51.100.1"  # TEST-NET-2: neither loopback nor private

    def setup(self):
        self.exe = _bash_copy(self.tmp)

    def patch(self, text):
        if '"/usr/bin/curl"' in text:
            assert text.count('"/usr/bin/curl"') == 1
            return text.replace('"/usr/bin/curl"', f'"{self.exe}"')
        old = "      matchActions:\n      - action: Sigkill\n"
        assert text.count(old) == 1
        return text.replace(old, f'      matchBinaries:\n      - operator: "In"\n        values:\n        - '
                                 f'"{self.exe}"\n' + old)

    def _connect(self, addr: str) -> subprocess.Popen:
        p = subprocess.Popen(["unshare", "--net", "sh", "-c",
                              f"{IP} link set lo up && {IP} addr add {self.ADDR}/32 dev lo && "
                              f'exec {self.exe} -c "exec 3<>/dev/tcp/{addr}/9"'], stderr=subprocess.DEVNULL)
        p.wait(timeout=60)
        return p

    def fire(self):
        p = self._connect(self.ADDR)
        assert p.returncode == -9, p.returncode
        return lambda b: b["process"]["pid"] == p.pid and b["args"][0]["sock_arg"]["daddr"] == self.ADDR \
            and b["args"][0]["sock_arg"]["dport"] == 9

    def negative(self):
        p = self._connect("127.0.0.1")
        assert p.returncode not in (0, -9), p.returncode  # refused: nothing listens on port 9 there
        return lambda b: b["process"]["pid"] == p.pid


class TcpConnect(TcpConnectWithSelectors):
    """Unfiltered tcp_connect/tcp_sendmsg/tcp_close: the test's own connect, send and close."""

    attempts = 3


BPF_OBJECTS = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    fd = libc.syscall(nr, *args)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    os.close(fd)
def bpf(cmd, attr):
    call(321, cmd, ctypes.create_string_buffer(attr, 128), 128)
insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"), 16)  # r0 = 0; exit
lic = ctypes.create_string_buffer(b"GPL")
name = b"lanner_corpus".ljust(16, b"\0")
bpf(5, (1).to_bytes(4, "little") + (2).to_bytes(4, "little") + ctypes.addressof(insns).to_bytes(8, "little")
    + ctypes.addressof(lic).to_bytes(8, "little") + bytes(24) + name)  # BPF_PROG_LOAD: a socket filter
bpf(0, b"".join(v.to_bytes(4, "little") for v in (1, 4, 8, 16, 0, 0, 0)) + name)  # BPF_MAP_CREATE: a hash map
attr = bytearray(128)  # perf_event_attr: PERF_TYPE_SOFTWARE, size, PERF_COUNT_SW_DUMMY, disabled
attr[0:16] = (1).to_bytes(4, "little") + (128).to_bytes(4, "little") + (9).to_bytes(8, "little")
attr[40] = 1
call(298, ctypes.create_string_buffer(bytes(attr), 128), 0, -1, -1, 8)  # perf_event_open(this task, CLOEXEC)
print(os.getpid())
"""


class BpfObjects(Trigger):
    """bpf.yaml: a child loads a two-instruction socket filter (bpf_check: bpf_attr), creates a hash map
    (security_bpf_map_alloc before 6.9, security_bpf_map_create since: bpf_map; the policy's other map hook
    is not in the kernel and ignored, ignore.callNotFound) and opens a software perf counter
    (security_perf_event_alloc: perf_event)."""

    attempts = 3  # unfiltered hooks

    def setup(self):
        self.map_fn = "security_bpf_map_create" if _release() >= (6, 9) else "security_bpf_map_alloc"
        self.names = {"bpf_check", "security_perf_event_alloc", self.map_fn}

    def fire(self):
        r = _py(BPF_OBJECTS)
        assert r.returncode == 0, r
        pid = int(r.stdout)
        want = {
            "bpf_check": [{"bpf_attr_arg": {"ProgType": "BPF_PROG_TYPE_SOCKET_FILTER", "InsnCnt": 2,
                                            "ProgName": "lanner_corpus"}}],
            self.map_fn: [{"bpf_map_arg": {"MapType": "BPF_MAP_TYPE_HASH", "KeySize": 4, "ValueSize": 8,
                                           "MaxEntries": 16, "MapName": "lanner_corpus"}}],
            "security_perf_event_alloc": [{"perf_event_arg": {"Type": "PERF_TYPE_SOFTWARE", "Config": "9"}}],
        }
        return lambda b: b["process"]["pid"] == pid and want.get(b["function_name"]) == b["args"]


def _write_to_pty(data: bytes) -> tuple[int, str, int]:
    """A child writes ``data`` to the slave of a pty the test opened: (the child's pid, the slave's path and
    its st_mode while open)."""
    master, slave = pty.openpty()
    path = os.ttyname(slave)
    mode = os.stat(path).st_mode
    try:
        p = subprocess.Popen([sys.executable, "-c", f"import os; os.write(1, {data!r})"], stdout=slave)
        assert p.wait(timeout=60) == 0
        assert os.read(master, 64).endswith(data)
    finally:
        os.close(slave)
        os.close(master)
    return p.pid, path, mode


class TtyWrite(Trigger):
    """tty_write: a child writing to a pty slave."""

    names = {"tty_write"}
    attempts = 3

    def fire(self):
        pid, _path, _mode = _write_to_pty(b"lanner-tty")
        return lambda b: b["process"]["pid"] == pid


class TtyWriteArgs(TtyWrite):
    """tty.yaml: TtyWrite's child, and its args: the kiocb's file (the slave) and the iov_iter's bytes."""

    def fire(self):
        from lanner.exporter.tracing import permission

        pid, path, mode = _write_to_pty(b"lanner-tty")
        want = [{"file_arg": {"path": path, "permission": permission(mode)}},
                {"bytes_arg": base64.b64encode(b"lanner-tty").decode()}]
        return lambda b: b["process"]["pid"] == pid and b["args"] == want


class TcpListen(Trigger):
    """inet_csk_listen_start with SPort 1337/31337: a child listening on 127.0.0.1:31337 (the sk_alloc hook's
    returnArgAction TrackSock makes it the sock's owner; its events are NoPost)."""

    names = {"inet_csk_listen_start"}
    CODE = ("import os, socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            "s.bind(('127.0.0.1', 31337)); s.listen(); print(os.getpid(), flush=True)")

    def fire(self):
        r = _py(self.CODE)
        assert r.returncode == 0, r
        pid = int(r.stdout)
        return lambda b: b["process"]["pid"] == pid and b["args"][0]["sock_arg"].get("sport") == 31337

    def negative(self):
        r = _py(self.CODE.replace("31337", "0"))  # any other port
        assert r.returncode == 0, r
        pid = int(r.stdout)
        return lambda b: b["process"]["pid"] == pid


class TcpAccept(Trigger):
    """sk_alloc (returnArg sock, TrackSock) and tcp_close DAddr 127.0.0.1/32: a child connects to its own
    listener on 127.0.0.1, accepts and closes both ends. Its sk_alloc events carry the returned AF_INET
    sock; its tcp_close events name 127.0.0.1."""

    names = {"sk_alloc", "tcp_close"}
    attempts = 3  # sk_alloc posts every AF_INET socket of the machine
    CODE = ("import os, socket; l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(); "
            "c = socket.create_connection(l.getsockname()); a, _ = l.accept(); port = l.getsockname()[1]; "
            "c.close(); a.close(); l.close(); print(os.getpid(), port, flush=True)")

    def fire(self):
        r = _py(self.CODE)
        assert r.returncode == 0, r
        pid, port = map(int, r.stdout.split())

        def mine(b):
            if b["process"]["pid"] != pid:
                return False
            if b["function_name"] == "sk_alloc":
                return b["return"]["sock_arg"]["family"] == "AF_INET" and \
                    b.get("return_action") == "KPROBE_ACTION_TRACKSOCK"
            sk = b["args"][0]["sock_arg"]
            return b["function_name"] == "tcp_close" and sk["daddr"] == "127.0.0.1" and port in (sk.get("sport"),
                                                                                                   sk.get("dport"))
        return mine


class KernelModules(Trigger):
    """security_kernel_module_request: socket(AF_DECnet) by a child (no such family: the kernel asks
    modprobe for net-pf-12); security_kernel_read_file, do_init_module, free_module: modprobe loading and
    unloading the dummy network driver with no device, where this kernel has it."""

    names = {"security_kernel_module_request"}

    def setup(self):
        rel = os.uname().release
        ko = list(Path(f"/lib/modules/{rel}/kernel/drivers/net").glob("dummy.ko*"))
        self.dummy = bool(ko) and shutil.which("modprobe") is not None and not Path("/sys/module/dummy").exists()
        if self.dummy:
            self.names = {"security_kernel_module_request", "do_init_module", "free_module"}
            if ko[0].suffix == ".ko":  # finit_module(2) reads the file; a compressed module (6.12's dummy.ko.xz)
                self.names.add("security_kernel_read_file")  # is unpacked by kmod 30 and passed to init_module(2)

    def fire(self):
        r = _py("import os, socket\ntry: socket.socket(12, socket.SOCK_STREAM)\nexcept OSError: pass\n"
                "print(os.getpid())")
        assert r.returncode == 0, r
        pids = {int(r.stdout)}
        if self.dummy:
            for cmd in (["modprobe", "dummy", "numdummies=0"], ["modprobe", "-r", "dummy"]):
                p = subprocess.Popen(cmd)
                assert p.wait(timeout=120) == 0
                pids.add(p.pid)

        def mine(b):
            if b["process"]["pid"] not in pids:
                return False
            f, a = b["function_name"], b["args"]
            if f == "security_kernel_module_request":
                return a == [{"string_arg": "net-pf-12"}] and b["return"] == {"int_arg": 0}
            if f == "security_kernel_read_file":
                return "/dummy.ko" in a[0]["file_arg"]["path"] and a[1] == {"int_arg": 2}
            return a[0]["module_arg"]["name"] == "dummy"
        return mine


class ModulesNoHost(Trigger):
    """podSelector {} + Override/Sigkill outside the host pid namespace on security_kernel_module_request: a
    "pod" (a network namespace the test registers with the engine's workload scopes, as the agent does for
    its pods) whose process, in a new pid namespace, asks for net-pf-12 is killed before it prints; the same
    program in an unregistered netns (also a new pid namespace: the selector alone would match it) lives."""

    names = {"security_kernel_module_request"}
    action = "KPROBE_ACTION_OVERRIDE"
    signals = True
    CODE = "import socket\ntry: socket.socket(12, socket.SOCK_STREAM)\nexcept OSError: pass\nprint('reached-{}')"

    def _run(self, marker: str, register: bool) -> str:
        from lanner.policy.workloads import Workload

        # sh stays pid 1 of the new pid namespace (its init ignores a SIGKILL from inside); python is pid 2
        p = subprocess.Popen(["unshare", "--net", "--pid", "--fork", "sh", "-c",
                              f"read x; {sys.executable} -c \"{self.CODE.format(marker)}\"; echo rc=$?"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            own = os.stat("/proc/self/ns/net").st_ino
            deadline = time.monotonic() + 10
            while os.stat(f"/proc/{p.pid}/ns/net").st_ino == own:
                assert time.monotonic() < deadline and p.poll() is None, "unshare did not start"
                time.sleep(0.01)
            netns = os.stat(f"/proc/{p.pid}/ns/net").st_ino
            self.engine.workloads.sync([Workload("default", {}, netns)] if register else [])
            out, _ = p.communicate("go\n", timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            self.engine.workloads.sync([])
        return out

    def fire(self):
        m = uuid.uuid4().hex[:8]
        out = self._run(m, register=True)
        assert f"reached-{m}" not in out and f"rc={128 + 9}" in out, out  # killed in the syscall
        return lambda b: m in b["process"].get("arguments", "") and b["args"] == [{"string_arg": "net-pf-12"}] \
            and b["return"] == {"int_arg": -1}

    def negative(self):
        m = uuid.uuid4().hex[:8]
        out = self._run(m, register=False)
        assert f"reached-{m}" in out and "rc=0" in out, out
        return lambda b: m in b["process"].get("arguments", "")


class OverlayCopyUp(Trigger):
    """Override (argError 1: the xattr is not copied) on security_inode_copy_up_xattr("security.capability")
    outside the host user namespace, scoped to a copy of touch in tmp_path: in `unshare -Urm` it mounts an
    overlay (lower: a file with file capabilities, set by the test) and touches the file, which is copied up
    (the event: string arg, action Override); the same copy-up in the host user namespace is silent."""

    names = {"security_inode_copy_up_xattr"}
    action = "KPROBE_ACTION_OVERRIDE"
    CAP = (0x02000000).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)  # v2: CAP_NET_RAW

    def setup(self):
        self.exe = self.tmp / "lanner-touch"
        shutil.copy("/usr/bin/touch", self.exe)

    def patch(self, text):
        old = "      matchArgs:\n"
        assert text.count(old) == 1
        return text.replace(old, f'      matchBinaries:\n      - operator: "In"\n        values:\n        - '
                                 f'"{self.exe}"\n' + old)

    def _copy_up(self, name: str, userns: bool) -> tuple[subprocess.Popen, Path]:
        d = self.tmp / name
        for sub in ("lower", "upper", "work", "merged"):
            (d / sub).mkdir(parents=True)
        (d / "lower" / "f").write_text("x")
        os.setxattr(d / "lower" / "f", "security.capability", self.CAP)
        ns = ["unshare", "--user", "--map-root-user", "--mount"] if userns else ["unshare", "--mount"]
        p = subprocess.Popen(ns + ["sh", "-c", f"mount -t overlay lanner-ovl -o lowerdir={d}/lower,upperdir="
                                               f"{d}/upper,workdir={d}/work {d}/merged && exec {self.exe} {d}/merged/f"])
        assert p.wait(timeout=60) == 0
        return p, d / "upper" / "f"

    def fire(self):
        p, self.upper = self._copy_up("ns", True)
        return lambda b: b["process"]["pid"] == p.pid and b["args"] == [{"string_arg": "security.capability"}] \
            and "return" in b

    def negative(self):
        # (after the event was checked) the override left the xattr behind: with `return: true` the
        # selector's Signal/Override run at the entry (gen_enter -> gen_enforce), before fmod_ret decides
        assert self.upper.exists()
        assert "security.capability" not in os.listxattr(self.upper), os.listxattr(self.upper)
        p, upper = self._copy_up("host", False)
        assert upper.exists()
        return lambda b: b["process"]["pid"] == p.pid


class ScopedLoadOnly(Trigger):
    """Not triggered: an enforcing corpus policy is only loaded and unloaded, with its enforcing
    selector scoped to a binary that does not exist, so it can act on no process."""

    OLD = ""
    NEW = ""

    def patch(self, text):
        assert text.count(self.OLD) == 1, self.OLD
        return text.replace(self.OLD, self.NEW.format(bin=self.tmp / "lanner-no-such-binary"))


class KillerScoped(ScopedLoadOnly):
    """NotifyEnforcer (argSig 9) on /usr/bin/bash's dups: scoped to no process, should the kernel accept
    the enforcer's fmod_ret on the syscalls."""

    OLD = '        - "/usr/bin/bash"\n'
    NEW = '        - "{bin}"\n'


KFUNC_TRIGGERS: dict[str, type[Trigger]] = {
    "bpf.yaml": BpfObjects,
    "tty.yaml": TtyWriteArgs,
    "fd_install_ns_host.yaml": FdInstallHost,
    "fd_install_caps.yaml": FdInstallUserns,
    "fd_install_cap_changes.yaml": FdInstallUserns,
    "filename_monitoring_filtered.yaml": FilenameMonitoringFiltered,
    "kprobe_commit_creds.yaml": CommitCreds,
    "tcp-connect-with-selectors.yaml": TcpConnectWithSelectors,
    "lsm_file_open.yaml": LsmFileOpen,
    "override-security.yaml": OverrideSecurity,
    "sandbox/linux-namespaces/kill_unprivileged_user_namespace.yaml": KillUnprivilegedUserns,
    "security_bprm_check.yaml": SecurityBprmCheck,
    "sandbox/linux-namespaces/kill_unprivileged_user_namespace_in_pid_namespace.yaml": KillUsernsInPidns,
    "killer.yaml": KillerScoped,
    "cves/cve-2023-2640-overlayfs-ubuntu.yaml": OverlayCopyUp,
    "cves/cve-2024-3094-xz-ssh.yaml": XzSsh,
    "datagram.yaml": CgroupSkb,
    "datagram-with-selectors.yaml": CgroupSkbSelectors,
    "datagram-with-sock-tracking.yaml": CgroupSkbSelectors,
    "datagram_518.yaml": Datagram518,
    "dev_hard_start_xmit.yaml": DevHardStartXmit,
    "dns-only-specified-servers.yaml": DnsOnlySpecifiedServers,
    "filename_monitoring.yaml": FilenameMonitoring,
    "process-credentials/creds-capability-usage.yaml": CapabilityUsage,
    "process-credentials/process-creds-changed.yaml": CredsChanged,
    "process-credentials/process-creds-installed.yaml": CredsInstalled,
    "process-exec/process-exec-elf-begin.yaml": ExecElfBegin,
    "security-socket-connect-block-others.yaml": SocketConnectBlockOthers,
    "security-socket-connect.yaml": SocketConnect,
    "security_inode_follow_link.yaml": FollowLink,
    "tcp-connect-only-local-addrs.yaml": TcpConnectNonLocal,
    "tcp-connect-only-private-addrs.yaml": TcpConnectNonLocal,
    "tcp-connect.yaml": TcpConnect,
    "tcp-listen.yaml": TcpListen,
    "tcp-accept.yaml": TcpAccept,
    "tty_54.yaml": TtyWrite,
    "host-changes/monitor-kernel-modules.yaml": KernelModules,
    "modules-nohost.yaml": ModulesNoHost,
    "list-generated-ftrace.yaml": KillKsys,
    "stack_traces.yaml": StackTraces,
}
# the policies of ENABLED_KFUNC that enforce on processes the test did not start unless patched
assert {"override-security.yaml", "tcp-connect-only-private-addrs.yaml",
        "sandbox/linux-namespaces/kill_unprivileged_user_namespace.yaml",
        "sandbox/linux-namespaces/kill_unprivileged_user_namespace_in_pid_namespace.yaml",
        "dns-only-specified-servers.yaml", "security-socket-connect-block-others.yaml",
        "tcp-connect-only-local-addrs.yaml", "cves/cve-2023-2640-overlayfs-ubuntu.yaml",
        "modules-nohost.yaml"} <= set(KFUNC_TRIGGERS)
assert ENABLED_KFUNC == ENABLED_HERE | set(LOAD_ONLY_KFUNC) | {
    k for k, v in KFUNC_TRIGGERS.items() if not issubclass(v, ScopedLoadOnly)}


# ------------------------------------------------------------------------------- load + trigger
@pytest.mark.parametrize("path", [p for p, i in zip(FILES, IDS) if i not in REJECTED],
                         ids=[i for i in IDS if i not in REJECTED])
def test_corpus_policy_on_this_kernel(env: Env, tmp_path: Path, path: Path):  # noqa: F811
    rel = str(path.relative_to(CORPUS))
    engine = env.engine
    # the tables this kernel is held to (module docstring; docs/policies.md has both columns)
    kfunc = all(engine.probe.get(f) for f in KFUNC_FEATURES)
    since = {k: why for k, (v, why) in REASONS_KFUNC_SINCE.items() if kfunc and _release() >= v}
    enabled = (ENABLED_KFUNC - set(since)) if kfunc else ENABLED_HERE
    partial = PARTIAL_KFUNC if kfunc else {}
    reasons = {**REASONS, **REASONS_KFUNC, **since} if kfunc else REASONS
    triggers = {**TRIGGERS, **KFUNC_TRIGGERS} if kfunc else TRIGGERS
    trig = triggers[rel](tmp_path) if rel in triggers else None
    if trig is not None:
        trig.engine = engine
    base = engine.links()
    (pol,) = load_policies(path.read_text(), rel)
    try:
        text = path.read_text()
        if trig is not None:
            trig.setup()
            text = trig.patch(text)
        engine.add(text, rel)
        try:
            st = engine.status(pol.name, pol.namespace or "")
            hooks = pol.hooks()
            lines = [ln for ln in (st.info.split("; ") if st.info else []) if not ln.startswith("runs for ")]
            paths = _hook_paths(pol)
            # one info line per hook, in policy order, naming it and how it is served or why not
            assert [ln.split(" ", 1)[0].rstrip(":") for ln in lines] == paths, (rel, st.info)
            if rel in enabled:
                assert st.state == sensors_pb2.TP_STATE_ENABLED, (rel, st.error)
                assert st.error == "" and "unavailable" not in st.info
                assert engine.links() > base
                if kfunc and rel in LOAD_ONLY_KFUNC:
                    assert trig is None or isinstance(trig, ScopedLoadOnly), rel
                elif kfunc and rel in LOAD_ONLY_KFUNC_SINCE and _release() >= LOAD_ONLY_KFUNC_SINCE[rel][0]:
                    pass  # loaded (scoped by its trigger's patch) and unloaded: it cannot match on this kernel
                else:
                    assert trig is not None, f"{rel} loads here: add a trigger to TRIGGERS"
                    _check_trigger(env, trig, pol.name, rel)
            elif rel in partial:
                assert st.state == sensors_pb2.TP_STATE_PARTIALLY_ENABLED, (rel, st.error)
                assert partial[rel] in st.error and engine.links() > base, (rel, st.error)
                unavailable = [ln for ln in lines if ": unavailable (" in ln or ": attach failed (" in ln]
                assert len(unavailable) == len(re.findall(r"(?:^|; )hook \w+\[\d+\] ", st.error)), (rel, st.error)
            else:
                assert st.state in (sensors_pb2.TP_STATE_LOAD_ERROR, sensors_pb2.TP_STATE_PARTIALLY_ENABLED), rel
                assert rel in reasons, f"{rel}: {sensors_pb2.TracingPolicyState.Name(st.state)}: {st.error}"
                # every hook that is not attached is named with its reason, in error and in info
                unavailable = [ln for ln in lines if ": unavailable (" in ln or ": attach failed (" in ln]
                assert unavailable and reasons[rel] in st.error, (rel, st.error)
                for ln in unavailable:
                    where = ln.split(": ", 1)[0]
                    assert (f"hook {where}: " in st.error) or where == "spec.loader", (rel, ln, st.error)
                errors = re.findall(r"(?:^|; )(hook \w+\[\d+\] |spec\.loader: )", st.error)
                assert st.error.startswith(("hook ", "spec.loader: ")), (rel, st.error)
                assert len(errors) == len(unavailable), (rel, st.error)
                if st.state == sensors_pb2.TP_STATE_LOAD_ERROR:
                    assert engine.links() == base and len(unavailable) == len(lines)
                else:
                    assert engine.links() > base
                assert len(hooks) + bool(pol.spec.loader) == len(lines)
        finally:
            engine.delete(pol.name, pol.namespace or "")
        # deleted: its links are gone, no program is listed for it, the name is free again
        assert engine.links() == base
        assert not [p for p in engine.programs() if p[0] == f"policy:{pol.name}"]
        assert not [s for s in engine.list() if s.name == pol.name]
    finally:
        if trig is not None:
            trig.cleanup()


def _release() -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", os.uname().release).groups()
    return int(major), int(minor)


def _hook_paths(pol) -> list[str]:
    counters: dict[str, int] = {}
    out = ["spec.loader"] if pol.spec.loader else []
    attr = {"kprobe": "kprobes", "fentry": "fentries", "tracepoint": "tracepoints", "uprobe": "uprobes",
            "usdt": "usdts", "lsmhook": "lsmhooks"}
    for kind, _display, _spec in pol.hooks():
        a = attr[kind]
        out.append(f"{a}[{counters.get(a, 0)}]")
        counters[a] = counters.get(a, 0) + 1
    return out


def _check_trigger(env: Env, trig: Trigger, policy: str, rel: str) -> None:
    holder: dict = {}
    lost_before = env.engine.counters(policy)["post_lost"]
    for _attempt in range(trig.attempts):
        evs = env.run(lambda: holder.update(pred=trig.fire()), policy)
        mine = [(k, b) for e in evs for k, b in e.items() if k.startswith("process_")]
        hits = [(k, b) for k, b in mine if holder["pred"](b)]
        if hits:
            break
    counters = env.engine.counters(policy)
    if not hits and trig.attempts > 1 and counters["post_lost"] > lost_before:
        # an unfiltered policy under another workload's syscall flood: every attempt found the ring
        # buffer full. The loss must then be accounted for in the kernel, which it is.
        import warnings

        warnings.warn(f"{rel}: trigger event lost {trig.attempts} times in a full ring buffer ({counters})")
        return
    assert hits, f"{rel}: no event from the trigger among {len(evs)} events of the policy; counters {counters}; " \
        f"some: {[(b['process'].get('pid'), b['process'].get('binary'), _name(b), b.get('args')) for _, b in mine[:6]]}"
    assert {k for k, _ in hits} == {trig.kind}, rel
    assert {_name(b) for _, b in hits} == trig.names, (rel, [_name(b) for _, b in hits])
    assert all(b["policy_name"] == policy and b["action"] == trig.action for _, b in hits), (rel, hits)
    ac = env.engine.status(policy).stats.action_counters
    assert ac.post >= len(hits) and (ac.signal >= 1 if trig.signals else ac.signal == 0), (rel, ac)
    if trig.negative is not None:
        evs = env.run(lambda: holder.update(neg=trig.negative()), policy)
        bad = [b for e in evs for k, b in e.items() if k.startswith("process_") and holder["neg"](b)]
        assert not bad, f"{rel}: the non-matching trigger produced {bad}"


def test_docs_table_matches_this_file():
    """docs/policies.md's corpus table lists every policy once, and its host column says what this file
    pins: full for ENABLED_HERE, rejected for REJECTED, none for the rest."""
    _skip_without_corpus()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "policies.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 6 and cells[1].endswith((".yaml", ".yml")):
            assert cells[1] not in rows, cells[1]
            rows[cells[1]] = cells[3]
    assert set(rows) == set(IDS)
    for rel, host in rows.items():
        if rel in ENABLED_HERE:
            assert host.startswith("**full**"), (rel, host)
        elif rel in REJECTED:
            assert host == "**rejected by the parser**", (rel, host)
        else:
            assert host.startswith("none: "), (rel, host)
