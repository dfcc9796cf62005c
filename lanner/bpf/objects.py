"""Typed wrappers over libbpf: objects, programs, maps and links.

``BpfObject`` owns a ``struct bpf_object``; closing it (or leaving its ``with`` block) destroys every
link it created and releases its maps, so a failed start leaves nothing attached.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

from . import libbpf as L
from .btf import Btf

log = logging.getLogger("lanner.bpf")

# enum bpf_map_type values used here
MAP_TYPE_HASH, MAP_TYPE_ARRAY, MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY = 1, 2, 5, 6
MAP_TYPE_LRU_HASH, MAP_TYPE_LRU_PERCPU_HASH, MAP_TYPE_RINGBUF = 9, 10, 27
PERCPU_MAP_TYPES = {MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_LRU_PERCPU_HASH, 21}  # 21: percpu cgroup storage

ENOTSUPP = 524  # kernel-internal "operation not supported" (no batch ops for this map type)
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2
BPF_TC_F_REPLACE = 1  # libbpf: replace a filter at the same handle/priority


# Test-only: a comma-separated list of object file names (e.g. "generic_tp.bpf.o") whose load fails on purpose
# with E2BIG, as a verifier rejection would, so tests can show the agent degrades instead of dying. Read in
# one place, BpfObject.load(); never set it in production.
FAIL_LOAD_ENV = "LANNER_TEST_FAIL_LOAD"
# lines of a libbpf/verifier log that carry no reason: the instruction dump, source annotations, framing
_NOISE = re.compile(r"^(\d+: |; |-- (BEGIN|END) PROG LOAD LOG --|failed to load object |Validating |"
                    r"prog '[^']*': -- (BEGIN|END) PROG LOAD LOG --$)")


class BpfError(OSError):
    """A libbpf call failed. ``log`` holds what libbpf said (the verifier log for a failed load)."""

    def __init__(self, what: str, err: int, log_text: str = "") -> None:
        self.what = what
        self.log = log_text
        msg = f"{what}: {L.errno_text(err)}"
        if log_text:
            msg += "\n--- libbpf log ---\n" + log_text
        super().__init__(abs(err), msg)

    def reason(self, lines: int = 3) -> str:
        """One line: what failed, the errno, and the last meaningful lines of the libbpf/verifier log
        (e.g. "processed 1000001 insns (limit 1000000) ..."), joined with " / "."""
        head = f"{self.what}: {L.errno_text(self.errno)}"
        tail = verifier_tail(self.log, lines)
        return f"{head}: {tail}" if tail else head


def verifier_tail(log_text: str, lines: int = 3) -> str:
    """The last ``lines`` lines of a libbpf log that say something (not the instruction dump)."""
    keep = []
    for raw in log_text.splitlines():
        text = raw.strip().removeprefix("libbpf: ").strip()
        if text and not _NOISE.match(text):
            keep.append(text.rstrip("."))
    return " / ".join(keep[-lines:]).replace("; ", ", ")


def _injected_failure(path: Path) -> BpfError | None:
    """The failure LANNER_TEST_FAIL_LOAD asks for on this object, if any (test-only)."""
    names = {n.strip() for n in os.environ.get(FAIL_LOAD_ENV, "").split(",") if n.strip()}
    if path.name not in names:
        return None
    return BpfError(f"load BPF object {path.name}", errno.E2BIG,
                    f"{FAIL_LOAD_ENV}: load of {path.name} refused on purpose (test-only setting)\n"
                    "BPF program is too large. Processed 1000001 insn")


def _check_ptr(ptr: int | None, what: str, cap: Any = None) -> int:
    if not ptr:
        err = ctypes.get_errno() or errno.EINVAL
        raise BpfError(what, err, cap.text() if cap else "")
    return ptr


def _check_rc(rc: int, what: str, cap: Any = None) -> int:
    if rc < 0:
        err = -rc if rc != -1 else (ctypes.get_errno() or errno.EINVAL)
        raise BpfError(what, err, cap.text() if cap else "")
    return rc


class Link:
    """An attachment. ``destroy()`` detaches; it is idempotent."""

    def __init__(self, ptr: int | None, description: str, destroy: Callable[[], None] | None = None) -> None:
        self._ptr = ptr
        self._destroy_fn = destroy
        self.description = description

    @property
    def fd(self) -> int:
        return L.bpf_link__fd(self._ptr) if self._ptr else -1

    def pin(self, path: str) -> None:
        _check_rc(L.bpf_link__pin(self._ptr, path.encode()), f"pin link {self.description} at {path}")

    def keep(self, path: str) -> None:
        """Pin the link at ``path`` and let go of it: destroying this object afterwards (or the process
        exiting) leaves the attachment in the kernel, held by the pin, until the pin is removed."""
        if not self._ptr:
            raise BpfError(f"keep link {self.description}", errno.EBADF)
        self.pin(path)
        _disconnect(self._ptr)

    def destroy(self) -> None:
        if self._ptr:
            L.bpf_link__destroy(self._ptr)
            self._ptr = None
        if self._destroy_fn:
            fn, self._destroy_fn = self._destroy_fn, None
            fn()

    def __repr__(self) -> str:
        return f"Link({self.description})"


_disconnect = L.lib.bpf_link__disconnect  # after it, bpf_link__destroy frees the link without detaching it
_disconnect.restype, _disconnect.argtypes = None, [ctypes.c_void_p]


def pinned_fd(path: str | Path) -> int:
    """An fd for a pinned program, map or link (bpf_obj_get); the caller closes it."""
    fd = L.bpf_obj_get(str(path).encode())
    if fd < 0:
        raise BpfError(f"open pinned object {path}", ctypes.get_errno())
    return fd


class Program:
    def __init__(self, obj: "BpfObject", ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name: str = L.bpf_program__name(ptr).decode()
        self.section: str = L.bpf_program__section_name(ptr).decode()

    @property
    def fd(self) -> int:
        return L.bpf_program__fd(self._ptr)

    @property
    def prog_type(self) -> int:
        return L.bpf_program__type(self._ptr)

    def set_autoload(self, on: bool) -> None:
        _check_rc(L.bpf_program__set_autoload(self._ptr, on), f"set autoload on {self.name}")

    @property
    def autoload(self) -> bool:
        return bool(L.bpf_program__autoload(self._ptr))

    # --- attach helpers: each returns a Link owned by the object
    def _link(self, fn: Callable[[], int], what: str) -> Link:
        with L.log_capture.capture() as cap:
            ptr = fn()
            _check_ptr(ptr, f"attach {self.name} ({what})", cap)
        link = Link(ptr, f"{self.name} -> {what}")
        self._obj._links.append(link)
        log.debug("attached %s", link.description)
        return link

    def attach(self) -> Link:
        """Attach by section name (tp/, raw_tp/, tp_btf/, kprobe/, fentry/, lsm/, uprobe/...)."""
        return self._link(lambda: L.bpf_program__attach(self._ptr), self.section)

    def attach_tracepoint(self, category: str, event: str) -> Link:
        return self._link(lambda: L.bpf_program__attach_tracepoint(self._ptr, category.encode(), event.encode()),
                          f"tracepoint {category}/{event}")

    def attach_raw_tracepoint(self, event: str) -> Link:
        return self._link(lambda: L.bpf_program__attach_raw_tracepoint(self._ptr, event.encode()),
                          f"raw_tracepoint {event}")

    def attach_trace(self) -> Link:
        """tp_btf, fentry, fexit and fmod_ret programs (target fixed at load)."""
        return self._link(lambda: L.bpf_program__attach_trace(self._ptr), self.section)

    def attach_lsm(self) -> Link:
        return self._link(lambda: L.bpf_program__attach_lsm(self._ptr), self.section)

    def attach_kprobe(self, func: str, retprobe: bool = False) -> Link:
        return self._link(lambda: L.bpf_program__attach_kprobe(self._ptr, retprobe, func.encode()),
                          f"{'kretprobe' if retprobe else 'kprobe'} {func}")

    def attach_uprobe(self, binary: str, offset: int = 0, func_name: str | None = None, pid: int = -1,
                      retprobe: bool = False) -> Link:
        opts = L.bpf_uprobe_opts(sz=ctypes.sizeof(L.bpf_uprobe_opts), retprobe=retprobe,
                                 func_name=func_name.encode() if func_name else None)
        what = f"{'uretprobe' if retprobe else 'uprobe'} {binary}:{func_name or hex(offset)}"
        return self._link(
            lambda: L.bpf_program__attach_uprobe_opts(self._ptr, pid, binary.encode(), offset, ctypes.byref(opts)),
            what)

    def attach_cgroup(self, cgroup_path: str) -> Link:
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return self._link(lambda: L.bpf_program__attach_cgroup(self._ptr, fd), f"cgroup {cgroup_path}")
        finally:
            os.close(fd)

    def attach_xdp(self, ifindex: int) -> Link:
        return self._link(lambda: L.bpf_program__attach_xdp(self._ptr, ifindex), f"xdp ifindex {ifindex}")

    def attach_tc(self, ifindex: int, ingress: bool = True, priority: int = 1, handle: int = 1,
                  replace: bool = False) -> Link:
        """Attach as a direct-action cls_bpf classifier on a clsact qdisc (created if missing).

        ``replace``: a filter already at this handle/priority (e.g. left by a previous run: TC filters
        outlive their process) is replaced in place instead of failing with EEXIST.
        """
        point = BPF_TC_INGRESS if ingress else BPF_TC_EGRESS
        hook = L.bpf_tc_hook(sz=ctypes.sizeof(L.bpf_tc_hook), ifindex=ifindex, attach_point=point)
        with L.log_capture.capture():  # "Exclusivity flag on": the clsact exists (the other direction made it)
            rc = L.bpf_tc_hook_create(ctypes.byref(hook))
        if rc < 0 and rc != -errno.EEXIST:
            _check_rc(rc, f"create clsact on ifindex {ifindex}")
        created_qdisc = rc == 0

        def remove_qdisc() -> None:
            if created_qdisc:  # only a clsact this attach created; someone else's stays
                both = L.bpf_tc_hook(sz=ctypes.sizeof(L.bpf_tc_hook), ifindex=ifindex,
                                     attach_point=BPF_TC_INGRESS | BPF_TC_EGRESS)
                L.bpf_tc_hook_destroy(ctypes.byref(both))

        opts = L.bpf_tc_opts(sz=ctypes.sizeof(L.bpf_tc_opts), prog_fd=self.fd, handle=handle, priority=priority,
                             flags=BPF_TC_F_REPLACE if replace else 0)
        with L.log_capture.capture() as cap:
            rc = L.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
            if rc < 0:
                remove_qdisc()
            _check_rc(rc, f"attach {self.name} to tc {'ingress' if ingress else 'egress'} ifindex {ifindex}", cap)

        def detach() -> None:
            d = L.bpf_tc_opts(sz=ctypes.sizeof(L.bpf_tc_opts), handle=handle, priority=priority)
            L.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(d))
            remove_qdisc()

        link = Link(None, f"{self.name} -> tc ifindex {ifindex}", destroy=detach)
        self._obj._links.append(link)
        return link


K = TypeVar("K")
V = TypeVar("V")


class Codec(Generic[K]):
    """Converts a Python value to and from the bytes of a map key or value."""

    def __init__(self, size: int, encode: Callable[[K], bytes], decode: Callable[[bytes], K]) -> None:
        self.size = size
        self.encode = encode
        self.decode = decode

    @classmethod
    def struct(cls, fmt: str) -> "Codec[Any]":
        s = struct.Struct(fmt)
        if len(s.unpack(bytes(s.size))) == 1:
            return cls(s.size, lambda v: s.pack(v), lambda b: s.unpack(b)[0])
        return cls(s.size, lambda v: s.pack(*v), lambda b: s.unpack(b))

    @classmethod
    def raw(cls, size: int) -> "Codec[bytes]":
        def enc(v: bytes) -> bytes:
            if len(v) != size:
                raise ValueError(f"expected {size} bytes, got {len(v)}")
            return v
        return cls(size, enc, bytes)


class Map(Generic[K, V]):
    """A BPF map with typed keys and values.

    Per-CPU maps decode to a list with one value per possible CPU.
    """

    def __init__(self, name: str, fd: int, map_type: int, key_size: int, value_size: int, max_entries: int,
                 key: Codec[Any] | None = None, value: Codec[Any] | None = None) -> None:
        self.name = name
        self.fd = fd
        self.map_type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.percpu = map_type in PERCPU_MAP_TYPES
        self.ncpus = L.num_possible_cpus() if self.percpu else 1
        self._slot = (value_size + 7) & ~7 if self.percpu else value_size
        self.key = key or Codec.raw(key_size)
        self.value = value or Codec.raw(value_size)
        if self.key.size != key_size:
            raise ValueError(f"map {name}: key codec is {self.key.size} bytes, map key is {key_size}")
        if self.value.size != value_size:
            raise ValueError(f"map {name}: value codec is {self.value.size} bytes, map value is {value_size}")

    def typed(self, key: Codec[Any] | None = None, value: Codec[Any] | None = None) -> "Map[Any, Any]":
        return Map(self.name, self.fd, self.map_type, self.key_size, self.value_size, self.max_entries,
                   key or self.key, value or self.value)

    # ---- single elements
    def _vbuf(self) -> ctypes.Array:
        return ctypes.create_string_buffer(self._slot * self.ncpus)

    def _decode_value(self, raw: bytes) -> Any:
        if not self.percpu:
            return self.value.decode(raw)
        return [self.value.decode(raw[i * self._slot : i * self._slot + self.value_size]) for i in range(self.ncpus)]

    def _encode_value(self, v: Any) -> bytes:
        if not self.percpu:
            return self.value.encode(v)
        vals = v if isinstance(v, list) else [v] * self.ncpus
        return b"".join(self.value.encode(x).ljust(self._slot, b"\0") for x in vals)

    def lookup(self, k: Any) -> Any | None:
        kb = self.key.encode(k)
        vb = self._vbuf()
        rc = L.bpf_map_lookup_elem(self.fd, kb, vb)
        if rc < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            raise BpfError(f"lookup in map {self.name}", err)
        return self._decode_value(vb.raw)

    def __getitem__(self, k: Any) -> Any:
        v = self.lookup(k)
        if v is None:
            raise KeyError(k)
        return v

    def update(self, k: Any, v: Any, flags: int = BPF_ANY) -> None:
        kb = self.key.encode(k)
        vb = self._encode_value(v)
        if L.bpf_map_update_elem(self.fd, kb, vb, flags) < 0:
            raise BpfError(f"update map {self.name}", ctypes.get_errno())

    __setitem__ = update

    def delete(self, k: Any) -> bool:
        if L.bpf_map_delete_elem(self.fd, self.key.encode(k)) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            raise BpfError(f"delete from map {self.name}", err)
        return True

    # ---- iteration
    def keys(self) -> Iterator[Any]:
        prev = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            rc = L.bpf_map_get_next_key(self.fd, prev, nxt)
            if rc < 0:
                err = ctypes.get_errno()
                if err == errno.ENOENT:
                    return
                raise BpfError(f"iterate map {self.name}", err)
            raw = nxt.raw
            yield self.key.decode(raw)
            prev = ctypes.create_string_buffer(raw, self.key_size)

    def items(self) -> Iterator[tuple[Any, Any]]:
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v

    # ---- batches (one syscall per chunk)
    def lookup_batch(self, chunk: int = 1024) -> list[tuple[Any, Any]]:
        """All entries, read with BPF_MAP_LOOKUP_BATCH. Falls back to iteration where unsupported."""
        out: list[tuple[Any, Any]] = []
        keys = ctypes.create_string_buffer(self.key_size * chunk)
        vals = ctypes.create_string_buffer(self._slot * self.ncpus * chunk)
        in_b = None
        out_b = ctypes.create_string_buffer(max(self.key_size, 8))
        opts = L.bpf_map_batch_opts(sz=ctypes.sizeof(L.bpf_map_batch_opts))
        while True:
            count = ctypes.c_uint32(chunk)
            rc = L.bpf_map_lookup_batch(self.fd, in_b, out_b, keys, vals, ctypes.byref(count), ctypes.byref(opts))
            err = ctypes.get_errno() if rc < 0 else 0
            if rc < 0 and err not in (errno.ENOENT,):
                if err in (errno.EINVAL, ENOTSUPP) and not out:
                    return list(self.items())
                raise BpfError(f"batch lookup in map {self.name}", err)
            kraw, vraw = keys.raw, vals.raw
            vstride = self._slot * self.ncpus
            for i in range(count.value):
                k = self.key.decode(kraw[i * self.key_size : (i + 1) * self.key_size])
                out.append((k, self._decode_value(vraw[i * vstride : (i + 1) * vstride])))
            if rc < 0:  # ENOENT: done
                return out
            in_b = ctypes.create_string_buffer(out_b.raw, len(out_b))

    def update_batch(self, entries: list[tuple[Any, Any]], flags: int = BPF_ANY) -> None:
        if not entries:
            return
        kb = b"".join(self.key.encode(k) for k, _ in entries)
        vb = b"".join(self._encode_value(v) for _, v in entries)
        count = ctypes.c_uint32(len(entries))
        opts = L.bpf_map_batch_opts(sz=ctypes.sizeof(L.bpf_map_batch_opts), elem_flags=flags)
        if L.bpf_map_update_batch(self.fd, kb, vb, ctypes.byref(count), ctypes.byref(opts)) < 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL and self.map_type in (MAP_TYPE_ARRAY, MAP_TYPE_PERCPU_ARRAY):
                raise BpfError(f"batch update map {self.name}", err)
            # kernels without batch ops for this map type: fall back element by element
            for k, v in entries[count.value:]:
                self.update(k, v, flags)

    def delete_batch(self, keys: list[Any]) -> int:
        if not keys:
            return 0
        kb = b"".join(self.key.encode(k) for k in keys)
        count = ctypes.c_uint32(len(keys))
        opts = L.bpf_map_batch_opts(sz=ctypes.sizeof(L.bpf_map_batch_opts))
        if L.bpf_map_delete_batch(self.fd, kb, ctypes.byref(count), ctypes.byref(opts)) < 0:
            n = count.value
            for k in keys[n:]:
                n += self.delete(k)
            return n
        return count.value

    def sum_percpu(self, k: Any) -> int:
        """Sum of a per-CPU integer slot (e.g. a loss counter)."""
        v = self.lookup(k)
        if v is None:
            return 0
        return sum(v) if isinstance(v, list) else int(v)

    def pin(self, path: str) -> None:
        if L.bpf_obj_pin(self.fd, path.encode()) < 0:
            raise BpfError(f"pin map {self.name} at {path}", ctypes.get_errno())


@dataclass
class RodataVar:
    offset: int
    size: int


class BpfObject:
    """One compiled ``.bpf.o``: open, configure, load, attach, close.

    >>> with BpfObject.open("process.bpf.o") as obj:
    ...     obj.set_config(node_flags=1)      # .rodata constants, before load
    ...     obj.resize_map("events", 1 << 22)
    ...     obj.load()
    ...     obj.program("on_exec").attach()
    """

    def __init__(self, path: Path, ptr: int, btf: Btf) -> None:
        self.path = path
        self._ptr: int | None = ptr
        self.btf = btf
        self._links: list[Link] = []
        self._loaded = False
        self.programs: dict[str, Program] = {}
        p = L.bpf_object__next_program(ptr, None)
        while p:
            prog = Program(self, p)
            self.programs[prog.name] = prog
            p = L.bpf_object__next_program(ptr, p)
        self._maps: dict[str, int] = {}
        m = L.bpf_object__next_map(ptr, None)
        while m:
            self._maps[L.bpf_map__name(m).decode()] = m
            m = L.bpf_object__next_map(ptr, m)

    @classmethod
    def open(cls, path: str | Path) -> "BpfObject":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"BPF object {path} not found; build it with 'make bpf'")
        btf = Btf.from_elf(path)
        with L.log_capture.capture() as cap:
            ptr = L.bpf_object__open(str(path).encode())
            _check_ptr(ptr, f"open BPF object {path}", cap)
        return cls(path, ptr, btf)

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def loaded(self) -> bool:
        return self._loaded

    def _require_open(self) -> int:
        if not self._ptr:
            raise RuntimeError(f"BPF object {self.path.name} is closed")
        return self._ptr

    def program(self, name: str) -> Program:
        try:
            return self.programs[name]
        except KeyError:
            raise KeyError(f"{self.path.name} has no program {name!r}; it has {sorted(self.programs)}") from None

    # ---- configuration before load
    def set_config(self, **values: int | bytes) -> None:
        """Set ``const volatile`` globals in ``.rodata`` before load (the program reads them as constants)."""
        self._require_open()
        if self._loaded:
            raise RuntimeError("set_config must run before load()")
        m = self._maps.get(next((n for n in self._maps if n.endswith(".rodata")), ""), None)
        if m is None:
            raise KeyError(f"{self.path.name} has no .rodata section")
        layout = self.btf.datasec_vars(".rodata")
        size = ctypes.c_size_t()
        base = L.bpf_map__initial_value(m, ctypes.byref(size))
        if not base:
            raise BpfError("read .rodata initial value", ctypes.get_errno() or errno.EINVAL)
        for name, value in values.items():
            if name not in layout:
                raise KeyError(f"{self.path.name}: no config variable {name!r} in .rodata; have {sorted(layout)}")
            off, vsize, _ = layout[name]
            raw = value if isinstance(value, bytes) else int(value).to_bytes(vsize, "little", signed=value < 0)
            if len(raw) > vsize:
                raise ValueError(f"config {name}: {len(raw)} bytes do not fit in {vsize}")
            ctypes.memmove(base + off, raw.ljust(vsize, b"\0"), vsize)

    def resize_map(self, name: str, max_entries: int) -> None:
        ptr = self._map_ptr(name)
        _check_rc(L.bpf_map__set_max_entries(ptr, max_entries), f"resize map {name} to {max_entries}")

    def reuse_map(self, name: str, fd: int) -> None:
        """Before load: use an existing map (e.g. opened from a pin) instead of creating this one."""
        if self._loaded:
            raise RuntimeError("reuse_map must run before load()")
        _check_rc(L.bpf_map__reuse_fd(self._map_ptr(name), fd), f"reuse fd {fd} for map {name}")

    def reuse_pinned_map(self, name: str, pin_path: str) -> None:
        fd = pinned_fd(pin_path)
        try:
            self.reuse_map(name, fd)
        finally:
            os.close(fd)  # libbpf keeps its own duplicate

    def map_sizes(self, name: str) -> tuple[int, int]:
        """(key size, value size) of a map of this object, as it will be created."""
        m = self._map_ptr(name)
        return L.bpf_map__key_size(m), L.bpf_map__value_size(m)

    def set_pin_path(self, name: str, path: str) -> None:
        _check_rc(L.bpf_map__set_pin_path(self._map_ptr(name), path.encode()), f"set pin path of {name}")

    def load(self) -> None:
        ptr = self._require_open()
        injected = _injected_failure(self.path)
        if injected is not None and any(p.autoload for p in self.programs.values()):
            raise injected  # maps-only loads (nothing to verify) are never refused
        with L.log_capture.capture() as cap:
            _check_rc(L.bpf_object__load(ptr), f"load BPF object {self.path.name}", cap)
        self._loaded = True
        log.debug("loaded %s (%d programs)", self.path.name, len(self.programs))

    # ---- maps
    def _map_ptr(self, name: str) -> int:
        self._require_open()
        try:
            return self._maps[name]
        except KeyError:
            raise KeyError(f"{self.path.name} has no map {name!r}; it has {sorted(self._maps)}") from None

    def map(self, name: str, key: Codec[Any] | None = None, value: Codec[Any] | None = None) -> Map[Any, Any]:
        p = self._map_ptr(name)
        if not self._loaded:
            raise RuntimeError(f"map {name}: load the object first")
        return Map(name, L.bpf_map__fd(p), L.bpf_map__type(p), L.bpf_map__key_size(p), L.bpf_map__value_size(p),
                   L.bpf_map__max_entries(p), key, value)

    @property
    def map_names(self) -> list[str]:
        return list(self._maps)

    # ---- teardown
    @property
    def links(self) -> list[Link]:
        return list(self._links)

    def detach_all(self) -> None:
        while self._links:
            self._links.pop().destroy()

    def close(self) -> None:
        self.detach_all()
        if self._ptr:
            L.bpf_object__close(self._ptr)
            self._ptr = None
            self._loaded = False
