"""What one streamed GetEvents message costs the server: grpcio against the stream framed by hand.

Same client (tools/tetragon's Go client on Tetragon's stubs, decoding and counting every message), same
message (a 305-byte ``GetEventsResponse`` with a process_exec and its parent), same count, one server at a time, nothing
else in the server process:
  * grpcio -- a grpcio server (sync, as the agent's) whose GetEvents handler yields pre-encoded bytes;
  * framed -- a minimal HTTP/2 responder that writes many gRPC messages per DATA frame (one socket write
    per frame), within the client's flow-control windows. It answers one call and does not read request
    headers: a measuring device for docs/performance.md §5 (what framing the stream ourselves would give),
    not something the agent serves.

Prints messages/s and server CPU per message for each, and their ratio.

Usage: .venv/bin/python bench/grpc_framing.py [--messages 200000] [--batch 256]
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CLIENT = C.ROOT / "build" / "tetragon" / "bin" / "tetragon-client"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8


def event_bytes() -> bytes:
    from lanner.exporter.api.gen.tetragon import events_pb2

    ev = events_pb2.GetEventsResponse(node_name="bench")
    p, parent = ev.process_exec.process, ev.process_exec.parent
    p.binary, p.arguments, p.exec_id, p.cwd = "/usr/bin/true", "a b c d e f" * 5, "x" * 40, "/tmp/some/dir"
    parent.binary, parent.exec_id, parent.arguments = "/usr/bin/bash", "y" * 40, "z" * 100
    return ev.SerializeToString()


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman coding."""
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


