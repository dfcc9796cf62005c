"""Helpers for bench/policy_openat.py (the TracingPolicy filter benchmark); see that file.

Kept apart from _common.py (which other benchmarks share): an openat loop in C compiled at run time,
TracingPolicy YAML with value sets of a chosen size, bpftrace started and stopped by PID, the list of
BPF programs attached to ``syscalls:sys_enter_openat`` (``bpftool perf``), and the kernel's BPF
run-time statistics switched on through a BPF_ENABLE_STATS file descriptor (reference-counted by the
kernel together with ``kernel.bpf_stats_enabled``: closing the fd restores the previous state even if
someone else has the statistics on too).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

import _common as C

LOOP_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* openat_loop PATH ITERATIONS BATCHES: one untimed warm-up batch, then BATCHES timed batches of
 * ITERATIONS x (openat(AT_FDCWD, PATH, O_RDONLY) + close); prints, one batch a line, the ns per
 * open+close in wall time (CLOCK_MONOTONIC) and in this thread's CPU time (CLOCK_THREAD_CPUTIME_ID:
 * user + system, BPF programs included, time spent preempted by other work excluded). */
static double now_ns(clockid_t clk)
{
	struct timespec t;

	clock_gettime(clk, &t);
	return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
	const char *path;
	long n;
	int batches;

	if (argc != 4) {
		fprintf(stderr, "usage: %s PATH ITERATIONS BATCHES\n", argv[0]);
		return 2;
	}
	path = argv[1];
	n = atol(argv[2]);
	batches = atoi(argv[3]);
	for (int b = -1; b < batches; b++) {
		double t0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_THREAD_CPUTIME_ID), t1, c1;

		for (long i = 0; i < n; i++) {
			int fd = openat(AT_FDCWD, path, O_RDONLY);

			if (fd < 0) {
				fprintf(stderr, "openat %s: %s\n", path, strerror(errno));
				return 1;
			}
			close(fd);
		}
		c1 = now_ns(CLOCK_THREAD_CPUTIME_ID);
		t1 = now_ns(CLOCK_MONOTONIC);
		if (b >= 0)
			printf("%.3f %.3f\n", (t1 - t0) / (double)n, (c1 - c0) / (double)n);
	}
	return 0;
}
"""


def build_loop(workdir: Path) -> Path:
    """Compile the openat loop with gcc -O2 into workdir."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("gcc not found: apt-get install -y gcc")
    src = workdir / "openat_loop.c"
    exe = workdir / "openat_loop"
    src.write_text(LOOP_C)
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(exe), str(src)], check=True, timeout=60)
    return exe


def run_loop(exe: Path, path: str, iterations: int, batches: int, cpu: int) -> list[tuple[float, float]]:
    """(wall, CPU) ns per open+close of each batch, the loop pinned to one CPU (taskset)."""
    r = subprocess.run(["taskset", "-c", str(cpu), str(exe), path, str(iterations), str(batches)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openat loop failed ({r.returncode}): {r.stderr.strip()}")
    return [(float(a), float(c)) for a, c in (line.split() for line in r.stdout.splitlines())]


# ------------------------------------------------------------------------------------------ policies
def policy_yaml(name: str, op: str, values: list, arg_index: int = 1, arg_type: str = "string",
                action: str = "") -> str:
    """A kprobes/syscall policy on sys_openat with one matchArgs filter (``op`` over ``values``), and one
    matchActions ``action`` (Sigkill, ...) when given."""
    vals = "\n".join(f"          - {json.dumps(v) if isinstance(v, str) else json.dumps(str(v))}" for v in values)
    act = f"\n      matchActions:\n      - action: {action}" if action else ""
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args:
    - index: {arg_index}
      type: {arg_type}
    selectors:
    - matchArgs:
      - index: {arg_index}
        operator: {op}
        values:
{vals}{act}
"""


def other_paths(n: int, share_tmp: bool = True) -> list[str]:
    """n distinct paths that are neither the watched file nor the opened one, spread over a few
    top-level directories as real policies are: a quarter under /tmp/, like the opened file, unless
    share_tmp is False (then none shares more than "/" with it)."""
    tops = ("/etc/app", "/usr/lib/app", "/var/lib/app") + (("/tmp/other",) if share_tmp else ())
    return [f"{tops[i % len(tops)]}{i:05d}/conf" for i in range(n)]


