"""The agent's loop over sensor units (sensors.base.SensorSet): records of the one ring go to the sensor of
their op, in ring order, one batch per run; a polled sensor's lines go to the export as they are."""

from __future__ import annotations

import time

import pytest

from lanner.sensors.base import SensorSet


class FakeSensor:
    def __init__(self, name: str, ops: set[int], lost: int = 0, lines: list[bytes] | None = None) -> None:
        self.name, self.ops, self._lost, self._lines = name, frozenset(ops), lost, lines or []
        self.batches: list[list[bytes]] = []

    def handle(self, raws: list, want_pb: bool) -> list:
        self.batches.append(list(raws))
        return [f"{self.name}:{r[1:].decode()}" for r in raws]

    def poll(self) -> list[bytes]:
        return self._lines

    def lost(self) -> dict[str, int]:
        return {self.name: self._lost}

    def programs(self) -> list[tuple[str, str, str, int]]:
        return [(self.name, "prog", "attach", 3)]

    def close(self) -> None:
        pass


def test_runs_of_one_sensor_go_to_it_as_batches_in_ring_order():
    proc, pol = FakeSensor("process", {1, 2, 5}), FakeSensor("policy", {9})
    ss = SensorSet()
    ss.add(proc)
    ss.add(pol)
    emitted: list[list[str]] = []
    raws = [b"\x01a", b"\x05b", b"\x09c", b"\x09d", b"\x07x", b"\x02e", b"\x09f"]
    ss.dispatch(raws, False, emitted.append)
    assert proc.batches == [[b"\x01a", b"\x05b"], [b"\x02e"]]
    assert pol.batches == [[b"\x09c", b"\x09d"], [b"\x09f"]]
    assert emitted == [["process:a", "process:b"], ["policy:c", "policy:d"], ["process:e"], ["policy:f"]]
    assert ss.unknown == 1  # op 7: no sensor claims it; counted, dropped


def test_an_op_belongs_to_one_sensor_and_lost_and_programs_sum_over_sensors():
    ss = SensorSet()
    ss.add(FakeSensor("process", {1}, lost=2))
    with pytest.raises(ValueError, match="op 1 is process's"):
        ss.add(FakeSensor("other", {1}))
    flow = FakeSensor("flow", set(), lost=3, lines=[b'{"flow":{}}'])
    ss.add(flow)
    assert ss.lost() == {"process": 2, "flow": 3}
    assert [r[0] for r in ss.programs()] == ["process", "flow"]
    written: list[list[bytes]] = []
    assert ss.poll(written.append) == 1 and written == [[b'{"flow":{}}']]  # only the polled sensor is asked


def test_a_sensor_with_its_own_source_makes_the_set_polled():
    """The agent drains every 100 ms unless a sensor is polled (the datapath's flows: every 10 ms)."""
    ss = SensorSet()
    ss.add(FakeSensor("process", {1, 5}))
    assert not ss.polled
    ss.add(FakeSensor("flow", set(), lines=[b"{}"]))
    assert ss.polled
    got: list[list[bytes]] = []
    assert ss.poll(got.append) == 1 and got == [[b"{}"]]


class SlowRing:
    """A ring that always has records; remembers how many each read asked for."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def read_batch(self, n: int) -> list[bytes]:
        self.asked.append(n)
        return [b"\x01x"] * n


class SlowSensor(FakeSensor):
    def __init__(self, per_record_s: float) -> None:
        super().__init__("process", {1})
        self.per_record_s = per_record_s

    def handle(self, raws: list, want_pb: bool) -> list:
        time.sleep(self.per_record_s * len(raws))
        return []


def test_drain_sizes_its_batches_to_the_time_left():
    """On a slow machine one batch of BATCH records must not hold the loop past the drain's deadline: after
    the first batch, each batch is sized from the measured cost per record to fit the time left."""
    from lanner import agent as agent_mod

    ag = agent_mod.Agent(agent_mod.AgentConfig())
    ring = ag.ring = SlowRing()
    ag.sensor = object()  # drain() only needs one
    ag.sensors = SensorSet()
    ag.sensors.add(SlowSensor(per_record_s=20e-6))  # 4,096 records: 82 ms
    t0 = time.monotonic()
    ag.drain(max_s=0.05)
    first = time.monotonic() - t0
    assert ring.asked[0] == agent_mod.BATCH and first < 0.2
    ring.asked.clear()
    t0 = time.monotonic()
    ag.drain(max_s=0.05)  # now the cost per record is known: batches fit in 50 ms
    took = time.monotonic() - t0
    assert ring.asked and max(ring.asked) < agent_mod.BATCH, ring.asked
    assert min(ring.asked) >= agent_mod.MIN_BATCH
    assert took < 0.05 + 0.04, took
