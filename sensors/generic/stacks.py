"""Post ``kernelStackTrace`` / ``userStackTrace``: an event's stack ids -> Tetragon ``StackTraceEntry`` lists.

The generic programs store a posted event's stacks in ``gen_stacks`` (BPF_MAP_TYPE_STACK_TRACE, generic.h
``GEN_STACK_*``) with ``bpf_get_stackid`` and put the ids in the record (``kstack`` / ``ustack``). Per event with a
stack, :class:`Stacks` looks its id up once; the ids read during a batch of records are deleted at the end of it
(:meth:`Stacks.release`), so the map does not fill. The same stack has the same id: an event whose stack was
already read and deleted (an earlier batch had the same stack) finds it among the recently released ones.

Symbols:

* kernel addresses: ``/proc/kallsyms`` (text symbols, sorted, bisect; a module's in ``[brackets]``), loaded on the
  first kernel stack and again when modules or BPF programs came or went since (checked at most once a second).
  A frame is ``{address, offset (in the symbol), symbol, module (modules, "bpf")}``. Where kptr_restrict hides
  kernel addresses from this process (kallsyms shows zeros), kernel stacks are not reported: nothing could be
  symbolized, and the raw addresses would show what the kernel hides;
* user addresses: the thread's ``/proc/<tid>/maps`` at the time the event is read and the mapped file's ELF
  symbols (pyelftools, cached per file); a frame is ``{address, offset (in the file, as Tetragon), symbol,
  module (the file)}``. When the process is gone the frames carry their address only.
"""

from __future__ import annotations

import bisect
import ctypes
import logging
import os
import struct
import time
from collections import OrderedDict
from typing import Any

from .abi import GEN_STACK_DEPTH

log = logging.getLogger("lanner.sensors.generic.stacks")

RECENT = 512           # released stacks kept for a late event of the same stack
ELF_CACHE = 128        # files whose symbols are kept
_TEXT = (b"t", b"T", b"w", b"W")
_SYS_BPF, _BPF_PROG_GET_NEXT_ID = 321, 11  # x86-64


