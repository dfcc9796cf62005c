"""What this kernel and the hooked binaries offer to attach to, as the compiler asks: tracepoint formats,
kernel functions, syscall numbers, ELF symbol offsets, the host's namespace inodes. Each lookup turns an
error into the hook's reason (Unavailable) or an absence, never an exception out of the compiler."""

from __future__ import annotations

import errno
import functools
import os
import re
from types import MappingProxyType
from typing import Mapping

from lanner.policy import syscalls

from . import tracefs
from .plan import Unavailable
from .uprobe import SymbolError, resolve_symbols

NS_PROC = {"Uts": "uts", "Ipc": "ipc", "Mnt": "mnt", "Pid": "pid", "PidForChildren": "pid_for_children",
           "Net": "net", "Time": "time", "TimeForChildren": "time_for_children", "Cgroup": "cgroup",
           "User": "user"}


def kernel_has_function(name: str) -> bool:
    """A text symbol of exactly this name in /proc/kallsyms (vmlinux or a loaded module): what a kprobe attaches
    to (a function the compiler inlined everywhere, or renamed ``.isra``/``.constprop``, has none). True when
    kallsyms cannot be read: the attach decides then."""
    try:
        with open("/proc/kallsyms", "rb") as f:
            syms = f.read()
    except OSError:
        return True
    return re.search(rb"^[0-9a-f]+ [tT] " + re.escape(name.encode()) + rb"(?:\t|$)", syms, re.M) is not None


def symbol_offsets(path: str, symbols: tuple[str, ...]) -> Mapping[str, int]:
    """The file offsets of ``symbols`` in the ELF at ``path``; raises Unavailable naming what is wrong. Read once per
    version of the file and set of symbols: parsing a large binary's symbol table takes a fifth of a second, and a
    policy may name the same binary in hundreds of hooks."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        raise Unavailable(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    offsets, error = _read_symbols(path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, symbols)
    if error is not None:
        raise Unavailable(error)
    return offsets


@functools.lru_cache(maxsize=256)
def _read_symbols(path: str, dev: int, ino: int, mtime_ns: int, size: int, symbols: tuple[str, ...]
                  ) -> tuple[Mapping[str, int], str | None]:
    """resolve_symbols, its failure kept as a message too (a cache of the file's version: dev, inode, mtime, size)."""
    try:
        return MappingProxyType(resolve_symbols(path, symbols)), None
    except (SymbolError, OSError) as exc:
        return MappingProxyType({}), str(exc)
    except Exception as exc:  # pyelftools on a file that is not a well-formed ELF: any exception
        return MappingProxyType({}), f"{path} is not an ELF file this build can read ({type(exc).__name__}: {exc})"


def tp_format(subsystem: str, event: str) -> tracefs.TpFormat | None:
    """A tracepoint's format; None when the kernel has no such tracepoint (no format file, or a name no file can
    have: longer than NAME_MAX, a NUL). Another error (tracefs unreadable) is the hook's reason."""
    try:
        return tracefs.read_format(subsystem, event)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return None
        raise Unavailable(f"cannot read tracepoint {subsystem}/{event}: {exc.strerror or exc}") from None


def tp_exists(subsystem: str, event: str) -> bool:
    """The kernel has this tracepoint (a name longer than NAME_MAX, where stat fails, cannot be one)."""
    try:
        return tracefs.exists(subsystem, event)
    except (OSError, ValueError):
        return False


def syscall_nr(name: str) -> int | None:
    """The x86-64 syscall number, or None when unknown or when this machine has no syscall table (the
    kernel headers' unistd_64.h): such hooks stay on the syscall tracepoints."""
    try:
        return syscalls.number(name)
    except OSError:
        return None


def host_ns(name: str) -> int:
    """The host's namespace inode (pid 1's where readable, else the kernel's initial inode numbers)."""
    from lanner.sensors import procfs

    return int(getattr(procfs.host_namespaces(), NS_PROC[name]))
