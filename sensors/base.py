"""The sensor unit, as Tetragon's pkg/sensors has it: everything that runs in the kernel and reports to the agent.

A sensor owns its programs and maps (loaded and attached by its own ``load``/``attach``), names the record ops
it decodes from the agent's one ring buffer, turns a batch of its records into events (``handle``), counts its
records the ring had no room for (``lost``) and lists its programs for status and metrics. A sensor with a
source of its own (the datapath's flow ring) is polled instead (``poll``): it gives export lines, which skip the
process filters (a flow is no process event).

``SensorSet`` is the agent's loop over them: records come from the one ring in kernel order, and each run of
consecutive records of one sensor goes to that sensor as one batch, so no event needs an ordering rule.
"""

from __future__ import annotations

from typing import Callable, Protocol

from lanner.exporter.pipeline import OutEvent

from .fastproc import load_module

# (sensor, program, attach point, fd) of a loaded program, for status and metrics
ProgramRow = tuple[str, str, str, int]


class Sensor(Protocol):
    name: str
    ops: frozenset[int]  # the lanner_event_hdr ops of its records in the ring (empty: it is polled)

    def handle(self, raws: list, want_pb: int) -> list[OutEvent]:
        """Decode a batch of this sensor's records (in ring order) into events; ``want_pb``: what they carry
        for gRPC (exporter/pipeline.py PB_*; a sensor that frames no run treats any true value as PB_EVENTS)."""

    def poll(self) -> list[bytes]:
        """Export lines from a source of the sensor's own (the ring's sensors return [])."""

    def lost(self) -> dict[str, int]:
        """Records refused by a full ring, by kind."""

    def programs(self) -> list[ProgramRow]:
        """Its loaded programs."""

    def close(self) -> None:
        """Detach and unload everything (or leave what it kept pinned)."""


class SensorSet:
    """The agent's sensors, and the dispatch of the one ring's records to them by op."""

    def __init__(self) -> None:
        self._sensors: list[Sensor] = []
        self._by_op: dict[int, Sensor] = {}
        self._table = bytearray(b"\xff" * 256)  # op -> index in _sensors (255: no sensor), for the C scan
        self._op_runs = getattr(load_module()[0], "op_runs", None)  # the scan in C (sensors/fastproc.c), if built
        self.unknown = 0  # records whose op no sensor claims (counted, dropped)

    def add(self, sensor: Sensor) -> None:
        for op in sensor.ops:
            if op in self._by_op:
                raise ValueError(f"sensor {sensor.name}: op {op} is {self._by_op[op].name}'s")
            if not 0 <= op < 256 or len(self._sensors) >= 255:
                raise ValueError(f"sensor {sensor.name}: op {op} out of 0..255, or too many sensors")
            self._by_op[op] = sensor
            self._table[op] = len(self._sensors)
        self._sensors.append(sensor)

    def dispatch(self, raws: list, want_pb: int, emit: Callable[[list[OutEvent]], None]) -> None:
        """Hand each run of consecutive records of one op's sensor to it, in ring order; emit each run's events."""
        if self._op_runs is not None:
            sensors, n = self._sensors, len(raws)
            for start, end, i in self._op_runs(raws, self._table):
                if i == 255:
                    self.unknown += end - start
                else:
                    emit(sensors[i].handle(raws if end - start == n else raws[start:end], want_pb))
            return
        by_op, n, start = self._by_op, len(raws), 0
        while start < n:
            sensor = by_op.get(raws[start][0])
            end = start + 1
            while end < n and by_op.get(raws[end][0]) is sensor:
                end += 1
            if sensor is None:
                self.unknown += end - start
            else:
                emit(sensor.handle(raws if end - start == n else raws[start:end], want_pb))
            start = end

    @property
    def polled(self) -> bool:
        """Whether some sensor has a source of its own (nothing wakes the agent for it: it is polled)."""
        return any(not s.ops for s in self._sensors)

    def poll(self, write_lines: Callable[[list[bytes]], None]) -> int:
        """Poll the sensors with a source of their own; their lines go straight to the export."""
        total = 0
        for s in self._sensors:
            if not s.ops:
                lines = s.poll()
                if lines:
                    total += len(lines)
                    write_lines(lines)
        return total

    def lost(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self._sensors:
            for k, v in s.lost().items():
                out[k] = out.get(k, 0) + v
        return out

    def programs(self) -> list[ProgramRow]:
        return [row for s in self._sensors for row in s.programs()]
