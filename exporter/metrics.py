"""Prometheus metrics, with Tetragon's names where the meaning is the same.

Nothing is counted per event for metrics' sake: a collector reads the agent's own counters at scrape
time (the per-binary event counts are the one dict the agent keeps for this). The registry belongs to
the agent instance, not to the process, so two agents in one process (tests) never share state.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from lanner.agent import Agent

log = logging.getLogger("lanner.metrics")

POLICY_STATES = ("disabled", "enabled", "error", "load_error")  # tetragon_tracingpolicy_loaded, always present


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_cnt, run_time_ns) of a BPF program from its fdinfo; zero unless BPF stats are enabled."""
    cnt = ns = 0
    try:
        with open(f"/proc/self/fdinfo/{fd}") as fh:
            for line in fh:
                if line.startswith("run_cnt:"):
                    cnt = int(line.split()[1])
                elif line.startswith("run_time_ns:"):
                    ns = int(line.split()[1])
    except OSError:
        pass
    return cnt, ns


class AgentCollector:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        ev = CounterMetricFamily("tetragon_events", "Events produced, by type and binary",
                                 labels=["type", "namespace", "workload", "pod", "binary"])
        for (kind, binary), n in list(a.counters.by_binary.items()):
            ev.add_metric([kind.upper(), "", "", "", binary], n)
        yield ev

        exported = CounterMetricFamily("tetragon_events_exported", "Events written to the JSON export")
        exported.add_metric([], a.export.counters.exported)
        yield exported
        exported_bytes = CounterMetricFamily("tetragon_events_exported_bytes", "Bytes written to the JSON export")
        exported_bytes.add_metric([], a.export.counters.exported_bytes)
        yield exported_bytes
        rl = CounterMetricFamily("tetragon_export_ratelimit_events_dropped", "Events dropped by --export-rate-limit")
        rl.add_metric([], a.export.rate_limiter.dropped_total if a.export.rate_limiter else 0)
        yield rl

        lost = a.lost()
        missed = CounterMetricFamily("tetragon_bpf_missed_events", "Events the kernel could not queue",
                                     labels=["msg_op", "error"])
        for op, n in lost.items():
            missed.add_metric([op, "ENOSPC"], n)
        yield missed
        rb_recv = CounterMetricFamily("tetragon_observer_ringbuf_events_received", "Ring-buffer records read")
        rb_recv.add_metric([], a.ring.records if a.ring else 0)
        yield rb_recv
        rb_lost = CounterMetricFamily("tetragon_observer_ringbuf_events_lost", "Ring-buffer records lost")
        rb_lost.add_metric([], sum(lost.values()))
        yield rb_lost

        notify = CounterMetricFamily("tetragon_notify_overflowed_events",
                                     "Events a slow API client's full queue dropped")
        notify.add_metric([], a.subscriber_drops())
        yield notify
        miss_info = CounterMetricFamily("tetragon_events_missing_process_info",
                                        "Events whose process or parent the cache did not know")
        miss_info.add_metric([], a.counters.exit_misses + a.counters.parent_misses)
        yield miss_info
        errors = CounterMetricFamily("tetragon_errors", "Agent errors by kind", labels=["error"])
        for kind, n in a.counters.errors.items():
            errors.add_metric([kind], n)
        yield errors

        yield _policy_states(a.policy_states())

        st = a.cache.stats
        for name, doc, value, kind in (
            ("tetragon_process_cache_size", "Processes in the cache", len(a.cache), "gauge"),
            ("tetragon_process_cache_capacity", "Process cache capacity", st.capacity, "gauge"),
            ("tetragon_process_cache_evictions", "Processes evicted to stay within capacity", st.evictions, "counter"),
            ("tetragon_process_cache_misses", "Lookups of unknown processes", st.misses, "counter"),
        ):
            fam = GaugeMetricFamily(name, doc) if kind == "gauge" else CounterMetricFamily(name, doc)
            fam.add_metric([], value)
            yield fam

        runs = CounterMetricFamily("tetragon_overhead_program_runs", "BPF program runs (needs BPF stats enabled)",
                                   labels=["policy", "policy_namespace", "sensor", "attach", "label"])
        secs = CounterMetricFamily("tetragon_overhead_program_seconds", "BPF program run time (needs BPF stats)",
                                   labels=["policy", "policy_namespace", "sensor", "attach", "label"])
        for sensor, prog_name, attach, fd in a.programs():
            cnt, ns = prog_stats(fd)
            runs.add_metric(["", "", sensor, attach, prog_name], cnt)
            secs.add_metric(["", "", sensor, attach, prog_name], ns / 1e9)
        yield runs
        yield secs


def _policy_states(states: dict[str, int]) -> Metric:
    """tetragon_tracingpolicy_loaded{state}: Tetragon's four states always (zero included), then lanner's
    others (partially_enabled, loading) when some policy is in them."""
    fam = GaugeMetricFamily("tetragon_tracingpolicy_loaded", "The number of loaded tracing policies by state",
                            labels=["state"])
    for state in POLICY_STATES + tuple(sorted(set(states) - set(POLICY_STATES))):
        fam.add_metric([state], states.get(state, 0))
    return fam


class MetricsServer:
    """``--metrics-server [ADDR]:PORT``; port 0 picks a free port (see ``.port``)."""

    def __init__(self, agent: "Agent", address: str) -> None:
        host, _, port = address.rpartition(":")
        try:
            port_n = int(port)
        except ValueError:
            raise ValueError(f"--metrics-server: {address!r} is not [ADDR]:PORT") from None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        try:
            self._server, self._thread = start_http_server(port_n, host or "0.0.0.0", self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"--metrics-server {address}: {exc.strerror}") from None
        self.port = self._server.server_port
        self.address = f"{host or '0.0.0.0'}:{self.port}"
        log.info("metrics on http://%s/metrics", self.address)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def enable_bpf_stats() -> int:
    """Turn on the kernel's BPF run-time statistics for as long as the returned fd is open."""
    from lanner.bpf import libbpf as L

    fd = L.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
    if fd < 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, f"cannot enable BPF stats: {os.strerror(err)}")
    return fd
