"""The process sensor's C fast path (sensors/fastproc.c) gives the Python path's bytes, counters and cache.

The same raw records, built in the process object's BTF layouts, go through both paths, each with its own
cache, counters and encoder: exec and exit with the parent known and unknown, signals and status codes,
duplicates, stubs, clones (of known, unknown, cloned and exited parents, duplicated, exiting without an exec,
evicted), scripts, relative paths, truncation flags, long arguments, arguments with spaces,
quotes, backslashes, control characters, non-ASCII and invalid UTF-8, and node names with quotes,
backslashes and non-ASCII. With a pod resolver attached (the way --enable-k8s-api and the datapath's pod
cache attach theirs): processes in pods (by cgroup, with and without a container, a container pid, labels,
quotes and non-ASCII) and out of them, a pod unknown at exec and known later, a deleted pod, and pods left to
the Python encoder; and with --enable-process-cred/--enable-process-ns (capabilities, securebits, host and
other namespaces). With a gRPC client following (want_pb) each event's GetEventsResponse bytes (OutEvent.pb)
and each process's memoised protobuf (Process.encoded_pb) are compared too, and the bytes decode to the
message the event's JSON line parses to; batches switch between with and without protobuf. No BPF is loaded:
the layouts come from the built object's BTF.
"""

from __future__ import annotations

import os
import struct
import subprocess

import orjson
import pytest
from google.protobuf import json_format

from lanner.bpf.btf import Btf
from lanner.bpf.records import RecordLayout
from lanner.exporter.api.gen.tetragon import events_pb2
from lanner.exporter.encoder import EncoderOptions, KtimeClock, ProcessEventEncoder
from lanner.exporter.api.h2events import grpc_message
from lanner.exporter.grpc_api import ProtoEventEncoder
from lanner.exporter.pipeline import PB_EVENTS, PB_RUN, OutEvent
from lanner.netdp.endpoint import ContainerInfo, PodInfo
from lanner.netdp.podcache import PodMatch
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
             ppid: int = PARENT, pkt: int = PARENT_KT, flags: int = 0, uid: int = 1000, ino: int = 77,
             cg: int = 9, net: int = 4026531840, nspid: int | None = None, caps: int = 0) -> bytes:
    exe = filename if exe is None else exe
    args = b"".join(a + b"\0" for a in argv)
    v = {"hdr.op": OP_EXEC, "hdr.ktime": kt, "key.pid": pid, "key.ktime": kt, "parent.pid": ppid,
         "parent.ktime": pkt, "tid": pid, "ppid": ppid, "flags": flags, "nspid": pid if nspid is None else nspid,
         "cgroup_id": cg,
         "exe_ino": ino, "creds.uid": uid, "creds.auid": 0xFFFFFFFF, "creds.euid": uid, "creds.cap_permitted": caps,
         "creds.cap_effective": caps >> 1, "creds.cap_inheritable": caps & 0xF0, "creds.securebits": caps & 0x15,
         "creds.gid": uid + 1, "creds.fsuid": uid, "ns.mnt": 4026531841, "ns.uts": 4026531838,
         "ns.net": net, "args_size": len(args), "filename_len": len(filename), "exe_len": len(exe),
         "cwd_len": len(cwd), "args_len": len(args)}
    return _pack("exec_event", v, filename + exe + cwd + args)


def exit_rec(pid: int, exec_kt: int, kt: int, code: int) -> bytes:
    return _pack("exit_event", {"hdr.op": OP_EXIT, "hdr.ktime": kt, "key.pid": pid, "key.ktime": exec_kt,
                                "tid": pid, "exit_code": code})


def clone_rec(pid: int, kt: int, ppid: int = PARENT, pkt: int = PARENT_KT, tid: int | None = None,
              nspid: int | None = None) -> bytes:
    return _pack("clone_event", {"hdr.op": OP_CLONE, "hdr.ktime": kt, "key.pid": pid, "key.ktime": kt,
                                 "parent.pid": ppid, "parent.ktime": pkt, "tid": pid if tid is None else tid,
                                 "nspid": pid if nspid is None else nspid})


