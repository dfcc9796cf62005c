"""Attach helpers with a BPF cookie (the engine's hook id), on top of :mod:`lanner.bpf`.

``lanner.bpf.objects.Program`` has no cookie variants of its attach calls; the libbpf entry point for
tracepoints with options is declared here, and the uprobe one reuses ``bpf_uprobe_opts`` (which
already has ``bpf_cookie``). Links are registered with the program's object, so ``BpfObject.close``
still detaches everything.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_char_p, c_size_t, c_uint64, c_void_p

from lanner.bpf import libbpf as L
from lanner.bpf.objects import Link, Program


class bpf_tracepoint_opts(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("bpf_cookie", c_uint64)]


_attach_tp_opts = L.lib.bpf_program__attach_tracepoint_opts
_attach_tp_opts.restype = c_void_p
_attach_tp_opts.argtypes = [c_void_p, c_char_p, c_char_p, POINTER(bpf_tracepoint_opts)]


def attach_tracepoint(prog: Program, category: str, event: str, cookie: int) -> Link:
    opts = bpf_tracepoint_opts(sz=ctypes.sizeof(bpf_tracepoint_opts), bpf_cookie=cookie)
    return prog._link(lambda: _attach_tp_opts(prog._ptr, category.encode(), event.encode(), ctypes.byref(opts)),
                      f"tracepoint {category}/{event} cookie {cookie}")


def attach_uprobe(prog: Program, binary: str, offset: int, cookie: int, retprobe: bool = False,
                  ref_ctr_offset: int = 0) -> Link:
    """``ref_ctr_offset``: file offset of a USDT semaphore the kernel counts while the probe exists."""
    opts = L.bpf_uprobe_opts(sz=ctypes.sizeof(L.bpf_uprobe_opts), retprobe=retprobe, bpf_cookie=cookie,
                             ref_ctr_offset=ref_ctr_offset)
    what = f"{'uretprobe' if retprobe else 'uprobe'} {binary}:{hex(offset)} cookie {cookie}" + (
        f" ref_ctr {hex(ref_ctr_offset)}" if ref_ctr_offset else "")
    return prog._link(lambda: L.bpf_program__attach_uprobe_opts(prog._ptr, -1, binary.encode(), offset,
                                                               ctypes.byref(opts)), what)


class bpf_kprobe_opts(ctypes.Structure):
    """libbpf's struct bpf_kprobe_opts (libbpf >= 1.2 layout; sz tells older versions what we know)."""

    _fields_ = [("sz", c_size_t), ("bpf_cookie", c_uint64), ("offset", c_size_t), ("retprobe", ctypes.c_bool),
                ("attach_mode", ctypes.c_int)]


_attach_kprobe_opts = L.lib.bpf_program__attach_kprobe_opts
_attach_kprobe_opts.restype = c_void_p
_attach_kprobe_opts.argtypes = [c_void_p, c_char_p, POINTER(bpf_kprobe_opts)]

_set_attach_target = L.lib.bpf_program__set_attach_target
_set_attach_target.restype = ctypes.c_int
_set_attach_target.argtypes = [c_void_p, ctypes.c_int, c_char_p]


def attach_kprobe(prog: Program, func: str, cookie: int, retprobe: bool = False) -> Link:
    opts = bpf_kprobe_opts(sz=ctypes.sizeof(bpf_kprobe_opts), bpf_cookie=cookie, retprobe=retprobe)
    what = f"{'kretprobe' if retprobe else 'kprobe'} {func} cookie {cookie}"
    return prog._link(lambda: _attach_kprobe_opts(prog._ptr, func.encode(), ctypes.byref(opts)), what)


def set_attach_target(prog: Program, func: str) -> None:
    """The kernel function (LSM hook name without bpf_lsm_) a fentry/fexit/fmod_ret/LSM program attaches
    to; before load. Raises OSError naming the function when libbpf refuses (no such BTF function)."""
    rc = _set_attach_target(prog._ptr, 0, func.encode())
    if rc < 0:
        raise OSError(-rc, f"attach target {func}: {L.errno_text(-rc)}")
