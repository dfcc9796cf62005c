"""The process sensor's C fast path (sensors/fastproc.c) gives the Python path's bytes, counters and cache.

The same raw records, built in the process object's BTF layouts, go through both paths, each with its own
cache, counters and encoder: exec and exit with the parent known and unknown, signals and status codes,
duplicates, stubs, clones, scripts, relative paths, truncation flags, long arguments, arguments with spaces,
quotes, backslashes, control characters, non-ASCII and invalid UTF-8, and node names with quotes,
backslashes and non-ASCII. No BPF is loaded: the layouts come from the built object's BTF.
"""

from __future__ import annotations

import os
import struct
import subprocess

import pytest

from lanner.bpf.btf import Btf
from lanner.bpf.records import RecordLayout
from lanner.exporter.encoder import EncoderOptions, KtimeClock, ProcessEventEncoder
from lanner.exporter.pipeline import OutEvent
from lanner.process_cache import Process, ProcessCache
from lanner.sensors import fastproc
from lanner.sensors.process import (F_ERROR_CWD, F_SCRIPT, F_TRUNC_ARGS, F_TRUNC_FILENAME, OP_CLONE, OP_EXEC,
                                    OP_EXIT, PROCESS_OBJECT, Creds, ProcessDecoder)
from lanner.sensors.process_events import ProcessCounters, ProcessEvents, ProcessEventsContext
from tests.conftest import start_agent, wait_exec, wait_exit

MODULE, WHY = fastproc.load_module()
pytestmark = pytest.mark.skipif(MODULE is None, reason=WHY)

PARENT = 4242  # a process both caches know (seeded), as the agent knows its /proc
PARENT_KT = 1_000
OFFSET_NS = 1_765_000_000_123_456_789  # the clock offset both paths use


class _Obj:
    btf = Btf.from_elf(PROCESS_OBJECT)


def _pack(name: str, values: dict, tail: bytes = b"") -> bytes:
    layout = RecordLayout.from_btf(_Obj.btf, name)
    fixed = [values.get(n, b"" if f.endswith("s") else 0)
             for n, f in zip(layout.names, _codes(layout.fmt))]
    return layout.struct.pack(*fixed) + tail


def _codes(fmt: str) -> list[str]:
    import re
    return [c + s for c, s in re.findall(r"(\d*)([a-zA-Z?])", fmt) if s != "x"]


def exec_rec(pid: int, kt: int, filename: bytes, argv: list[bytes], cwd: bytes = b"/work", exe: bytes | None = None,
             ppid: int = PARENT, pkt: int = PARENT_KT, flags: int = 0, uid: int = 1000, ino: int = 77) -> bytes:
    exe = filename if exe is None else exe
    args = b"".join(a + b"\0" for a in argv)
    v = {"hdr.op": OP_EXEC, "hdr.ktime": kt, "key.pid": pid, "key.ktime": kt, "parent.pid": ppid,
         "parent.ktime": pkt, "tid": pid, "ppid": ppid, "flags": flags, "nspid": pid, "cgroup_id": 9,
         "exe_ino": ino, "creds.uid": uid, "creds.auid": 0xFFFFFFFF, "creds.euid": uid, "ns.mnt": 4026531841,
         "ns.net": 4026531840, "args_size": len(args), "filename_len": len(filename), "exe_len": len(exe),
         "cwd_len": len(cwd), "args_len": len(args)}
    return _pack("exec_event", v, filename + exe + cwd + args)


def exit_rec(pid: int, exec_kt: int, kt: int, code: int) -> bytes:
    return _pack("exit_event", {"hdr.op": OP_EXIT, "hdr.ktime": kt, "key.pid": pid, "key.ktime": exec_kt,
                                "tid": pid, "exit_code": code})


def clone_rec(pid: int, kt: int, ppid: int = PARENT, pkt: int = PARENT_KT) -> bytes:
    return _pack("clone_event", {"hdr.op": OP_CLONE, "hdr.ktime": kt, "key.pid": pid, "key.ktime": kt,
                                 "parent.pid": ppid, "parent.ktime": pkt, "tid": pid, "nspid": pid})


