"""The export pipeline: events -> export filters -> rate limit -> field filters -> sinks.

Applies to the JSON export (stdout and file) only, as in Tetragon: gRPC clients bring their own
filters with their request.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field
from typing import Any

import orjson

from .fieldfilters import FieldFilterSet
from .filters import FilterSet
from .ratelimit import ExportRateLimiter
from .sinks import Sink

log = logging.getLogger("lanner.exporter")
_line = operator.attrgetter("line")


@dataclass(slots=True)
class OutEvent:
    """One encoded event and what filters look at: its kind, process and parent objects."""

    kind: str  # JSON key: process_exec, process_exit, ...
    proc: Any  # lanner.process_cache.Process
    parent: Any | None
    line: bytes
    policy_name: str = ""
    ancestors: tuple[Any, ...] = ()
    pb: bytes | None = None  # GetEventsResponse wire bytes, built only while gRPC clients follow


# What a batch's producer renders for gRPC (a sensor's ``handle(raws, want_pb)``; the server's ``wants_events``):
# nothing; each event's GetEventsResponse bytes (OutEvent.pb); or, when every client takes the batch whole, only
# the batch's run of gRPC messages (EventBatch.run). A producer that cannot frame a run renders OutEvent.pb for
# any true value.
PB_NONE, PB_EVENTS, PB_RUN = 0, 1, 2


class EventBatch(list):
    """A batch of events whose producer also framed their ``pb`` bytes as one run of gRPC messages, in order
    (``run``: the bytes and how many messages; what ``exporter.grpc_api.framed_run`` would build), so the
    gRPC server does not walk the batch again (sensors/fastproc.c take_run)."""

    __slots__ = ("run",)

    def __init__(self, events: list[OutEvent], run: tuple[bytes, int]) -> None:
        super().__init__(events)
        self.run = run


@dataclass
class ExportCounters:
    exported: int = 0
    exported_bytes: int = 0
    filtered: int = 0


@dataclass
class ExportPipeline:
    sinks: list[Sink]
    filters: FilterSet = field(default_factory=FilterSet)
    field_filters: FieldFilterSet = field(default_factory=FieldFilterSet)
    rate_limiter: ExportRateLimiter | None = None
    counters: ExportCounters = field(default_factory=ExportCounters)

    def write(self, events: list[OutEvent]) -> None:
        if not events or not self.sinks:
            return
        selected = events
        if not self.filters.empty:
            admits = self.filters.admits
            selected = [e for e in events if admits(e)]
            self.counters.filtered += len(events) - len(selected)
        if self.rate_limiter is not None and selected:
            selected = selected[: self.rate_limiter.admit(len(selected))]
        if not selected:
            return
        if self.field_filters:
            ff = self.field_filters.apply
            lines = [orjson.dumps(ff(e.kind, orjson.loads(e.line))) for e in selected]
        else:
            lines = list(map(_line, selected))
        self._write_lines(lines)

    def _write_lines(self, lines: list[bytes]) -> None:
        for s in self.sinks:
            s.write_lines(lines)
        self.counters.exported += len(lines)
        self.counters.exported_bytes += sum(map(len, lines)) + len(lines)

    def report_rate_limit(self, node_name: str, time_text: str) -> int:
        """Write a ``rate_limit_info`` event when the limiter dropped events since the last report."""
        if self.rate_limiter is None:
            return 0
        n = self.rate_limiter.take_report()
        if n:
            # uint64 is a string in protojson, as in Tetragon's output
            self._write_lines([orjson.dumps({"rate_limit_info": {"number_of_dropped_process_events": str(n)},
                                             "node_name": node_name, "time": time_text})])
            log.warning("export rate limit dropped %d events", n)
        return n

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            try:
                s.close()
            except OSError as exc:
                log.warning("closing sink: %s", exc)
