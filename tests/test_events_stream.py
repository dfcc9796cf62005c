"""``--server-events-address``: GetEvents framed by lanner itself (exporter/api/h2events.py), read by
Tetragon's own Go stubs (tools/tetragon, --strict: no field Tetragon does not define) and by grpcio.

Filters from the request apply, a bad filter is INVALID_ARGUMENT with its reason, the clients count in the
agent's status while connected, and many events per frame arrive whole and in order.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from lanner.exporter.api.gen.tetragon import events_pb2
from tests.conftest import RunningAgent, start_agent
from tests.go_client import CLIENT, require_client, trigger_until_answered, unique_binary


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunningAgent, str]:
    tmp = tmp_path_factory.mktemp("events")
    address = f"unix://{tmp}/events.sock"
    a = start_agent(tmp, "--server-events-address", address)
    yield a, address
    a.stop()
    assert not (tmp / "events.sock").exists()  # removed at stop


def go_client(address: str, *args: str) -> subprocess.Popen:
    require_client()
    return subprocess.Popen([str(CLIENT), "--server-address", address, "--timeout", "20s", "--strict", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_go_stubs_read_filtered_events(agent: tuple[RunningAgent, str], tmp_path: Path) -> None:
    a, address = agent
    binary = unique_binary(tmp_path, "lanner-events-id")
    stream = go_client(address, "getevents", "--process", f"{binary}$", "--count", "2")
    try:
        out = trigger_until_answered(stream, [str(binary), "-u"])
    finally:
        stream.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 2
    exec_ = next(e["process_exec"] for e in events if "process_exec" in e)
    assert exec_["process"]["binary"] == str(binary) and exec_["process"]["arguments"] == "-u"
    assert all(e["node_name"] == a.node for e in events)


def test_bad_filter_is_invalid_argument(agent: tuple[RunningAgent, str]) -> None:
    _, address = agent
    proc = go_client(address, "getevents", "--process", "(")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "InvalidArgument" in err and "binary_regex" in err


def test_grpcio_reads_many_events_in_order(agent: tuple[RunningAgent, str]) -> None:
    a, address = agent
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_stream("/tetragon.FineGuidanceSensors/GetEvents",
                               request_serializer=events_pb2.GetEventsRequest.SerializeToString,
                               response_deserializer=events_pb2.GetEventsResponse.FromString)(
            events_pb2.GetEventsRequest(allow_list=[events_pb2.Filter(arguments_regex=["^lanner-burst-"])]),
            timeout=60)
        seen: list[str] = []
        deadline = time.monotonic() + 10
        while a.status()["api"]["clients"] < 1:  # the client counts in the agent's status once it is following
            assert time.monotonic() < deadline, "the client never counted"
            time.sleep(0.02)
        for i in range(300):  # many events in few frames
            subprocess.run(["/bin/true", f"lanner-burst-{i}"])
        for ev in call:
            if ev.WhichOneof("event") == "process_exec":
                seen.append(ev.process_exec.process.arguments)
            if len(seen) == 300:
                break
        call.cancel()
    assert seen == [f"lanner-burst-{i}" for i in range(300)]


def test_a_client_that_is_not_http2_is_dropped(agent: tuple[RunningAgent, str]) -> None:
    import socket

    a, address = agent
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(address[len("unix://"):])
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while True:  # our SETTINGS frame, then the connection is closed
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    assert got == b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame, nothing else
    assert a.proc.poll() is None and a.status()["api"]["clients"] == 0


def test_data_frames_slice_the_buffers_and_partial_sends_resume() -> None:
    """The writer's frames are headers plus slices of the queued runs themselves (no copy), never longer than
    the peer's frame size nor spanning two runs; a sendmsg that takes part of them is resumed where it
    stopped, so the peer reads exactly the runs' bytes."""
    import socket
    import threading

    from lanner.exporter.api import h2events as h2

    runs = [bytes(range(256)) * 40, b"x" * 7000]  # 10,240 and 7,000 bytes
    bufs = [memoryview(b) for b in runs]
    parts, pos = h2.data_frames(bufs, (0, 0), 12_000, 4096, 3)
    assert pos == (1, 1760)
    sizes = [len(p) for p in parts[1::2]]
    assert sizes == [4096, 4096, 2048, 1760]  # the third frame ends with the first run
    assert parts[1].obj is runs[0]  # a slice of the run, not a copy
    assert all(len(h) == 9 and h[3] == h2.DATA and int.from_bytes(h[5:9], "big") == 3 for h in parts[0::2])
    assert all(int.from_bytes(h[:3], "big") == n for h, n in zip(parts[0::2], sizes))
    more, pos = h2.data_frames(bufs, pos, 7000 - 1760, 16384, 3)
    assert pos == (2, 0) and len(more) == 2

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.settimeout(10)  # non-blocking underneath: each sendmsg takes what the small buffer has room for
    partial = []
    real = a.sendmsg

    class Sock:  # counts the sendmsg calls that took only part of what they were given
        def sendmsg(self, bufs: list) -> int:
            n = real(bufs)
            partial.append(n < sum(map(len, bufs)))
            return n
    got = bytearray()

    def read() -> None:
        while chunk := b.recv(1 << 16):
            got.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    conn = h2.Connection.__new__(h2.Connection)
    conn.sock, conn.send_lock = Sock(), threading.Lock()
    big = [memoryview(bytes([i % 251]) * 3000) for i in range(1500)]  # 4.5 MB in more than IOV_MAX buffers
    conn._sendmsg(list(big))
    a.close()
    reader.join(10)
    assert bytes(got) == b"".join(big)
    assert any(partial) and len(partial) > 2
