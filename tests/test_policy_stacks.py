"""Post ``kernelStackTrace`` / ``userStackTrace`` (lanner.sensors.generic.stacks, gen_stacks in generic_core.bpf.h).

On the real kernel: a syscall hook (the sys_enter dispatcher here, fentry on __x64_sys_X in the kernel-matrix
guests) and a uprobe, both scoped to a small C program the test builds (main -> lanner_middle -> lanner_leaf,
frame pointers kept), which stays alive until its events are read so that its maps can be symbolized. The stacks
are read once and deleted: gen_stacks is empty afterwards. Also the symbolizers on their own (a kallsyms that
hides addresses, an ELF file's offsets) and what is not served (imaHash).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from lanner.exporter.api.gen.tetragon import sensors_pb2
from lanner.sensors.generic.stacks import ElfSymbols, KernelSymbols, Stacks, UserSymbols
from tests.test_policy_operators import Env, body, env, unavailable  # noqa: F401  (env: the module fixture)

bpf = pytest.mark.bpf

PROG = r"""
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>

__attribute__((noinline)) long lanner_leaf(long x)
{
	return syscall(SYS_getppid) + x;
}

__attribute__((noinline)) long lanner_middle(long x)
{
	return lanner_leaf(x + 1) + 1;
}

int main(int argc, char **argv)
{
	char c;

	printf("%ld\n", lanner_middle(argc));
	fflush(stdout);
	return read(0, &c, 1) < 0; /* wait until the test has read the events */
}
"""


@pytest.fixture(scope="module")
def prog(tmp_path_factory) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("stacks")
    (d / "stacky.c").write_text(PROG)
    exe = d / "lanner-stacky"
    subprocess.run([cc, "-O0", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-o", str(exe), str(d / "stacky.c")],
                   check=True, capture_output=True, timeout=120)
    return exe.resolve()


class Child:
    """The program, run until it printed (its syscall and probed calls are done); released on exit."""

    def __init__(self, exe: Path, keep: bool = True) -> None:
        self.exe, self.keep, self.p = exe, keep, None

    def start(self) -> None:
        self.p = subprocess.Popen([str(self.exe)], stdin=subprocess.PIPE if self.keep else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE)
        assert self.p.stdout.readline().strip()
        if not self.keep:
            assert self.p.wait(timeout=60) == 0

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.stdin.close()
            self.p.wait(timeout=60)


def _mine(evs: list[dict], pid: int) -> list[dict]:
    return [body(e) for e in evs if body(e)["process"]["pid"] == pid]


def _stack_entries(env: Env) -> list:
    return list(env.engine.stacks.map.keys())


def _release() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int(minor.split("-")[0])


def _symbols(trace: list[dict]) -> list[str]:
    return [f.get("symbol", "") for f in trace]


SYSCALL_SPEC = """
kprobes:
- call: sys_getppid
  syscall: true
  selectors:
  - matchBinaries:
    - operator: In
      values: ["{exe}"]
    matchActions:
    - action: Post
{flags}"""


@bpf
def test_syscall_kernel_and_user_stack(env: Env, prog: Path):
    spec = SYSCALL_SPEC.format(exe=prog, flags="      kernelStackTrace: true\n      userStackTrace: true\n")
    with env.load("stacks-syscall", spec) as st, Child(prog) as child:
        evs = env.run(child.start, "stacks-syscall")
        mine = _mine(evs, child.p.pid)
        assert len(mine) == 1, (st.info, evs)
        b = mine[0]
        assert b["function_name"] == "__x64_sys_getppid" and b["action"] == "KPROBE_ACTION_POST"
        ktrace, utrace = b["kernel_stack_trace"], b["user_stack_trace"]
    # the kernel stack: the syscall entry path, every frame a kernel text address with its symbol
    ksyms = _symbols(ktrace)
    assert {"do_syscall_64", "entry_SYSCALL_64", "entry_SYSCALL_64_after_hwframe"} & set(ksyms), ksyms
    assert all(int(f["address"]) >= 0xffff800000000000 for f in ktrace), ktrace
    assert all(f.get("symbol") for f in ktrace if not f.get("module")), ktrace
    # the user stack: libc's syscall(), then the callers' return addresses (frame pointers): lanner_middle
    # (lanner_leaf's caller), main; symbols from the program's ELF file, offsets in the file
    usyms = _symbols(utrace)
    assert "main" in usyms and "lanner_middle" in usyms, utrace
    assert usyms.index("lanner_middle") < usyms.index("main"), usyms
    main = utrace[usyms.index("main")]
    assert main["module"] == str(prog) and 0 < int(main["offset"]) < prog.stat().st_size, main
    assert all(0 < int(f["address"]) < 0x800000000000 for f in utrace), utrace
    assert utrace[0]["module"].endswith(".so.6") or utrace[0]["module"] == str(prog), utrace[0]
    # read once, then deleted: nothing is left in gen_stacks
    assert _stack_entries(env) == []


@bpf
def test_return_hook_stack_taken_at_the_return(env: Env, prog: Path):
    """return: true: the event is posted at the return, and its stacks are taken then (the exit program's ctx)."""
    spec = SYSCALL_SPEC.format(exe=prog, flags="      kernelStackTrace: true\n      userStackTrace: true\n")
    spec = spec.replace("  syscall: true\n", "  syscall: true\n  return: true\n  returnArg:\n    index: 0\n"
                        "    type: int\n")
    with env.load("stacks-return", spec), Child(prog) as child:
        evs = env.run(child.start, "stacks-return")
        mine = _mine(evs, child.p.pid)
        assert len(mine) == 1, evs
        b = mine[0]
    assert b["return"] == {"int_arg": os.getpid()}, b
    ksyms = _symbols(b["kernel_stack_trace"])
    assert {"do_syscall_64", "entry_SYSCALL_64", "entry_SYSCALL_64_after_hwframe"} & set(ksyms), ksyms
    assert "lanner_middle" in _symbols(b["user_stack_trace"]), b["user_stack_trace"]
    assert _stack_entries(env) == []


@bpf
def test_syscall_tracepoint_fallback(env: Env, prog: Path, monkeypatch):
    """Where the kernel has neither fentry/kprobes nor raw tracepoints a syscall hook runs on syscalls/sys_enter_X
    (generic_tp, bpf_get_stackid on the perf tracepoint's registers): the user stack, and the kernel one where the
    kernel hands the program kernel registers there (6.12 and 6.18 do; 6.1 passes the user's: no kernel stack)."""
    for f in ("tp_btf", "raw_tp", "fentry", "kprobe"):
        monkeypatch.setitem(env.engine.probe, f, False)
    spec = SYSCALL_SPEC.format(exe=prog, flags="      kernelStackTrace: true\n      userStackTrace: true\n")
    with env.load("stacks-systp", spec) as st, Child(prog) as child:
        assert "syscall tracepoints" in st.info, st.info
        evs = env.run(child.start, "stacks-systp")
        mine = _mine(evs, child.p.pid)
    assert len(mine) == 1, evs
    kst = mine[0].get("kernel_stack_trace")
    if kst or _release() >= (6, 12):
        assert "do_syscall_64" in _symbols(kst or []), kst
    assert "lanner_middle" in _symbols(mine[0]["user_stack_trace"]), mine[0]
    assert _stack_entries(env) == []


@bpf
def test_no_flags_no_stacks(env: Env, prog: Path):
    spec = SYSCALL_SPEC.format(exe=prog, flags="")
    with env.load("stacks-none", spec), Child(prog) as child:
        evs = env.run(child.start, "stacks-none")
        mine = _mine(evs, child.p.pid)
    assert len(mine) == 1, evs
    assert "kernel_stack_trace" not in mine[0] and "user_stack_trace" not in mine[0], mine[0]
    assert _stack_entries(env) == []


@bpf
def test_kernel_stack_only(env: Env, prog: Path):
    spec = SYSCALL_SPEC.format(exe=prog, flags="      kernelStackTrace: true\n")
    with env.load("stacks-kernel", spec), Child(prog) as child:
        evs = env.run(child.start, "stacks-kernel")
        mine = _mine(evs, child.p.pid)
    assert len(mine) == 1 and mine[0]["kernel_stack_trace"] and "user_stack_trace" not in mine[0], mine


UPROBE_SPEC = """
uprobes:
- path: "{exe}"
  symbols: [lanner_leaf]
  args:
  - index: 0
    type: int64
  selectors:
  - matchActions:
    - action: Post
      userStackTrace: true
      kernelStackTrace: true
"""


@bpf
def test_uprobe_user_stack(env: Env, prog: Path):
    with env.load("stacks-uprobe", UPROBE_SPEC.format(exe=prog)), Child(prog) as child:
        evs = env.run(child.start, "stacks-uprobe")
        mine = _mine(evs, child.p.pid)
    assert len(mine) == 1, evs
    b = mine[0]
    assert b["symbol"] == "lanner_leaf" and b["args"] == [{"long_arg": 2}], b
    # process_uprobe events carry no kernel stack (Tetragon's has no such field): kernelStackTrace is ignored
    assert "kernel_stack_trace" not in b
    trace = b["user_stack_trace"]
    syms = _symbols(trace)
    # the probe is at lanner_leaf's first instruction: its address is the first frame, the offset in the file
    # is the symbol's (what the uprobe attached to), then main (lanner_middle too where the kernel adds the
    # return address at a function's entry)
    assert syms[0] == "lanner_leaf" and trace[0]["module"] == str(prog), trace
    assert int(trace[0]["offset"]) == b_offset(b), (trace[0], b)
    assert "main" in syms, syms
    assert _stack_entries(env) == []


def b_offset(b: dict) -> int:
    return int(b["offset"])


@bpf
def test_uprobe_process_gone_addresses_only(env: Env, prog: Path):
    with env.load("stacks-gone", UPROBE_SPEC.format(exe=prog)):
        child = Child(prog, keep=False)
        evs = env.run(child.start, "stacks-gone")
        mine = _mine(evs, child.p.pid)
    assert len(mine) == 1, evs
    trace = mine[0]["user_stack_trace"]
    # the process exited before its event was read: no maps to name the frames, only their addresses
    assert trace and all(set(f) == {"address"} for f in trace), trace
    assert _stack_entries(env) == []


@bpf
def test_ima_hash_stays_unavailable(env: Env, prog: Path):
    spec = SYSCALL_SPEC.format(exe=prog, flags="      imaHash: true\n")
    err = unavailable(env, "stacks-ima", spec)
    assert "imaHash is not served" in err, err


@bpf
def test_stack_on_tracepoint_is_ignored(env: Env, prog: Path):
    """process_tracepoint events have no stack fields (Tetragon ignores the flags there too): the policy loads,
    its events carry no stack and nothing is left in gen_stacks."""
    spec = f"""
    tracepoints:
    - subsystem: syscalls
      event: sys_enter_getppid
      selectors:
      - matchBinaries:
        - operator: In
          values: ["{prog}"]
        matchActions:
        - action: Post
          kernelStackTrace: true
          userStackTrace: true
    """
    with env.load("stacks-tp", spec) as st, Child(prog) as child:
        assert st.state == sensors_pb2.TP_STATE_ENABLED
        evs = env.run(child.start, "stacks-tp")
        mine = _mine(evs, child.p.pid)
    assert len(mine) == 1 and not {"kernel_stack_trace", "user_stack_trace"} & set(mine[0]), mine
    assert _stack_entries(env) == []


# ------------------------------------------------------------------------------ symbolizers alone
KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000100 t helper_a
ffffffff81000200 T do_syscall_64
ffffffff81000200 T do_syscall_64_alias
ffffffff81000400 d some_data
ffffffff81000800 T _etext
ffffffffc0001000 t mod_func\t[some_mod]
ffffffffc0001200 t mod_func2\t[some_mod]
"""


def test_kallsyms_lookup(tmp_path: Path):
    f = tmp_path / "kallsyms"
    f.write_text(KALLSYMS)
    ks = KernelSymbols(str(f), str(tmp_path / "no-modules"))
    assert ks.resolve(0xffffffff81000210) == ("do_syscall_64", 0x10, "")
    assert ks.resolve(0xffffffff81000100) == ("helper_a", 0, "")
    assert ks.resolve(0xffffffff81000450) == ("do_syscall_64", 0x250, "")  # data symbols are not text
    assert ks.resolve(0xffffffffc0001234) == ("mod_func2", 0x34, "some_mod")
    assert ks.resolve(0xffffffff80000000) is None and not ks.hidden


class _FakeMap:
    value_size = 127 * 8

    def __init__(self, stacks: dict[int, list[int]]) -> None:
        self.stacks = stacks
        self.deleted: list[int] = []

    def lookup(self, k: bytes):
        v = self.stacks.get(struct.unpack("<I", k)[0])
        return None if v is None else struct.pack("<127Q", *(v + [0] * (127 - len(v))))

    def delete(self, k: bytes) -> bool:
        sid = struct.unpack("<I", k)[0]
        self.deleted.append(sid)
        return self.stacks.pop(sid, None) is not None


def test_kallsyms_hidden_by_kptr_restrict(tmp_path: Path):
    """kptr_restrict shows this process zeros for every address: nothing can be named, and the kernel stack
    is left out (the raw addresses would show what the kernel hides); the entry is still deleted."""
    f = tmp_path / "kallsyms"
    f.write_text("".join(f"0000000000000000 {ln.split(' ', 1)[1]}\n" for ln in KALLSYMS.splitlines()))
    ks = KernelSymbols(str(f), str(tmp_path / "no-modules"))
    assert ks.resolve(0xffffffff81000210) is None and ks.hidden
    m = _FakeMap({7: [0xffffffff81000210, 0xffffffff81000110]})
    st = Stacks(m, ks)
    assert st.kernel_trace(7) == []
    st.release()
    assert m.deleted == [7]


def test_stacks_read_once_and_recent(tmp_path: Path):
    """An id is looked up once per batch and deleted at its end; a later event of the same stack (same id) finds
    it among the recently released ones; a negative id (bpf_get_stackid's -errno) is no stack."""
    f = tmp_path / "kallsyms"
    f.write_text(KALLSYMS)
    m = _FakeMap({3: [0xffffffff81000210, 0xffffffff81000110]})
    st = Stacks(m, KernelSymbols(str(f), str(tmp_path / "no-modules")))
    want = [{"address": str(0xffffffff81000210), "offset": "16", "symbol": "do_syscall_64"},
            {"address": str(0xffffffff81000110), "offset": "16", "symbol": "helper_a"}]
    assert st.kernel_trace(3) == want
    m.stacks[3] = [0xffffffff81000100]  # (not looked up again within the batch)
    assert st.kernel_trace(3) == want
    st.release()
    assert m.deleted == [3] and 3 not in m.stacks
    assert st.kernel_trace(3) == want  # gone from the map: the released copy
    assert st.kernel_trace(-17) == [] and st.user_trace(-14, os.getpid()) == []


def test_elf_file_offsets(prog: Path):
    """File offset -> symbol through the PT_LOAD segments; the uprobe resolver's offsets name their symbols."""
    from lanner.sensors.generic.uprobe import resolve_symbols

    offs = resolve_symbols(str(prog), ["main", "lanner_leaf", "lanner_middle"])
    with open(prog, "rb") as fh:
        syms = ElfSymbols(fh)
    for name, off in offs.items():
        assert syms.lookup(off) == name and syms.lookup(off + 3) == name
    assert syms.lookup(prog.stat().st_size + 4096) == ""


def test_user_frames_of_this_process():
    """This process's own maps: an address inside libc's text names libc and a function of its .dynsym."""
    import ctypes

    addr = ctypes.cast(ctypes.CDLL(None).getpid, ctypes.c_void_p).value
    (frame,) = UserSymbols().frames(os.getpid(), (addr,))
    assert frame["module"].endswith(".so.6") and frame["symbol"] in ("getpid", "__getpid"), frame
