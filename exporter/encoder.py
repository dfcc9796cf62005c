"""Tetragon-compatible JSON for process events.

Field names follow Tetragon's protojson output (proto field names, zero scalars omitted, wrapper types
such as ``pid``/``uid`` always present, 64-bit integers as strings). A process never changes once
cached, so its JSON object is rendered once (``process_json``) and reused in every event that names it
(its own exec and exit, its children's events): each event line is then assembled from preassembled parts
with one bytes format, byte for byte what ``orjson.dumps`` gives for the same dict (policy events embed the
same bytes as an ``orjson.Fragment``).

Not emitted: ``refcnt`` (it changes over a process's life, so a memoised rendering cannot carry it).

``pod``/``docker``: only when a pod resolver is attached (``attach_pod_resolver``, e.g. the datapath's
``lanner.netdp.podcache.PodCache``) and it knows the process's pod from the netns inode or cgroup id the
exec record carries. The lookup runs once per process, when its JSON is first rendered, and is memoised
with it (and kept on ``Process.pod`` for the export filters); host processes render as before. The C fast
path resolves a batch's distinct (netns, cgroup) pairs once and renders the pod from ``pod_parts``.
"""

from __future__ import annotations

import signal as _signal
import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from lanner.process_cache import FLAG_CLONE, FLAG_EXECVE, Process