def deep_prefixes(query: str, n: int) -> list[str]:
    """n distinct prefixes that follow ``query`` for k bytes and then leave it (k = 1 .. len-1, in
    turn): each one adds a branch to the LPM trie along the query's own path, the worst case for a
    lookup of ``query`` (none is a prefix of it, so it still does not match)."""
    out: list[str] = []
    seen: set[str] = set()
    i = 0
    while len(out) < n:
        k = 1 + i % (len(query) - 1)
        c = "~" if query[k] != "~" else "!"
        v = f"{query[:k]}{c}{i}"
        if v not in seen and not query.startswith(v):
            seen.add(v)
            out.append(v)
        i += 1
    return out


# ------------------------------------------------------------------------------------------ raw floor
RAW_FLOOR_C = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
char LICENSE[] SEC("license") = "GPL";

/* the floor of lanner's syscall dispatcher: an empty program on the BTF raw tracepoint sys_enter */
SEC("tp_btf/sys_enter")
int BPF_PROG(raw_floor, struct pt_regs *regs, long id)
{
	return 0;
}
"""
ROOT = Path(__file__).resolve().parents[1]


class RawFloor:
    """An empty tp_btf/sys_enter program (compiled with clang into workdir), attached by this process:
    what any program on the raw syscall tracepoint costs (the syscall slow path + the raw tracepoint's
    BPF dispatch), without any of lanner's work."""

    def __init__(self, workdir: Path) -> None:
        clang = shutil.which("clang-19") or shutil.which("clang")
        if clang is None:
            raise RuntimeError("clang not found")
        src, obj = workdir / "raw_floor.bpf.c", workdir / "raw_floor.bpf.o"
        src.write_text(RAW_FLOOR_C)
        subprocess.run([clang, "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", f"-I{ROOT / 'build' / 'vmlinux'}",
                        "-I/usr/include/x86_64-linux-gnu", "-c", str(src), "-o", str(obj)], check=True, timeout=60,
                       capture_output=True)
        from lanner.bpf.objects import BpfObject

        self.obj = BpfObject.open(obj)
        self.obj.load()
        self.link = None

    def attach(self) -> None:
        self.link = self.obj.program("raw_floor").attach()

    def detach(self) -> None:
        if self.link is not None:
            self.link.destroy()
            self.link = None

    def prog_stats(self) -> dict[str, int]:
        return C.bpf_prog_stats(os.getpid())["raw_floor"]

    def close(self) -> None:
        self.detach()
        self.obj.close()


# ------------------------------------------------------------------------------------------ bpftrace
def bpftrace_path() -> str | None:
    return shutil.which("bpftrace")


# tracepoints whose programs run on the loop's openat: the openat syscall tracepoints, and the raw syscall
# tracepoints (lanner's syscall dispatcher; any program there also turns the syscall slow path on)
OPENAT_TRACEPOINTS = ("sys_enter_openat", "sys_exit_openat", "sys_enter", "sys_exit")


