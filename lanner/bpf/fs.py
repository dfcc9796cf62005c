"""Pseudo-filesystems the agent needs: tracefs (tracepoint ids), bpffs (pins).

A fresh machine has neither mounted. ``ensure_mounts`` mounts what is missing, as Tetragon does, and
returns what it did so the agent can log it.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lanner.fs")

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")
BPFFS = Path("/sys/fs/bpf")
DEFAULT_PIN_DIR = BPFFS / "lanner"

BPF_FS_MAGIC = 0xCAFE4A11
TRACEFS_MAGIC = 0x74726163

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


@dataclass(frozen=True)
class MountAction:
    path: str
    fstype: str
    mounted_now: bool


def _fs_magic(path: Path) -> int | None:
    class Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]

    st = Statfs()
    fn = _libc.statfs
    fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(Statfs)]
    if fn(str(path).encode(), ctypes.byref(st)) != 0:
        return None
    return st.f_type & 0xFFFFFFFF


def _mount(fstype: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if _libc.mount(fstype.encode(), str(target).encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t {fstype} {target}: {os.strerror(err)}")


def ensure_tracefs() -> MountAction:
    if _fs_magic(TRACEFS) == TRACEFS_MAGIC or (TRACEFS / "events").is_dir():
        return MountAction(str(TRACEFS), "tracefs", False)
    if (DEBUGFS_TRACING / "events").is_dir():
        return MountAction(str(DEBUGFS_TRACING), "tracefs", False)
    _mount("tracefs", TRACEFS)
    log.info("mounted tracefs at %s (libbpf reads tracepoint ids there)", TRACEFS)
    return MountAction(str(TRACEFS), "tracefs", True)


def ensure_bpffs() -> MountAction:
    if _fs_magic(BPFFS) == BPF_FS_MAGIC:
        return MountAction(str(BPFFS), "bpf", False)
    _mount("bpf", BPFFS)
    log.info("mounted bpffs at %s (for pins)", BPFFS)
    return MountAction(str(BPFFS), "bpf", True)


def ensure_mounts() -> list[MountAction]:
    return [ensure_tracefs(), ensure_bpffs()]


def tracefs_root() -> Path:
    return TRACEFS if (TRACEFS / "events").is_dir() else DEBUGFS_TRACING


def _check_pin_path(path: Path) -> None:
    if not str(path).startswith(str(BPFFS / "lanner")):
        raise ValueError(f"pin directory {path} must be under {BPFFS}/lanner*")


def pin_dir(root: str | Path = DEFAULT_PIN_DIR) -> Path:
    """Create (if needed) and return a pin directory, which must live under /sys/fs/bpf/lanner*."""
    path = Path(root)
    _check_pin_path(path)
    ensure_bpffs()
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_pins(tree: str | Path) -> int:
    """Remove a directory of pins (under /sys/fs/bpf/lanner*) and everything in it. Removing a link's pin
    detaches its program once nothing else holds the link; a map's, frees the map once unused. Returns the
    pins removed; a tree already gone (someone else removed it) counts 0."""
    tree = Path(tree)
    _check_pin_path(tree)
    removed = 0
    for dirpath, _dirs, filenames in os.walk(tree, topdown=False):
        for name in filenames:
            try:
                os.unlink(os.path.join(dirpath, name))
                removed += 1
            except FileNotFoundError:
                pass
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
    return removed
