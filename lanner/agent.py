"""The agent: sensors -> process cache -> encoder -> sinks and local subscribers.

One thread runs everything from a selector loop: the ring buffer's fd, the local API socket and its
clients. Ring-buffer records are drained in batches, decoded with one ``unpack_from`` per record,
resolved against the process cache and encoded to JSON lines; each batch is then written to the sinks
and offered to the subscribers in one go. Housekeeping (cache GC, loss accounting, flushing) runs at
most once a second.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanner import __version__
from lanner import keep
from lanner.bpf import fs
from lanner.bpf.ringbuf import RingBuffer
from lanner.exporter.encoder import EncoderOptions, KtimeClock, ProcessEventEncoder
from lanner.exporter.fieldfilters import FieldFilterSet, Redactor
from lanner.exporter.filters import EventFilter, FilterSet
from lanner.exporter.pipeline import ExportPipeline, OutEvent
from lanner.exporter.ratelimit import ExportRateLimiter
from lanner.exporter.sinks import RotatingFileSink, Sink, StreamSink
from lanner.exporter.grpc_api import GrpcApiServer, GrpcConfig, ProtoEventEncoder
from lanner.process_cache import FLAG_PROCFS, Process, ProcessCache
from lanner.sensors import procfs
from lanner.sensors.base import SensorSet
from lanner.sensors.generic.sensor import PolicyHost, PolicyHostContext
from lanner.sensors.process import ProcessSensor, ProcessSensorConfig
from lanner.sensors.process_events import ProcessCounters, ProcessEvents, ProcessEventsContext

log = logging.getLogger("lanner.agent")

BATCH = 4096
MIN_BATCH = 64
HOUSEKEEPING_S = 1.0
# The programs wake the agent only when a ring is filling up (lanner_wakeup_flags in common.bpf.h);
# otherwise the agent drains every POLL_S, which bounds an event's latency on a quiet host. 100 ms: on a
# 2-core node a 10 ms cadence cost a fork+exec loop 1.3 % of its wall time (each turn takes a CPU the
# workload wanted), 100 ms nothing measurable (docs/performance.md §1, 7 Dec); a busy ring wakes the agent
# at once whatever the cadence.
POLL_S = 0.1
POLLED_S = 0.01  # the cadence while a sensor with a source of its own is polled (the datapath's flow ring)
# One drain turn stops after DRAIN_MAX_S, so the loop (housekeeping, /healthz's liveness) turns several times a
# second however far the ring is behind (bench/overload.py). The deadline is checked between batches, and each
# batch is sized from the last measured cost per record to fit the time left (at most BATCH): on a slow machine
# (a TCG guest) one batch of 4,096 records took most of a second.
DRAIN_MAX_S = 0.1
SENSOR_FEATURES = ("tp_btf", "ringbuf", "bpf_loop")  # what the process sensor cannot do without


@dataclass(frozen=True)
class AgentConfig:
    node_name: str = field(default_factory=socket.gethostname)
    export_stdout: bool = True
    export_file: str | None = None
    export_file_max_mb: float = 10.0
    export_file_max_backups: int = 5
    export_file_compress: bool = False
    export_file_perm: int = 0o600
    grpc: GrpcConfig | None = field(default_factory=GrpcConfig)  # None: no API server
    pin_dir: Path | None = None  # e.g. /sys/fs/bpf/lanner: pin the process maps there while running
    keep_sensors: bool = False  # --keep-sensors-on-exit: leave the programs attached and pinned at stop
    process_cache_size: int = 65536
    process_cache_grace_s: float = 30.0
    rb_size: int = 8 << 20
    execve_map_entries: int = 65536
    args_max: int = 8192
    procfs_seed: bool = True
    process_cred: bool = False
    process_ns: bool = False
    run_probe: bool = True
    export_allowlist: tuple[EventFilter, ...] = ()
    export_denylist: tuple[EventFilter, ...] = ()
    field_filters: FieldFilterSet = field(default_factory=FieldFilterSet)
    redaction: Redactor = field(default_factory=Redactor)
    export_rate_limit: int = -1  # events per minute; -1: unlimited
    metrics_address: str | None = None  # [ADDR]:PORT; None: off
    health_address: str | None = None  # [ADDR]:PORT; None: off
    bpf_stats: bool = False  # enable the kernel's per-program run-time stats while running
    tracing_policies: tuple[Path, ...] = ()  # files (every YAML document in them) loaded at start
    tracing_policy_dir: Path | None = None  # every *.yaml / *.yml in it, loaded at start
    policy_engine: bool = True
    netdp: Any = None  # lanner.netdp.runtime.NetdpConfig: be the node's CNI (--enable-netdp); None: off
    k8s: Any = None  # lanner.k8s.client.K8sConfig: on the Kubernetes API (--enable-k8s-api); None: off


@dataclass
class AgentCounters(ProcessCounters):
    lost_reported: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.cfg = config
        self.counters = AgentCounters()
        self.started_mono = time.monotonic()
        self.ready_s: float | None = None
        self.probe_summary: dict = {}
        self._probe_thread: threading.Thread | None = None
        self._probe_done = False
        self._stop = threading.Event()
        self.export = ExportPipeline(
            [], FilterSet(config.export_allowlist, config.export_denylist), config.field_filters,
            ExportRateLimiter(config.export_rate_limit) if config.export_rate_limit >= 0 else None)
        self._file_sink: RotatingFileSink | None = None
        self._pins: list[Path] = []
        self.sensor: ProcessSensor | None = None
        self.sensors = SensorSet()  # every sensor unit; the one ring's records are dispatched to them by op
        self.ring: RingBuffer | None = None
        self.server: GrpcApiServer | None = None
        self.policies: PolicyHost | None = None  # TracingPolicies (the engine is made and loaded on first need)
        self.kept: keep.KeptSensors | None = None  # what a previous agent left attached in our pin dir
        self.kept_on_exit = False  # close() left our programs attached and pinned (--keep-sensors-on-exit)
        self.metrics = None
        self.health = None
        self.netdp = None  # lanner.netdp.runtime.NetdpRuntime with --enable-netdp
        self.k8s = None  # lanner.k8s.integration.K8sIntegration with --enable-k8s-api
        self._bpf_stats_fd = -1
        self.last_loop = time.monotonic()
        self._record_s = 0.0  # the last drained batch's cost per record (sizes the next batch)
        self.clock = KtimeClock()
        self.cache = ProcessCache(config.node_name, config.process_cache_size,
                                  int(config.process_cache_grace_s * 1e9))
        self.encoder = ProcessEventEncoder(
            EncoderOptions(config.node_name, config.process_cred, config.process_ns),
            tuple(getattr(procfs.host_namespaces(), n) for n in procfs.NS_NAMES), self.clock,
            config.redaction or None)
        self.proto = ProtoEventEncoder(self.encoder, config.node_name)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load and attach everything; on any failure undo what was done and re-raise."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        for m in fs.ensure_mounts():
            if m.mounted_now:
                log.info("mounted %s at %s", m.fstype, m.path)
        self._open_sinks()
        try:
            self._start_process_sensor()
        except OSError as exc:
            self._require_sensor_features(exc)
            raise
        if self.cfg.procfs_seed:
            self._seed_from_procfs()
        if self.cfg.policy_engine:
            self._start_policies()
        else:
            self._release_kept()
        if self.cfg.netdp is not None:
            self._start_netdp()
        if self.cfg.k8s is not None:
            self._start_k8s()
        if self.cfg.grpc is not None:
            self.server = GrpcApiServer(self, self.cfg.grpc, self.policies)
        if self.cfg.bpf_stats:
            self._enable_bpf_stats()
        if self.cfg.metrics_address is not None:
            from lanner.exporter.metrics import MetricsServer

            self.metrics = MetricsServer(self, self.cfg.metrics_address)
        if self.cfg.health_address is not None:
            from lanner.health import HealthServer

            self.health = HealthServer(self.cfg.health_address, lambda: self.last_loop,
                                       lambda: self.ready_s is not None)
        self.last_loop = time.monotonic()
        if self.cfg.run_probe and not self._probe_done:  # after ready, in the background (the engine waits for it)
            self._probe_thread = threading.Thread(target=self._probe, name="lanner-probe", daemon=True)
            self._probe_thread.start()
        if self.policies is not None:
            self.policies.start()  # the policy files given at start load in the background: ready already
        _tune_memory()
        self.ready_s = time.monotonic() - self.started_mono
        log.info("ready in %.3f s: node %s, %d processes cached, API %s", self.ready_s, self.cfg.node_name,
                 len(self.cache), self.server.address if self.server else "off")

    def _probe(self) -> None:
        """What this kernel's eBPF can do (lanner probe): logged, shown in status, given to the policy engine."""
        try:
            from lanner.kernel.probe import run_probe

            result = run_probe()
        except Exception as exc:  # the engine then assumes its defaults; attach errors say the rest
            log.warning("kernel probe failed: %s", exc)
            return
        finally:
            self._probe_done = True
        self.probe_summary = {name: f.supported for name, f in result.features.items()}
        for reason in result.unavailable_reasons():
            log.info("kernel: %s", reason)

    def probed(self) -> dict[str, bool]:
        """The probe's results: it starts in the background once the agent is ready; needed earlier (the process
        sensor failed, --enable-netdp makes the engine at start), it runs now."""
        thread = self._probe_thread
        if thread is not None:
            thread.join()
        elif self.cfg.run_probe and not self._probe_done:
            self._probe()
        return dict(self.probe_summary)

    def _require_sensor_features(self, exc: OSError) -> None:
        """The process sensor failed to load: say so clearly when the kernel lacks what it needs."""
        probed = self.probed()
        missing = [f for f in SENSOR_FEATURES if probed and not probed.get(f, False)]
        if missing:
            raise RuntimeError("the process sensor needs " + ", ".join(missing) + " which this kernel lacks "
                               "(see 'lanner probe')") from exc

    def _start_process_sensor(self) -> None:
        """Load and attach the process sensor; with a previous agent's kept programs in the pin dir, reuse their
        maps (same build and sizes) and attach alongside them until ``_release_kept``."""
        pins = self._pin_root()
        reuse: dict[str, Path] = {}
        if pins is not None:
            pins = fs.pin_dir(pins)  # refuses a directory outside /sys/fs/bpf/lanner* before anything is loaded
            self.kept = keep.KeptSensors(pins)
            if self.kept.present():
                reuse = self.kept.reusable_maps(self._fingerprint())
                log.info("taking over from the agent that kept its sensors in %s: %s%s", self.kept.tree,
                         self.kept.describe(), "; reusing its process maps" if reuse else "")
        elif (fs.DEFAULT_PIN_DIR / keep.KEPT).is_dir():
            log.warning("programs kept by an earlier agent (--keep-sensors-on-exit) are still attached under %s: "
                        "start with --keep-sensors-on-exit (or --bpf-pin-dir %s) to take them over",
                        fs.DEFAULT_PIN_DIR / keep.KEPT, fs.DEFAULT_PIN_DIR)
        self.sensor = ProcessSensor(ProcessSensorConfig(
            ringbuf_bytes=self.cfg.rb_size, execve_map_entries=self.cfg.execve_map_entries,
            args_max=self.cfg.args_max), reuse=reuse)
        self.sensor.bind(ProcessEvents(ProcessEventsContext(self.cfg.node_name, self.cache, self.encoder, self.proto,
                                                            self.counters)))
        self.sensors.add(self.sensor)
        self.ring = RingBuffer(self.sensor.events_map())  # the one ring (every sensor writes into it)
        self.sensor.attach()
        if pins is not None:
            self._pin_maps(pins, reused=bool(reuse))

    def _pin_root(self) -> Path | None:
        if self.cfg.pin_dir is not None:
            return self.cfg.pin_dir
        return fs.DEFAULT_PIN_DIR if self.cfg.keep_sensors else None

    def _fingerprint(self) -> str:
        from lanner.sensors.process import PROCESS_OBJECT

        return keep.fingerprint(PROCESS_OBJECT, self.cfg.rb_size, self.cfg.execve_map_entries)

    def _release_kept(self) -> None:
        """Detach what a previous agent kept: ours are attached by now (called once the start-up policies are)."""
        if self.kept is not None and self.kept.present():
            n = self.kept.release()
            log.info("released %d pins an earlier agent kept: its programs are detached, ours run", n)

    def _start_policies(self) -> None:
        self.policies = PolicyHost(PolicyHostContext(
            make_engine=self._make_engine, files=tuple(self._policy_files()), on_settled=self._release_kept,
            on_error=self._count_error))
        self.sensors.add(self.policies)  # the generic sensor: its records are the ring's policy op

    def _make_engine(self) -> Any:
        from lanner.sensors.generic.engine import EngineContext, PolicyEngine

        assert self.sensor is not None
        obj = self.sensor.obj
        return PolicyEngine(EngineContext(  # one ring: the policy programs write into the process sensor's
            probe=self.probed(), execve_map_fd=obj.map("execve_map").fd, cache=self.cache,
            encoder=self.encoder, proto=self.proto, node_name=self.cfg.node_name,
            ring_fd=obj.map("events").fd, lost_fd=obj.map("lanner_lost").fd))

    @property
    def engine(self) -> Any:
        """The policy engine once a policy has needed it (None before)."""
        return self.policies.engine if self.policies is not None else None

    def _count_error(self, kind: str) -> None:
        self.counters.errors[kind] = self.counters.errors.get(kind, 0) + 1

    def _enable_bpf_stats(self) -> None:
        from lanner.exporter.metrics import enable_bpf_stats

        try:
            self._bpf_stats_fd = enable_bpf_stats()
        except OSError as exc:  # the overhead metrics stay at zero; nothing else depends on them
            log.warning("--enable-bpf-stats: %s", exc)
            self._count_error("bpf_stats")

    # ------------------------------------------------------------------ netdp (CNI + datapath)
    def _start_netdp(self) -> None:
        from lanner.netdp.flows import FlowSensor
        from lanner.netdp.runtime import NetdpRuntime

        self.netdp = NetdpRuntime(self.cfg.netdp)
        self.netdp.start()
        self.sensors.add(FlowSensor(self.netdp, self.cfg.node_name, self.clock))
        if self.netdp.pod_cache is not None and hasattr(self.encoder, "attach_pod_resolver"):
            self.encoder.attach_pod_resolver(self.netdp.pod_cache)  # process.pod on every event from a pod
        if self.netdp.pod_cache is not None and self.policies is not None:
            from lanner.policy.workloads import Container, Workload, image_repo

            # the pods scoped policies run for (the engine is made now, still unloaded)
            pods, scopes = self.netdp.pod_cache, self.policies.ensure_engine().workloads

            def workload(ep: Any) -> Workload:
                known = pods.known_containers(ep.container_id)
                return Workload(ep.pod.namespace, ep.pod.label_dict(), ep.netns_inode,
                                tuple(Container(c.name, image_repo(c.image), cg) for c, cg in known))

            pods.subscribe(lambda eps: scopes.sync(workload(ep) for ep in eps))

    def _start_k8s(self) -> None:
        """Watch the Kubernetes API in background threads; never waits for the server (lanner.k8s)."""
        from lanner.k8s.integration import K8sIntegration
        from lanner.k8s.netpolicies import netpol_context

        api_scopes = self.policies is not None and (self.netdp is None or self.netdp.pod_cache is None)
        self.k8s = K8sIntegration(self.cfg.k8s, self.policies, self._sync_scopes if api_scopes else None,
                                  netpol_context(self.netdp))
        self.k8s.start()
        self.encoder.attach_pod_resolver(self.k8s.pod_resolver(self.encoder.pod_resolver))

    def _sync_scopes(self, pods: list) -> None:
        """The API's pods drive TracingPolicyNamespaced/podSelector scoping (without --enable-netdp's pod table)."""
        if self.policies is not None:
            self.policies.ensure_engine().workloads.sync(pods)

    def _policy_files(self) -> list[Path]:
        files = list(self.cfg.tracing_policies)
        d = self.cfg.tracing_policy_dir
        if d is not None:
            if not d.is_dir():
                raise FileNotFoundError(f"--tracing-policy-dir {d}: not a directory")
            files += sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml"))
        return files

    def _open_sinks(self) -> None:
        sinks: list[Sink] = self.export.sinks
        if self.cfg.export_stdout:
            sinks.append(StreamSink())
        if self.cfg.export_file:
            self._file_sink = RotatingFileSink(
                self.cfg.export_file, int(self.cfg.export_file_max_mb * (1 << 20)), self.cfg.export_file_max_backups,
                self.cfg.export_file_compress, self.cfg.export_file_perm)
            sinks.append(self._file_sink)

    def _pin_maps(self, root: Path, reused: bool = False) -> None:
        """Pin the process maps while running (``reused``: they are the pinned ones already)."""
        assert self.sensor is not None
        d = fs.pin_dir(root)
        for name in keep.PROCESS_MAPS:
            path = keep.map_pin(d, name)
            if not reused:
                if path.exists():
                    path.unlink()  # a stale pin from an agent that did not exit cleanly, or kept by another build
                self.sensor.obj.map(name).pin(str(path))
            self._pins.append(path)

    def _seed_from_procfs(self) -> None:
        """Rebuild the cache from /proc. A process ``execve_map`` already knows keeps the identity the kernel
        gave it (after a take-over: the one the previous agent exported), so its exec_id does not change."""
        assert self.sensor is not None
        t0 = time.monotonic()
        snap = procfs.snapshot()
        ids = self.sensor.identities()
        ktime = {s.pid: ids[s.pid][0] if s.pid in ids else s.ktime for s in snap}
        binary = {s.pid: ids[s.pid][1] if ids.get(s.pid, (0, ""))[1] else s.binary for s in snap}
        self.sensor.seed((s.pid, ktime[s.pid], s.ppid, ktime.get(s.ppid, 0), s.binary) for s in snap)
        now = time.monotonic_ns()
        for s in snap:
            if self.cache.current(s.pid) is not None:
                continue
            parent = self.cache.current(s.ppid)
            kt = ktime[s.pid]
            self.cache.insert(Process(
                key=(s.pid, kt), exec_id=self.cache.exec_id(s.pid, kt),
                parent_key=parent.key if parent else None, parent_exec_id=parent.exec_id if parent else "",
                pid=s.pid, tid=s.pid, nspid=s.nspid, binary=binary[s.pid], args=s.argv[1:], cwd=s.cwd,
                flags=(FLAG_PROCFS,) + (("rootcwd",) if s.cwd == "/" else ()), start_ns=kt, creds=s.creds,
                ns=s.ns, cgroup_id=s.cgroup_id,
            ), now)
        log.info("seeded %d processes from /proc in %.3f s (%d identities from execve_map)", len(snap),
                 time.monotonic() - t0, sum(1 for s in snap if s.pid in ids))

    def stop(self) -> None:
        self._stop.set()

    def _keep(self) -> bool:
        """Pin every attachment under ``kept/`` (the maps are pinned already) and let go of them."""
        assert self.sensor is not None and self.kept is not None
        if self.policies is not None:
            self.policies.stop_loading()  # (its end releases what an earlier agent kept: before we pin ours)
        self._release_kept()  # an earlier agent's, if we stop before the start-up policies were in: ours replace it
        try:
            n = self.sensor.keep(self.kept.process_dir(self._fingerprint()))
            if self.policies is not None:
                n += self.policies.keep(self.kept.tree)
        except OSError as exc:
            log.error("--keep-sensors-on-exit: %s; detaching everything instead", exc)
            self.kept.release()
            return False
        log.info("--keep-sensors-on-exit: %d links stay attached, pinned under %s (the next agent with this pin "
                 "dir takes them over; remove the directory to detach them)", n, self.kept.tree)
        return True

    def close(self) -> None:
        """Undo everything; with --keep-sensors-on-exit after a successful start, leave the programs attached and
        pinned (``kept/`` in the pin dir) for the next agent to take over."""
        if self._probe_thread is not None:
            self._probe_thread.join()  # the probe cleans up what it loaded and attached before the agent exits
        if self.k8s is not None:
            self.k8s.close()  # no policy change from the API while the policies are kept or unloaded
            self.k8s = None
        kept = self._keep() if self.cfg.keep_sensors and self.ready_s is not None and self.sensor else False
        self.kept_on_exit = self.kept_on_exit or kept
        for srv in (self.health, self.metrics):
            if srv is not None:
                srv.close()
        self.health = self.metrics = None
        if self._bpf_stats_fd >= 0:
            os.close(self._bpf_stats_fd)
            self._bpf_stats_fd = -1
        if self.sensor is not None:
            if self.ring is not None:
                try:
                    self.drain()  # what is already in the ring buffer still gets exported
                except OSError as exc:
                    log.warning("final drain failed: %s", exc)
            self._report_loss()
            self.export.report_rate_limit(self.cfg.node_name, self.clock.rfc3339(time.monotonic_ns()))
            ev = self.counters.events
            log.info("events: %d produced, %d exported, %d filtered out, %d rate-limited", sum(ev.values()),
                     self.export.counters.exported, self.export.counters.filtered,
                     self.export.rate_limiter.dropped_total if self.export.rate_limiter else 0)
            total = self.counters.lost_reported
            if total:
                log.warning("%d events were lost in total because the ring buffer was full", total)
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.netdp is not None:
            self.netdp.close()  # stops serving CNI; pods keep their network
            self.netdp = None
        if self.policies is not None:
            self.policies.close()  # detaches every policy program (kept: leaves them)
            self.policies = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.sensor is not None:
            self.sensor.close()  # destroys every link: nothing stays attached (kept: the pinned ones stay)
            self.sensor = None
        if not self.kept_on_exit:
            self._release_kept()  # a plain stop removes every pin
            for p in self._pins:
                p.unlink(missing_ok=True)
        self._pins.clear()
        self.export.close()
        self.export.sinks.clear()

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        assert self.ring is not None
        sel = selectors.DefaultSelector()
        sel.register(self.ring.fd, selectors.EVENT_READ, None)  # the one ring: every sensor writes into it
        next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        try:
            while not self._stop.is_set():
                sel.select(timeout=POLLED_S if self.sensors.polled else POLL_S)
                self.drain()
                now = self.last_loop = time.monotonic()
                if now >= next_housekeeping:
                    self.housekeeping()
                    next_housekeeping = now + HOUSEKEEPING_S
        finally:
            sel.close()

    def drain(self, max_batches: int = 64, max_s: float = DRAIN_MAX_S) -> int:
        """Consume what the ring buffer holds, for at most ``max_s`` per turn so the loop keeps turning
        (housekeeping, /healthz) even when the agent is overloaded."""
        assert self.ring is not None and self.sensor is not None
        total = 0
        wants = self.server is not None and self.server.wants_events()
        now = time.monotonic()
        deadline = now + max_s
        for _ in range(max_batches):
            raws = self.ring.read_batch(self._batch_size(deadline - now))
            if not raws:
                break
            total += len(raws)
            self.sensors.dispatch(raws, wants, self.emit)
            done = time.monotonic()
            self._record_s = (done - now) / len(raws)
            now = done
            if now > deadline:
                break
        total += self.sensors.poll(self._write_polled)
        if total:
            self.export.flush()
        return total

    def _batch_size(self, left_s: float) -> int:
        """How many records fit in ``left_s`` at the last measured cost per record (MIN_BATCH..BATCH)."""
        if self._record_s <= 0:
            return BATCH
        return max(MIN_BATCH, min(BATCH, int(left_s / self._record_s)))

    def _write_polled(self, lines: list[bytes]) -> None:
        """Flow events from the datapath, exported alongside the security events (not process-filtered)."""
        self.counters.events["flow"] = self.counters.events.get("flow", 0) + len(lines)
        self.export._write_lines(lines)

    def emit(self, out: list[OutEvent]) -> None:
        if not out:
            return
        counts = self.counters.events
        for ev in out:
            if ev.kind not in ("process_exec", "process_exit"):  # the process events count themselves
                counts[ev.kind] = counts.get(ev.kind, 0) + 1
        self.export.write(out)
        if self.server is not None:
            self.server.publish(out)

    def housekeeping(self) -> None:
        self.cache.gc(time.monotonic_ns())
        self._report_loss()
        self.export.report_rate_limit(self.cfg.node_name, self.clock.rfc3339(time.monotonic_ns()))
        self.export.flush()

    def _report_loss(self) -> None:
        if self.sensor is not None:
            lost = sum(self.lost().values())  # every sensor's, the policy programs' too
            if lost > self.counters.lost_reported:
                log.warning("ring buffer full: %d events lost so far (raise --rb-size)", lost)
                self.counters.lost_reported = lost

    # ------------------------------------------------------------------ status
    def subscriber_drops(self) -> int:
        return self.server.stats()["dropped"] if self.server else 0

    def version(self) -> str:
        return __version__

    def probes(self) -> dict[str, bool]:
        # GetInfo right after start waits for the background probe (well under a second)
        return self.probed() if self._probe_thread is not None else dict(self.probe_summary)

    def programs(self) -> list[tuple[str, str, str, int]]:
        """(sensor, program, attach point, fd) of every loaded program."""
        return self.sensors.programs()

    def policy_states(self) -> dict[str, int]:
        """How many policies are in each state ("enabled", "load_error", ...); never waits for a load."""
        return self.policies.states() if self.policies is not None else {}

    def _policy_status(self) -> dict:
        """Policies by state and the ones not fully enabled with why; never waits for a policy being loaded."""
        states = self.policy_states()
        return {"policies": sum(states.values()), "policy_states": states,
                "policy_problems": self.policies.problems() if self.policies is not None else []}

    def lost(self) -> dict[str, int]:
        """Records the one ring had no room for, by op (every sensor counts into the process sensor's per-CPU
        lanner_lost, shared by fd as the ring is)."""
        return self.sensors.lost()

    def status(self) -> dict:
        lost = self.lost()
        st = self.cache.stats
        return {
            "version": __version__,
            "node_name": self.cfg.node_name,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "ready_s": self.ready_s,
            "sensors": (["process"] if self.sensor else []) + (["policy"] if self.engine is not None and self.engine.loaded else []),
            "fastpath": self.sensor.fastpath if self.sensor else None,  # process records: "c", or why "python"
            **self._policy_status(),
            "events": dict(self.counters.events),
            "records": self.counters.records,
            "ringbuf": {
                "size_bytes": self.ring.size if self.ring else 0,
                "lost": lost,
                "lost_total": sum(lost.values()),
            },
            "process_cache": {"size": len(self.cache), "capacity": st.capacity, "evictions": st.evictions,
                              "misses": st.misses, "collected": st.collected},
            "misses": {"exit": self.counters.exit_misses, "parent": self.counters.parent_misses},
            "duplicates": self.counters.duplicates,
            "pin_dir": str(self.kept.root) if self.kept is not None else None,
            "keep_sensors_on_exit": self.cfg.keep_sensors,
            "export": {
                "file": self.cfg.export_file,
                "rotations": self._file_sink.rotations if self._file_sink else 0,
                "bytes": self._file_sink.bytes_written if self._file_sink else 0,
                "exported": self.export.counters.exported,
                "filtered": self.export.counters.filtered,
                "rate_limited": self.export.rate_limiter.dropped_total if self.export.rate_limiter else 0,
            },
            "api": {"address": self.server.address if self.server else None,
                    **(self.server.stats() if self.server else {})},
            "metrics_address": self.metrics.address if self.metrics else None,
            "health_address": self.health.address if self.health else None,
            "kernel": self.probes(),  # waits for the background probe, as GetInfo does
            **({"netdp": self.netdp.status()} if self.netdp is not None else {}),
            **({"k8s": self.k8s.status()} if self.k8s is not None else {}),
        }


def _tune_memory() -> None:
    """After start-up: hand back what the kernel probe's threads left in glibc's per-thread arenas, move
    the start-up objects out of the cyclic GC's reach, and make collections rarer. The event path
    allocates many short-lived, acyclic objects; at the default thresholds the cyclic collector took
    about a quarter of the agent's time under load (docs/performance.md)."""
    import ctypes
    import gc

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def run_agent(config: AgentConfig) -> int:
    """Start, serve until SIGINT/SIGTERM, then detach everything."""
    agent = Agent(config)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        agent.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        agent.start()
        agent.run()
    finally:
        agent.close()
        for s, h in old.items():
            signal.signal(s, h)
        log.info("stopped; %s", "programs kept attached (--keep-sensors-on-exit)" if agent.kept_on_exit
                 else "all programs detached")
    return 0
