"""The agent's gRPC API: ``tetragon.FineGuidanceSensors``, wire-compatible with Tetragon's.

Tools built on Tetragon's protos (the ``tetra`` CLI, SIEM forwarders) work against lanner unchanged.
Served on a unix socket by default (root-owned, mode 0660), optionally on TCP with TLS or mTLS.

``GetEvents`` is the hot path. Each process's protobuf is rendered once (from the same dict as its
JSON, so both always agree) and memoised; an event's wire bytes are then assembled by concatenating
length-delimited fields, once per event however many clients follow. Every client has a bounded
queue: when a slow client's queue is full its events are dropped and counted
(``tetragon_notify_overflowed_events_total``), and the agent never waits for it.

One extra method outside Tetragon's service, ``/lanner.v1.Agent/Status``, returns the agent's status
as JSON (raw bytes in, raw bytes out) for ``lanner status``.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import grpc
import orjson
from google.protobuf import json_format

from lanner.exporter.api.gen.tetragon import events_pb2, sensors_pb2, tetragon_pb2
from lanner.exporter.api.h2events import grpc_message
from lanner.exporter.api.wire import DictEncoder, ld, varint
from lanner.exporter.fieldfilters import FieldFilter, FieldFilterSet
from lanner.exporter.filters import EVENT_TYPES, FilterError, FilterSet
from lanner.exporter.pipeline import PB_EVENTS, PB_NONE, PB_RUN, OutEvent

log = logging.getLogger("lanner.grpc")

SERVICE = "tetragon.FineGuidanceSensors"
STATUS_METHOD = "/lanner.v1.Agent/Status"
DEFAULT_ADDRESS = "unix:///var/run/lanner/lanner.sock"
DEFAULT_INFO_FILE = Path("/var/run/lanner/lanner-info.json")
_KIND_BY_NUMBER = {v: k for k, v in EVENT_TYPES.items()}


# ---------------------------------------------------------------------------------------- wire format
def _vi(field_no: int, value: int) -> bytes:
    return varint(field_no << 3) + varint(value)


def _timestamp(wall_ns: int) -> bytes:
    sec, ns = divmod(wall_ns, 1_000_000_000)
    return _seconds(sec) + (b"\x10" + varint(ns) if ns else b"")


@functools.lru_cache(maxsize=64)
def _seconds(sec: int) -> bytes:
    """Timestamp.seconds (field 1): events of one second share it."""
    return _vi(1, sec) if sec else b""


class ProtoEventEncoder:
    """``GetEventsResponse`` wire bytes for process events."""

    def __init__(self, json_encoder: Any, node_name: str) -> None:
        self.json = json_encoder  # exporter.encoder.ProcessEventEncoder: the one rendering of a process
        self.clock = json_encoder.clock
        self._node = ld(1000, node_name.encode())
        self._process = DictEncoder(tetragon_pb2.Process.DESCRIPTOR)

    def process_bytes(self, p: Any) -> bytes:
        """The process's ``tetragon.Process`` bytes, rendered once from its JSON dict and memoised on it."""
        pb = p.encoded_pb
        if pb is None:
            d = orjson.loads(self.json.process_json(p))  # the JSON is rendered (and memoised) anyway
            try:
                pb = self._process.encode(d)
            except (TypeError, KeyError, ValueError):  # a shape wire.py does not cover: protobuf's own parser
                pb = json_format.ParseDict(d, tetragon_pb2.Process()).SerializeToString()
            p.encoded_pb = pb
        return pb

    def _body(self, p: Any, parent: Any | None) -> bytes:
        b = ld(1, self.process_bytes(p))
        if parent is not None:
            b += ld(2, self.process_bytes(parent))
        return b

    def exec_event(self, p: Any, parent: Any | None) -> bytes:
        return ld(1, self._body(p, parent)) + self._node + ld(1001, _timestamp(self.clock.wall_ns(p.start_ns)))

    def exit_event(self, p: Any, parent: Any | None, ktime: int, status: int, sig: int) -> bytes:
        from lanner.exporter.encoder import signal_name

        ts = _timestamp(self.clock.wall_ns(ktime))
        body = self._body(p, parent)
        if sig:
            body += ld(3, signal_name(sig).encode())
        if status:
            body += _vi(4, status)
        body += ld(5, ts)
        return ld(5, body) + self._node + ld(1001, ts)


