"""The x86_64 syscall table (name <-> number), read at run time from the kernel headers.

Names are accepted in every form policies use: ``openat``, ``sys_openat``, ``__x64_sys_openat``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

UNISTD = (Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), Path("/usr/include/asm/unistd_64.h"))
_PREFIX = re.compile(r"^(?:__(?:x64|ia32|x32|arm64)_)?(?:compat_)?sys_")
ARCH_PREFIX = "__x64_"


def bare(name: str) -> str:
    """``__x64_sys_openat`` / ``sys_openat`` -> ``openat``."""
    return _PREFIX.sub("", name)


def function_name(name: str) -> str:
    """The kernel function of a syscall as Tetragon reports it: ``__x64_sys_openat``."""
    return f"{ARCH_PREFIX}sys_{bare(name)}"


@lru_cache(maxsize=1)
def table() -> dict[str, int]:
    for path in UNISTD:
        if path.exists():
            out = {}
            for m in re.finditer(r"#define\s+__NR_(\w+)\s+(\d+)", path.read_text()):
                out[m.group(1)] = int(m.group(2))
            if out:
                return out
    raise FileNotFoundError("no x86_64 syscall table: " + ", ".join(map(str, UNISTD)) + " missing")


def number(name: str) -> int | None:
    return table().get(bare(name))


@lru_cache(maxsize=1)
def names() -> dict[int, str]:
    return {v: k for k, v in table().items()}


@lru_cache(maxsize=1)
def _vmlinux_btf() -> int | None:
    """libbpf's parsed /sys/kernel/btf/vmlinux (kept for the process), or None without it."""
    import ctypes

    from lanner.bpf import libbpf as L

    load = L._fn("btf__load_vmlinux_btf", ctypes.c_void_p)
    return load() or None


def btf_function(name: str) -> bool | None:
    """Whether the kernel's BTF has function ``name`` (an fentry can attach to it); None: no vmlinux BTF.
    Syscalls without arguments have no BTF entry for their wrapper on some kernels (Debian 6.1:
    ``__x64_sys_getppid`` is an alias of ``__do_sys_getppid``): a kprobe on the symbol works there."""
    import ctypes

    from lanner.bpf import libbpf as L

    btf = _vmlinux_btf()
    if btf is None:
        return None
    find = L._fn("btf__find_by_name_kind", ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32)
    return find(btf, name.encode(), 12) > 0  # BTF_KIND_FUNC
