"""The process cache: every process the agent knows, keyed as Tetragon keys them.

A process's identity is ``(pid, ktime)``: its tgid and the kernel time of its exec (or of its clone,
until it execs; for processes found in /proc at start, their start time). ``exec_id`` is
``base64("node:ktime:pid")``.

Lifetime: a process holds one reference for itself and one for each child that names it as parent.
Exit (or exec, which replaces the identity) drops the process's own reference and one on its parent.
At zero references an entry waits ``grace_ns`` (late events still resolve) and is then collected. The
cache is bounded: past ``capacity`` the oldest unreferenced entries go first, then the oldest of all,
and every eviction is counted.
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("lanner.process_cache")

Key = tuple[int, int]  # (pid, ktime)

FLAG_EXECVE = "execve"
FLAG_PROCFS = "procFS"
FLAG_CLONE = "clone"


@dataclass(slots=True, eq=False)
class Process:
    key: Key
    exec_id: str
    parent_key: Key | None
    parent_exec_id: str
    pid: int
    tid: int
    nspid: int
    binary: str
    args: tuple[str, ...]  # the arguments after the program (argv[1:], or after the script path)
    cwd: str
    flags: tuple[str, ...]
    start_ns: int  # ktime of exec/clone/start
    creds: Any  # sensors.process.Creds
    ns: Any  # sensors.process.Namespaces
    cgroup_id: int
    exe: str = ""  # the file the kernel ran when it differs from binary (script interpreter)
    exe_ino: int = 0
    refcnt: int = 1
    alive: bool = True
    # encoders may memoise their rendering of this (immutable) process here
    encoded: Any = field(default=None, repr=False)
    encoded_pb: Any = field(default=None, repr=False)
    pod: Any = field(default=None, repr=False)  # Tetragon's pod object (dict) once resolved, for export filters

    @property
    def ktime(self) -> int:
        return self.key[1]


@dataclass
class CacheStats:
    size: int = 0
    capacity: int = 0
    evictions: int = 0
    misses: int = 0
    collected: int = 0


def make_exec_id(node: str, ktime: int, pid: int) -> str:
    return base64.b64encode(f"{node}:{ktime}:{pid}".encode()).decode()


class ProcessCache:
    def __init__(self, node_name: str, capacity: int = 65536, grace_ns: int = 30_000_000_000) -> None:
        if capacity < 16:
            raise ValueError(f"process cache capacity must be at least 16, got {capacity}")
        self.node = node_name
        self.capacity = capacity
        self.grace_ns = grace_ns
        self._entries: dict[Key, Process] = {}
        self._by_pid: dict[int, Key] = {}
        self._dead: deque[tuple[int, Key]] = deque()  # (unreferenced since ktime, key)
        self.stats = CacheStats(capacity=capacity)

    def __len__(self) -> int:
        return len(self._entries)

    def exec_id(self, pid: int, ktime: int) -> str:
        return make_exec_id(self.node, ktime, pid)

    # ------------------------------------------------------------------ lookups
    def get(self, key: Key) -> Process | None:
        return self._entries.get(key)

    def current(self, pid: int) -> Process | None:
        key = self._by_pid.get(pid)
        return self._entries.get(key) if key else None

    def resolve(self, pid: int, ktime: int) -> Process | None:
        """The process with this identity; with ktime 0 (unknown to the kernel), the pid's current one."""
        if ktime:
            p = self._entries.get((pid, ktime))
            if p is not None:
                return p
        p = self.current(pid)
        if p is None:
            self.stats.misses += 1
        return p

    # ------------------------------------------------------------------ updates
    def insert(self, proc: Process, now_ns: int) -> Process:
        """Add a new identity. It replaces the pid's previous identity (an exec after a clone).

        sensors/fastproc.c (``cache_insert``, ``cache_exit``) does what ``insert`` and ``exit`` do for the execs and
        exits it handles, calling ``_end`` and ``_evict`` from here: a change to these rules is made there too
        (tests/test_fastproc.py compares the cache after both paths)."""
        prev_key = self._by_pid.get(proc.pid)
        if prev_key is not None and prev_key != proc.key:
            prev = self._entries.get(prev_key)
            if prev is not None and prev.alive:
                self._end(prev, now_ns)
        self._entries[proc.key] = proc
        self._by_pid[proc.pid] = proc.key
        if proc.parent_key is not None:
            parent = self._entries.get(proc.parent_key)
            if parent is not None:
                parent.refcnt += 1
        if len(self._entries) > self.capacity:
            self._evict(now_ns)
        self.stats.size = len(self._entries)
        return proc

    def exit(self, proc: Process, now_ns: int) -> None:
        if proc.alive:
            self._end(proc, now_ns)
            by_pid = self._by_pid
            if by_pid.get(proc.pid) == proc.key:
                del by_pid[proc.pid]

    def _end(self, proc: Process, now_ns: int) -> None:
        """The process is gone: drop its own reference and the one it holds on its parent (one call per event on
        the hot path, so the two drops are written out rather than two calls of a helper)."""
        proc.alive = False
        n = proc.refcnt - 1
        proc.refcnt = n if n > 0 else 0
        if n <= 0:
            self._dead.append((now_ns, proc.key))
        if proc.parent_key is not None:
            parent = self._entries.get(proc.parent_key)
            if parent is not None:
                n = parent.refcnt - 1
                parent.refcnt = n if n > 0 else 0
                if n <= 0:
                    self._dead.append((now_ns, parent.key))

    # ------------------------------------------------------------------ collection
    def gc(self, now_ns: int) -> int:
        """Remove entries unreferenced for longer than the grace period."""
        removed = 0
        limit = now_ns - self.grace_ns
        dead = self._dead
        while dead and dead[0][0] <= limit:
            _, key = dead.popleft()
            p = self._entries.get(key)
            if p is not None and p.refcnt == 0 and not p.alive:
                self._remove(p)
                removed += 1
        self.stats.collected += removed
        self.stats.size = len(self._entries)
        return removed

    def _remove(self, p: Process) -> None:
        del self._entries[p.key]
        if self._by_pid.get(p.pid) == p.key:
            del self._by_pid[p.pid]

    def _evict(self, now_ns: int) -> None:
        over = len(self._entries) - self.capacity
        # first: unreferenced entries still waiting out their grace period
        while over > 0 and self._dead:
            _, key = self._dead.popleft()
            p = self._entries.get(key)
            if p is not None and p.refcnt == 0 and not p.alive:
                self._remove(p)
                self.stats.evictions += 1
                over -= 1
        # then the oldest of all (insertion order); children keep their parent_exec_id string
        while over > 0:
            key = next(iter(self._entries))
            self._remove(self._entries[key])
            self.stats.evictions += 1
            over -= 1