def _bpf_prog_last_id(start: int = 0) -> int:
    """The highest BPF program id from ``start`` on (BPF_PROG_GET_NEXT_ID): a new program has a higher id."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(16)
    last = start
    while True:
        struct.pack_into("<I", attr, 0, last)
        if libc.syscall(_SYS_BPF, _BPF_PROG_GET_NEXT_ID, attr, 12) < 0:
            return last
        last = struct.unpack_from("<I", attr, 4)[0]


class KernelSymbols:
    """``/proc/kallsyms`` text symbols for bisect lookups."""

    def __init__(self, path: str = "/proc/kallsyms", modules: str = "/proc/modules") -> None:
        self.path, self.modules_path = path, modules
        self.addrs: list[int] = []
        self.names: list[tuple[str, str]] = []  # (symbol, module or "")
        self.hidden = False  # kptr_restrict: every address reads as 0
        self.loaded = False
        self._checked = 0.0
        self._modules = b""
        self._bpf_id = 0
        self._core = (0, 0)  # [_stext, _etext): vmlinux text, never changes

    def _read_modules(self) -> bytes:
        try:
            with open(self.modules_path, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def load(self) -> None:
        rows: list[tuple[int, str, str]] = []
        stext = etext = 0
        any_addr = False
        with open(self.path, "rb") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3 or parts[1] not in _TEXT:
                    continue
                a = int(parts[0], 16)
                any_addr = any_addr or a != 0
                name = parts[2].decode("utf-8", "replace")
                mod = parts[3].decode("utf-8", "replace").strip("[]") if len(parts) > 3 else ""
                if name == "_stext" and not mod:
                    stext = a
                elif name == "_etext" and not mod:
                    etext = a
                rows.append((a, name, mod))
        rows.sort(key=lambda r: r[0])  # stable: of several names at one address the first listed is kept
        self.addrs, self.names = [], []
        for a, name, mod in rows:
            if self.addrs and self.addrs[-1] == a:
                continue
            self.addrs.append(a)
            self.names.append((name, mod))
        self.hidden = bool(rows) and not any_addr
        self._core = (stext, etext)
        self._modules = self._read_modules()
        self._bpf_id = _bpf_prog_last_id()
        self._checked = time.monotonic()
        self.loaded = True

    def _maybe_reload(self) -> None:
        """Modules or BPF programs loaded or unloaded since the table was read: read it again (checked once a
        second at most: a /proc/modules read and a BPF_PROG_GET_NEXT_ID walk from the last id seen)."""
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        if self._read_modules() != self._modules or _bpf_prog_last_id(self._bpf_id) != self._bpf_id:
            self.load()

    def resolve(self, addr: int) -> tuple[str, int, str] | None:
        """(symbol, offset in it, module) of a kernel text address."""
        if not self.loaded:
            self.load()
        lo, hi = self._core
        if not lo <= addr < hi:  # a module or a BPF program: the table may be older than it
            self._maybe_reload()
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0 or self.hidden:
            return None
        name, mod = self.names[i]
        if lo <= addr < hi and mod:
            return None
        return name, addr - self.addrs[i], mod


class ElfSymbols:
    """One file's function symbols (.symtab and .dynsym) and PT_LOAD segments: file offset -> symbol."""

    def __init__(self, fh: Any) -> None:
        from elftools.elf.elffile import ELFFile

        elf = ELFFile(fh)
        self.segs = [(s["p_offset"], s["p_filesz"], s["p_vaddr"]) for s in elf.iter_segments()
                     if s["p_type"] == "PT_LOAD"]
        syms: dict[int, tuple[int, str]] = {}
        for secname in (".symtab", ".dynsym"):
            sec = elf.get_section_by_name(secname)
            if sec is None or not hasattr(sec, "iter_symbols"):
                continue
            for sym in sec.iter_symbols():
                if sym["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC") or not sym["st_value"] or \
                        sym["st_shndx"] == "SHN_UNDEF" or not sym.name:
                    continue
                v = sym["st_value"]
                if v not in syms or (not syms[v][0] and sym["st_size"]):
                    syms[v] = (sym["st_size"], sym.name)
        self.starts = sorted(syms)
        self.syms = [syms[v] for v in self.starts]

    def lookup(self, file_off: int) -> str:
        for off, size, vaddr in self.segs:
            if off <= file_off < off + size:
                v = file_off - off + vaddr
                break
        else:
            return ""
        i = bisect.bisect_right(self.starts, v) - 1
        if i < 0:
            return ""
        size, name = self.syms[i]
        return name if (v < self.starts[i] + size or not size) else ""


