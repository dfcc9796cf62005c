"""Raw ctypes declarations for the parts of ``libbpf.so.1`` lanner uses.

Only declarations live here; the typed object model is in :mod:`lanner.bpf.objects`.
libbpf 1.x reports errors by returning NULL or a negative number and setting errno,
so every pointer-returning function is declared with ``use_errno=True``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Callable

log = logging.getLogger("lanner.libbpf")

LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so")


class LibbpfMissing(RuntimeError):
    """libbpf.so.1 could not be loaded."""


def _load() -> ctypes.CDLL:
    errors = []
    for name in LIBBPF_NAMES:
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    raise LibbpfMissing(
        "cannot load libbpf (" + "; ".join(errors) + "); install Debian's libbpf1 package (make run does)"
    )


lib = _load()
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class bpf_tc_hook(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("ifindex", c_int), ("attach_point", c_int), ("parent", c_uint32)]


class bpf_tc_opts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
    ]


class bpf_uprobe_opts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("ref_ctr_offset", c_size_t),
        ("bpf_cookie", c_uint64),
        ("retprobe", c_bool),
        ("func_name", c_char_p),
    ]


class bpf_map_batch_opts(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


def _fn(name: str, restype, *argtypes) -> Callable:
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


P = c_void_p
# object
bpf_object__open = _fn("bpf_object__open", P, c_char_p)
bpf_object__load = _fn("bpf_object__load", c_int, P)
bpf_object__close = _fn("bpf_object__close", None, P)
bpf_object__name = _fn("bpf_object__name", c_char_p, P)
bpf_object__next_program = _fn("bpf_object__next_program", P, P, P)
bpf_object__next_map = _fn("bpf_object__next_map", P, P, P)
bpf_object__btf = _fn("bpf_object__btf", P, P)
# programs
bpf_program__name = _fn("bpf_program__name", c_char_p, P)
bpf_program__section_name = _fn("bpf_program__section_name", c_char_p, P)
bpf_program__fd = _fn("bpf_program__fd", c_int, P)
bpf_program__set_autoload = _fn("bpf_program__set_autoload", c_int, P, c_bool)
bpf_program__autoload = _fn("bpf_program__autoload", c_bool, P)
bpf_program__type = _fn("bpf_program__type", c_int, P)
bpf_program__attach = _fn("bpf_program__attach", P, P)
bpf_program__attach_tracepoint = _fn("bpf_program__attach_tracepoint", P, P, c_char_p, c_char_p)
bpf_program__attach_raw_tracepoint = _fn("bpf_program__attach_raw_tracepoint", P, P, c_char_p)
bpf_program__attach_trace = _fn("bpf_program__attach_trace", P, P)
bpf_program__attach_lsm = _fn("bpf_program__attach_lsm", P, P)
bpf_program__attach_kprobe = _fn("bpf_program__attach_kprobe", P, P, c_bool, c_char_p)
bpf_program__attach_uprobe_opts = _fn(
    "bpf_program__attach_uprobe_opts", P, P, c_int, c_char_p, c_size_t, POINTER(bpf_uprobe_opts)
)
bpf_program__attach_cgroup = _fn("bpf_program__attach_cgroup", P, P, c_int)
bpf_program__attach_xdp = _fn("bpf_program__attach_xdp", P, P, c_int)
# links
bpf_link__destroy = _fn("bpf_link__destroy", c_int, P)
bpf_link__fd = _fn("bpf_link__fd", c_int, P)
bpf_link__pin = _fn("bpf_link__pin", c_int, P, c_char_p)
# maps
bpf_map__name = _fn("bpf_map__name", c_char_p, P)
bpf_map__fd = _fn("bpf_map__fd", c_int, P)
bpf_map__type = _fn("bpf_map__type", c_int, P)
bpf_map__key_size = _fn("bpf_map__key_size", c_uint32, P)
bpf_map__value_size = _fn("bpf_map__value_size", c_uint32, P)
bpf_map__max_entries = _fn("bpf_map__max_entries", c_uint32, P)
bpf_map__set_max_entries = _fn("bpf_map__set_max_entries", c_int, P, c_uint32)
bpf_map__initial_value = _fn("bpf_map__initial_value", P, P, POINTER(c_size_t))
bpf_map__set_pin_path = _fn("bpf_map__set_pin_path", c_int, P, c_char_p)
bpf_map__pin = _fn("bpf_map__pin", c_int, P, c_char_p)
bpf_map__unpin = _fn("bpf_map__unpin", c_int, P, c_char_p)
bpf_map__is_internal = _fn("bpf_map__is_internal", c_bool, P)
bpf_map__reuse_fd = _fn("bpf_map__reuse_fd", c_int, P, c_int)
# low-level map ops (fd based)
bpf_map_lookup_elem = _fn("bpf_map_lookup_elem", c_int, c_int, P, P)
bpf_map_update_elem = _fn("bpf_map_update_elem", c_int, c_int, P, P, c_uint64)
bpf_map_delete_elem = _fn("bpf_map_delete_elem", c_int, c_int, P)
bpf_map_get_next_key = _fn("bpf_map_get_next_key", c_int, c_int, P, P)
bpf_map_lookup_batch = _fn(
    "bpf_map_lookup_batch", c_int, c_int, P, P, P, P, POINTER(c_uint32), POINTER(bpf_map_batch_opts)
)
bpf_map_update_batch = _fn(
    "bpf_map_update_batch", c_int, c_int, P, P, POINTER(c_uint32), POINTER(bpf_map_batch_opts)
)
bpf_map_delete_batch = _fn("bpf_map_delete_batch", c_int, c_int, P, POINTER(c_uint32), POINTER(bpf_map_batch_opts))
bpf_obj_pin = _fn("bpf_obj_pin", c_int, c_int, c_char_p)
bpf_enable_stats = _fn("bpf_enable_stats", c_int, c_int)
bpf_obj_get = _fn("bpf_obj_get", c_int, c_char_p)
# tc
bpf_tc_hook_create = _fn("bpf_tc_hook_create", c_int, POINTER(bpf_tc_hook))
bpf_tc_hook_destroy = _fn("bpf_tc_hook_destroy", c_int, POINTER(bpf_tc_hook))
bpf_tc_attach = _fn("bpf_tc_attach", c_int, POINTER(bpf_tc_hook), POINTER(bpf_tc_opts))
bpf_tc_detach = _fn("bpf_tc_detach", c_int, POINTER(bpf_tc_hook), POINTER(bpf_tc_opts))
# probing and misc
libbpf_probe_bpf_prog_type = _fn("libbpf_probe_bpf_prog_type", c_int, c_int, P)
libbpf_probe_bpf_map_type = _fn("libbpf_probe_bpf_map_type", c_int, c_int, P)
libbpf_probe_bpf_helper = _fn("libbpf_probe_bpf_helper", c_int, c_int, c_int, P)
libbpf_num_possible_cpus = _fn("libbpf_num_possible_cpus", c_int)
libbpf_strerror = _fn("libbpf_strerror", c_int, c_int, c_char_p, c_size_t)

_vsnprintf = libc.vsnprintf
_vsnprintf.restype = c_int
_vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]

# sizeof(__va_list_tag) where a va_list is a pointer to it (x86-64); 0 = do not re-format
_VA_LIST_SIZE = 24 if os.uname().machine == "x86_64" else 0

# enum libbpf_print_level
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_set_print = _fn("libbpf_set_print", P, PRINT_FN)


class LogCapture:
    """Routes libbpf's messages (including verifier logs) to Python logging.

    While a :meth:`capture` block is active on the current thread the messages are also kept, so an
    error raised from a failed load can quote them. libbpf calls the print hook rarely (open, load,
    attach), never per event.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._buf = ctypes.create_string_buffer(8192)
        self._lock = threading.Lock()
        self._cb = PRINT_FN(self._print)
        _set_print(self._cb)

    def _print(self, level: int, fmt: bytes, va_list: int) -> int:
        with self._lock:
            saved = ctypes.string_at(va_list, _VA_LIST_SIZE) if _VA_LIST_SIZE else b""
            n = _vsnprintf(self._buf, len(self._buf), fmt, va_list)
            buf = self._buf
            if n >= len(buf) and saved:
                # a long message (a verifier log): format again into a buffer that fits; on x86-64
                # copying the va_list tag is what va_copy does
                ctypes.memmove(va_list, saved, _VA_LIST_SIZE)
                buf = ctypes.create_string_buffer(n + 1)
                _vsnprintf(buf, len(buf), fmt, va_list)
            text = buf.value.decode("utf-8", "replace").rstrip("\n")
        pylevel = {LIBBPF_WARN: logging.WARNING, LIBBPF_INFO: logging.INFO}.get(level, logging.DEBUG)
        sink = getattr(self._local, "lines", None)
        if sink is not None:
            sink.append(text)
            # a captured failure is reported by the caller in its exception; keep the log quieter
            pylevel = min(pylevel, logging.DEBUG)
        log.log(pylevel, "%s", text)
        return n

    def capture(self) -> "_Capture":
        return _Capture(self)


class _Capture:
    def __init__(self, owner: LogCapture) -> None:
        self.owner = owner
        self.lines: list[str] = []

    def __enter__(self) -> "_Capture":
        self._prev = getattr(self.owner._local, "lines", None)
        self.owner._local.lines = self.lines
        return self

    def __exit__(self, *exc) -> None:
        self.owner._local.lines = self._prev
        if self._prev is not None:
            self._prev.extend(self.lines)

    def text(self, limit: int = 40) -> str:
        """The last ``limit`` lines (verifier logs can be long; the tail says why)."""
        lines = "\n".join(self.lines).splitlines()
        return "\n".join(lines[-limit:])


log_capture = LogCapture()


def errno_text(err: int) -> str:
    err = abs(err)
    buf = ctypes.create_string_buffer(256)
    libbpf_strerror(err, buf, len(buf))
    text = buf.value.decode() or os.strerror(err)
    return f"{text} (errno {err})"


def num_possible_cpus() -> int:
    n = libbpf_num_possible_cpus()
    if n <= 0:
        raise OSError(-n, "libbpf_num_possible_cpus failed")
    return n