class Windows:
    """HTTP/2 flow-control state fed by the connection's reader thread."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.conn, self.initial, self.stream, self.max_frame = 65535, 65535, 65535, 16384
        self.stream_id: int | None = None
        self.closed = False

    def on_frame(self, sock: socket.socket, kind: int, flags: int, sid: int, pl: bytes) -> None:
        with self.cond:
            if kind == SETTINGS and not flags & 1:
                for i in range(0, len(pl), 6):
                    key, val = struct.unpack(">HI", pl[i:i + 6])
                    if key == 4:  # INITIAL_WINDOW_SIZE applies to open streams too
                        self.stream += val - self.initial
                        self.initial = val
                    elif key == 5:
                        self.max_frame = val
                sock.sendall(frame(SETTINGS, 1, 0))
            elif kind == PING and not flags & 1:
                sock.sendall(frame(PING, 1, 0, pl))
            elif kind == WINDOW_UPDATE:
                inc = int.from_bytes(pl, "big") & 0x7FFFFFFF
                if sid == 0:
                    self.conn += inc
                else:
                    self.stream += inc
            elif kind == HEADERS and self.stream_id is None:
                self.stream_id, self.stream = sid, self.initial
            elif kind in (RST_STREAM, GOAWAY):
                self.closed = True
            self.cond.notify_all()

    def take(self, want: int) -> int:
        """Wait for room to send, then reserve up to ``want`` bytes of it (0: the call is gone)."""
        with self.cond:
            while min(self.conn, self.stream) <= 0 and not self.closed:
                self.cond.wait()
            if self.closed:
                return 0
            room = min(self.conn, self.stream, self.max_frame, want)
            self.conn -= room
            self.stream -= room
            return room


def read_frames(sock: socket.socket, win: Windows) -> None:
    buf = b""
    while True:
        data = sock.recv(1 << 16)
        if not data:
            with win.cond:
                win.closed = True
                win.cond.notify_all()
            return
        buf += data
        if buf.startswith(PREFACE):
            buf = buf[len(PREFACE):]
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            win.on_frame(sock, buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n])
            buf = buf[9 + n:]


def serve_framed(path: str, msg: bytes, count: int, batch: int) -> dict:
    """Accept one connection, answer its call with ``count`` copies of ``msg``, ``batch`` per DATA run."""
    ls = socket.socket(socket.AF_UNIX)
    ls.bind(path)
    ls.listen(1)
    sock, _ = ls.accept()
    ls.close()
    win = Windows()
    sock.sendall(frame(SETTINGS, 0, 0))
    threading.Thread(target=read_frames, args=(sock, win), daemon=True).start()
    with win.cond:
        while win.stream_id is None and not win.closed:
            win.cond.wait()
    sid = win.stream_id or 1
    sock.sendall(frame(HEADERS, 4, sid, b"\x88" + literal(b"content-type", b"application/grpc")))
    framed = b"\x00" + struct.pack(">I", len(msg)) + msg
    t0, cpu0 = time.monotonic(), time.process_time()  # the writer and the frame reader
    sent = 0
    while sent < count and not win.closed:
        n = min(batch, count - sent)
        data = framed * n  # stands for joining n queued events' wire bytes
        off = 0
        while off < len(data):
            room = win.take(len(data) - off)
            if not room:
                break
            sock.sendall(frame(DATA, 0, sid, data[off:off + room]))
            off += room
        sent += n
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    sock.sendall(frame(HEADERS, 5, sid, literal(b"grpc-status", b"0")))
    time.sleep(0.2)
    sock.close()
    return {"sent": sent, "wall_s": wall, "cpu_s": cpu}


def serve_grpcio(path: str, msg: bytes, count: int, done: threading.Event) -> dict:
    import grpc

    out: dict = {}

    def get_events(request: bytes, context: object):
        t0, cpu0 = time.monotonic(), time.process_time()
        for _ in range(count):
            yield msg
        out.update(sent=count, wall_s=time.monotonic() - t0, cpu_s=time.process_time() - cpu0)

    srv = grpc.server(ThreadPoolExecutor(8))
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tetragon.FineGuidanceSensors", {
        "GetEvents": grpc.unary_stream_rpc_method_handler(get_events)}),))
    srv.add_insecure_port("unix://" + path)
    srv.start()
    done.wait()
    srv.stop(0.5).wait(2)
    return out


def run_client(path: str, count: int, work: Path) -> int:
    out = work / "count"
    subprocess.run([str(CLIENT), "--server-address", f"unix://{path}", "--timeout", "120s", "getevents",
                    "--count-file", str(out), "--count", str(count)], check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=180)
    return int(out.read_text() or 0) if out.exists() else 0


def measure(mode: str, msg: bytes, count: int, batch: int, work: Path) -> dict:
    path = str(work / f"{mode}.sock")
    res: dict = {}
    done = threading.Event()
    if mode == "framed":
        target = lambda: res.update(serve_framed(path, msg, count, batch))  # noqa: E731
    else:
        target = lambda: res.update(serve_grpcio(path, msg, count, done))  # noqa: E731
    t = threading.Thread(target=target, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    res["received"] = run_client(path, count, work)
    done.set()
    t.join(timeout=10)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=256, help="messages joined per write run (framed)")
    args = ap.parse_args()
    if not CLIENT.exists():
        sys.exit(f"{CLIENT} missing: make tetragon-client")
    print("grpc_framing:", C.machine(), flush=True)
    load = C.LoadMonitor()
    msg = event_bytes()
    out = {}
    with C.Cleanup(budget_s=400) as stack:
        work = stack.tempdir("lanner-grpc-framing-")
        for mode in ("grpcio", "framed"):
            r = out[mode] = measure(mode, msg, args.messages, args.batch, work)
            print(f"  {mode:7} {r.get('sent', 0):,} messages of {len(msg)} bytes, {r['received']:,} decoded by the "
                  f"client: {r['sent'] / r['wall_s']:,.0f} messages/s, server CPU {r['cpu_s'] / r['sent'] * 1e6:.2f} "
                  f"us per message", flush=True)
    g, f = out["grpcio"], out["framed"]
    print(f"framed / grpcio: {(f['sent'] / f['wall_s']) / (g['sent'] / g['wall_s']):.1f}x the rate, "
          f"{(g['cpu_s'] / g['sent']) / (f['cpu_s'] / f['sent']):.0f}x less server CPU per message")
    print(load.report())
    return 0 if all(r["received"] == args.messages for r in out.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