class UserSymbols:
    def __init__(self) -> None:
        self._elf: OrderedDict[tuple, ElfSymbols | None] = OrderedDict()

    @staticmethod
    def maps(tid: int) -> list[tuple[int, int, int, str]] | None:
        """(start, end, file offset, path) per mapping of the thread's process; None when it is gone."""
        try:
            with open(f"/proc/{tid}/maps", "rb") as f:
                text = f.read()
        except OSError:
            return None
        out = []
        for line in text.splitlines():
            parts = line.split(None, 5)
            if len(parts) < 5:
                continue
            start, _, end = parts[0].partition(b"-")
            path = parts[5].decode("utf-8", "replace").strip() if len(parts) > 5 else ""
            out.append((int(start, 16), int(end, 16), int(parts[2], 16), path))
        return out

    def _symbols(self, tid: int, start: int, end: int, path: str) -> ElfSymbols | None:
        # the mapped file itself (map_files: whatever mount namespace the process is in), else its path
        candidates = [f"/proc/{tid}/map_files/{start:x}-{end:x}", f"/proc/{tid}/root{path}", path]
        for cand in candidates:
            try:
                st = os.stat(cand)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key in self._elf:
                self._elf.move_to_end(key)
                return self._elf[key]
            try:
                with open(cand, "rb") as fh:
                    syms: ElfSymbols | None = ElfSymbols(fh)
            except Exception as exc:  # not an ELF file, or one pyelftools cannot read
                log.debug("no symbols from %s: %s", path, exc)
                syms = None
            self._elf[key] = syms
            if len(self._elf) > ELF_CACHE:
                self._elf.popitem(last=False)
            return syms
        return None

    def frames(self, tid: int, addrs: tuple[int, ...]) -> list[dict[str, Any]]:
        maps = self.maps(tid)
        if maps is None:
            return [{"address": str(a)} for a in addrs]
        starts = [m[0] for m in maps]
        out = []
        for a in addrs:
            i = bisect.bisect_right(starts, a) - 1
            if i < 0 or a >= maps[i][1] or not maps[i][3]:
                out.append({"address": str(a)})
                continue
            start, end, off, path = maps[i]
            file_off = a - start + off
            e: dict[str, Any] = {"address": str(a)}
            if file_off:
                e["offset"] = str(file_off)
            if path.startswith("/"):
                syms = self._symbols(tid, start, end, path)
                name = syms.lookup(file_off) if syms is not None else ""
                if name:
                    e["symbol"] = name
            e["module"] = path
            out.append(e)
        return out


class Stacks:
    """Reads and releases ``gen_stacks`` entries; renders them as StackTraceEntry dicts (protojson names, uint64
    values as strings)."""

    def __init__(self, stack_map: Any, kernel: KernelSymbols | None = None) -> None:
        self.map = stack_map
        self.kernel = kernel or KernelSymbols()
        self.user = UserSymbols()
        self._read: dict[int, tuple[int, ...]] = {}
        self._recent: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self._unpack = struct.Struct(f"<{stack_map.value_size // 8}Q").unpack
        self._warned_hidden = False

    def addrs(self, sid: int) -> tuple[int, ...] | None:
        if sid < 0:  # -errno of bpf_get_stackid: EFAULT (no such stack: a kernel thread's user stack),
            return None  # EEXIST (another stack held the bucket)
        got = self._read.get(sid)
        if got is not None:
            return got
        try:
            raw = self.map.lookup(struct.pack("<I", sid))
        except OSError as exc:
            log.debug("lookup stack %d: %s", sid, exc)
            return None
        if raw is None:
            return self._recent.get(sid)
        vals = self._unpack(raw)
        n = vals.index(0) if 0 in vals else len(vals)
        got = vals[:n]
        self._read[sid] = got
        return got

    def release(self) -> None:
        """End of a batch: delete the stacks read (the kernel reuses their buckets)."""
        for sid, addrs in self._read.items():
            try:
                self.map.delete(struct.pack("<I", sid))
            except OSError as exc:
                log.debug("delete stack %d: %s", sid, exc)
            self._recent[sid] = addrs
            self._recent.move_to_end(sid)
        self._read.clear()
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)

    def kernel_trace(self, sid: int) -> list[dict[str, Any]]:
        addrs = self.addrs(sid)
        if not addrs:
            return []
        out = []
        for a in addrs:
            try:
                r = self.kernel.resolve(a)
            except OSError as exc:
                log.warning("kernel stack traces: cannot read %s: %s", self.kernel.path, exc)
                return []
            if self.kernel.hidden:
                if not self._warned_hidden:
                    log.warning("kernel stack traces are not reported: %s hides kernel addresses from this "
                                "process (kernel.kptr_restrict)", self.kernel.path)
                    self._warned_hidden = True
                return []
            e: dict[str, Any] = {"address": str(a)}
            if r is not None:
                name, off, mod = r
                if off:
                    e["offset"] = str(off)
                e["symbol"] = name
                if mod:
                    e["module"] = mod
            out.append(e)
        return out

    def user_trace(self, sid: int, tid: int) -> list[dict[str, Any]]:
        addrs = self.addrs(sid)
        return self.user.frames(tid, addrs) if addrs else []
