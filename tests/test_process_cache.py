"""Process cache: identities, refcounts, collection and the size bound (pure Python)."""

from __future__ import annotations

import base64

import pytest

from lanner.process_cache import Process, ProcessCache, make_exec_id


def proc(cache: ProcessCache, pid: int, ktime: int, parent: Process | None = None, flags=("execve",)) -> Process:
    return Process(key=(pid, ktime), exec_id=cache.exec_id(pid, ktime), parent_key=parent.key if parent else None,
                   parent_exec_id=parent.exec_id if parent else "", pid=pid, tid=pid, nspid=pid, binary=f"/bin/p{pid}",
                   args=(), cwd="/", flags=flags, start_ns=ktime, creds=None, ns=None, cgroup_id=0)


def test_exec_id_is_base64_of_node_ktime_pid():
    assert base64.b64decode(make_exec_id("node-a", 123456789, 42)) == b"node-a:123456789:42"


def test_refcounts_follow_children_and_exits():
    c = ProcessCache("n", capacity=100, grace_ns=10)
    parent = c.insert(proc(c, 1, 100), now_ns=0)
    child = c.insert(proc(c, 2, 200, parent), now_ns=0)
    assert parent.refcnt == 2 and child.refcnt == 1
    c.exit(child, now_ns=5)
    assert child.refcnt == 0 and parent.refcnt == 1 and not child.alive
    assert c.gc(now_ns=14) == 0  # grace period not over
    assert c.gc(now_ns=15) == 1 and c.get(child.key) is None
    assert c.get(parent.key) is parent  # still alive


def test_exec_replaces_the_clone_identity_of_the_same_pid():
    c = ProcessCache("n", capacity=100, grace_ns=0)
    parent = c.insert(proc(c, 1, 100), 0)
    clone = c.insert(proc(c, 2, 150, parent, flags=("clone",)), 0)
    execd = c.insert(proc(c, 2, 160, parent), 0)
    assert c.current(2) is execd and not clone.alive
    assert parent.refcnt == 2  # itself + the exec'd child; the clone identity let go of its reference
    assert c.resolve(2, 0) is execd  # unknown ktime: the pid's current identity
    assert c.resolve(2, 150) is clone  # until collected
    c.gc(1)
    assert c.resolve(2, 150) is execd  # collected: falls back to the current identity
    assert c.resolve(99, 0) is None and c.stats.misses == 1


def test_bounded_size_evicts_dead_first_then_oldest():
    c = ProcessCache("n", capacity=16, grace_ns=10**12)
    live = [c.insert(proc(c, 1000 + i, 1 + i), 0) for i in range(8)]
    dead = [c.insert(proc(c, 2000 + i, 100 + i), 0) for i in range(8)]
    for d in dead:
        c.exit(d, 0)
    for i in range(4):
        c.insert(proc(c, 3000 + i, 500 + i), 0)
    assert len(c) == 16 and c.stats.evictions == 4
    assert all(c.get(p.key) is p for p in live)  # unreferenced entries went first
    for i in range(10):
        c.insert(proc(c, 4000 + i, 900 + i), 0)
    assert len(c) == 16 and c.stats.evictions == 14
    assert c.get(live[0].key) is None  # then the oldest


def test_capacity_must_be_sane():
    with pytest.raises(ValueError, match="capacity"):
        ProcessCache("n", capacity=0)
