"""The verifier budget: what the kernel's verifier spends on every BPF program lanner ships.

Each program is loaded as the agent loads it (its object, its autoload set, its attach target for
trampoline, LSM and BTF-tracepoint programs) with libbpf's per-program log at ``BPF_LOG_STATS`` (4), so
the verifier reports, per program, the instructions it processed, its peak states and its verification
time. Nothing is attached. A program this kernel refuses before verification (a program type it denies,
a missing attach target) is reported as ``unsupported`` with the kernel's reason, not as a failure.

The rule (docs/kernels.md): every program stays at or below ``BUDGET`` processed instructions, 20 % of
the verifier's 1M limit, on every kernel lanner runs on. ``lanner probe --programs`` prints the table.
"""

from __future__ import annotations

import ctypes
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from lanner.bpf import libbpf as L
from lanner.bpf.objects import BpfError, BpfObject

LIMIT = 1_000_000  # BPF_COMPLEXITY_LIMIT_INSNS
BUDGET = LIMIT // 5  # lanner's rule: 20 % of the limit, on every kernel
BPF_LOG_STATS = 4
_LOG_BYTES = 1 << 20

ROOT = Path(__file__).resolve().parents[2]
_REPO_OBJ = {  # import name dir -> obj dir (the package-dir mapping of pyproject.toml)
    "generic": ROOT / "sensors" / "generic" / "bpf" / "obj",
    "sensors": ROOT / "sensors" / "bpf" / "obj",
    "netdp": ROOT / "netdp" / "bpf" / "obj",
    "kernel": Path(__file__).resolve().parent / "obj",
}

_STATS = re.compile(r"processed (\d+) insns \(limit \d+\) max_states_per_insn (\d+) total_states (\d+) "
                    r"peak_states (\d+)")
_TIME = re.compile(r"verification time (\d+) usec")

_set_log_level = L._fn("bpf_program__set_log_level", ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
_set_log_buf = L._fn("bpf_program__set_log_buf", ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t)


@dataclass(frozen=True)
class Load:
    """One load of an object as the agent does it: the programs it loads and their attach target."""

    obj: str               # "<dir>/<name>.bpf.o" under _REPO_OBJ
    programs: tuple[str, ...]
    target: str = ""        # fentry/fexit/fmod_ret/LSM/tp_btf attach target (set before load)
    config: tuple[tuple[str, int], ...] = ()

    @property
    def path(self) -> Path:
        d, name = self.obj.split("/")
        return _REPO_OBJ[d] / name


# Every program lanner ships, loaded as the agent loads it. Trampoline programs get a representative
# target; the engine loads one instance per hooked function, with the same code.
LOADS: tuple[Load, ...] = (
    Load("sensors/process.bpf.o", ("lanner_exec", "lanner_fork", "lanner_exit")),
    Load("generic/generic_tp.bpf.o", ("generic_tp",)),
    Load("generic/generic_uprobe.bpf.o", ("generic_uprobe", "generic_uretprobe")),
    Load("generic/generic_kprobe.bpf.o", ("generic_kprobe", "generic_kretprobe")),
    Load("generic/generic_sys.bpf.o", ("gen_sys_enter", "gen_sys_exit")),
    Load("generic/generic_sys.bpf.o", ("gen_sys_enter_r", "gen_sys_exit_r")),
    Load("generic/generic_tpbtf.bpf.o", ("generic_tp_btf",), target="sched_process_exec", config=(("cfg_hook_id", 1),)),
    Load("generic/generic_fentry.bpf.o", ("generic_fentry",), target="security_file_open",
         config=(("cfg_hook_id", 1),)),
    Load("generic/generic_fentry.bpf.o", ("generic_fexit",), target="security_file_open", config=(("cfg_hook_id", 1),)),
    Load("generic/generic_lsm.bpf.o", ("generic_lsm",), target="file_open", config=(("cfg_hook_id", 1),)),
    Load("generic/generic_fmodret.bpf.o", ("generic_fmodret",), target="security_file_open"),
    Load("netdp/datapath.bpf.o", ()),  # every program of the object
)


@dataclass
class ProgramCost:
    object: str
    program: str
    status: str = "ok"         # ok | over_budget | rejected | unsupported | missing
    insns: int = 0             # processed instructions
    peak_states: int = 0
    total_states: int = 0
    verify_us: int = 0         # the verifier's own time
    load_ms: float = 0.0       # the whole object load, shared by its programs
    target: str = ""
    reason: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def percent(self) -> float:
        return 100.0 * self.insns / LIMIT

    def as_dict(self) -> dict:
        d = asdict(self)
        d["percent_of_limit"] = round(self.percent, 2)
        d.pop("extra")
        return d


def _parse(text: str, cost: ProgramCost) -> None:
    m = _STATS.search(text)
    if m:
        cost.insns, cost.total_states, cost.peak_states = int(m[1]), int(m[3]), int(m[4])
    t = _TIME.search(text)
    if t:
        cost.verify_us = int(t[1])
    big = re.search(r"BPF program is too large\. Processed (\d+) insn", text)
    if big:
        cost.insns = int(big[1])


def _last_lines(text: str, n: int = 4) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith(("verification time",
                                                                                          "stack depth"))]
    return " | ".join(lines[-n:])