# ---------------------------------------------------------------------------------------- subscribers
def request_filters(req: events_pb2.GetEventsRequest) -> tuple[FilterSet, FieldFilterSet]:
    def as_dict(f: events_pb2.Filter) -> dict:
        return json_format.MessageToDict(f, preserving_proto_field_name=True)

    try:
        fs = FilterSet.from_lists([as_dict(f) for f in req.allow_list], [as_dict(f) for f in req.deny_list])
    except FilterError as exc:
        raise ValueError(str(exc)) from None
    ffs = []
    for i, ff in enumerate(req.field_filters):
        kinds = frozenset(_KIND_BY_NUMBER[t] for t in ff.event_set if t in _KIND_BY_NUMBER)
        paths = tuple(tuple(p.split(".")) for p in ff.fields.paths)
        if not paths:
            raise ValueError(f"field_filters[{i}].fields: no field paths")
        ffs.append(FieldFilter(paths, kinds, ff.invert_event_set.value, ff.action == events_pb2.INCLUDE))
    return fs, FieldFilterSet(tuple(ffs))


@dataclass(eq=False)
class GrpcSubscriber:
    """One GetEvents client: its filters and its bounded queue. A grpcio stream's queue holds each event's
    ``GetEventsResponse`` bytes; a framed stream's (``framed``: lanner's HTTP/2 writer) holds (gRPC messages
    with their 5-byte prefixes, how many events) runs, and a client without filters gets the batch's one
    shared run (``offer``'s ``run``), so its cost per batch does not grow with the batch."""

    filters: FilterSet
    field_filters: FieldFilterSet
    max_queue: int
    framed: bool = False
    queue: deque = field(default_factory=deque)
    cond: threading.Condition = field(default_factory=threading.Condition)
    queued: int = 0  # events in the queue (changed under cond)
    inflight: int = 0  # events taken by the writer and not yet written
    sent: int = 0
    dropped: int = 0
    closed: bool = False

    @property
    def takes_shared_run(self) -> bool:
        return self.framed and self.filters.empty and not self.field_filters

    def offer(self, events: list[OutEvent], run: tuple[bytes, int] | None = None) -> None:
        """Queue what this client admits of a batch; ``run``: the batch's messages framed once for every
        client that takes them whole."""
        shared = run is not None and self.takes_shared_run
        if shared:
            items, n = [run], run[1]
        else:
            items = self._select(events)
            n = len(items)
        if not n:
            return
        with self.cond:
            if shared:
                if self.queued >= self.max_queue:  # a run goes whole while there is room: the queue may
                    self.dropped += n  # pass max_queue by less than one batch
                    return
            else:
                room = max(self.max_queue - self.queued, 0)
                if room < n:
                    self.dropped += n - room
                    items = items[:room]
                    n = room
                if not n:
                    return
            self.queue.extend(items)
            self.queued += n
            self.cond.notify()

    def _select(self, events: list[OutEvent]) -> list:
        """The queue items of the events this client admits (no pb: encoded before this client joined)."""
        admits = self.filters.admits
        pbs = [ev.pb if not self.field_filters else self._filtered(ev)
               for ev in events if ev.pb is not None and admits(ev)]
        return [(grpc_message(pb), 1) for pb in pbs] if self.framed else pbs

    def take(self, limit: int) -> tuple[list, int]:
        """Up to ``limit`` events' queue items (at least one item) and their event count; for the writers."""
        out, n = [], 0
        with self.cond:
            q = self.queue
            while q and (n < limit or not out):
                item = q.popleft()
                out.append(item)
                n += item[1] if self.framed else 1
            self.queued -= n
        return out, n

    def drop(self, events: list[OutEvent]) -> None:
        """Count the events this client would have been offered (they were not encoded: its queue was full)."""
        admits = self.filters.admits
        self.dropped += sum(1 for ev in events if admits(ev))

    def _filtered(self, ev: OutEvent) -> bytes:
        d = self.field_filters.apply(ev.kind, orjson.loads(ev.line))
        return json_format.ParseDict(d, events_pb2.GetEventsResponse(), ignore_unknown_fields=True).SerializeToString()


