"""Shared helpers for the benchmarks in bench/ (not a test module; nothing here is timed by pytest).

Every benchmark:
  * runs as root, standalone: ``.venv/bin/python bench/NAME.py``;
  * starts agents as users do (``python -m lanner agent ...``) and stops them by PID;
  * pins only under ``/sys/fs/bpf/lanner-bench-*`` and removes what it pinned;
  * bounds its own run time (``signal.alarm``) and cleans up on any exit (``Cleanup``).
"""

from __future__ import annotations

import contextlib
import json
import ctypes
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
FLOOD_OBJECT = ROOT / "bench" / "bpf" / "obj" / "flood.bpf.o"
BPFFS = Path("/sys/fs/bpf")

if str(ROOT) not in sys.path:  # so `import lanner` works from a plain checkout too
    sys.path.insert(0, str(ROOT))


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("benchmarks load BPF programs: run as root")


def machine() -> dict:
    import platform

    out = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:  # the agent code measured (the lead's tree moves fast: figures are per commit)
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "lanner", "sensors",
                                "exporter", "policy"], capture_output=True, text=True, timeout=5).stdout.strip()
        out["commit"] = rev + ("+local changes" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


class LoadMonitor:
    """CPU used by processes other than this benchmark (and the children it waited for) during a run.

    The machine may be shared: other work perturbs every figure, so each benchmark reports this."""

    def __init__(self) -> None:
        self.others_seen: set[int] = set(self.other_agents())
        self.t0 = time.monotonic()
        self.busy0 = self._busy()
        self.own0 = self._own()
        self.load0 = os.getloadavg()[0]

    @staticmethod
    def other_agents() -> list[int]:
        """PIDs of lanner agents this benchmark did not start (their BPF programs also run on every
        exec and exit of the machine)."""
        me = os.getpid()
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    argv = fh.read().split(b"\0")
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if b"agent" in argv and any(a.endswith(b"lanner") for a in argv) and ppid != me:
                out.append(int(d))
        return out

    def sample(self) -> None:
        """Note other agents running now (call it during the measurement)."""
        self.others_seen.update(self.other_agents())

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        return (f[0] + f[1] + f[2] + f[5] + f[6]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def report(self, extra_own_s: float = 0.0) -> str:
        wall = time.monotonic() - self.t0
        foreign = (self._busy() - self.busy0) - (self._own() - self.own0) - extra_own_s
        cores = max(foreign, 0.0) / wall
        note = "" if cores < 0.15 else "  <-- the machine was busy with other work: figures are perturbed"
        self.sample()
        others = ""
        if self.others_seen:
            others = (f"\n  and {len(self.others_seen)} lanner agent(s) not started by this benchmark ran during it "
                      f"(pids {sorted(self.others_seen)}): their BPF programs run on every exec too")
        return (f"background: other processes used {cores:.2f} of {os.cpu_count()} cores on average over "
                f"{wall:.0f} s (load average at start {self.load0:.2f}){note}{others}")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ------------------------------------------------------------------------------------------ cleanup
class Cleanup(contextlib.ExitStack):
    """An ExitStack that also turns SIGTERM/SIGINT/SIGALRM into exceptions, so ``finally`` blocks run,
    and arms a hard time limit for the whole benchmark."""

    def __init__(self, budget_s: float) -> None:
        super().__init__()
        self.budget_s = budget_s

    def __enter__(self) -> "Cleanup":
        super().__enter__()

        def on_signal(signum: int, _frame: object) -> None:
            if signum == signal.SIGALRM:
                raise TimeoutError(f"benchmark exceeded its {self.budget_s:.0f} s budget")
            raise KeyboardInterrupt(signal.Signals(signum).name)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
        signal.alarm(int(self.budget_s))

        def restore() -> None:
            signal.alarm(0)
            for s, h in old.items():
                signal.signal(s, h)

        self.callback(restore)
        return self

    def tempdir(self, prefix: str, base: str | None = None) -> Path:
        d = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        self.callback(shutil.rmtree, d, True)
        return d

    def pin_dir(self, tag: str) -> Path:
        """A fresh /sys/fs/bpf/lanner-bench-TAG-PID directory, emptied and removed at exit."""
        from lanner.bpf import fs

        fs.ensure_bpffs()
        d = BPFFS / f"lanner-bench-{tag}-{os.getpid()}"
        d.mkdir(parents=True, exist_ok=True)

        def remove() -> None:
            if d.exists():
                for p in d.iterdir():
                    p.unlink(missing_ok=True)
                d.rmdir()

        self.callback(remove)
        return d


def guarded(cmd: list[str]) -> list[str]:
    """``cmd`` run so that it gets SIGTERM if the benchmark dies (even by SIGKILL): no agent or consumer
    outlives it. setpriv sets the parent-death signal and execs (same PID); no preexec_fn, which is
    unsafe once gRPC's threads run in this process."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd


# ------------------------------------------------------------------------------------------ agent
def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProc:
    """A real agent started with ``python -m lanner agent``.

    Its gRPC API listens on a unix socket in the work directory (``status()``, as ``lanner status``
    does), its health server on a free loopback port (``ready()``: GET /readyz, no gRPC in this
    process, which matters for a benchmark that forks), its info file stays in the work directory."""

    def __init__(self, workdir: Path, *extra: str, pin_dir: Path | None = None, export: bool = True,
                 name: str = "agent") -> None:
        self.workdir = workdir
        self.export_file = workdir / f"{name}-events.log"
        self.socket = workdir / f"{name}.sock"
        self.address = f"unix://{self.socket}"
        self.stderr_path = workdir / f"{name}.stderr"
        self.health_port = free_port()
        prelude = os.environ.get("LANNER_BENCH_AGENT_PRELUDE")
        if prelude:
            # what-if experiments: Python run in the agent process before the CLI (e.g. "import gc; gc.disable()")
            launcher = [PY, "-c", prelude + "\nimport sys\nfrom lanner.cli import main\nsys.exit(main())"]
        else:
            launcher = [PY, "-m", "lanner"]
        cmd = launcher + ["agent", "--no-export-stdout", "--node-name", "bench",
                          "--server-address", self.address, "--info-file", str(workdir / f"{name}-info.json"),
                          "--health-server-address", f"127.0.0.1:{self.health_port}"]
        if export:
            # rotation effectively disabled: one file, counted and truncated by the benchmark
            cmd += ["--export-filename", str(self.export_file), "--export-file-max-size-mb", "1000000"]
        if pin_dir is not None:
            cmd += ["--bpf-pin-dir", str(pin_dir)]
        cmd += list(extra)
        self.cmd = cmd
        self._client = None
        self.t_spawn = time.monotonic()
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(guarded(cmd), stdout=subprocess.DEVNULL, stderr=self._err,
                                     stdin=subprocess.DEVNULL, cwd=str(ROOT))
        self.pid = self.proc.pid
        self.t_ready: float | None = None  # seconds from spawn to the first answer saying ready

    def status(self, timeout: float = 5.0) -> dict:
        """The agent's status over its gRPC API (what ``lanner status`` shows)."""
        from lanner.client import AgentClient

        if self._client is None:
            self._client = AgentClient(self.address, timeout=timeout)
        self._client.timeout = timeout
        return self._client.status()

    def ready(self) -> bool:
        """GET /readyz on the health server (200 once sensors are attached and the cache seeded)."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.health_port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def healthz(self) -> tuple[int, dict]:
        """GET /healthz: (HTTP status, body with event_loop_age_s)."""
        import http.client
        import json

        conn = http.client.HTTPConnection("127.0.0.1", self.health_port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b"{}")
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 30.0, poll_s: float = 0.005, via: str = "status") -> dict:
        """Poll until the agent says it is ready: through its gRPC status (``via="status"``; returns the
        status) or its /readyz endpoint (``via="readyz"``; returns {})."""
        deadline = self.t_spawn + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("agent exited during start:\n" + self.log_tail())
            try:
                if via == "readyz":
                    if self.ready():
                        self.t_ready = time.monotonic() - self.t_spawn
                        return {}
                elif self.socket.exists():
                    st = self.status(timeout=2.0)
                    if st.get("ready_s") is not None:
                        self.t_ready = time.monotonic() - self.t_spawn
                        return st
            except (OSError, RuntimeError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent not ready after {timeout} s:\n" + self.log_tail())
            time.sleep(poll_s)

    def wait_policies_loaded(self, timeout: float = 60.0) -> None:
        """Until no tracing policy is still loading (they load in the background after ready), asked through
        ``lanner status`` in a child process (no gRPC client in a process that forks)."""
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run([PY, "-m", "lanner", "status", "--server-address", self.address, "-o", "json"],
                                 capture_output=True, text=True, cwd=str(ROOT))
            try:
                if not json.loads(out.stdout).get("policy_states", {}).get("loading"):
                    return
            except ValueError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"policies still loading after {timeout} s:\n" + self.log_tail())
            time.sleep(0.2)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def cpu_s(self) -> float:
        """CPU time of the agent process (all its threads), in seconds."""
        return cpu_s(self.pid)

    def memory(self) -> dict[str, int]:
        """VmRSS, VmHWM, RssAnon, RssFile, RssShmem from /proc/PID/status, in KiB."""
        out = {}
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0])
        return out

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> int | None:
        """SIGTERM by PID (after SIGCONT, in case it was paused), then SIGKILL if it does not exit in 15 s."""
        self.resume()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._err.close()
        return self.proc.returncode


def cpu_s(pid: int) -> float:
    """CPU time of a process, all its threads, those that have ended included (user + system from
    /proc/PID/stat, in clock ticks: a sum over the live threads' schedstat loses the ended ones and can go
    backwards between two readings)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned_lost(pin_dir: Path) -> int:
    """The agent's ring-buffer loss counter, read from its pinned ``lanner_lost`` map (no API call)."""
    from lanner.bpf import libbpf as L
    from lanner.bpf.objects import MAP_TYPE_PERCPU_ARRAY, Codec, Map

    fd = L.bpf_obj_get(str(pin_dir / "process_lanner_lost").encode())
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"open {pin_dir}/process_lanner_lost")
    try:
        m = Map("lanner_lost", fd, MAP_TYPE_PERCPU_ARRAY, 4, 8, 16, Codec.struct("<I"), Codec.struct("<Q"))
        return sum(m.sum_percpu(i) for i in range(16))
    finally:
        os.close(fd)


def bpf_prog_stats(pid: int) -> dict[str, dict[str, int]]:
    """Run-time statistics of the BPF programs a process holds (from /proc/PID/fdinfo; counted only
    while kernel.bpf_stats_enabled is on, e.g. under ``lanner agent --enable-bpf-stats``).
    Returns {program name: {"run_time_ns", "run_cnt"}}."""
    import json

    by_id: dict[int, dict[str, int]] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "bpf-prog" not in os.readlink(f"/proc/{pid}/fd/{fd}"):
                continue
            info = {}
            with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                for line in fh:
                    k, _, v = line.partition(":")
                    info[k.strip()] = v.strip()
        except OSError:
            continue
        by_id[int(info["prog_id"])] = {"run_time_ns": int(info.get("run_time_ns", 0)),
                                       "run_cnt": int(info.get("run_cnt", 0))}
    out: dict[str, dict[str, int]] = {}
    for pid_, st in by_id.items():
        name = str(pid_)
        try:
            r = subprocess.run(["bpftool", "prog", "show", "id", str(pid_), "-j"], capture_output=True, text=True,
                               timeout=10)
            name = json.loads(r.stdout).get("name", name)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        out[name] = st
    return out


def start_agent(stack: Cleanup, workdir: Path, *extra: str, **kw) -> AgentProc:
    a = AgentProc(workdir, *extra, **kw)
    stack.callback(a.stop)
    return a


# ------------------------------------------------------------------------------------------ export files
class LineCounter:
    """Counts the lines of a growing file incrementally; ``truncate()`` drops what was counted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                while True:
                    chunk = fh.read(1 << 22)
                    if not chunk:
                        break
                    # count only complete lines; a partial last line is counted on the next poll
                    last_nl = chunk.rfind(b"\n")
                    if last_nl < 0:
                        break
                    self.lines += chunk.count(b"\n", 0, last_nl + 1)
                    self.offset += last_nl + 1
                    if last_nl + 1 < len(chunk):
                        fh.seek(self.offset)
        except FileNotFoundError:
            pass
        return self.lines

    def truncate(self) -> None:
        """Empty the file (the agent appends with O_APPEND, so it keeps writing at the new end)."""
        self.poll()
        with open(self.path, "r+b") as fh:
            fh.truncate(0)
        self.offset = 0


# ------------------------------------------------------------------------------------------ ring positions
class RingWatch:
    """Read-only view of a pinned ring buffer's producer and consumer positions (bytes, monotonic).

    Observes how far the consumer (the agent) got without asking it anything: the agent answers its
    local API only between drain rounds, which can be seconds apart under load."""

    def __init__(self, pin: Path, size: int) -> None:
        import mmap

        from lanner.bpf import libbpf as L

        self.size = size
        self.torn = 0  # consumer positions read mid-update (see positions())

        fd = L.bpf_obj_get(str(pin).encode())
        if fd < 0:
            raise OSError(ctypes.get_errno(), f"open pinned ring buffer {pin}")
        try:
            page = mmap.PAGESIZE
            self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=0)
            self._prod = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        finally:
            os.close(fd)

    def positions(self) -> tuple[int, int]:
        """(producer, consumer) positions.

        The consumer position is read once more when it looks impossible (more than the ring size
        behind the producer): lanner's RingBuffer stores it with ``struct.pack_into``, which writes
        the 8 bytes one at a time, so a concurrent reader can catch it half written. Such reads are
        counted in ``torn``."""
        import struct

        p = struct.unpack_from("<Q", self._prod, 0)[0]
        k = struct.unpack_from("<Q", self._cons, 0)[0]
        for _ in range(3):
            if p - k <= self.size:
                break
            self.torn += 1
            k = struct.unpack_from("<Q", self._cons, 0)[0]
        return p, k

    def close(self) -> None:
        self._cons.close()
        self._prod.close()


# ------------------------------------------------------------------------------------------ flood source
class Flood:
    """bench/bpf/flood.bpf.o: each getppid() of this process emits ``batch`` synthetic exec(+exit) records.

    With ``pin_dir`` (an agent's --bpf-pin-dir), the records go into that agent's ring buffer and its
    loss counter; without, into the object's own ring buffer (for the raw-drain baseline).
    """

    FLAG_EXITS = 1

    def __init__(self, pin_dir: Path | None = None, rb_size: int = 8 << 20, pid_base: int = 10_000_000) -> None:
        from lanner.bpf.objects import BpfObject, Codec

        if not FLOOD_OBJECT.exists():
            raise FileNotFoundError(f"{FLOOD_OBJECT} missing: run 'make bpf'")
        self.obj = BpfObject.open(FLOOD_OBJECT)
        try:
            self.obj.set_config(target_tgid=os.getpid(), pid_base=pid_base)
            if pin_dir is not None:
                self.obj.reuse_pinned_map("events", str(pin_dir / "process_events"))
                self.obj.reuse_pinned_map("lanner_lost", str(pin_dir / "process_lanner_lost"))
            else:
                self.obj.resize_map("events", rb_size)
            self.obj.load()
            u32 = Codec.struct("<I")
            self.cfg = self.obj.map("flood_cfg", key=u32, value=u32)
            self.stats_map = self.obj.map("flood_stats", key=u32, value=Codec.struct("<Q"))
            self.lost_map = self.obj.map("lanner_lost", key=u32, value=Codec.struct("<Q"))
            self.set(0, True)
            self.obj.program("lanner_flood").attach_tracepoint("syscalls", "sys_enter_getppid")
        except BaseException:
            self.obj.close()
            raise

    def set(self, batch: int, exits: bool = True) -> None:
        """Records pairs per getppid() (exec + exit), or execs only."""
        self.cfg[0] = batch
        self.cfg[1] = self.FLAG_EXITS if exits else 0
        self.batch = batch
        self.per_call = batch * (2 if exits else 1)

    def submitted(self) -> int:
        return self.stats_map.sum_percpu(0) + self.stats_map.sum_percpu(1)

    def lost(self) -> int:
        return sum(self.lost_map.sum_percpu(op) for op in (1, 2, 5))

    def pin_events(self, path: Path) -> None:
        self.obj.map("events").pin(str(path))

    def close(self) -> None:
        self.obj.close()


def pace(events_per_s: float, duration_s: float, per_call: int, on_tick: Callable[[], None] | None = None) -> dict:
    """Call getppid() (each call emits ``per_call`` records) at an even rate for ``duration_s``.

    Returns calls made, offered records and the wall time. With events_per_s <= 0, flood as fast as
    possible."""
    getppid = os.getppid
    calls_per_s = events_per_s / per_call if events_per_s > 0 else 0.0
    t0 = time.monotonic()
    end = t0 + duration_s
    done = 0
    sleep = time.sleep
    mono = time.monotonic
    while True:
        now = mono()
        if now >= end:
            break
        if calls_per_s:
            due = int((now - t0) * calls_per_s) + 1
            while done < due:
                getppid()
                done += 1
            sleep(0.0005)
        else:
            for _ in range(64):
                getppid()
            done += 64
        if on_tick is not None:
            on_tick()
    wall = mono() - t0
    return {"calls": done, "offered": done * per_call, "wall_s": wall}


def fmt_rate(x: float) -> str:
    return f"{x / 1000:.1f}k"