def records() -> list[bytes]:
    r: list[bytes] = []
    kt = 10_000_000_000
    odd = [b"-c", b"two words", b'quote"d', b"back\\slash", b"tab\there", b"\x01ctl", "ünï".encode(), b"\xff\xfebad",
           b"", b"--x=1 2"]
    variants = [
        (b"/usr/bin/env", [b"env"] + odd, {}),
        (b"/bin/true", [b"true"], {"cwd": b"/"}),  # rootcwd
        (b"/bin/true", [], {}),  # no argv at all
        (b"/bin/ls", [b"ls", b"", b""], {"flags": F_TRUNC_ARGS}),
        (b"/bin/ls", [b"ls", b"-l"], {"flags": F_ERROR_CWD, "cwd": b""}),
        (b"/usr/bin/python3.11", [b"python3", b"x.py"], {"exe": b"/usr/lib/python3.11", "ino": 0}),
        (b"/usr/bin/python3.11", [b"python3"], {"exe": b"/usr/lib/py\"thon"}),  # exe != binary, with inode
        (b"/opt/\xc3\xa9t\xc3\xa9 \"q\"/b\\in", [b"x", b"a" * 300], {"cwd": "/tmp/ü \"q\"".encode()}),  # long args
        (b"/bin/sh", [b"sh", b"arg " * 600], {}),  # args past the memo key limit, and with spaces
        (b"/tmp/script.sh", [b"/bin/sh", b"/tmp/script.sh", b"a"], {"flags": F_SCRIPT, "exe": b"/bin/sh"}),
        (b"bin/relative", [b"relative"], {}),  # relative: resolved against cwd
        (b"/usr/./bin//dotted", [b"d"], {}),  # normalised
        (b"/very/long/trunc", [b"t"], {"flags": F_TRUNC_FILENAME, "exe": b"/very/long/truncated-name"}),
        (b"/bin/miss", [b"miss"], {"ppid": 31337, "pkt": 5}),  # unknown parent
        (b"/bin/zero", [b"zero"], {"pkt": 0}),  # parent identity unknown to the kernel: the pid's current one
    ]
    pid = 20_000
    codes = [0, 1 << 8, 255 << 8, 9, 15, 64, 100, (3 << 8) | 6, 0x80 | 11]
    for i, (fn, argv, kw) in enumerate(variants):
        pid += 1
        kt += 1_000_003
        r.append(exec_rec(pid, kt, fn, argv, **kw))
        if i % 3 == 0:  # its child execs while it lives: a parent with the fast path's JSON
            r.append(exec_rec(pid + 5000, kt + 7, b"/bin/child", [b"child", b"x"], ppid=pid, pkt=kt))
            r.append(exit_rec(pid + 5000, kt + 7, kt + 8, 0))
        r.append(exit_rec(pid, kt if i % 4 else 0, kt + 500, codes[i % len(codes)]))
    pid += 1
    kt += 10_000
    r += [exec_rec(pid, kt, b"/bin/dup", [b"dup"]), exec_rec(pid, kt, b"/bin/dup", [b"dup"])]  # duplicate exec
    r += [exit_rec(pid, kt, kt + 1, 0), exit_rec(pid, kt, kt + 2, 0)]  # duplicate exit
    r.append(exit_rec(55_555, 123, kt + 3, 9))  # exit of a process never seen: a stub
    r.append(exit_rec(55_556, 9, kt + 4, 0))  # (a stub for exec ktime 0 starts "now": not comparable)
    # clone, then the child execs (flags "execve clone"), then exits
    pid += 1
    r += [clone_rec(pid, kt + 10), exec_rec(pid, kt + 11, b"/bin/cloned", [b"cloned"]), exit_rec(pid, kt + 11, kt + 12, 0)]
    r.append(struct.pack("<B", 99) + bytes(40))  # an op the process sensor does not know
    return r


def world(node: str, fast: bool):
    decoder = ProcessDecoder(_Obj())  # type: ignore[arg-type]
    cache = ProcessCache(node, capacity=20)  # small: the records make it evict
    clock = KtimeClock()
    clock.offset_ns = OFFSET_NS
    enc = ProcessEventEncoder(EncoderOptions(node), (0,) * 10, clock)
    counters = ProcessCounters()
    events = ProcessEvents(ProcessEventsContext(node, cache, enc, None, counters))
    seeded = Process((PARENT, PARENT_KT), cache.exec_id(PARENT, PARENT_KT), None, "", PARENT, PARENT, PARENT,
                     "/usr/bin/bash", ("-l",), "/root", ("procFS",), PARENT_KT, Creds(*([0] * 13)), None, 0)
    cache.insert(seeded, 0)
    if fast:
        fp = fastproc.FastPath(MODULE, decoder, events)
        assert fp.usable(False) and not fp.usable(True)
        return lambda raws: fp.handle(raws), cache, counters, events
    return lambda raws: events.handle(decoder.decode(raws), False), cache, counters, events


def _cache_state(cache: ProcessCache) -> list:
    st = cache.stats
    return [dict(cache._by_pid), [k for _, k in cache._dead], (st.size, st.evictions, st.misses, st.collected)] + [(p.key, p.exec_id, p.parent_key, p.parent_exec_id, p.pid, p.tid, p.nspid, p.binary, p.args, p.cwd,
             p.flags, p.start_ns, p.creds, p.ns, p.cgroup_id, p.exe, p.exe_ino, p.refcnt, p.alive, p.encoded)
            for p in cache._entries.values()]


