"""Kernel feature probe: which eBPF program types, attach points and helpers work on this kernel.

Kernel versions and config flags do not tell the truth: a distribution may compile a feature in and
still refuse it (lockdown, a hardened sysctl, a sandboxing hypervisor that denies BPF trampolines).
The only reliable answer is to try. ``run_probe`` therefore loads and, where it is cheap and safe,
attaches one tiny program per feature from ``obj/probe.bpf.o`` and reports, per feature, whether it
worked and -- when it did not -- the reason the kernel or libbpf gave. The agent uses the result to
pick, per hook, the best mechanism the kernel offers (:meth:`ProbeResult.best_mechanism`).

Safety rules, because this runs on production nodes:

* every program is harmless (returns "allow"; helper calls are verified but never executed) and is
  detached right after its check, also when the check fails;
* one program is loaded per check, so one refused feature cannot hide another;
* cgroup programs attach only to a scratch cgroup-v2 directory created for the check and removed
  afterwards -- never to the root cgroup;
* TC and XDP attach only inside a throwaway network namespace owned by a short-lived child process,
  never to a host interface;
* libbpf's messages go to Python logging at DEBUG while probing; the reason is in the result.

``python -m lanner.kernel.probe -o json`` (or ``lanner probe``) prints the result.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import logging
import os
import re
import select
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, NoReturn

from lanner import memory
from lanner.bpf import fs
from lanner.bpf import libbpf as L
from lanner.bpf.objects import BpfError, BpfObject, Link, Program

log = logging.getLogger("lanner.probe")

PROBE_OBJECT = Path(__file__).resolve().parent / "obj" / "probe.bpf.o"

# Feature names, in report order.
PROGRAM_FEATURES = (
    "tracepoint", "tp_btf", "raw_tp", "kprobe", "kretprobe", "fentry", "fexit", "fmod_ret", "lsm",
    "uprobe", "uretprobe", "cgroup_sock_addr", "tc", "xdp", "iter_task",
)
HELPER_FEATURES = ("vmlinux_btf", "ringbuf", "send_signal", "override_return", "d_path", "bpf_loop",
                   "get_current_task_btf")
FEATURES = PROGRAM_FEATURES + HELPER_FEATURES

# Programs that run through a BPF trampoline: a kernel that denies trampolines refuses all of them
# at load time with EPERM, before the verifier runs.
TRAMPOLINE_FEATURES = frozenset({"fentry", "fexit", "fmod_ret", "lsm", "d_path"})

# Best mechanism per kind of hook, best first. "tracepoint" in a kernel-function chain means "hook
# the nearest tracepoint instead" (always available, but not at every place a probe could reach).
MECHANISM_PREFERENCE: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "kernel_function": ("fentry", "kprobe", "tracepoint"),
    "kernel_function_return": ("fexit", "kretprobe", "tracepoint"),
    "kernel_event": ("tp_btf", "raw_tp", "tracepoint"),
    "security_hook": ("lsm", "fentry", "kprobe", "tracepoint"),
    "enforcement": ("lsm", "fmod_ret", "override_return", "send_signal"),
    "user_function": ("uprobe",),
    "user_function_return": ("uretprobe",),
    "network_connect": ("cgroup_sock_addr",),
    "packet": ("tc", "xdp"),
    "event_output": ("ringbuf",),
})

# Kernel symbol prefix of the syscall entry wrappers (kernels >= 4.17), per `uname -m`.
SYSCALL_PREFIX: Mapping[str, str] = MappingProxyType({
    "x86_64": "__x64_sys_", "aarch64": "__arm64_sys_", "s390x": "__s390x_sys_", "riscv64": "__riscv_sys_",
})

ENOTSUPP = 524  # kernel-internal "not supported", leaks to user space from some BPF paths
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_FUNC_ringbuf_output = 130
CLONE_NEWNET = 0x40000000
CHILD_TIMEOUT_S = 5.0
CGROUP_PREFERRED = Path("/sys/fs/cgroup/unified")
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe/type")


# ------------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class Feature:
    """One probed feature. ``detail`` says how it was probed and, when unsupported, why not."""

    name: str
    supported: bool
    detail: str


@dataclass
class ProbeResult:
    """What this kernel offers. Built by :func:`run_probe`; never cached, so re-probe to refresh."""

    kernel_release: str
    features: dict[str, Feature]
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def supports(self, name: str) -> bool:
        """False for unknown names too: an unprobed feature must not be relied on."""
        feat = self.features.get(name)
        return bool(feat and feat.supported)

    def best_mechanism(self, kind: str) -> str:
        """The first supported mechanism of ``MECHANISM_PREFERENCE[kind]``, or ``"none"``.

        Raises KeyError for an unknown kind, so a typo in the agent fails loudly instead of silently
        degrading to "none".
        """
        try:
            chain = MECHANISM_PREFERENCE[kind]
        except KeyError:
            raise KeyError(f"unknown hook kind {kind!r}; known: {sorted(MECHANISM_PREFERENCE)}") from None
        return next((name for name in chain if self.supports(name)), "none")

    def unavailable_reasons(self) -> list[str]:
        """One line per unsupported feature, for the agent's start-up log."""
        return [f"{f.name}: {f.detail}" for f in self.features.values() if not f.supported]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel_release": self.kernel_release,
            "duration_ms": round(self.duration_s * 1000, 1),
            "features": {n: {"supported": f.supported, "detail": f.detail} for n, f in self.features.items()},
            "best_mechanism": {kind: self.best_mechanism(kind) for kind in MECHANISM_PREFERENCE},
            "notes": list(self.notes),
        }

    def format_table(self) -> str:
        width = max((len(n) for n in self.features), default=7)
        lines = [f"kernel {self.kernel_release}, probed in {self.duration_s:.2f} s", ""]
        lines.append(f"{'FEATURE':<{width}}  {'OK':<3}  DETAIL")
        for feat in self.features.values():
            lines.append(f"{feat.name:<{width}}  {'yes' if feat.supported else 'no':<3}  {feat.detail}")
        lines.append("")
        lines.append("best mechanism per hook kind:")
        for kind in MECHANISM_PREFERENCE:
            lines.append(f"  {kind:<24} {self.best_mechanism(kind)}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ environment
@dataclass(frozen=True)
class Targets:
    """Where the attach checks attach. Discovered per run (nothing is cached between runs)."""

    syscall_fn: str  # the getpgid syscall entry: rarely called, and error-injectable
    uprobe_binary: str
    uprobe_func: str
    cgroup2_root: Path | None

    @classmethod
    def discover(cls) -> "Targets":
        binary, func = _uprobe_target()
        return cls(_syscall_fn("getpgid"), binary, func, cgroup2_root())


def _syscall_fn(name: str) -> str:
    return SYSCALL_PREFIX.get(os.uname().machine, "sys_") + name


def _uprobe_target() -> tuple[str, str]:
    """This process's libc and ``getpid``; the python binary's entry point if libc is not mapped."""
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split(maxsplit=5)
            path = fields[5].strip() if len(fields) == 6 else ""
            if re.fullmatch(r"libc(\.so\.\d+|-[\d.]+\.so)", os.path.basename(path)):
                return path, "getpid"
    return os.path.realpath(sys.executable), "Py_BytesMain"


def cgroup2_root() -> Path | None:
    """The cgroup-v2 mount: ``/sys/fs/cgroup/unified`` on hybrid hosts, else the first cgroup2 mount."""
    mounts = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                mounts.append(Path(left.split()[4]))
    if CGROUP_PREFERRED in mounts:
        return CGROUP_PREFERRED
    return mounts[0] if mounts else None


# --------------------------------------------------------------------------------- error reasons
def errno_text(err: int) -> str:
    """``Operation not permitted (EPERM)``: the errno name is what people search for."""
    err = abs(err)
    if err == ENOTSUPP:
        return "Operation not supported (ENOTSUPP)"
    return f"{os.strerror(err)} ({errno.errorcode.get(err, err)})"


_VERIFIER_NOISE = re.compile(r"^(processed \d+ insns|verification time|stack depth)")
_LIBBPF_PREFIX = re.compile(r"^libbpf: (prog '[^']*': )?")
# libbpf lines that only restate the errno (or, for EPERM, guess at a memlock limit)
_LIBBPF_NOISE = re.compile(r"skipped loading|failed to load|load failed|permission error while running as root|LOAD LOG --")
# libbpf lines worth quoting (its debug chatter is not)
_LIBBPF_COMPLAINT = re.compile(r"fail|error|cannot|can't|not found|unknown|invalid|unsupported|missing", re.I)


def verifier_reason(log_text: str) -> str:
    """The line of a load log that says why: the verifier's last word, else libbpf's last remark.

    The log may be only the tail of a long verifier log, so the END marker is searched first and
    the BEGIN marker is optional.
    """
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    ends = [i for i, ln in enumerate(lines) if ln.endswith("-- END PROG LOAD LOG --")]
    if ends:
        begins = [i for i, ln in enumerate(lines[: ends[-1]]) if ln.endswith("-- BEGIN PROG LOAD LOG --")]
        body = lines[begins[-1] + 1 if begins else 0 : ends[-1]]
        useful = [ln for ln in body if not _VERIFIER_NOISE.match(ln)]
        if useful:
            return useful[-1]
    remarks = [_LIBBPF_PREFIX.sub("", ln) for ln in lines
               if ln.startswith("libbpf:") and _LIBBPF_COMPLAINT.search(ln) and not _LIBBPF_NOISE.search(ln)]
    return remarks[-1] if remarks else ""


def load_reason(feature: str, where: str, exc: BpfError) -> str:
    hint = verifier_reason(exc.log)
    if exc.errno == errno.EPERM and feature in TRAMPOLINE_FEATURES:
        said = f"; {hint}" if hint else ""
        hint = f"BPF trampolines denied (no fentry/fexit/fmod_ret/lsm program can load){said}"
    elif exc.errno == errno.EPERM and not hint:
        hint = "missing CAP_BPF/CAP_SYS_ADMIN, or refused by lockdown"
    if "cannot use helper bpf_override_return" in hint:
        hint += " (kernel built without CONFIG_BPF_KPROBE_OVERRIDE)"
    return f"program load refused ({where}): {errno_text(exc.errno)}" + (f" — {hint}" if hint else "")


def kprobes_available() -> bool:
    """A kprobe PMU or a legacy ``kprobe_events`` file exists only when CONFIG_KPROBES=y."""
    return KPROBE_PMU.exists() or (fs.tracefs_root() / "kprobe_events").exists()


def attach_reason(feature: str, where: str, exc: BpfError) -> str:
    hint = ""
    if feature in ("kprobe", "kretprobe", "override_return") and not kprobes_available():
        hint = "kernel has no kprobe support (CONFIG_KPROBES not set?)"
    elif exc.errno == errno.ENOENT:
        hint = f"no such attach target {where}"
    return f"attach failed ({where}): {errno_text(exc.errno)}" + (f" — {hint}" if hint else "")


# ------------------------------------------------------------------------------ program checks
AttachFn = Callable[[Program], Link]


@dataclass(frozen=True)
class ProgramCheck:
    """Load ``program`` alone; if ``attach`` is set, attach it (and detach at once) too."""

    feature: str
    program: str
    where: str  # what it attaches to, for the detail text
    attach: AttachFn | None = None


def program_checks(t: Targets) -> list[ProgramCheck]:
    """The checks that need nothing but the process itself (cgroup and netdev checks are separate).

    The slowest checks come first: they run in parallel, and detaching a uprobe or tracepoint link
    is what takes longest (see :func:`run_in_parallel`).
    """
    return [
        ProgramCheck("uprobe", "probe_uprobe", f"uprobe {t.uprobe_binary}:{t.uprobe_func} (this process only)",
                     lambda p: _attach_uprobe(p, t, retprobe=False)),
        ProgramCheck("uretprobe", "probe_uretprobe", f"uretprobe {t.uprobe_binary}:{t.uprobe_func} (this process only)",
                     lambda p: _attach_uprobe(p, t, retprobe=True)),
        ProgramCheck("tracepoint", "probe_tracepoint", "tracepoint sched/sched_process_exec", _by_section),
        ProgramCheck("tp_btf", "probe_tp_btf", "tp_btf sched_process_exec", _by_section),
        ProgramCheck("raw_tp", "probe_raw_tp", "raw_tp sched_process_exec", _by_section),
        ProgramCheck("kprobe", "probe_kprobe", f"kprobe {t.syscall_fn}", lambda p: p.attach_kprobe(t.syscall_fn)),
        ProgramCheck("kretprobe", "probe_kretprobe", f"kretprobe {t.syscall_fn}",
                     lambda p: p.attach_kprobe(t.syscall_fn, retprobe=True)),
        ProgramCheck("fentry", "probe_fentry", "fentry security_file_open", _by_section),
        ProgramCheck("fexit", "probe_fexit", "fexit security_file_open", _by_section),
        ProgramCheck("fmod_ret", "probe_fmod_ret", "fmod_ret security_file_open", _by_section),
        ProgramCheck("lsm", "probe_lsm", "lsm file_open", _by_section),
        ProgramCheck("iter_task", "probe_iter_task", "iter/task (link only, never read)", _by_section),
        ProgramCheck("send_signal", "probe_send_signal", "bpf_send_signal in a tracepoint program"),
        ProgramCheck("override_return", "probe_override_return", f"bpf_override_return in a kprobe on {t.syscall_fn}",
                     lambda p: p.attach_kprobe(t.syscall_fn)),
        ProgramCheck("d_path", "probe_d_path", "bpf_d_path in fentry vfs_truncate", _by_section),
        ProgramCheck("bpf_loop", "probe_bpf_loop", "bpf_loop in a tracepoint program"),
        ProgramCheck("get_current_task_btf", "probe_task_btf", "bpf_get_current_task_btf in a tracepoint program"),
    ]


def _by_section(prog: Program) -> Link:
    return prog.attach()


def _attach_uprobe(prog: Program, t: Targets, retprobe: bool) -> Link:
    # pid-filtered: the breakpoint is installed in this process only, not in every user of libc
    return prog.attach_uprobe(t.uprobe_binary, func_name=t.uprobe_func, pid=os.getpid(), retprobe=retprobe)


@contextmanager
def only_program(obj_path: Path, name: str) -> Iterator[tuple[BpfObject, Program]]:
    """Open the probe object with just ``name`` set to load; closing it detaches everything."""
    obj = BpfObject.open(obj_path)
    try:
        for prog_name, prog in obj.programs.items():
            prog.set_autoload(prog_name == name)
        yield obj, obj.program(name)
    finally:
        obj.close()
        # each Program refers to its object: without this cycle the object and its BTF go at once, not at the
        # agent's next cyclic collection (rare: raised thresholds, few allocations when idle)
        obj.programs.clear()


def load_only(obj: BpfObject, feature: str, where: str) -> Feature | None:
    """Load; on refusal return the unsupported Feature, else None."""
    try:
        obj.load()
    except BpfError as exc:
        return Feature(feature, False, load_reason(feature, where, exc))
    return None


def run_check(obj_path: Path, check: ProgramCheck) -> Feature:
    with only_program(obj_path, check.program) as (obj, prog):
        refused = load_only(obj, check.feature, check.where)
        if refused:
            return refused
        if check.attach is None:
            return Feature(check.feature, True, f"verifier accepted {check.where}")
        return attach_once(prog, check.feature, check.where, check.attach)


def attach_once(prog: Program, feature: str, where: str, attach: AttachFn) -> Feature:
    try:
        attach(prog).destroy()
    except BpfError as exc:
        return Feature(feature, False, attach_reason(feature, where, exc))
    return Feature(feature, True, f"loaded and attached: {where}")


# ------------------------------------------------------------------------------------- cgroup
@contextmanager
def scratch_cgroup(root: Path) -> Iterator[Path]:
    """A cgroup-v2 child of ``root`` that lives only for the check (no task ever joins it)."""
    path = root / f"lanner-probe-{os.getpid()}"
    path.mkdir(exist_ok=True)
    try:
        yield path
    finally:
        try:
            path.rmdir()
        except FileNotFoundError:
            pass


def check_cgroup_sock_addr(obj_path: Path, root: Path | None) -> Feature:
    name = "cgroup_sock_addr"
    if root is None:
        return Feature(name, False, "no cgroup v2 mount to attach to (cgroup/connect4 needs cgroup v2)")
    with only_program(obj_path, "probe_connect4") as (obj, prog):
        refused = load_only(obj, name, "cgroup/connect4")
        if refused:
            return refused
        try:
            with scratch_cgroup(root) as cg:
                return attach_once(prog, name, f"cgroup/connect4 on scratch cgroup {cg}",
                                   lambda p: p.attach_cgroup(str(cg)))
        except OSError as exc:  # mkdir refused (read-only cgroupfs, delegated subtree...)
            return Feature(name, False, f"cannot create a scratch cgroup under {root}: {exc.strerror}")


# ------------------------------------------------------------------------------ netns (tc, xdp)
NETDEV_CHECKS = (("tc", "probe_tc", "tc clsact ingress"), ("xdp", "probe_xdp", "xdp"))
LO_IFINDEX = 1  # loopback is always ifindex 1 in a fresh network namespace


@dataclass
class NetnsRun:
    """Outcome of the throwaway-netns child: its features and the namespace it used (for audits)."""

    features: list[Feature]
    netns_inode: int | None = None


def netns_inode(pid: int | str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _netdev_attach(feature: str, prog: Program) -> Feature:
    if feature == "tc":
        return attach_once(prog, feature, "tc clsact ingress on lo of a throwaway netns",
                           lambda p: p.attach_tc(LO_IFINDEX))
    return attach_once(prog, feature, "xdp on lo of a throwaway netns", lambda p: p.attach_xdp(LO_IFINDEX))


def _child(progs: dict[str, Program], host_ns: int, wfd: int) -> NoReturn:
    """Runs in the forked child: new netns, attach, report, exit. Never returns, never raises."""
    report: dict[str, Any] = {"netns": None, "error": None, "features": {}}
    try:
        if L.libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {errno_text(err)}")
        report["netns"] = netns_inode()
        if report["netns"] == host_ns:  # belt and braces: never touch a host interface
            raise OSError(errno.EPERM, "still in the host network namespace after unshare")
        if socket.if_nametoindex("lo") != LO_IFINDEX:
            raise OSError(errno.ENODEV, "the new network namespace has no loopback at ifindex 1")
        for feature, prog in progs.items():
            feat = _netdev_attach(feature, prog)
            report["features"][feature] = [feat.supported, feat.detail]
    except BaseException as exc:  # noqa: BLE001 - anything must reach the parent, then exit
        report["error"] = str(exc)
    finally:
        try:
            os.write(wfd, json.dumps(report).encode())
        finally:
            os._exit(0)


def _read_child(rfd: int, pid: int) -> dict[str, Any]:
    """The child's JSON report; kills the child if it hangs past CHILD_TIMEOUT_S."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([rfd], [], [], left)
            if not ready:
                break
            chunk = os.read(rfd, 65536)
            if not chunk:
                return json.loads(b"".join(chunks) or b"{}")
            chunks.append(chunk)
        os.kill(pid, signal.SIGKILL)
        return {"error": f"netns child timed out after {CHILD_TIMEOUT_S} s"}
    finally:
        os.waitpid(pid, 0)


def _fork_netns_child(progs: dict[str, Program]) -> dict[str, Any]:
    host_ns = netns_inode()
    rfd, wfd = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            _child(progs, host_ns, wfd)
        os.close(wfd)
        wfd = -1
        return _read_child(rfd, pid)
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)


def probe_netdev(obj_path: Path) -> NetnsRun:
    """tc and xdp: load here, attach in a forked child that lives in its own network namespace.

    Loading in the parent keeps the load verdict independent of the namespace. The child only
    attaches to its own loopback and exits; its namespace, qdisc and links die with it.
    """
    run = NetnsRun([])
    with _loaded_netdev_programs(obj_path, run.features) as progs:
        if not progs:
            return run
        try:
            report = _fork_netns_child(progs)
        except OSError as exc:  # fork or pipe refused
            report = {"error": f"cannot start the netns child: {exc}"}
    run.netns_inode = report.get("netns")
    for feature in progs:
        if feature in report.get("features", {}):
            ok, detail = report["features"][feature]
            run.features.append(Feature(feature, bool(ok), str(detail)))
        else:
            why = report.get("error") or "no answer from the netns child"
            run.features.append(Feature(feature, False, f"throwaway netns check failed: {why}"))
    order = {name: i for i, name in enumerate(FEATURES)}
    run.features.sort(key=lambda f: order[f.name])
    return run


@contextmanager
def _loaded_netdev_programs(obj_path: Path, refused: list[Feature]) -> Iterator[dict[str, Program]]:
    """Each netdev program loaded in its own object; load refusals are appended to ``refused``."""
    objs: list[BpfObject] = []
    progs: dict[str, Program] = {}
    try:
        for feature, name, where in NETDEV_CHECKS:
            obj = BpfObject.open(obj_path)
            objs.append(obj)
            for prog_name, prog in obj.programs.items():
                prog.set_autoload(prog_name == name)
            feat = load_only(obj, feature, where)
            if feat:
                refused.append(feat)
            else:
                progs[feature] = obj.program(name)
        yield progs
    finally:
        for obj in objs:
            obj.close()


# --------------------------------------------------------------------------- maps and helpers
def check_vmlinux_btf() -> Feature:
    path = Path("/sys/kernel/btf/vmlinux")
    if path.is_file():
        return Feature("vmlinux_btf", True, f"{path} present (CO-RE, tp_btf, fentry and lsm need it)")
    return Feature("vmlinux_btf", False, f"{path} missing: kernel built without CONFIG_DEBUG_INFO_BTF")


def check_ringbuf() -> Feature:
    """Map type and output helper, via libbpf's own probes (a ring buffer in the probe object would
    be created on every load and make every check fail on kernels older than 5.8)."""
    how = "libbpf map-type probe + bpf_ringbuf_output helper probe (tracepoint)"
    rc = L.libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, None)
    if rc != 1:
        why = "map type unknown to the kernel (needs 5.8+)" if rc == 0 else errno_text(rc)
        return Feature("ringbuf", False, f"{how}: {why}")
    rc = L.libbpf_probe_bpf_helper(BPF_PROG_TYPE_TRACEPOINT, BPF_FUNC_ringbuf_output, None)
    if rc != 1:
        why = "helper unavailable to tracepoint programs" if rc == 0 else errno_text(rc)
        return Feature("ringbuf", False, f"{how}: {why}")
    return Feature("ringbuf", True, how)


# ----------------------------------------------------------------------------------- entry points
def prepare() -> list[str]:
    """Mount tracefs if needed (libbpf reads tracepoint ids there) and say what was done."""
    notes = []
    if os.geteuid() != 0:
        notes.append("not running as root: results reflect this process's capabilities only")
    try:
        action = fs.ensure_tracefs()
        if action.mounted_now:
            notes.append(f"mounted tracefs at {action.path}")
    except OSError as exc:
        notes.append(f"tracefs unavailable ({exc}); tracepoint checks will fail")
    return notes


def _quietly(feature: str, check: Callable[..., Feature], *args: Any) -> Feature:
    """Run one check on a worker thread with libbpf's output captured (log capture is per thread).

    An unexpected error becomes an unsupported feature with the error as reason: a probe bug must
    not stop the agent, but it is logged as a warning because it is not a kernel verdict.
    """
    with L.log_capture.capture():
        try:
            return check(*args)
        except Exception as exc:  # noqa: BLE001
            log.warning("probe %s: internal error", feature, exc_info=True)
            return Feature(feature, False, f"probe error: {exc}")


def netdev_features(obj_path: Path) -> list[Feature]:
    """:func:`probe_netdev` with libbpf's output captured and internal errors reported like in
    :func:`_quietly`."""
    with L.log_capture.capture():
        try:
            return probe_netdev(obj_path).features
        except Exception as exc:  # noqa: BLE001
            log.warning("probe tc/xdp: internal error", exc_info=True)
            return [Feature(name, False, f"probe error: {exc}") for name, _, _ in NETDEV_CHECKS]


def run_in_parallel(obj_path: Path, targets: Targets) -> list[Feature]:
    """The per-process checks, each on its own thread.

    Detaching a perf-event based link (tracepoint, uprobe) waits for an RCU grace period (75-120 ms
    here); run one after the other those waits alone exceed a second, in parallel they overlap.
    """
    jobs: list[tuple[str, Callable[..., Feature], tuple[Any, ...]]] = [
        (c.feature, run_check, (obj_path, c)) for c in program_checks(targets)
    ]
    jobs.append(("cgroup_sock_addr", check_cgroup_sock_addr, (obj_path, targets.cgroup2_root)))
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="lanner-probe") as pool:
        futures = [pool.submit(_quietly, name, fn, *args) for name, fn, args in jobs]
        return [f.result() for f in futures]


def run_probe(obj_path: Path = PROBE_OBJECT) -> ProbeResult:
    """Probe every feature of :data:`FEATURES` against the running kernel."""
    if not Path(obj_path).exists():
        raise FileNotFoundError(f"probe object {obj_path} not found; build it with 'make bpf'")
    start = time.perf_counter()
    notes = prepare()
    targets = Targets.discover()
    found = [check_vmlinux_btf(), check_ringbuf()]
    # the netns child is forked first, while no probe thread exists that could hold a lock it needs
    found += netdev_features(obj_path)
    found += run_in_parallel(obj_path, targets)
    memory.trim()  # the checks' object loads parsed the kernel's BTF, megabytes freed now (lanner/memory.py)
    for feat in found:
        log.debug("probe %s: %s (%s)", feat.name, "yes" if feat.supported else "no", feat.detail)
    by_name = {f.name: f for f in found}
    features = {name: by_name[name] for name in FEATURES}
    return ProbeResult(os.uname().release, features, time.perf_counter() - start, notes)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lanner probe",
                                description="Probe which eBPF features this kernel offers (needs root).")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--programs", action="store_true", help="the verifier budget of every program lanner ships")
    return p


def programs_main(output: str) -> int:
    """``lanner probe --programs``: the verifier's cost of every program (lanner.kernel.budget)."""
    from lanner.kernel import budget

    for m in fs.ensure_mounts():
        if m.mounted_now:
            log.info("mounted %s at %s", m.fstype, m.path)
    costs = budget.measure()
    if output == "json":
        print(json.dumps({"kernel": os.uname().release, "limit": budget.LIMIT, "budget": budget.BUDGET,
                          "programs": [c.as_dict() for c in costs]}, indent=2))
    else:
        print(f"kernel {os.uname().release}")
        print(budget.table(costs))
    return 1 if any(c.status in ("over_budget", "rejected") for c in costs) else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.programs:
        return programs_main(args.output)
    try:
        result = run_probe()
    except (OSError, L.LibbpfMissing) as exc:
        print(f"lanner probe: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2) if args.output == "json" else result.format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
