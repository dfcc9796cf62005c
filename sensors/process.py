"""Process sensor: exec, clone and exit records from ``process.bpf.c``.

The loader opens the CO-RE object, applies the agent's configuration before load, attaches the three
sched tracepoint programs, seeds ``execve_map`` with the processes that already run, and decodes ring
buffer batches into records. The record layouts come from the object's BTF (``process.h`` is the only
definition).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from lanner.bpf.objects import BPF_NOEXIST, BpfError, BpfObject, Codec, Map
from lanner.bpf.records import RecordLayout

log = logging.getLogger("lanner.sensors.process")

PROCESS_OBJECT = Path(__file__).parent / "bpf" / "obj" / "process.bpf.o"

OP_EXEC, OP_CLONE, OP_EXIT = 1, 2, 5
OP_NAMES = {OP_EXEC: "exec", OP_CLONE: "clone", OP_EXIT: "exit"}

# exec_event.flags (process.h)
F_TRUNC_ARGS = 1 << 0
F_TRUNC_FILENAME = 1 << 1
F_TRUNC_PATH = 1 << 2
F_ERROR_CWD = 1 << 3
F_ROOT_CWD = 1 << 4
F_SCRIPT = 1 << 5
F_PARENT_MISS = 1 << 6
F_ERROR_ARGS = 1 << 7
F_CWD_UNREACHABLE = 1 << 8

ARGS_MAX = 8192  # LANNER_ARGS_MAX in process.h
_KEY = Codec.struct("<I")
BINARY_MAX = 256  # LANNER_BINARY_MAX
# struct execve_entry: key {pid, pad, ktime}, parent {pid, pad, ktime}, binary_len, flags, binary[256],
# then the exec-time namespaces and capabilities (64 bytes) that only the BPF programs use: zero when seeded
EXEC_STATE_BYTES = 64
_ENTRY = Codec.struct(f"<IIQIIQII{BINARY_MAX}s{EXEC_STATE_BYTES}x")


@dataclass(slots=True)
class Creds:
    uid: int
    gid: int
    suid: int
    sgid: int
    euid: int
    egid: int
    fsuid: int
    fsgid: int
    securebits: int
    auid: int
    cap_permitted: int
    cap_effective: int
    cap_inheritable: int


@dataclass(slots=True)
class Namespaces:
    uts: int
    ipc: int
    mnt: int
    pid: int
    pid_for_children: int
    net: int
    time: int
    time_for_children: int
    cgroup: int
    user: int


@dataclass(slots=True)
class ExecRecord:
    ktime: int
    pid: int
    tid: int
    ppid: int
    nspid: int
    parent_ktime: int  # 0 when the kernel did not know the parent's identity
    flags: int
    cgroup_id: int
    exe_ino: int
    creds: Creds
    ns: Namespaces
    filename: str  # as passed to execve (may be relative)
    exe: str  # absolute path of the file the kernel ran (the interpreter for a script)
    cwd: str
    argv: tuple[str, ...]
    args_size: int  # argv bytes in the process, before truncation

    @property
    def binary(self) -> str:
        """Absolute path of what was executed: the script for a script, else the filename."""
        name = self.filename
        if self.flags & F_TRUNC_FILENAME and not self.flags & F_SCRIPT and self.exe:
            return self.exe  # the resolved file is complete where the passed name was cut
        if name.startswith("/"):
            return os.path.normpath(name) if ("/." in name or "//" in name) else name
        if not name or self.flags & F_ERROR_CWD:
            return self.exe or name
        return os.path.normpath(os.path.join(self.cwd, name))

    @property
    def is_script(self) -> bool:
        return bool(self.flags & F_SCRIPT)

    @property
    def arguments(self) -> tuple[str, ...]:
        """The arguments after the program. For a script the kernel runs
        ``[interpreter, (shebang arg), script, args...]``; the arguments are those after the script."""
        argv = self.argv
        if self.flags & F_SCRIPT:
            for i in range(1, min(len(argv), 3)):
                if argv[i] == self.filename:
                    return argv[i + 1:]
        return argv[1:]


@dataclass(slots=True)
class CloneRecord:
    ktime: int
    pid: int
    tid: int
    nspid: int
    parent_pid: int
    parent_ktime: int


@dataclass(slots=True)
class ExitRecord:
    ktime: int
    pid: int
    tid: int
    exec_ktime: int  # the identity that exited (0 if unknown to the kernel)
    exit_code: int

    @property
    def status(self) -> int:
        return (self.exit_code >> 8) & 0xFF

    @property
    def signal(self) -> int:
        return self.exit_code & 0x7F


Record = ExecRecord | CloneRecord | ExitRecord


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


INTERN_MAX = 1024  # distinct values a decoder keeps per interned kind before it starts over
INTERN_KEY_MAX = 256  # longer raw values (long argument lists, deep paths) are decoded each time, not kept


def _interned(memo: dict, key: Any, make: Any) -> Any:
    """``memo[key]``, made by ``make(key)`` on a miss; the memo starts over past INTERN_MAX entries, so it
    holds at most INTERN_MAX x INTERN_KEY_MAX bytes of keys."""
    if len(key) > INTERN_KEY_MAX:
        return make(key)
    if len(memo) >= INTERN_MAX:
        memo.clear()
    v = memo[key] = make(key)
    return v


class ProcessDecoder:
    """Turns raw ring-buffer records into typed records, one ``unpack_from`` per fixed part.

    The record classes are plain slotted dataclasses, not frozen ones: a frozen dataclass's
    ``__init__`` costs several times more (measured: about 3 us per event), and nothing mutates them.
    Values that repeat from exec to exec (credentials, namespaces, paths) are decoded once and shared:
    a per-decoder memo maps their raw form to the object (no per-event construction, one copy in the
    process cache)."""

    def __init__(self, obj: BpfObject) -> None:
        ex = RecordLayout.from_btf(obj.btf, "exec_event")
        cl = RecordLayout.from_btf(obj.btf, "clone_event")
        xt = RecordLayout.from_btf(obj.btf, "exit_event")
        self.exec_layout, self.exit_layout, self.clone_layout = ex, xt, cl  # the C fast path's offsets
        self._exec = ex.struct
        self._exec_tail = ex.tail_offset
        self._clone = cl.struct
        self._exit = xt.struct
        self._ex_i = ex.indexes(
            "hdr.ktime", "key.pid", "tid", "ppid", "nspid", "parent.ktime", "flags", "cgroup_id", "exe_ino",
            "args_size", "filename_len", "exe_len", "cwd_len", "args_len",
        )
        first_cred = ex.index("creds.uid")
        first_ns = ex.index("ns.uts")
        self._cred_slice = slice(first_cred, first_cred + len(Creds.__slots__))
        self._ns_slice = slice(first_ns, first_ns + len(Namespaces.__slots__))
        assert ex.names[first_cred:first_cred + len(Creds.__slots__)] == tuple(f"creds.{n}" for n in Creds.__slots__)
        assert ex.names[first_ns:first_ns + len(Namespaces.__slots__)] == tuple(f"ns.{n}" for n in Namespaces.__slots__)
        self._cl_i = cl.indexes("hdr.ktime", "key.pid", "tid", "nspid", "parent.pid", "parent.ktime")
        self._xt_i = xt.indexes("hdr.ktime", "key.pid", "tid", "key.ktime", "exit_code")
        self._creds: dict[tuple, Creds] = {}
        self._nss: dict[tuple, Namespaces] = {}
        self._texts: dict[bytes, str] = {}
        self._argvs: dict[bytes, tuple[str, ...]] = {}

    def decode(self, raws: Iterable[bytes]) -> list[Record]:
        out: list[Record] = []
        append = out.append
        for raw in raws:
            op = raw[0]
            if op == OP_EXEC:
                append(self._decode_exec(raw))
            elif op == OP_EXIT:
                t = self._exit.unpack_from(raw)
                a, b, c, d, e = self._xt_i
                append(ExitRecord(t[a], t[b], t[c], t[d], t[e]))
            elif op == OP_CLONE:
                t = self._clone.unpack_from(raw)
                a, b, c, d, e, f = self._cl_i
                append(CloneRecord(t[a], t[b], t[c], t[d], t[e], t[f]))
            else:
                log.warning("unknown process record op %d (%d bytes)", op, len(raw))
        return out

    def _decode_exec(self, raw: bytes) -> ExecRecord:
        t = self._exec.unpack_from(raw)
        (i_kt, i_pid, i_tid, i_ppid, i_nspid, i_pkt, i_fl, i_cg, i_ino, i_asz, i_fn, i_exe, i_cwd, i_args) = self._ex_i
        pos = self._exec_tail
        fn_end = pos + t[i_fn]
        exe_end = fn_end + t[i_exe]
        cwd_end = exe_end + t[i_cwd]
        args_end = cwd_end + t[i_args]
        args_raw = raw[cwd_end:args_end]
        argv = self._argvs.get(args_raw)
        if argv is None:
            argv = _interned(self._argvs, args_raw, _argv)
        texts = self._texts
        fn, exe, cwd = raw[pos:fn_end], raw[fn_end:exe_end], raw[exe_end:cwd_end]
        ck, nk = t[self._cred_slice], t[self._ns_slice]
        return ExecRecord(
            t[i_kt], t[i_pid], t[i_tid], t[i_ppid], t[i_nspid], t[i_pkt], t[i_fl], t[i_cg], t[i_ino],
            self._creds.get(ck) or _interned(self._creds, ck, _make_creds),
            self._nss.get(nk) or _interned(self._nss, nk, _make_ns),
            texts.get(fn) or _interned(texts, fn, _text), texts.get(exe) or _interned(texts, exe, _text),
            texts.get(cwd) or _interned(texts, cwd, _text), argv, t[i_asz],
        )

    def creds_ns(self, raw: bytes) -> tuple[Creds, Namespaces]:
        """An exec record's shared credentials and namespaces (the C fast path's memo misses come here)."""
        t = self._exec.unpack_from(raw)
        ck, nk = t[self._cred_slice], t[self._ns_slice]
        return (self._creds.get(ck) or _interned(self._creds, ck, _make_creds),
                self._nss.get(nk) or _interned(self._nss, nk, _make_ns))


def _argv(args_raw: bytes) -> tuple[str, ...]:
    """argv from its NUL-separated bytes (a last NUL ends the last argument)."""
    if args_raw.endswith(b"\0"):
        args_raw = args_raw[:-1]
    return tuple(_text(a) for a in args_raw.split(b"\0")) if args_raw else ()


def _make_creds(values: tuple) -> Creds:
    return Creds(*values)


def _make_ns(values: tuple) -> Namespaces:
    return Namespaces(*values)


@dataclass(frozen=True)
class ProcessSensorConfig:
    ringbuf_bytes: int = 8 << 20
    execve_map_entries: int = 65536
    args_max: int = ARGS_MAX
    emit_clone: bool = True


class ProcessSensor:
    """The process sensor unit (sensors.base.Sensor): owns the process BPF object (load, attach, seed, keep,
    close) and the ring every sensor writes into; its records become events in ``events`` (bind it first)."""

    name = "process"
    ops = frozenset(OP_NAMES)

    def __init__(self, config: ProcessSensorConfig, object_path: Path = PROCESS_OBJECT,
                 reuse: Mapping[str, Path] | None = None) -> None:
        """``reuse``: map name -> pin of a map to use instead of creating it (a previous agent's, kept with
        --keep-sensors-on-exit: its contents and size win over ``config``)."""
        if not 1 <= config.args_max <= ARGS_MAX:
            raise ValueError(f"args_max must be 1..{ARGS_MAX}, got {config.args_max}")
        rb = config.ringbuf_bytes
        if rb < 4096 or rb & (rb - 1):
            raise ValueError(f"ring buffer size must be a power of two of at least 4096 bytes, got {rb}")
        self.config = config
        self.obj = BpfObject.open(object_path)
        try:
            self.obj.set_config(cfg_args_max=config.args_max, cfg_emit_clone=int(config.emit_clone))
            self.obj.resize_map("events", rb)
            self.obj.resize_map("execve_map", config.execve_map_entries)
            for name, pin in (reuse or {}).items():
                self.obj.reuse_pinned_map(name, str(pin))
            self.obj.load()
            self.decoder = ProcessDecoder(self.obj)
            self.execve_map: Map = self.obj.map("execve_map", key=_KEY, value=_ENTRY)
            self.lost_map: Map = self.obj.map("lanner_lost", key=_KEY, value=Codec.struct("<Q"))
            self.events: Any = None  # sensors.process_events.ProcessEvents, bound by the agent
            self.fast: Any = None  # sensors.fastproc.FastPath: the C loop, when built
            self._fastpath = "python"  # which path handles the records, for status
        except BaseException:
            self.obj.close()
            raise

    def attach(self) -> None:
        try:
            for prog in self.obj.programs.values():
                prog.attach()
        except BpfError:
            self.obj.detach_all()
            raise

    def seed(self, entries: Iterable[tuple[int, int, int, int, str]]) -> int:
        """Record already-running processes as (pid, ktime, ppid, parent_ktime, binary) without
        overwriting identities the programs wrote since attach. Returns how many were added."""
        added = 0
        for pid, ktime, ppid, pktime, binary in entries:
            b = binary.encode(errors="surrogateescape")[: BINARY_MAX - 1]
            try:
                self.execve_map.update(pid, (pid, 0, ktime, ppid, 0, pktime, len(b), 0, b), BPF_NOEXIST)
                added += 1
            except BpfError as exc:
                if exc.errno != 17:  # EEXIST: an exec or fork since attach already knows better
                    raise
        return added

    def identities(self) -> dict[int, tuple[int, str]]:
        """pid -> (ktime, binary) of every live process ``execve_map`` knows: the identity the programs gave it
        (exec_ids are made of it; a kept map also has the ones an earlier agent saw) and the binary recorded at
        its exec (the path as executed, where /proc only has the resolved file)."""
        out = {}
        for pid, (_, _, ktime, _, _, _, blen, _, binary) in self.execve_map.lookup_batch():
            out[pid] = (ktime, binary[:blen].decode("utf-8", "surrogateescape"))
        return out

    def keep(self, directory: Path) -> int:
        """Pin every attachment under ``directory`` and let go of them: the programs keep running after the
        agent exits (--keep-sensors-on-exit). Returns how many were kept."""
        directory.mkdir(parents=True, exist_ok=True)
        kept = 0
        for link in self.obj.links:
            name = link.description.split(" -> ", 1)[0]
            try:
                link.keep(str(directory / name))
                kept += 1
            except BpfError as exc:
                log.warning("cannot keep %s after exit: %s", link.description, exc.reason())
        return kept

    def events_map(self) -> Map:
        return self.obj.map("events")

    def lost_total(self) -> dict[str, int]:
        return {name: self.lost_map.sum_percpu(op) for op, name in OP_NAMES.items()}

    # ---- the Sensor unit
    def bind(self, events: Any) -> None:
        """What turns this sensor's records into events (sensors.process_events.ProcessEvents); the C fast path
        (sensors/fastproc.py) works on the same cache and counters when it is built."""
        from .fastproc import FastPath, load_module

        self.events = events
        module, self._fastpath = load_module()
        self.fast = None
        if module is not None:
            try:
                self.fast = FastPath(module, self.decoder, events)
            except (TypeError, ValueError) as exc:  # a module built from another version of fastproc.c
                self._fastpath = f"python (C fast path unusable, rebuild it with `make fastpath`: {exc})"
                log.warning("process records take the Python path: %s", self._fastpath)

    @property
    def fastpath(self) -> str:
        """Which path handles process records, for ``lanner status``: "c" (pods, and the protobuf of batches a gRPC
        client follows, included), or "python (why)"."""
        why = self.fast.encoder.why_not_plain() if self.fast is not None else ""
        return f"python ({why})" if why else self._fastpath

    def handle(self, raws: list, want_pb: int) -> list:
        fast = self.fast
        if fast is not None and fast.usable(want_pb):
            return fast.handle(raws, want_pb)
        return self.events.handle(self.decoder.decode(raws), want_pb)

    def poll(self) -> list[bytes]:
        return []

    def lost(self) -> dict[str, int]:
        return self.lost_total()

    def programs(self) -> list[tuple[str, str, str, int]]:
        return [(self.name, p.name, p.section, p.fd) for p in self.obj.programs.values()]

    def close(self) -> None:
        self.obj.close()