def framed_run(events: list[OutEvent]) -> tuple[bytes, int]:
    """A batch's events as consecutive gRPC messages, and how many: built once for every framed client (in C
    when the fast path is built: sensors/fastproc.c grpc_run; tests/test_grpc_fanout.py compares both). A
    batch that carries its run (``EventBatch``: the C fast path framed it while encoding) is not walked again."""
    run = getattr(events, "run", None)
    if run is not None:
        return run
    if _grpc_run is not None:
        return _grpc_run(events)
    pbs = [ev.pb for ev in events if ev.pb is not None]
    return b"".join(map(grpc_message, pbs)), len(pbs)


def _load_grpc_run() -> Callable[[list], tuple[bytes, int]] | None:
    try:
        from lanner.sensors._fastproc import grpc_run  # type: ignore[attr-defined]
    except ImportError:
        return None
    return grpc_run


_grpc_run = _load_grpc_run()


# ---------------------------------------------------------------------------------------- policies
class PolicyManager(Protocol):
    """What the API needs from the policy engine (the agent's ``lanner.sensors.generic.sensor.PolicyHost``). ``list`` has
    every policy the agent knows, with Tetragon's states: one whose BPF objects the kernel refused stays listed
    as TP_STATE_LOAD_ERROR (or TP_STATE_PARTIALLY_ENABLED) with the reason in ``error``, one still being loaded
    as TP_STATE_LOADING. ``add`` raises ValueError when the policy could not be loaded at all (it stays listed)."""

    def add(self, yaml_text: str) -> None: ...
    def delete(self, name: str, namespace: str) -> None: ...
    def list(self) -> list[sensors_pb2.TracingPolicyStatus]: ...
    def configure(self, name: str, namespace: str, enable: bool | None, mode: int | None) -> None: ...


class NoPolicyEngine:
    """Used until a policy engine is attached: every policy request gets a clear refusal."""

    reason = "this lanner agent has no TracingPolicy engine loaded"

    def add(self, yaml_text: str) -> None:
        raise NotImplementedError(self.reason)

    def delete(self, name: str, namespace: str) -> None:
        raise KeyError(f"tracing policy {name!r} not found")

    def list(self) -> list[sensors_pb2.TracingPolicyStatus]:
        return []

    def configure(self, name: str, namespace: str, enable: bool | None, mode: int | None) -> None:
        raise KeyError(f"tracing policy {name!r} not found")


# ---------------------------------------------------------------------------------------- the server
@dataclass(frozen=True)
class GrpcConfig:
    address: str = DEFAULT_ADDRESS  # unix:///path or host:port
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # set: mTLS (clients must present a certificate signed by it)
    enable_deprecated_policy_rpcs: bool = False
    max_queue: int = 65536  # events per client before drops (several 100 ms batches at 200k events/s)
    events_address: str | None = None  # unix:///path: GetEvents framed by lanner itself (exporter/api/h2events.py)
    framed_events: bool = True  # a unix address: lanner's front routes GetEvents to its framing (api/front.py)
    max_clients: int = 64
    info_file: Path | None = DEFAULT_INFO_FILE


class AgentFacade(Protocol):
    """What the server needs from the agent."""

    def status(self) -> dict: ...
    def version(self) -> str: ...
    def probes(self) -> dict[str, bool]: ...


