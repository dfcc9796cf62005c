"""The x86_64 syscall table (name <-> number), read at run time from the kernel headers (no kernel call:
whether the running kernel has a syscall's function is sensors/generic/kernel_btf.py's question).

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