def clone_records(pid: int, kt: int) -> list[bytes]:
    """Clones: of known (seeded, exec'd in C, cloned, exited) and unknown parents, duplicates, children that exec,
    exit without exec, are cloned themselves, or take a pid whose identity lives on; the pid+1 .. pid+40 range."""
    c = pid
    r = [exec_rec(c, kt, b"/bin/forker", [b"forker", b"a b"], cwd=b"/", nspid=9)]  # a parent rendered in C
    r += [clone_rec(c + 1, kt + 1, c, kt), exec_rec(c + 1, kt + 2, b"/bin/kid", [b"kid"], ppid=c, pkt=kt),
          exit_rec(c + 1, kt + 2, kt + 3, 0)]  # clone, exec ("execve clone"), exit
    r += [clone_rec(c + 2, kt + 4, c, kt, tid=c + 31, nspid=3), exit_rec(c + 2, kt + 4, kt + 5, 9)]  # no exec
    r += [clone_rec(c + 3, kt + 6, c, kt), clone_rec(c + 3, kt + 6, c, kt),  # a duplicate clone
          exit_rec(c + 3, 0, kt + 7, 1 << 8)]  # its exit by pid only
    r += [clone_rec(c + 4, kt + 8, 31337, 5), exit_rec(c + 4, kt + 8, kt + 9, 0)]  # unknown parent: a stub exit
    r += [clone_rec(c + 5, kt + 10, c, 0),  # parent ktime unknown: the pid's current identity
          clone_rec(c + 6, kt + 11, c + 5, kt + 10),  # a clone of a clone (inherits the inherited)
          exec_rec(c + 6, kt + 12, b"/bin/grandkid", [b"g"], ppid=c + 5, pkt=kt + 10),
          exit_rec(c + 5, kt + 10, kt + 13, 0), exit_rec(c + 6, kt + 12, kt + 14, 0)]
    r += [clone_rec(c + 7, kt + 15, c, kt, tid=c + 30),  # tid != pid
          clone_rec(c + 7, kt + 16, c, kt),  # the same pid again, its first identity alive: ended by the insert
          exit_rec(c + 7, kt + 16, kt + 17, 0), exit_rec(c + 7, kt + 15, kt + 18, 0)]
    r += [clone_rec(c + 8, kt + 19), exec_rec(c + 8, kt + 20, b"/usr/bin/env", [b"env", b"x"]),
          clone_rec(c + 9, kt + 21, c + 8, kt + 20), exec_rec(c + 9, kt + 22, b"bin/rel", [b"rel"], ppid=c + 8,
                                                              pkt=kt + 20)]  # its exec is the Python path's
    r += [exit_rec(c, kt, kt + 23, 0), clone_rec(c + 10, kt + 24, c, kt),  # the clone of an exited parent
          exit_rec(c + 10, kt + 24, kt + 25, 0)]
    r += [clone_rec(c + 11 + i, kt + 26 + i, c + 8, kt + 20) for i in range(25)]  # evictions (capacity 20)
    r += [exit_rec(c + 11 + i, kt + 26 + i, kt + 60 + i, 0) for i in range(0, 25, 4)]
    r += [exit_rec(c + 9, kt + 22, kt + 90, 0), exit_rec(c + 8, kt + 20, kt + 91, 0)]
    return r