@pytest.mark.parametrize("node", ["node-1", 'we"ird\\node', "nœud-ü", "\x07bell"])
@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_same_bytes_counters_and_cache(node, batch):
    raws = records()
    outs = {}
    for fast in (False, True):
        handle, cache, counters, _ = world(node, fast)
        lines: list[OutEvent] = []
        for i in range(0, len(raws), batch):
            lines += handle(raws[i:i + batch])
        outs[fast] = ([(e.kind, e.line, e.proc.key, e.parent.key if e.parent else None) for e in lines],
                      _cache_state(cache), counters)
    (py_lines, py_cache, py_c), (c_lines, c_cache, c_c) = outs[False], outs[True]
    assert len(py_lines) > 40
    for a, b in zip(py_lines, c_lines):
        assert a == b
    assert len(py_lines) == len(c_lines)
    assert py_cache == c_cache
    assert (py_c.events, py_c.by_binary, py_c.records, py_c.exit_misses, py_c.parent_misses, py_c.duplicates) == \
        (c_c.events, c_c.by_binary, c_c.records, c_c.exit_misses, c_c.parent_misses, c_c.duplicates)
    assert py_c.duplicates == 2 and py_c.exit_misses == 2 and py_c.parent_misses >= 1


def test_fast_path_takes_the_common_records():
    """The common records (absolute path, known parent) really go through C: the Python path is not called."""
    handle, cache, counters, events = world("n", True)
    calls: list = []
    events.handle_records = lambda *a: calls.append(a) or []  # type: ignore[method-assign]
    out = handle([exec_rec(30_001, 5_000, b"/bin/a", [b"a", b"b c"]), exit_rec(30_001, 5_000, 5_001, 2 << 8)])
    assert [e.kind for e in out] == ["process_exec", "process_exit"] and calls == []
    assert out[0].line.startswith(b'{"process_exec":{"process":{"exec_id":')
    assert b'"arguments":"\\"b c\\""' in out[0].line and b'"status":2,' in out[1].line
    assert out[0].proc.encoded is not None and cache.get((30_001, 5_000)).alive is False
    assert counters.records == 2 and counters.events == {"process_exec": 1, "process_exit": 1}
    handle([clone_rec(30_002, 6_000)])  # a clone is the Python path's
    assert len(calls) == 1


def test_field_offsets_match_the_layout():
    layout = RecordLayout.from_btf(_Obj.btf, "exec_event")
    offs = fastproc.field_offsets(layout)
    assert list(offs) == list(layout.names)
    raw = exec_rec(777, 888, b"/bin/x", [b"x"], uid=4321)
    t = layout.struct.unpack_from(raw)
    for name, (off, size) in offs.items():
        want = t[layout.index(name)]
        got = raw[off:off + size] if isinstance(want, bytes) else int.from_bytes(raw[off:off + size], "little")
        assert got == want, name


@pytest.mark.bpf
@pytest.mark.parametrize("env,want", [({}, "c"), ({"LANNER_FASTPATH": "0"}, "python (LANNER_FASTPATH=0)")])
def test_running_agent_reports_its_path_and_exports_exactly(tmp_path, env, want):
    """The agent says in its status which path handles process records, and either exports a real exec exactly."""
    a = start_agent(tmp_path, env={**os.environ, **env})
    try:
        assert a.status()["fastpath"] == want
        p = subprocess.Popen(["/bin/echo", "fast path", 'q"uote'], cwd="/", stdout=subprocess.DEVNULL)
        p.wait()
        ex = wait_exec(a, pid=p.pid)
        assert ex["process"]["binary"] == "/bin/echo" and ex["process"]["arguments"] == '"fast path" q"uote'
        assert ex["process"]["flags"] == "execve rootcwd clone" and ex["parent"]["pid"] == os.getpid()
        assert wait_exit(a, pid=p.pid)["process"] == ex["process"]
    finally:
        a.stop()


def test_dispatch_scan_in_c_matches_the_python_scan():
    """SensorSet.dispatch's op scan (C when built) hands the same runs to the same sensors as the Python loop."""
    import random

    from lanner.sensors.base import SensorSet
    from tests.test_sensor_units import FakeSensor

    rnd = random.Random(16)
    raws = [bytes([rnd.choice([1, 2, 5, 9, 9, 7, 200])]) + b"%d" % i for i in range(3000)]
    seen = []
    for use_c in (True, False):
        a, b, c = FakeSensor("process", {1, 2, 5}), FakeSensor("policy", {9}), FakeSensor("other", {200})
        ss = SensorSet()
        for s in (a, b, c):
            ss.add(s)
        assert (ss._op_runs is not None) == (MODULE is not None)
        if not use_c:
            ss._op_runs = None
        emitted: list = []
        ss.dispatch(raws[:1], False, emitted.append)  # a whole batch of one record
        ss.dispatch(raws[1:], False, emitted.append)
        seen.append((emitted, a.batches, b.batches, c.batches, ss.unknown))
    assert seen[0] == seen[1]
    assert seen[0][4] > 100 and len(seen[0][0]) > 1000