class GrpcApiServer:
    def __init__(self, agent: AgentFacade, config: GrpcConfig, policies: PolicyManager | None = None) -> None:
        self.agent = agent
        self.cfg = config
        self.policies: PolicyManager = policies or NoPolicyEngine()
        self._subs: tuple[GrpcSubscriber, ...] = ()
        self._subs_lock = threading.Lock()
        self.dropped_closed = 0  # drops of clients that have gone
        self.sent_closed = 0  # events sent to clients that have gone
        self._skipping = False  # the last wants_events() said no while clients follow: publish() drops
        self._stopping = threading.Event()
        self._socket_path: Path | None = None
        self._server = grpc.server(ThreadPoolExecutor(max_workers=config.max_clients + 8,
                                                      thread_name_prefix="lanner-grpc"),
                                   options=[("grpc.so_reuseport", 0)])
        self._methods = self._unary_methods()
        self._server.add_generic_rpc_handlers(self._handlers())
        self._front: Path | None = None  # unix addresses: grpcio's private socket behind lanner's front
        self.address = self._bind()
        self._server.start()
        if self._socket_path is not None and self._front is None:
            os.chmod(self._socket_path, 0o660)
        self._main_front = self._start_front()
        self._events = self._start_events_listener()
        self._write_info()
        log.info("gRPC API on %s", self.address)

    # ---- binding
    def _bind(self) -> str:
        addr = self.cfg.address
        if addr.startswith("unix://"):
            path = Path(addr[len("unix://"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                if not stat.S_ISSOCK(path.lstat().st_mode):
                    raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
                if _socket_in_use(path):
                    raise RuntimeError(f"another agent is already serving {path}")
                path.unlink()
            self._socket_path = path
            if self.cfg.framed_events:  # grpcio listens privately; lanner's front owns the public socket
                self._front = path.with_name(f".{path.name}.grpcio")
                self._front.unlink(missing_ok=True)
            old = os.umask(0o177 if self._front else 0o117)
            try:
                self._server.add_insecure_port(f"unix://{self._front}" if self._front else addr)
            finally:
                os.umask(old)
            return addr
        if self.cfg.tls_cert or self.cfg.tls_key:
            if not (self.cfg.tls_cert and self.cfg.tls_key):
                raise ValueError("TLS needs both --server-tls-cert-file and --server-tls-key-file")
            key = Path(self.cfg.tls_key).read_bytes()
            cert = Path(self.cfg.tls_cert).read_bytes()
            ca = Path(self.cfg.tls_client_ca).read_bytes() if self.cfg.tls_client_ca else None
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)
            port = self._server.add_secure_port(addr, creds)
        else:
            port = self._server.add_insecure_port(addr)
        if port == 0:
            raise OSError(f"--server-address {addr}: cannot listen there")
        host = addr.rsplit(":", 1)[0]
        return f"{host}:{port}"

    def _start_front(self) -> Any:
        """The public unix socket: GetEvents framed by lanner, other calls spliced to grpcio (front.py)."""
        if self._front is None:
            return None
        from lanner.exporter.api.h2events import EventsServer

        return EventsServer(self._socket_path, self._subscribe_raw, self._unsubscribe, self.call_unary,
                            backend=self._front)

    def _start_events_listener(self) -> Any:
        addr = self.cfg.events_address
        if not addr:
            return None
        if not addr.startswith("unix://"):
            raise ValueError(f"--server-events-address {addr}: only unix:///path is served")
        from lanner.exporter.api.h2events import EventsServer

        srv = EventsServer(Path(addr[len("unix://"):]), self._subscribe_raw, self._unsubscribe, self.call_unary)
        log.info("GetEvents stream (framed by lanner) on %s", addr)
        return srv

    def _write_info(self) -> None:
        if self.cfg.info_file is None:
            return
        info = {"server_address": self.address, "version": self.agent.version(), "pid": os.getpid()}
        self.cfg.info_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cfg.info_file.with_name(self.cfg.info_file.name + ".tmp")
        tmp.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
        tmp.replace(self.cfg.info_file)

    # ---- event fan-out (called from the agent's thread)
    def wants_events(self) -> int:
        """What the next batch should carry (exporter/pipeline.py PB_*): nothing unless some client follows and
        has room in its queue; only the batch's run of messages when every client takes the batch whole
        (framed, no filters); else each event's bytes. When every client's queue is full the batch is not
        encoded at all (under overload that work would only be dropped, and it would take the event loop's
        time), and the next ``publish`` counts its events as dropped for every client, as if offered."""
        subs = self._subs
        room = any(s.queued < s.max_queue for s in subs)
        self._skipping = bool(subs) and not room
        if not room:
            return PB_NONE
        return PB_RUN if all(s.takes_shared_run for s in subs) else PB_EVENTS

    def publish(self, events: list[OutEvent]) -> None:
        skipping = self._skipping
        run = None
        for sub in self._subs:
            if skipping:
                sub.drop(events)
                continue
            if run is None and sub.takes_shared_run:
                run = framed_run(events)
            sub.offer(events, run)

    def stats(self) -> dict:
        subs = self._subs
        out = {"clients": len(subs), "dropped": self.dropped_closed + sum(s.dropped for s in subs),
               "sent": self.sent_closed + sum(s.sent for s in subs)}
        if self._main_front is not None:  # connections of the main socket: framed by lanner / handed to grpcio
            out["connections"] = dict(self._main_front.counts)
        return out

    # ---- RPCs
    def _unary_methods(self) -> dict[str, tuple[Callable, Any]]:
        """Full path -> (handler(request, context), request class or None for raw bytes): every unary call,
        for grpcio's server and for the calls lanner's own framing answers (exporter/api/h2events.py)."""
        s = sensors_pb2
        deprecated = self._deprecated
        methods = {
            "GetHealth": (self._get_health, tetragon_pb2.GetHealthStatusRequest),
            "GetVersion": (lambda r, c: s.GetVersionResponse(version=self.agent.version()), s.GetVersionRequest),
            "GetInfo": (self._get_info, s.GetInfoRequest),
            "AddTracingPolicy": (self._add_policy, s.AddTracingPolicyRequest),
            "DeleteTracingPolicy": (self._delete_policy, s.DeleteTracingPolicyRequest),
            "ListTracingPolicies": (self._list_policies, s.ListTracingPoliciesRequest),
            "ConfigureTracingPolicy": (self._configure_policy, s.ConfigureTracingPolicyRequest),
            "EnableTracingPolicy": (self._enable_policy, s.EnableTracingPolicyRequest),
            "DisableTracingPolicy": (self._disable_policy, s.DisableTracingPolicyRequest),
            "ListDomains": (lambda r, c: s.ListDomainsResponse(domains=["grpc", "static"]), s.ListDomainsRequest),
            "ListSensors": (deprecated("ListSensors"), s.ListSensorsRequest),
            "EnableSensor": (deprecated("EnableSensor"), s.EnableSensorRequest),
            "DisableSensor": (deprecated("DisableSensor"), s.DisableSensorRequest),
            "RemoveSensor": (deprecated("RemoveSensor"), s.RemoveSensorRequest),
            "RuntimeHook": (lambda r, c: tetragon_pb2.RuntimeHookResponse(), tetragon_pb2.RuntimeHookRequest),
            "GetDebug": (self._get_debug, s.GetDebugRequest),
            "SetDebug": (self._set_debug, s.SetDebugRequest),
        }
        out: dict[str, tuple[Callable, Any]] = {f"/{SERVICE}/{k}": v for k, v in methods.items()}
        out[STATUS_METHOD] = (lambda req, ctx: orjson.dumps(self.agent.status()), None)
        return out

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable, req_cls: Any) -> grpc.RpcMethodHandler:
            if req_cls is None:  # raw bytes in and out
                return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=None, response_serializer=None)
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req_cls.FromString, response_serializer=lambda m: m.SerializeToString())

        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for path, (fn, req_cls) in self._methods.items():
            service, name = path[1:].split("/")
            by_service.setdefault(service, {})[name] = unary(fn, req_cls)
        by_service[SERVICE]["GetEvents"] = grpc.unary_stream_rpc_method_handler(
            self._get_events, request_deserializer=events_pb2.GetEventsRequest.FromString,
            response_serializer=None)  # the stream carries pre-encoded bytes
        return [grpc.method_handlers_generic_handler(k, v) for k, v in by_service.items()]

    def call_unary(self, path: str, request: bytes) -> tuple[int, str, bytes | None]:
        """A unary call answered outside grpcio (lanner's framing): (grpc status code, message, response bytes
        or None), as grpcio's server would answer it."""
        entry = self._methods.get(path)
        if entry is None:
            return grpc.StatusCode.UNIMPLEMENTED.value[0], f"Method not found: {path}", None
        fn, req_cls = entry
        try:
            req = req_cls.FromString(request) if req_cls is not None else request
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            return grpc.StatusCode.INTERNAL.value[0], f"request of {path}: {exc}", None
        try:
            resp = fn(req, _CallContext())
        except _Aborted as exc:
            return exc.code.value[0], exc.details, None
        except Exception as exc:  # noqa: BLE001 - what grpcio answers for a handler's exception
            log.warning("%s failed: %s", path, exc)
            return grpc.StatusCode.UNKNOWN.value[0], f"Exception calling application: {exc}", None
        return 0, "", resp if isinstance(resp, bytes) else resp.SerializeToString()

    def _subscribe(self, request: events_pb2.GetEventsRequest, framed: bool = False) -> GrpcSubscriber:
        """A new client with the request's filters (ValueError: a filter is invalid; OverflowError: the
        agent already has ``max_clients`` GetEvents clients); ``framed``: lanner's writer serves it."""
        flt, ff = request_filters(request)
        sub = GrpcSubscriber(flt, ff, self.cfg.max_queue, framed)
        with self._subs_lock:
            if len(self._subs) >= self.cfg.max_clients:
                raise OverflowError(f"this agent serves at most {self.cfg.max_clients} GetEvents clients")
            self._subs = self._subs + (sub,)
        return sub

    def _subscribe_raw(self, request: bytes) -> GrpcSubscriber:
        try:
            req = events_pb2.GetEventsRequest.FromString(request)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise ValueError(f"GetEventsRequest: {exc}") from None
        return self._subscribe(req, framed=True)

    def _unsubscribe(self, sub: GrpcSubscriber) -> None:
        with self._subs_lock:
            if sub in self._subs:
                self._subs = tuple(s for s in self._subs if s is not sub)
                self.dropped_closed += sub.dropped
                self.sent_closed += sub.sent

    def _get_events(self, request: events_pb2.GetEventsRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            sub = self._subscribe(request)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except OverflowError as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        log.debug("GetEvents client %s connected (%d clients)", context.peer(), len(self._subs))
        try:
            while context.is_active() and not self._stopping.is_set():
                with sub.cond:
                    if not sub.queue:
                        sub.cond.wait(timeout=0.5)
                while sub.queue:
                    items, n = sub.take(1)
                    sub.sent += n
                    yield items[0]
        finally:
            self._unsubscribe(sub)

    def _get_health(self, request: Any, context: Any) -> tetragon_pb2.GetHealthStatusResponse:
        return tetragon_pb2.GetHealthStatusResponse(health_status=[tetragon_pb2.HealthStatus(
            event=tetragon_pb2.HEALTH_STATUS_TYPE_STATUS, status=tetragon_pb2.HEALTH_STATUS_RUNNING,
            details="running")])

    def _get_info(self, request: Any, context: Any) -> sensors_pb2.GetInfoResponse:
        from google.protobuf.wrappers_pb2 import BoolValue

        probes = [sensors_pb2.GetInfoResponse.Probe(Name=k, Enabled=BoolValue(value=v))
                  for k, v in sorted(self.agent.probes().items())]
        return sensors_pb2.GetInfoResponse(version=self.agent.version(), name="lanner", probes=probes)

    def _deprecated(self, name: str) -> Callable:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNIMPLEMENTED,
                          f"{name} is deprecated and not served by lanner; use the TracingPolicy RPCs")
        return handler

    def _policy_call(self, context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except KeyError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0] if exc.args else exc))
        except NotImplementedError as exc:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, str(exc))
        except (ValueError, RuntimeError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def _add_policy(self, r: Any, c: Any) -> Any:
        self._policy_call(c, lambda: self.policies.add(r.yaml))
        return sensors_pb2.AddTracingPolicyResponse()

    def _delete_policy(self, r: Any, c: Any) -> Any:
        self._policy_call(c, lambda: self.policies.delete(r.name, r.namespace))
        return sensors_pb2.DeleteTracingPolicyResponse()

    def _list_policies(self, r: Any, c: Any) -> Any:
        return sensors_pb2.ListTracingPoliciesResponse(policies=self._policy_call(c, self.policies.list))

    def _configure_policy(self, r: Any, c: Any) -> Any:
        enable = r.enable if r.HasField("enable") else None
        mode = r.mode if r.HasField("mode") else None
        self._policy_call(c, lambda: self.policies.configure(r.name, r.namespace, enable, mode))
        return sensors_pb2.ConfigureTracingPolicyResponse()

    def _enable_policy(self, r: Any, c: grpc.ServicerContext) -> Any:
        self._require_deprecated(c, "EnableTracingPolicy")
        self._policy_call(c, lambda: self.policies.configure(r.name, r.namespace, True, None))
        return sensors_pb2.EnableTracingPolicyResponse()

    def _disable_policy(self, r: Any, c: grpc.ServicerContext) -> Any:
        self._require_deprecated(c, "DisableTracingPolicy")
        self._policy_call(c, lambda: self.policies.configure(r.name, r.namespace, False, None))
        return sensors_pb2.DisableTracingPolicyResponse()

    def _require_deprecated(self, context: grpc.ServicerContext, name: str) -> None:
        if not self.cfg.enable_deprecated_policy_rpcs:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{name} is deprecated: use ConfigureTracingPolicy, or start the agent with "
                          "--enable-deprecated-tracingpolicy-grpc")

    def _get_debug(self, request: sensors_pb2.GetDebugRequest, context: Any) -> sensors_pb2.GetDebugResponse:
        level = logging.getLogger("lanner").getEffectiveLevel()
        names = {logging.DEBUG: "LOG_LEVEL_DEBUG", logging.INFO: "LOG_LEVEL_INFO",
                 logging.WARNING: "LOG_LEVEL_WARN", logging.ERROR: "LOG_LEVEL_ERROR"}
        return sensors_pb2.GetDebugResponse(flag=request.flag, level=sensors_pb2.LogLevel.Value(
            names.get(level, "LOG_LEVEL_INFO")))

    def _set_debug(self, request: sensors_pb2.SetDebugRequest, context: Any) -> sensors_pb2.SetDebugResponse:
        name = sensors_pb2.LogLevel.Name(request.level)
        py = {"LOG_LEVEL_DEBUG": logging.DEBUG, "LOG_LEVEL_TRACE": logging.DEBUG, "LOG_LEVEL_INFO": logging.INFO,
              "LOG_LEVEL_WARN": logging.WARNING, "LOG_LEVEL_ERROR": logging.ERROR}.get(name)
        if py is not None:
            logging.getLogger("lanner").setLevel(py)
            log.info("log level set to %s over the API", name)
        return sensors_pb2.SetDebugResponse(flag=request.flag, level=request.level)

    # ---- shutdown
    def close(self) -> None:
        self._stopping.set()
        for srv in (self._main_front, self._events):
            if srv is not None:
                srv.close()
        for sub in self._subs:
            with sub.cond:
                sub.cond.notify_all()
        self._server.stop(grace=1.0).wait(3)
        for path in (self._socket_path, self._front):
            if path is not None:
                path.unlink(missing_ok=True)
        if self.cfg.info_file is not None:
            try:
                info = orjson.loads(self.cfg.info_file.read_bytes())
                if info.get("pid") == os.getpid():
                    self.cfg.info_file.unlink()
            except (OSError, orjson.JSONDecodeError):
                pass


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _CallContext:
    """The part of ``grpc.ServicerContext`` the unary handlers use, for calls answered outside grpcio."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)

    def peer(self) -> str:
        return "unix:"

    def is_active(self) -> bool:
        return True

    def invocation_metadata(self) -> tuple:
        return ()


def _socket_in_use(path: Path) -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