def records() -> list[bytes]:
    r: list[bytes] = []
    kt = 10_000_000_000
    odd = [b"-c", b"two words", b'quote"d', b"back\\slash", b"tab\there", b"\x01ctl", "ünï".encode(), b"\xff\xfebad",
           b"", b"--x=1 2"]
    variants = [
        (b"/usr/bin/env", [b"env"] + odd, {}),
        (b"/bin/true", [b"true"], {"cwd": b"/", "caps": 0x1FFFFFFFFFF}),  # rootcwd; every capability
        (b"/bin/true", [], {}),  # no argv at all
        (b"/bin/ls", [b"ls", b"", b""], {"flags": F_TRUNC_ARGS, "caps": 0x35, "net": 4026532111}),
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
    r += clone_records(pid + 1, kt + 100)
    r.append(struct.pack("<B", 99) + bytes(40))  # an op the process sensor does not know
    return r


HOST_NS = (4026531838, 0, 4026531841, 0, 0, 4026531840, 0, 0, 0, 0)  # the host's uts, mnt and net


def world(node: str, fast: bool, pods=None, pods_in_python: bool = False, cred_ns: bool = False, pb=False):
    """One path's handle(raws), cache, counters and events; ``pb``: each batch wants protobuf (a bool, or a
    callable of the batch's index in the run)."""
    decoder = ProcessDecoder(_Obj())  # type: ignore[arg-type]
    cache = ProcessCache(node, capacity=20)  # small: the records make it evict
    clock = KtimeClock()
    clock.offset_ns = OFFSET_NS
    enc = ProcessEventEncoder(EncoderOptions(node, process_cred=cred_ns, process_ns=cred_ns), HOST_NS, clock)
    counters = ProcessCounters()
    enc.attach_pod_resolver(pods)
    events = ProcessEvents(ProcessEventsContext(node, cache, enc, ProtoEventEncoder(enc, node), counters))
    seeded = Process((PARENT, PARENT_KT), cache.exec_id(PARENT, PARENT_KT), None, "", PARENT, PARENT, PARENT,
                     "/usr/bin/bash", ("-l",), "/root", ("procFS",), PARENT_KT, Creds(*([0] * 13)), None, 0)
    cache.insert(seeded, 0)
    want = pb if callable(pb) else (lambda _: pb)
    n = iter(range(1 << 30))
    if fast:
        fp = fastproc.FastPath(MODULE, decoder, events, pods_in_python)
        assert fp.usable(False) and fp.usable(True)

        def fast_handle(raws: list) -> list:
            w = want(next(n))
            out = fp.handle(raws, w)
            if w == PB_EVENTS:  # the batch's gRPC run, framed in C as it encoded: what framing its events' pb gives
                pbs = [e.pb for e in out if e.pb is not None]
                assert out.run == (b"".join(map(grpc_message, pbs)), len(pbs))
            return out

        return fast_handle, cache, counters, events
    return lambda raws: events.handle(decoder.decode(raws), want(next(n))), cache, counters, events


def _cache_state(cache: ProcessCache) -> list:
    st = cache.stats
    return [dict(cache._by_pid), [k for _, k in cache._dead], (st.size, st.evictions, st.misses, st.collected)] + [(p.key, p.exec_id, p.parent_key, p.parent_exec_id, p.pid, p.tid, p.nspid, p.binary, p.args, p.cwd,
             p.flags, p.start_ns, p.creds, p.ns, p.cgroup_id, p.exe, p.exe_ino, p.refcnt, p.alive, p.encoded, p.pod,
             p.encoded_pb)
            for p in cache._entries.values()]


def _run(worlds: dict, phases: list, batch: int) -> dict:
    """Each world (fast or not) through the phases: (change to its resolver, records), in batches."""
    outs = {}
    for fast, (handle, cache, counters, resolver) in worlds.items():
        lines: list[OutEvent] = []
        for change, raws in phases:
            if change is not None:
                change(resolver)
            for i in range(0, len(raws), batch):
                lines += handle(raws[i:i + batch])
        outs[fast] = ([(e.kind, e.line, e.proc.key, e.parent.key if e.parent else None, e.pb) for e in lines],
                      _cache_state(cache), counters)
    return outs


def _assert_same(outs: dict) -> list:
    (py_lines, py_cache, py_c), (c_lines, c_cache, c_c) = outs[False], outs[True]
    for a, b in zip(py_lines, c_lines):
        assert a == b
    assert len(py_lines) == len(c_lines)
    assert py_cache == c_cache
    assert (py_c.events, py_c.by_binary, py_c.records, py_c.exit_misses, py_c.parent_misses, py_c.duplicates) == \
        (c_c.events, c_c.by_binary, c_c.records, c_c.exit_misses, c_c.parent_misses, c_c.duplicates)
    return py_lines


def _assert_pb_decodes(lines: list) -> int:
    """Every event's protobuf parses as GetEventsResponse, to the message its JSON line parses to; the count."""
    n = 0
    for _, line, _, _, pb in lines:
        if pb is None:
            continue
        got = events_pb2.GetEventsResponse.FromString(pb)
        assert got == json_format.ParseDict(orjson.loads(line), events_pb2.GetEventsResponse())
        n += 1
    return n


def _worlds(node: str, pods=None, pods_in_python: bool = False, cred_ns: bool = False, pb=False) -> dict:
    out = {}
    for fast in (False, True):
        resolver = pods() if pods is not None else None
        handle, cache, counters, _ = world(node, fast, resolver, pods_in_python, cred_ns, pb)
        out[fast] = (handle, cache, counters, resolver)
    return out


@pytest.mark.parametrize("batch", [1, 7, 1000])
@pytest.mark.parametrize("in_pod", [False, True])
def test_run_only_batches_frame_the_same_run(batch, in_pod):
    """PB_RUN (every gRPC client takes batches whole): the C path frames the same run of messages as with each
    event's bytes (PB_EVENTS), renders the same lines, and leaves OutEvent.pb unset for the events it rendered
    itself; records it hands back to Python keep theirs (they are in the run too)."""
    pods = FakePods({9: WEB}) if in_pod else None
    raws = records()
    got = {}
    for mode in (PB_EVENTS, PB_RUN):
        handle, _, _, _ = world("node-1", True, pods, pb=mode)
        got[mode] = [handle(raws[i:i + batch]) for i in range(0, len(raws), batch)]
    runs = [b.run for b in got[PB_EVENTS]]
    assert [b.run for b in got[PB_RUN]] == runs and sum(n for _, n in runs) > 40
    assert [[e.line for e in b] for b in got[PB_RUN]] == [[e.line for e in b] for b in got[PB_EVENTS]]
    run_only = [e for b in got[PB_RUN] for e in b]
    assert sum(e.pb is None for e in run_only) > 40  # rendered in C: no per-event bytes
    by_python = [e for e in run_only if e.pb is not None]  # handed back: Python renders OutEvent.pb itself
    joined = b"".join(r for r, _ in runs)
    assert all(grpc_message(e.pb) in joined for e in by_python)


@pytest.mark.parametrize("node", ["node-1", 'we"ird\\node', "nœud-ü", "\x07bell"])
@pytest.mark.parametrize("batch", [1, 7, 1000])
@pytest.mark.parametrize("in_pod", [False, True])
@pytest.mark.parametrize("cred_ns", [False, True])
@pytest.mark.parametrize("pb", [False, True])
def test_same_bytes_counters_and_cache(node, batch, in_pod, cred_ns, pb):
    """Every record variant, as host processes and (in_pod) with a resolver placing their cgroup in a pod, with
    and without --enable-process-cred and --enable-process-ns, with and without protobuf."""
    pods = (lambda: FakePods({9: WEB})) if in_pod else None
    outs = _run(_worlds(node, pods, cred_ns=cred_ns, pb=pb), [(None, records())], batch)
    lines = _assert_same(outs)
    assert len(lines) > 40
    assert _assert_pb_decodes(lines) == (len(lines) if pb else 0)
    joined = b"".join(line for _, line, _, _, _ in lines)
    for member in (b'"cap":{"permitted":["CAP_CHOWN"', b'"process_credentials":{"uid":1000,"gid":1001',
                   b'"securebits":["SecBitNoRoot"', b'"ns":{"uts":{"inum":4026531838,"is_host":true}',
                   b'"net":{"inum":4026532111}'):
        assert (member in joined) == cred_ns, member
    assert all((b'"pod":{' in line) == in_pod for kind, line, _, _, _ in lines if kind == "process_exec")
    py_c = outs[False][2]
    assert py_c.duplicates == 4 and py_c.exit_misses >= 3 and py_c.parent_misses >= 2  # (evictions: more misses)
    assert joined.count(b'"flags":"execve clone"') >= 3 and b'"flags":"clone"' in joined  # clones exec, or exit


class FakePods:
    """A pod resolver as the k8s PodTable and the datapath's PodCache are to the encoder: by cgroup id (a
    container), then by netns inode (the pod); changed between phases as pods come and go."""

    def __init__(self, by_cgroup: dict | None = None, by_netns: dict | None = None) -> None:
        self.by_cgroup: dict[int, PodMatch] = dict(by_cgroup or {})
        self.by_netns: dict[int, PodMatch] = dict(by_netns or {})
        self.calls = 0

    def match(self, netns_inode: int, cgroup_id: int) -> PodMatch | None:
        self.calls += 1
        m = self.by_cgroup.get(cgroup_id)
        return m if m is not None else self.by_netns.get(netns_inode)


WEB = PodMatch(PodInfo("default", 'we"b-ü\\x', "uid-1", (("app", 'we"b'), ("tier", "front-ü")),
                       workload="web", workload_kind="Deployment"),
               ContainerInfo("0123456789abcdef0123", "nginx", "nginx:1.25"), "sha256:abc")
BARE = PodMatch(PodInfo("kube-system", "bare"))  # by netns only: no container, uid, labels or workload
SHORT = PodMatch(PodInfo("ns", "short", "u"), ContainerInfo("abc", "c"))  # a short id, no image
LATE = PodMatch(PodInfo("late", "late-pod", "uid-late"), ContainerInfo("feedfacefeedfacefeed", "app", "img"))
POD_NET, WEB_CG, SHORT_CG, LATE_CG = 4026532999, 501, 503, 777


def pod_phases() -> list:
    """(change to the resolver, records): pods known; a pod unknown at its first exec appears; a pod is deleted."""
    kt, pid = 50_000_000_000, 40_000
    a, a2, child, b, sh, h, late, scr, rel, cl, miss = range(pid, pid + 11)
    one = [
        exec_rec(a, kt, b"/bin/web", [b"web", b"-x y"], cg=WEB_CG, nspid=7),  # container pid 7
        exec_rec(a2, kt + 1, b"/bin/web2", [b"web2"], cg=WEB_CG),  # nspid == pid: no container pid
        exec_rec(child, kt + 2, b"/bin/kid", [b"kid"], ppid=a, pkt=kt, cg=WEB_CG, nspid=8),
        exec_rec(b, kt + 3, b"/bin/bare", [b"bare"], cg=502, net=POD_NET, nspid=1),  # the netns's pod, no container
        exec_rec(sh, kt + 4, b"/bin/short", [], cg=SHORT_CG, nspid=1, cwd=b"/"),
        exec_rec(h, kt + 5, b"/bin/host", [b"host"]),
        exec_rec(late, kt + 6, b"/bin/late", [b"late"], cg=LATE_CG, nspid=1),  # its pod is not known yet
        exec_rec(scr, kt + 7, b"/tmp/s.sh", [b"/bin/sh", b"/tmp/s.sh"], flags=F_SCRIPT, exe=b"/bin/sh", cg=WEB_CG),
        exec_rec(rel, kt + 8, b"bin/rel", [b"rel"], cg=WEB_CG, nspid=3),
        clone_rec(cl, kt + 9), exec_rec(cl, kt + 10, b"/bin/cloned", [b"c"], cg=SHORT_CG),
        clone_rec(pid + 12, kt + 12, a, kt), exit_rec(pid + 12, kt + 12, kt + 13, 0),  # a pod process's clone
        exec_rec(miss, kt + 11, b"/bin/miss", [b"m"], ppid=31337, pkt=5, cg=WEB_CG),
        exit_rec(a2, kt + 1, kt + 20, 0), exit_rec(b, kt + 3, kt + 21, 1 << 8), exit_rec(sh, kt + 4, kt + 22, 9),
        exit_rec(scr, kt + 7, kt + 23, 0), exit_rec(rel, kt + 8, kt + 24, 0),
    ]
    two = [
        exec_rec(pid + 20, kt + 30, b"/bin/late2", [b"l2"], cg=LATE_CG, nspid=2),
        exec_rec(pid + 21, kt + 31, b"/bin/latekid", [b"lk"], ppid=late, pkt=kt + 6, cg=LATE_CG),
        exit_rec(late, kt + 6, kt + 32, 0),  # rendered without its pod at exec: stays so
        exit_rec(pid + 21, kt + 31, kt + 33, 0),
    ]
    three = [
        exec_rec(pid + 30, kt + 40, b"/bin/after", [b"after"], cg=WEB_CG, nspid=4),  # its pod was deleted
        exit_rec(a, kt, kt + 41, 15), exit_rec(child, kt + 2, kt + 42, 0), exit_rec(pid + 30, kt + 40, kt + 43, 0),
        exit_rec(cl, kt + 10, kt + 44, 0), exit_rec(55_000, 77, kt + 45, 0),  # a stub
    ]
    return [(None, one), (lambda r: r.by_cgroup.__setitem__(LATE_CG, LATE), two),
            (lambda r: r.by_cgroup.pop(WEB_CG), three)]


def _pods() -> FakePods:
    return FakePods({WEB_CG: WEB, SHORT_CG: SHORT}, {POD_NET: BARE})


@pytest.mark.parametrize("batch", [1, 5, 1000])
@pytest.mark.parametrize("pods_in_python,cred_ns", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("pb", [False, True])
def test_pods_same_bytes_counters_and_cache(batch, pods_in_python, cred_ns, pb):
    """Processes in and out of pods, a late pod, a deleted pod: the same bytes (JSON and protobuf), counters,
    cache and Process.pod."""
    lines = _assert_same(_run(_worlds("node-1", _pods, pods_in_python, cred_ns, pb), pod_phases(), batch))
    assert _assert_pb_decodes(lines) == (len(lines) if pb else 0)
    by = {(kind, key[0]): line for kind, line, key, _, _ in lines}
    web = by[("process_exec", 40_000)]
    assert b'"pod":{"namespace":"default","name":"we\\"b-\xc3\xbc\\\\x","uid":"uid-1","container":{"id":' in web
    assert b'"image":{"id":"sha256:abc","name":"nginx:1.25"},"pid":7},"pod_labels":' in web
    assert b'"workload":"web","workload_kind":"Deployment"},"docker":"0123456789abcde","parent_exec_id"' in web
    assert b'"pid":' not in by[("process_exec", 40_001)].split(b'"container":')[1].split(b"}")[0]
    assert b'"pod":{"namespace":"kube-system","name":"bare","workload":"bare","workload_kind":"Pod"},"parent' in \
        by[("process_exec", 40_003)]
    assert b'"docker":"abc"' in by[("process_exec", 40_004)]
    assert b'"pod"' not in by[("process_exec", 40_006)] and b'"pod"' not in by[("process_exit", 40_006)]
    assert b'"late-pod"' in by[("process_exec", 40_020)]
    assert b'"pod"' not in by[("process_exec", 40_030)] and b'"pod"' in by[("process_exit", 40_000)]


def test_pods_rendered_in_c_and_resolved_once_per_pair():
    """A batch of pod processes: the resolver is asked once per (netns, cgroup) pair, the Python encoder renders
    none of them (only the seeded parent, once), and Process.pod is set as the encoder sets it."""
    resolver = _pods()
    handle, cache, counters, events = world("n", True, resolver)
    enc = events.ctx.encoder
    rendered: list = []
    real = enc.process_json
    enc.process_json = lambda p: rendered.append(p.key) or real(p)  # type: ignore[method-assign]
    raws = [exec_rec(60_000 + i, 7_000 + i, b"/bin/w", [b"w"], cg=WEB_CG,
                     nspid=60_000 + i if i % 2 else 1) for i in range(8)]  # odd: the host's pid (no container pid)
    out = handle(raws + [exit_rec(60_000 + i, 7_000 + i, 8_000 + i, 0) for i in range(8)])
    # the resolver: once for the batch's one pair, once when the Python encoder renders the seeded parent
    assert len(out) == 16 and resolver.calls == 2 and rendered == [(PARENT, PARENT_KT)]
    p = cache.get((60_000, 7_000))
    assert p.pod == {**_pod_dict(WEB), "container": {**_pod_dict(WEB)["container"], "pid": 1}}
    assert cache.get((60_001, 7_001)).pod == _pod_dict(WEB)


def _pod_dict(m: PodMatch) -> dict:
    from lanner.exporter.encoder import pod_dict
    return pod_dict(m, 0)


@pytest.mark.parametrize("cred_ns", [False, True])
def test_fast_path_takes_the_common_records(cred_ns):
    """The common records (absolute path, known parent) really go through C: the Python path is not called."""
    handle, cache, counters, events = world("n", True, cred_ns=cred_ns)
    calls: list = []
    events.handle_records = lambda *a: calls.append(a) or []  # type: ignore[method-assign]
    out = handle([exec_rec(30_001, 5_000, b"/bin/a", [b"a", b"b c"]), exit_rec(30_001, 5_000, 5_001, 2 << 8)])
    assert [e.kind for e in out] == ["process_exec", "process_exit"] and calls == []
    assert out[0].line.startswith(b'{"process_exec":{"process":{"exec_id":')
    assert b'"arguments":"\\"b c\\""' in out[0].line and b'"status":2,' in out[1].line
    assert out[0].proc.encoded is not None and cache.get((30_001, 5_000)).alive is False
    assert counters.records == 2 and counters.events == {"process_exec": 1, "process_exit": 1}
    handle([clone_rec(30_002, 6_000), clone_rec(30_003, 6_001, 30_001, 5_000)])  # clones too (an exited parent)
    assert calls == [] and cache.get((30_002, 6_000)).flags == ("clone",) and cache.get((30_001, 5_000)).refcnt == 1
    handle([clone_rec(30_002, 6_000)])  # a duplicate: the Python path's (it counts it)
    handle([clone_rec(30_004, 6_002, 31_337, 1)])  # an unknown parent: the Python path's (it counts the miss)
    assert len(calls) == 2 and counters.records == 6


def test_clones_in_c():
    """A fork-heavy batch (clone, exec of the child, exit) runs without the Python path, and a clone's child is
    the Process the Python path inserts: its parent's details, its own identity, the parent's reference."""
    handle, cache, counters, events = world("n", True)
    calls: list = []
    real = events.handle_records
    events.handle_records = lambda *a: calls.append(a) or real(*a)  # type: ignore[method-assign]
    raws = []
    for i in range(5):
        pid, kt = 70_000 + i, 11_000 + 3 * i
        raws += [clone_rec(pid, kt, tid=70_100 + i, nspid=7), exec_rec(pid, kt + 1, b"/bin/t", [b"t"]),
                 exit_rec(pid, kt + 1, kt + 2, 0)]
    handle(raws[:1])
    seeded = cache.get((PARENT, PARENT_KT))
    child = cache.get((70_000, 11_000))
    assert calls == [] and seeded.refcnt == 2 and child.refcnt == 1 and child.alive
    assert (child.exec_id, child.parent_key, child.parent_exec_id, child.pid, child.tid, child.nspid, child.flags,
            child.start_ns) == (cache.exec_id(70_000, 11_000), seeded.key, seeded.exec_id, 70_000, 70_100, 7,
                                ("clone",), 11_000)
    assert (child.binary, child.args, child.cwd, child.creds, child.ns, child.cgroup_id, child.exe, child.exe_ino) == \
        (seeded.binary, seeded.args, seeded.cwd, seeded.creds, seeded.ns, seeded.cgroup_id, seeded.exe, seeded.exe_ino)
    assert child.encoded is None and child.encoded_pb is None and child.pod is None
    out = handle(raws[1:])
    assert calls == [] and len(out) == 10 and all(b'"flags":"execve clone"' in e.line for e in out)
    assert seeded.refcnt == 1 and counters.events == {"process_exec": 5, "process_exit": 5}


@pytest.mark.parametrize("batch", [1, 4, 1000])
@pytest.mark.parametrize("cred_ns", [False, True])
@pytest.mark.parametrize("every", [2, 3])
def test_pb_some_batches(batch, cred_ns, every):
    """A gRPC client that comes and goes: batches with and without protobuf alternate, so processes rendered
    without their protobuf (by C or by Python) exit or parent execs while one is wanted; pods included."""
    pb = lambda i: i % every == 1  # noqa: E731
    recs = records()
    phases = [(None, recs)] + pod_phases()
    lines = _assert_same(_run(_worlds("node-1", _pods, cred_ns=cred_ns, pb=pb), phases, batch))
    n = _assert_pb_decodes(lines)
    assert 0 < n < len(lines)


@pytest.mark.parametrize("cred_ns", [False, True])
def test_pb_rendered_in_c(cred_ns):
    """With protobuf wanted, the common records stay in C: ProtoEventEncoder renders only the seeded parent's
    Process (rendered earlier by Python), once; the processes' Process bytes are memoised on them."""
    handle, cache, counters, events = world("n", True, _pods(), cred_ns=cred_ns, pb=True)
    proto = events.ctx.proto
    rendered: list = []
    real = proto._process.encode
    proto._process.encode = lambda d: rendered.append(d.get("pid")) or real(d)  # the Process renderer (wire.py)
    calls: list = []
    events.handle_records = lambda *a: calls.append(a) or []  # type: ignore[method-assign]
    raws = [exec_rec(61_000 + i, 9_000 + i, b"/bin/w", [b"w", b"a b"], cg=WEB_CG if i % 2 else 9, nspid=7)
            for i in range(6)]
    out = handle(raws + [exit_rec(61_000 + i, 9_000 + i, 9_500 + i, (i << 8) | (i & 1) * 9) for i in range(6)])
    assert len(out) == 12 and calls == [] and [pid for pid in rendered if pid] == [PARENT]
    assert all(e.pb is not None for e in out) and _assert_pb_decodes(
        [(e.kind, e.line, None, None, e.pb) for e in out]) == 12
    p = out[0].proc
    assert p.encoded_pb is not None and out[0].pb.count(p.encoded_pb) == 1 and out[6].pb.count(p.encoded_pb) == 1
    assert counters.events == {"process_exec": 6, "process_exit": 6}


def test_pb_redaction_stays_in_python():
    """Redaction keeps every batch on the Python path, protobuf or not."""
    handle, cache, counters, events = world("n", True)
    fp = fastproc.FastPath(MODULE, ProcessDecoder(_Obj()), events)  # type: ignore[arg-type]
    events.ctx.encoder.redactor = object()
    assert not fp.usable(True) and not fp.usable(False)


def test_an_older_module_is_refused():
    """A module built from an older fastproc.c (its FastProc takes no clone layout) is refused with a TypeError,
    which ProcessSensor.bind turns into the Python path and a "rebuild it" status."""
    import types
    _, _, _, events = world("n", False)
    for consts, why in (({"PB": 1}, "no clones"), ({"CLONE": 1}, "no protobuf")):
        old = types.SimpleNamespace(FastProc=MODULE.FastProc, **consts)
        with pytest.raises(TypeError, match=why):
            fastproc.FastPath(old, ProcessDecoder(_Obj()), events)  # type: ignore[arg-type]
    assert MODULE.CLONE == 1 and MODULE.PB == 1


def test_clone_offsets_match_the_decoder():
    """The clone values the C code reads are the decoder's CloneRecord's."""
    decoder = ProcessDecoder(_Obj())  # type: ignore[arg-type]
    raw = clone_rec(4321, 98_765, 1234, 5_678, tid=4322, nspid=12)
    got = [int.from_bytes(raw[o:o + n], "little") for o, n in fastproc.clone_offsets(decoder)]
    rec = decoder.decode([raw])[0]
    assert got == [rec.ktime, rec.pid, rec.tid, rec.nspid, rec.parent_pid, rec.parent_ktime]
    assert got == [98_765, 4321, 4322, 12, 1234, 5_678]


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
@pytest.mark.parametrize("env,want,args", [({}, "c", ()), ({"LANNER_FASTPATH": "0"}, "python (LANNER_FASTPATH=0)", ()),
                                           ({}, "c", ("--enable-process-cred", "--enable-process-ns"))])
def test_running_agent_reports_its_path_and_exports_exactly(tmp_path, env, want, args):
    """The agent says in its status which path handles process records, and either exports a real exec exactly."""
    a = start_agent(tmp_path, *args, env={**os.environ, **env})
    try:
        assert a.status()["fastpath"] == want
        p = subprocess.Popen(["/bin/echo", "fast path", 'q"uote'], cwd="/", stdout=subprocess.DEVNULL)
        p.wait()
        ex = wait_exec(a, pid=p.pid)
        assert ex["process"]["binary"] == "/bin/echo" and ex["process"]["arguments"] == '"fast path" q"uote'
        assert ex["process"]["flags"] == "execve rootcwd clone" and ex["parent"]["pid"] == os.getpid()
        assert wait_exit(a, pid=p.pid)["process"] == ex["process"]
        if args:
            assert ex["process"]["process_credentials"]["uid"] == os.getuid()
            assert ex["process"]["ns"]["mnt"]["inum"] == os.stat("/proc/self/ns/mnt").st_ino
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
