"""What the running kernel's BTF (/sys/kernel/btf/vmlinux, parsed by libbpf) says about a function."""

from __future__ import annotations

import ctypes
from functools import lru_cache

from lanner.bpf import libbpf as L


@lru_cache(maxsize=1)
def _vmlinux_btf() -> int | None:
    """libbpf's parsed /sys/kernel/btf/vmlinux (kept for the process), or None without it."""
    load = L._fn("btf__load_vmlinux_btf", ctypes.c_void_p)
    return load() or None


def btf_function(name: str) -> bool | None:
    """Whether the kernel's BTF has function ``name`` (an fentry can attach to it); None: no vmlinux BTF.
    Syscalls without arguments have no BTF entry for their wrapper on some kernels (Debian 6.1:
    ``__x64_sys_getppid`` is an alias of ``__do_sys_getppid``): a kprobe on the symbol works there."""
    btf = _vmlinux_btf()
    if btf is None:
        return None
    find = L._fn("btf__find_by_name_kind", ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32)
    return find(btf, name.encode(), 12) > 0  # BTF_KIND_FUNC