# Tetragon's CapabilitiesType enum names; bit 1 really is "DAC_OVERRIDE" there, without the prefix
CAPABILITIES = (
    "CAP_CHOWN", "DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
SECUREBITS = ("SecBitNoRoot", "SecBitNoRootLocked", "SecBitNoSetUidFixup", "SecBitNoSetUidFixupLocked",
              "SecBitKeepCaps", "SecBitKeepCapsLocked", "SecBitNoCapAmbientRaise", "SecBitNoCapAmbientRaiseLocked")
NS_FIELDS = ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup", "user")

# flag words in the order Tetragon prints them
FLAG_ORDER = ("execve", "procFS", "truncFilename", "truncArgs", "taskWalk", "miss", "needsAUID", "errorFilename",
              "errorArgs", "needsCWD", "nocwd", "rootcwd", "errorCWD", "clone")
_FLAG_RANK = {f: i for i, f in enumerate(FLAG_ORDER)}


def cap_names(mask: int) -> list[str]:
    return [CAPABILITIES[i] for i in range(len(CAPABILITIES)) if mask >> i & 1]


def join_arguments(args: tuple[str, ...] | list[str]) -> str:
    """Tetragon's ``arguments``: space separated, an argument containing a space in double quotes."""
    joined = " ".join(args)
    if joined.count(" ") == len(args) - 1:  # no argument holds a space: nothing to quote
        return joined
    return " ".join(f'"{a}"' if " " in a else a for a in args)


def order_flags(flags: tuple[str, ...] | list[str]) -> str:
    return " ".join(sorted(flags, key=lambda f: _FLAG_RANK.get(f, len(FLAG_ORDER))))


def signal_name(sig: int) -> str:
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


class KtimeClock:
    """Converts ``bpf_ktime_get_ns`` (CLOCK_MONOTONIC) to RFC 3339 UTC with nanoseconds."""

    def __init__(self) -> None:
        self.resync()
        self._sec = -1
        self._prefix = ""
        self._last = (-1, "")  # the last wall time converted: an exec's process start and event time are one

    def resync(self) -> None:
        self.offset_ns = time.time_ns() - time.monotonic_ns()

    def wall_ns(self, ktime: int) -> int:
        return ktime + self.offset_ns

    def rfc3339(self, ktime: int) -> str:
        wall = ktime + self.offset_ns
        last = self._last
        if last[0] == wall:
            return last[1]
        sec, ns = divmod(wall, 1_000_000_000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        text = f"{self._prefix}.{ns:09d}Z"
        self._last = (wall, text)
        return text


class ProcessPodResolver(Protocol):
    """``match(netns_inode, cgroup_id)`` -> an object with ``pod`` (``lanner.netdp.endpoint.PodInfo``),
    ``container`` (``ContainerInfo | None``) and ``image_id`` (str), or None for a host process.
    ``lanner.netdp.podcache.PodCache`` is one."""

    def match(self, netns_inode: int, cgroup_id: int) -> Any: ...


def pod_dict(m: Any, nspid: int = 0) -> dict:
    """Tetragon's ``process.pod`` object for a resolved pod (and container)."""
    pod = m.pod
    d: dict = {"namespace": pod.namespace, "name": pod.name}
    if pod.uid:
        d["uid"] = pod.uid
    c = m.container
    if c is not None:
        cd: dict = {"id": c.id, "name": c.name}
        image = {k: v for k, v in (("id", getattr(m, "image_id", "")), ("name", c.image)) if v}
        if image:
            cd["image"] = image
        if nspid:
            cd["pid"] = nspid
        d["container"] = cd
    if pod.labels:
        d["pod_labels"] = dict(pod.labels)
    # the controller from the Kubernetes API (--enable-k8s-api); without it the pod is its own workload
    d["workload"] = getattr(pod, "workload", "") or pod.name
    d["workload_kind"] = getattr(pod, "workload_kind", "") or "Pod"
    return d


@dataclass(frozen=True)
class EncoderOptions:
    node_name: str
    process_cred: bool = False  # cap + process_credentials (Tetragon: --enable-process-cred)
    process_ns: bool = False  # ns (Tetragon: --enable-process-ns)


class ProcessEventEncoder:
    def __init__(self, options: EncoderOptions, host_ns: tuple[int, ...], clock: KtimeClock,
                 redactor: Any = None) -> None:
        self.opts = options
        self.redactor = redactor  # exporter.fieldfilters.Redactor: applied once per process
        self.node = options.node_name
        self.host_ns = dict(zip(NS_FIELDS, host_ns))
        self.clock = clock
        self._dumps = orjson.dumps
        self._fragment = orjson.Fragment
        self._node_json = orjson.dumps(self.node)
        self._flags: dict[tuple[str, ...], str] = {}
        self._pods: ProcessPodResolver | None = None

    def attach_pod_resolver(self, resolver: ProcessPodResolver | None) -> None:
        """Enrich processes rendered from now on with their pod (None detaches)."""
        self._pods = resolver

    @property
    def pod_resolver(self) -> ProcessPodResolver | None:
        """The attached resolver (policy events also name the pods behind socket addresses with it)."""
        return self._pods

    @property
    def renders_plain(self) -> bool:
        """No redaction applies to a process's JSON: what the C fast path (sensors/fastproc.c) renders itself, the
        pod from ``pod_parts``, credentials and namespaces from ``creds_parts`` and ``ns_part``."""
        return not self.redactor

    def why_not_plain(self) -> str:
        """The options that keep process records on the Python path ("" when none does)."""
        return "--redaction-filters" if self.redactor else ""

    def pod_parts(self, m: Any) -> tuple[bytes, bytes, bytes, dict] | None:
        """What the C fast path needs to render a process of this resolved pod (``match``'s result) as
        ``process_dict`` does: the pod's JSON split where its container's ``pid`` goes (head, tail; tail b""
        without a container), the ``docker`` value's JSON (b"" without a container) and the pod dict
        (``pid`` not set). None if the split does not hold (the Python encoder then renders)."""
        d0 = pod_dict(m, 0)
        j0 = self._dumps(d0)
        if "container" not in d0:
            return j0, b"", b"", d0
        j1 = self._dumps(pod_dict(m, 1))
        i = next((k for k, (a, b) in enumerate(zip(j0, j1)) if a != b), len(j0))
        if j1 != j0[:i] + b',"pid":1' + j0[i:]:
            return None
        return j0[:i], j0[i:], self._dumps(d0["container"]["id"][:15]), d0

    def _pod(self, p: Process) -> dict | None:
        ns = p.ns
        m = self._pods.match(ns.net if ns is not None else 0, p.cgroup_id)  # type: ignore[union-attr]
        if m is None:
            return None
        return pod_dict(m, p.nspid if p.nspid != p.pid else 0)

    # ------------------------------------------------------------------ processes
    def process_dict(self, p: Process) -> dict:
        c = p.creds
        d: dict = {
            "exec_id": p.exec_id,
            "pid": p.pid,
            "uid": c.uid,
            "cwd": p.cwd,
            "binary": p.binary,
        }
        args = join_arguments(p.args)
        if args and self.redactor:
            args = self.redactor.arguments(p.binary, args)
        if args:
            d["arguments"] = args
        flags = self._flags.get(p.flags)
        if flags is None:  # a handful of distinct flag sets: ordered once each
            flags = self._flags[p.flags] = order_flags(p.flags)
        d["flags"] = flags
        d["start_time"] = self.clock.rfc3339(p.start_ns)
        d["auid"] = c.auid
        if self._pods is not None:
            pod = p.pod = self._pod(p)
            if pod is not None:
                d["pod"] = pod
                if "container" in pod:
                    d["docker"] = pod["container"]["id"][:15]
        if p.parent_exec_id:
            d["parent_exec_id"] = p.parent_exec_id
        if self.opts.process_cred:
            cap = self._cap(c)
            if cap:
                d["cap"] = cap
        if self.opts.process_ns and p.ns is not None:
            ns = self._ns(p.ns)
            if ns:
                d["ns"] = ns
        d["tid"] = p.tid
        if self.opts.process_cred:
            d["process_credentials"] = self._credentials(c)
        if p.exe and p.exe != p.binary:
            f: dict = {"path": p.exe}
            if p.exe_ino:
                f["inode"] = {"number": str(p.exe_ino)}
            d["binary_properties"] = {"file": f}
        return d

    @staticmethod
    def _cap(c: Any) -> dict:
        cap = {}
        for name, mask in (("permitted", c.cap_permitted), ("effective", c.cap_effective),
                           ("inheritable", c.cap_inheritable)):
            if mask:
                cap[name] = cap_names(mask)
        return cap

    def _ns(self, n: Any) -> dict:
        ns = {}
        for name in NS_FIELDS:
            inum = getattr(n, name)
            if inum:
                ns[name] = {"inum": inum, "is_host": True} if self.host_ns.get(name) == inum else {"inum": inum}
        return ns

    @staticmethod
    def _credentials(c: Any) -> dict:
        pc = {"uid": c.uid, "gid": c.gid, "euid": c.euid, "egid": c.egid, "suid": c.suid, "sgid": c.sgid,
              "fsuid": c.fsuid, "fsgid": c.fsgid}
        if c.securebits:
            pc["securebits"] = [SECUREBITS[i] for i in range(len(SECUREBITS)) if c.securebits >> i & 1]
        return pc

    def creds_parts(self, c: Any) -> tuple[bytes, bytes]:
        """The ``cap`` and ``process_credentials`` members of a process with these credentials, as
        ``process_dict`` renders them with this encoder's options (',"cap":{...}' or b"", likewise): what the C
        fast path splices in, rendered once per distinct credentials."""
        if not self.opts.process_cred:
            return b"", b""
        cap = self._cap(c)
        return (b',"cap":' + self._dumps(cap) if cap else b"",
                b',"process_credentials":' + self._dumps(self._credentials(c)))

    def ns_part(self, n: Any) -> bytes:
        """The ``ns`` member for these namespaces with this encoder's options (',"ns":{...}' or b"")."""
        ns = self._ns(n) if self.opts.process_ns and n is not None else None
        return b',"ns":' + self._dumps(ns) if ns else b""

    def process_json(self, p: Process) -> bytes:
        """The process's JSON object, rendered once and memoised on it (``Process.encoded``)."""
        raw = p.encoded
        if raw is None:
            # an exact-size copy: orjson's result can carry kilobytes of spare capacity, kept per process
            raw = p.encoded = bytes(bytearray(self._dumps(self.process_dict(p))))
        return raw

    def process_fragment(self, p: Process) -> orjson.Fragment:
        return self._fragment(self.process_json(p))

    # ------------------------------------------------------------------ events
    # Each line is assembled from preassembled parts: the memoised process objects, the node name encoded
    # once, the time (ASCII). The bytes are what orjson.dumps gives for the same dict with fragments.
    def exec_event(self, p: Process, parent: Process | None) -> bytes:
        pj = self.process_json
        t = self.clock.rfc3339(p.start_ns).encode()
        if parent is None:
            return b'{"process_exec":{"process":%b},"node_name":%b,"time":"%b"}' % (pj(p), self._node_json, t)
        return b'{"process_exec":{"process":%b,"parent":%b},"node_name":%b,"time":"%b"}' % (
            pj(p), pj(parent), self._node_json, t)

    def exit_event(self, p: Process, parent: Process | None, ktime: int, status: int, sig: int) -> bytes:
        pj = self.process_json
        parts = [b'{"process_exit":{"process":', pj(p)]
        if parent is not None:
            parts += (b',"parent":', pj(parent))
        if sig:
            parts += (b',"signal":"', signal_name(sig).encode(), b'"')
        if status:
            parts += (b',"status":', b"%d" % status)
        t = self.clock.rfc3339(ktime).encode()
        parts += (b',"time":"', t, b'"},"node_name":', self._node_json, b',"time":"', t, b'"}')
        return b"".join(parts)

__all__ = [
    "CAPABILITIES", "EncoderOptions", "FLAG_CLONE", "FLAG_EXECVE", "KtimeClock", "ProcessEventEncoder",
    "ProcessPodResolver", "cap_names", "pod_dict", "join_arguments", "order_flags", "signal_name",
]
