"""glibc allocator settings for the agent, applied once at start before any thread exists.

Why (docs/performance.md §3): every thread that calls malloc gets its own glibc arena (up to 8 per core), and
what a thread frees stays in its arena. The background kernel probe, the policy loading and gRPC's threads each
parse or build megabytes (libbpf parses the kernel's vmlinux BTF, about 11 MiB of heap, once per object load)
and left about 80 MiB of freed memory in six arenas of an idle agent. With one arena, large blocks served by
mmap (a fixed threshold: glibc otherwise raises it to 32 MiB after the first large free) and the top of the heap
given back past a small threshold, that memory returns to the kernel when it is freed.

Environment variables that glibc reads itself (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``) win over these defaults: the setting they name is left alone. On a C library
without ``mallopt`` (musl) nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

_ENV = {M_ARENA_MAX: "MALLOC_ARENA_MAX", M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_",
        M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_"}
_NAMES = {M_ARENA_MAX: "arena_max", M_MMAP_THRESHOLD: "mmap_threshold", M_TRIM_THRESHOLD: "trim_threshold"}


@dataclass(frozen=True)
class AllocatorSettings:
    arena_max: int = 1  # every thread shares the main arena (the agent's hot path is one thread)
    mmap_threshold: int = 128 << 10  # blocks from 128 KiB up are mmap'd, so freeing them unmaps them
    trim_threshold: int = 128 << 10  # free memory past this at the heap's top is given back at once


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        return libc
    except (OSError, AttributeError):
        return None


def configure(settings: AllocatorSettings = AllocatorSettings()) -> dict[str, int]:
    """Apply ``settings`` with mallopt, except what the environment already sets; call it before the process
    starts any thread (a thread that already allocated keeps its arena). Returns the settings applied."""
    libc = _glibc()
    if libc is None:
        return {}
    applied: dict[str, int] = {}
    wanted = {M_ARENA_MAX: settings.arena_max, M_MMAP_THRESHOLD: settings.mmap_threshold,
              M_TRIM_THRESHOLD: settings.trim_threshold}
    for param, value in wanted.items():
        if os.environ.get(_ENV[param]) is None and libc.mallopt(param, value) == 1:
            applied[_NAMES[param]] = value
    return applied


def trim() -> bool:
    """Give the allocator's free pages back to the kernel (malloc_trim(0), every arena, not only the heap's
    top): after start-up loads and bursts. True when memory was released."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


def malloc_info() -> str:
    """glibc's malloc_info XML (one ``<heap nr=...>`` per arena), for tests and diagnosis; "" elsewhere."""
    libc = _glibc()
    if libc is None:
        return ""
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = (ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t))
    libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
    libc.fclose.argtypes = (ctypes.c_void_p,)
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return ""
    try:
        libc.malloc_info(0, stream)
    finally:
        libc.fclose(stream)
    text = ctypes.string_at(buf, size.value).decode()
    libc.free.argtypes = (ctypes.c_void_p,)
    libc.free(ctypes.cast(buf, ctypes.c_void_p))
    return text


def arena_count() -> int:
    """How many malloc arenas the process has (1 with :func:`configure`'s default); 0 when unknown."""
    return malloc_info().count("<heap nr=")