def _programs_of(load: Load) -> list[str]:
    if load.programs:
        return list(load.programs)
    obj = BpfObject.open(load.path)
    try:
        return list(obj.programs)
    finally:
        obj.close()


def _measure_one(load: Load, name: str) -> ProgramCost:
    """Load program ``name`` of ``load`` alone (every other program's autoload off) with a stats log."""
    from lanner.sensors.generic.bpf_attach import set_attach_target

    cost = ProgramCost(load.obj, name, target=load.target)
    obj = BpfObject.open(load.path)
    try:
        buf = ctypes.create_string_buffer(_LOG_BYTES)
        for other, prog in obj.programs.items():
            prog.set_autoload(other == name)
        prog = obj.program(name)
        _set_log_buf(prog._ptr, buf, _LOG_BYTES)
        _set_log_level(prog._ptr, BPF_LOG_STATS)
        if load.target:
            set_attach_target(prog, load.target)
        if load.config:
            obj.set_config(**dict(load.config))
        t0 = time.perf_counter()
        try:
            obj.load()
            err = None
        except BpfError as exc:
            err = exc
        cost.load_ms = round((time.perf_counter() - t0) * 1000, 1)
        text = buf.value.decode(errors="replace")
        _parse(text, cost)
        if err is None:
            cost.status = "ok" if cost.insns <= BUDGET else "over_budget"
        elif cost.insns or text.strip():
            cost.status, cost.reason = "rejected", _last_lines(text) or err.what
        else:  # refused before verification: the program type or its target is denied here
            cost.status = "unsupported" if err.errno in (1, 22, 95, 524) else "rejected"
            cost.reason = L.errno_text(err.errno)
    except OSError as exc:  # the attach target is not in this kernel's BTF
        cost.status, cost.reason = "unsupported", str(exc)
    finally:
        obj.close()
    return cost


def _measure(load: Load) -> list[ProgramCost]:
    if not load.path.exists():
        return [ProgramCost(load.obj, p, status="missing", reason=f"{load.path} not built ('make bpf')")
                for p in (load.programs or ("*",))]
    return [_measure_one(load, name) for name in _programs_of(load)]


def measure(loads: Iterable[Load] = LOADS) -> list[ProgramCost]:
    out: list[ProgramCost] = []
    for load in loads:
        out.extend(_measure(load))
    return out


def table(costs: list[ProgramCost]) -> str:
    head = f"{'object':<26} {'program':<20} {'insns':>9} {'% limit':>8} {'peak st':>8} {'verify ms':>10}  status"
    rows = [head, "-" * len(head)]
    for c in costs:
        rows.append(f"{c.object.split('/')[1]:<26} {c.program:<20} {c.insns:>9,} {c.percent:>7.1f}% "
                    f"{c.peak_states:>8,} {c.verify_us / 1000:>10.1f}  {c.status}"
                    + (f": {c.reason[:140]}" if c.reason else ""))
    total = sum(c.verify_us for c in costs) / 1000
    rows.append(f"budget: {BUDGET:,} processed insns per program (20 % of {LIMIT:,}); "
                f"verification time of all programs {total:.1f} ms")
    return "\n".join(rows)