def openat_attachments() -> list[dict]:
    """BPF programs attached to a tracepoint that runs on openat (OPENAT_TRACEPOINTS), from
    ``bpftool perf -j``: [{pid, fd, prog_id, fd_type, tracepoint}]."""
    try:
        r = subprocess.run(["bpftool", "perf", "-j"], capture_output=True, text=True, timeout=10)
        rows = json.loads(r.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    return [x for x in rows if (x.get("tracepoint") or x.get("tp_name")) in OPENAT_TRACEPOINTS]


class Bpftrace:
    """bpftrace running a script, started with a parent-death signal and stopped by PID."""

    def __init__(self, script: str, workdir: Path, tag: str) -> None:
        exe = bpftrace_path()
        if exe is None:
            raise RuntimeError("bpftrace not installed")
        self.out_path = workdir / f"bpftrace-{tag}.out"
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(C.guarded([exe, "-e", script]), stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def wait_attached(self, timeout: float = 20.0) -> None:
        """Until bpftool shows this process's program on sys_enter_openat."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bpftrace exited ({self.proc.returncode}): {self.output()[-2000:]}")
            if any(a.get("pid") == self.pid for a in openat_attachments()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"bpftrace not attached after {timeout} s: {self.output()[-2000:]}")
            time.sleep(0.02)

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def prog_stats(self) -> dict[str, int]:
        """run_time_ns and run_cnt summed over this bpftrace's programs."""
        st = C.bpf_prog_stats(self.pid)
        return {"run_time_ns": sum(s["run_time_ns"] for s in st.values()),
                "run_cnt": sum(s["run_cnt"] for s in st.values())}

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGINT)  # bpftrace prints its maps and detaches on SIGINT
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


def bpftrace_works(workdir: Path) -> str | None:
    """None if bpftrace can attach a sys_enter_openat tracepoint program here, else why not."""
    if bpftrace_path() is None:
        return "bpftrace is not installed (apt-get install -y bpftrace)"
    bt = Bpftrace('tracepoint:syscalls:sys_enter_openat /pid == 1/ { }', workdir, "probe")
    try:
        bt.wait_attached(timeout=20)
        return None
    except RuntimeError as exc:
        return str(exc)
    finally:
        bt.stop()


# ------------------------------------------------------------------------------------------ BPF stats
class BpfStats:
    """Kernel BPF run-time statistics on while the block runs (BPF_ENABLE_STATS fd, closed after)."""

    def __enter__(self) -> "BpfStats":
        import ctypes

        from lanner.bpf import libbpf as L

        self.before = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
        self.fd = L.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def restored(self) -> str:
        return Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()


# lanner's program serving syscall kprobes: the syscall dispatcher on sys_enter (tp_btf or raw_tp flavour),
# or, on kernels without raw tracepoints, generic_tp on syscalls/sys_enter_openat
LANNER_PROGS = ("gen_sys_enter", "gen_sys_enter_r", "generic_tp")


def lanner_prog_stats(pid: int) -> dict[str, int]:
    """run_time_ns and run_cnt of the agent's program serving the benchmark's policy."""
    st = C.bpf_prog_stats(pid)
    for name in LANNER_PROGS:
        if name in st:
            return st[name]
    raise KeyError(f"no lanner syscall program held by pid {pid} (has {sorted(st)})")


def prog_stats_by_name(pid: int, name: str) -> dict[str, int]:
    st = C.bpf_prog_stats(pid)
    for k, v in st.items():
        if k == name or k.startswith(name[:15]):
            return v
    raise KeyError(f"no BPF program {name!r} held by pid {pid} (has {sorted(st)})")


# ------------------------------------------------------------------------------------------ figures
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def mean_sd(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


# ------------------------------------------------------------------------------------------ perf profile
# Where the time of the policy program goes, from a cpu-clock sampling profile of the loop with call
# graphs (``perf record -g``; no hardware PMU in this VM, and ``bpftool prog profile`` needs fentry,
# which this kernel refuses). Rows are inclusive ("children") sample shares; each is a part of the
# program, except "dispatch", which is the tracepoint path around it.
PROFILE_ROWS = (
    ("read the string argument (bpf_probe_read_user_str)", ("bpf_probe_read_user_str",)),
    ("copy kernel memory: binary name for matchBinaries, raw args (bpf_probe_read_kernel)", ("bpf_probe_read_kernel",)),
    ("hash map lookups (gen_hooks, execve_map; gen_str_set/gen_int_set for Equal/InMap)", ("__htab_map_lookup_elem",)),
    ("LPM trie lookup (gen_str_lpm)", ("trie_lookup_elem",)),
)


def perf_path() -> str | None:
    return shutil.which("perf")


def perf_profile(exe: Path, path: str, iterations: int, cpu: int, workdir: Path,
                 tag: str) -> dict[str, tuple[float, float]]:
    """{symbol: (inclusive %, self %) of samples} for a sampled run of the loop (perf record -g, cpu-clock)."""
    perf = perf_path()
    if perf is None:
        raise RuntimeError("perf not installed (apt-get install -y linux-perf)")
    data = workdir / f"perf-{tag}.data"
    subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-F", "10000", "-g", "-o", str(data), "--",
                    "taskset", "-c", str(cpu), str(exe), path, str(iterations), "2"],
                   check=True, capture_output=True, timeout=60)
    r = subprocess.run([perf, "report", "-i", str(data), "--children", "--sort", "sym", "--stdio", "-g", "none"],
                       capture_output=True, text=True, timeout=60)
    data.unlink(missing_ok=True)
    out: dict[str, tuple[float, float]] = {}
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) >= 4 and f[0].endswith("%") and f[1].endswith("%") and f[2] in ("[k]", "[.]"):
            out[" ".join(f[3:])] = (float(f[0][:-1]), float(f[1][:-1]))
    return out


def share(profile: dict[str, tuple[float, float]], names: tuple[str, ...], inclusive: bool = True) -> float:
    """% of samples in these symbols; a name "bpf_prog:X" means the JITed program or subprogram X
    (perf names them bpf_prog_<tag>_<X>)."""
    i = 0 if inclusive else 1
    total = 0.0
    for k, v in profile.items():
        for n in names:
            if (n.startswith("bpf_prog:") and k.startswith("bpf_prog_") and k.endswith("_" + n[9:])) or k == n:
                total += v[i]
    return total
