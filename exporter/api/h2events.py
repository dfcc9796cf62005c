"""``GetEvents`` framed by lanner itself (``--server-events-address``): many gRPC messages per HTTP/2 frame.

grpcio sends one streamed message per completion-queue round trip (20-40k messages/s per core, sync or
aio: docs/performance.md §5). This unix-socket listener serves Tetragon's ``GetEvents`` stream by writing
the HTTP/2 and gRPC framing itself: each client's queued events (their wire bytes, assembled once for all
clients) go out as DATA frames within the client's flow-control windows, one sendmsg per window's worth: the
frames' headers and slices of the shared bytes, nothing copied in user space.
Clients built on Tetragon's protos (``tetra getevents --server-address unix://...``) read it unchanged.

Request header blocks are decoded (HPACK) and each call is routed by its ``:path``: ``GetEvents`` streams as
above; any other method of the API is answered in-process by ``unary(path, request) -> (code, message,
response)`` (the same handlers grpcio's server runs), so a client may make any call on a connection that
began with ``GetEvents``. Clients, queues, filters and drop counts are the gRPC server's (``GrpcApiServer``),
shared with its own GetEvents. The same Connection serves the framed connections of the main API socket
(exporter/api/front.py routes each connection by its first call).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from hpack import Decoder
from hpack.exceptions import HPACKError

log = logging.getLogger("lanner.grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x1, 0x8, 0x20
MAX_FRAME = 16384  # ours (the default): a client frame larger than this ends the connection
MAX_REQUEST = 1 << 20  # a GetEventsRequest (filters) larger than this ends the connection
BATCH = 512  # events a writer takes from its queue per turn (at least one queued item: a whole run)
MAX_STREAMS = 16  # open calls per connection; more are refused (RST_STREAM REFUSED_STREAM)
MAX_CONNECTIONS = 64  # more are closed at once (the gRPC server's client limit applies to calls as well)
GET_EVENTS = "/tetragon.FineGuidanceSensors/GetEvents"
IOV_MAX = 1024  # buffers per sendmsg (Linux's UIO_MAXIOV)
JOIN_ITEMS = 16  # more queued items than this (a filtered client's single messages) are joined before framing
_DATA_HEAD = struct.Struct(">HBBBI")  # a DATA frame's 9-byte header: length (24 bits), type, flags, stream
Unary = Callable[[str, bytes], tuple[int, str, bytes | None]]  # (path, request) -> (grpc code, message, response)


def frame(kind: int, flags: int, stream: int, payload: bytes | memoryview = b"") -> bytes:
    return b"".join((struct.pack(">I", len(payload))[1:], bytes((kind, flags)), struct.pack(">I", stream), payload))


def data_frames(bufs: list[memoryview], pos: tuple[int, int], room: int, step: int, sid: int) -> tuple[list, tuple]:
    """``room`` bytes of ``bufs`` from ``pos`` (buffer index, offset) as DATA frames of at most ``step`` bytes:
    their headers and slices of the buffers themselves (nothing copied), for one sendmsg; and the new position.
    A frame does not span two buffers."""
    i, off = pos
    parts: list = []
    while room:
        b = bufs[i]
        n = min(step, len(b) - off, room)
        parts.append(_DATA_HEAD.pack(n >> 8, n & 0xFF, DATA, 0, sid))
        parts.append(b[off:off + n])
        off += n
        room -= n
        if off == len(b):
            i, off = i + 1, 0
    return parts, (i, off)


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK: a literal header field without indexing, new name, no Huffman coding (values cut at 126 bytes)."""
    value = value[:126]  # a 7-bit length prefix: 127 would need a second byte
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


RESPONSE_HEADERS = b"\x88" + _literal(b"content-type", b"application/grpc")  # \x88: ":status: 200" (static 8)


def trailers(code: int, message: str = "") -> bytes:
    block = _literal(b"grpc-status", str(code).encode())
    if message:
        block += _literal(b"grpc-message", quote(message, safe=" ").encode())
    return block


class ProtocolError(Exception):
    pass


def grpc_message(pb: bytes) -> bytes:
    """One gRPC message on the wire: the uncompressed flag, the big-endian length, the bytes."""
    return b"\x00" + len(pb).to_bytes(4, "big") + pb


