"""Snapshot of the processes already running, read from /proc with psutil.

The agent seeds both the kernel's ``execve_map`` and its process cache from this snapshot (flag
``procFS``), so a process that started before the agent still has an exec_id, and its children's
events link to it. Kernel threads are left out: the sensor does not report them either.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from .process import Creds, Namespaces

log = logging.getLogger("lanner.sensors.procfs")

NS_NAMES = ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup", "user")
CGROUP2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


@dataclass(frozen=True, slots=True)
class ProcSnapshot:
    pid: int
    ppid: int
    ktime: int  # start time in ns since boot, the identity the cache and execve_map use
    nspid: int
    binary: str
    argv: tuple[str, ...]
    cwd: str
    creds: Creds
    ns: Namespaces
    cgroup_id: int


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def start_ktime(create_time: float, boot_time: float, hz: int) -> int:
    """Inverse of psutil's create_time (starttime / HZ + btime) back to ns since boot."""
    ticks = round((create_time - boot_time) * hz)
    return ticks * (1_000_000_000 // hz)


def _status_fields(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            key, _, value = line.partition(b":")
            out[key.decode()] = value.strip().decode(errors="replace")
    return out


def _ns_inodes(pid: int) -> Namespaces:
    vals = []
    for name in NS_NAMES:
        try:
            vals.append(os.stat(f"/proc/{pid}/ns/{name}").st_ino)
        except OSError:
            vals.append(0)
    return Namespaces(*vals)


def _cgroup_id(pid: int, cg_root: Path | None) -> int:
    if cg_root is None:
        return 0
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            for line in fh:
                if line.startswith("0::"):
                    return os.stat(cg_root / line[3:].strip().lstrip("/")).st_ino
    except OSError:
        pass
    return 0


def _cgroup2_root() -> Path | None:
    for root in CGROUP2_ROOTS:
        if (root / "cgroup.controllers").exists() or (root / "cgroup.procs").exists() and root.name == "unified":
            return root
    return None


def _loginuid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/loginuid") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 0xFFFFFFFF


def snapshot() -> list[ProcSnapshot]:
    """Every user-space process now running, parents before children where possible."""
    hz = clock_ticks()
    boot = psutil.boot_time()
    cg_root = _cgroup2_root()
    out: list[ProcSnapshot] = []
    for p in psutil.process_iter(["pid", "ppid", "cmdline", "exe", "cwd", "create_time", "name"]):
        info = p.info
        pid = info["pid"]
        if pid == 2 or info["ppid"] == 2:  # kernel threads
            continue
        try:
            st = _status_fields(pid)
            if st.get("Kthread") == "1":
                continue
            uids = [int(x) for x in st["Uid"].split()]
            gids = [int(x) for x in st["Gid"].split()]
            creds = Creds(
                uids[0], gids[0], uids[2], gids[2], uids[1], gids[1], uids[3], gids[3], 0, _loginuid(pid),
                int(st.get("CapPrm", "0"), 16), int(st.get("CapEff", "0"), 16), int(st.get("CapInh", "0"), 16),
            )
            nspid = int(st.get("NSpid", str(pid)).split()[-1])
        except (OSError, KeyError, ValueError):
            continue  # exited while we looked
        argv = tuple(info["cmdline"] or ())
        binary = info["exe"] or (argv[0] if argv else "")
        out.append(ProcSnapshot(
            pid=pid,
            ppid=info["ppid"] or 0,
            ktime=start_ktime(info["create_time"] or boot, boot, hz),
            nspid=nspid,
            binary=binary,
            argv=argv,
            cwd=info["cwd"] or "",
            creds=creds,
            ns=_ns_inodes(pid),
            cgroup_id=_cgroup_id(pid, cg_root),
        ))
    out.sort(key=lambda s: (s.ktime, s.pid))
    return out


# The kernel's initial namespaces have fixed inode numbers (include/linux/proc_ns.h); mnt and net got
# theirs in recent kernels, older ones allocate them at boot.
INIT_NS_INODES = {"ipc": 0xEFFFFFFF, "uts": 0xEFFFFFFE, "user": 0xEFFFFFFD, "pid": 0xEFFFFFFC,
                  "pid_for_children": 0xEFFFFFFC, "cgroup": 0xEFFFFFFB, "time": 0xEFFFFFFA,
                  "time_for_children": 0xEFFFFFFA, "net": 0xEFFFFFF9, "mnt": 0xEFFFFFF8}


def host_namespaces() -> Namespaces:
    """The initial namespaces, to mark ``is_host``: those of pid 1 where readable (a sandbox may
    deny it), else the kernel's fixed initial inode numbers."""
    from_init = _ns_inodes(1)
    return Namespaces(*(getattr(from_init, n) or INIT_NS_INODES[n] for n in NS_NAMES))
