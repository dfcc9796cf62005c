"""The process sensor's records -> events: exec, clone and exit against the process cache.

An exec inserts its process (parent resolved by its exec identity), a clone inserts a child that inherits its
parent's details until it execs, an exit reports the process and retires it; an exit the cache never saw
start gets a stub with what the kernel said. A record seen twice (an earlier agent's kept programs and ours
running together during a take-over) is dropped and counted. The encoders turn each into its JSON line (and
protobuf bytes while gRPC clients follow).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lanner.exporter.pipeline import OutEvent
from lanner.process_cache import FLAG_CLONE, FLAG_EXECVE, Process, ProcessCache, make_exec_id

from .process import F_ERROR_CWD, F_TRUNC_ARGS, F_TRUNC_FILENAME, CloneRecord, Creds, ExecRecord, ExitRecord


@dataclass
class ProcessCounters:
    events: dict[str, int] = field(default_factory=lambda: {"process_exec": 0, "process_exit": 0})
    records: int = 0
    exit_misses: int = 0
    parent_misses: int = 0
    duplicates: int = 0  # records dropped as the same event twice (old and new programs during a hand-over)
    by_binary: dict[tuple[str, str], int] = field(default_factory=dict)  # (event type, binary) -> count


@dataclass(frozen=True)
class ProcessEventsContext:
    node_name: str
    cache: ProcessCache
    encoder: Any  # lanner.exporter.encoder.ProcessEventEncoder
    proto: Any  # lanner.exporter.grpc_api.ProtoEventEncoder
    counters: ProcessCounters


class ProcessEvents:
    """Decoded process records -> OutEvents, in order, keeping the process cache current."""

    def __init__(self, ctx: ProcessEventsContext) -> None:
        self.ctx = ctx
        self.cache = ctx.cache
        self.counters = ctx.counters

    def handle(self, records: list, want_pb: bool) -> list[OutEvent]:
        self.counters.records += len(records)
        return self.handle_records(records, want_pb, time.monotonic_ns())

    def handle_records(self, records: list, want_pb: bool, now: int) -> list[OutEvent]:
        """``handle`` without counting the records (the C fast path counts its batch and sends some here)."""
        out: list[OutEvent] = []
        for r in records:
            t = type(r)
            if t is ExecRecord:
                self._exec(r, now, want_pb, out)
            elif t is ExitRecord:
                self._exit(r, now, want_pb, out)
            elif t is CloneRecord:
                if self.cache.get((r.pid, r.ktime)) is not None:
                    self.counters.duplicates += 1
                    continue
                self._on_clone(r, now)
        return out

    def _count(self, kind: str, binary: str) -> None:
        c = self.counters
        c.events[kind] += 1
        k = (kind, binary)
        c.by_binary[k] = c.by_binary.get(k, 0) + 1

    def _exec(self, r: ExecRecord, now: int, want_pb: bool, out: list[OutEvent]) -> None:
        seen = self.cache.get((r.pid, r.ktime))
        if seen is not None and FLAG_EXECVE in seen.flags:
            self.counters.duplicates += 1
            return
        proc, parent = self._on_exec(r, now)
        out.append(OutEvent("process_exec", proc, parent, self.ctx.encoder.exec_event(proc, parent),
                            pb=self.ctx.proto.exec_event(proc, parent) if want_pb else None))
        self._count("process_exec", proc.binary)

    def _exit(self, r: ExitRecord, now: int, want_pb: bool, out: list[OutEvent]) -> None:
        cache = self.cache
        proc = cache.resolve(r.pid, r.exec_ktime)
        if proc is not None and not proc.alive:  # only an exited identity's own exit resolves to it
            self.counters.duplicates += 1
            return
        if proc is None:
            self.counters.exit_misses += 1
            proc = self._stub(r.pid, r.exec_ktime, now)
        parent = cache.get(proc.parent_key) if proc.parent_key else None
        enc, proto = self.ctx.encoder, self.ctx.proto
        out.append(OutEvent("process_exit", proc, parent, enc.exit_event(proc, parent, r.ktime, r.status, r.signal),
                            pb=proto.exit_event(proc, parent, r.ktime, r.status, r.signal) if want_pb else None))
        self._count("process_exit", proc.binary)
        cache.exit(proc, now)

    def _on_exec(self, r: ExecRecord, now: int) -> tuple[Process, Process | None]:
        cache = self.cache
        prev = cache.current(r.pid)
        parent = cache.resolve(r.ppid, r.parent_ktime)
        flags = [FLAG_EXECVE]
        if prev is not None and FLAG_CLONE in prev.flags:
            flags.append(FLAG_CLONE)
        if r.flags & F_TRUNC_ARGS:
            flags.append("truncArgs")
        if r.flags & F_TRUNC_FILENAME:
            flags.append("truncFilename")
        if r.flags & F_ERROR_CWD:
            flags.append("errorCWD")
        elif r.cwd == "/":
            flags.append("rootcwd")
        if parent is None:
            flags.append("miss")
            self.counters.parent_misses += 1
        binary = r.binary
        # positional, in Process's field order (keywords cost measurably on this path)
        pid, ktime, exe = r.pid, r.ktime, r.exe
        proc = Process(
            (pid, ktime), cache.exec_id(pid, ktime), parent.key if parent else None,
            parent.exec_id if parent else "", pid, r.tid, r.nspid, binary, r.arguments, r.cwd, tuple(flags),
            ktime, r.creds, r.ns, r.cgroup_id, exe if exe != binary else "", r.exe_ino,
        )
        if prev is not None and prev.key == proc.key:  # seeded from /proc, exec'd while no agent ran: same identity
            proc.refcnt = prev.refcnt  # its children's references
            old_parent = cache.get(prev.parent_key) if prev.parent_key else None
            if old_parent is not None:
                old_parent.refcnt -= 1  # insert() counts the parent again
        cache.insert(proc, now)
        return proc, parent

    def _on_clone(self, r: CloneRecord, now: int) -> None:
        parent = self.cache.resolve(r.parent_pid, r.parent_ktime)
        if parent is None:
            self.counters.parent_misses += 1
            return  # nothing to inherit; its exec (if any) will carry full details
        self.cache.insert(Process(
            key=(r.pid, r.ktime), exec_id=self.cache.exec_id(r.pid, r.ktime), parent_key=parent.key,
            parent_exec_id=parent.exec_id, pid=r.pid, tid=r.tid, nspid=r.nspid, binary=parent.binary,
            args=parent.args, cwd=parent.cwd, flags=(FLAG_CLONE,), start_ns=r.ktime, creds=parent.creds,
            ns=parent.ns, cgroup_id=parent.cgroup_id, exe=parent.exe, exe_ino=parent.exe_ino,
        ), now)

    def _stub(self, pid: int, ktime: int, now: int) -> Process:
        """An exit for a process the agent never saw start: report what the kernel told us."""
        return Process(key=(pid, ktime), exec_id=make_exec_id(self.ctx.node_name, ktime, pid) if ktime else "",
                       parent_key=None, parent_exec_id="", pid=pid, tid=pid, nspid=0, binary="", args=(), cwd="",
                       flags=("miss",), start_ns=ktime or now, creds=Creds(*([0] * 9), 0xFFFFFFFF, 0, 0, 0),
                       ns=None, cgroup_id=0, alive=True)