def header_fragment(flags: int, pl: bytes) -> bytes:
    """A HEADERS frame's header block fragment: padding and priority fields removed."""
    pad = pl[0] if flags & PADDED and pl else 0
    if flags & PADDED:
        pl = pl[1:]
    if flags & PRIORITY_FLAG:
        pl = pl[5:]
    return pl[:len(pl) - pad] if pad else pl


class _Stream:
    def __init__(self, sid: int, window: int, path: str) -> None:
        self.sid = sid
        self.window = window
        self.path = path
        self.body = bytearray()
        self.sub: Any = None  # the GrpcSubscriber once the request is complete
        self.started = False
        self.closed = False


class Connection:
    """One client connection: a reader thread for its frames, a writer thread per open stream."""

    def __init__(self, sock: socket.socket, subscribe: Callable[[bytes], Any], unsubscribe: Callable[[Any], None],
                 stopping: threading.Event, unary: Unary | None = None, replay: bytes | None = None) -> None:
        """``replay``: the client's frames after its preface, already read by the front (which also sent this
        server's SETTINGS); None for a connection read from its start."""
        self.sock = sock
        self.subscribe, self.unsubscribe = subscribe, unsubscribe
        self.unary = unary
        self.stopping = stopping
        self.replay = replay
        self.hpack = Decoder()
        self.block = bytearray()  # a request header block being assembled (HEADERS + CONTINUATION)
        self.block_sid = 0
        self.cond = threading.Condition()  # windows, streams, closed
        self.send_lock = threading.Lock()
        self.conn_window = 65535
        self.initial_window = 65535
        self.peer_max_frame = 16384
        self.streams: dict[int, _Stream] = {}
        self.closed = False

    def serve(self) -> None:
        try:
            if self.replay is None:
                self._send(frame(SETTINGS, 0, 0))
            self._read_frames()
        except (OSError, ProtocolError, ValueError) as exc:
            log.debug("events connection ended: %s", exc)
        finally:
            self.close()

    # ---- reading
    def _recv_exact(self, n: int, buf: bytearray) -> bytes:
        while len(buf) < n:
            chunk = self.sock.recv(max(65536, n - len(buf)))
            if not chunk:
                raise ProtocolError("peer closed")
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _read_frames(self) -> None:
        buf = bytearray(self.replay or b"")
        if self.replay is None and self._recv_exact(len(PREFACE), buf) != PREFACE:
            raise ProtocolError("not an HTTP/2 client preface")
        while not self.closed:
            head = self._recv_exact(9, buf)
            n = int.from_bytes(head[:3], "big")
            if n > MAX_FRAME:
                raise ProtocolError(f"frame of {n} bytes")
            payload = self._recv_exact(n, buf)
            self._on_frame(head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload)

    def _on_frame(self, kind: int, flags: int, sid: int, pl: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            self._on_settings(pl)
        elif kind == PING and not flags & ACK:
            self._send(frame(PING, ACK, 0, pl))
        elif kind == WINDOW_UPDATE:
            self._on_window_update(sid, pl)
        elif kind == HEADERS:
            self._on_header_block(sid, flags, header_fragment(flags, pl), True)
        elif kind == CONTINUATION:
            self._on_header_block(sid, flags, pl, False)
        elif kind == DATA:
            self._on_data(sid, flags, pl)
        elif kind == RST_STREAM:
            self._end_stream(sid)
        elif kind == GOAWAY:
            raise ProtocolError("GOAWAY from the client")
        # PRIORITY and unknown frames are ignored

    def _on_settings(self, pl: bytes) -> None:
        if len(pl) % 6:
            raise ProtocolError("SETTINGS payload")
        with self.cond:
            for i in range(0, len(pl), 6):
                key, val = struct.unpack(">HI", pl[i:i + 6])
                if key == 4:  # INITIAL_WINDOW_SIZE: applies to the open streams too
                    for st in self.streams.values():
                        st.window += val - self.initial_window
                    self.initial_window = val
                elif key == 5:
                    self.peer_max_frame = max(16384, min(val, 1 << 20))
            self.cond.notify_all()
        self._send(frame(SETTINGS, ACK, 0))

    def _on_window_update(self, sid: int, pl: bytes) -> None:
        inc = int.from_bytes(pl[:4], "big") & 0x7FFFFFFF
        with self.cond:
            if sid == 0:
                self.conn_window += inc
            elif sid in self.streams:
                self.streams[sid].window += inc
            self.cond.notify_all()

    def _on_header_block(self, sid: int, flags: int, fragment: bytes, first: bool) -> None:
        """HEADERS and CONTINUATION: the block is decoded when complete (every block, to keep HPACK's table)."""
        if first:
            self.block, self.block_sid = bytearray(), sid
        elif sid != self.block_sid:
            raise ProtocolError("CONTINUATION of another stream")
        self.block += fragment
        if len(self.block) > MAX_REQUEST:
            raise ProtocolError("header block too large")
        if not flags & END_HEADERS:
            return
        try:
            headers = self.hpack.decode(bytes(self.block))
        except HPACKError as exc:
            raise ProtocolError(f"request headers: {exc}") from None
        self.block = bytearray()
        path = next((v for k, v in headers if k == ":path"), "")
        self._on_headers(sid, flags, path)

    def _on_headers(self, sid: int, flags: int, path: str) -> None:
        with self.cond:
            if sid in self.streams or not sid & 1:
                return  # trailers of a request, or not a client stream
            refused = len(self.streams) >= MAX_STREAMS
            if not refused:
                st = self.streams[sid] = _Stream(sid, self.initial_window, path)
        if refused:
            self._send(frame(RST_STREAM, 0, sid, (7).to_bytes(4, "big")))  # REFUSED_STREAM
            return
        if flags & END_STREAM:
            self._start(st)

    def _on_data(self, sid: int, flags: int, pl: bytes) -> None:
        st = self.streams.get(sid)
        if pl:  # what was received is consumed: give the client its windows back (large unary requests)
            inc = len(pl).to_bytes(4, "big")
            self._send(frame(WINDOW_UPDATE, 0, 0, inc) + (frame(WINDOW_UPDATE, 0, sid, inc) if st else b""))
        if flags & PADDED and pl:
            pl = pl[1:len(pl) - pl[0]]
        if st is None or st.started:
            return
        st.body += pl
        if len(st.body) > MAX_REQUEST:
            raise ProtocolError("request too large")
        if flags & END_STREAM:
            self._start(st)

    def _start(self, st: _Stream) -> None:
        st.started = True
        body = bytes(st.body)
        if len(body) >= 5:
            if body[0]:
                self._finish(st, 12, "compressed requests are not supported")
                return
            body = body[5:5 + int.from_bytes(body[1:5], "big")]
        if st.path != GET_EVENTS:
            threading.Thread(target=self._answer_unary, args=(st, body), name="lanner-api-unary", daemon=True).start()
            return
        try:
            st.sub = self.subscribe(body)
        except ValueError as exc:
            self._finish(st, 3, str(exc))  # INVALID_ARGUMENT, as the grpcio server answers it
            return
        except OverflowError as exc:
            self._finish(st, 8, str(exc))  # RESOURCE_EXHAUSTED: the agent's client limit
            return
        self._send(frame(HEADERS, END_HEADERS, st.sid, RESPONSE_HEADERS))
        threading.Thread(target=self._write_events, args=(st,), name="lanner-events-tx", daemon=True).start()

    def _finish(self, st: _Stream, code: int, message: str) -> None:
        self._send(frame(HEADERS, END_HEADERS | END_STREAM, st.sid, RESPONSE_HEADERS + trailers(code, message)))
        self._end_stream(st.sid)

    def _answer_unary(self, st: _Stream, body: bytes) -> None:
        """Any other call of the API: its handler's answer, or UNIMPLEMENTED for a path the API does not have."""
        if self.unary is None:
            code, message, response = 12, f"{st.path}: not served on this socket", None
        else:
            code, message, response = self.unary(st.path, body)
        try:
            if response is None:
                self._finish(st, code, message)
                return
            self._send(frame(HEADERS, END_HEADERS, st.sid, RESPONSE_HEADERS))
            if self._send_data(st, grpc_message(response)):
                self._send(frame(HEADERS, END_HEADERS | END_STREAM, st.sid, trailers(code, message)))
        except OSError:
            pass
        finally:
            self._end_stream(st.sid)

    # ---- writing
    def _write_events(self, st: _Stream) -> None:
        sub = st.sub
        try:
            while not (st.closed or self.closed or self.stopping.is_set()):
                with sub.cond:
                    if not sub.queue:
                        sub.cond.wait(timeout=0.5)
                if not sub.queue:
                    continue
                items, n = sub.take(BATCH)  # runs of gRPC messages, framed once per batch (GrpcSubscriber)
                data = [b for b, _ in items] if len(items) <= JOIN_ITEMS else [b"".join(b for b, _ in items)]
                sub.inflight = n
                if not self._send_data(st, data):
                    break
                sub.sent += n
                sub.inflight = 0
            if self.stopping.is_set() and not self.closed:
                self._send(frame(HEADERS, END_HEADERS | END_STREAM, st.sid, trailers(0)))
        except OSError:
            pass
        finally:
            self._end_stream(st.sid)

    def _send_data(self, st: _Stream, data: bytes | list[bytes]) -> bool:
        """DATA frames of ``data`` (one buffer, or several sent back to back) within the windows: whatever the
        windows allow now goes in one sendmsg of frame headers and slices of the buffers (no copy in user space,
        no GIL while the kernel copies), so a run costs few writes and GIL hand-offs."""
        bufs = [memoryview(b) for b in (data if isinstance(data, list) else (data,))]
        left = sum(map(len, bufs))
        pos = (0, 0)
        while left:
            with self.cond:
                while min(self.conn_window, st.window) <= 0 and not (st.closed or self.closed):
                    self.cond.wait(timeout=0.5)
                    if self.stopping.is_set():
                        return False
                if st.closed or self.closed:
                    return False
                room = min(self.conn_window, st.window, left)
                self.conn_window -= room
                st.window -= room
                step = self.peer_max_frame
            parts, pos = data_frames(bufs, pos, room, step, st.sid)
            self._sendmsg(parts)
            left -= room
        return True

    def _send(self, data: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(data)

    def _sendmsg(self, parts: list) -> None:
        """Every byte of ``parts`` in order, IOV_MAX buffers per sendmsg, resuming after a partial send."""
        with self.send_lock:
            while parts:
                sent = self.sock.sendmsg(parts[:IOV_MAX])
                k = 0
                while k < len(parts) and sent >= len(parts[k]):
                    sent -= len(parts[k])
                    k += 1
                parts = parts[k:]
                if sent:
                    parts[0] = memoryview(parts[0])[sent:]

    def _end_stream(self, sid: int) -> None:
        with self.cond:
            st = self.streams.pop(sid, None)
            if st is not None:
                st.closed = True
            self.cond.notify_all()
        if st is not None and st.sub is not None:
            self.unsubscribe(st.sub)
            with st.sub.cond:
                st.sub.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            sids = list(self.streams)
            self.cond.notify_all()
        for sid in sids:
            self._end_stream(sid)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class EventsServer:
    """Listens on a unix socket (mode 0660) and serves each connection in its own thread: every connection
    framed by lanner, or, with a ``backend`` (the main API socket), routed by its first call (front.py)."""

    def __init__(self, path: Path, subscribe: Callable[[bytes], Any], unsubscribe: Callable[[Any], None],
                 unary: Unary | None = None, backend: Path | None = None) -> None:
        self.path = path
        self.subscribe, self.unsubscribe, self.unary = subscribe, unsubscribe, unary
        self.backend = backend
        self.stopping = threading.Event()
        self._conns: set[Connection] = set()
        self._active = 0  # accepted connections not yet ended (framed or spliced)
        self.counts = {"framed": 0, "grpcio": 0}  # connections served by lanner's framing / handed to grpcio
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            self._sock.bind(str(path))
        finally:
            os.umask(old)
        self._sock.listen(64)
        self._thread = threading.Thread(target=self._accept, name="lanner-events", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                full = self._active >= MAX_CONNECTIONS
                self._active += not full
            if full:
                log.warning("API socket %s: %d connections already, closing a new one", self.path, MAX_CONNECTIONS)
                sock.close()
                continue
            threading.Thread(target=self._serve, args=(sock,), name="lanner-events-rx", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self.backend is None:
                self._framed(sock, None)
            else:
                from .front import serve_connection

                serve_connection(sock, self.backend, self._framed, self._count_spliced)
        finally:
            with self._lock:
                self._active -= 1

    def _count_spliced(self) -> None:
        with self._lock:
            self.counts["grpcio"] += 1

    def _framed(self, sock: socket.socket, replay: bytes | None) -> None:
        conn = Connection(sock, self.subscribe, self.unsubscribe, self.stopping, self.unary, replay)
        with self._lock:
            self._conns.add(conn)
            self.counts["framed"] += 1
        try:
            if not self.stopping.is_set():
                conn.serve()
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)

    def close(self) -> None:
        self.stopping.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()
        self._thread.join(timeout=3)
        self.path.unlink(missing_ok=True)
