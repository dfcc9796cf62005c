"""The GetEvents fan-out under overload (exporter/grpc_api.py): when every client's queue is full the agent is
told not to encode the next batch, and that batch's events are counted as dropped for every client, so each
client's offered = sent + dropped + still queued (or taken by the blocked writer), exactly."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from lanner.exporter.grpc_api import GrpcApiServer, GrpcConfig
from lanner.exporter.pipeline import OutEvent

BATCH = 40


class FakeAgent:
    def status(self) -> dict:
        return {}

    def version(self) -> str:
        return "test"

    def probes(self) -> dict[str, bool]:
        return {}


def batch(encoded: bool) -> list[OutEvent]:
    """BATCH events of 1 KB each (so a client's flow-control windows, however large it asks them, fill)."""
    pb = b"\x0a\x00" + b"x" * 1000
    return [OutEvent("process_exec", None, None, b"{}", pb=pb if encoded else None) for _ in range(BATCH)]


def test_full_queues_skip_encoding_and_count_every_drop(tmp_path: Path) -> None:
    srv = GrpcApiServer(FakeAgent(), GrpcConfig(address=f"unix://{tmp_path}/api.sock", max_queue=100, info_file=None))
    try:
        assert not srv.wants_events()  # nobody follows: nothing to encode, nothing dropped
        srv.publish(batch(False))
        assert srv.stats()["dropped"] == 0
        # a client with no BDP probing that never reads: its 64 KiB window fills, then its queue
        ch = grpc.insecure_channel(srv.address, options=[("grpc.http2.bdp_probe", 0)])
        stuck = ch.unary_stream("/tetragon.FineGuidanceSensors/GetEvents", request_serializer=None,
                                response_deserializer=None)(b"")
        deadline = time.monotonic() + 10
        while srv.stats()["clients"] < 1:
            assert time.monotonic() < deadline, "the client did not connect"
            time.sleep(0.01)
        offered, skipped = 0, 0
        for _ in range(2000):
            want = srv.wants_events()
            skipped += not want
            srv.publish(batch(want))
            offered += BATCH
            if skipped >= 5:
                break
        assert skipped >= 5, "the queue never filled"
        time.sleep(0.2)  # the sender is now blocked on the full transport, its count settled
        sub = srv._subs[0]
        st = srv.stats()
        assert st["dropped"] >= 5 * BATCH
        assert st["sent"] + st["dropped"] + sub.queued + sub.inflight == offered
        stuck.cancel()
        ch.close()
    finally:
        srv.close()


def test_framed_run_in_c_equals_python() -> None:
    """sensors/fastproc.c grpc_run frames a batch exactly as the Python fallback does."""
    import pytest

    from lanner.exporter import grpc_api

    if grpc_api._grpc_run is None:
        pytest.skip("the C fast path is not built (make fastpath)")
    events = [OutEvent("process_exec", None, None, b"{}", pb=bytes(range(i % 256)) * (i % 7) if i % 5 else None)
              for i in range(300)]
    events.append(OutEvent("process_exit", None, None, b"{}", pb=b"x" * 70000))  # a length over 16 bits
    c = grpc_api.framed_run(events)
    saved, grpc_api._grpc_run = grpc_api._grpc_run, None
    try:
        py = grpc_api.framed_run(events)
    finally:
        grpc_api._grpc_run = saved
    assert c == py and c[1] == 241


def test_what_a_batch_carries_follows_the_clients(tmp_path: Path) -> None:
    """Nothing without clients; only the batch's run when every client is framed and unfiltered (they take the
    run whole); each event's bytes as soon as one client filters or reads through grpcio's server."""
    from lanner.exporter.api.gen.tetragon import events_pb2
    from lanner.exporter.pipeline import PB_EVENTS, PB_NONE, PB_RUN, EventBatch

    srv = GrpcApiServer(FakeAgent(), GrpcConfig(address=f"unix://{tmp_path}/api.sock", max_queue=100, info_file=None))
    try:
        assert srv.wants_events() == PB_NONE
        plain = srv._subscribe(events_pb2.GetEventsRequest(), framed=True)
        assert srv.wants_events() == PB_RUN
        filtered = srv._subscribe(events_pb2.GetEventsRequest(
            allow_list=[events_pb2.Filter(binary_regex=["bash"])]), framed=True)
        assert srv.wants_events() == PB_EVENTS
        srv._unsubscribe(filtered)
        assert srv.wants_events() == PB_RUN
        via_grpcio = srv._subscribe(events_pb2.GetEventsRequest())
        assert srv.wants_events() == PB_EVENTS
        srv._unsubscribe(via_grpcio)
        assert srv.wants_events() == PB_RUN
        # a run-only batch: its events have no bytes of their own, the client queues the batch's run
        srv.publish(EventBatch([OutEvent("process_exec", None, None, b"{}") for _ in range(3)], (b"RUN", 3)))
        assert plain.queued == 3 and plain.queue[-1] == (b"RUN", 3)
    finally:
        srv.close()
