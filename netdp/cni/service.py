"""The agent's CNI service: what lanner-cni's requests do, and the unix socket they arrive on.

ADD: IPAM lease (persisted first) -> veth into the pod netns (addresses, routes, MTU) -> identity from the
pod's labels -> ipcache entry -> Datapath.add_endpoint -> pod cache; the lease is then marked complete.
A failure undoes the steps already done, in reverse. DEL undoes all of it and succeeds when there is
nothing to undo (containerd's second DEL has no netns and no prevResult). CHECK compares the pod's
interface, address and default route with prevResult. GC releases the leases of attachments not in
``cni.dev/valid-attachments`` (or the older ``cni.dev/attachments``) and deletes host veths that no
lease owns (left by an ADD that crashed).

One request at a time: requests are serialized by a lock (ADDs are tens of milliseconds).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Protocol

from lanner.netdp import veth
from lanner.netdp.cni import validate
from lanner.netdp.cni.protocol import (
    E_ATTACHMENT_EXISTS, E_CHECK_MISMATCH, E_DECODE, E_INTERNAL, E_INVALID_CONFIG, E_IPAM_EXHAUSTED, E_IO,
    E_UNKNOWN_CONTAINER, LATEST, RAW_MAGIC, CniError, convert_result, result_ips,
)
from lanner.netdp.endpoint import IDENTITY_INIT, ContainerInfo, Endpoint, PodInfo
from lanner.netdp.identity import pod_identity_labels
from lanner.netdp.ipam import Ipam, IpamError, IpamExhausted, Lease

log = logging.getLogger("lanner.netdp.cni")

MAX_REQUEST = 4 << 20
REQUEST_TIMEOUT_S = 10.0


class LabelSource(Protocol):
    """Where pod labels come from (CNI does not pass them): CRI PodSandboxStatus, the Kubernetes API...

    A source may also offer ``when_known(namespace, name, sandbox_id, callback)`` and ``cancel(sandbox_id)``
    (lanner.netdp.cri.labels.CriLabelSource does): when ``labels_for`` has no answer yet during ADD (containerd
    registers the sandbox only after ADD returns), the endpoint gets Cilium's provisional ``init`` identity
    and its real one once the callback delivers the labels.
    """

    def labels_for(self, namespace: str, name: str, sandbox_id: str) -> dict[str, str] | None: ...


class EndpointSink(Protocol):
    """Datapath and pod cache both take endpoints in and out."""

    def add_endpoint(self, ep: Endpoint) -> None: ...

    def remove_endpoint(self, ep: Endpoint) -> None: ...


@dataclass(frozen=True)
class ServiceConfig:
    mtu: int = 1500  # used when the network config has no "mtu"
    max_mtu: int = 65535  # a config's "mtu" above this is lowered to it (the VXLAN overlay's limit)
    crash_at: str = ""  # test hook (env LANNER_NETDP_CRASH_AT): "after-ipam" / "after-veth" exit the process


class CniService:
    def __init__(self, ipam: Ipam, cfg: ServiceConfig = ServiceConfig(), store: Any = None, datapath: Any = None,
                 labels: LabelSource | None = None, pod_cache: Any = None, extra_sinks: tuple[Any, ...] = ()) -> None:
        self.ipam = ipam
        self.cfg = cfg
        self.store = store  # IdentityStore or None (identity 0)
        self.datapath = datapath  # Datapath or None
        self.labels = labels
        self.pod_cache = pod_cache  # PodCache (add/remove) or None
        self.extra_sinks = extra_sinks  # more endpoint sinks, e.g. netdp.cluster.ClusterNode (publishes pods)
        self.lock = threading.Lock()
        self.ready = True
        self.counters: dict[str, int] = {}

    # ------------------------------------------------------------------ dispatch
    def handle(self, req: Any) -> dict:
        """One request -> one reply ({"code": 0, "result": ...} or a CNI error object). Never raises."""
        t0 = time.monotonic()
        cmd = req.get("command", "") if isinstance(req, dict) else ""
        try:
            if not isinstance(req, dict) or not isinstance(req.get("config"), dict):
                raise CniError(E_DECODE, "decoding error", "request must be an object with a config object")
            fn = {"ADD": self.add, "DEL": self.delete, "CHECK": self.check, "STATUS": self.status,
                  "GC": self.gc}.get(cmd)
            if fn is None:
                raise CniError(E_INVALID_CONFIG, "unknown command", repr(cmd))
            with self.lock, _gil_priority():
                result = fn(req)
            reply: dict = {"code": 0}
            if result is not None:
                reply["result"] = result
            outcome = "ok"
        except CniError as err:
            reply, outcome = err.to_dict(LATEST), f"error {err.code}"
        except Exception as exc:  # a bug or an unexpected kernel answer: report it, keep serving
            log.exception("CNI %s failed", cmd)
            reply, outcome = CniError(E_INTERNAL, "internal error in the lanner agent", str(exc)).to_dict(LATEST), \
                "error"
        self.counters[f"{cmd or '?'} {outcome}"] = self.counters.get(f"{cmd or '?'} {outcome}", 0) + 1
        log.info("CNI %s %s/%s: %s in %.1f ms", cmd, req.get("containerID", "") if isinstance(req, dict) else "",
                 req.get("ifname", "") if isinstance(req, dict) else "", outcome, (time.monotonic() - t0) * 1e3)
        return reply

    def handle_raw(self, frame: bytes) -> bytes:
        """The plugin's fast path: validate its env and stdin here, as the plugin would, then act. Returns
        the exit code byte and exactly what the plugin prints (a result, nothing, or a CNI error)."""
        version = LATEST
        try:
            command, env, stdin = validate.parse_raw(frame)
            version, req = validate.request(command, env, stdin)
        except CniError as err:
            version = getattr(err, "version", version)
            cmd = frame[len(RAW_MAGIC):].split(b"CNI_COMMAND=", 1)[-1].split(b"\0", 1)[0].decode("utf-8", "replace")
            key = f"{cmd or '?'} error {err.code}"
            self.counters[key] = self.counters.get(key, 0) + 1
            log.info("CNI %s rejected: code %d %s %s", cmd or "?", err.code, err.msg, err.details)
            return b"1" + json.dumps(err.to_dict(version)).encode() + b"\n"
        reply = self.handle(req)
        if reply.get("code"):
            reply["cniVersion"] = version
            return b"1" + json.dumps(reply).encode() + b"\n"
        result = reply.get("result")
        return b"0" + (json.dumps(result).encode() + b"\n" if result is not None else b"")

    def _crash_point(self, name: str) -> None:
        if self.cfg.crash_at == name:
            log.error("LANNER_NETDP_CRASH_AT=%s: exiting now", name)
            os._exit(137)

    # ------------------------------------------------------------------ verbs
    def add(self, req: dict) -> dict:
        cid, ifname, netns, conf = req["containerID"], req["ifname"], req["netns"], req["config"]
        mtu = min(int(conf.get("mtu", self.cfg.mtu)), self.cfg.max_mtu)
        args = req.get("args") or {}
        ns, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
        sandbox = args.get("K8S_POD_INFRA_CONTAINER_ID", "") or cid
        try:
            netns_inode = os.stat(netns).st_ino
        except OSError as exc:
            raise CniError(E_IO, "pod netns not found", f"CNI_NETNS {netns}: {exc.strerror}") from None
        labels = self._labels_now(ns, name, sandbox)
        deferred = labels is None and self.store is not None and hasattr(self.labels, "when_known")
        labels = labels or {}
        hname = veth.host_ifname(cid, ifname)
        try:
            lease = self.ipam.allocate(
                cid, ifname, network=str(conf.get("name", "")), netns=netns, netns_inode=netns_inode,
                host_ifname=hname, labels=dict(labels), pod_namespace=ns, pod_name=name,
                pod_uid=args.get("K8S_POD_UID", ""))
        except IpamExhausted as exc:
            raise CniError(E_IPAM_EXHAUSTED, "no free pod address", str(exc)) from None
        except IpamError as exc:
            raise CniError(E_IO, "IPAM state unusable", str(exc)) from None
        if lease.complete:  # allocate returns an existing lease unchanged: this attachment was ADDed before
            raise CniError(E_ATTACHMENT_EXISTS, "attachment already exists",
                           f"{cid}/{ifname} has {lease.ip}; DEL it first")
        self._crash_point("after-ipam")
        undo: list = [lambda: self.ipam.release(cid, ifname)]
        try:
            try:
                link = veth.create(netns, ifname, hname, f"{veth.ALIAS_PREFIX}{cid}/{ifname}", lease.ip,
                                   self.ipam.gateway, mtu)
            except veth.VethError as exc:
                code = E_ATTACHMENT_EXISTS if "already exists" in str(exc) else E_IO
                raise CniError(code, "cannot create the pod interface", str(exc)) from None
            undo.append(lambda: veth.delete(hname))
            self._crash_point("after-veth")
            ep = self._endpoint(replace(lease, host_ifindex=link.host_ifindex, mac=link.pod_mac), identity=0)
            identity = 0
            if self.store is not None:
                if deferred:  # labels arrive later: provisional identity now, the real one in _labels_arrived
                    identity = IDENTITY_INIT
                else:
                    id_labels = pod_identity_labels(ep.pod)
                    identity = self.store.allocate(id_labels)
                    undo.append(lambda: self.store.release(id_labels))
                self.store.upsert_ip(f"{lease.ip}/32", identity)
                undo.append(lambda: self.store.delete_ip(f"{lease.ip}/32"))
            ep = self._endpoint(replace(lease, host_ifindex=link.host_ifindex, mac=link.pod_mac), identity)
            for sink in (self.datapath, self.pod_cache, *self.extra_sinks):
                if sink is not None:
                    _add(sink, ep)
                    undo.append(lambda s=sink: _remove(s, ep))
            # one write for what DEL and a restart need. A crash before it leaves an incomplete lease: GC
            # then removes the datapath entry (pinned maps outlive the agent), ipcache entry, veth and
            # lease; only the identity reference taken above stays counted.
            lease = self.ipam.update(lease, host_ifindex=link.host_ifindex, mac=link.pod_mac, identity=identity,
                                     complete=True)
            if deferred:
                self._defer_labels(lease, sandbox)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception as exc:  # keep undoing; GC catches what is left
                    log.warning("ADD %s/%s rollback step failed: %s", cid, ifname, exc)
            raise
        result = {
            "cniVersion": LATEST,
            "interfaces": [{"name": link.host_ifname, "mac": link.host_mac, "mtu": mtu},
                           {"name": ifname, "mac": link.pod_mac, "mtu": mtu, "sandbox": netns}],
            "ips": [{"address": f"{lease.ip}/32", "gateway": self.ipam.gateway, "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": self.ipam.gateway}],
            "dns": conf.get("dns") if isinstance(conf.get("dns"), dict) else {},
        }
        return convert_result(result, str(conf.get("cniVersion", LATEST)))

    def delete(self, req: dict) -> None:
        cid, ifname = req["containerID"], req["ifname"]
        lease = self.ipam.get(cid, ifname)
        if lease is None:
            veth.delete(veth.host_ifname(cid, ifname))  # an ADD that died before its lease: its veth only
            return None
        self._teardown(lease)
        return None

    def _labels_now(self, ns: str, name: str, sandbox: str) -> dict[str, str] | None:
        if self.labels is None or not ns:
            return {}
        try:
            return self.labels.labels_for(ns, name, sandbox)
        except Exception as exc:  # the runtime's API down: no labels beyond the namespace, do not fail ADD
            log.warning("labels of pod %s/%s: %s", ns, name, exc)
            return {}

    def _defer_labels(self, lease: Lease, sandbox: str) -> None:
        key = lease.key
        self.labels.when_known(lease.pod_namespace, lease.pod_name, sandbox,  # type: ignore[union-attr]
                               lambda _sid, labels: self._labels_arrived_safe(key, labels))

    def _labels_arrived_safe(self, key: tuple[str, str], labels: dict[str, str] | None) -> None:
        try:
            self._labels_arrived(key, labels)
        except Exception as exc:  # runs on the label source's thread: log, keep the provisional identity
            log.warning("pod %s/%s: applying labels failed: %s", key[0], key[1], exc)

    def _labels_arrived(self, key: tuple[str, str], labels: dict[str, str] | None) -> None:
        """The runtime now knows the pod (labels None: it never did): give the endpoint its real identity."""
        with self.lock:
            lease = self.ipam.get(*key)
            if lease is None or not lease.complete or lease.identity != IDENTITY_INIT:
                return  # deleted meanwhile, or already resolved
            lease = self.ipam.update(lease, labels=dict(labels or {}))
            ep = self._endpoint(lease, 0)
            identity = self.store.allocate(pod_identity_labels(ep.pod))
            lease = self.ipam.update(lease, identity=identity)
            ep = self._endpoint(lease, identity)
            self.store.upsert_ip(f"{lease.ip}/32", identity)
            if self.datapath is not None:
                self.datapath.add_endpoint(ep)  # idempotent: updates the identity in place
            if self.pod_cache is not None:
                (self.pod_cache.update_pod(lease.container_id, ep.pod) if hasattr(self.pod_cache, "update_pod")
                 else _add(self.pod_cache, ep))
            for sink in self.extra_sinks:
                _add(sink, ep)
            log.info("pod %s/%s: labels %s -> identity %d", lease.pod_namespace, lease.pod_name, labels, identity)

    def _teardown(self, lease: Lease) -> None:
        """Undo one attachment: datapath, pod cache, identity, ipcache, veth, lease (in that order)."""
        ep = self._endpoint(lease, lease.identity)
        if self.labels is not None and hasattr(self.labels, "cancel"):
            self.labels.cancel(lease.container_id)
        for sink in (*self.extra_sinks, self.pod_cache, self.datapath):  # idempotent: also for a lease an ADD left incomplete
            if sink is not None:
                try:
                    _remove(sink, ep)
                except Exception as exc:
                    log.warning("removing endpoint %s from %s: %s", lease.ip, type(sink).__name__, exc)
        if self.store is not None:
            if lease.identity and lease.identity != IDENTITY_INIT:  # init was never allocated
                self.store.release(pod_identity_labels(ep.pod))
            self.store.delete_ip(f"{lease.ip}/32")
        veth.delete(lease.host_ifname or veth.host_ifname(lease.container_id, lease.ifname))
        self.ipam.release(lease.container_id, lease.ifname)

    def check(self, req: dict) -> None:
        cid, ifname, netns, conf = req["containerID"], req["ifname"], req["netns"], req["config"]
        lease = self.ipam.get(cid, ifname)
        if lease is None or not lease.complete:
            raise CniError(E_UNKNOWN_CONTAINER, "unknown attachment", f"no lease for {cid}/{ifname}")
        prev = conf.get("prevResult") or {}
        want = f"{lease.ip}/32"
        if want not in result_ips(prev):
            raise CniError(E_CHECK_MISMATCH, "attachment does not match prevResult",
                           f"lease {want} not in prevResult ips {result_ips(prev)}")
        mtu = min(int(conf.get("mtu", self.cfg.mtu)), self.cfg.max_mtu)
        problems = veth.check(netns, ifname, lease.ip, self.ipam.gateway, mtu)
        if veth.host_link(lease.host_ifname) is None:
            problems.append(f"host-side veth {lease.host_ifname} missing")
        if problems:
            raise CniError(E_CHECK_MISMATCH, "attachment does not match prevResult", "; ".join(problems))
        return None

    def status(self, req: dict) -> None:
        if not self.ready:
            raise CniError(50, "lanner agent not ready", "the netdp runtime is starting or stopping")
        return None

    def gc(self, req: dict) -> None:
        conf = req["config"]
        valid: set[tuple[str, str]] = set()
        for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
            items = conf.get(key)
            if items is None:
                continue
            if not isinstance(items, list):
                raise CniError(E_INVALID_CONFIG, "invalid network config", f"{key} must be a list")
            for i, a in enumerate(items):
                if not isinstance(a, dict) or not isinstance(a.get("containerID"), str) \
                        or not isinstance(a.get("ifname"), str):
                    raise CniError(E_INVALID_CONFIG, "invalid network config",
                                   f"{key}[{i}] must be {{\"containerID\": str, \"ifname\": str}}")
                valid.add((a["containerID"], a["ifname"]))
        if not any(k in conf for k in ("cni.dev/valid-attachments", "cni.dev/attachments")):
            raise CniError(E_INVALID_CONFIG, "invalid network config",
                           "GC needs cni.dev/valid-attachments (or cni.dev/attachments); refusing to release "
                           "every attachment")
        network = str(conf.get("name", ""))
        stale = [x for x in self.ipam.leases() if x.key not in valid and x.network in ("", network)]
        for lease in stale:
            log.info("GC: releasing %s of %s/%s", lease.ip, lease.container_id, lease.ifname)
            self._teardown(lease)
        owned = {x.host_ifname for x in self.ipam.leases()}
        leaked = [n for n in veth.ours() if n not in owned]
        for name in leaked:
            log.info("GC: deleting leaked veth %s", name)
            veth.delete(name)
        self.counters["gc leases"] = self.counters.get("gc leases", 0) + len(stale)
        self.counters["gc veths"] = self.counters.get("gc veths", 0) + len(leaked)
        return None

    # ------------------------------------------------------------------ endpoints
    def _endpoint(self, lease: Lease, identity: int) -> Endpoint:
        pod = PodInfo(namespace=lease.pod_namespace, name=lease.pod_name, uid=lease.pod_uid,
                      labels=tuple(sorted(lease.labels.items())),
                      containers=(ContainerInfo(id=lease.container_id),) if lease.container_id else ())
        return Endpoint(endpoint_id=lease.endpoint_id, container_id=lease.container_id, ifname=lease.ifname,
                        netns=lease.netns, netns_inode=lease.netns_inode, host_ifname=lease.host_ifname,
                        host_ifindex=lease.host_ifindex, ipv4=lease.ip, mac=lease.mac, identity=identity, pod=pod)

    def endpoints(self) -> list[Endpoint]:
        return [self._endpoint(x, x.identity) for x in self.ipam.leases() if x.complete]

    def restore(self) -> int:
        """After an agent restart: hand the complete leases whose veth still exists back to the datapath
        and the pod cache. Returns how many were restored."""
        n = 0
        for lease in self.ipam.leases():
            if not lease.complete:
                continue  # an ADD that crashed: the runtime's DEL or GC cleans it
            link = veth.host_link(lease.host_ifname)
            if link is None:
                continue
            if link[0] != lease.host_ifindex:
                lease = self.ipam.update(lease, host_ifindex=link[0])
            ep = self._endpoint(lease, lease.identity)
            try:
                for sink in (self.datapath, self.pod_cache, *self.extra_sinks):
                    if sink is not None:
                        _add(sink, ep)
            except Exception as exc:  # one bad endpoint must not keep the node's CNI down
                log.warning("restoring endpoint %s (%s/%s): %s", lease.ip, lease.container_id, lease.ifname, exc)
                continue
            if lease.identity == IDENTITY_INIT and self.store is not None and hasattr(self.labels, "when_known"):
                self._defer_labels(lease, lease.container_id)
            n += 1
        return n


# An ADD makes ~100 short blocking calls (netlink, file I/O, fsync, libbpf through ctypes), each releasing
# the GIL. While another thread of the agent is busy in Python (the event loop decoding a burst of exec
# events, e.g. the plugin's own exec), getting the GIL back waits up to the switch interval, 5 ms by
# default: measured, an ADD went from 19 ms to 132 ms next to one busy thread, 38 ms with 0.5 ms.
# During a request the interval is lowered so the busy thread yields sooner; restored afterwards.
REQUEST_SWITCH_INTERVAL_S = 0.0005
_switch_lock = threading.Lock()
_switch_depth = 0
_switch_saved = 0.0


@contextmanager
def _gil_priority() -> Iterator[None]:
    global _switch_depth, _switch_saved
    with _switch_lock:
        if _switch_depth == 0:
            _switch_saved = sys.getswitchinterval()
            if _switch_saved > REQUEST_SWITCH_INTERVAL_S:
                sys.setswitchinterval(REQUEST_SWITCH_INTERVAL_S)
        _switch_depth += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_depth -= 1
            if _switch_depth == 0 and _switch_saved > REQUEST_SWITCH_INTERVAL_S:
                sys.setswitchinterval(_switch_saved)


def _add(sink: Any, ep: Endpoint) -> None:
    (sink.add_endpoint if hasattr(sink, "add_endpoint") else sink.add)(ep)


def _remove(sink: Any, ep: Endpoint) -> None:
    (sink.remove_endpoint if hasattr(sink, "remove_endpoint") else sink.remove)(ep)


class CniSocketServer:
    """A unix stream socket (0660, root) served by one thread: read a request to EOF, reply, close."""

    def __init__(self, path: Path, service: CniService) -> None:
        self.path = Path(path)
        self.service = service
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket():
            self.path.unlink()  # left by an agent that did not exit cleanly
        elif self.path.exists():
            raise FileExistsError(f"--cni-socket {self.path}: exists and is not a socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        self.sock.listen(64)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="lanner-cni-server", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            with conn, _gil_priority():  # the whole request: read, validate, act, reply
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT_S)
        chunks, size = [], 0
        try:
            while True:
                b = conn.recv(65536)
                if not b:
                    break
                chunks.append(b)
                size += len(b)
                if size > MAX_REQUEST:
                    raise ValueError("request larger than 4 MiB")
            data = b"".join(chunks)
            if data.startswith(RAW_MAGIC):
                out = self.service.handle_raw(data)
            else:
                out = json.dumps(self.service.handle(json.loads(data))).encode()
        except (OSError, ValueError) as exc:
            out = json.dumps(CniError(E_DECODE, "decoding error", f"request: {exc}").to_dict(LATEST)).encode()
        try:
            conn.sendall(out)
        except OSError as exc:
            log.warning("CNI reply not delivered: %s", exc)

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=REQUEST_TIMEOUT_S + 5)
        self.path.unlink(missing_ok=True)
